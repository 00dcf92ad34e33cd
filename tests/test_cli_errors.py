"""Bad input to every command, as a user would type it: one line on stderr naming the problem,
exit code 2 (usage) — never a traceback — and nothing created or changed on disk.

Each row runs the command as a subprocess (``python -m ...``, exactly what the console script
calls). The trainer's own flag-by-flag table is in ``tests/train/test_cli.py``; this table
covers what crosses commands: corrupt files of every kind the project writes, unreadable and
misplaced paths, offline dataset names, contexts too short, and each command's numeric flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import winq

COMMANDS = {
    "winq-spectrum": "winq.app.spectrum",
    "winq-train": "winq.train.cli",
    "winq-plot": "winq.plots.cli",
    "winq-reproduce": "winq.app.study",
}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder of good and broken artefacts the rows point at."""
    from winq import embedded
    from winq.analysis import Spectrum

    root = tmp_path_factory.mktemp("cli-errors")
    tokenizer = embedded.tokenizer()
    model = embedded.build_model("tiny", seed=0)
    winq.save(model, root / "fp", tokenizer)
    winq.quantize_(model, winq.QuantConfig(bits=2))
    winq.save(model, root / "w2", tokenizer)
    for name in ("bad_config", "bad_quant", "bad_weights"):
        winq.save(model, root / name, tokenizer)
    (root / "bad_config" / "config.json").write_text('{"model_type": "llama", ')
    (root / "bad_quant" / "winq_quant.json").write_text("[1, 2")
    weights = root / "bad_weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    (root / "a_file").write_text("not a folder")
    (root / "empty.txt").write_text("")
    (root / "empty_dir").mkdir()
    good = Spectrum([[0.5, 2.0]], [[0.5, 0.5]], metadata={"num_params": 10, "bits": 2})
    good.save(root / "spectrum_good")
    good.save(root / "spectrum_bad")
    (root / "spectrum_bad" / "spectrum.json").write_text('{"kind": "winq-spectrum"')
    run = root / "run_bad"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"bits": 2}))
    # a broken line in the middle (a torn last line is what a killed writer leaves: tolerated)
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n{"step": 3}\n'
    )
    locked = root / "locked"
    locked.mkdir()
    (locked / "config.json").write_text("{}")
    locked.chmod(0)
    yield root
    locked.chmod(0o755)


def rows(w: Path) -> list[tuple[str, str, list[str], str]]:
    """(command, what is wrong, arguments, text the message must contain)."""
    ckpt = ["--ckpt", str(w / "w2")]
    mini = ["--batches", "1", "--batch-size", "1", "--seq-len", "16", "--probes", "1",
            "--steps", "2", "--no-progress"]  # fmt: skip
    init = ["--init", str(w / "fp"), "--steps", "2", "--batch-size", "2", "--seq-len", "16",
            "--warmup", "1", "--winq-resets", "0", "--no-progress"]  # fmt: skip
    dataset = "no-such-user/no-such-dataset"
    return [
        # winq-spectrum
        ("winq-spectrum", "checkpoint missing", ["--ckpt", str(w / "nope")], "does not exist"),
        ("winq-spectrum", "file, not a folder", ["--ckpt", str(w / "a_file")], "is a file"),
        (
            "winq-spectrum",
            "folder, not a checkpoint",
            ["--ckpt", str(w / "empty_dir")],
            "not a checkpoint",
        ),
        ("winq-spectrum", "unreadable checkpoint", ["--ckpt", str(w / "locked")], "locked"),
        (
            "winq-spectrum",
            "corrupt config.json",
            ["--ckpt", str(w / "bad_config"), *mini],
            "bad_config",
        ),
        (
            "winq-spectrum",
            "corrupt winq_quant.json",
            ["--ckpt", str(w / "bad_quant"), *mini],
            "corrupt winq_quant.json",
        ),
        (
            "winq-spectrum",
            "truncated model.safetensors",
            ["--ckpt", str(w / "bad_weights"), *mini],
            "bad_weights",
        ),
        ("winq-spectrum", "unknown bit width", [*ckpt, "--bits", "7"], "must be one of"),
        (
            "winq-spectrum",
            "checkpoint of another width",
            [*ckpt, "--bits", "3", *mini],
            "--requantize",
        ),
        ("winq-spectrum", "zero Lanczos steps", [*ckpt, "--steps", "0"], "positive integer"),
        ("winq-spectrum", "probes not a number", [*ckpt, "--probes", "many"], "expected int"),
        ("winq-spectrum", "negative eps", [*ckpt, "--eps", "-1"], "positive"),
        (
            "winq-spectrum",
            "regex selecting nothing",
            [*ckpt, *mini, "--params", "^nothing$"],
            "nothing",
        ),
        (
            "winq-spectrum",
            "sequence beyond the context",
            [*ckpt, *mini, "--seq-len", "5000"],
            "context",
        ),
        (
            "winq-spectrum",
            "empty data",
            [*ckpt, *mini, "--data", str(w / "empty.txt"), "--out", str(w / "empty_out")],
            "empty.txt",
        ),
        # a hub name is tried as a dataset (not refused as a missing path): it reaches the
        # data stage, so it gets an --out of its own (the default one is locked by its twin)
        (
            "winq-spectrum",
            "unknown dataset offline",
            [*ckpt, *mini, "--data", dataset, "--out", str(w / "dataset_out")],
            dataset,
        ),
        ("winq-spectrum", "--out is a file", [*ckpt, "--out", str(w / "a_file")], "not a folder"),
        ("winq-spectrum", "unknown device", [*ckpt, "--device", "tpu"], "invalid choice"),
        # winq-train
        (
            "winq-train",
            "corrupt config.json",
            ["--init", str(w / "bad_config"), *init[2:]],
            "bad_config",
        ),
        (
            "winq-train",
            "corrupt winq_quant.json",
            ["--init", str(w / "bad_quant"), *init[2:]],
            "winq_quant.json",
        ),
        (
            "winq-train",
            "truncated model.safetensors",
            ["--init", str(w / "bad_weights"), *init[2:]],
            "bad_weights",
        ),
        ("winq-train", "unknown dataset offline", [*init, "--data", dataset], dataset),
        (
            "winq-train",
            "checkpoint of another width",
            ["--init", str(w / "w2"), "--bits", "3"],
            "2-bit",
        ),
        ("winq-train", "steps not an integer", ["--steps", "1e3"], "expected int"),
        ("winq-train", "learning rate not finite", ["--lr", "nan"], "finite"),
        ("winq-train", "sequence beyond the context", [*init, "--seq-len", "5000"], "context"),
        # winq-plot
        ("winq-plot", "path missing", [str(w / "nope"), "--out", str(w / "figs")], "nope"),
        (
            "winq-plot",
            "nothing to plot",
            [str(w / "empty_dir"), "--out", str(w / "figs")],
            "empty_dir",
        ),
        (
            "winq-plot",
            "corrupt spectrum.json",
            [str(w / "spectrum_bad"), "--out", str(w / "figs")],
            "spectrum.json",
        ),
        (
            "winq-plot",
            "corrupt metrics.jsonl",
            [str(w / "run_bad"), "--out", str(w / "figs")],
            "metrics.jsonl",
        ),
        (
            "winq-plot",
            "unknown image format",
            [str(w / "run_bad"), "--out", str(w / "figs"), "--format", "gif"],
            "gif",
        ),
        (
            "winq-plot",
            "--out is a file",
            [str(w / "spectrum_good"), "--out", str(w / "a_file")],
            "a_file",
        ),
        # winq-reproduce
        ("winq-reproduce", "unknown bit width", ["--bits", "5"], "--bits 5"),
        ("winq-reproduce", "alpha outside [0, 1]", ["--alphas", "0,1.5"], "--alphas"),
        ("winq-reproduce", "init missing", ["--init", str(w / "nope")], "does not exist"),
        ("winq-reproduce", "--out is a file", ["--out", str(w / "a_file")], "not a folder"),
        ("winq-reproduce", "unknown preset", ["--preset", "huge"], "invalid choice"),
        (
            "winq-reproduce",
            "--out holds something else",
            ["--out", str(w / "run_bad")],
            "not a study",
        ),
    ]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        try:
            stat = path.stat()
        except PermissionError:
            continue
        out[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return out


def invoke(command: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("WINQ_DEBUG", None)
    return subprocess.run([sys.executable, "-m", COMMANDS[command], *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_every_bad_input_is_one_line_exit_2_and_touches_nothing(work, tmp_path):
    table = rows(work)
    assert len(table) >= 30
    before = snapshot(work)
    cwd = tmp_path / "cwd"  # where default outputs (spectra/, runs/) would land
    cwd.mkdir()
    skip = {"unreadable checkpoint"} if IS_ROOT else set()  # root reads a mode-000 folder
    todo = [row for row in table if row[1] not in skip]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda row: invoke(row[0], row[2], cwd), todo))
    failures = []
    for (command, what, _, needle), result in zip(todo, results):
        lines = result.stderr.strip().splitlines()
        problems = []
        if result.returncode != 2:
            problems.append(f"exit code {result.returncode}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        elif not lines[0].startswith(f"{command}: error:") or needle not in lines[0]:
            problems.append(f"message lacks {needle!r}")
        if "Traceback" in result.stderr:
            problems.append("traceback")
        if problems:
            failures.append(f"{command} / {what}: {', '.join(problems)}: {result.stderr[-400:]!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(work) == before, "a bad input changed files"
    assert list(cwd.iterdir()) == [], "a bad input created files"

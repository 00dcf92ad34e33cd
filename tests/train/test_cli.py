"""``winq-train`` as a subprocess: bad input is one line and exit 2 with nothing created;
runtime failures exit 1; a run and its resume through the command line."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import MINI, MINI_FLAGS, comparable, read_metrics, run_cli

import winq
from winq.train.config import TrainConfig


@pytest.fixture
def quantized_checkpoint(tmp_path_factory, fp_checkpoint):
    model, tokenizer = winq.load(fp_checkpoint, bits=4)
    path = tmp_path_factory.mktemp("q4") / "ckpt"
    winq.save(model, path, tokenizer)
    return path


def snapshot(folder):
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1)
        for p in folder.rglob("*")
    )


def bad_inputs(fp, q4, work):
    """(name, args, expected text in the message)."""
    (work / "a_file").write_text("x")
    (work / "empty.txt").write_text("")
    (work / "not_ckpt").mkdir()
    (work / "busy").mkdir()
    (work / "busy" / "notes.txt").write_text("mine")
    (work / "broken_run").mkdir()
    (work / "broken_run" / "config.json").write_text("{not json")
    init = ["--init", str(fp)]
    corrupt = {}
    for name, file, text in (
        ("config", "config.json", "{not json"),
        ("weights", "model.safetensors", "garbage"),
        ("quant", "winq_quant.json", "{bad"),
    ):
        folder = work / f"corrupt_{name}"
        shutil.copytree(q4 if name == "quant" else fp, folder)
        (folder / file).write_text(text)
        corrupt[name] = ["--init", str(folder)]
    (work / "blank.txt").write_text("  \n\n")
    # run folders to resume: a valid config.json with a corrupt metrics.jsonl, and one whose
    # only checkpoint has a corrupt trainer_state.pt
    for name in ("bad_metrics", "bad_state"):
        run = work / name
        run.mkdir()
        config = TrainConfig(init=str(fp), bits=2, out=str(run), **MINI).resolve()
        (run / "config.json").write_text(json.dumps(config.to_json(world_size=1)))
    (work / "bad_metrics" / "metrics.jsonl").write_text('garbage\n{"step": 1}\n')
    checkpoint = work / "bad_state" / "checkpoints" / "step_000004"
    shutil.copytree(fp, checkpoint)
    (checkpoint / "trainer_state.pt").write_bytes(b"junk")
    return [
        ("unknown bits", ["--bits", "5"], "bits must be one of"),
        ("bits not a number", ["--bits", "two"], "bits must be one of"),
        ("quantizer unsupported", ["--bits", "1.58", "--quantizer", "lsq"], "supports bits"),
        ("init missing", ["--init", str(work / "nope")], "does not exist"),
        ("init is a file", ["--init", str(work / "a_file")], "is a file"),
        ("init not a checkpoint", ["--init", str(work / "not_ckpt")], "not a checkpoint"),
        ("init wrong bit width", ["--init", str(q4), "--bits", "2"], "4-bit"),
        ("data missing", [*init, "--data", str(work / "nope.txt")], "no such file"),
        ("data empty", [*init, "--data", str(work / "empty.txt")], "empty"),
        ("out not empty", [*init, "--out", str(work / "busy")], "not empty"),
        ("out is a file", [*init, "--out", str(work / "a_file")], "is a file"),
        ("negative period", ["--winq-period", "-3"], "positive integer"),
        ("zero period", ["--winq-period", "0"], "positive integer"),
        ("negative resets", ["--winq-resets", "-1"], ">= 0"),
        ("negative steps", ["--steps", "-5"], "positive integer"),
        ("negative guide period", ["--guide", "--guide-min-period", "-2"], ">= 0"),
        ("alpha above 1", ["--winq-alpha", "1.5"], "[0, 1]"),
        ("alpha below 0", ["--winq-alpha", "-0.1"], "[0, 1]"),
        ("alpha auto without guide", ["--winq-alpha", "auto"], "needs --guide"),
        ("guide with fixed resets", ["--guide", "--winq-resets", "2"], "--guide"),
        ("resets and period", ["--winq-resets", "2", "--winq-period", "5"], "not both"),
        ("winq on FP", ["--bits", "16", "--winq-resets", "2"], "needs QAT"),
        ("lr not a number", ["--lr", "fast"], "expected float"),
        ("warmup too long", [*init, *MINI_FLAGS, "--warmup", "50"], "--warmup"),
        ("batch split", [*init, "--batch-size", "6", "--micro-batch-size", "4"], "multiple"),
        ("seq longer than context", [*init, "--seq-len", "100000"], "context"),
        ("tokenizer missing", [*init, "--tokenizer", str(work / "nope")], "no such"),
        ("resume missing", ["--resume", str(work / "nope")], "no such run"),
        ("resume corrupt config", ["--resume", str(work / "broken_run")], "corrupt config.json"),
        ("unknown flag", ["--bitz", "2"], "unrecognized"),
        ("steps not an integer", ["--steps", "2.5"], "expected int"),
        ("lr infinite", ["--lr", "inf"], "finite"),
        ("beta1 above 1", ["--beta1", "1.5"], "[0, 1]"),
        ("init corrupt config.json", [*corrupt["config"], *MINI_FLAGS], "corrupt config.json"),
        ("init corrupt weights", [*corrupt["weights"], *MINI_FLAGS], "model.safetensors"),
        ("init corrupt winq_quant", [*corrupt["quant"], "--bits", "4", *MINI_FLAGS], "winq_quant"),
        ("group size mismatch", [*init, *MINI_FLAGS, "--group-size", "7"], "does not divide"),
        ("data blank", [*init, *MINI_FLAGS, "--data", str(work / "blank.txt")], "no text"),
        ("dataset unknown offline", [*init, *MINI_FLAGS, "--data", "nobody/nothing"], "nobody"),
        ("out under a file", [*init, "--out", str(work / "a_file" / "run")], "is a file"),
        ("resume corrupt metrics", ["--resume", str(work / "bad_metrics")], "metrics.jsonl"),
        ("resume corrupt state", ["--resume", str(work / "bad_state")], "trainer_state.pt"),
        ("reset mode unknown", ["--winq-reset-mode", "half"], "choose from 'full', 'clipped'"),
        ("reset mode on FP", ["--bits", "16", "--winq-reset-mode", "dither"], "needs QAT"),
        ("guide rule unknown", ["--guide", "--guide-rule", "hessian"], "choose from 'latent'"),
        ("flip budget negative", ["--guide", "--guide-flip-budget", "-1"], "must be >= 0"),
        ("flip budget not a number", ["--guide-flip-budget", "lots"], "expected float"),
        ("max return negative", ["--guide", "--guide-max-return", "-0.5"], "must be >= 0"),
        ("guide probes zero", ["--guide", "--guide-probes", "0"], "positive integer"),
        (
            "eval task unknown",
            [
                *init,
                *MINI_FLAGS,
                "--out",
                str(work / "evalrun"),
                "--eval-tasks",
                "no_such_task_xyz",
            ],
            "no_such_task_xyz",
        ),
        ("eval tasks without out", [*init, "--eval-tasks", "shakespeare"], "needs --out"),
    ]


def test_bad_inputs_one_line_exit_2_nothing_created(fp_checkpoint, quantized_checkpoint, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cases = bad_inputs(fp_checkpoint, quantized_checkpoint, work)
    before = snapshot(work)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each case is a subprocess of its own
        results = list(pool.map(lambda case: run_cli(case[1], cwd=work), cases))
    failures = []
    for (name, _, expected), result in zip(cases, results):
        lines = result.stderr.strip().splitlines()
        ok = (
            result.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("winq-train: error:")
            and expected in lines[0]
            and "Traceback" not in result.stderr
        )
        if not ok:
            failures.append(f"{name}: rc={result.returncode} stderr={result.stderr!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(work) == before, "a bad input changed files"
    assert len(cases) >= 50


def test_cli_run_resume_conflicts_and_lock(fp_checkpoint, tmp_path):
    run = tmp_path / "run"
    args = ["--init", str(fp_checkpoint), "--bits", "2", *MINI_FLAGS, "--save-every", "4"]
    whole = run_cli([*args, "--out", str(tmp_path / "whole")], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert "held-out loss" in whole.stderr.splitlines()[-1]
    cut = run_cli([*args, "--out", str(run)], cwd=tmp_path, faults="9")
    assert cut.returncode == 1 and "Traceback" not in cut.stderr
    assert len(cut.stderr.strip().splitlines()) == 1 and "non-finite" in cut.stderr
    # flags that contradict the run's config.json are refused; agreeing ones are fine
    conflict = run_cli(["--resume", str(run), "--steps", "99"], cwd=tmp_path)
    assert conflict.returncode == 2 and "conflicts" in conflict.stderr
    conflict = run_cli(["--resume", str(run), "--overwrite"], cwd=tmp_path)
    assert conflict.returncode == 2 and "conflicts" in conflict.stderr
    resumed = run_cli(["--resume", str(run), "--bits", "2", "--no-progress"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(read_metrics(run)) == comparable(read_metrics(tmp_path / "whole"))
    assert json.loads((run / "config.json").read_text())["steps"] == 12


def test_eval_tasks_score_the_final_checkpoint(fp_checkpoint, tmp_path):
    run = tmp_path / "run"
    args = ["--init", str(fp_checkpoint), "--bits", "2", *MINI_FLAGS, "--out", str(run),
            "--eval-tasks", "shakespeare_nextline", "--eval-limit", "24"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "eval" / "results.json").read_text())
    final = (run / "checkpoints" / "final").read_text().strip()
    assert saved["metadata"]["checkpoint"].endswith(final)
    scores = {m["metric"]: m for t in saved["tasks"] for m in t["metrics"]}
    accuracy = scores["acc"]
    assert 0.0 <= accuracy["low"] <= accuracy["value"] <= accuracy["high"] <= 1.0
    assert accuracy["n"] == 24
    assert "shakespeare_nextline" in result.stderr  # the table is printed

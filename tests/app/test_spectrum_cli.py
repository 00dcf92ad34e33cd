"""``winq-spectrum`` end to end on a miniature checkpoint of the embedded tiny preset."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import winq
from winq.analysis import Spectrum
from winq.app.spectrum import main

ROOT = Path(__file__).resolve().parents[2]
# a miniature measurement: 2 batches of 2 x 16 tokens, 2 probes x 8 Lanczos steps
MINI = ["--batches", "2", "--batch-size", "2", "--seq-len", "16", "--probes", "2",
        "--steps", "8", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An FP and a 2-bit checkpoint of the (untrained) tiny preset with the embedded tokenizer."""
    from winq import embedded

    root = tmp_path_factory.mktemp("spectrum-ckpt")
    tokenizer = embedded.tokenizer()
    fp = embedded.build_model("tiny", seed=0)
    winq.save(fp, root / "fp", tokenizer)
    winq.quantize_(fp, winq.QuantConfig(bits=2))
    winq.save(fp, root / "run" / "checkpoints" / "step_000040", tokenizer)
    return {"fp": root / "fp", "w2": root / "run" / "checkpoints" / "step_000040"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(path: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
    }


def test_writes_the_four_files_with_documented_columns(checkpoints, tmp_path, capsys):
    out = tmp_path / "spec"
    code, stdout, stderr = run_main(["--ckpt", checkpoints["w2"], *MINI, "--out", out], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "density.parquet", "lanczos.parquet", "ritz.parquet", "spectrum.json"]  # fmt: skip
    ritz = pd.read_parquet(out / "ritz.parquet")
    assert list(ritz.columns) == ["probe", "node", "weight"]
    assert sorted(ritz["probe"].unique()) == [0, 1]
    np.testing.assert_allclose(ritz.groupby("probe")["weight"].sum(), 1.0, rtol=0, atol=1e-12)
    density = pd.read_parquet(out / "density.parquet")
    assert list(density.columns) == ["lambda", "density"]
    assert (density["density"] >= 0).all() and density["density"].sum() > 0
    document = json.loads((out / "spectrum.json").read_text())
    meta = document["metadata"]
    assert meta["checkpoint"] == str(checkpoints["w2"].absolute())
    assert meta["bits"] == 2 and meta["quantizer"] == "seq"
    assert meta["step"] == 40 and Path(meta["run"]).name == "run"
    assert meta["probes"] == 2 and meta["lanczos_steps"] == 8 and meta["reorth"] == "none"
    assert meta["batches"] == 2 and meta["tokens"] == 2 * 2 * 15  # next-token targets
    assert type(meta["tokens"]) is int  # a count, saved as 60, not 60.0
    # the clipped fraction is that of the checkpoint's own latent weights
    model, _ = winq.load(checkpoints["w2"])
    assert meta["clipped_fraction"] == winq.nn.clipped_fraction(model)
    assert document["summary"]["clipped_fraction"] == meta["clipped_fraction"]
    assert "lambda_max" in stdout and str(out) in stdout


def test_summary_equals_the_api_with_the_same_seed(checkpoints, tmp_path, capsys):
    """The command's numbers are the library's: same checkpoint, batches and seed."""
    from winq import embedded
    from winq.analysis.measure import measure_spectrum
    from winq.data import lm_blocks

    out = tmp_path / "spec"
    code, stdout, stderr = run_main(
        ["--ckpt", checkpoints["w2"], *MINI, "--seed", "3", "--json", "--out", out], capsys
    )
    assert code == 0, stderr
    printed = json.loads(stdout)["summary"]
    model, _ = winq.load(checkpoints["w2"])
    blocks = lm_blocks(None, embedded.tokenizer(), 16, split="heldout", max_tokens=4 * 16 + 1)
    batches = [{"input_ids": blocks[0:2]}, {"input_ids": blocks[2:4]}]
    expected = measure_spectrum(model, batches, probes=2, steps=8, seed=3, progress=False)
    np.testing.assert_allclose(Spectrum.load(out).nodes, expected.nodes, rtol=1e-6, atol=1e-7)
    assert printed["lambda_max"] == pytest.approx(expected.summary()["lambda_max"], rel=1e-6)


def test_per_layer_top_k_trace_and_fp_checkpoint(checkpoints, tmp_path, capsys):
    out = tmp_path / "spec"
    args = ["--ckpt", checkpoints["fp"], *MINI, "--per-layer", "--top-k", "2", "--trace", "6",
            "--params", r"model\.layers\.0\..*(q_proj|v_proj)\.weight", "--out", out]  # fmt: skip
    code, stdout, stderr = run_main([*args, "--json"], capsys)
    assert code == 0, stderr
    spectrum = Spectrum.load(out)
    printed = json.loads(stdout)
    assert printed["out"] == str(out)
    assert sorted(printed["blocks"]) == ["kind.q_proj", "kind.v_proj", "layer.0"]
    assert printed["blocks"]["layer.0"]["lambda_max"] == pytest.approx(
        spectrum.blocks["layer.0"].summary()["lambda_max"], rel=1e-12
    )
    assert printed["summary"]["top_eigenvalues"] == pytest.approx(spectrum.top_eigenvalues)
    assert sorted(spectrum.blocks) == ["kind.q_proj", "kind.v_proj", "layer.0"]
    assert spectrum.blocks["kind.q_proj"].num_params == 128 * 128
    ritz = pd.read_parquet(out / "ritz.parquet")
    assert set(ritz["block"]) == {"all", "layer.0", "kind.q_proj", "kind.v_proj"}
    sums = ritz.groupby(["block", "probe"])["weight"].sum()
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-12)
    meta = spectrum.metadata
    assert meta["bits"] == 16 and meta["clipped_fraction"] is None
    assert len(spectrum.top_eigenvalues) == 2
    assert abs(spectrum.top_eigenvalues[0]) >= abs(spectrum.top_eigenvalues[1])
    assert len(meta["top_k"]["residuals"]) == 2
    assert spectrum.trace_method == "hutch++" and np.isfinite(spectrum.trace_stderr)
    code, stdout, stderr = run_main([*args, "--overwrite"], capsys)  # the readable table
    assert code == 0, stderr
    assert "top eigenvalues" in stdout and "kind.q_proj" in stdout


def test_requantize_and_existing_out(checkpoints, tmp_path, capsys):
    out = tmp_path / "spec"
    args = ["--ckpt", checkpoints["w2"], *MINI, "--bits", "1.58", "--requantize", "--out", out]
    code, _, stderr = run_main(args, capsys)
    assert code == 0, stderr
    assert Spectrum.load(out).metadata["bits"] == 1.58
    before = tree(out)
    code, _, stderr = run_main(args, capsys)  # exists: refused, untouched
    assert code == 2 and "--overwrite" in stderr and tree(out) == before
    code, _, stderr = run_main([*args, "--overwrite", "--seed", "1"], capsys)
    assert code == 0, stderr
    assert Spectrum.load(out).metadata["seed"] == 1


def test_two_runs_on_one_out_never_race(checkpoints, tmp_path, capsys, monkeypatch):
    from winq.app.spectrum import out_lock_path
    from winq.io import FileLock

    out = tmp_path / "spec"
    monkeypatch.chdir(tmp_path)
    lock = out_lock_path(out)
    assert lock == out_lock_path(Path("spec")) and tmp_path not in lock.parents
    args = ["--ckpt", checkpoints["w2"], *MINI, "--out", "spec"]
    with FileLock(lock, blocking=False):  # another run is measuring into the same folder
        code, _, stderr = run_main(args, capsys)
    assert code == 1 and "being written by another winq-spectrum run" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no lock left
    code, _, stderr = run_main(args, capsys)  # free again: the run goes ahead
    assert code == 0, stderr
    with FileLock(lock, blocking=False):  # and released its own lock when it finished
        assert Spectrum.load(out).metadata["seed"] == 0


# bad inputs that can only be seen with the model (its parameter names) or the data loaded
NEEDS_THE_MODEL = {"no_such_parameter", "100000 batches x", "{empty}"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ckpt", "{missing}"], "does not exist"),
        (["--ckpt", "{file}"], "is a file"),
        (["--ckpt", "{w2}", "--bits", "5"], "must be one of"),
        (["--ckpt", "{w2}", "--bits", "3"], "--requantize"),
        (["--ckpt", "{w2}", "--steps", "0"], "positive integer"),
        (["--ckpt", "{w2}", "--probes", "two"], "expected int"),
        (["--ckpt", "{w2}", "--trace", "2"], "at least 3"),
        (["--ckpt", "{w2}", "--params", "no_such_parameter"], "no_such_parameter"),
        (["--ckpt", "{w2}", "--params", "(unclosed"], "regular expression"),
        (["--ckpt", "{w2}", "--seq-len", "100000"], "context"),
        (["--ckpt", "{w2}", "--batches", "100000"], "100000 batches x"),
        (["--ckpt", "{w2}", "--data", "{tmp}/absent.txt"], "does not exist"),
        (["--ckpt", "{w2}", "--data", "{empty}"], "{empty}"),
        (["--ckpt", "{w2}", "--out", "{file}"], "not a folder"),
        (["--ckpt", "{w2}", "--out", "{readonly}/spec"], "not writable"),
        (["--ckpt", "{w2}", "--out", "/proc/winq-spectrum-test"], "not writable"),
        (["--ckpt", "{w2}", "--dtype", "int8"], "invalid choice"),
    ],
)
def test_bad_inputs_exit_2_in_one_line_and_write_nothing(checkpoints, tmp_path, capsys,
                                                         monkeypatch, args, needle):  # fmt: skip
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty.txt").write_text("")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    values = {"missing": tmp_path / "nope", "file": tmp_path / "a_file", "tmp": tmp_path,
              "w2": checkpoints["w2"], "empty": tmp_path / "empty.txt", "readonly": readonly}  # fmt: skip
    if "{readonly}" in args[-1] and os.geteuid() == 0:
        pytest.skip("root can write to a read-only folder")
    if args[-1].startswith("/proc/") and not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    if needle not in NEEDS_THE_MODEL:  # everything else is checked before loading
        monkeypatch.setattr("winq.checkpoint.load", lambda *a, **k: pytest.fail("model loaded"))
    args = [a.format(**values) for a in args]
    before = tree(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default --out (spectra/...) would land here
    try:
        code, _, stderr = run_main([*MINI, *args], capsys)
    finally:
        os.chdir(cwd)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("winq-spectrum: error:"), stderr
    assert needle.format(**values) in lines[0]
    assert "Traceback" not in stderr
    assert tree(tmp_path) == before


def test_subprocess_error_has_no_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "winq.app.spectrum", "--ckpt", str(tmp_path / "nope")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_torchrun_two_gloo_ranks_match_one_process(checkpoints, tmp_path, capsys):
    """Each rank takes its share of the batches; the all-reduced products give the
    single-process spectrum (float64 so the comparison sees only the reduction order)."""
    args = ["--ckpt", str(checkpoints["w2"]), "--dtype", "float64", "--device", "cpu",
            "--batches", "4", "--batch-size", "2", "--seq-len", "16", "--probes", "2",
            "--steps", "8", "--top-k", "1", "--no-progress"]  # fmt: skip
    code, _, stderr = run_main([*args, "--out", str(tmp_path / "single")], capsys)
    assert code == 0, stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "winq.app.spectrum", *args, "--out",
         str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    single, ddp = Spectrum.load(tmp_path / "single"), Spectrum.load(tmp_path / "ddp")
    scale = np.abs(single.nodes).max()
    assert np.abs(ddp.nodes - single.nodes).max() <= 1e-5 * scale
    assert ddp.top_eigenvalues[0] == pytest.approx(single.top_eigenvalues[0], rel=1e-5)
    assert ddp.metadata["world_size"] == 2 and single.metadata["world_size"] == 1
    assert ddp.metadata["tokens"] == single.metadata["tokens"] == 4 * 2 * 15

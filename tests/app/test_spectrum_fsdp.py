"""``winq-spectrum --fsdp``: 2 gloo ranks of an FSDP2-sharded 2-bit model against one process,
and the refusals (no torchrun, an exact backend, batches that do not split over the ranks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import winq
from winq.analysis import Spectrum
from winq.app.spectrum import main

MINI = ["--device", "cpu", "--batches", "4", "--batch-size", "2", "--seq-len", "16",
        "--probes", "2", "--steps", "8", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def w2(tmp_path_factory):
    """A 2-bit checkpoint of the (untrained) tiny preset with the embedded tokenizer."""
    from winq import embedded

    folder = tmp_path_factory.mktemp("fsdp-ckpt") / "w2"
    model = embedded.build_model("tiny", seed=0)
    winq.quantize_(model, winq.QuantConfig(bits=2))
    winq.save(model, folder, embedded.tokenizer())
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_sharded_ranks_give_the_single_process_spectrum(w2, tmp_path, capsys):
    args = ["--ckpt", str(w2), *MINI, "--top-k", "1"]
    code = main([*args, "--backend", "finite_difference", "--out", str(tmp_path / "single")])
    assert code == 0, capsys.readouterr().err
    exact = main([*args, "--out", str(tmp_path / "exact")])
    assert exact == 0, capsys.readouterr().err
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "-m", "winq.app.spectrum", *args, "--fsdp", "--out", str(tmp_path / "fsdp")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    single, fsdp = Spectrum.load(tmp_path / "single"), Spectrum.load(tmp_path / "fsdp")
    assert fsdp.metadata["sharded"] and fsdp.metadata["world_size"] == 2
    assert fsdp.metadata["backend"] == "finite_difference"
    assert fsdp.metadata["tokens"] == single.metadata["tokens"]
    assert fsdp.metadata["clipped_fraction"] == single.metadata["clipped_fraction"]
    # the bar, same seed: λmax and the quadrature weights within 1e-4 (measured 2e-6
    # and 7e-6: the ranks sum their batches' gradients in another order)
    assert fsdp.nodes.max() == pytest.approx(single.nodes.max(), rel=1e-4)
    weights = np.linalg.norm(fsdp.weights - single.weights) / np.linalg.norm(single.weights)
    assert weights <= 1e-4
    assert fsdp.top_eigenvalues[0] == pytest.approx(single.top_eigenvalues[0], rel=1e-4)
    # and against exact products, the finite-difference error
    reference = Spectrum.load(tmp_path / "exact")
    assert fsdp.top_eigenvalues[0] == pytest.approx(reference.top_eigenvalues[0], rel=1e-3)


@pytest.mark.parametrize(
    ("extra", "env", "needle"),
    [
        ([], {}, "--fsdp shards the model over torchrun's processes"),
        (["--backend", "double_backward"], {"RANK": "0", "WORLD_SIZE": "2"},
         "--backend double_backward cannot run with --fsdp: FSDP's all-gathers"),
        (["--backend", "func"], {"RANK": "0", "WORLD_SIZE": "2"}, "not in the autograd graph"),
        (["--batches", "3"], {"RANK": "0", "WORLD_SIZE": "2"},
         "--fsdp needs --batches a multiple of the 2 processes"),
    ],
)  # fmt: skip
def test_bad_fsdp_inputs_exit_2_in_one_line(w2, tmp_path, capsys, monkeypatch, extra, env, needle):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("winq.checkpoint.load", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["--ckpt", str(w2), *MINI, *extra, "--fsdp", "--out", str(tmp_path / "x")])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("winq-spectrum: error:"), stderr
    assert needle in lines[0]
    assert not (tmp_path / "x").exists()

"""``winq-train --fsdp`` on 2 gloo ranks: the 1-process run's losses, resets and latent grid,
checkpoints in the ordinary folder format, and an exact resume of a run stopped (non-finite
loss at update 9) after its checkpoint at 6."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import MINI_FLAGS, comparable, env, read_metrics, run_cli
from test_distributed import GRAD_NORM_RTOL, LOSS_RTOL, free_port

import winq

ARGS = ["--bits", "2", *MINI_FLAGS, "--noise-sigma", "0", "--winq-resets", "2",
        "--save-every", "6"]  # fmt: skip


def torchrun(args: list[str], cwd, faults: str | None = None):
    module = ["-m", "winq.train.cli"] if faults is None else ["-m", "faulty_train", faults]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *module, *args,
    ]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def close(x: dict, y: dict) -> None:
    assert x["step"] == y["step"]
    for key, rtol in (("loss", LOSS_RTOL), ("eval_loss", LOSS_RTOL),
                      ("grad_norm", GRAD_NORM_RTOL), ("lr", 0), ("tokens", 0)):  # fmt: skip
        if key in x:
            assert y[key] == pytest.approx(x[key], rel=rtol, abs=0), (key, x, y)
    for key in ("clipped_fraction", "grid_dispersion", "flip_fraction"):
        if key in x:  # latents near a rounding boundary may land on the other level
            assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-4), (key, x, y)
    if "reset" in x:
        assert (x["reset"]["alpha"], x["reset"]["mode"]) == (
            y["reset"]["alpha"],
            y["reset"]["mode"],
        )


@pytest.mark.distributed
def test_fsdp_matches_one_process_saves_plain_checkpoints_and_resumes_exactly(
    fp_checkpoint, tmp_path
):
    args = ["--init", str(fp_checkpoint), *ARGS]
    one = run_cli([*args, "--out", str(tmp_path / "one")], cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = torchrun([*args, "--fsdp", "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b):
        close(x, y)
    assert sum("reset" in r for r in b) == 2
    # the checkpoint is an ordinary folder: winq.load reads it in one process. AdamW moves a
    # weight whose gradient is near zero by about ±lr whatever the gradient's last bits, so
    # single weights may differ by O(lr); what must agree is the model
    model, _ = winq.load(tmp_path / "two" / "checkpoints" / "step_000012")
    reference, _ = winq.load(tmp_path / "one" / "checkpoints" / "step_000012")
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (4, 32), generator=generator)
    with torch.no_grad():
        losses = [m.eval()(input_ids=tokens, labels=tokens).loss for m in (model, reference)]
    assert float(losses[0]) == pytest.approx(float(losses[1]), rel=LOSS_RTOL)

    # stopped by a non-finite loss at update 9, resumed from the checkpoint at 6: the records
    # of the uninterrupted sharded run, bit for bit
    cut = torchrun([*args, "--fsdp", "--out", str(tmp_path / "cut")], cwd=tmp_path, faults="9")
    assert cut.returncode != 0
    resumed = torchrun(["--resume", str(tmp_path / "cut"), "--no-progress"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable(read_metrics(tmp_path / "cut")) == comparable(b)

"""Numerical faults: a NaN/inf loss or gradient stops the run (exit 1, one line) with no
non-finite checkpoint; ``--skip-nonfinite`` skips the update instead, and resume stays exact.

Faults are injected with the test hook of :mod:`faulty_train` (attempted-update indices, ``:nan``, ``:inf`` or
``:grad``; see :mod:`winq.train.loop`), in-process and through the command line.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from faulty_train import install as install_faults
from helpers import MINI, MINI_FLAGS, comparable, read_metrics, run_cli

import winq
from winq import distributed
from winq.cli import RuntimeFailure
from winq.train import loop
from winq.train.config import TrainConfig
from winq.train.loop import train
from winq.train.state import last_checkpoint, load_trainer_state


def config(fp_checkpoint, out, **overrides) -> TrainConfig:
    values = {**MINI, "init": str(fp_checkpoint), "bits": 2, "out": str(out), **overrides}
    return TrainConfig(**values).resolve()


def saved_steps(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def all_finite(checkpoint) -> bool:
    model, _ = winq.load(checkpoint)
    state = load_trainer_state(checkpoint)
    moments = [
        value
        for per_param in state["optimizer"]["state"].values()
        for value in per_param.values()
        if torch.is_tensor(value)
    ]
    tensors = [*model.parameters(), *moments]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("kind", ["nan", "inf", "grad"])
def test_fault_stops_with_last_good_checkpoint_intact(fp_checkpoint, tmp_path, monkeypatch, kind):
    # attempts 0..6 are updates 1..7: the fault hits update 8, after checkpoint 6
    install_faults(monkeypatch, f"7:{kind}")
    run = tmp_path / "r"
    with pytest.raises(RuntimeFailure) as raised:
        train(config(fp_checkpoint, run, save_every=3, eval_every=4))
    message = str(raised.value)
    assert "\n" not in message
    assert "non-finite" in message and "at update 8" in message and "step_000006" in message
    if kind == "grad":  # the loss itself was finite
        assert "gradient norm nan" in message and "loss nan" not in message
    assert saved_steps(run) == ["step_000003", "step_000006"]
    assert last_checkpoint(run)[0] == 6
    assert all(all_finite(run / "checkpoints" / name) for name in saved_steps(run))
    records = read_metrics(run)
    assert max(r["step"] for r in records) == 7 and not any("summary" in r for r in records)


def test_skip_nonfinite_skips_the_update_and_logs_it(fp_checkpoint, tmp_path, monkeypatch):
    # attempts: 0 1 [2 skip] 3 4 [5 skip] [6 skip] 7 ... -> skips at steps 2, 4, 4
    install_faults(monkeypatch, "2,5:grad,6:inf")
    run = tmp_path / "r"
    result = train(config(fp_checkpoint, run, skip_nonfinite=True, eval_every=2, save_every=4))
    records = read_metrics(run)
    skipped = [r for r in records if "skipped" in r]
    assert [r["step"] for r in skipped] == [2, 4, 4]
    assert "gradient norm nan" in skipped[1]["skipped"]
    assert "loss inf" in skipped[2]["skipped"]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    # a skipped attempt is not evaluated or saved again: one eval per scheduled step
    evals = [r["step"] for r in records if "eval_loss" in r]
    assert evals == [0, 2, 4, 6, 8, 10, 12]
    assert saved_steps(run) == ["step_000004", "step_000008", "step_000012"]
    # no optimizer update on a skipped attempt: AdamW counted exactly 12 steps
    state = load_trainer_state(result.final_checkpoint)
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {12.0}
    assert state["counters"]["skipped"] == 3 and records[-1]["summary"]["skipped_updates"] == 3
    assert all_finite(result.final_checkpoint)


def test_skip_without_faults_changes_nothing(fp_checkpoint, tmp_path):
    plain = train(config(fp_checkpoint, tmp_path / "a"))
    skipping = train(config(fp_checkpoint, tmp_path / "b", skip_nonfinite=True))
    assert comparable(read_metrics(plain.out)) == comparable(read_metrics(skipping.out))


class Killed(Exception):
    """Stands in for a kill: raised from inside an update."""


def test_resume_after_skips_is_bit_identical(fp_checkpoint, tmp_path, monkeypatch):
    """A skip right after checkpoint 4 (logged at step 4), then a crash; the resumed run drops
    the records written after the checkpoint, meets the same fault again, and ends exactly as
    the uninterrupted run."""
    # attempts: 0 1 [2 skip@2] 3 4 | checkpoint 4 | [5 skip@4] 6 7 (crash at attempt 8)
    install_faults(monkeypatch, "2,5:grad")
    kwargs = {"skip_nonfinite": True, "save_every": 4, "eval_every": 2}
    whole = train(config(fp_checkpoint, tmp_path / "whole", **kwargs)).out

    calls = {"n": 0}
    real_mean = distributed.mean_across_ranks

    def crash_at_attempt_8(value):
        calls["n"] += 1
        if calls["n"] == 9:
            raise Killed
        return real_mean(value)

    monkeypatch.setattr(loop.distributed, "mean_across_ranks", crash_at_attempt_8)
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        train(config(fp_checkpoint, cut, **kwargs))
    monkeypatch.setattr(loop.distributed, "mean_across_ranks", real_mean)
    assert last_checkpoint(cut)[0] == 4
    assert [r["step"] for r in read_metrics(cut) if "skipped" in r] == [2, 4]

    resumed = TrainConfig.from_json(json.loads((cut / "config.json").read_text()))
    train(resumed, resume=cut)
    a, b = comparable(read_metrics(whole)), comparable(read_metrics(cut))
    assert a == b
    assert [r["step"] for r in b if "skipped" in r] == [2, 4]
    final_a = winq.load(last_checkpoint(whole)[1])[0].state_dict()
    final_b = winq.load(last_checkpoint(cut)[1])[0].state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_checkpoint_refuses_non_finite_weights(fp_checkpoint, tmp_path, monkeypatch):
    """A weight that turns inf in an update (finite loss and gradients before it) reaches the
    save of step 4: the save refuses, the run stops, checkpoint 2 stays the last."""
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_corrupt(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_corrupt)
    run = tmp_path / "r"
    with pytest.raises(RuntimeFailure, match=r"non-finite weight .* at step 4; checkpoint not"):
        train(config(fp_checkpoint, run, save_every=2))
    assert saved_steps(run) == ["step_000002"] and last_checkpoint(run)[0] == 2
    assert all_finite(run / "checkpoints" / "step_000002")
    assert not list((run / "checkpoints").glob(".*"))  # no temporary folder left behind


def test_too_many_consecutive_skips_stop(fp_checkpoint, tmp_path, monkeypatch):
    install_faults(monkeypatch, ",".join(str(i) for i in range(3, 30)))
    with pytest.raises(RuntimeFailure, match="21 non-finite updates in a row at update 4"):
        train(config(fp_checkpoint, tmp_path / "r", skip_nonfinite=True, save_every=3))
    assert last_checkpoint(tmp_path / "r")[0] == 3


def test_cli_fault_exit_1_then_resume_with_skip(fp_checkpoint, tmp_path):
    run = tmp_path / "run"
    args = ["--init", str(fp_checkpoint), "--bits", "2", *MINI_FLAGS, "--save-every", "4"]
    failed = run_cli([*args, "--out", str(run)], cwd=tmp_path, faults="9:grad")
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert len(lines) == 1 and lines[0].startswith("winq-train: error: non-finite loss")
    assert "at update 10" in lines[0] and "step_000008" in lines[0]
    assert "--skip-nonfinite" in lines[0]
    assert saved_steps(run) == ["step_000004", "step_000008"]
    # the remedy the message names: resume, skipping the faulty update (the fault recurs)
    resumed = run_cli(
        ["--resume", str(run), "--skip-nonfinite", "--no-progress"],
        cwd=tmp_path,
        faults="9:grad",
    )
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(run)
    assert [r["step"] for r in records if "skipped" in r] == [9]
    assert records[-1]["summary"]["skipped_updates"] == 1
    assert saved_steps(run)[-1] == "step_000012"
    assert all_finite(run / "checkpoints" / "step_000012")

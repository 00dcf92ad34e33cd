"""The WinQ mechanism in the trainer: the latent grid logged at every evaluation and around
every reset, the reset modes through the API and the command line, and bit-exact resumes of
runs whose state includes level codes and dither draws."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from faulty_train import install as install_faults
from helpers import MINI, MINI_FLAGS, comparable, read_metrics, run_cli

import winq
from winq.cli import RuntimeFailure
from winq.train import inputs
from winq.train.config import TrainConfig
from winq.train.loop import train
from winq.train.state import last_checkpoint


def config(fp_checkpoint, out, **overrides) -> TrainConfig:
    values = {**MINI, "init": str(fp_checkpoint), "bits": 2, "out": str(out), **overrides}
    return TrainConfig(**values).resolve()


def codes_of(model) -> dict[str, torch.Tensor]:
    return winq.level_codes(model)


def share_changed(before: dict, after: dict) -> float:
    changed = sum(int((before[name] != after[name]).sum()) for name in before)
    return changed / sum(codes.numel() for codes in before.values())


def test_every_evaluation_logs_the_latent_grid_of_the_model_it_evaluated(fp_checkpoint, tmp_path):
    """Evaluations at 0, 3, ..., 12 and a checkpoint at each (after the clipped resets at 3, 6
    and 9): every logged statistic equals winq.nn's on the checkpoint of that step, and the
    flip fraction is the share of level codes that differ between consecutive checkpoints."""
    cfg = config(fp_checkpoint, tmp_path / "run", eval_every=3, save_every=3, reset_mode="clipped")
    records = read_metrics(train(cfg).out)
    start, _ = inputs.build_model(cfg)  # the quantized model of step 0 (no checkpoint there)
    models = {0: start}
    for step in (3, 6, 9, 12):
        models[step], _ = winq.load(tmp_path / "run" / "checkpoints" / f"step_{step:06d}")
    evals = {r["step"]: r for r in records if "eval_loss" in r}
    assert sorted(evals) == [0, 3, 6, 9, 12]
    assert "flip_fraction" not in evals[0] and "flip_since" not in evals[0]
    for step, model in models.items():
        record = evals[step]
        assert record["grid_dispersion"] == winq.grid_dispersion(model).value
        assert record["clipped_fraction"] == winq.clipped_fractions(model).value
        layers = record["latents"]
        assert layers["grid_dispersion"] == winq.grid_dispersion(model).per_layer
        assert layers["clipped_fraction"] == winq.clipped_fractions(model).per_layer
        if step > 0:
            assert record["flip_since"] == step - 3
            expected = share_changed(codes_of(models[step - 3]), codes_of(model))
            assert record["flip_fraction"] == pytest.approx(expected, rel=1e-12)
            assert set(layers["flip_fraction"]) == set(layers["grid_dispersion"])
    assert any(evals[s]["flip_fraction"] > 0 for s in (3, 6, 9, 12))


def test_reset_records_the_grid_before_and_after(fp_checkpoint, tmp_path):
    """A clipped reset moves exactly the clipped latents, all back into range; the record's
    'after' is the state the checkpoint of that step holds; 'before' has the flips since the
    last evaluation, which the reset does not change (Q(W) is kept)."""
    cfg = config(fp_checkpoint, tmp_path / "run", eval_every=3, save_every=3, reset_mode="clipped")
    records = read_metrics(train(cfg).out)
    resets = [r for r in records if "reset" in r]
    assert [r["step"] for r in resets] == [3, 6, 9]
    evals = {r["step"]: r for r in records if "eval_loss" in r}
    for r in resets:
        reset, step = r["reset"], r["step"]
        assert reset["mode"] == "clipped" and reset["weights"] == 393216
        clipped_before = round(reset["before"]["clipped_fraction"] * reset["weights"])
        assert reset["unclipped"] == reset["moved"] == clipped_before > 0
        assert reset["after"]["clipped_fraction"] == 0.0
        model, _ = winq.load(tmp_path / "run" / "checkpoints" / f"step_{step:06d}")
        assert reset["after"]["grid_dispersion"] == winq.grid_dispersion(model).value
        # the evaluation at this step runs after the reset and compares with the same codes
        assert reset["before"]["flip_since"] == evals[step]["flip_since"] == step - 3
        assert reset["before"]["flip_fraction"] == evals[step]["flip_fraction"]


def test_dither_resets_and_latent_controller_resume_bit_for_bit(
    fp_checkpoint, tmp_path, monkeypatch
):
    """A guided run (latent rule) resetting in dither mode before and after a fault: resumed
    from its checkpoint at 5 it logs exactly what the uninterrupted run logs, and ends with the
    same weights bit for bit (dither draws, level codes and controller state all restored)."""
    kwargs = {"save_every": 5, "eval_every": 2, "guide": True, "reset_mode": "dither",
              "guide_every": 2, "guide_min_period": 2, "guide_clip_growth": 1e-4,
              "guide_flip_budget": None, "guide_max_return": None,
              "guide_lr_floor": 0.0}  # fmt: skip
    whole = train(config(fp_checkpoint, tmp_path / "whole", **kwargs))
    install_faults(monkeypatch, "7")
    with pytest.raises(RuntimeFailure, match="non-finite"):
        train(config(fp_checkpoint, tmp_path / "cut", **kwargs))
    install_faults(monkeypatch, None)
    cut = tmp_path / "cut"
    assert last_checkpoint(cut)[0] == 5
    resumed = TrainConfig.from_json(json.loads((cut / "config.json").read_text()))
    result = train(resumed, resume=cut)
    a, b = comparable(read_metrics(whole.out)), comparable(read_metrics(cut))
    assert a == b
    resets = [r for r in a if "reset" in r]
    assert {r["reset"]["mode"] for r in resets} == {"dither"}
    assert min(r["step"] for r in resets) < 5 < max(r["step"] for r in resets)
    assert any("flip_fraction" in r.get("guide", {}) for r in a if r["step"] > 5)
    first, _ = winq.load(whole.final_checkpoint)
    second, _ = winq.load(result.final_checkpoint)
    for (name, x), (_, y) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(x, y), name


def test_latent_rule_logs_its_readings_and_resets_when_clipping_grows(fp_checkpoint, tmp_path):
    run = train(config(fp_checkpoint, tmp_path / "g", guide=True, guide_every=2,
                       guide_min_period=4, guide_clip_growth=1e-4, guide_flip_budget=None,
                       guide_max_return=None, guide_lr_floor=0.0)).out  # fmt: skip
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["winq"]["guide"]["rule"] == "latent" and cfg["winq"]["reset_mode"] == "clipped"
    records = read_metrics(run)
    guides = [r for r in records if "guide" in r]
    assert [r["step"] for r in guides] == [0, 2, 4, 6, 8, 10]  # every 2, the start included
    assert guides[0]["guide"]["reason"].startswith("the first reading")
    for r in guides[1:]:
        g = r["guide"]
        assert g["rule"] == "latent" and g["flip_since"] == r["step"] - 2
        assert 0 <= g["flip_fraction"] <= 1 and g["remaining_flips"] >= 0
    assert not any("diagnostics" in r for r in records)  # no Hessian product at all
    decisions = {r["step"]: r["guide"]["decision"] for r in guides}
    assert decisions[2] == "wait"  # within the min period
    resets = [r for r in records if "reset" in r]
    assert resets and all(decisions[r["step"]] == "reset" for r in resets)
    assert all(r["reset"]["reason"] == "guided" for r in resets)
    assert all(b["step"] - a["step"] >= 4 for a, b in itertools.pairwise(resets))
    # after a reset, each reading says how much of the clipping it removed is back
    first = resets[0]["reset"]
    removed = first["before"]["clipped_fraction"] - first["after"]["clipped_fraction"]
    later = [r["guide"] for r in guides if resets[0]["step"] < r["step"] <= resets[-1]["step"]]
    assert removed > 0 and later
    for g in later[:1]:
        back = (g["clipped_fraction"] - first["after"]["clipped_fraction"]) / removed
        assert g["clipping_returned"] == pytest.approx(back, rel=1e-12)


@pytest.mark.parametrize("mode", ["full", "clipped", "dither"])
def test_each_reset_mode_through_the_command_line(fp_checkpoint, tmp_path, mode):
    args = ["--init", str(fp_checkpoint), "--bits", "2", *MINI_FLAGS, "--steps", "4",
            "--winq-resets", "1", "--winq-reset-mode", mode, "--out", str(tmp_path / "r")]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config_json = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config_json["reset_mode"] == config_json["winq"]["reset_mode"] == mode
    (reset,) = [r["reset"] for r in read_metrics(tmp_path / "r") if "reset" in r]
    assert (
        reset["mode"] == mode
        and reset["after"]["clipped_fraction"] <= reset["before"]["clipped_fraction"]
    )
    if mode == "clipped":
        assert reset["moved"] == reset["unclipped"]  # in-range latents untouched
    else:
        assert reset["moved"] > reset["unclipped"]

"""Unit tests of the trainer's pure pieces: schedules, the controller's rule, metrics, state."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from winq.train.controller import (
    Controller,
    GuideRule,
    choose_alpha,
    decide,
    spectral_summary,
    trial_reset,
)
from winq.train.metrics import MetricsLog, read_records, truncate_after
from winq.train.schedule import CosineSchedule, fixed_reset_steps, lr_at
from winq.train.state import (
    get_rng_state,
    last_checkpoint,
    prune_checkpoints,
    set_final,
    set_rng_state,
)

# -- schedules -------------------------------------------------------------------------------


def test_lr_warmup_then_cosine():
    assert lr_at(0, 1.0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 100, 10) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(100, 1.0, 100, 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    schedule = CosineSchedule(2.0, 100, 0)
    assert schedule(0) == 2.0 and schedule.fraction(50) == pytest.approx(0.5)
    values = [schedule(t) for t in range(100)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("total", "resets", "expected"),
    [
        (240_000, 3, [60_000, 120_000, 180_000]),  # the paper: every quarter
        (100, 3, [25, 50, 75]),
        (10, 3, [3, 5, 8]),  # 2.5 -> 3, 7.5 -> 8: round half up
        (6, 1, [3]),
        (100, 0, []),
        (4, 3, [1, 2, 3]),
    ],
)
def test_fixed_reset_steps_evenly_spaced(total, resets, expected):
    assert fixed_reset_steps(total, resets) == expected


def test_fixed_reset_steps_period_and_errors():
    assert fixed_reset_steps(100, period=30) == [30, 60, 90]
    assert fixed_reset_steps(90, period=30) == [30, 60]  # never after the last update
    with pytest.raises(ValueError):
        fixed_reset_steps(10, 10)
    with pytest.raises(ValueError):
        fixed_reset_steps(10, -1)
    with pytest.raises(ValueError):
        fixed_reset_steps(10, period=0)


# -- the controller's rule -------------------------------------------------------------------


def diag(clipped=0.0, near=0.5, abs_max=10.0):
    return {
        "clipped_fraction": clipped,
        "near_zero_mass": near,
        "abs_lambda_max": abs_max,
        "lambda_max": abs_max,
        "lambda_min": -abs_max / 10,
        "negative_mass": 0.2,
    }


RULE = GuideRule(min_period=100, max_period=500, clip_growth=0.02, flat_growth=0.05, shrink=1.5)


def run_decide(now, ref, since=200, lr=1.0, after_warmup=True, rule=RULE):
    return decide(
        now, ref, steps_since_reset=since, lr_fraction=lr, after_warmup=after_warmup, rule=rule
    )


def test_decide_waits_without_a_trigger():
    d = run_decide(diag(0.01, 0.52, 9.0), diag(0.0, 0.5, 10.0))
    assert d.decision == "wait" and d.triggers == []


@pytest.mark.parametrize(
    ("now", "trigger"),
    [
        (diag(clipped=0.021), "clipped fraction"),
        (diag(near=0.56), "near-zero mass"),
        (diag(abs_max=6.6), "|lambda|max"),
    ],
)
def test_decide_resets_on_each_trigger(now, trigger):
    d = run_decide(now, diag())
    assert d.decision == "reset"
    assert len(d.triggers) == 1 and d.triggers[0].startswith(trigger)


def test_decide_respects_min_and_max_period():
    assert run_decide(diag(clipped=0.5), diag(), since=99).decision == "wait"
    assert run_decide(diag(clipped=0.5), diag(), since=100).decision == "reset"
    d = run_decide(diag(), diag(), since=500)
    assert d.decision == "reset" and "max period" in d.reason
    # no reference yet: only the max period can make a reset due
    assert run_decide(diag(clipped=0.5), None, since=200).decision == "wait"


def test_decide_refuses_late_in_the_schedule_but_not_in_warmup():
    d = run_decide(diag(clipped=0.5), diag(), lr=0.2)
    assert d.decision == "refuse" and "floor" in d.reason
    assert run_decide(diag(clipped=0.5), diag(), lr=0.2, after_warmup=False).decision == "reset"
    # nothing due: a late measurement still just waits
    assert run_decide(diag(), diag(), lr=0.2).decision == "wait"


def test_decide_switched_off_triggers_and_nonfinite_values():
    rule = GuideRule(min_period=0, clip_growth=None, flat_growth=None, shrink=None)
    assert run_decide(diag(0.9, 0.9, 0.1), diag(), rule=rule).decision == "wait"
    now = diag(near=float("nan"), abs_max=float("inf"))
    assert run_decide(now, diag()).decision == "wait"


def test_choose_alpha_gentlest_reaching_most_of_the_gain():
    # |lambda|max after trial resets, as measured (tiny, 2-bit): monotone in alpha
    before = {"abs_lambda_max": 14.596, "clipped_fraction": 0.0300}
    trials = {
        0.8: {"abs_lambda_max": 14.698, "clipped_fraction": 0.0199},
        0.6: {"abs_lambda_max": 14.833, "clipped_fraction": 0.0089},
        0.4: {"abs_lambda_max": 14.942, "clipped_fraction": 0.0017},
        0.2: {"abs_lambda_max": 14.986, "clipped_fraction": 0.0001},
        0.0: {"abs_lambda_max": 14.988, "clipped_fraction": 0.0},
    }
    assert choose_alpha(trials, before) == 0.2  # 99% of the gain; 0.4 has 88%
    assert choose_alpha(trials, before, gain=0.8) == 0.4
    assert choose_alpha(trials, before, by="clipped_fraction") == 0.4  # 94% un-clipped
    # nothing gained (1-bit LSQ cannot un-clip): the gentlest candidate
    flat = {a: {"abs_lambda_max": 14.596} for a in (0.0, 0.2, 0.6)}
    assert choose_alpha(flat, before) == 0.6
    assert choose_alpha(trials, None) == 0.8  # no reference: nothing to compare, be gentle


def test_choose_alpha_by_near_zero_mass_ties_to_larger_alpha():
    by = "near_zero_mass"
    assert choose_alpha({0.0: {by: 0.6}, 0.2: {by: 0.5}}, by=by) == 0.2
    assert choose_alpha({0.0: {by: 0.5}, 0.4: {by: 0.5002}}, by=by) == 0.4
    assert choose_alpha({0.0: {by: None}, 0.6: {by: 0.9}}, by=by) == 0.6
    with pytest.raises(ValueError):
        choose_alpha({})
    with pytest.raises(ValueError):
        choose_alpha({0.2: {}}, by="loss")


def test_spectral_summary_masses():
    nodes = torch.tensor([[-1.0, 0.0001, 2.0, 10.0]])
    weights = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    s = spectral_summary(nodes, weights, eps=1e-3)
    assert s["lambda_max"] == 10.0 and s["lambda_min"] == -1.0 and s["abs_lambda_max"] == 10.0
    assert s["near_zero_mass"] == pytest.approx(0.5)
    assert s["negative_mass"] == pytest.approx(0.1)


def quantized_tiny():
    from tiny_models import build_tiny_model

    import winq

    model = build_tiny_model("llama")
    winq.quantize_(model, winq.QuantConfig(bits=2, noise_sigma=1e-3, noise_mode="frozen"))
    model.train()
    model(torch.randint(0, 64, (1, 8)))  # draws the frozen noise
    return model


def test_trial_reset_restores_exactly():
    import winq

    model = quantized_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noise = [layer._frozen_noise for _, layer in winq.quant_layers(model)]
    with trial_reset(model, 0.0):
        changed = any(
            not torch.equal(before[f"{name}.weight"], layer.weight)
            for name, layer in winq.quant_layers(model)
        )
    assert changed
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(
        a is b
        for a, b in zip(noise, [layer._frozen_noise for _, layer in winq.quant_layers(model)])
    )


def test_controller_resets_with_the_best_candidate_and_takes_its_reference():
    import winq

    model = quantized_tiny()
    calls = []

    def measure(m):
        # a stand-in: the near-zero mass is the mean distance of W to the grid, so a smaller
        # alpha (a stronger reset) measures smaller; the clipped fraction is exact
        distance = sum(
            float((layer.weight.detach() - layer.quantized_weight()).abs().mean())
            for _, layer in winq.quant_layers(m)
        )
        calls.append(distance)
        return {"near_zero_mass": distance, "clipped_fraction": winq.clipped_fraction(m)}

    controller = Controller(
        GuideRule(min_period=0, max_period=1, alpha_by="near_zero_mass"),
        measure,
        alpha=None,
        alpha_candidates=(0.0, 0.5),
    )
    controller.initial(model)
    _, decision, alpha, candidates = controller.step(model, 5, 1.0, True)
    assert decision.decision == "reset" and alpha == 0.0 and set(candidates) == {0.0, 0.5}
    winq.reset_(model, alpha)
    again = measure(model)
    assert again["near_zero_mass"] == candidates[0.0]["near_zero_mass"]  # trial == real reset
    controller.after_reset(5, candidates[alpha])
    assert controller.last_reset_step == 5 and controller.reference is candidates[alpha]
    state = controller.state_dict()
    other = Controller(GuideRule(), measure)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.state_dict() == json.loads(json.dumps(state))


def test_controller_stops_after_a_refusal():
    controller = Controller(
        GuideRule(min_period=0, max_period=1), lambda m: {"near_zero_mass": 0.1}
    )
    model = torch.nn.Linear(2, 2)
    controller.initial(model)
    _, decision, _, _ = controller.step(model, 10, 0.01, True)
    assert decision.decision == "refuse" and controller.stopped
    assert controller.step(model, 20, 0.01, True) == (None, None, None, {})


def test_controller_measure_leaves_global_rng_alone():
    def measure(m):
        torch.randn(3)
        return {}

    controller = Controller(GuideRule(), measure)
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    controller.initial(model)
    assert torch.equal(torch.rand(1), expected)


# -- metrics.jsonl -----------------------------------------------------------------------------


def test_metrics_log_appends_standard_json_and_truncates(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(1, loss=2.0, lr=None)
    log.write(2, loss=float("nan"), diagnostics={"lambda_max": float("inf")})
    log.write(2, eval_loss=1.5)
    log.write(3, loss=1.0)
    log.close()
    records = read_records(path)
    assert records[0] == {"step": 1, "loss": 2.0}
    assert records[1] == {"step": 2, "loss": None, "diagnostics": {"lambda_max": None}}
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # a killed writer
    assert len(read_records(path)) == 4
    assert truncate_after(path, 2) == 2
    assert [r["step"] for r in read_records(path)] == [1, 2, 2]
    assert path.read_text().endswith("\n")
    assert MetricsLog(tmp_path / "x.jsonl", enabled=False).write(1, loss=1.0) == {
        "step": 1,
        "loss": 1.0,
    }
    assert not (tmp_path / "x.jsonl").exists()


# -- checkpoints and RNG -------------------------------------------------------------------------


def fake_checkpoint(run, step):
    folder = run / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "trainer_state.pt"):
        (folder / name).write_text("x")
    return folder


def test_last_checkpoint_pointer_and_fallback(tmp_path):
    assert last_checkpoint(tmp_path) is None
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 20)
    half = tmp_path / "checkpoints" / "step_000030"
    half.mkdir()  # incomplete: ignored
    assert last_checkpoint(tmp_path)[0] == 20
    set_final(tmp_path, 20)
    assert (tmp_path / "checkpoints" / "final").read_text() == "step_000020\n"
    assert last_checkpoint(tmp_path)[0] == 20
    fake_checkpoint(tmp_path, 40)  # pointer not yet updated (killed in between)
    assert last_checkpoint(tmp_path)[0] == 40
    removed = prune_checkpoints(tmp_path, 2)
    assert {p.name for p in removed} == {"step_000010", "step_000020"}


def test_rng_state_round_trip_weights_only(tmp_path):
    import random

    torch.manual_seed(3)
    random.seed(3)
    state = get_rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (torch.rand(2), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]
    assert math.isfinite(expected[1])

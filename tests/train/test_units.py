"""Unit tests of the trainer's pure pieces: schedules, the controller's rule, metrics, state."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from winq.runfiles import (
    MetricsLog,
    last_checkpoint,
    prune_checkpoints,
    read_records,
    set_final,
    truncate_after,
)
from winq.train.config import TrainConfig
from winq.train.controller import (
    Controller,
    GuideRule,
    choose_alpha,
    clipping_returned,
    decide,
    decide_latent,
    remaining_flips,
    respread_need,
    spectral_summary,
    trial_reset,
)
from winq.train.schedule import CosineSchedule, fixed_reset_steps, lr_at
from winq.train.state import get_rng_state, set_rng_state

# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "steps", "warmup"),
    [(16, 30, 2), (2, 30, 2), (16, None, 30), (2, None, 15), (2, 1, 0), (2, 2, 1), (16, 100, 5)],
)
def test_an_implicit_warmup_follows_an_explicit_run_length(bits, steps, warmup):
    """`winq-train --steps 30` on a preset: the preset's 5% warm-up, not its fixed count (30
    for tiny pre-training, which used to be refused as "--warmup 30 must be smaller")."""
    config = TrainConfig(preset="tiny", bits=bits, steps=steps).resolve()
    assert config.warmup == warmup


def test_an_explicit_warmup_is_checked_not_adapted():
    with pytest.raises(ValueError, match="--warmup 30 must be smaller than --steps 30"):
        TrainConfig(preset="tiny", bits=16, steps=30, warmup=30).resolve()
    assert TrainConfig(preset="tiny", bits=16, steps=30, warmup=7).resolve().warmup == 7


def test_reset_mode_defaults_and_the_modes_of_winq_nn():
    import winq.nn
    from winq.train.config import RESET_MODES

    assert RESET_MODES == winq.nn.RESET_MODES  # the trainer's copy (no torch import there)
    assert TrainConfig(bits=2).resolve().reset_mode == "full"  # the paper's fixed schedule
    assert TrainConfig(bits=2, guide=True).resolve().reset_mode == "clipped"
    spectrum = TrainConfig(bits=2, guide=True, guide_rule="spectrum").resolve()
    assert spectrum.reset_mode == "full" and spectrum.guide_max_period == 150
    latent = TrainConfig(bits=2, guide=True, winq_alpha="auto", reset_mode="dither").resolve()
    assert latent.reset_mode == "dither" and latent.guide_every == 15
    assert latent.guide_max_period == 0  # the latent rule never forces a reset
    for bad, message in (
        ({"reset_mode": "half"}, "--winq-reset-mode must be one of full, clipped, dither"),
        ({"guide_rule": "hessian"}, "--guide-rule must be one of latent, spectrum"),
        ({"guide_flip_budget": -1.0}, "--guide-flip-budget"),
        ({"guide_max_return": math.nan}, "--guide-max-return"),
        ({"guide_probes": 0}, "--guide-probes"),
        ({"bits": 16, "reset_mode": "clipped"}, "needs QAT"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).check_flags()


def test_a_config_json_from_before_the_reset_modes_still_resumes():
    """Fields added later take the value that reproduces what such a run did: full resets
    and the spectrum rule."""
    data = TrainConfig(bits=2, guide=True, guide_rule="spectrum").resolve().to_json()
    for name in ("reset_mode", "guide_rule", "guide_flip_budget", "guide_max_return",
                 "guide_probes"):  # fmt: skip
        del data[name]
    old = TrainConfig.from_json(data)
    assert (old.reset_mode, old.guide_rule, old.guide_flip_budget) == ("full", "spectrum", None)
    assert old.guide_max_return is None


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


def diag(clipped=0.0, near=0.5, abs_max=10.0, half_width=0.01):
    return {
        "clipped_fraction": clipped,
        "near_zero_mass": near,
        "near_zero_mass_ci": None if half_width is None else [near - half_width, near + half_width],
        "abs_lambda_max": abs_max,
        "lambda_max": abs_max,
        "lambda_min": -abs_max / 10,
        "negative_mass": 0.2,
    }


RULE = GuideRule(
    kind="spectrum", min_period=100, max_period=500, clip_growth=0.02, flat_growth=0.05, shrink=1.5
)


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


def test_near_zero_mass_trigger_needs_disjoint_intervals():
    """A mass rise beyond flat_growth fires only when the 95% intervals over probes do not
    overlap; one probe gives no interval, so it never fires."""
    assert run_decide(diag(near=0.56, half_width=0.02), diag(half_width=0.02)).decision == "reset"
    # the same rise, but intervals of half-width 0.04 overlap (0.52..0.60 vs 0.46..0.54)
    assert run_decide(diag(near=0.56, half_width=0.04), diag(half_width=0.04)).decision == "wait"
    assert run_decide(diag(near=0.9, half_width=None), diag(half_width=None)).decision == "wait"
    assert run_decide(diag(near=0.9, half_width=0.01), diag(half_width=None)).decision == "wait"


def test_spectral_summary_interval_over_probes():
    # two probes: near-zero masses 0.50 and 0.52 (|theta| < 1e-3 * 10); t(0.975, 1) = 12.7062
    nodes = torch.tensor([[0.0, 1.0, 10.0], [0.0, 1.0, 10.0]], dtype=torch.float64)
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.52, 0.28, 0.2]], dtype=torch.float64)
    s = spectral_summary(nodes, weights, eps=1e-3)
    assert s["near_zero_mass"] == pytest.approx(0.51)
    half = 12.7062047362 * 0.01  # standard error: s.d. 0.02/sqrt(2) over sqrt(2) probes = 0.01
    assert s["near_zero_mass_ci"] == pytest.approx([0.51 - half, 0.51 + half], rel=1e-9)
    one = spectral_summary(nodes[:1], weights[:1], eps=1e-3)
    assert one["near_zero_mass_ci"] is None


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
    rule = GuideRule(kind="spectrum", min_period=0, clip_growth=None, flat_growth=None, shrink=None)
    assert run_decide(diag(0.9, 0.9, 0.1), diag(), rule=rule).decision == "wait"
    now = diag(near=float("nan"), abs_max=float("inf"))
    assert run_decide(now, diag()).decision == "wait"


# -- the latent rule ----------------------------------------------------------------------------

LATENT = GuideRule(min_period=40, clip_growth=0.01, lr_floor=0.25, flip_budget=1.0,
                   max_return=None)  # fmt: skip


def reading(clipped, flips=0.05, remaining=10.0, dispersion=0.45, collapse=0.36):
    return {"clipped_fraction": clipped, "grid_dispersion": dispersion, "flip_fraction": flips,
            "remaining_flips": remaining, "collapse": collapse}  # fmt: skip


def replay(readings, rule=LATENT, every=20, warmup=10, lr=lambda step: 1.0):
    """The latent rule over a sequence of readings taken every ``every`` steps, as the
    controller applies it: the reference is the first reading, then the reading just after
    each reset (a clipped reset leaves nothing clipped, and the reference remembers the clipped
    fraction before it); the first refusal stops it.

    Returns:
        ``[(step, decision), ...]``.
    """
    reference, last_reset, out = readings[0], 0, []
    for index, now in enumerate(readings[1:], start=1):
        step = index * every
        decision = decide_latent(now, reference, steps_since_reset=step - last_reset,
                                 lr_fraction=lr(step), after_warmup=step >= warmup, rule=rule)  # fmt: skip
        out.append((step, decision.decision))
        if decision.decision == "reset":
            reference = {**now, "clipped_fraction": 0.0,
                         "clipped_before_reset": now["clipped_fraction"]}  # fmt: skip
            last_reset = step
        if decision.decision == "refuse":
            break
    return out


def test_latent_rule_never_resets_without_growing_saturation():
    """Clipping that stays within clip_growth of its start never triggers: no reset at all,
    however freely the latents still flip."""
    seq = [reading(0.030 + 0.0006 * i, flips=0.2, remaining=50.0) for i in range(15)]
    assert {d for _, d in replay(seq)} == {"wait"}


def test_latent_rule_resets_when_clipping_grows_then_again_from_the_new_reference():
    # clipped fraction 0.02 at the start, +0.004 per reading (every 20 steps)
    seq = [reading(0.020 + 0.004 * i) for i in range(12)]
    decisions = dict(replay(seq))
    # +0.012 at step 60 (>= 0.01 and >= min period 40): reset; the reference is then 0, so
    # 0.048 at step 140 is again a rise of >= 0.01, but steps 80..100 are within the period
    assert [s for s, d in decisions.items() if d == "reset"] == [60, 100, 140, 180, 220]
    assert decisions[20] == decisions[40] == decisions[80] == "wait"


def test_latent_rule_refuses_when_the_latents_can_no_longer_travel():
    """Saturation grows; the planned reset lowers the dispersion by 0.36 (a full reset at
    alpha 0.2 of latents at D = 0.45), taking back 0.18 cell widths of travel; the rest of the
    run is predicted to flip each latent 0.15 times, below budget 1 x 0.18: the first due reset
    is refused and nothing more happens."""
    seq = [reading(0.02 + 0.01 * i, remaining=0.15) for i in range(8)]
    assert replay(seq) == [(20, "wait"), (40, "refuse")]
    # 0.2 flips remaining > 0.18 needed: reset; with budget 2 (0.36 needed) refused
    enough = [reading(0.02 + 0.01 * i, remaining=0.2) for i in range(3)]
    assert replay(enough) == [(20, "wait"), (40, "reset")]
    strict = GuideRule(min_period=40, flip_budget=2.0)
    assert replay(enough, rule=strict) == [(20, "wait"), (40, "refuse")]
    # a reset that collapses nothing (clipped mode) or switched-off budget: never refused for it
    clipped = [reading(0.02 + 0.01 * i, remaining=0.01, collapse=-0.002) for i in range(3)]
    assert replay(clipped) == [(20, "wait"), (40, "reset")]
    assert (40, "reset") in replay(seq, rule=GuideRule(min_period=40, flip_budget=None))
    # an unknown prediction (no flips measured yet) does not refuse
    unknown = [reading(0.02 + 0.01 * i, remaining=None) for i in range(3)]
    assert replay(unknown) == [(20, "wait"), (40, "reset")]
    assert respread_need(0.36) == pytest.approx(0.18) and respread_need(-0.01) is None


def test_clipping_returned_is_the_share_of_the_removed_clipping_that_came_back():
    reference = {"clipped_fraction": 0.01, "clipped_before_reset": 0.05}
    assert clipping_returned({"clipped_fraction": 0.03}, reference) == pytest.approx(0.5)
    assert clipping_returned({"clipped_fraction": 0.05}, reference) == pytest.approx(1.0)
    assert clipping_returned({"clipped_fraction": 0.0}, reference) == pytest.approx(-0.25)
    # before any reset, or a reset that removed nothing: unknown
    assert clipping_returned({"clipped_fraction": 0.03}, {"clipped_fraction": 0.01}) is None
    assert clipping_returned({"clipped_fraction": 0.03}, None) is None
    flat = {"clipped_fraction": 0.02, "clipped_before_reset": 0.02}
    assert clipping_returned({"clipped_fraction": 0.03}, flat) is None


def test_latent_rule_stops_when_a_reset_is_undone_and_keeps_going_when_it_is_not():
    """The 1.58-bit pattern: 1.6% clipped when the first reset comes due, 1.2% back when the
    next is due (0.75 of what the reset removed): that one is refused and nothing more is
    reset. The 1-bit pattern: 32% clipped at the first reset, 1.2% back when the next is due
    (0.04): it resets again, and the 1.2% that second reset removed is back (1.7 of it) at the
    third, which is refused. With max_return off every due reset is made."""
    rule = GuideRule(min_period=40, max_return=0.5)
    ternary = [reading(c) for c in (0.0, 0.005, 0.009, 0.016, 0.003, 0.006, 0.009, 0.012)]
    assert replay(ternary, rule=rule) == [(20, "wait"), (40, "wait"), (60, "reset"), (80, "wait"),
                                          (100, "wait"), (120, "wait"), (140, "refuse")]  # fmt: skip
    off = GuideRule(min_period=40, max_return=None)
    assert [s for s, d in replay(ternary, rule=off) if d == "reset"] == [60, 140]
    binary = [reading(c) for c in (0.30, 0.31, 0.32, 0.0, 0.004, 0.008, 0.012, 0.016, 0.020)]
    assert [(s, d) for s, d in replay(binary, rule=rule) if d != "wait"] == [
        (40, "reset"), (120, "reset"), (160, "refuse")]  # fmt: skip
    assert [s for s, d in replay(binary, rule=off) if d != "wait"] == [40, 120, 160]


def test_latent_rule_refuses_late_in_the_schedule_but_not_in_warmup():
    seq = [reading(0.02 + 0.01 * i) for i in range(4)]
    assert replay(seq, lr=lambda step: 0.2) == [(20, "wait"), (40, "refuse")]
    assert replay(seq, lr=lambda step: 0.2, warmup=100)[1] == (40, "reset")


def test_latent_rule_max_period_forces_a_reset():
    rule = GuideRule(min_period=40, max_period=80, clip_growth=None, flip_budget=1.0)
    seq = [reading(0.02) for _ in range(6)]
    assert replay(seq, rule=rule) == [(20, "wait"), (40, "wait"), (60, "wait"), (80, "reset"),
                                      (100, "wait")]  # fmt: skip


def test_remaining_flips_and_the_learning_rate_budget():
    # cosine over T = 4 from peak 1, no warm-up: 1, (1 + cos(pi/4))/2, 1/2, (1 - cos(pi/4))/2
    schedule = CosineSchedule(1.0, 4, 0)
    assert schedule.budget(0, 4) == pytest.approx(2.5, abs=1e-15)
    assert schedule.budget(2, 4) == pytest.approx(0.5 + (1 - math.sqrt(0.5)) / 2)
    assert schedule.budget(3, 99) == pytest.approx((1 - math.sqrt(0.5)) / 2)  # clipped to T
    assert schedule.budget(4, 8) == 0.0
    # flips keep pace with the learning rate: 5% of latents flipped while 10 lr-units were
    # spent, 60 remain -> 0.3 flips per latent to come
    assert remaining_flips(0.05, spent=10.0, remaining=60.0) == pytest.approx(0.3)
    assert remaining_flips(None, 10.0, 60.0) is None
    assert remaining_flips(0.05, 0.0, 60.0) is None


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
    # t = 1e-3 · λmax = 0.01: the node at -1e-4 is near zero, not negative, and only the
    # sign-based mass counts it
    nodes = torch.tensor([[-1.0, -0.0001, 2.0, 10.0], [-1.0, 0.0001, 2.0, 10.0]])
    weights = torch.tensor([[0.1, 0.5, 0.2, 0.2], [0.3, 0.5, 0.1, 0.1]])
    s = spectral_summary(nodes, weights, eps=1e-3)
    assert s["lambda_max"] == 10.0 and s["lambda_min"] == -1.0 and s["abs_lambda_max"] == 10.0
    assert s["near_zero_mass"] == pytest.approx(0.5)
    assert s["negative_mass"] == pytest.approx(0.2)
    assert s["positive_mass"] == pytest.approx(0.3)
    assert s["sign_negative_mass"] == pytest.approx((0.6 + 0.3) / 2)
    # Student t over the two probes (0.1, 0.3: standard error 0.1): 0.2 ± 12.706 · 0.1,
    # clipped to [0, 1]; the positive mass (0.4, 0.2) likewise
    assert s["negative_mass_ci"] == [0.0, 1.0]
    assert s["positive_mass_ci"] == [0.0, 1.0]
    assert s["near_zero_mass_ci"] == pytest.approx([0.5, 0.5])


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
    noise = [layer._frozen_noise.clone() for _, layer in winq.quant_layers(model)]
    with trial_reset(model, 0.0):
        changed = any(
            not torch.equal(before[f"{name}.weight"], layer.weight)
            for name, layer in winq.quant_layers(model)
        )
    assert changed
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    after = [layer._frozen_noise for _, layer in winq.quant_layers(model)]
    assert all(torch.equal(a, b) for a, b in zip(noise, after))


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
        GuideRule(kind="spectrum", min_period=0, max_period=1, alpha_by="near_zero_mass"),
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
    other = Controller(GuideRule(kind="spectrum"), measure)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.state_dict() == json.loads(json.dumps(state))


def test_controller_stops_after_a_refusal():
    controller = Controller(
        GuideRule(kind="spectrum", min_period=0, max_period=1), lambda m: {"near_zero_mass": 0.1}
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

    controller = Controller(GuideRule(kind="spectrum"), measure)
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

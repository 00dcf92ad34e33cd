"""The speedup to the baseline's final held-out loss, on hand-computed cases."""

from __future__ import annotations

import math

from plot_fixtures import (
    BASELINE_EVAL,
    EXPECTED_FIXED_SPEEDUP,
    EXPECTED_FIXED_STEPS,
    write_run,
)

from winq.plots import baseline_for, group_by_bits, load_inputs, speedup, steps_to_reach


def test_steps_to_reach():
    steps = [0, 100, 200, 300]
    assert steps_to_reach(steps, [3.0, 2.5, 2.0, 1.5], 2.0) == 200  # equality counts
    assert steps_to_reach(steps, [3.0, 2.5, 2.0, 1.5], 1.0) is None
    assert steps_to_reach([300, 100, 0], [1.5, 2.5, 3.0], 2.6) == 100  # unordered input
    assert steps_to_reach(steps, [3.0, math.nan, 2.0, 1.5], 2.5) == 200  # NaN never counts


def test_speedup_on_the_constructed_study(inputs):
    runs = {run.label: run for run in inputs.runs}
    base, fixed, guided = (
        runs["2-bit baseline"],
        runs["2-bit WinQ fixed"],
        runs["2-bit WinQ guided"],
    )
    assert baseline_for(fixed, inputs.runs) is base
    assert baseline_for(base, inputs.runs) is None
    assert baseline_for(runs["1-bit baseline"], inputs.runs) is None

    result = speedup(base, fixed)
    # by hand: the baseline ends at 2.0, reached first at step 1000; fixed is at 1.99 <= 2.0
    # first at step 400 (2.1 > 2.0 at step 300): 1000 / 400 = 2.5
    assert result.target == BASELINE_EVAL[-1] == 2.0
    assert result.baseline_steps == 1000
    assert result.steps == EXPECTED_FIXED_STEPS == 400
    assert result.ratio == EXPECTED_FIXED_SPEEDUP == 2.5
    assert result.reached and "2.50×" in result.describe()

    never = speedup(base, guided)  # bottoms out at 2.05 > 2.0
    assert never.steps is None and never.ratio is None and not never.reached
    assert "not reached" in never.describe()

    groups = group_by_bits(inputs.runs)
    assert sorted(groups) == [1, 2] and len(groups[2]) == 3


def test_baseline_steps_use_the_same_rule_when_its_loss_rises_at_the_end(tmp_path):
    # baseline: 3.0, 2.0 (step 100), 2.2 (step 200, final) -> target 2.2, first reached at 100
    # other:    3.0, 2.5, 2.15 -> reaches 2.2 at step 200 -> 100 / 200 = 0.5 (slower)
    losses_by_run = {"base": [3.0, 2.0, 2.2], "other": [3.0, 2.5, 2.15]}
    for name, losses in losses_by_run.items():
        write_run(
            tmp_path / name,
            bits=2,
            mode="off" if name == "base" else "fixed",
            eval_losses=losses + [None] * 8,  # fixture evaluates every 100 steps up to 1000
        )
    runs = {run.path.name: run for run in load_inputs([tmp_path]).runs}
    assert runs["base"].eval_loss["step"].tolist() == [0, 100, 200]
    result = speedup(runs["base"], runs["other"])
    assert (result.target, result.baseline_steps, result.steps) == (2.2, 100, 200)
    assert result.ratio == 0.5


def test_no_eval_loss_means_no_speedup(tmp_path):
    write_run(tmp_path / "base", bits=2, mode="off", eval_losses=BASELINE_EVAL)
    write_run(tmp_path / "winq", bits=2, mode="fixed", eval_losses=[])
    runs = {run.path.name: run for run in load_inputs([tmp_path]).runs}
    assert runs["winq"].eval_loss.empty
    assert speedup(runs["base"], runs["winq"]) is None

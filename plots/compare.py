"""Baseline vs WinQ: matching runs and the speedup to the baseline's final held-out loss.

Runs are compared within one bit width. The baseline of a bit width is a run whose WinQ mode
is ``"off"`` (config ``winq.mode``, or no reset records when the config does not say).

Speedup. Let L* be the baseline's final held-out loss (its last ``eval_loss``). A run *reaches*
L* at the first evaluated step whose ``eval_loss <= L*``. The same rule gives the baseline's own
step S_base (its last eval step when its held-out loss never rose above L* earlier, i.e. the
usual case), and the speedup of a WinQ run that reaches L* at step S is ``S_base / S``.
A run that never gets to L* has no speedup ("not reached").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from winq.plots.readers import RunData

__all__ = ["Speedup", "baseline_for", "group_by_bits", "speedup", "steps_to_reach"]


def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> int | None:
    """First step (in step order) whose loss is ``<= target``; None if none is.

    Args:
        steps: evaluated steps.
        losses: held-out losses at those steps (non-finite values never count).
        target: the loss to reach.
    """
    order = np.argsort(np.asarray(steps), kind="stable")
    for i in order:
        loss = float(losses[i])
        if np.isfinite(loss) and loss <= target:
            return int(steps[i])
    return None


@dataclass(frozen=True)
class Speedup:
    """How fast a run reaches its baseline's final held-out loss.

    Attributes:
        baseline: label of the baseline run.
        target: the baseline's final held-out loss L*.
        baseline_steps: the baseline's first eval step with ``eval_loss <= L*``.
        steps: this run's first eval step with ``eval_loss <= L*`` (None: not reached).
        ratio: ``baseline_steps / steps`` (None when not reached or ``steps == 0``).
    """

    baseline: str
    target: float
    baseline_steps: int
    steps: int | None
    ratio: float | None

    @property
    def reached(self) -> bool:
        return self.steps is not None

    def describe(self) -> str:
        if self.steps is None:
            return f"not reached (target {self.target:.4g})"
        if self.ratio is None:
            return f"reached at step {self.steps}"
        return f"{self.ratio:.2f}× ({self.steps} vs {self.baseline_steps} steps)"


def speedup(baseline: RunData, run: RunData) -> Speedup | None:
    """Speedup of ``run`` over ``baseline`` (see the module docstring); None without eval losses."""
    base = baseline.eval_loss
    other = run.eval_loss
    if base.empty or other.empty:
        return None
    target = float(base["eval_loss"].iloc[-1])
    baseline_steps = steps_to_reach(base["step"].tolist(), base["eval_loss"].tolist(), target)
    assert baseline_steps is not None  # its own last value always qualifies
    steps = steps_to_reach(other["step"].tolist(), other["eval_loss"].tolist(), target)
    ratio = baseline_steps / steps if steps else None
    return Speedup(baseline.label, target, baseline_steps, steps, ratio)


def group_by_bits(runs: Sequence[RunData]) -> dict[float | int | None, list[RunData]]:
    """Runs grouped by bit width, in input order within a group."""
    groups: dict[float | int | None, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.bits, []).append(run)
    return groups


def baseline_for(run: RunData, runs: Sequence[RunData]) -> RunData | None:
    """The baseline of ``run``'s bit width: the first baseline with eval losses, else the first.

    Returns None for a baseline run itself and when the bit width has no baseline.
    """
    if run.is_baseline:
        return None
    candidates = [r for r in runs if r.is_baseline and r.bits == run.bits and r is not run]
    with_eval = [r for r in candidates if not r.eval_loss.empty]
    if with_eval:
        return with_eval[0]
    return candidates[0] if candidates else None

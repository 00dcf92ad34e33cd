r"""Learning-rate schedule (linear warm-up, then cosine decay) and WinQ's fixed reset schedule.

The learning rate of the update that takes the model from step ``t`` to ``t + 1`` (``t``
counts optimizer updates already done, from 0) is

.. math::

    \eta_t = \eta \cdot \frac{t + 1}{W}                      \quad t < W \\
    \eta_t = \eta \cdot \bigl(r + (1 - r)\,\tfrac12\bigl(1 + \cos(\pi\,\tfrac{t - W}{T - W})\bigr)\bigr)
                                                             \quad W \le t < T

with peak ``η = --lr``, warm-up ``W = --warmup`` updates, ``T = --steps`` updates in all and
final ratio ``r = --min-lr-ratio`` (0: decay to zero, as the cosine schedule of the WinQ and
ParetoQ reference code does). It is a pure function of ``t``, so resuming needs nothing but
the step count (:class:`CosineSchedule` still has a ``state_dict`` for the checkpoint).

WinQ's fixed schedule. ``N`` resets evenly spaced over a run of ``T`` updates
(``--winq-resets N``) happen after the optimizer updates

.. math::  t_i = \lfloor i\,T/(N+1) + 1/2 \rfloor, \qquad i = 1, \dots, N

(round half up): the paper's "every quarter of training" is ``N = 3`` and gives the steps
``T/4, T/2, 3T/4`` — with ``T = 240k``, steps 60k, 120k and 180k, as in the reference code's
``K = 60k``. A period ``K`` (``--winq-period K``) resets after every update ``t`` that is a
positive multiple of ``K`` and smaller than ``T`` (a reset after the last update would change
nothing the run goes on to use).
"""

from __future__ import annotations

import math

__all__ = ["CosineSchedule", "fixed_reset_steps", "lr_at"]


def lr_at(
    step: int, peak_lr: float, total_steps: int, warmup: int, min_lr_ratio: float = 0.0
) -> float:
    """The learning rate of the update made at step ``step`` (0-based; see module docstring)."""
    if warmup > 0 and step < warmup:
        return peak_lr * (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


class CosineSchedule:
    """Warm-up + cosine decay; ``schedule(step)`` is the learning rate of update ``step``.

    Args:
        peak_lr: the learning rate after warm-up.
        total_steps: optimizer updates in the whole run.
        warmup: warm-up updates (linear from ``peak_lr / warmup``).
        min_lr_ratio: final learning rate as a fraction of ``peak_lr``.
    """

    def __init__(
        self, peak_lr: float, total_steps: int, warmup: int = 0, min_lr_ratio: float = 0.0
    ) -> None:
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup = int(warmup)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        return lr_at(step, self.peak_lr, self.total_steps, self.warmup, self.min_lr_ratio)

    def fraction(self, step: int) -> float:
        """The learning rate of update ``step`` as a fraction of the peak."""
        return self(step) / self.peak_lr if self.peak_lr > 0 else 0.0

    def budget(self, start: int, stop: int) -> float:
        """``Σ η_t`` over the updates ``start <= t < stop`` made by this run (clipped to
        ``[0, T)``): the learning rate a span of the run spends."""
        return math.fsum(self(t) for t in range(max(0, start), min(stop, self.total_steps)))

    def state_dict(self) -> dict[str, float | int]:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "min_lr_ratio": self.min_lr_ratio,
        }


def fixed_reset_steps(total_steps: int, resets: int = 0, period: int | None = None) -> list[int]:
    """The steps after which WinQ's fixed schedule resets (see the module docstring).

    Args:
        total_steps: optimizer updates in the run (T).
        resets: N evenly spaced resets (ignored when ``period`` is given).
        period: reset after every K-th update instead.

    Returns:
        Sorted, distinct steps in ``[1, T - 1]``.

    Raises:
        ValueError: a negative count, a non-positive period, or more resets than the run has
            room for (N ≥ T).
    """
    if period is not None:
        if period <= 0:
            raise ValueError(f"the reset period must be a positive integer, got {period}")
        return list(range(period, total_steps, period))
    if resets < 0:
        raise ValueError(f"the number of resets must be >= 0, got {resets}")
    if resets == 0:
        return []
    if resets >= total_steps:
        raise ValueError(
            f"{resets} evenly spaced resets need a run of more than {resets} steps, "
            f"got {total_steps}"
        )
    return [math.floor(i * total_steps / (resets + 1) + 0.5) for i in range(1, resets + 1)]

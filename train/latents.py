r"""The WinQ mechanism measured during training: level flips, grid dispersion, clipping.

A reset (:func:`winq.nn.reset_`) leaves the quantized model unchanged and moves the latent
weights ``x = W/s`` inside their rounding cells. What it changes is therefore invisible in the
loss at the moment of the reset and shows only in how the latents move afterwards. Three exact
statistics of :mod:`winq.nn` (each over all latent weights of all quantized layers, weighted
by weight count, with per-layer values) measure it, at no Hessian cost:

* ``flip_fraction`` — the share of latents whose quantized level changed since the previous
  evaluation, ``#{k_t(x) != k_{t'}(x)} / #W`` (:func:`winq.nn.flip_fraction`). It is what a
  reset can stall: a latent moved onto its level must travel half a cell before it flips;
* ``grid_dispersion`` — the mean position of in-range latents in their cells, 0 on the grid,
  1/2 for latents spread uniformly, 1 at the cell edges (:func:`winq.nn.grid_dispersion`).
  A ``full`` reset multiplies each in-range latent's offset from its level by α, so it takes
  the dispersion from D to α·D exactly;
* ``clipped_fraction`` — the share of latents outside the STE range, whose gradient is zero
  (:func:`winq.nn.clipped_fractions`): the saturation a reset can remove.

:class:`LatentTracker` keeps the level codes of the previous evaluation (int8, one byte per
latent weight), so that ``flip_fraction`` is the change over one evaluation interval; the codes
and their step are part of the trainer's checkpoint, so a resumed run logs what an
uninterrupted one logs. :func:`reset_generator` seeds the random draws of a ``dither`` reset
from the run's seed and the step alone, so a resumed run redraws them identically and needs no
saved generator state.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

__all__ = ["LatentTracker", "latent_summary", "reset_generator"]


def reset_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of a ``dither`` reset after update ``step`` of a run seeded ``seed``.

    Its seed is the first 8 bytes of BLAKE2b("winq-dither:{seed}:{step}") (63 bits), a pure
    function of the two numbers: distinct pairs give unrelated streams, and a run resumed from
    a checkpoint draws exactly what the uninterrupted run drew.
    """
    digest = hashlib.blake2b(f"winq-dither:{int(seed)}:{int(step)}".encode(), digest_size=8)
    return torch.Generator(device="cpu").manual_seed(
        int.from_bytes(digest.digest(), "little") & (2**63 - 1)
    )


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def latent_summary(model: nn.Module) -> dict[str, float | None]:
    """``{"grid_dispersion": D, "clipped_fraction": c}`` over all quantized layers (exact)."""
    from winq.nn import clipped_fractions, grid_dispersion

    return {
        "grid_dispersion": _number(grid_dispersion(model).value),
        "clipped_fraction": _number(clipped_fractions(model).value),
    }


class LatentTracker:
    """Level codes of the last evaluation, and the statistics logged at each evaluation."""

    def __init__(self) -> None:
        self.codes: dict[str, torch.Tensor] | None = None
        self.step: int | None = None

    def flips_since_last(self, model: nn.Module) -> dict[str, Any]:
        """``{"flip_fraction": f, "flip_since": step}`` against the codes of the last
        evaluation, or ``{}`` before the first one."""
        from winq.nn import flip_fraction

        if self.codes is None:
            return {}
        return {
            "flip_fraction": _number(flip_fraction(self.codes, model).value),
            "flip_since": self.step,
        }

    def evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        """The fields an evaluation record gets, then remember this step's level codes.

        Returns:
            ``flip_fraction`` and ``flip_since`` (from the second evaluation on),
            ``grid_dispersion`` and ``clipped_fraction`` (overall), and ``latents``: the same
            statistics per quantized layer, ``{statistic: {module name: value}}``.
        """
        from winq.nn import clipped_fractions, flip_fraction, grid_dispersion, level_codes

        stats = {}
        if self.codes is not None:
            stats["flip_fraction"] = flip_fraction(self.codes, model)
        stats["grid_dispersion"] = grid_dispersion(model)
        stats["clipped_fraction"] = clipped_fractions(model)
        fields: dict[str, Any] = {name: _number(stat.value) for name, stat in stats.items()}
        if self.codes is not None:
            fields["flip_since"] = self.step
        fields["latents"] = {
            name: {layer: _number(v) for layer, v in stat.per_layer.items()}
            for name, stat in stats.items()
        }
        self.codes = {name: codes.cpu() for name, codes in level_codes(model).items()}
        self.step = int(step)
        return fields

    def state_dict(self) -> dict[str, Any]:
        return {"codes": self.codes, "step": self.step}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.codes = state.get("codes")
        self.step = state.get("step")

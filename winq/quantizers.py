r"""Weight quantizers with straight-through gradients: LSQ and stretched elastic (SEQ).

Every quantizer maps a latent weight ``w`` and a positive scale ``s`` to ``Q(w) = s·q(w/s)``
where ``q`` rounds ``x = w/s`` to a fixed grid of levels (ParetoQ, Liu et al. 2025, and its
reference code ``models/utils_quant.py``):

* LSQ, 1 bit:  ``q(x) = sign(x)``, levels ±1 (``x = 0`` maps to +1 so a row never holds a third
  value; the reference's ``torch.sign`` would give 0 there).
* LSQ, b bits: ``q(x) = clamp(round(x), -2^(b-1), 2^(b-1)-1)``: the integer grid.
* SEQ, 2 bits and ternary: ``q(x) = (round(clamp(x, -0.99, 0.99)·n - shift) + shift) / n`` with
  ``n = 2, shift = 0.5`` (levels ±1/4, ±3/4) or ``n = 1.5, shift = 0`` (levels 0, ±2/3); for 3
  and 4 bits ``n = 2^(b-1), shift = 0.5``.

Gradients are the straight-through estimator masked to the quantizer's range and the LSQ
scale gradient (Esser et al. 2020):

    ∂Q/∂w = 1[x in range]
    ∂Q/∂s = g · { q(x) - x  in range;  lower clip level below;  upper clip level above }
            (1-bit LSQ: g · sign(x) everywhere)

with ``g = 1/sqrt(numel(W)·Qp)``, ``Qp = max(1, 2^(b-1) - 1)`` as in the reference code. The
range is ``-2^(b-1) <= x <= 2^(b-1)-1`` for LSQ, ``|x| <= 1`` for 1 bit and ``|x| <= 0.99`` for SEQ
(inclusive, like the reference's backward). Scales are clamped below at 1e-5.

Every level owns a rounding cell, the in-range ``x`` that ``q`` maps to it (:attr:`Quantizer.cells`;
the integer index of the level is :meth:`Quantizer.level_index`, computed by ``q``'s own float
arithmetic); :mod:`winq.nn` measures where latent weights sit inside their cells with them.

The STE is written with detached terms whose value is exactly zero rather than with an
``autograd.Function``: the forward value is bit-identical to ``s·q(w/s)``, the weight gradient
is exactly the mask, and both double backward and forward-mode AD (``torch.func.jvp``) work,
which Hessian-vector products need. The second derivative of Q is zero (piecewise constant
slope), so the Hessian with respect to W is ``M·H_Q·M`` with M the range mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SCALE_EPS",
    "Quantizer",
    "fake_quantize",
    "get_quantizer",
    "grad_scale_factor",
    "grid_ratio",
    "group_view",
    "init_scale",
    "quantize_activations",
]

SCALE_EPS = 1e-5
SEQ_CLIP = 0.99


@dataclass(frozen=True)
class Quantizer:
    """The arithmetic of one quantizer at one bit width (all in units of the scale)."""

    name: str  # "lsq" or "seq"
    bits: float

    @property
    def lsq_qp(self) -> int:
        """The LSQ grid's top level, also the reference code's gradient-scale constant."""
        return max(1, 2 ** (int(self.bits) - 1) - 1) if self.bits != 1.58 else 1

    @property
    def seq_n_shift(self) -> tuple[float, float]:
        if self.bits == 1.58:
            return 1.5, 0.0
        return float(2 ** (int(self.bits) - 1)), 0.5

    @property
    def levels(self) -> torch.Tensor:
        """Every value q can take, ascending (float64)."""
        if self.name == "lsq":
            if self.bits == 1:
                return torch.tensor([-1.0, 1.0], dtype=torch.float64)
            half = 2 ** (int(self.bits) - 1)
            return torch.arange(-half, half, dtype=torch.float64)
        n, shift = self.seq_n_shift
        lo = round(-SEQ_CLIP * n - shift)
        hi = round(SEQ_CLIP * n - shift)
        return (torch.arange(lo, hi + 1, dtype=torch.float64) + shift) / n

    @property
    def clip_levels(self) -> tuple[float, float]:
        """(lower, upper) edge of the STE range in units of s; also ∂q/∂s outside it."""
        if self.name == "lsq":
            if self.bits == 1:
                return -1.0, 1.0
            half = 2 ** (int(self.bits) - 1)
            return float(-half), float(half - 1)
        n, shift = self.seq_n_shift
        qp = (n - shift) / n
        return -qp, qp

    @property
    def ste_range(self) -> tuple[float, float]:
        """(lower, upper) edge of the range where the STE passes gradient, in units of s.

        Inclusive, as :meth:`in_range`. For LSQ it is :attr:`clip_levels`; for SEQ it is
        ±0.99, beyond the outermost level (which is ±(n - shift)/n).
        """
        if self.name == "lsq":
            return self.clip_levels
        return -SEQ_CLIP, SEQ_CLIP

    @property
    def cells(self) -> torch.Tensor:
        """(levels, 2) float64: the [lower, upper] edges of each level's rounding cell within
        the STE range, in units of s, rows in the order of :attr:`levels`.

        A cell is the set of in-range ``x`` that ``q`` rounds to that level. Its edges are the
        midpoints between neighbouring levels (for SEQ, ``(k + shift ± 1/2)/n``), the range
        edges for the outermost cells, and 0 between 1-bit LSQ's two levels, which therefore
        sit at the outer edge of their cells. Which cell a midpoint belongs to is decided by
        ``torch.round`` (half to even); both neighbours list it as an edge.
        """
        low, high = self.ste_range
        if self.name == "lsq" and self.bits == 1:
            return torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        if self.name == "lsq":
            centres = self.levels
            edges = torch.stack([centres - 0.5, centres + 0.5], dim=-1)
        else:
            n, shift = self.seq_n_shift
            indices = torch.round(self.levels * n - shift)  # the integers k of (k + shift)/n
            edges = torch.stack([indices + shift - 0.5, indices + shift + 0.5], dim=-1) / n
        return edges.clamp(low, high)

    def level_index(self, x: torch.Tensor) -> torch.Tensor:
        """The index into :attr:`levels` of ``q(x)`` (int64), by ``q``'s own arithmetic.

        Each branch repeats the expression :meth:`q` evaluates, stopping at the integer it
        derives the level from, so ``levels[level_index(x)] == q(x)`` for every ``x``.
        """
        if self.name == "lsq":
            if self.bits == 1:
                return (x >= 0).long()
            half = 2 ** (int(self.bits) - 1)
            return (torch.clamp(torch.round(x), -half, half - 1) + half).long()
        n, shift = self.seq_n_shift
        lowest = round(-SEQ_CLIP * n - shift)
        return (torch.round(torch.clamp(x, -SEQ_CLIP, SEQ_CLIP) * n - shift) - lowest).long()

    def q(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x = w/s`` to the grid (no gradient)."""
        if self.name == "lsq":
            if self.bits == 1:
                return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
            half = 2 ** (int(self.bits) - 1)
            return torch.clamp(torch.round(x), -half, half - 1)
        n, shift = self.seq_n_shift
        return (torch.round(torch.clamp(x, -SEQ_CLIP, SEQ_CLIP) * n - shift) + shift) / n

    def in_range(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask where the straight-through gradient passes."""
        if self.name == "lsq":
            lo, hi = self.clip_levels
            return (x >= lo) & (x <= hi)
        return x.abs() <= SEQ_CLIP

    def scale_coefficient(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """∂q(w/s)·s/∂s before the gradient scale g (see the module docstring)."""
        if self.name == "lsq" and self.bits == 1:
            return q
        lo, hi = self.clip_levels
        if self.name == "lsq":
            below, above = x < lo, x > hi
        else:
            below, above = x < -SEQ_CLIP, x > SEQ_CLIP
        return torch.where(below, lo, torch.where(above, hi, q - x))

    def init_scale(self, w_abs_max: torch.Tensor, w_abs_mean: torch.Tensor) -> torch.Tensor:
        """ParetoQ's initial scale: mean|w| (1 bit), max|w| (SEQ), max|w|/(2^(b-1)-1) (LSQ)."""
        if self.name == "lsq" and self.bits == 1:
            return w_abs_mean
        if self.name == "seq":
            return w_abs_max
        return w_abs_max / self.lsq_qp


def get_quantizer(name: str, bits: float) -> Quantizer:
    return Quantizer(name=name, bits=bits)


def grad_scale_factor(numel: int, quantizer: Quantizer) -> float:
    """LSQ's g = 1/sqrt(numel·Qp) (Esser et al. 2020; ParetoQ reference constants)."""
    return 1.0 / math.sqrt(numel * quantizer.lsq_qp)


def group_view(weight: torch.Tensor, scale_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """View ``weight`` (out, in) as (rows, groups, group_len) matching a scale of
    shape (out, 1), (out, in/group) or (1, 1)."""
    out_features, in_features = weight.shape
    rows, groups = scale_shape
    if rows == 1 and groups == 1:
        return weight.reshape(1, 1, -1)
    return weight.reshape(out_features, groups, in_features // groups)


def init_scale(
    weight: torch.Tensor, quantizer: Quantizer, scale_shape: tuple[int, int]
) -> torch.Tensor:
    """Initial scale of shape ``scale_shape`` for ``weight`` (no gradient), clamped at 1e-5."""
    with torch.no_grad():
        grouped = group_view(weight.detach(), scale_shape).abs()  # (rows, groups, group_len)
        scale = quantizer.init_scale(grouped.amax(dim=-1), grouped.mean(dim=-1))
        return scale.clamp_min(SCALE_EPS).reshape(scale_shape).to(weight.dtype)


def grid_ratio(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``w/s`` in at least float32, the precision every grid decision is made in.

    In bfloat16 (8 significant bits) the SEQ step ``x·n − shift`` alone would move a weight
    within about 0.4% of ``s`` of zero onto the level of the wrong sign; half-precision
    weights are therefore quantized in float32 and the result cast back. A no-op for float32
    and float64 inputs.
    """
    dtype = torch.promote_types(torch.promote_types(w.dtype, s.dtype), torch.float32)
    return w.to(dtype) / s.to(dtype)


def fake_quantize(
    weight: torch.Tensor,
    scale: torch.Tensor,
    quantizer: Quantizer,
    grad_scale: float,
) -> torch.Tensor:
    """``Q(weight; scale)`` with the masked STE for the weight and the LSQ scale gradient.

    Args:
        weight: latent weights (out, in).
        scale: (out, 1), (out, in/group_size) or (1, 1).
        quantizer: the grid.
        grad_scale: the factor g multiplying the scale gradient.

    Returns:
        A tensor of ``weight``'s shape whose value is exactly ``s·q(w/s)`` (for half-precision
        inputs: computed in float32, then rounded once to the input's dtype).
    """
    shape = weight.shape
    w = group_view(weight, scale.shape)  # (rows, groups, group_len)
    s = scale.clamp_min(SCALE_EPS).unsqueeze(-1)  # (rows, groups, 1)
    with torch.no_grad():
        x = grid_ratio(w, s)
        q = quantizer.q(x)
        value = (q * s.to(x.dtype)).to(w.dtype)
        mask = quantizer.in_range(x).to(w.dtype)
        coefficient = quantizer.scale_coefficient(x, q).to(w.dtype)
    # Each added term is exactly zero in value and carries one gradient path.
    out = value + (w - w.detach()) * mask
    if s.requires_grad:
        s_scaled = s * grad_scale
        out = out + (s_scaled - s_scaled.detach()) * coefficient
    return out.reshape(shape)


def quantize_activations(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token symmetric fake-quantization of activations with an identity STE.

    ``x_q = clamp(round(x/s_t), -2^(b-1), 2^(b-1)-1)·s_t`` with ``s_t = max|x_t| / (2^(b-1)-1)``
    over the last dimension (one scale per token), as in LLM-QAT / ParetoQ's A8 settings.
    """
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        s = x.abs().amax(dim=-1, keepdim=True).clamp_min(SCALE_EPS) / qmax
        x_q = torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s
    return x + (x_q - x).detach()

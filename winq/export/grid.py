r"""A quantized layer as integers: the grid, the codes, the scales, and the way back to Q(W).

Every winq quantizer rounds ``x = w/s`` to a fixed, ascending list of levels ``ℓ_0 < … < ℓ_{L-1}``
(:mod:`winq.quantizers`), so a quantized weight is fully described by its *code* ``k`` (the index
of its level, an unsigned integer below ``L``) and its scale ``s``:

    Q(w) = s·ℓ_k.

Every grid is also an integer lattice: ``ℓ_k = u·z_k`` with a *unit* ``u`` and integer *offsets*
``z_k``. LSQ grids have ``u = 1`` (``z = ±1`` at 1 bit, ``-2^(b-1) … 2^(b-1)-1`` above); a SEQ
grid ``(r + shift)/n`` has ``u = 1/n`` when ``shift = 0`` (ternary: ``z ∈ {-1, 0, 1}``,
``u = 2/3``) and ``u = 1/(2n)`` when ``shift = 1/2`` (``z = 2r + 1``, odd: 2-bit
``{-3, -1, 1, 3}·s/4``). The offsets are what block formats such as GGUF's store
(:mod:`winq.export.gguf`); the codes are what the packed format stores
(:mod:`winq.export.packed`), ``⌈log2 L⌉`` bits each.

Going back is exact by construction: :func:`dequantize_codes` multiplies the same floating-point
level values that :meth:`winq.quantizers.Quantizer.q` produces by the same scale, in the same
dtype, so the result is bit for bit the ``Q(W)`` of :meth:`winq.nn.QuantLinear.quantized_weight`.
And because ``Q(Q(W)) = Q(W)`` for every grid (each level lies strictly inside its rounding cell:
the largest SEQ level, 15/16, is below the 0.99 clip), a layer whose latent weight is set to
``Q(W)`` reproduces it exactly, which is how a packed export is read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from winq.nn import QuantLinear
from winq.quantizers import SCALE_EPS, SEQ_CLIP, Quantizer, get_quantizer, grid_ratio, group_view

__all__ = ["Grid", "LayerCodes", "dequantize_codes", "grid_of", "layer_codes"]


@dataclass(frozen=True)
class Grid:
    """The levels of one quantizer at one bit width, in units of the scale.

    Attributes:
        quantizer: ``"lsq"`` or ``"seq"``.
        bits: the bit width (1, 1.58, 2, 3, 4).
        unit: the lattice spacing ``u``: every level is ``u·z`` for an integer offset ``z``.
        offsets: the integer offsets ``z_k``, ascending, one per code ``k``.
        code_bits: bits per code in the packed format, ``⌈log2 L⌉``.
    """

    quantizer: str
    bits: float
    unit: float
    offsets: tuple[int, ...]
    code_bits: int

    @property
    def levels(self) -> tuple[float, ...]:
        """The levels ``ℓ_k = u·z_k`` as Python floats (documentation; not for arithmetic)."""
        return tuple(self.unit * z for z in self.offsets)

    @property
    def size(self) -> int:
        return len(self.offsets)

    @property
    def quantizer_object(self) -> Quantizer:
        return get_quantizer(self.quantizer, self.bits)

    def level_values(self, dtype: torch.dtype) -> torch.Tensor:
        """The levels as the quantizer computes them in ``dtype`` (bit-identical to its ``q``)."""
        quantizer = self.quantizer_object
        if quantizer.name == "lsq":
            if quantizer.bits == 1:
                return torch.tensor([-1.0, 1.0], dtype=dtype)
            half = 2 ** (int(quantizer.bits) - 1)
            return torch.arange(-half, half, dtype=dtype)
        n, shift = quantizer.seq_n_shift
        lo = round(-SEQ_CLIP * n - shift)
        return (torch.arange(lo, lo + self.size, dtype=dtype) + shift) / n

    def describe(self) -> str:
        return f"{self.bits}-bit {self.quantizer}"


def grid_of(quantizer: Quantizer) -> Grid:
    """The :class:`Grid` of ``quantizer`` (offsets derived from its own level list)."""
    if quantizer.name == "lsq":
        unit = 1.0
        offsets = [int(v) for v in quantizer.levels.tolist()]
    else:
        n, shift = quantizer.seq_n_shift
        if shift == 0:
            unit = 1.0 / n
            offsets = [round(v * n) for v in quantizer.levels.tolist()]
        else:
            unit = 1.0 / (2 * n)
            offsets = [round(v * 2 * n) for v in quantizer.levels.tolist()]
    levels = quantizer.levels.tolist()
    if any(
        not math.isclose(unit * z, v, rel_tol=0, abs_tol=1e-12) for z, v in zip(offsets, levels)
    ):
        raise AssertionError(f"grid of {quantizer} is not an integer lattice")  # pragma: no cover
    code_bits = max(1, math.ceil(math.log2(len(offsets))))
    return Grid(quantizer.name, quantizer.bits, unit, tuple(offsets), code_bits)


@dataclass
class LayerCodes:
    """One quantized linear layer as codes and scales.

    Attributes:
        codes: uint8 (out, in), the level index of every weight (on the CPU, as the scale).
        scale: the effective scale (the layer's scale clamped at ``SCALE_EPS``, as ``Q`` uses
            it), shape (out, 1), (out, in/group) or (1, 1), in the layer's scale dtype.
        grid: the levels.
        weight_dtype: the dtype ``Q(W)`` is returned in (the latent weight's).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    grid: Grid
    weight_dtype: torch.dtype

    def dequantize(self) -> torch.Tensor:
        return dequantize_codes(self.codes, self.scale, self.grid, self.weight_dtype)

    def element_scale(self) -> torch.Tensor:
        """The scale of every weight, (out, in), float64 (exact: a widening of the stored one)."""
        out_features, in_features = self.codes.shape
        ones = torch.ones(out_features, in_features, dtype=torch.float64)
        grouped = group_view(ones, self.scale.shape) * self.scale.to(torch.float64).unsqueeze(-1)
        return grouped.reshape(out_features, in_features)

    def offsets(self) -> torch.Tensor:
        """int16 (out, in): the integer offset ``z`` of every weight (``Q(w) = s·u·z``)."""
        table = torch.tensor(self.grid.offsets, dtype=torch.int16)
        return table[self.codes.long()]


def _compute_dtype(weight_dtype: torch.dtype, scale_dtype: torch.dtype) -> torch.dtype:
    # The dtype `grid_ratio` and so `fake_quantize` compute in.
    return torch.promote_types(torch.promote_types(weight_dtype, scale_dtype), torch.float32)


def layer_codes(layer: QuantLinear) -> LayerCodes:
    """The codes and effective scales of ``layer``'s Q(W) (no gradient).

    Raises:
        ValueError: the latent weight or the scale holds NaN or inf (Q(W) is then not on the grid).
    """
    grid = grid_of(layer.quantizer)
    with torch.no_grad():
        scale = layer.scale.detach().clamp_min(SCALE_EPS)
        weight = layer.weight.detach()
        if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(scale).all())):
            raise ValueError("the latent weight or the scale holds NaN or inf")
        grouped = group_view(weight, scale.shape)  # (rows, groups, group_len)
        x = grid_ratio(grouped, scale.unsqueeze(-1))
        q = layer.quantizer.q(x)
        # The levels are evenly spaced, ℓ_k = u·(z_0 + k·step), so k = (q/u - z_0)/step.
        step = grid.offsets[1] - grid.offsets[0]
        codes = ((q / grid.unit).round() - grid.offsets[0]).div(step).round().to(torch.uint8)
        if not torch.equal(grid.level_values(x.dtype)[codes.long()], q):
            raise AssertionError(f"{grid.describe()}: q is off the grid")  # pragma: no cover
    return LayerCodes(
        codes=codes.reshape(weight.shape).cpu(),
        scale=scale.cpu().clone(),
        grid=grid,
        weight_dtype=weight.dtype,
    )


def dequantize_codes(
    codes: torch.Tensor, scale: torch.Tensor, grid: Grid, weight_dtype: torch.dtype
) -> torch.Tensor:
    """``Q(W) = s·ℓ_k``, computed exactly as :func:`winq.quantizers.fake_quantize` does.

    Args:
        codes: integer codes (out, in), each below ``grid.size``.
        scale: effective scales, (out, 1), (out, in/group) or (1, 1) (already clamped).
        grid: the levels.
        weight_dtype: the latent weight's dtype; the product is rounded to it once.

    Returns:
        (out, in) tensor of ``weight_dtype``.
    """
    dtype = _compute_dtype(weight_dtype, scale.dtype)
    values = grid.level_values(dtype)
    levels = group_view(values[codes.long()], scale.shape)  # (rows, groups, group_len)
    product = levels * scale.unsqueeze(-1).to(dtype)
    return product.to(weight_dtype).reshape(codes.shape)

"""Codes, grids and bit packing: exact against closed forms and winq's own Q(W)."""

from __future__ import annotations

import math

import pytest
import torch
from export_cases import GRID_IDS, GRIDS, same_bits
from hypothesis import given, settings
from hypothesis import strategies as st

from winq.config import QuantConfig
from winq.export.grid import grid_of, layer_codes
from winq.export.packed import pack_codes, unpack_codes
from winq.nn import QuantLinear
from winq.quantizers import get_quantizer

# Closed forms: (unit, offsets, bits per code) of every grid (winq.quantizers' docstring).
EXPECTED = {
    ("lsq", 1): (1.0, (-1, 1), 1),
    ("seq", 1.58): (2 / 3, (-1, 0, 1), 2),
    ("lsq", 2): (1.0, (-2, -1, 0, 1), 2),
    ("seq", 2): (1 / 4, (-3, -1, 1, 3), 2),
    ("lsq", 3): (1.0, tuple(range(-4, 4)), 3),
    ("seq", 3): (1 / 8, tuple(range(-7, 8, 2)), 3),
    ("lsq", 4): (1.0, tuple(range(-8, 8)), 4),
    ("seq", 4): (1 / 16, tuple(range(-15, 16, 2)), 4),
}


@pytest.mark.parametrize(("quantizer", "bits"), GRIDS, ids=GRID_IDS)
def test_grid_is_the_closed_form_lattice(quantizer, bits):
    grid = grid_of(get_quantizer(quantizer, bits))
    unit, offsets, code_bits = EXPECTED[(quantizer, bits)]
    assert math.isclose(grid.unit, unit, rel_tol=1e-15)
    assert grid.offsets == offsets
    assert grid.code_bits == code_bits
    # The float levels are exactly what the quantizer's own rounding returns, and fixed by it.
    for dtype in (torch.float32, torch.float64):
        values = grid.level_values(dtype)
        assert same_bits(get_quantizer(quantizer, bits).q(values), values)
        reference = torch.tensor([unit * z for z in offsets], dtype=torch.float64)
        torch.testing.assert_close(values.to(torch.float64), reference, atol=1e-7, rtol=0)


def _random_layer(quantizer, bits, out_features, in_features, group_size, dtype, seed):
    config = QuantConfig(bits=bits, quantizer=quantizer, group_size=group_size)
    generator = torch.Generator().manual_seed(seed)
    layer = QuantLinear(in_features, out_features, bias=False, config=config, dtype=dtype)
    with torch.no_grad():
        # Heavy tails: some weights far outside the clip range, some exactly zero.
        weight = torch.randn(out_features, in_features, generator=generator) ** 3
        weight[0, 0] = 0.0
        layer.weight.copy_(weight.to(dtype))
        scale = 0.05 + torch.rand(layer.scale.shape, generator=generator)
        layer.scale.copy_(scale.to(dtype))
        if layer.scale.numel() > 1:
            layer.scale.view(-1)[-1] = 1e-7  # below the clamp: Q uses 1e-5
    return layer


@settings(max_examples=40, deadline=None)
@given(
    grid_index=st.integers(0, len(GRIDS) - 1),
    out_features=st.integers(1, 6),
    groups=st.integers(1, 3),
    group_size=st.sampled_from([None, 1, 4, 8]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_codes_give_q_bit_for_bit_and_q_is_a_fixed_point(
    grid_index, out_features, groups, group_size, dtype, seed
):
    quantizer, bits = GRIDS[grid_index]
    in_features = groups * (group_size or 5)
    layer = _random_layer(quantizer, bits, out_features, in_features, group_size, dtype, seed)
    exact = layer.quantized_weight()
    codes = layer_codes(layer)
    assert codes.codes.dtype == torch.uint8 and int(codes.codes.max()) < codes.grid.size
    assert same_bits(codes.dequantize(), exact)
    # Q(Q(W)) = Q(W): a layer whose latent weight is Q(W) quantizes to the same bits.
    with torch.no_grad():
        layer.weight.copy_(exact)
    assert same_bits(layer.quantized_weight(), exact)
    assert torch.equal(layer_codes(layer).codes, codes.codes)


@settings(max_examples=60, deadline=None)
@given(
    code_bits=st.integers(1, 4),
    rows=st.integers(1, 4),
    cols=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_packing_is_a_little_endian_bit_stream_per_row(code_bits, rows, cols, seed):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << code_bits, (rows, cols), generator=generator, dtype=torch.uint8)
    packed = pack_codes(codes, code_bits)
    assert packed.shape == (rows, math.ceil(cols * code_bits / 8))
    for row in range(rows):
        # Independent reference: the row read as one little-endian integer.
        stream = int.from_bytes(bytes(packed[row].tolist()), "little")
        expected = sum(int(c) << (code_bits * k) for k, c in enumerate(codes[row].tolist()))
        assert stream == expected
    assert torch.equal(unpack_codes(packed, code_bits, cols), codes)


def test_three_bit_packing_by_hand():
    # 1 + 2·2^3 + 3·2^6 + 4·2^9 + 5·2^12 + 6·2^15 + 7·2^18 = 0x1F58D1, little-endian.
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    assert pack_codes(codes, 3).tolist() == [[0xD1, 0x58, 0x1F]]


def test_pack_refuses_codes_that_do_not_fit():
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        pack_codes(torch.tensor([[4]], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="cannot hold exactly 9 codes"):
        unpack_codes(torch.zeros(1, 1, dtype=torch.uint8), 1, 9)

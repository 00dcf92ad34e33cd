"""Exact latent-grid measurements: level codes, flip fraction, grid dispersion, clipped fractions,
and the quantizer's cell helpers they rest on."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import QUANT_SPECS
from torch import nn

import winq
from winq.nn import (
    LatentStat,
    QuantLinear,
    clipped_fraction,
    clipped_fractions,
    flip_fraction,
    grid_dispersion,
    level_codes,
)
from winq.quantizers import Quantizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_layer(spec, values, scale=1.0, dtype=torch.float32):
    bits, name = spec
    layer = QuantLinear(
        len(values), 1, bias=False, dtype=dtype, config=winq.QuantConfig(bits, name)
    )
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values], dtype=dtype))
        layer.scale.fill_(scale)
    return layer


# ------------------------------------------------------------------------ quantizer cells


@settings(max_examples=60, deadline=None)
@given(
    spec=st.sampled_from(QUANT_SPECS),
    values=st.lists(
        st.one_of(
            st.floats(-10, 10, width=32),
            st.integers(-20, 20).map(lambda k: k / 4),  # ties and cell edges
            st.sampled_from([0.99, -0.99, 1 / 3, -1 / 3, 0.0, -0.0]),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_level_index_names_q_and_a_cell_holding_x(spec, values):
    quantizer = Quantizer(spec[1], spec[0])
    x = torch.tensor(values, dtype=torch.float32)
    index = quantizer.level_index(x)
    assert torch.equal(quantizer.levels.float()[index], quantizer.q(x))
    cells = quantizer.cells.float()[index]
    inside = quantizer.in_range(x)
    # the level is decided in float32 (e.g. round(2x - 0.5) for SEQ 2-bit), so a latent within
    # the rounding of that arithmetic of a cell edge may take the neighbouring level: found by
    # hypothesis, x = -1.2e-38 gives SEQ 2-bit's level +1/4, whose cell is [0, 1/2]
    slack = 2.0**-22 * (1.0 + x.abs())
    assert torch.all(cells[inside, 0] - slack[inside] <= x[inside])
    assert torch.all(x[inside] <= cells[inside, 1] + slack[inside])


@pytest.mark.parametrize("spec", QUANT_SPECS)
def test_cells_tile_the_range_and_hold_their_levels(spec):
    quantizer = Quantizer(spec[1], spec[0])
    cells, levels = quantizer.cells, quantizer.levels
    low, high = quantizer.ste_range
    assert cells[0, 0] == low and cells[-1, 1] == high
    assert torch.equal(cells[1:, 0], cells[:-1, 1])  # no gap, no overlap
    assert torch.all(cells[:, 0] <= levels) and torch.all(levels <= cells[:, 1])


def test_cells_closed_forms():
    third = 1 / 3
    assert Quantizer("seq", 1.58).cells.tolist() == [
        [-0.99, -third],
        [-third, third],
        [third, 0.99],
    ]
    assert Quantizer("seq", 2).cells.tolist() == [[-0.99, -0.5], [-0.5, 0], [0, 0.5], [0.5, 0.99]]
    assert Quantizer("lsq", 1).cells.tolist() == [[-1, 0], [0, 1]]
    assert Quantizer("lsq", 3).cells[[0, 1, -1]].tolist() == [[-4, -3.5], [-3.5, -2.5], [2.5, 3]]


# ------------------------------------------------------------------- hand-built layers

# Per quantizer (scale 1): four latents before and after a step. The first crosses one
# rounding boundary, the second moves inside its cell, the third is clipped and moves further
# out, the fourth sits on its level. Codes, r = |x - q| / |b - q| and the clip are by hand.
HAND_CASES = {
    # levels -0.75 -0.25 0.25 0.75; cells [-.99,-.5] [-.5,0] [0,.5] [.5,.99]
    "seq2": dict(
        spec=(2, "seq"),
        before=[0.375, -0.125, 1.5, 0.75],
        after=[0.625, -0.3125, 2.0, 0.75],
        codes_before=[2, 1, 3, 3],
        codes_after=[3, 1, 3, 3],
        r_before=[0.5, 0.5, 0.0],  # in-range latents only: 0.125/0.25, 0.125/0.25, on grid
        r_after=[0.5, 0.25, 0.0],  # 0.125/0.25 toward the lower edge 0.5; 0.0625/0.25
    ),
    # levels -2/3 0 2/3; cells [-.99,-1/3] [-1/3,1/3] [1/3,.99]
    "ternary": dict(
        spec=(1.58, "seq"),
        before=[0.25, -0.125, -1.25, 0.0],
        after=[0.5, -0.25, -3.0, 0.0],
        codes_before=[1, 1, 0, 1],
        codes_after=[2, 1, 0, 1],
        r_before=[0.75, 0.375, 0.0],  # 0.25/(1/3), 0.125/(1/3)
        r_after=[0.5, 0.75, 0.0],  # (2/3-1/2)/(2/3-1/3), 0.25/(1/3)
    ),
    # levels -1 +1 at the outer edges of cells [-1,0] [0,1]
    "lsq1": dict(
        spec=(1, "lsq"),
        before=[-0.25, 0.5, 1.5, 1.0],
        after=[0.25, 0.75, 3.0, 1.0],
        codes_before=[0, 1, 1, 1],
        codes_after=[1, 1, 1, 1],
        r_before=[0.75, 0.5, 0.0],  # |-0.25+1|/|0+1|, |0.5-1|/|0-1|, on the level (span 0)
        r_after=[0.75, 0.25, 0.0],
    ),
    # levels -4..3; cells of width 1 inside, [-4,-3.5] and [2.5,3] at the edges
    "lsq3": dict(
        spec=(3, "lsq"),
        before=[1.25, 2.5, -4.5, 3.0],
        after=[1.75, 2.25, -6.0, 3.0],
        codes_before=[5, 6, 0, 7],  # 2.5 is a tie: torch.round gives 2 (half to even)
        codes_after=[6, 6, 0, 7],
        r_before=[0.5, 1.0, 0.0],  # 2.5 sits on its cell's edge
        r_after=[0.5, 0.5, 0.0],
    ),
}


@pytest.mark.parametrize("case", HAND_CASES, ids=list(HAND_CASES))
def test_measurements_on_a_hand_built_layer(case):
    c = HAND_CASES[case]
    layer = _hand_layer(c["spec"], c["before"])
    model = nn.Sequential(layer)
    codes = level_codes(model)
    assert list(codes) == ["0"] and codes["0"].dtype == torch.int8
    assert codes["0"].tolist() == [c["codes_before"]]
    dispersion = grid_dispersion(model)
    assert dispersion.count == 3
    assert dispersion.value == pytest.approx(sum(c["r_before"]) / 3, abs=1e-6)
    assert clipped_fractions(model) == LatentStat(0.25, {"0": 0.25}, 4)

    with torch.no_grad():
        layer.weight.copy_(torch.tensor([c["after"]]))
    assert level_codes(model)["0"].tolist() == [c["codes_after"]]
    flips = flip_fraction(codes, model)
    assert flips == LatentStat(0.25, {"0": 0.25}, 4)  # exactly the first latent
    dispersion = grid_dispersion(model)
    assert dispersion.value == pytest.approx(sum(c["r_after"]) / 3, abs=1e-6)
    assert dispersion.per_layer["0"] == dispersion.value


def test_dyadic_cases_are_exact():
    # all values and cell edges are dyadic: the dispersion is exact, not approximately so
    for case in ("seq2", "lsq1", "lsq3"):
        c = HAND_CASES[case]
        model = nn.Sequential(_hand_layer(c["spec"], c["after"]))
        assert grid_dispersion(model).value == sum(c["r_after"]) / 3


def test_weighted_by_weight_count_not_a_mean_of_layers():
    small = _hand_layer((2, "seq"), [0.375, -0.125, 1.5, 0.75])
    large = _hand_layer((2, "seq"), [0.125] * 8 + [-2.0] * 4)  # r = 0.5 each; 4 clipped
    model = nn.Sequential(small, large)
    codes = level_codes(model)
    with torch.no_grad():
        small.weight.copy_(torch.tensor([[0.625, -0.3125, 2.0, 0.75]]))  # one flip
    flips = flip_fraction(codes, model)
    assert flips == LatentStat(1 / 16, {"0": 1 / 4, "1": 0.0}, 16)
    clipped = clipped_fractions(model)
    assert clipped == LatentStat(5 / 16, {"0": 1 / 4, "1": 4 / 12}, 16)
    assert clipped.value == clipped_fraction(model)
    dispersion = grid_dispersion(model)
    assert dispersion.count == 3 + 8
    assert dispersion.value == (0.5 + 0.25 + 0.0 + 8 * 0.5) / 11
    assert dispersion.per_layer == {"0": 0.25, "1": 0.5}


def test_uniform_latents_have_dispersion_one_half():
    # x uniform over the whole STE range is uniform within every cell, whatever the cells'
    # widths: E[r] = 1/2. 2^16 latents: the standard error is 0.289/256 = 0.0011.
    generator = torch.Generator().manual_seed(0)
    for bits, name in QUANT_SPECS:
        quantizer = Quantizer(name, bits)
        low, high = quantizer.ste_range
        values = low + (high - low) * torch.rand(256, 256, generator=generator)
        layer = QuantLinear(256, 256, bias=False, config=winq.QuantConfig(bits, name))
        with torch.no_grad():
            layer.weight.copy_(values)
            layer.scale.fill_(1.0)
        dispersion = grid_dispersion(nn.Sequential(layer))
        assert dispersion.count == 256 * 256
        assert abs(dispersion.value - 0.5) < 0.006, (bits, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("spec", QUANT_SPECS)
def test_codes_identify_the_quantized_value_in_every_dtype(spec, dtype):
    bits, name = spec
    torch.manual_seed(0)
    linear = nn.Linear(32, 12, bias=False).to(dtype)
    layer = QuantLinear.from_linear(linear, winq.QuantConfig(bits, name, group_size=8))
    with torch.no_grad():
        layer.scale.mul_(0.7)
    codes = level_codes(nn.Sequential(layer))["0"].long()
    grid_dtype = torch.promote_types(dtype, torch.float32)  # the precision q is computed in
    levels = layer.quantizer.levels.to(grid_dtype)[codes]  # (out, in)
    scale = layer._per_weight_scale().to(grid_dtype)
    assert torch.equal((levels * scale).to(dtype), layer.quantized_weight())


def test_stat_to_dict_is_json_ready():
    layer = _hand_layer((2, "seq"), [3.0, -3.0])  # every latent clipped: no dispersion
    model = nn.Sequential(layer)
    stat = grid_dispersion(model)
    assert stat.count == 0 and math.isnan(stat.value) and math.isnan(stat.per_layer["0"])
    assert json.loads(json.dumps(stat.to_dict(), allow_nan=False)) == {
        "value": None,
        "per_layer": {"0": None},
        "count": 0,
    }
    assert clipped_fractions(model).to_dict() == {"value": 1.0, "per_layer": {"0": 1.0}, "count": 2}
    empty = clipped_fractions(nn.Sequential(nn.Linear(2, 2)))
    assert empty.count == 0 and empty.per_layer == {} and math.isnan(empty.value)


def test_flip_fraction_refuses_codes_of_another_model():
    model = nn.Sequential(_hand_layer((2, "seq"), [0.1, 0.2]))
    with pytest.raises(ValueError, match="previous_codes has no entry for layer 0"):
        flip_fraction({}, model)
    with pytest.raises(ValueError, match="previous_codes has layer 1, which the model"):
        flip_fraction({"0": torch.zeros(1, 2), "1": torch.zeros(1, 2)}, model)
    with pytest.raises(ValueError, match=r"previous_codes\['0'\] has shape \(2, 1\), the layer"):
        flip_fraction({"0": torch.zeros(2, 1)}, model)

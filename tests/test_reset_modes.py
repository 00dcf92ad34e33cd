"""The three WinQ reset modes (``full``, ``clipped``, ``dither``): invariants, closed forms,
uniformity of the dither and reproducibility of its draws."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import QUANT_SPECS
from torch import nn

import winq
from winq.nn import (
    RESET_MODES,
    QuantLinear,
    grid_dispersion,
    level_codes,
    quant_layers,
    reset_,
    reset_with_stats_,
)
from winq.quantizers import Quantizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(spec, rows, cols, granularity="per_row", dtype=torch.float32, seed=0, shrink=0.6):
    """A QuantLinear with normal weights; ``shrink`` < 1 scales s down so some latents clip."""
    bits, name = spec
    group = 4 if granularity == "per_group" else None
    config = winq.QuantConfig(bits=bits, quantizer=name, granularity=granularity, group_size=group)
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows, bias=False).to(dtype)
    with torch.no_grad():
        linear.weight.normal_()
    layer = QuantLinear.from_linear(linear, config)
    with torch.no_grad():
        layer.scale.mul_(shrink)
    return layer


def _hand_layer(spec, values, scale=1.0, dtype=torch.float32):
    """A one-row QuantLinear holding ``values`` with scale ``scale``."""
    bits, name = spec
    layer = QuantLinear(
        len(values), 1, bias=False, dtype=dtype, config=winq.QuantConfig(bits, name)
    )
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values], dtype=dtype))
        layer.scale.fill_(scale)
    return layer


@settings(max_examples=80, deadline=None)
@given(
    spec=st.sampled_from(QUANT_SPECS),
    mode=st.sampled_from(RESET_MODES),
    rows=st.integers(1, 5),
    cols=st.sampled_from([4, 8, 12]),
    granularity=st.sampled_from(["per_row", "per_group", "per_tensor"]),
    alpha=st.floats(0.0, 1.0),
    shrink=st.floats(0.2, 1.5),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_every_mode_keeps_q_scales_and_outputs(
    spec, mode, rows, cols, granularity, alpha, shrink, dtype, seed
):
    layer = _layer(spec, rows, cols, granularity, dtype, seed, shrink).eval()
    model = nn.Sequential(layer)
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(seed)).to(dtype)
    output_before = layer(x)
    weight_before = layer.weight.detach().clone()
    q_before = layer.quantized_weight()
    scale_before = layer.scale.detach().clone()
    inside_before = layer.clip_mask()
    layer._frozen_noise = torch.ones_like(weight_before)  # a reset discards frozen draws

    stats = reset_with_stats_(model, alpha, mode, torch.Generator().manual_seed(seed))

    weight = layer.weight.detach()
    assert torch.equal(layer.quantized_weight(), q_before)  # bit for bit
    assert torch.equal(layer.scale.detach(), scale_before)
    assert torch.equal(layer(x), output_before)
    assert layer._frozen_noise is None
    inside = layer.clip_mask()
    moved = weight != weight_before
    assert stats.layers == 1 and stats.weights == weight.numel()
    assert stats.moved == int(moved.sum())
    assert stats.unclipped == int((inside & ~inside_before).sum())
    if mode == "clipped":
        # in-range latents untouched bit for bit; every latent it moved ends in range
        assert torch.equal(weight[inside_before], weight_before[inside_before])
        assert inside[moved].all()
        assert not moved[inside_before].any()
    if mode == "dither":
        assert inside[moved].all()
        if dtype != torch.bfloat16:  # rounding to bfloat16 can defeat a rare draw
            assert inside.all()
    if mode != "full" and dtype != torch.bfloat16:
        assert inside[~inside_before].all()  # every clipped latent was brought into range


def test_full_is_the_default_and_todays_rule_bit_for_bit():
    layers = [_layer((2, "seq"), 16, 32, seed=3), _layer((2, "seq"), 16, 32, seed=3)]
    w, q = layers[0].weight.detach().clone(), layers[0].quantized_weight()
    assert reset_(nn.Sequential(layers[0]), 0.3) == 1
    assert reset_(nn.Sequential(layers[1]), 0.3, mode="full") == 1
    expected = 0.3 * w + (1.0 - 0.3) * q
    assert torch.equal(layers[0].weight.detach(), expected)  # no latent at a tie here
    assert torch.equal(layers[1].weight.detach(), expected)


@pytest.mark.parametrize(
    ("spec", "values", "expected"),
    [
        # 1-bit LSQ, range [-1, 1]: 0.2·1.5 + 0.8 = 1.1 is still outside -> 1 - 1e-3
        ((1, "lsq"), [1.5, 0.3, -1.9, 0.9], [0.999, 0.3, -0.999, 0.9]),
        # 2-bit SEQ, range ±0.99: 0.2·1.5 + 0.8·0.75 = 0.9 is inside; 0.2·2.5 + 0.6 = 1.1 is not
        ((2, "seq"), [1.5, 0.3, 2.5, -0.9], [0.9, 0.3, 0.989, -0.9]),
        # 3-bit LSQ, range [-4, 3]: 0.2·3.7 + 0.8·3 = 3.14 -> 2.999; -0.2·5 - 0.8·4 -> -3.999
        ((3, "lsq"), [3.7, 0.3, -5.0, 2.5], [2.999, 0.3, -3.999, 2.5]),
    ],
)
def test_clipped_mode_closed_form(spec, values, expected):
    layer = _hand_layer(spec, values)
    q_before = layer.quantized_weight()
    stats = reset_with_stats_(nn.Sequential(layer), 0.2, "clipped")
    want = torch.tensor([expected], dtype=torch.float32)
    torch.testing.assert_close(layer.weight.detach(), want, rtol=0, atol=1e-6)
    assert torch.equal(layer.weight.detach()[0, 1], torch.tensor(values[1]))  # in range: as is
    assert torch.equal(layer.quantized_weight(), q_before)
    assert layer.clip_mask().all()
    assert (stats.moved, stats.unclipped, stats.guarded) == (2, 2, 0)


def test_clipped_mode_margin_survives_bfloat16():
    # 4-bit LSQ edge 7: a 1e-3 margin is below bfloat16's resolution there (2^-5), so the
    # margin widens to 2·eps·7 and the stored weight is strictly inside, on level 7.
    layer = _hand_layer((4, "lsq"), [9.0, -12.0, 0.5, 3.0], dtype=torch.bfloat16)
    q_before = layer.quantized_weight()
    reset_(nn.Sequential(layer), 1.0, "clipped")  # α = 1: a pure un-clip
    weight = layer.weight.detach().float()[0]
    assert layer.clip_mask().all()
    assert 6.5 < weight[0] < 7.0 and -8.0 < weight[1] < -7.5
    assert torch.equal(layer.quantized_weight(), q_before)


@pytest.mark.parametrize("spec", QUANT_SPECS)
def test_dither_at_alpha_zero_spreads_latents_uniformly_over_their_cells(spec):
    layer = _layer(spec, 256, 512, seed=1, shrink=0.8)
    codes_before = level_codes(nn.Sequential(layer))["0"]
    reset_(nn.Sequential(layer), 0.0, "dither", torch.Generator().manual_seed(0))
    assert torch.equal(level_codes(nn.Sequential(layer))["0"], codes_before)
    assert layer.clip_mask().all()
    # Position inside the cell, 0 at its lower edge and 1 at its upper: uniform on [0, 1].
    # 131072 latents: the Kolmogorov-Smirnov distance of a true uniform sample exceeds
    # 1.95/sqrt(n) = 0.0054 with probability 0.001; the dispersion's standard error is
    # 0.289/sqrt(n) = 0.0008, so 0.004 is five of them.
    quantizer = layer.quantizer
    x = layer.grid_position().reshape(-1).double()
    cells = quantizer.cells[quantizer.level_index(x)]
    position = ((x - cells[:, 0]) / (cells[:, 1] - cells[:, 0])).sort().values
    n = position.numel()
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (ecdf - position).abs().max() < 0.0054
    assert abs(grid_dispersion(nn.Sequential(layer)).value - 0.5) < 0.004
    assert (x == quantizer.q(x)).double().mean() < 1e-4  # not on the grid


def test_dither_follows_its_formula_with_the_generators_draws():
    # float64 so the check is tight: W = Q + α·(W_c - Q) + (1-α)·s·(t - q), with t the
    # generator's uniform draws (one per latent, row-major) mapped onto each latent's cell.
    spec, alpha = (2, "seq"), 0.3
    layer = _layer(spec, 8, 16, dtype=torch.float64, seed=2, shrink=0.7)
    w, q, s = layer.weight.detach().clone(), layer.quantized_weight(), layer.scale.detach()
    inside = layer.clip_mask()
    quantizer = Quantizer("seq", 2)
    x = w / s
    cells = quantizer.cells[quantizer.level_index(x)]
    uniform = torch.rand(w.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = cells[..., 0] + uniform * (cells[..., 1] - cells[..., 0])
    anchor = torch.where(inside, w, s * x.clamp(cells[..., 0], cells[..., 1]))
    expected = q + alpha * (anchor - q) + (1 - alpha) * (s * t - q)
    assert (~inside).any()
    reset_(nn.Sequential(layer), alpha, "dither", torch.Generator().manual_seed(5))
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=1e-14)


def test_dither_alpha_one_keeps_in_range_latents_and_clamps_clipped_ones():
    layer = _hand_layer((2, "seq"), [0.3, -0.6, 1.7, -0.1])
    reset_(nn.Sequential(layer), 1.0, "dither", torch.Generator().manual_seed(0))
    weight = layer.weight.detach()[0]
    assert torch.equal(weight[[0, 1, 3]], torch.tensor([0.3, -0.6, -0.1]))
    assert weight[2] == torch.tensor(0.99)  # clamped to the range edge, which is in range


def test_dither_reproducible_from_the_generator_seed(tiny_llama):
    winq.quantize_(tiny_llama, winq.QuantConfig(bits=2))

    def dithered(seed: int) -> tuple[list[torch.Tensor], torch.Generator]:
        model = type(tiny_llama)(tiny_llama.config)
        winq.quantize_(model, winq.QuantConfig(bits=2))
        model.load_state_dict(tiny_llama.state_dict())
        generator = torch.Generator().manual_seed(seed)
        reset_(model, 0.2, "dither", generator)
        return [layer.weight.detach().clone() for _, layer in quant_layers(model)], generator

    first, generator_first = dithered(7)
    again, generator_again = dithered(7)
    other, _ = dithered(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # the draws consumed depend only on the shapes: both generators are in the same state
    assert torch.equal(generator_first.get_state(), generator_again.get_state())


@pytest.mark.parametrize("mode", RESET_MODES)
def test_every_mode_leaves_the_logits_of_a_model_unchanged(tiny_llama, token_batch, mode):
    winq.quantize_(tiny_llama, winq.QuantConfig(bits=2))
    with torch.no_grad():
        for _, layer in quant_layers(tiny_llama):
            layer.scale.mul_(0.5)  # clip a good share of the latents
    before = tiny_llama(token_batch).logits
    stats = reset_with_stats_(tiny_llama, 0.2, mode, torch.Generator().manual_seed(0))
    assert stats.layers == 14 and stats.moved > 0 and stats.unclipped > 0
    assert torch.equal(tiny_llama(token_batch).logits, before)


def test_reset_argument_errors(tiny_llama):
    winq.quantize_(tiny_llama, winq.QuantConfig(bits=2))
    with pytest.raises(
        ValueError, match="reset mode must be one of full, clipped, dither, got 'x'"
    ):
        reset_(tiny_llama, 0.2, "x")
    with pytest.raises(ValueError, match=r"'dither' .* needs a torch.Generator .* got None"):
        reset_(tiny_llama, 0.2, "dither")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got -0.5"):
        reset_(tiny_llama, -0.5, "clipped")

"""Exact quantizer arithmetic: levels, STE masks, the LSQ scale gradient, initial scales."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from winq.config import QuantConfig
from winq.quantizers import (
    fake_quantize,
    get_quantizer,
    grad_scale_factor,
    init_scale,
    quantize_activations,
)

# (bits, quantizer) -> every level of q in units of s, as the design card states them
EXPECTED_LEVELS = {
    (1, "lsq"): [-1.0, 1.0],
    (1.58, "seq"): [-2 / 3, 0.0, 2 / 3],
    (2, "seq"): [-0.75, -0.25, 0.25, 0.75],
    (2, "lsq"): [-2.0, -1.0, 0.0, 1.0],
    (3, "lsq"): [float(v) for v in range(-4, 4)],
    (4, "lsq"): [float(v) for v in range(-8, 8)],
    (3, "seq"): [(k + 0.5) / 4 for k in range(-4, 4)],
    (4, "seq"): [(k + 0.5) / 8 for k in range(-8, 8)],
}
DEFAULTS = [(1, "lsq"), (1.58, "seq"), (2, "seq"), (3, "lsq"), (4, "lsq")]


def reference_q(x: np.ndarray, bits: float, name: str) -> np.ndarray:
    """The quantizer grids written out independently in NumPy (float64)."""
    if name == "lsq" and bits == 1:
        return np.where(x >= 0, 1.0, -1.0)
    if name == "lsq":
        half = 2 ** (int(bits) - 1)
        return np.clip(np.round(x), -half, half - 1)
    n, shift = (1.5, 0.0) if bits == 1.58 else (2 ** (int(bits) - 1), 0.5)
    return (np.round(np.clip(x, -0.99, 0.99) * n - shift) + shift) / n


def reference_mask(x: np.ndarray, bits: float, name: str) -> np.ndarray:
    if name == "lsq" and bits == 1:
        return np.abs(x) <= 1
    if name == "lsq":
        half = 2 ** (int(bits) - 1)
        return (x >= -half) & (x <= half - 1)
    return np.abs(x) <= 0.99


@pytest.mark.parametrize(("bits", "name"), list(EXPECTED_LEVELS))
def test_levels(bits, name):
    quantizer = get_quantizer(name, bits)
    np.testing.assert_allclose(
        quantizer.levels.numpy(), EXPECTED_LEVELS[(bits, name)], rtol=0, atol=1e-15
    )
    x = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    values = torch.unique(quantizer.q(x))
    np.testing.assert_allclose(values.numpy(), EXPECTED_LEVELS[(bits, name)], rtol=0, atol=1e-15)


@pytest.mark.parametrize(("bits", "name"), list(EXPECTED_LEVELS))
def test_q_matches_reference_bit_exact(bits, name):
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(16, 64, generator=generator, dtype=torch.float64) * 0.05
    scale = init_scale(w, get_quantizer(name, bits), (16, 1))
    out = fake_quantize(w, scale, get_quantizer(name, bits), 1.0)
    s = scale.numpy()
    expected = reference_q(w.numpy() / s, bits, name) * s
    np.testing.assert_array_equal(out.numpy(), expected)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 40),
    spec=st.sampled_from(DEFAULTS),
    spread=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_distinct_values_per_row(rows, cols, spec, spread, seed):
    bits, name = spec
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=generator) * spread
    quantizer = get_quantizer(name, bits)
    scale = init_scale(w, quantizer, (rows, 1))
    q = fake_quantize(w, scale, quantizer, 1.0)
    allowed = 3 if bits == 1.58 else 2**bits
    for row in q:
        assert torch.unique(row).numel() <= allowed


def decision_boundaries(bits: float, name: str) -> np.ndarray:
    """The values of x = w/s where q(x) jumps from one level to the next (float64)."""
    if name == "lsq" and bits == 1:
        return np.array([0.0])
    if name == "lsq":
        half = 2 ** (int(bits) - 1)
        return np.arange(-half, half - 1) + 0.5
    n, shift = (1.5, 0.0) if bits == 1.58 else (2 ** (int(bits) - 1), 0.5)
    k = np.arange(-2 * n - 1, 2 * n + 1)  # every jump of round(x·n − shift), clipped below
    edges = (k + 0.5 + shift) / n
    return edges[np.abs(edges) < 0.99]


BF16_REL = 2.0**-8  # one rounding to bfloat16 (8 significant bits)
F32_REL = 2.0**-23  # the grid decision is made on w/s in float32


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 48),
    spec=st.sampled_from(list(EXPECTED_LEVELS)),
    spread=st.floats(1e-4, 1e3),
    seed=st.integers(0, 2**16),
)
@example(rows=3, cols=25, spec=(2, "seq"), spread=1.0, seed=1)  # a weight 3e-4·s below zero
def test_bfloat16_weights_get_the_exact_grid_level(rows, cols, spec, spread, seed):
    """A bfloat16 model (e.g. a checkpoint loaded in bf16) is quantized to the level the exact
    float64 grid gives its bf16 weights, rounded once to bf16; the STE mask likewise. Only a
    ratio w/s within float32 rounding of a decision boundary may take the neighbouring level."""
    bits, name = spec
    quantizer = get_quantizer(name, bits)
    generator = torch.Generator().manual_seed(seed)
    w = (torch.randn(rows, cols, generator=generator, dtype=torch.float64) * spread).bfloat16()
    scale = init_scale(w.double(), quantizer, (rows, 1)).bfloat16()
    weight = w.clone().requires_grad_(True)
    out = fake_quantize(weight, scale, quantizer, 1.0)
    assert out.dtype == torch.bfloat16
    x = w.double().numpy() / scale.double().numpy()  # exact ratio of the bf16 inputs
    exact = torch.from_numpy(reference_q(x, bits, name) * scale.double().numpy())
    distance = np.min(np.abs(x[..., None] - decision_boundaries(bits, name)), axis=-1)
    safe = torch.from_numpy(distance > 4 * F32_REL * np.maximum(np.abs(x), 1.0))
    torch.testing.assert_close(out[safe], exact.bfloat16()[safe], rtol=0, atol=0)
    levels = quantizer.levels.numpy()[None, None, :] * scale.double().numpy()[..., None]
    nearest = np.min(np.abs(out.detach().double().numpy()[..., None] - levels), axis=-1)
    assert np.all(nearest <= BF16_REL * np.abs(out.detach().double().numpy()))
    out.sum().backward()
    lo, hi = quantizer.clip_levels if name == "lsq" else (-0.99, 0.99)
    edge = np.minimum(np.abs(x - lo), np.abs(x - hi)) > 4 * F32_REL * np.maximum(np.abs(x), 1)
    mask = reference_mask(x, bits, name).astype(float)
    np.testing.assert_array_equal(weight.grad.double().numpy()[edge], mask[edge])


@pytest.mark.parametrize(("bits", "name"), list(EXPECTED_LEVELS))
def test_ste_gradient_is_range_mask(bits, name):
    generator = torch.Generator().manual_seed(2)
    w = (torch.randn(8, 32, generator=generator) * 0.1).requires_grad_()
    quantizer = get_quantizer(name, bits)
    # a scale smaller than max|w| so that both clipped and unclipped weights exist
    scale = (init_scale(w, quantizer, (8, 1)) * 0.6).requires_grad_()
    upstream = torch.randn(8, 32, generator=generator)
    (fake_quantize(w, scale, quantizer, 0.5) * upstream).sum().backward()
    x = (w.detach() / scale.detach()).numpy()
    mask = reference_mask(x, bits, name)
    assert 0 < mask.mean() < 1
    np.testing.assert_array_equal(w.grad.numpy(), upstream.numpy() * mask)


@pytest.mark.parametrize(("bits", "name"), list(EXPECTED_LEVELS))
@pytest.mark.parametrize("granularity", ["per_row", "per_group", "per_tensor"])
def test_lsq_scale_gradient_formula(bits, name, granularity):
    generator = torch.Generator().manual_seed(3)
    w = (torch.randn(6, 16, generator=generator, dtype=torch.float64) * 0.1).requires_grad_()
    quantizer = get_quantizer(name, bits)
    shape = {"per_row": (6, 1), "per_group": (6, 4), "per_tensor": (1, 1)}[granularity]
    scale = (init_scale(w, quantizer, shape) * 0.7).requires_grad_()
    upstream = torch.randn(6, 16, generator=generator, dtype=torch.float64)
    g = grad_scale_factor(w.numel(), quantizer)
    (fake_quantize(w, scale, quantizer, g) * upstream).sum().backward()

    # Independent formula: dQ/ds = q - x inside, clip level outside; 1-bit LSQ: sign(x).
    per_weight_s = np.repeat(scale.detach().numpy(), 16 // shape[1], axis=1)
    if shape == (1, 1):
        per_weight_s = np.full((6, 16), scale.item())
    x = w.detach().numpy() / per_weight_s
    q = reference_q(x, bits, name)
    if name == "lsq" and bits == 1:
        coefficient = q
    else:
        if name == "seq":
            n, shift = (1.5, 0.0) if bits == 1.58 else (2 ** (int(bits) - 1), 0.5)
            hi = (n - shift) / n
            lo = -hi
            below, above = x < -0.99, x > 0.99
        else:
            lo, hi = -(2 ** (int(bits) - 1)), 2 ** (int(bits) - 1) - 1
            below, above = x < lo, x > hi
        coefficient = np.where(below, lo, np.where(above, hi, q - x))
    contribution = g * coefficient * upstream.numpy()  # (6, 16)
    if shape == (1, 1):
        expected = contribution.sum().reshape(1, 1)
    else:
        expected = contribution.reshape(6, shape[1], -1).sum(axis=-1)
    qp = max(1, 2 ** (int(bits) - 1) - 1) if bits != 1.58 else 1
    assert g == pytest.approx(1 / math.sqrt(w.numel() * qp), rel=1e-15)
    np.testing.assert_allclose(scale.grad.numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("bits", "name"), DEFAULTS)
def test_initial_scales(bits, name):
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(5, 12, generator=generator)
    abs_w = w.abs()
    if name == "lsq" and bits == 1:
        expected = abs_w.mean(dim=1, keepdim=True)
    elif name == "seq":
        expected = abs_w.amax(dim=1, keepdim=True)
    else:
        expected = abs_w.amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
    torch.testing.assert_close(
        init_scale(w, get_quantizer(name, bits), (5, 1)), expected, rtol=0, atol=0
    )
    # per group of 4 columns and per tensor
    grouped = init_scale(w, get_quantizer(name, bits), (5, 3))
    for group in range(3):
        sub = w[:, group * 4 : (group + 1) * 4]
        torch.testing.assert_close(
            grouped[:, group : group + 1],
            init_scale(sub, get_quantizer(name, bits), (5, 1)),
            rtol=0,
            atol=0,
        )
    whole = init_scale(w, get_quantizer(name, bits), (1, 1))
    torch.testing.assert_close(
        whole, init_scale(w.reshape(1, -1), get_quantizer(name, bits), (1, 1))
    )


def test_forward_mode_ad_matches_mask():
    generator = torch.Generator().manual_seed(5)
    w = torch.randn(4, 8, generator=generator)
    quantizer = get_quantizer("seq", 2)
    scale = init_scale(w, quantizer, (4, 1)) * 0.8
    tangent = torch.randn(4, 8, generator=generator)
    _, jvp = torch.func.jvp(lambda v: fake_quantize(v, scale, quantizer, 1.0), (w,), (tangent,))
    mask = quantizer.in_range(w / scale)
    torch.testing.assert_close(jvp, tangent * mask, rtol=0, atol=0)


def test_activation_quantization_per_token():
    generator = torch.Generator().manual_seed(6)
    x = (torch.randn(3, 5, 40, generator=generator) * 3).requires_grad_()
    y = quantize_activations(x, 8)
    step = x.detach().abs().amax(dim=-1, keepdim=True) / 127
    assert torch.all((y.detach() - x.detach()).abs() <= step / 2 + 1e-6)
    units = y.detach() / step
    torch.testing.assert_close(units, units.round(), rtol=0, atol=1e-4)
    assert units.abs().max() <= 127 + 1e-4
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"bits": 5}, "5"),
        ({"bits": "two"}, "two"),
        ({"bits": 0}, "bits must be one of"),
        ({"bits": 2, "quantizer": "gptq"}, "gptq"),
        ({"bits": 1, "quantizer": "seq"}, "seq"),
        ({"bits": 1.58, "quantizer": "lsq"}, "lsq"),
        ({"bits": 16, "quantizer": "lsq"}, "16"),
        ({"bits": 2, "group_size": 0}, "group_size"),
        ({"bits": 2, "group_size": -8}, "-8"),
        ({"bits": 2, "group_size": 2.5}, "2.5"),
        ({"bits": 2, "granularity": "per_group"}, "group_size"),
        ({"bits": 2, "granularity": "per_channel"}, "per_channel"),
        ({"bits": 2, "granularity": "per_tensor", "group_size": 8}, "conflicts"),
        ({"bits": 2, "a_bits": 4}, "a_bits"),
        ({"bits": 2, "noise_sigma": -1.0}, "noise_sigma"),
        ({"bits": 2, "noise_sigma": float("nan")}, "noise_sigma"),
        ({"bits": 2, "noise_mode": "during"}, "during"),
    ],
)
def test_config_validation(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        QuantConfig(**kwargs)
    assert fragment in str(info.value)


def test_config_defaults_and_round_trip():
    assert QuantConfig(bits=2).quantizer == "seq"
    assert QuantConfig(bits="1.58").quantizer == "seq"
    assert QuantConfig(bits="ternary").bits == 1.58
    assert QuantConfig(bits=1).quantizer == "lsq"
    assert QuantConfig(bits=3).quantizer == "lsq"
    config = QuantConfig(bits=2, group_size=8, a_bits=8, noise_sigma=1e-3)
    assert config.granularity == "per_group"
    assert QuantConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown quantization setting"):
        QuantConfig.from_dict({"bits": 2, "bitz": 3})

"""Finite-difference products: against double backward, the step rule, exact restoration of θ.

The bar (float32, tiny Llama and Qwen2, full precision and 2-bit): relative error of H @ v at
most 1e-3 for random v. The references are exact products (double backward), never the
finite differences themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
from analysis_cases import llama_batches, mlp_case
from tiny_models import build_tiny_model

import winq
from winq.analysis import HessianOperator
from winq.analysis.hvp import FD_STEP_CONSTANT, unit_roundoff


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def quantized(model):
    """2-bit every linear layer but the head, scales shrunk so that ~20% of weights clip."""
    winq.quantize_(model, winq.QuantConfig(bits=2))
    with torch.no_grad():
        for layer in model.modules():
            if hasattr(layer, "clip_mask"):
                layer.scale.mul_(0.6)
    return model


@pytest.mark.parametrize("bits", [16, 2])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_products_match_double_backward(arch, bits, one_thread):
    model = build_tiny_model(arch, layers=1)
    if bits == 2:
        model = quantized(model)
    batches = llama_batches()
    exact = HessianOperator(model, batches, backend="double_backward")
    v = torch.randn(exact.num_params, 2, generator=torch.Generator().manual_seed(0))
    reference = exact @ v
    exact.clear_cache()
    op = HessianOperator(model, batches, backend="finite_difference")
    product = op @ v
    assert product.dtype == torch.float32
    assert relative_error(product, reference) <= 1e-3  # measured 4.5e-4 to 5.3e-4
    if bits == 2:
        mask = torch.cat(
            [m.clip_mask().reshape(-1) for m in model.modules() if hasattr(m, "clip_mask")]
        )
        assert 0.05 < 1 - mask.float().mean() < 0.6
        # the linearised STE has zero gradient on clipped weights at θ ± εv alike
        assert torch.count_nonzero(product[~mask]) == 0


def test_activation_quantization_is_refused_at_construction():
    model = build_tiny_model("llama", layers=1)
    winq.quantize_(model, winq.QuantConfig(bits=2, a_bits=8))
    with pytest.raises(ValueError, match=r"a_bits=8.*use backend='double_backward'"):
        HessianOperator(model, llama_batches(), backend="finite_difference")


def test_weights_restored_bit_for_bit_after_1000_products(one_thread):
    model, batches, loss_fn = mlp_case()
    model = model.float()
    batches = [{"x": b["x"].float(), "y": b["y"]} for b in batches[:1]]
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(model, batches, params="all", loss_fn=loss_fn, backend="finite_difference")
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(0))
    first = op @ v
    for _ in range(999):
        last = op @ v
    assert torch.equal(first.view(torch.int32), last.view(torch.int32))
    for old, new in zip(before, model.parameters()):
        assert torch.equal(old.view(torch.int32), new.detach().view(torch.int32))
    # the test can fail: moving θ to θ + εv, θ - εv and back by arithmetic drifts
    theta = op.parameters_vector()
    step = op.metadata()["fd_relative_step"] * (1 + float(theta.norm())) ** (1 / 3) / v.norm()
    drifted = (theta + step * v) - 2 * step * v + step * v
    assert not torch.equal(drifted, theta)


def captured_weights(module: torch.nn.Module, store: list):
    return module.register_forward_pre_hook(lambda m, args: store.append(m.weight.detach().clone()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_follows_the_rule(dtype, one_thread):
    # a pure-dtype MLP: the forward runs in the parameters' dtype, so u is that dtype's
    model, batches, loss_fn = mlp_case()
    model = model.to(dtype)
    batches = [{"x": b["x"].to(dtype), "y": b["y"]} for b in batches]
    op = HessianOperator(model, batches, params="all", loss_fn=loss_fn, backend="finite_difference")
    theta = op.parameters_vector().double()
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(1), dtype=dtype)
    seen: list = []
    handle = captured_weights(model.fc1, seen)
    op @ v
    handle.remove()
    assert op.metadata()["fd_unit_roundoff"] == unit_roundoff(dtype)
    # forwards: one dtype probe, then two batches at θ + εv, then two at θ - εv
    assert len(seen) == 5
    plus, minus = seen[1].double(), seen[3].double()
    block = v[: model.fc1.weight.numel()].double().view_as(plus)
    used = float((plus - minus).norm() / (2 * block.norm()))
    expected = FD_STEP_CONSTANT * (unit_roundoff(dtype) * (1 + float(theta.norm()))) ** (1 / 3)
    expected /= float(v.double().norm())
    assert used == pytest.approx(expected, rel=1e-3 if dtype == torch.float32 else 1e-10)


def test_unit_roundoff_is_found_from_the_forward(one_thread):
    # a float64 Llama computes RMSNorm and rotary embeddings in float32: u is float32's
    model = build_tiny_model("llama", layers=1).double()
    batches = llama_batches()
    op = HessianOperator(model, batches, backend="finite_difference")
    op @ torch.ones(op.num_params, dtype=torch.float64)
    info = op.metadata()
    assert info["fd_unit_roundoff"] == 2.0**-24
    assert info["fd_relative_step"] == pytest.approx(FD_STEP_CONSTANT * 2.0**-8)
    # under bfloat16 autocast the matrix products run in bfloat16: u is bfloat16's
    model = build_tiny_model("llama", layers=1)
    op = HessianOperator(model, batches, backend="finite_difference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        op @ torch.ones(op.num_params)
    assert op.metadata()["fd_unit_roundoff"] == 2.0**-8


def test_fd_eps_overrides_the_step_and_bad_values_are_refused(one_thread):
    model = build_tiny_model("llama", layers=1)
    batches = llama_batches()
    v = torch.randn(
        HessianOperator(model, batches).num_params, generator=torch.Generator().manual_seed(2)
    )
    reference = HessianOperator(model, batches) @ v
    coarse = HessianOperator(model, batches, backend="finite_difference", fd_eps=0.5)
    # a step 1000 times the default: truncation error far above the default's 1e-3
    assert relative_error(coarse @ v, reference) > 1e-2
    assert coarse.metadata()["fd_relative_step"] == 0.5
    for bad in (0.0, -1e-3, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="fd_eps must be a positive finite number"):
            HessianOperator(model, batches, backend="finite_difference", fd_eps=bad)
    with pytest.raises(ValueError, match="fd_eps applies to backend='finite_difference'"):
        HessianOperator(model, batches, backend="double_backward", fd_eps=1e-3)
    with pytest.raises(ValueError, match="backend must be one of"):
        HessianOperator(model, batches, backend="central")


def checkpointed(model):
    """Each decoder layer's forward through torch.utils.checkpoint (active in eval mode too,
    unlike Hugging Face's own switch); returns a list counting the layers' forwards."""
    from torch.utils.checkpoint import checkpoint

    calls = []
    for layer in model.model.layers:

        def counted(*args, inner=layer.forward, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

        def forward(*args, counted=counted, **kwargs):
            return checkpoint(counted, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
    return calls


def test_fused_attention_and_activation_checkpointing(one_thread):
    batches = llama_batches()
    model = build_tiny_model("llama", layers=1)
    fused = {}

    def spy(module, args):
        fused[module.training] = torch.backends.cuda.flash_sdp_enabled()

    handle = model.model.layers[0].register_forward_pre_hook(spy)
    plain = HessianOperator(model, batches, backend="finite_difference")
    v = torch.randn(plain.num_params, generator=torch.Generator().manual_seed(4))
    product = plain @ v
    assert fused == {False: True}  # finite differences leave the fused kernels on
    HessianOperator(model, batches, backend="double_backward") @ v
    assert fused == {False: False}  # while the exact backends need the math kernel
    handle.remove()

    calls = checkpointed(model)
    again = HessianOperator(model, batches, backend="finite_difference") @ v
    # one probe forward, then per gradient 2 batches x (forward + recomputation)
    assert len(calls) == 1 + 2 * 2 * 2
    assert relative_error(again, product) <= 1e-6


def test_bfloat16_forward_limits_the_accuracy(one_thread):
    # the module docstring's figures: no step is accurate when the forward runs in bfloat16
    from analysis_cases import tiny_llama

    batches = llama_batches()
    exact = HessianOperator(tiny_llama(layers=1, dtype=torch.float32), batches)
    v = torch.randn(exact.num_params, 2, generator=torch.Generator().manual_seed(0))
    reference = exact @ v
    model = tiny_llama(layers=1, dtype=torch.bfloat16)
    default = HessianOperator(model, batches, backend="finite_difference")
    best = HessianOperator(model, batches, backend="finite_difference", fd_eps=0.3)
    assert default.dtype == torch.float32  # float32 vectors for a bfloat16 model
    assert relative_error(default @ v, reference) > 0.1  # measured 0.31
    assert 0.01 < relative_error(best @ v, reference) < 0.05  # measured 0.025

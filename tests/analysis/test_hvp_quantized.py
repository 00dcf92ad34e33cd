"""Hessian of a 2-bit quantized model through the straight-through estimator.

For ``Q(W) = s·q(W/s)`` with the masked STE, dQ/dW = diag(M) (M the clip mask) and the second
derivative of Q is zero, so the Hessian w.r.t. the latent weights is ``M · H_Q · M`` with
``H_Q`` the Hessian of the loss w.r.t. the effective weights at Q(W). The reference computes
``H_Q`` on a plain copy of the model whose linear layers hold Q(W) (no quantizer at all).
"""

from __future__ import annotations

import copy

import pytest
import torch
from analysis_cases import (
    LLAMA_NAMES,
    float64_rmsnorm,
    llama_batches,
    llama_dense_hessian,
    tiny_llama,
)

from winq.analysis import HessianOperator, select_parameters

winq = pytest.importorskip("winq")
if not hasattr(winq, "quantize_"):  # pragma: no cover - the core landed with the quantizers
    pytest.skip("winq.quantize_ is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def quantized_case():
    """(model, batches, masked dense reference, flat clip mask) for a 2-bit float64 Llama
    whose v_proj and down_proj are QuantLinear with scales shrunk so ~20% of weights clip."""
    with float64_rmsnorm():
        model = tiny_llama()
        winq.quantize_(model, winq.QuantConfig(bits=2), filter_fn=r"v_proj|down_proj")
        layers = [m for _, m in model.named_modules() if hasattr(m, "clip_mask")]
        assert len(layers) == 2
        with torch.no_grad():
            for layer in layers:
                layer.scale.mul_(0.6)
        mask = torch.cat([layer.clip_mask().reshape(-1) for layer in layers]).double()
        plain = winq.dequantize_(copy.deepcopy(model), quantized=True)  # nn.Linear holding Q(W)
        batches = llama_batches()
        dense_q = llama_dense_hessian(plain, batches, list(LLAMA_NAMES))
    return model, batches, mask[:, None] * dense_q * mask[None, :], mask


def test_linear_selects_the_latent_weights_of_quantized_layers(quantized_case):
    model, *_ = quantized_case
    assert select_parameters(model, "linear") == list(LLAMA_NAMES)  # not q_proj, not scales
    clipped = float(winq.clipped_fraction(model))
    assert 0.05 < clipped < 0.6


@pytest.mark.parametrize("backend", ["double_backward", "func"])
def test_hvp_through_ste_is_masked_hessian_at_q(quantized_case, backend):
    model, batches, reference, mask = quantized_case
    generator = torch.Generator().manual_seed(0)
    with float64_rmsnorm():
        op = HessianOperator(model, batches, params="linear", backend=backend)
        v = torch.randn(op.num_params, 3, generator=generator, dtype=torch.float64)
        product = op @ v
    assert float((product - reference @ v).norm() / (reference @ v).norm()) < 1e-12
    # clipped coordinates carry an exact null space: rows of zeros, and no response to them
    assert torch.count_nonzero(product[mask == 0]) == 0
    with float64_rmsnorm():
        assert torch.count_nonzero(op @ (v[:, 0] * (1 - mask))) == 0


def test_noise_injection_is_off_during_products(quantized_case):
    model, batches, reference, _ = quantized_case
    from winq.nn import set_noise_

    noisy = copy.deepcopy(model)
    set_noise_(noisy, sigma=1e-2, sigma_scale=1e-2)
    noisy.train()
    v = torch.randn(
        reference.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    with float64_rmsnorm():
        op = HessianOperator(noisy, batches, params="linear", reuse_graph=False)
        first, second = op @ v, op @ v
    assert torch.equal(first, second)
    assert float((first - reference @ v).norm() / (reference @ v).norm()) < 1e-12
    assert noisy.training

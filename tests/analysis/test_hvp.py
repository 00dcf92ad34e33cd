"""HessianOperator: exact products against dense references, backends, selection, state."""

from __future__ import annotations

import pytest
import torch
from analysis_cases import (
    LLAMA_NAMES,
    TinyMLP,
    llama_batches,
    mlp_case,
    mlp_dense_hessian,
    reference_loss,
    tiny_llama,
)

from winq.analysis import HessianOperator, select_parameters

BACKENDS = ("double_backward", "func")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("backend", BACKENDS)
def test_llama_products_match_dense_hessian_float64(
    exact_llama, llama_reference, backend, generator
):
    model, batches, names = exact_llama
    dense, _ = llama_reference
    op = HessianOperator(model, batches, params=names, backend=backend)
    assert op.param_names == names
    assert op.num_params == dense.shape[0] == 32 * 32 + 32 * 64
    assert op.num_tokens == 9 + 6 + 5  # padded row 1 keeps 7 tokens -> 6 targets
    v = torch.randn(op.num_params, generator=generator, dtype=torch.float64)
    assert relative_error(op @ v, dense @ v) < 1e-12
    block = torch.randn(op.num_params, 3, generator=generator, dtype=torch.float64)
    product = op @ block
    assert product.shape == (op.num_params, 3)
    assert relative_error(product, dense @ block) < 1e-12
    assert op.num_matvecs == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_products_match_dense_to_float32_round_off(llama_reference, backend, generator):
    # the stock model: float32 weights, RMSNorm's own float32 upcast, default sdpa attention
    model = tiny_llama(dtype=torch.float32)
    dense, _ = llama_reference
    op = HessianOperator(model, llama_batches(), params=list(LLAMA_NAMES), backend=backend)
    assert op.dtype == torch.float32
    v = torch.randn(op.num_params, generator=generator, dtype=torch.float64)
    # float32 round-off through two layers and two backward passes: ~1e-6 relative
    assert relative_error((op @ v.float()).double(), dense @ v) < 2e-5


def test_backends_agree_on_all_linear_layers(generator):
    model = tiny_llama(layers=2, dtype=torch.float32)
    batches = llama_batches()
    first = HessianOperator(model, batches, backend="double_backward")
    second = HessianOperator(model, batches, backend="func")
    v = torch.randn(first.num_params, 2, generator=generator)
    assert relative_error(second @ v, first @ v) < 1e-5


def test_graph_reuse_knobs_give_identical_products(exact_llama, generator):
    model, batches, names = exact_llama
    v = torch.randn(3072, 2, generator=generator, dtype=torch.float64)
    reference = HessianOperator(model, batches, params=names) @ v
    for kwargs in ({"reuse_graph": False}, {"cached_graphs": 1}, {"cached_graphs": 0}):
        op = HessianOperator(model, batches, params=names, **kwargs)
        for _ in range(2):  # second product uses whatever graphs were kept
            assert relative_error(op @ v, reference) < 1e-13
        expected = 0 if kwargs != {"cached_graphs": 1} else 1
        assert len(op._shared.graphs) == expected


def test_restrict_is_the_diagonal_block(exact_llama, llama_reference, generator):
    model, batches, names = exact_llama
    dense, _ = llama_reference
    op = HessianOperator(model, batches, params=names)
    block = op.restrict([names[1]])  # down_proj: the last 2048 coordinates
    assert block.param_names == [names[1]] and block.num_params == 2048
    v = torch.randn(2048, generator=generator, dtype=torch.float64)
    assert relative_error(block @ v, dense[1024:, 1024:] @ v) < 1e-12
    func_block = HessianOperator(model, batches, params=names, backend="func").restrict([names[1]])
    assert relative_error(func_block @ v, dense[1024:, 1024:] @ v) < 1e-12
    with pytest.raises(ValueError, match="not among"):
        op.restrict(["model.embed_tokens.weight"])


def test_loss_and_gradient_helpers(exact_llama):
    model, batches, names = exact_llama
    op = HessianOperator(model, batches, params=names)
    named = dict(model.named_parameters())
    state = {n: named[n] for n in names}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        loss = reference_loss(model, state, batches)
        grads = torch.autograd.grad(loss, [named[n] for n in names])
    assert op.loss() == pytest.approx(float(loss.detach()), rel=1e-13)
    assert relative_error(op.gradient(), torch.cat([g.reshape(-1) for g in grads])) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_loss_on_an_mlp_matches_dense(backend, generator):
    model, batches, loss_fn = mlp_case()
    model.train()  # dropout on: the operator must switch it off
    names = ["fc1.weight", "fc1.bias", "fc2.weight"]
    dense = mlp_dense_hessian(model, batches, names)
    op = HessianOperator(model, batches, params=names, backend=backend, loss_fn=loss_fn)
    v = torch.randn(op.num_params, 4, generator=generator, dtype=torch.float64)
    assert relative_error(op @ v, dense @ v) < 1e-12
    assert op.num_tokens == 11
    assert model.training


def test_parameter_selection():
    model = tiny_llama(layers=2, dtype=torch.float32)
    linear = select_parameters(model, "linear")
    assert len(linear) == 14 and "lm_head.weight" not in linear
    assert all(name.endswith("proj.weight") for name in linear)
    assert select_parameters(model, "all") == [n for n, _ in model.named_parameters()]
    assert select_parameters(model, r"layers\.1\..*q_proj") == [
        "model.layers.1.self_attn.q_proj.weight"
    ]
    # a list keeps the model's order, whatever order it was given in
    assert select_parameters(model, list(reversed(LLAMA_NAMES))) == list(LLAMA_NAMES)
    with pytest.raises(ValueError, match="nothing_matches"):
        select_parameters(model, "nothing_matches")
    with pytest.raises(ValueError, match="no parameter named"):
        select_parameters(model, ["model.missing.weight"])
    with pytest.raises(ValueError, match="selects no parameter"):
        HessianOperator(model, llama_batches(), params="nothing_matches")
    with pytest.raises(ValueError, match="backend"):
        HessianOperator(model, llama_batches(), backend="finite_differences")


def test_flat_ordering_helpers(exact_llama):
    model, batches, names = exact_llama
    op = HessianOperator(model, batches, params=names)
    flat = op.parameters_vector()
    assert op.offsets() == [0, 1024]
    pieces = op.unflatten(flat)
    named = dict(model.named_parameters())
    for name in names:
        assert torch.equal(pieces[name], named[name].detach())
    assert torch.equal(op.flatten(pieces), flat)
    assert op.param_shapes == [(32, 32), (32, 64)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_state_is_restored(backend):
    model = tiny_llama(layers=1, dtype=torch.float32, dropout=0.1)
    model.train()
    model.model.layers[0].mlp.eval()  # a mixed state must come back exactly
    model.model.embed_tokens.weight.requires_grad_(False)
    model.config._attn_implementation = "flash_attention_2"  # no double backward: eager instead
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    op = HessianOperator(model, llama_batches(), backend=backend)
    seen = {}

    def spy(module, args, output):
        seen["training"] = module.training
        seen["attn"] = model.config._attn_implementation
        seen["grad"] = {n: p.requires_grad for n, p in model.named_parameters()}

    handle = model.model.layers[0].register_forward_hook(spy)
    op @ torch.ones(op.num_params)
    handle.remove()
    assert seen["training"] is False and seen["attn"] == "eager"
    if backend == "double_backward":
        assert {n for n, g in seen["grad"].items() if g} == set(op.param_names)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.config._attn_implementation == "flash_attention_2"

    # restored on an exception too (a token id outside the vocabulary fails in the forward)
    bad = HessianOperator(model, [{"input_ids": torch.full((1, 4), 10_000)}], backend=backend)
    with pytest.raises((IndexError, RuntimeError)):
        bad @ torch.ones(bad.num_params)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.config._attn_implementation == "flash_attention_2"


def test_token_weighting_across_batches_of_different_sizes(exact_llama, generator):
    model, batches, names = exact_llama
    v = torch.randn(3072, generator=generator, dtype=torch.float64)
    whole = HessianOperator(model, batches, params=names) @ v
    parts = [HessianOperator(model, [b], params=names) for b in batches]
    weighted = sum(p.num_tokens * (p @ v) for p in parts) / sum(p.num_tokens for p in parts)
    assert relative_error(whole, weighted) < 1e-13


def test_bad_inputs():
    model = TinyMLP().double()
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, [], params="all", loss_fn=lambda m, b: m(b["x"]).sum())
    op = HessianOperator(
        model,
        [{"x": torch.ones(2, 5, dtype=torch.float64)}],
        params="all",
        loss_fn=lambda m, b: m(b["x"]).sum(),
    )
    with pytest.raises(ValueError, match="shape"):
        op @ torch.ones(3, dtype=torch.float64)
    labels = torch.full((1, 4), -100)
    with pytest.raises(ValueError, match="no token"):
        HessianOperator(
            tiny_llama(), [{"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": labels}]
        )


def test_frozen_model_products_with_cached_graphs(exact_llama, llama_reference, generator):
    model, batches, names = exact_llama
    dense, _ = llama_reference
    model.requires_grad_(False)  # a user who froze everything still gets products
    op = HessianOperator(model, batches, params=names)
    v = torch.randn(op.num_params, generator=generator, dtype=torch.float64)
    for _ in range(2):  # the second product runs on the cached graphs only
        assert relative_error(op @ v, dense @ v) < 1e-12
    assert not any(p.requires_grad for p in model.parameters())


def test_bfloat16_model_gets_float32_vectors(generator):
    from winq.analysis import causal_lm_loss

    model = tiny_llama(layers=1, dtype=torch.bfloat16)
    batches = llama_batches()
    op = HessianOperator(model, batches)
    assert op.dtype == torch.float32 and op.model_dtype == torch.bfloat16
    v = torch.randn(op.num_params, 2, generator=generator)
    product = op @ v
    assert product.dtype == torch.float32
    # bfloat16 products of the float32 model's Hessian: measured 6e-3 relative
    reference = HessianOperator(tiny_llama(layers=1, dtype=torch.float32), batches) @ v
    assert relative_error(product, reference) < 2e-2

    # tangents are rounded to bfloat16 and the bfloat16 product returned in float32, exactly
    # (one batch of weight 1: no accumulation, no division)
    def summed(model, batch):
        return causal_lm_loss(model, batch)[0]

    wide = HessianOperator(model, batches[:1], loss_fn=summed)
    narrow = HessianOperator(model, batches[:1], loss_fn=summed, vector_dtype=torch.bfloat16)
    assert narrow.dtype == torch.bfloat16
    assert torch.equal(wide @ v, (narrow @ v.bfloat16()).float())
    with pytest.raises(ValueError, match="vector_dtype"):
        HessianOperator(model, batches, vector_dtype=torch.int32)
    assert op.metadata()["dtype"] == "bfloat16" and op.metadata()["vector_dtype"] == "float32"

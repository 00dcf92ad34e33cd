"""QuantLinear, quantize_ on four architectures, the WinQ reset invariant, noise injection,
latent snapshots, and the STE linearisation for finite-difference Hessian products."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import winq
from winq.nn import (
    QuantLinear,
    clipped_fraction,
    level_codes,
    linearized,
    quant_layers,
    reset_,
    restore_latents,
    set_noise_,
    snapshot_latents,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LINEARS_PER_BLOCK = {"llama": 7, "qwen2": 7, "mistral": 7, "gpt_neox": 4}


def test_quantize_swaps_every_linear_but_the_head(tiny_model, token_batch):
    arch = tiny_model.config.model_type
    head = tiny_model.get_output_embeddings()
    reference = tiny_model(token_batch).logits
    embeddings_before = tiny_model.get_input_embeddings().weight.clone()
    winq.quantize_(tiny_model, winq.QuantConfig(bits=2))
    layers = dict(quant_layers(tiny_model))
    assert len(layers) == LINEARS_PER_BLOCK[arch] * tiny_model.config.num_hidden_layers
    assert type(tiny_model.get_output_embeddings()) is nn.Linear
    assert tiny_model.get_output_embeddings() is head
    assert not any(type(m) is nn.Linear for n, m in tiny_model.named_modules() if m is not head)
    assert torch.equal(tiny_model.get_input_embeddings().weight, embeddings_before)
    logits = tiny_model(token_batch).logits
    assert logits.shape == reference.shape
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, reference)  # the weights really are quantized


def test_quantized_forward_equals_linear_with_quantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(24, 10)
    layer = QuantLinear.from_linear(linear, winq.QuantConfig(bits=2))
    assert layer.weight is linear.weight and layer.bias is linear.bias
    x = torch.randn(3, 24)
    exported = layer.to_linear(quantized=True)
    assert torch.equal(layer.eval()(x), exported(x))
    latent = layer.to_linear(quantized=False)
    assert torch.equal(latent.weight, linear.weight)


def test_filter_fn_regex_and_callable(tiny_llama):
    winq.quantize_(tiny_llama, winq.QuantConfig(bits=3), filter_fn=r"mlp\.")
    names = [name for name, _ in quant_layers(tiny_llama)]
    assert names and all(".mlp." in name for name in names)
    model = type(tiny_llama)(tiny_llama.config)
    winq.quantize_(
        model, winq.QuantConfig(bits=3), filter_fn=lambda name, m: name.endswith("q_proj")
    )
    assert [n for n, _ in quant_layers(model)] == [
        f"model.layers.{i}.self_attn.q_proj" for i in range(2)
    ]


def test_bits_16_is_a_no_op(tiny_llama):
    winq.quantize_(tiny_llama, winq.QuantConfig(bits=16))
    assert not list(quant_layers(tiny_llama))


def test_group_size_must_divide(tiny_llama):
    with pytest.raises(ValueError, match="group_size=5 does not divide in_features=32"):
        winq.quantize_(tiny_llama, winq.QuantConfig(bits=2, group_size=5))


def test_group_and_tensor_scale_shapes(tiny_llama):
    model = winq.quantize_(tiny_llama, winq.QuantConfig(bits=4, group_size=16))
    layer = model.model.layers[0].mlp.down_proj  # in_features 64
    assert layer.scale.shape == (32, 4)
    model = winq.quantize_(
        type(tiny_llama)(tiny_llama.config), winq.QuantConfig(bits=4, granularity="per_tensor")
    )
    assert model.model.layers[0].mlp.down_proj.scale.shape == (1, 1)


# ---------------------------------------------------------------------------------- reset

QUANT_SPECS = [
    (1, "lsq"),
    (1.58, "seq"),
    (2, "seq"),
    (2, "lsq"),
    (3, "lsq"),
    (4, "lsq"),
    (3, "seq"),
]


@settings(max_examples=60, deadline=None)
@given(
    spec=st.sampled_from(QUANT_SPECS),
    rows=st.integers(1, 6),
    cols=st.sampled_from([4, 8, 12]),
    granularity=st.sampled_from(["per_row", "per_group", "per_tensor"]),
    alpha=st.floats(0.0, 1.0),
    spread=st.floats(1e-3, 5.0),
    shrink=st.floats(0.3, 1.5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_reset_invariant(spec, rows, cols, granularity, alpha, spread, shrink, dtype, seed):
    bits, name = spec
    group = 4 if granularity == "per_group" else None
    config = winq.QuantConfig(bits=bits, quantizer=name, granularity=granularity, group_size=group)
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows, bias=False).to(dtype)
    with torch.no_grad():
        linear.weight.mul_(spread)
    layer = QuantLinear.from_linear(linear, config)
    with torch.no_grad():
        layer.scale.mul_(shrink)  # clipped weights exist when shrink < 1
    model = nn.Sequential(layer)
    w_before = layer.weight.detach().clone()
    q_before = layer.quantized_weight()
    scale_before = layer.scale.detach().clone()
    assert reset_(model, alpha) == 1
    q_after = layer.quantized_weight()
    assert torch.equal(q_after, q_before)  # bit-exact: Q(reset(W)) == Q(W)
    assert torch.equal(layer.scale.detach(), scale_before)
    # The guard: a weight that rounding would push across a level boundary keeps its value.
    candidate = alpha * w_before + (1.0 - alpha) * q_before
    fired = winq.quantizers.fake_quantize(candidate, scale_before, layer.quantizer, 1.0) != q_before
    assert torch.equal(layer.weight.detach()[fired], w_before[fired])
    assert not fired.any() or alpha > 0.99
    # Elsewhere the distance to Q(W) shrinks by α, up to the round-off of one addition.
    eps = torch.finfo(dtype).eps
    tolerance = 4 * eps * (w_before.abs() + q_before.abs())
    error = ((layer.weight.detach() - q_before) - alpha * (w_before - q_before)).abs()
    assert torch.all(error[~fired] <= tolerance[~fired])
    if alpha == 0.0:
        assert torch.equal(layer.weight.detach(), q_before)
    if alpha == 1.0:
        assert torch.equal(layer.weight.detach(), w_before)


def test_reset_distance_shrinks_by_alpha_exactly_in_float64():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=False).double()
    layer = QuantLinear.from_linear(linear, winq.QuantConfig(bits=2))
    w = layer.weight.detach().clone()
    q = layer.quantized_weight()
    reset_(nn.Sequential(layer), 0.2)
    error = (layer.weight.detach() - q) - 0.2 * (w - q)
    assert error.abs().max() <= 4 * torch.finfo(torch.float64).eps * (w.abs() + q.abs()).max()
    assert (layer.weight.detach() - q).abs().sum() < 0.21 * (w - q).abs().sum()


def test_reset_leaves_logits_unchanged(tiny_model, token_batch):
    winq.quantize_(tiny_model, winq.QuantConfig(bits=2))
    # training moves latents off their init so that the reset has something to do
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
    tiny_model.train()
    for _ in range(3):
        loss = tiny_model(token_batch, labels=token_batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tiny_model.eval()
    before = tiny_model(token_batch).logits
    latents = [layer.weight.detach().clone() for _, layer in quant_layers(tiny_model)]
    count = reset_(tiny_model, 0.2)
    after = tiny_model(token_batch).logits
    assert count == len(latents)
    assert torch.equal(before, after)
    assert any(
        not torch.equal(w, layer.weight) for w, (_, layer) in zip(latents, quant_layers(tiny_model))
    )


def test_reset_unclips_seq_but_not_one_bit():
    weight = torch.tensor([[1.5, 0.3, -1.9, 0.9]])  # |x| < 1.95 un-clips at α = 0.2 (2-bit)
    for bits, expect_unclipped in [(2, True), (1, False)]:
        linear = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight)
        layer = QuantLinear.from_linear(linear, winq.QuantConfig(bits=bits))
        with torch.no_grad():
            layer.scale.fill_(1.0)
        model = nn.Sequential(layer)
        assert clipped_fraction(model) == 0.5
        reset_(model, 0.2)
        assert (clipped_fraction(model) == 0.0) is expect_unclipped


def test_reset_rejects_bad_alpha(tiny_llama):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        reset_(tiny_llama, 1.5)


def test_clipped_fraction_counts_and_filters():
    linear = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.1, 0.5, 2.0, -3.0], [0.2, 0.2, 0.2, 0.2]]))
    layer = QuantLinear.from_linear(linear, winq.QuantConfig(bits=2))
    with torch.no_grad():
        layer.scale.fill_(1.0)
    model = nn.Sequential(layer)
    assert clipped_fraction(model) == 2 / 8
    assert clipped_fraction(model, names=["0.weight"]) == 2 / 8
    assert clipped_fraction(model, names=["nothing.weight"]) == 0.0


# ---------------------------------------------------------------------------------- noise


def _noisy_layer(**noise):
    torch.manual_seed(0)
    linear = nn.Linear(200, 300, bias=False)
    return QuantLinear.from_linear(linear, winq.QuantConfig(bits=2, **noise))


def test_noise_off_in_eval_on_in_training():
    layer = _noisy_layer(noise_sigma=1e-2)
    x = torch.randn(4, 200)
    layer.eval()
    clean = layer(x)
    assert torch.equal(layer(x), clean)
    w, s = layer.perturbed()
    assert w is layer.weight and s is layer.scale
    layer.train()
    first, second = layer(x), layer(x)
    assert not torch.equal(first, clean)
    assert not torch.equal(first, second)  # fresh draw each forward


@pytest.mark.parametrize("relative", [False, True])
def test_noise_standard_deviation(relative):
    sigma = 1e-2 if not relative else 0.05
    layer = _noisy_layer(
        noise_sigma=sigma, noise_sigma_scale=2 * sigma, noise_relative=relative
    ).train()
    w, s = layer.perturbed()
    dw = w.detach() - layer.weight.detach()
    ds = s.detach() - layer.scale.detach()
    if relative:
        dw = dw / layer.scale.detach()
        ds = ds / layer.scale.detach()
    # 60,000 weight draws: the sample std is within 2% of sigma with overwhelming probability
    assert dw.std().item() == pytest.approx(sigma, rel=0.02)
    assert abs(dw.mean().item()) < 4 * sigma / 60000**0.5 * 2
    # 300 scale draws: within 15%
    assert ds.std().item() == pytest.approx(2 * sigma, rel=0.15)


def test_noise_gradients_reach_weight_and_scale():
    layer = _noisy_layer(noise_sigma=1e-3).train()
    layer(torch.randn(2, 200)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.scale.grad is not None and layer.scale.grad.abs().sum() > 0


def test_post_noise_adds_to_quantized_weight():
    layer = _noisy_layer(noise_sigma=1e-2, noise_mode="post").train()
    eye = torch.eye(200)
    effective = layer(eye).T.detach()  # F.linear(I, W) = W^T
    residual = effective - layer.quantized_weight()
    assert residual.std().item() == pytest.approx(1e-2, rel=0.02)


def test_frozen_noise_kept_until_reset():
    layer = _noisy_layer(noise_sigma=1e-2, noise_mode="frozen").train()
    model = nn.Sequential(layer)
    x = torch.randn(3, 200)
    first, second = model(x), model(x)
    assert torch.equal(first, second)
    reset_(model, 1.0)  # α = 1 keeps W; only the draw changes
    assert not torch.equal(model(x), first)


def test_set_noise_changes_every_layer(tiny_llama):
    winq.quantize_(tiny_llama, winq.QuantConfig(bits=2))
    assert set_noise_(tiny_llama, 1e-3, mode="frozen") == 14
    assert all(layer.config.noise_mode == "frozen" for _, layer in quant_layers(tiny_llama))
    assert all(layer.config.noise_sigma == 1e-3 for _, layer in quant_layers(tiny_llama))


def test_activation_quantization_in_layer():
    torch.manual_seed(0)
    linear = nn.Linear(16, 4)
    plain = QuantLinear.from_linear(linear, winq.QuantConfig(bits=4))
    a8 = QuantLinear.from_linear(linear, winq.QuantConfig(bits=4, a_bits=8))
    x = torch.randn(5, 16)
    assert not torch.equal(plain(x), a8(x))
    torch.testing.assert_close(plain(x), a8(x), rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------------ snapshots


def test_snapshot_restores_latents_and_frozen_noise_exactly():
    layers = [_noisy_layer(noise_sigma=1e-2, noise_mode="frozen").train() for _ in range(2)]
    quiet = QuantLinear.from_linear(nn.Linear(300, 200, bias=False), winq.QuantConfig(bits=2))
    model = nn.Sequential(layers[0], quiet, layers[1])
    x = torch.randn(3, 200)
    output = model(x)  # draws the frozen noise
    parameters = [layer.weight for layer in model]
    weights = [layer.weight.detach().clone() for layer in model]
    draws = [layer._frozen_noise.clone() for layer in layers]
    snapshot = snapshot_latents(model)
    assert snapshot.names == ["0", "1", "2"]
    reset_(model, 0.2, "dither", torch.Generator().manual_seed(0))  # moves W, drops the draws
    assert not torch.equal(model(x), output)  # new latents and a new draw
    restore_latents(snapshot)
    assert all(layer.weight is p for layer, p in zip(model, parameters))  # same Parameters
    assert all(torch.equal(layer.weight, w) for layer, w in zip(model, weights))
    assert all(torch.equal(layer._frozen_noise, d) for layer, d in zip(layers, draws))
    assert quiet._frozen_noise is None and quiet._frozen_scale_noise is None
    assert torch.equal(model(x), output)
    restore_latents(snapshot)  # a snapshot can be restored again
    assert torch.equal(model(x), output)


def test_restore_refuses_a_layer_whose_shape_changed():
    layer = QuantLinear.from_linear(nn.Linear(4, 2), winq.QuantConfig(bits=2))
    snapshot = snapshot_latents(nn.Sequential(layer))
    layer.weight = nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"cannot restore 0: its weight is now \(3, 4\)"):
        restore_latents(snapshot)


# ------------------------------------------------------------------ STE linearisation


def _loss(model, tokens):
    # Hugging Face's own loss casts the logits to float32; a float64 reference cannot use it.
    logits = model(tokens).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def _weights(model):
    return [layer.weight for _, layer in quant_layers(model)]


def _rmsnorm_in_float64(self, hidden_states):
    # Llama's RMSNorm formula without its float32 upcast, which would leave float32
    # round-off (a gradient noise that a difference quotient divides by ε) in a float64 model.
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def test_linearized_forward_gradient_and_finite_difference_hessian(
    tiny_llama, token_batch, monkeypatch
):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rmsnorm_in_float64)
    model = winq.quantize_(tiny_llama.double(), winq.QuantConfig(bits=2))
    with torch.no_grad():
        for _, layer in quant_layers(model):
            layer.scale.mul_(0.6)  # clipped latents, so that M0 is not all ones
    # Measured on this model: the relative error of the central difference is 9.5e-10 at
    # ε = 1e-4 (9.5e-8 at 1e-3: the O(ε²) law) against a round-off floor near 1e-10.
    step = 1e-4
    generator = torch.Generator().manual_seed(0)
    direction = [
        torch.randn(w.shape, generator=generator, dtype=torch.float64) for w in _weights(model)
    ]
    norm = torch.sqrt(sum((v**2).sum() for v in direction))
    direction = [v / norm for v in direction]
    # Put a few latents of one layer a hair below the SEQ boundary x = 1/2, so that W0 + εv
    # crosses it: the real Q jumps there by s/2, the linearisation must not.
    name, probe = next(iter(quant_layers(model)))
    with torch.no_grad():
        scale = probe.scale.detach()[:4, 0]
        probe.weight[:4, 0] = scale * 0.5 - 0.5 * step * direction[0][:4, 0].abs()
        direction[0][:4, 0] = direction[0][:4, 0].abs()
    weights0 = [w.detach().clone() for w in _weights(model)]
    codes0 = level_codes(model)
    assert any(not layer.clip_mask().all() for _, layer in quant_layers(model))

    def gradient():
        return torch.autograd.grad(_loss(model, token_batch), _weights(model))

    def shifted(sign):
        with torch.no_grad():
            for w, w0, v in zip(_weights(model), weights0, direction):
                w.copy_(w0 + sign * step * v)

    with sdpa_kernel([SDPBackend.MATH]):
        logits = model(token_batch).logits
        ste_gradient = gradient()
        loss = _loss(model, token_batch)
        first = torch.autograd.grad(loss, _weights(model), create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(first, direction))
        hvp = torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, _weights(model))])

        shifted(+1)
        assert not torch.equal(level_codes(model)[name], codes0[name])  # it crossed
        plain_plus = gradient()
        shifted(-1)
        plain_minus = gradient()
        shifted(0)

        with linearized(model) as points:
            assert set(points) == {n for n, _ in quant_layers(model)}
            assert torch.equal(model(token_batch).logits, logits)  # bit for bit at W0
            inside_gradient = gradient()
            assert all(torch.equal(a, b) for a, b in zip(inside_gradient, ste_gradient))
            model.zero_grad(set_to_none=True)
            _loss(model, token_batch).backward()
            assert all(layer.scale.grad is None for _, layer in quant_layers(model))
            shifted(+1)
            plus = gradient()
            shifted(-1)
            minus = gradient()  # left perturbed: exit restores W0

    assert all(torch.equal(w, w0) for w, w0 in zip(_weights(model), weights0))
    assert all(layer._linearization is None for _, layer in quant_layers(model))
    with sdpa_kernel([SDPBackend.MATH]):
        assert torch.equal(model(token_batch).logits, logits)

    def central(plus_side, minus_side):
        return torch.cat(
            [((p - m) / (2 * step)).reshape(-1) for p, m in zip(plus_side, minus_side)]
        )

    error = (central(plus, minus) - hvp).norm() / hvp.norm()
    assert error < 1e-6
    # Without the linearisation the jump of Q swamps the difference quotient.
    assert (central(plain_plus, plain_minus) - hvp).norm() / hvp.norm() > 1.0


def test_linearized_ignores_noise_and_scale_and_nests():
    layer = _noisy_layer(noise_sigma=1e-2).train()
    x = torch.randn(2, 200)
    clean = layer.eval()(x)
    layer.train()
    with linearized(nn.Sequential(layer)) as points:
        assert torch.equal(layer(x), clean)  # no noise, even in training mode
        with torch.no_grad():
            layer.scale.mul_(2.0)  # the scale is frozen at s0 inside
        assert torch.equal(layer(x), clean)
        with linearized(nn.Sequential(layer), restore_weights=False) as inner:
            assert torch.equal(inner["0"].quantized, layer.quantized_weight())
        assert layer._linearization is points["0"]
    assert layer._linearization is None


def test_linearized_refuses_activation_quantization():
    model = nn.Sequential(
        QuantLinear.from_linear(nn.Linear(8, 8), winq.QuantConfig(bits=2)),
        QuantLinear.from_linear(nn.Linear(8, 8), winq.QuantConfig(bits=2, a_bits=8)),
    )
    with pytest.raises(ValueError, match=r"cannot linearise 1: .*\(a_bits=8\)"):
        with linearized(model):
            pass
    assert all(layer._linearization is None for layer in model)

"""Tiny cases with dense float64 references, shared by the winq.analysis tests.

* a quadratic with a prescribed spectrum (negative, exactly zero, near-zero, clustered);
* a tiny MLP with a custom loss (its Hessian by ``torch.autograd.functional.hessian``);
* a tiny float64 Llama restricted to one or two linear layers. Llama's RMSNorm upcasts to
  float32 internally, which would leave float32 round-off in a "float64" Hessian; the
  ``float64_rmsnorm`` context swaps in the same formula without the cast so references are
  exact to float64 round-off.

The references never call winq.analysis: the loss and the flattening are written out again
here, so a shared bug cannot hide.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

VOCAB = 64

# The Llama blocks used throughout: one attention and one MLP matrix (1024 + 2048 = 3072)
LLAMA_NAMES = ("model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.down_proj.weight")


def prescribed_eigenvalues() -> np.ndarray:
    """150 eigenvalues: negatives, exact zeros, ±1e-6-scale near-zeros, a tight cluster at 1,
    a spread bulk and an isolated top."""
    rng = np.random.default_rng(1)
    parts = [
        -np.linspace(0.2, 2.0, 15),  # negative
        np.zeros(20),  # exact null space
        1e-6 * rng.standard_normal(15),  # near zero
        1.0 + 1e-7 * np.arange(30),  # clustered
        np.linspace(1.5, 6.0, 68),  # bulk
        [8.0, 10.0],  # isolated top
    ]
    return np.sort(np.concatenate(parts))


def matrix_with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """A dense symmetric float64 matrix Q diag(λ) Q^T with a random orthogonal Q."""
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * eigenvalues) @ q.T
    return (a + a.T) / 2


# ------------------------------------------------------------------------------------ MLP


class TinyMLP(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


def mlp_case(seed: int = 0):
    """(model, batches, loss_fn) for a float64 MLP: summed cross-entropy weighted by rows."""
    model = TinyMLP(seed).double()
    generator = torch.Generator().manual_seed(seed)
    batches = [
        {
            "x": torch.randn(rows, 5, generator=generator, dtype=torch.float64),
            "y": torch.randint(0, 3, (rows,), generator=generator),
        }
        for rows in (4, 7)
    ]

    def loss_fn(model, batch):
        logits = model(batch["x"])
        loss = nn.functional.cross_entropy(logits, batch["y"], reduction="sum")
        return loss, batch["x"].shape[0]

    return model, batches, loss_fn


def mlp_dense_hessian(model, batches, names) -> torch.Tensor:
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    flat = torch.cat([named[n].detach().reshape(-1) for n in names])
    rows = sum(b["x"].shape[0] for b in batches)

    def f(vector):
        state, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            state[name] = vector[offset : offset + size].view(shape)
            offset += size
        total = 0.0
        for batch in batches:
            logits = torch.func.functional_call(model, state, (batch["x"],))
            total = total + nn.functional.cross_entropy(logits, batch["y"], reduction="sum")
        return total / rows

    was = model.training
    model.eval()
    try:
        return torch.autograd.functional.hessian(f, flat)
    finally:
        model.train(was)


# ---------------------------------------------------------------------------------- Llama


def _rmsnorm_float64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def float64_rmsnorm():
    """Llama's RMSNorm without its float32 upcast (same formula), for exact float64 references."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaRMSNorm.forward
    modeling_llama.LlamaRMSNorm.forward = _rmsnorm_float64
    try:
        yield
    finally:
        modeling_llama.LlamaRMSNorm.forward = original


def tiny_llama(layers: int = 1, seed: int = 0, dtype=torch.float64, dropout: float = 0.0):
    import transformers as tf

    config = tf.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        attention_dropout=dropout,
    )
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(config).to(dtype).eval()


def llama_batches(seed: int = 0) -> list[dict]:
    """Two batches with different token counts; the first has right padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return [
        {"input_ids": ids, "attention_mask": mask},
        {"input_ids": torch.randint(0, VOCAB, (1, 6), generator=generator)},
    ]


def reference_loss(model, state, batches) -> torch.Tensor:
    """Token-weighted mean next-token cross-entropy, written independently of winq.analysis."""
    total, tokens = 0.0, 0
    for batch in batches:
        kwargs = {"input_ids": batch["input_ids"]}
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            kwargs["attention_mask"] = batch["attention_mask"]
            labels[batch["attention_mask"] == 0] = -100
        logits = torch.func.functional_call(model, state, (), kwargs).logits
        logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        labels = labels[:, 1:].reshape(-1)
        total = total + nn.functional.cross_entropy(logits, labels, reduction="sum")
        tokens += int((labels != -100).sum())
    return total / tokens


def llama_dense_hessian(model, batches, names) -> torch.Tensor:
    """Dense Hessian of :func:`reference_loss` w.r.t. ``names`` (flattened in that order)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    flat = torch.cat([named[n].detach().reshape(-1) for n in names])

    def f(vector):
        state, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = int(np.prod(shape))
            state[name] = vector[offset : offset + size].view(shape)
            offset += size
        return reference_loss(model, state, batches)

    was = model.training
    model.eval()
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            return torch.autograd.functional.hessian(f, flat, vectorize=True)
    finally:
        model.train(was)

"""Tiny quantized Llamas for the export tests: every grid, per-row or group-wise scales."""

from __future__ import annotations

import torch

import winq
from winq.nn import quant_layers

# Every (quantizer, bits) winq.config allows.
GRIDS = [
    ("lsq", 1),
    ("seq", 1.58),
    ("lsq", 2),
    ("seq", 2),
    ("lsq", 3),
    ("seq", 3),
    ("lsq", 4),
    ("seq", 4),
]
GRID_IDS = [f"{quantizer}{bits}" for quantizer, bits in GRIDS]


def tiny_llama(hidden=256, intermediate=256, vocab=2048, tie=True, seed=0, layers=1, bias=False):
    """A random Llama with 4 query and 2 key/value heads (float32, eval mode); ``bias`` adds
    biases to the attention projections."""
    import transformers as tf

    config = tf.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        attention_bias=bias,
    )
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):  # zero at initialisation: make them count
                parameter.normal_(0.0, 0.5)
    return model


def quantized_llama(quantizer, bits, group_size=None, **kwargs):
    """``tiny_llama`` quantized to the grid, with scales moved off their initial values (as
    training moves them), so that neighbouring groups never share a scale by accident."""
    model = tiny_llama(**kwargs)
    winq.quantize_(model, winq.QuantConfig(bits=bits, quantizer=quantizer, group_size=group_size))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in quant_layers(model):
            jitter = torch.rand(layer.scale.shape, generator=generator)
            layer.scale.mul_(0.8 + 0.4 * jitter)
    return model


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (distinguishes -0.0 from 0.0, unlike ``torch.equal``)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    integer = {torch.float32: torch.int32, torch.float64: torch.int64}.get(a.dtype, torch.int16)
    return torch.equal(a.contiguous().view(integer), b.contiguous().view(integer))

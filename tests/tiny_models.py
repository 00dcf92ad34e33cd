"""Tiny causal LMs of four architectures built from configs (no download), for every test folder."""

from __future__ import annotations

import torch

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt_neox")
# every (bits, quantizer) pair the quantizers support
QUANT_SPECS = [
    (1, "lsq"),
    (1.58, "seq"),
    (2, "seq"),
    (2, "lsq"),
    (3, "lsq"),
    (4, "lsq"),
    (3, "seq"),
    (4, "seq"),
]


def build_tiny_model(arch: str = "llama", seed: int = 0, layers: int = 2, vocab: int = 64):
    """A randomly initialised causal LM of ``arch`` with hidden size 32 (float32, eval mode)."""
    import transformers as tf

    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=vocab,
        max_position_embeddings=64,
    )
    if arch == "llama":
        config = tf.LlamaConfig(num_key_value_heads=2, **common)
        cls = tf.LlamaForCausalLM
    elif arch == "qwen2":
        config = tf.Qwen2Config(num_key_value_heads=2, **common)
        cls = tf.Qwen2ForCausalLM
    elif arch == "mistral":
        config = tf.MistralConfig(num_key_value_heads=2, sliding_window=None, **common)
        cls = tf.MistralForCausalLM
    elif arch == "gpt_neox":
        config = tf.GPTNeoXConfig(rotary_pct=0.5, **common)
        cls = tf.GPTNeoXForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(config)
    return model.eval()

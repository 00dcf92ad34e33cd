"""Stand-ins for ``winq.embedded`` / ``winq.data`` until the real modules land (tests only)."""

from __future__ import annotations

import sys
import types

import torch


def install() -> None:
    """Minimal ``winq.embedded`` / ``winq.data`` while the real ones are being written."""
    try:
        import winq.data
        import winq.embedded

        return
    except ImportError:
        pass
    import transformers as tf

    embedded = types.ModuleType("winq.embedded")

    def build_model(preset="tiny", seed=0):
        config = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
            max_position_embeddings=64,
        )
        torch.manual_seed(seed)
        return tf.LlamaForCausalLM(config)

    embedded.build_model = build_model
    embedded.tokenizer = lambda: None
    embedded.training_defaults = lambda preset, mode: {
        "steps": 20,
        "batch_size": 4,
        "seq_len": 16,
        "lr": 3e-3,
        "warmup": 2,
    }
    data = types.ModuleType("winq.data")

    class DataError(ValueError):
        pass

    def train_and_heldout_blocks(source, tokenizer, seq_len, **kwargs):
        g = torch.Generator().manual_seed(1234)
        # a learnable stream: a noisy counting sequence modulo 64
        start = torch.randint(0, 64, (96, 1), generator=g)
        blocks = (start + torch.arange(seq_len)) % 64
        noise = torch.randint(0, 64, blocks.shape, generator=g)
        blocks = torch.where(torch.rand(blocks.shape, generator=g) < 0.1, noise, blocks)
        return blocks[:80], blocks[80:]

    data.DataError = DataError
    data.train_and_heldout_blocks = train_and_heldout_blocks
    sys.modules["winq.embedded"] = embedded
    sys.modules["winq.data"] = data
    import winq

    winq.embedded = embedded
    winq.data = data

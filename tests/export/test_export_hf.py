"""hf export: stock transformers loads a plain folder whose logits are winq's quantized model's."""

from __future__ import annotations

import json

import pytest
import torch
from export_cases import GRID_IDS, GRIDS, quantized_llama, same_bits
from safetensors import safe_open

import winq
from winq.checkpoint import QUANT_FILE, quiet_transformers
from winq.export import export
from winq.nn import quant_layers

SHAPE = {"hidden": 64, "intermediate": 128, "vocab": 64}
TOKENS = torch.arange(3, 19).reshape(1, 16)


def _stock(path):
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("group_size", [None, 32], ids=["per_row", "group32"])
@pytest.mark.parametrize(("quantizer", "bits"), GRIDS, ids=GRID_IDS)
def test_hf_float32_logits_are_bit_identical(tmp_path, quantizer, bits, group_size):
    model = quantized_llama(quantizer, bits, group_size, **SHAPE)
    out = tmp_path / "hf"
    report = export(model, "hf", out, dtype="float32", progress=False)
    stock = _stock(out)
    with torch.no_grad():
        assert same_bits(stock(TOKENS).logits, model(TOKENS).logits)
    assert not (out / QUANT_FILE).exists()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any(key.endswith(".scale") for key in f.keys())
    assert all(r.max_rel_error == 0.0 for r in report.tensors if r.max_rel_error is not None)


def test_hf_bfloat16_holds_q_rounded_once(tmp_path, embedded_tokenizer):
    model = quantized_llama("seq", 2, **SHAPE)
    out = tmp_path / "hf"
    report = export(model, "hf", out, tokenizer=embedded_tokenizer, progress=False)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for name, layer in quant_layers(model):
            stored = f.get_tensor(f"{name}.weight")
            assert same_bits(stored, layer.quantized_weight().to(torch.bfloat16)), name
    errors = [r.max_rel_error for r in report.tensors if r.max_rel_error is not None]
    assert len(errors) == 7 and max(errors) <= 2.0**-8  # bfloat16: 8 significant bits
    # The checkpoint's own config, but for the dtype the weights are now stored in.
    winq.save(model, tmp_path / "ckpt")
    config = json.loads((out / "config.json").read_text())
    source = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (config.pop("dtype"), source.pop("dtype")) == ("bfloat16", "float32")
    assert config == source
    assert (out / "tokenizer.json").exists()
    stock = _stock(out)
    assert stock.dtype == torch.bfloat16
    with torch.no_grad():
        reference = model(TOKENS).logits
        logits = stock(TOKENS).logits.float()
    # bfloat16 weights and activations: logits agree to a few parts in a hundred.
    assert (logits - reference).abs().max() <= 0.05 * reference.abs().max()

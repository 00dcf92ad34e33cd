"""Packed export: read back by ``winq.load`` bit for bit, decodable without winq, compact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from export_cases import GRID_IDS, GRIDS, quantized_llama, same_bits
from safetensors import safe_open

import winq
from winq.checkpoint import QUANT_FILE, CheckpointError
from winq.export import ExportError, export
from winq.nn import QuantLinear, quant_layers

# Hidden 64: every group size and 3-bit row (64·3 bits = 24 bytes) lands on a byte boundary,
# so the ideal size is exact; the model is small enough for 16 round trips.
SHAPE = {"hidden": 64, "intermediate": 128, "vocab": 64}


@pytest.mark.parametrize("group_size", [None, 32], ids=["per_row", "group32"])
@pytest.mark.parametrize(("quantizer", "bits"), GRIDS, ids=GRID_IDS)
def test_packed_round_trip_is_bit_identical(tmp_path, quantizer, bits, group_size):
    model = quantized_llama(quantizer, bits, group_size, **SHAPE)
    out = tmp_path / "packed"
    report = export(model, "packed", out, progress=False)

    loaded, _ = winq.load(out)
    source = dict(quant_layers(model))
    assert set(dict(quant_layers(loaded))) == set(source)
    for name, layer in quant_layers(loaded):
        assert same_bits(layer.quantized_weight(), source[name].quantized_weight()), name
    tokens = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        assert same_bits(loaded(tokens).logits, model(tokens).logits)

    # The consumer's side: safetensors plus the metadata decode Q(W) with numpy alone.
    file = out / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        packing = json.loads(f.metadata()["winq.packing"])
        code_bits = packing["code_bits"]
        levels = np.asarray(packing["levels"], dtype=np.float32)
        for name, layer in source.items():
            packed = f.get_tensor(f"{name}.codes").numpy()
            scale = f.get_tensor(f"{name}.scale").numpy()
            assert packed.dtype == np.uint8
            bits_lsb_first = np.unpackbits(packed, axis=1, bitorder="little")
            bits_lsb_first = bits_lsb_first[:, : layer.in_features * code_bits]
            codes = bits_lsb_first.reshape(layer.out_features, -1, code_bits)
            codes = (codes << np.arange(code_bits)).sum(-1)
            group = layer.in_features // scale.shape[1]
            decoded = levels[codes] * np.repeat(scale, group, axis=1)
            assert same_bits(torch.from_numpy(decoded), source[name].quantized_weight())
    assert packing["quantizer"] == quantizer and packing["bits"] == bits
    assert json.loads((out / QUANT_FILE).read_text())["packing"] == packing

    # Size: the codes take exactly code_bits per weight; the file is within 10% of the ideal.
    code_bytes = sum(r.nbytes for r in report.tensors if r.type.startswith("codes"))
    weights = sum(layer.weight.numel() for layer in source.values())
    assert code_bytes == weights * code_bits // 8
    scales = sum(layer.scale.numel() * 4 for layer in source.values())
    plain = sum(
        t.numel() * t.element_size()
        for key, t in model.state_dict().items()
        if not key.endswith((".scale",)) and key.rpartition(".")[0] not in source
    )
    ideal = code_bytes + scales + plain - model.lm_head.weight.numel() * 4  # tied: stored once
    assert ideal <= file.stat().st_size <= 1.1 * ideal


def test_packed_linear_layers_take_bits_over_16_of_bf16(tmp_path):
    model = quantized_llama("seq", 2, **SHAPE)
    report = export(model, "packed", tmp_path / "p", progress=False)
    linear = [layer for _, layer in quant_layers(model)]
    bf16_bytes = sum(layer.weight.numel() * 2 for layer in linear)
    codes = sum(r.nbytes for r in report.tensors if r.type == "codes:2")
    assert codes / bf16_bytes == pytest.approx(2 / 16, rel=0)


def test_packed_requantized_to_16_bits_holds_q(tmp_path):
    model = quantized_llama("lsq", 3, **SHAPE)
    out = tmp_path / "p"
    export(model, "packed", out, progress=False)
    plain, _ = winq.load(out, bits=16, requantize=True)
    assert not any(isinstance(m, QuantLinear) for m in plain.modules())
    for name, layer in quant_layers(model):
        assert same_bits(plain.get_submodule(name).weight, layer.quantized_weight())


def test_packed_refuses_a_grid_it_does_not_know(tmp_path):
    model = quantized_llama("seq", 1.58, **SHAPE)
    out = tmp_path / "p"
    export(model, "packed", out, progress=False)
    quant = json.loads((out / QUANT_FILE).read_text())
    quant["packing"]["version"] = 2
    (out / QUANT_FILE).write_text(json.dumps(quant))
    with pytest.raises(CheckpointError, match="packing version 2; this winq reads 1"):
        winq.load(out)


def test_packed_refuses_codes_outside_the_grid(tmp_path):
    from safetensors.torch import load_file, save_file

    model = quantized_llama("seq", 1.58, **SHAPE)
    out = tmp_path / "p"
    export(model, "packed", out, progress=False)
    file = out / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(file)
    name = "model.layers.0.mlp.up_proj.codes"
    tensors[name] = torch.full_like(tensors[name], 0xFF)  # code 3: ternary has levels 0..2
    save_file(tensors, file, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"holds code 3; the 1\.58-bit seq grid has 3 levels"):
        winq.load(out)


def test_packed_needs_quantized_layers(tmp_path):
    from export_cases import tiny_llama

    with pytest.raises(ExportError, match="no quantized layers"):
        export(tiny_llama(**SHAPE), "packed", tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()
    assert math.isfinite(0.0)

"""Checkpoint round trips (bit-identical logits), FP + bits loading, atomicity, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny_models import build_tiny_model

import winq
from winq.checkpoint import QUANT_FILE, CheckpointError
from winq.nn import quant_layers
from winq.quantizers import init_scale


def _trained(model, batch, steps=2):
    """A few SGD steps so that latents and scales differ from their initial values."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    model.train()
    for _ in range(steps):
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [
        winq.QuantConfig(bits=2),
        winq.QuantConfig(bits=1),
        winq.QuantConfig(bits=1.58),
        winq.QuantConfig(bits=4, group_size=16, a_bits=8),
        winq.QuantConfig(bits=3, granularity="per_tensor", noise_sigma=1e-3, noise_mode="frozen"),
    ],
    ids=["2bit", "1bit", "ternary", "4bit-g16-a8", "3bit-tensor-noise"],
)
def test_round_trip_bit_identical(tmp_path, token_batch, config):
    model = _trained(winq.quantize_(build_tiny_model("llama"), config), token_batch)
    logits = model(token_batch).logits
    winq.save(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / QUANT_FILE).read_text())["bits"] == config.bits
    loaded, tokenizer = winq.load(tmp_path / "ckpt")
    assert tokenizer is None
    assert torch.equal(loaded(token_batch).logits, logits)
    for (name, a), (_, b) in zip(quant_layers(model), quant_layers(loaded)):
        assert a.config == b.config, name
        assert torch.equal(a.scale, b.scale) and torch.equal(a.weight, b.weight)


def test_round_trip_every_architecture(tmp_path, tiny_model, token_batch):
    model = _trained(winq.quantize_(tiny_model, winq.QuantConfig(bits=2)), token_batch)
    winq.save(model, tmp_path / "ckpt")
    loaded, _ = winq.load(tmp_path / "ckpt")
    assert torch.equal(loaded(token_batch).logits, model(token_batch).logits)


def test_fp_checkpoint_loads_quantized(tmp_path, token_batch):
    model = build_tiny_model("qwen2")
    winq.save(model, tmp_path / "fp")
    assert not (tmp_path / "fp" / QUANT_FILE).exists()
    fp, _ = winq.load(tmp_path / "fp")
    assert not list(quant_layers(fp))
    assert torch.equal(fp(token_batch).logits, model(token_batch).logits)
    quantized, _ = winq.load(tmp_path / "fp", bits="1.58")
    layers = dict(quant_layers(quantized))
    assert len(layers) == 14
    for name, layer in layers.items():
        original = model.get_submodule(name).weight
        assert torch.equal(layer.weight, original)
        expected = init_scale(original, layer.quantizer, tuple(layer.scale.shape))
        assert torch.equal(layer.scale, expected)


def test_tokenizer_saved_and_loaded(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    model = winq.quantize_(build_tiny_model("llama"), winq.QuantConfig(bits=2))
    winq.save(model, tmp_path / "ckpt", tokenizer=tokenizer)
    _, loaded = winq.load(tmp_path / "ckpt")
    assert loaded("hello world")["input_ids"] == [1, 2]


def test_failed_save_keeps_the_old_checkpoint(tmp_path, token_batch):
    model = winq.quantize_(build_tiny_model("llama"), winq.QuantConfig(bits=2))
    winq.save(model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}

    def explode(folder):
        assert (folder / "model.safetensors").exists()  # the new files were written...
        raise RuntimeError("disk full")  # ...when the save fails

    other = winq.quantize_(build_tiny_model("llama", seed=1), winq.QuantConfig(bits=3))
    with pytest.raises(RuntimeError, match="disk full"):
        winq.save(other, tmp_path / "ckpt", extra=explode)
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary folder left behind


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_save_refuses_nonfinite_weights(tmp_path, bad):
    good = winq.quantize_(build_tiny_model("llama"), winq.QuantConfig(bits=2))
    winq.save(good, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    diverged = winq.quantize_(build_tiny_model("llama", seed=1), winq.QuantConfig(bits=2))
    layer = dict(quant_layers(diverged))
    name = next(iter(layer))
    with torch.no_grad():
        layer[name].scale.view(-1)[-1] = bad  # one learned scale, deep in a layer
    with pytest.raises(ValueError, match=rf"refusing to save .*weight {name}\.scale"):
        winq.save(diverged, tmp_path / "ckpt")
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    assert after == before and sorted(os.listdir(tmp_path)) == ["ckpt"]
    winq.save(diverged, tmp_path / "other", allow_nonfinite=True)  # asked for: written as is
    loaded, _ = winq.load(tmp_path / "other")
    assert not torch.isfinite(dict(quant_layers(loaded))[name].scale).all()


def test_save_without_overwrite_refuses(tmp_path):
    model = build_tiny_model("llama")
    winq.save(model, tmp_path / "ckpt")
    with pytest.raises(FileExistsError):
        winq.save(model, tmp_path / "ckpt", overwrite=False)


@pytest.fixture
def saved(tmp_path):
    model = winq.quantize_(build_tiny_model("llama"), winq.QuantConfig(bits=2))
    winq.save(model, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _write(name, text):
    def damage(path):
        (path / name).write_text(text(path) if callable(text) else text)
        return path

    return damage


def _remove(name):
    def damage(path):
        (path / name).unlink()
        return path

    return damage


def _with_bits(path):
    return json.dumps({**json.loads((path / QUANT_FILE).read_text()), "bits": 5})


LOAD_ERRORS = {
    "missing": (lambda p: p.parent / "missing", "does not exist"),
    "file": (lambda p: p / "config.json", "is a file, expected a checkpoint folder"),
    "no-config": (_remove("config.json"), "no config.json"),
    "bad-config": (_write("config.json", "{not json"), "corrupt config.json"),
    "bad-quant-json": (_write(QUANT_FILE, "garbage"), f"corrupt {QUANT_FILE}"),
    "bad-version": (_write(QUANT_FILE, '{"format_version": 9}'), "format_version 9"),
    "bad-bits": (_write(QUANT_FILE, _with_bits), "bits must be one of"),
    "bad-weights": (_write("model.safetensors", "\x00" * 64), "model.safetensors"),
    "no-weights": (_remove("model.safetensors"), "no model weights"),
}


@pytest.mark.parametrize(("damage", "message"), LOAD_ERRORS.values(), ids=LOAD_ERRORS.keys())
def test_load_errors(saved, damage, message):
    path = damage(saved)
    with pytest.raises(CheckpointError, match=message) as info:
        winq.load(path)
    assert "\n" not in str(info.value)


def test_bit_width_mismatch_needs_requantize(saved):
    with pytest.raises(CheckpointError, match="is 2-bit but bits=3 was asked"):
        winq.load(saved, bits=3)
    model, _ = winq.load(saved, bits=3, requantize=True)
    assert {layer.config.bits for _, layer in quant_layers(model)} == {3}
    same, _ = winq.load(saved, bits=2)
    assert {layer.config.bits for _, layer in quant_layers(same)} == {2}
    with pytest.raises(CheckpointError, match="bits must be one of"):
        winq.load(saved, bits=7)

"""GGUF export: read back with llama.cpp's Python reader and transformers' GGUF loader.

The blocks are decoded by ``gguf.quants.dequantize`` (maintained with llama.cpp), not by winq,
and compared with winq's Q(W): every decoded weight is exactly ``z·fp16(u·s)`` (its integer
offset times the float16-rounded block scale, so the codes are exact) and within float16's
relative rounding ``2^-11`` of Q(W).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from export_cases import GRIDS, quantized_llama, tiny_llama
from gguf import GGUFReader
from hypothesis import given, settings
from hypothesis import strategies as st

import winq
from winq.export import GGUF_TYPES, ExportError, export
from winq.export.gguf import BLOCK_TYPES, pack_blocks
from winq.export.grid import layer_codes
from winq.nn import quant_layers

SHAPE = {"hidden": 256, "intermediate": 256, "vocab": 2048}
HEADS, KV_HEADS = 4, 2
FP16_ROUNDING = 2.0**-11  # float16 has 11 significant bits: relative rounding <= 2^-11

# The most compact exact type per grid at 256 columns and per-row scales (module docstring of
# winq.export.gguf): z ⊆ {-1, 0, 1} -> TQ2_0; four evenly spaced levels -> Q2_K; offsets in
# -8..7 -> Q4_0; SEQ 4-bit's odd offsets up to ±15 -> Q5_0.
COMPACT = {
    ("lsq", 1): "TQ2_0",
    ("seq", 1.58): "TQ2_0",
    ("lsq", 2): "Q2_K",
    ("seq", 2): "Q2_K",
    ("lsq", 3): "Q4_0",
    ("seq", 3): "Q4_0",
    ("lsq", 4): "Q4_0",
    ("seq", 4): "Q5_0",
}
GGUF_KIND = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def gguf_name(module: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``blk.3.ffn_up.weight`` (llama.cpp's names)."""
    parts = module.split(".")
    return f"blk.{parts[2]}.{GGUF_KIND[parts[-1]]}.weight"


def unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row order (as transformers' GGUF reader does)."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def assert_blocks_decode_to_q(path, model, expected_type):
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    for module, layer in quant_layers(model):
        tensor = tensors[gguf_name(module)]
        assert tensor.tensor_type.name == expected_type, module
        decoded = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
        if module.endswith("q_proj"):
            decoded = unpermute(decoded, HEADS)
        elif module.endswith("k_proj"):
            decoded = unpermute(decoded, KV_HEADS)
        codes = layer_codes(layer)
        unit_scale = codes.grid.unit * codes.element_scale().numpy()  # u·s per weight
        d16 = unit_scale.astype(np.float16).astype(np.float64)
        offsets = codes.offsets().numpy().astype(np.float64)
        np.testing.assert_array_equal(decoded, offsets * d16)  # codes exact, one d rounding
        assert np.all(np.abs(d16 - unit_scale) <= FP16_ROUNDING * unit_scale)
        exact = layer.quantized_weight().numpy().astype(np.float64)
        tolerance = (FP16_ROUNDING + 2.0**-23) * np.abs(exact)  # fp16 d, fp32 Q(W)
        assert np.all(np.abs(decoded - exact) <= tolerance), module


# Every grid per-row and with groups of 64, and Q4_0 forced where auto picks another type.
CASES = [
    *((quantizer, bits, None, "auto") for quantizer, bits in GRIDS),
    *((quantizer, bits, 64, "auto") for quantizer, bits in GRIDS),
    *((q, b, None, "Q4_0") for q, b in GRIDS if COMPACT[(q, b)] != "Q4_0"),
]


@pytest.mark.parametrize(("quantizer", "bits", "group_size", "block_type"), CASES,
                         ids=[f"{q}{b}-{g or 'row'}-{t}" for q, b, g, t in CASES])  # fmt: skip
def test_gguf_blocks_decode_to_q(tmp_path, embedded_tokenizer, quantizer, bits, group_size,
                                 block_type):  # fmt: skip
    model = quantized_llama(quantizer, bits, group_size, **SHAPE)
    path = tmp_path / "m.gguf"
    if block_type == "Q4_0" and (quantizer, bits) == ("seq", 4):
        # Odd offsets -15..15 in units of s/16: more than Q4_0's 16 values -8..7.
        with pytest.raises(ExportError, match="Q4_0 cannot hold the 4-bit seq grid"):
            export(model, "gguf", path, tokenizer=embedded_tokenizer, gguf_type="Q4_0",
                   progress=False)  # fmt: skip
        assert not path.exists() and not list(tmp_path.iterdir())
        return
    report = export(model, "gguf", path, tokenizer=embedded_tokenizer, gguf_type=block_type,
                    progress=False)  # fmt: skip
    if block_type == "Q4_0":
        expected = "Q4_0"
    elif group_size is None:
        expected = COMPACT[(quantizer, bits)]
    else:  # 256-weight blocks straddle groups of 64 with different scales
        expected = "Q5_0" if (quantizer, bits) == ("seq", 4) else "Q4_0"
    assert_blocks_decode_to_q(path, model, expected)
    quantized = [r for r in report.tensors if r.max_rel_error is not None]
    assert len(quantized) == 7 and {r.type for r in quantized} == {expected}
    assert all(0 <= r.max_rel_error <= FP16_ROUNDING for r in quantized)


def test_gguf_group_scales_equal_across_a_block_are_exact(tmp_path, embedded_tokenizer):
    model = quantized_llama("lsq", 4, group_size=16, **SHAPE)
    with torch.no_grad():
        for _, layer in quant_layers(model):  # pairs of groups share a scale: 32-blocks fit
            layer.scale.copy_(layer.scale[:, ::2].repeat_interleave(2, dim=1))
    path = tmp_path / "m.gguf"
    export(model, "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    assert_blocks_decode_to_q(path, model, "Q4_0")


def test_gguf_group_of_256_keeps_the_compact_type(tmp_path, embedded_tokenizer):
    model = quantized_llama("seq", 2, group_size=256, **SHAPE)
    path = tmp_path / "m.gguf"
    export(model, "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    assert_blocks_decode_to_q(path, model, "Q2_K")


def test_the_torch_free_names_match_the_writer():
    """winq-export offers GGUF_TYPES without importing the writer; they are the writer's block
    types (most compact first), and every name is a ggml type the gguf package knows."""
    assert GGUF_TYPES == tuple(block.name for block in BLOCK_TYPES)
    assert all(gguf.GGMLQuantizationType[name] for name in GGUF_TYPES)


def test_gguf_refuses_what_no_type_holds(tmp_path, embedded_tokenizer):
    path = tmp_path / "m.gguf"
    model = quantized_llama("lsq", 4, group_size=16, **SHAPE)  # 32-blocks straddle 2 scales
    with pytest.raises(ExportError, match=r"no exact GGUF type for model\.layers\.0"):
        export(model, "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    model = quantized_llama("lsq", 4, **SHAPE)
    with pytest.raises(ExportError, match="TQ2_0 cannot hold the 4-bit lsq grid"):
        export(model, "gguf", path, tokenizer=embedded_tokenizer, gguf_type="TQ2_0",
               progress=False)  # fmt: skip
    from tiny_models import build_tiny_model

    qwen = winq.quantize_(build_tiny_model("qwen2"), winq.QuantConfig(bits=4))
    with pytest.raises(ExportError, match="supports the llama architecture; this model is 'qwen2'"):
        export(qwen, "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    assert not list(tmp_path.iterdir())


def test_gguf_metadata_is_what_llama_cpp_reads(tmp_path, embedded_tokenizer):
    model = quantized_llama("seq", 1.58, **SHAPE)
    path = tmp_path / "m.gguf"
    export(model, "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    reader = GGUFReader(path)

    def field(key):
        return reader.fields[key].contents()

    config = model.config
    assert field("general.architecture") == "llama"
    assert field("llama.context_length") == config.max_position_embeddings == 64
    assert field("llama.embedding_length") == 256
    assert field("llama.feed_forward_length") == 256
    assert field("llama.block_count") == 1
    assert field("llama.attention.head_count") == HEADS
    assert field("llama.attention.head_count_kv") == KV_HEADS
    assert field("llama.rope.dimension_count") == 256 // HEADS
    assert field("llama.rope.freq_base") == 10000.0
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)
    assert field("llama.vocab_size") == 2048
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_TQ2_0
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "gpt-2"
    tokens = embedded_tokenizer.convert_ids_to_tokens(list(range(2048)))
    assert field("tokenizer.ggml.tokens") == tokens
    types = field("tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.CONTROL  # <|endoftext|>
    assert set(types[1:]) == {gguf.TokenType.NORMAL}
    assert len(field("tokenizer.ggml.merges")) == 2048 - 1 - 256  # BPE: vocab - special - bytes
    assert field("tokenizer.ggml.bos_token_id") == field("tokenizer.ggml.eos_token_id") == 0
    assert field("tokenizer.ggml.add_bos_token") is False

    tensors = {t.name: t for t in reader.tensors}
    blocks = [f"blk.0.{kind}.weight" for kind in GGUF_KIND.values()]
    norms = ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"]
    # Tied embeddings: no output.weight, as llama.cpp's converter writes such a model.
    assert set(tensors) == {"token_embd.weight", *blocks, *norms}
    embedding = tensors["token_embd.weight"]
    assert embedding.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(embedding.data, model.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(
        tensors["output_norm.weight"].data, model.model.norm.weight.detach().numpy()
    )


@pytest.mark.parametrize(("tie", "dtype"), [(True, "float32"), (False, "float16")],
                         ids=["tied-f32", "untied-f16"])  # fmt: skip
def test_transformers_gguf_loader_agrees_with_winq(tmp_path, embedded_tokenizer, tie, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from winq.checkpoint import quiet_transformers

    model = quantized_llama("lsq", 4, tie=tie, **SHAPE)
    path = tmp_path / "m.gguf"
    report = export(model, "gguf", path, tokenizer=embedded_tokenizer, dtype=dtype,
                    gguf_type="Q4_0", progress=False)  # fmt: skip
    assert ("output.weight" in report.types()) == (not tie)
    with quiet_transformers():
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    text = "MACBETH: So foul and fair a day I have not seen."
    tokens = torch.tensor([embedded_tokenizer.encode(text)])
    with torch.no_grad():
        reference = model(tokens).logits
        logits = loaded(tokens).logits.float()
    # Weights differ from Q(W) by float16 block scales (relative 2^-11), and in the f16 case
    # the embeddings and output head by float16 rounding: logits agree to about 1e-3 relative.
    scale = reference.abs().max()
    assert (logits - reference).abs().max() <= 5e-3 * scale
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
    if tie:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
        assert tokenizer.encode(text, add_special_tokens=False) == tokens[0].tolist()


def test_gguf_needs_quantized_layers_and_a_tokenizer(tmp_path, embedded_tokenizer):
    path = tmp_path / "m.gguf"
    with pytest.raises(ExportError, match="no quantized layers"):
        export(tiny_llama(**SHAPE), "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    with pytest.raises(ExportError, match="needs the tokenizer"):
        export(quantized_llama("lsq", 4, **SHAPE), "gguf", path, progress=False)
    assert not path.exists()


def test_gguf_permutes_query_and_key_biases_like_their_rows(tmp_path, embedded_tokenizer):
    # transformers' GGUF reader drops Llama attention biases, so read them with gguf's.
    model = quantized_llama("lsq", 4, bias=True, **SHAPE)
    path = tmp_path / "m.gguf"
    export(model, "gguf", path, tokenizer=embedded_tokenizer, progress=False)
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    attention = model.model.layers[0].self_attn
    for kind, heads in (("q", HEADS), ("k", KV_HEADS), ("v", None), ("o", None)):
        kind_name = "attn_output" if kind == "o" else f"attn_{kind}"
        stored = np.array(tensors[f"blk.0.{kind_name}.bias"].data)
        source = getattr(attention, f"{kind}_proj").bias.detach().numpy()
        if heads is not None:
            assert not np.array_equal(stored, source)  # the order did change
            stored = unpermute(stored, heads)
        np.testing.assert_array_equal(stored, source)
    assert_blocks_decode_to_q(path, model, "Q4_0")


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["TQ2_0", "Q2_K", "Q4_0", "Q5_0"]),
    blocks=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_block_layouts_decode_with_ggml_formulas(name, blocks, seed):
    # Every representable integer, random block scales; decoded by gguf.quants (ggml's layout).
    block = next(b for b in BLOCK_TYPES if b.name == name)
    rng = np.random.default_rng(seed)
    top = {"TQ2_0": 2, "Q2_K": 3, "Q4_0": 15, "Q5_0": 31}[name]
    q = rng.integers(0, top + 1, size=(blocks, block.block_size)).astype(np.uint8)
    d = rng.uniform(0.01, 2.0, size=blocks).astype(np.float16)
    sc, m = (int(rng.integers(1, 16)), int(rng.integers(0, 16))) if name == "Q2_K" else (1, 0)
    packed = pack_blocks(block, q, d, (sc, m))
    assert packed.shape == (blocks, block.type_size) and packed.dtype == np.uint8
    decoded = gguf.quants.dequantize(packed.reshape(-1), block.ggml_type)
    d32 = d.astype(np.float32)[:, None]
    expected = {
        "TQ2_0": d32 * (q.astype(np.float32) - 1),
        "Q2_K": d32 * sc * q.astype(np.float32) - d32 * m,
        "Q4_0": d32 * (q.astype(np.float32) - 8),
        "Q5_0": d32 * (q.astype(np.float32) - 16),
    }[name]
    np.testing.assert_array_equal(decoded.reshape(blocks, -1), expected)

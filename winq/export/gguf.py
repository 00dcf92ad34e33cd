r"""The GGUF export: a Llama model in llama.cpp's own file format, every grid stored exactly.

**Why every winq grid fits a GGUF block type.** A quantized weight is ``Q(w) = s·u·z`` with an
integer offset ``z`` and the grid's unit ``u`` (:mod:`winq.export.grid`). GGUF block types store
one float16 scale ``d`` per block and small integers ``q`` per weight, and decode (ggml's
``dequantize_row_*``, mirrored by ``gguf.quants``)::

    Q4_0   32 weights, 4.5 bits each     d·(q − 8),   q ∈ 0..15
    Q5_0   32 weights, 5.5 bits each     d·(q − 16),  q ∈ 0..31
    TQ2_0  256 weights, 2.0625 bits      d·(q − 1),   q ∈ 0..2
    Q2_K   256 weights, 2.625 bits       d·sc_j·q − dmin·m_j,  q ∈ 0..3, with 4-bit sc_j, m_j
                                         per 16-weight sub-block j

With ``d = fp16(u·s)`` a weight is stored exactly (up to that one float16 rounding of the scale)
whenever ``z`` fits the type's range: Q4_0 holds every grid whose offsets lie in −8..7 — LSQ 1,
2, 3, 4 bits (``u = 1``), ternary ``{0, ±2s/3}`` (``u = 2/3``, ``q ∈ {7, 8, 9}``), SEQ 2-bit
``{±s/4, ±3s/4}`` (``u = 1/4``, ``q ∈ {5, 7, 9, 11}``) and SEQ 3-bit (``u = 1/8``, odd ``z``);
SEQ 4-bit (``u = 1/16``, odd ``z`` in −15..15) needs Q5_0. The compact types need rows that are
multiples of 256: TQ2_0 holds ``z ∈ {−1, 0, 1}`` (ternary with ``d = 2s/3``; 1-bit ``±s`` with
``d = s``, ``q ∈ {0, 2}``), and Q2_K holds four equally spaced levels ``z = sc·q − m``: SEQ
2-bit with ``sc = 2, m = 3`` and ``d = dmin = fp16(s/4)`` (so ``d·sc = s/2``, ``dmin·m = 3s/4``),
LSQ 2-bit with ``sc = 1, m = 2``. Using the same ``d`` for both terms keeps the decoded value
``d·(sc·q − m)`` a single rounding of the scale. Each tensor gets the most compact type that is
exact for it, checked per tensor:

* its grid's offsets fit the type;
* its rows are a multiple of the block length;
* no block straddles two different scales (per-row and per-tensor scales never do; group-wise
  scales do unless the group size is a multiple of the block length, or the neighbouring
  groups' scales happen to be equal — the check is on the values). Q2_K is used with one
  scale per 256-weight super-block: distinct sub-block scales would need integer ratios;
* the scale fits a float16 (``|u·s| ≤ 65504``).

If no type is exact, the export fails with a one-line error naming the tensor.

**Layout.** As llama.cpp's Hugging Face converter (``convert_hf_to_gguf.py``, class
``LlamaModel``) lays a Llama model out, which is also the layout transformers' GGUF reader
undoes: tensor names from ``gguf.TensorNameMap`` (``token_embd.weight``,
``blk.N.attn_q.weight``, ``blk.N.ffn_down.weight``, ``output_norm.weight``, ...), the rows of
``attn_q`` and ``attn_k`` permuted for llama.cpp's rotary layout (within each head the two
halves are interleaved: new row ``2j + k`` is old row ``k·h/2 + j``, with the key/value head
count for ``attn_k``), 1-D tensors in F32, no ``output.weight`` when the input and output
embeddings are tied (llama.cpp and transformers then reuse ``token_embd``). The metadata holds
the Llama hyper-parameters (context length, embedding and feed-forward sizes, blocks, heads,
key/value heads, rope base and dimension, RMS-norm epsilon, vocabulary size) and the tokenizer
as ``tokenizer.ggml.*``: model ``gpt2`` (byte-level BPE), pre-tokenizer ``gpt-2``, tokens,
token types, merges, bos/eos ids and whether bos/eos are added.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from winq.export import GGUF_ARCHITECTURES
from winq.export.grid import Grid, LayerCodes, layer_codes
from winq.export.report import ExportError, ExportReport, TensorRecord
from winq.io import fsync_dir
from winq.nn import QuantLinear

__all__ = [
    "BLOCK_TYPES",
    "GGUF_DTYPES",
    "BlockType",
    "choose_block_type",
    "export_gguf",
    "pack_blocks",
]

GGUF_DTYPES = ("float32", "float16", "bfloat16")
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class BlockType:
    """A GGUF block type as winq uses it.

    Attributes:
        name: the ggml type name (``Q4_0``, ...).
        block_size: weights per block.
        type_size: bytes per block.
    """

    name: str
    block_size: int
    type_size: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    @property
    def ggml_type(self) -> Any:
        import gguf

        return gguf.GGMLQuantizationType[self.name]

    def stored_levels(self, grid: Grid) -> tuple[np.ndarray, tuple[int, int]] | None:
        """``(q per code, (sc, m))`` storing ``grid`` exactly, or None when it cannot.

        ``q`` is the block integer of each code; ``(sc, m)`` are Q2_K's sub-block scale and
        min (``(1, 0)`` for the other types).
        """
        z = np.array(grid.offsets, dtype=np.int64)
        if self.name == "Q4_0" and z.min() >= -8 and z.max() <= 7:
            return (z + 8).astype(np.uint8), (1, 0)
        if self.name == "Q5_0" and z.min() >= -16 and z.max() <= 15:
            return (z + 16).astype(np.uint8), (1, 0)
        if self.name == "TQ2_0" and z.min() >= -1 and z.max() <= 1:
            return (z + 1).astype(np.uint8), (1, 0)
        if self.name == "Q2_K":
            step = int(np.gcd.reduce(np.diff(z))) if len(z) > 1 else 1
            q = (z - z.min()) // step
            minimum = -int(z.min())
            if q.max() <= 3 and 1 <= step <= 15 and 0 <= minimum <= 15:
                return q.astype(np.uint8), (step, minimum)
        return None


# Most compact first: the order in which types are tried.
BLOCK_TYPES = (
    BlockType("TQ2_0", 256, 66),
    BlockType("Q2_K", 256, 84),
    BlockType("Q4_0", 32, 18),
    BlockType("Q5_0", 32, 22),
)
_BY_NAME = {block.name: block for block in BLOCK_TYPES}


def _two_bit_planes(q: np.ndarray) -> np.ndarray:
    """TQ2_0/Q2_K ``qs``: (n, 256) values in 0..3 -> (n, 64) bytes; byte ``32h + l`` holds
    weight ``128h + 32j + l`` in bits ``2j, 2j+1``."""
    n = q.shape[0]
    planes = q.reshape(n, 2, 4, 32).astype(np.uint8)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return np.bitwise_or.reduce(planes << shifts, axis=2).reshape(n, 64)


def pack_blocks(
    block: BlockType, q: np.ndarray, d: np.ndarray, sub_block: tuple[int, int] = (1, 0)
) -> np.ndarray:
    """Lay out blocks of ``block``'s type as ggml stores them (``ggml-common.h``).

    Args:
        block: the type.
        q: uint8 (n_blocks, block_size), the stored integers.
        d: float16 (n_blocks,), the block scales.
        sub_block: Q2_K's ``(sc, m)``, the same for every sub-block; ``dmin = d``.

    Returns:
        uint8 (n_blocks, type_size).
    """
    n = q.shape[0]
    d_bytes = d.astype(np.float16).reshape(n, 1).view(np.uint8)  # (n, 2), little-endian
    if block.name == "Q4_0":
        qs = q[:, :16] | (q[:, 16:] << np.uint8(4))
        return np.concatenate([d_bytes, qs], axis=1)
    if block.name == "Q5_0":
        high = np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")  # (n, 4)
        qs = (q[:, :16] & np.uint8(15)) | ((q[:, 16:] & np.uint8(15)) << np.uint8(4))
        return np.concatenate([d_bytes, high, qs], axis=1)
    if block.name == "TQ2_0":
        return np.concatenate([_two_bit_planes(q), d_bytes], axis=1)
    if block.name == "Q2_K":
        sc, m = sub_block
        scales = np.full((n, 16), sc | (m << 4), dtype=np.uint8)
        return np.concatenate([scales, _two_bit_planes(q), d_bytes, d_bytes], axis=1)
    raise ValueError(f"unknown block type {block.name}")


def _block_scales(codes: LayerCodes, block_size: int) -> torch.Tensor | None:
    """The scale of every block (out, in/block) if no block straddles two scales, else None."""
    out_features, in_features = codes.codes.shape
    scale = codes.scale
    if scale.shape == (1, 1):
        scale = scale.expand(out_features, 1)
    groups = scale.shape[1]
    group_size = in_features // groups
    # A block crossing a group boundary c (c % group_size == 0, c % block_size != 0) is
    # uniform only if the scales on both sides of c are equal.
    boundaries = [c for c in range(group_size, in_features, group_size) if c % block_size]
    if boundaries:
        left = torch.tensor([c // group_size - 1 for c in boundaries])
        if not torch.equal(scale[:, left], scale[:, left + 1]):
            return None
    starts = torch.arange(0, in_features, block_size) // group_size
    return scale[:, starts]


def choose_block_type(
    codes: LayerCodes, wanted: str = "auto"
) -> tuple[BlockType, tuple[int, int], np.ndarray, torch.Tensor] | str:
    """The most compact exact type for a layer, or a reason why none (or ``wanted``) fits.

    Returns:
        ``(type, (sc, m), q per code, block scales)`` or a one-line reason.
    """
    in_features = codes.codes.shape[1]
    candidates = BLOCK_TYPES if wanted == "auto" else (_BY_NAME[wanted],)
    reasons = []
    for block in candidates:
        stored = block.stored_levels(codes.grid)
        if stored is None:
            reasons.append(f"{block.name} cannot hold the {codes.grid.describe()} grid")
            continue
        if in_features % block.block_size:
            reasons.append(f"{block.name} needs rows of a multiple of {block.block_size}")
            continue
        scales = _block_scales(codes, block.block_size)
        if scales is None:
            reasons.append(f"{block.name} blocks of {block.block_size} straddle two scale groups")
            continue
        return block, stored[1], stored[0], scales
    return "; ".join(reasons)


def _permute_rows(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary row order: within each head, interleave the two halves."""
    rows = tensor.shape[0]
    order = torch.arange(rows).reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)
    return tensor[order]


def _encode_layer(
    codes: LayerCodes, wanted: str, heads: int | None, name: str
) -> tuple[np.ndarray, BlockType, float]:
    """Pack one layer: (uint8 (out, bytes), type, max relative float16 rounding of d)."""
    choice = choose_block_type(codes, wanted)
    if isinstance(choice, str):
        out_features, in_features = codes.codes.shape
        raise ExportError(
            f"no exact GGUF type for {name} ({out_features}×{in_features}, "
            f"{codes.grid.describe()}): {choice}"
        )
    block, sub_block, q_of_code, block_scales = choice
    q = torch.from_numpy(q_of_code)[codes.codes.long()]  # (out, in) uint8
    d = block_scales.to(torch.float64) * codes.grid.unit  # (out, blocks)
    if heads is not None:
        q, d = _permute_rows(q, heads), _permute_rows(d, heads)
    if float(d.abs().max()) > FLOAT16_MAX:
        raise ExportError(f"a scale of {name} ({float(d.abs().max()):.3g}) overflows float16")
    d16 = d.numpy().astype(np.float16)
    relative = np.abs(d16.astype(np.float64) - d.numpy()) / np.abs(d.numpy())
    out_features, in_features = q.shape
    blocks = pack_blocks(
        block,
        q.numpy().reshape(-1, block.block_size),
        d16.reshape(-1),
        sub_block,
    )
    return blocks.reshape(out_features, -1), block, float(relative.max())


def _float_array(tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any, str]:
    """(array, raw ggml type or None, type name) for an unquantized tensor; 1-D stays F32."""
    import gguf

    tensor = tensor.detach().cpu().to(torch.float32)
    if tensor.dim() <= 1 or dtype == "float32":
        return tensor.contiguous().numpy(), None, "F32"
    if dtype == "float16":
        return tensor.to(torch.float16).contiguous().numpy(), None, "F16"
    bits = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return bits, gguf.GGMLQuantizationType.BF16, "BF16"


def _check_architecture(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in GGUF_ARCHITECTURES:
        raise ExportError(
            f"gguf export supports the {', '.join(GGUF_ARCHITECTURES)} architecture; "
            f"this model is {model_type!r} (use --format packed or hf)"
        )
    return config


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None)
    if isinstance(legacy, dict):
        params = {**legacy, **params}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        theta = 10000.0
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in ("default", "linear"):
        raise ExportError(
            f"gguf export supports rope_type 'default' and 'linear'; this model has {rope_type!r}"
        )
    return float(theta), params


def _tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` contents of a byte-level BPE tokenizer (GPT-2 pre-tokenizer)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            "gguf export needs a fast (tokenizer.json) byte-level BPE tokenizer; "
            f"got {type(tokenizer).__name__}"
        )
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex"):
        raise ExportError(
            "gguf export supports byte-level BPE tokenizers with GPT-2 pre-tokenization "
            f"(model BPE, pre-tokenizer ByteLevel); this one has model {model.get('type')!r}, "
            f"pre-tokenizer {pre.get('type')!r}"
        )
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ExportError(
            f"the tokenizer has token id {max(vocab.values())}, beyond the model's "
            f"vocabulary of {vocab_size}"
        )
    by_id = {index: token for token, index in vocab.items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            special = added[index].get("special", False)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and len(full) > len(plain) and full[0] == bos
    adds_eos = eos is not None and len(full) > len(plain) and full[-1] == eos
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": bos,
        "eos": eos,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": adds_bos,
        "add_eos": adds_eos,
    }


def _file_type(weights_by_type: Counter) -> Any:
    import gguf

    if not weights_by_type:
        return gguf.LlamaFileType.ALL_F32
    dominant = weights_by_type.most_common(1)[0][0]
    return getattr(gguf.LlamaFileType, f"MOSTLY_{dominant}", gguf.LlamaFileType.GUESSED)


def export_gguf(
    model: nn.Module,
    out: str | os.PathLike,
    tokenizer: Any,
    *,
    dtype: str = "float32",
    block_type: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Write a quantized Llama model as one GGUF file (temporary file, renamed in when complete).

    Args:
        model: a ``LlamaForCausalLM`` with QuantLinear layers.
        out: the ``.gguf`` file to write.
        tokenizer: its byte-level BPE tokenizer (required: llama.cpp needs the vocabulary).
        dtype: storage of unquantized 2-D tensors (embeddings, an untied output head):
            ``float32`` (default; exact), ``float16`` or ``bfloat16``. Norms are always F32.
        block_type: ``"auto"`` (the most compact exact type per tensor) or one of
            ``TQ2_0``, ``Q2_K``, ``Q4_0``, ``Q5_0`` for every quantized tensor.
        overwrite: replace an existing ``out``.
        progress: tqdm bars while packing and writing.

    Returns:
        The :class:`ExportReport`: every tensor's GGUF name, type, size and the largest
        relative float16 rounding of its block scales.

    Raises:
        ExportError: not a Llama model, no quantized layer, no tokenizer or an unsupported one,
            a tensor no exact type can hold, an unsupported rope type, an existing ``out``.
    """
    import gguf
    from tqdm.auto import tqdm

    out = Path(out)
    config = _check_architecture(model)
    if dtype not in GGUF_DTYPES:
        raise ExportError(f"gguf dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    if block_type != "auto" and block_type not in _BY_NAME:
        allowed = ", ".join(["auto", *_BY_NAME])
        raise ExportError(f"gguf block type must be one of {allowed}, got {block_type!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ExportError(
            "the model has no quantized layers: nothing to store in GGUF blocks "
            "(use --format hf for an FP model)"
        )
    if tokenizer is None:
        raise ExportError(
            "gguf export needs the tokenizer; the checkpoint has none (pass --tokenizer PATH)"
        )
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    if out.exists() and out.is_dir():
        raise ExportError(f"{str(out)!r} is a folder; gguf export writes one file")

    theta, rope_params = _rope(config)
    blocks_count = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    vocab = _tokenizer_fields(tokenizer, config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks_count)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    writer_tensors: list[tuple[str, np.ndarray, Any]] = []
    records: list[TensorRecord] = []
    weights_by_type: Counter = Counter()
    quantized_weights = {f"{name}.weight": layer for name, layer in layers.items()}
    skip = {f"{name}.scale" for name in layers}
    if tied and head is not None:
        skip |= {f"{n}.weight" for n, m in model.named_modules() if m is head}
    bar = tqdm(total=len(layers), desc="GGUF blocks", unit="layer", disable=not progress)
    for source, tensor in model.state_dict().items():
        if source in skip:
            continue
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF tensor name for {source} in the llama layout")
        heads_for_rows = None
        if source.endswith(("q_proj.weight", "q_proj.bias")):
            heads_for_rows = heads
        elif source.endswith(("k_proj.weight", "k_proj.bias")):
            heads_for_rows = kv_heads
        layer = quantized_weights.get(source)
        if layer is not None:
            try:
                codes = layer_codes(layer)
            except ValueError as e:
                raise ExportError(f"cannot export {source}: {e}") from None
            data, block, rounding = _encode_layer(codes, block_type, heads_for_rows, source)
            writer_tensors.append((name, data, block.ggml_type))
            shape = tuple(layer.weight.shape)
            records.append(TensorRecord(name, source, shape, block.name, data.nbytes, rounding))
            weights_by_type[block.name] += layer.weight.numel()
            bar.update()
            continue
        if heads_for_rows is not None:
            tensor = _permute_rows(tensor.detach().cpu(), heads_for_rows)
        data, raw, type_name = _float_array(tensor, dtype)
        writer_tensors.append((name, data, raw))
        records.append(TensorRecord(name, source, tuple(tensor.shape), type_name, data.nbytes))
    bar.close()

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    model_name = str(getattr(config, "_name_or_path", "") or "winq export")
    writer.add_name(Path(model_name).name or "winq export")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(_file_type(weights_by_type))
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(blocks_count)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    if rope_params.get("rope_type", rope_params.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope_params["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    first = next(iter(layers.values()))
    grid_note = f"{first.config.bits}-bit {first.config.quantizer}, {first.config.granularity}"
    if first.config.group_size:
        grid_note += f" {first.config.group_size}"
    writer.add_string("winq.grid", grid_note)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for kind in ("bos", "eos", "unk", "pad"):
        if vocab[kind] is not None:
            getattr(writer, f"add_{kind}_token_id")(vocab[kind])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    for name, data, raw in writer_tensors:
        writer.add_tensor(name, data, raw_dtype=raw)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if out.exists() and not overwrite:
            raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return ExportReport("gguf", out, records, {"": out.stat().st_size})

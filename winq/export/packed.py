r"""The packed export: integer codes bit-packed into uint8, the scales, and the grid.

A winq checkpoint stores the latent fp32 weights, so a 2-bit model is *larger* than its FP
original (ParetoQ issue #16). The packed export stores what ``Q(W) = s·ℓ_k`` needs instead
(:mod:`winq.export.grid`): for every quantized layer the code ``k`` of each weight in
``b = ⌈log2 L⌉`` bits (1 bit at 1-bit, 2 for ternary and 2-bit, 3 for 3-bit, 4 for 4-bit) and its
scales; everything else (embeddings, norms, the output head, biases) is copied as it is. The
linear layers then take ``b/16`` of their bfloat16 size plus the scales.

Layout of a packed folder (a Hugging Face folder plus ``winq_quant.json``, docs/export.md)::

    config.json, tokenizer files      as in the checkpoint
    model.safetensors                 <module>.codes  uint8 (out, ceil(in·b/8))
                                      <module>.scale  the effective scale, shape as in the
                                                      checkpoint: (out, 1), (out, in/g), (1, 1)
                                      every other tensor unchanged
    winq_quant.json                   the checkpoint's quantization settings plus "packing"

**Bit order.** Each row is one little-endian bit stream: code ``j`` of a row occupies stream
bits ``[j·b, (j+1)·b)``, least significant bit first, and stream bit ``i`` is bit ``i mod 8``
(value ``2^(i mod 8)``) of byte ``⌊i/8⌋`` of the row. For ``b = 1, 2, 4`` this is the usual
"first code in the low bits" packing; for ``b = 3`` eight codes fill three bytes and a code may
straddle two bytes. A row ends on a byte boundary (at most 7 bits of padding, zero).

**Reading it back.** :func:`winq.load` builds the QuantLinear model, reads the scales and
sets each latent weight to ``Q(W)`` itself (:func:`winq.export.grid.dequantize_codes`); since
``Q(Q(W)) = Q(W)`` bit for bit on every grid, the loaded model's quantized weights — and its
logits — are exactly the source's. The ``packing`` object (also in the safetensors header,
key ``winq.packing``) names the grid, so any reader can decode the codes without winq:
``Q(w) = scale · levels[code]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from winq.checkpoint import QUANT_FILE, CheckpointError
from winq.config import QuantConfig
from winq.export.grid import Grid, dequantize_codes, grid_of, layer_codes
from winq.export.report import ExportError, ExportReport, TensorRecord
from winq.io import atomic_dir, atomic_write_json
from winq.nn import QuantLinear, quant_layers
from winq.quantizers import SCALE_EPS, get_quantizer

__all__ = [
    "CODES_SUFFIX",
    "PACKING_FORMAT",
    "PACKING_VERSION",
    "export_packed",
    "load_packed_weights",
    "pack_codes",
    "packing_info",
    "read_packing",
    "unpack_codes",
]

PACKING_FORMAT = "winq-packed"
PACKING_VERSION = 1
CODES_SUFFIX = ".codes"
WEIGHTS_FILE = "model.safetensors"
METADATA_KEY = "winq.packing"
_CHUNK_ELEMENTS = 1 << 22  # rows packed at a time: bounds the (rows, in, b) bit tensor


def pack_codes(codes: torch.Tensor, code_bits: int) -> torch.Tensor:
    """Pack unsigned codes (rows, cols) of ``code_bits`` bits each into uint8 (rows, bytes).

    Row by row, as one little-endian bit stream (the module docstring's bit order).

    Raises:
        ValueError: a code does not fit in ``code_bits`` bits.
    """
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (rows, cols), got shape {tuple(codes.shape)}")
    if not 1 <= code_bits <= 8:
        raise ValueError(f"code_bits must be in 1..8, got {code_bits}")
    rows, cols = codes.shape
    codes = codes.to(torch.uint8)
    if cols and int(codes.max()) >= 1 << code_bits:
        raise ValueError(f"a code ({int(codes.max())}) does not fit in {code_bits} bits")
    row_bytes = (cols * code_bits + 7) // 8
    padding = row_bytes * 8 - cols * code_bits
    shifts = torch.arange(code_bits, dtype=torch.uint8)
    packed = torch.empty(rows, row_bytes, dtype=torch.uint8)
    step = max(1, _CHUNK_ELEMENTS // max(1, cols))
    for start in range(0, rows, step):
        block = codes[start : start + step]
        bits = (block.unsqueeze(-1) >> shifts) & 1  # (r, cols, code_bits)
        bits = bits.reshape(block.shape[0], cols * code_bits)
        if padding:
            bits = torch.nn.functional.pad(bits, (0, padding))
        bits = bits.reshape(block.shape[0], row_bytes, 8)
        byte = torch.zeros(block.shape[0], row_bytes, dtype=torch.uint8)
        for position in range(8):
            byte |= bits[..., position] << position
        packed[start : start + step] = byte
    return packed


def unpack_codes(packed: torch.Tensor, code_bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 (rows, bytes) -> uint8 codes (rows, cols).

    Raises:
        ValueError: ``packed`` has the wrong number of bytes per row for ``cols`` codes.
    """
    rows, row_bytes = packed.shape
    if row_bytes != (cols * code_bits + 7) // 8:
        raise ValueError(
            f"{row_bytes} bytes per row cannot hold exactly {cols} codes of {code_bits} bits"
        )
    positions = torch.arange(8, dtype=torch.uint8)
    shifts = torch.arange(code_bits, dtype=torch.uint8)
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    step = max(1, _CHUNK_ELEMENTS // max(1, cols))
    for start in range(0, rows, step):
        block = packed[start : start + step].to(torch.uint8)
        bits = (block.unsqueeze(-1) >> positions) & 1  # (r, bytes, 8)
        bits = bits.reshape(block.shape[0], row_bytes * 8)[:, : cols * code_bits]
        bits = bits.reshape(block.shape[0], cols, code_bits)
        codes[start : start + step] = (bits << shifts).sum(-1).to(torch.uint8)
    return codes


def packing_info(grid: Grid, weight_dtype: torch.dtype) -> dict[str, Any]:
    """The ``packing`` object of ``winq_quant.json`` and the safetensors header."""
    return {
        "format": PACKING_FORMAT,
        "version": PACKING_VERSION,
        "quantizer": grid.quantizer,
        "bits": grid.bits,
        "code_bits": grid.code_bits,
        "levels": list(grid.levels),
        "unit": grid.unit,
        "offsets": list(grid.offsets),
        "bit_order": "lsb-first stream per row, rows byte-aligned",
        "weight_dtype": dtype_name(weight_dtype),
        "tensors": f"<module>{CODES_SUFFIX} (codes) and <module>.scale; "
        "Q(w) = scale * levels[code]",
    }


def _shared_config(layers: dict[str, QuantLinear]) -> QuantConfig:
    configs = {json.dumps(layer.config.to_dict(), sort_keys=True) for layer in layers.values()}
    if len(configs) > 1:
        raise ExportError("all quantized layers must share one quantization config to be packed")
    return next(iter(layers.values())).config


def _skipped_modules(model: nn.Module) -> list[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted(
        {
            name
            for name, module in model.named_modules()
            if type(module) is nn.Linear or (head is not None and module is head)
        }
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _plain_record(name: str, tensor: torch.Tensor) -> TensorRecord:
    nbytes = tensor.numel() * tensor.element_size()
    return TensorRecord(name, name, tuple(tensor.shape), dtype_name(tensor.dtype), nbytes)


def _storage_key(tensor: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    return (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))


def export_packed(
    model: nn.Module,
    out: str | os.PathLike,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Write ``model`` as a packed folder at ``out`` (built aside, renamed in when complete).

    Args:
        model: a Hugging Face causal LM with QuantLinear layers (one shared config).
        out: destination folder.
        tokenizer: saved beside the model when given.
        overwrite: replace an existing ``out``.
        progress: show a tqdm bar over the layers.

    Returns:
        The :class:`ExportReport` (every tensor with its storage type and size).

    Raises:
        ExportError: no quantized layer, layers with different configs, an existing ``out``
            without ``overwrite``, or non-finite weights.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out)
    layers = dict(quant_layers(model))
    if not layers:
        raise ExportError(
            "the model has no quantized layers: nothing to pack (use --format hf for an FP model)"
        )
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    config = _shared_config(layers)
    first = next(iter(layers.values()))
    grid = grid_of(first.quantizer)
    packing = packing_info(grid, first.weight.dtype)

    tensors: dict[str, torch.Tensor] = {}
    records: list[TensorRecord] = []
    seen: dict[tuple, str] = {}
    state = model.state_dict()
    bar = tqdm(total=len(layers), desc="packing", unit="layer", disable=not progress)
    for name, tensor in state.items():
        module_name, _, leaf = name.rpartition(".")
        layer = layers.get(module_name)
        if layer is not None and leaf == "weight":
            try:
                quantized = layer_codes(layer)
            except ValueError as e:
                raise ExportError(f"cannot pack {module_name}: {e}") from None
            packed = pack_codes(quantized.codes, grid.code_bits)
            key = module_name + CODES_SUFFIX
            tensors[key] = packed
            shape = tuple(tensor.shape)
            records.append(
                TensorRecord(key, name, shape, f"codes:{grid.code_bits}", packed.numel(), 0.0)
            )
            scale_key = f"{module_name}.scale"
            tensors[scale_key] = quantized.scale.contiguous()
            records.append(_plain_record(scale_key, tensors[scale_key]))
            bar.update()
            continue
        if layer is not None and leaf == "scale":
            continue  # written with the codes, clamped as Q uses it
        storage = _storage_key(tensor)
        if storage in seen:
            continue  # a tied copy (e.g. lm_head of tied embeddings): from_pretrained re-ties it
        seen[storage] = name
        tensors[name] = tensor.detach().cpu().contiguous()
        records.append(_plain_record(name, tensors[name]))
    bar.close()

    quant_file = {
        "format_version": 1,
        **config.to_dict(),
        "skipped_modules": _skipped_modules(model),
        "quantized_modules": list(layers),
        "packing": packing,
    }
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            model.config.save_pretrained(tmp)
            generation = getattr(model, "generation_config", None)
            if generation is not None and hasattr(model, "can_generate") and model.can_generate():
                generation.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            save_file(
                tensors,
                str(tmp / WEIGHTS_FILE),
                metadata={"format": "pt", METADATA_KEY: json.dumps(packing)},
            )
            atomic_write_json(tmp / QUANT_FILE, quant_file)
    except FileExistsError:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)") from None
    files = {
        str(file.relative_to(out)): file.stat().st_size
        for file in sorted(out.rglob("*"))
        if file.is_file()
    }
    return ExportReport("packed", out, records, files)


def read_packing(path: str | os.PathLike) -> Grid | None:
    """The grid of a packed folder's codes, or None for a folder that is not packed.

    Raises:
        CheckpointError: a ``packing`` object of another format or version, or one whose grid
            is not the one its quantization settings name.
    """
    file = Path(path) / QUANT_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt {QUANT_FILE} in {path}: {e}") from None
    packing = data.get("packing") if isinstance(data, dict) else None
    if packing is None:
        return None
    where = f"{QUANT_FILE} in {str(path)!r}"
    if not isinstance(packing, dict) or packing.get("format") != PACKING_FORMAT:
        raise CheckpointError(f"{where}: 'packing' is not a {PACKING_FORMAT} object")
    if packing.get("version") != PACKING_VERSION:
        raise CheckpointError(
            f"{where}: packing version {packing.get('version')!r}; this winq reads {PACKING_VERSION}"
        )
    try:
        grid = grid_of(get_quantizer(data["quantizer"], data["bits"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: no valid quantizer/bits ({e})") from None
    if packing.get("code_bits") != grid.code_bits or packing.get("offsets") != list(grid.offsets):
        raise CheckpointError(
            f"{where}: packing grid (code_bits {packing.get('code_bits')!r}, offsets "
            f"{packing.get('offsets')!r}) is not the {grid.describe()} grid"
        )
    return grid


def load_packed_weights(path: str | os.PathLike, model: nn.Module, grid: Grid) -> None:
    """Set every QuantLinear's latent weight of ``model`` to the Q(W) stored in ``path``.

    The scales must already be loaded (``winq.load`` does it). Each weight becomes
    ``scale · levels[code]`` computed as ``Q`` computes it, so ``Q(W)`` is the source's.

    Raises:
        CheckpointError: a missing or mis-shaped codes tensor, or a code outside the grid.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    wanted = {f"{name}{CODES_SUFFIX}": layer for name, layer in quant_layers(model)}
    found: set[str] = set()
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    layer = wanted.get(key)
                    if layer is None:
                        continue
                    packed = f.get_tensor(key)
                    if packed.dtype != torch.uint8 or packed.dim() != 2:
                        raise CheckpointError(f"{key} in {file.name} is not a 2-D uint8 tensor")
                    if packed.shape[0] != layer.out_features:
                        raise CheckpointError(
                            f"{key} in {file.name} has {packed.shape[0]} rows, "
                            f"expected {layer.out_features}"
                        )
                    try:
                        codes = unpack_codes(packed, grid.code_bits, layer.in_features)
                    except ValueError as e:
                        raise CheckpointError(f"{key} in {file.name}: {e}") from None
                    if int(codes.max()) >= grid.size:
                        raise CheckpointError(
                            f"{key} in {file.name} holds code {int(codes.max())}; the "
                            f"{grid.describe()} grid has {grid.size} levels"
                        )
                    scale = layer.scale.detach().clamp_min(SCALE_EPS)
                    weight = dequantize_codes(codes, scale, grid, layer.weight.dtype)
                    with torch.no_grad():
                        layer.weight.copy_(weight)
                    found.add(key)
        except SafetensorError as e:
            raise CheckpointError(f"corrupt {file.name} in {str(path)!r}: {e}") from None
    missing = sorted(set(wanted) - found)
    if missing:
        raise CheckpointError(
            f"packed checkpoint {str(path)!r} lacks {len(missing)} codes tensor(s), "
            f"e.g. {missing[0]}"
        )

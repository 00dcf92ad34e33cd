r"""Exact exports of a quantized model: plain Hugging Face, packed safetensors, GGUF.

A winq checkpoint keeps the latent fp32 weights W and the scales s, so that training can go on;
what a quantized model *computes with* is only ``Q(W) = s·ℓ_k``: one level ``ℓ_k`` of a fixed
grid per weight, times its row's (or group's) scale (:mod:`winq.quantizers`,
:mod:`winq.export.grid`). Each export stores that and nothing else, exactly:

* ``hf`` (:mod:`winq.export.hf`): ``Q(W)`` as ordinary linear weights in bfloat16, float16 or
  float32, loadable by stock ``transformers`` (bit-identical logits in float32);
* ``packed`` (:mod:`winq.export.packed`): the codes ``k`` bit-packed (1, 2, 3 or 4 bits per
  weight), the scales and the grid; ``winq.load`` reads it back to a model whose ``Q(W)`` is
  the source's bit for bit, at about ``b/16`` of the linear layers' bfloat16 size;
* ``gguf`` (:mod:`winq.export.gguf`): a Llama model in llama.cpp's format, each tensor in the
  most compact GGUF block type (TQ2_0, Q2_K, Q4_0, Q5_0) that holds its grid exactly, up to the
  float16 rounding of the block scale.

The motivation is ParetoQ issue #16 (a 2-bit checkpoint larger than the FP model, users writing
their own packing scripts) and torchao issue #1290 (QAT conversion leaving float32 weights).
Formats, bit orders and the exactness argument: docs/export.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from winq.export.report import ExportError, ExportReport, TensorRecord

__all__ = [
    "FORMATS",
    "GGUF_ARCHITECTURES",
    "GGUF_TYPES",
    "ExportError",
    "ExportReport",
    "TensorRecord",
    "export",
]

FORMATS = ("hf", "packed", "gguf")
# What the GGUF writer handles, named here without importing it (it imports torch), so that
# winq-export refuses a bad flag at once: the block types most compact first
# (winq.export.gguf.BLOCK_TYPES) and the model architectures.
GGUF_TYPES = ("TQ2_0", "Q2_K", "Q4_0", "Q5_0")
GGUF_ARCHITECTURES = ("llama",)


def export(
    checkpoint_or_model: Any,
    format: str,
    out: str | os.PathLike,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    gguf_type: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Export a quantized model (or a checkpoint folder) to ``out``.

    Args:
        checkpoint_or_model: a path to a winq checkpoint or packed export (loaded with
            :func:`winq.load`), or a model with QuantLinear layers.
        format: ``"hf"``, ``"packed"`` or ``"gguf"``.
        out: destination folder (hf, packed) or ``.gguf`` file; written atomically.
        tokenizer: saved with the export; default: the checkpoint's own. GGUF requires one.
        dtype: hf: weight dtype (``bfloat16`` default, ``float16``, ``float32``); gguf: dtype
            of unquantized 2-D tensors (``float32`` default, ``float16``, ``bfloat16``);
            packed: must be None (everything is kept as it is).
        gguf_type: ``"auto"`` or one GGUF block type for every quantized tensor.
        overwrite: replace an existing ``out``.
        progress: tqdm bars during long work.

    Returns:
        The :class:`ExportReport` (each tensor's stored type and size; for GGUF, which block
        type each tensor got).

    Raises:
        ExportError: a bad format or dtype, an existing ``out`` without ``overwrite``, or a
            model the format cannot hold exactly (the message says why, in one line).
        winq.CheckpointError: the checkpoint cannot be loaded.
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    check_dtype(format, dtype)
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from winq.checkpoint import load

        model, saved_tokenizer = load(checkpoint_or_model)
        tokenizer = tokenizer if tokenizer is not None else saved_tokenizer
    else:
        model = checkpoint_or_model
    if format == "hf":
        import torch

        from winq.export.hf import export_hf

        return export_hf(
            model,
            out,
            tokenizer,
            dtype=getattr(torch, dtype or "bfloat16"),
            overwrite=overwrite,
            progress=progress,
        )
    if format == "packed":
        from winq.export.packed import export_packed

        return export_packed(model, out, tokenizer, overwrite=overwrite, progress=progress)
    from winq.export.gguf import export_gguf

    return export_gguf(
        model,
        out,
        tokenizer,
        dtype=dtype or "float32",
        block_type=gguf_type,
        overwrite=overwrite,
        progress=progress,
    )


def check_dtype(format: str, dtype: str | None) -> None:
    """Refuse a dtype the format does not take (one-line :class:`ExportError`)."""
    if dtype is None:
        return
    allowed = {"hf": ("bfloat16", "float16", "float32"), "gguf": ("float32", "float16", "bfloat16")}
    if format not in allowed:
        raise ExportError(f"--dtype applies to hf and gguf; {format} keeps every dtype as saved")
    if dtype not in allowed[format]:
        raise ExportError(
            f"{format} dtype must be one of {', '.join(allowed[format])}, got {dtype!r}"
        )

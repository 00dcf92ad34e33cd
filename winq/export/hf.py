"""The ``hf`` export: a plain Hugging Face folder whose linear weights are ``Q(W)``.

Every QuantLinear becomes an ``nn.Linear`` holding ``Q(W) = s·q(W/s)`` (the value the quantized
model multiplies by, :meth:`winq.nn.QuantLinear.quantized_weight`), the whole model is cast to
the chosen dtype and saved with ``save_pretrained``: no ``winq_quant.json``, no scale tensors,
the model's own config. Stock ``transformers`` loads it without winq.

Exactness: in float32 the folder's weights are ``Q(W)`` bit for bit and the forward pass is
the same sequence of operations as winq's (a QuantLinear computes ``F.linear(x, Q(W))``), so
logits are bit-identical on the same machine and attention kernel. In bfloat16 (float16) each
weight is ``Q(W)`` rounded once to 8 (11) significant bits — a relative change of at most
``2^-8`` (``2^-11``) — and the forward pass runs in that dtype, so logits agree to that dtype's
round-off, not bit for bit. The export is of the *weights*: a model trained with 8-bit
activation fake-quantization (``a_bits=8``) loses it, which the report notes.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from winq.checkpoint import quiet_transformers
from winq.export.report import ExportError, ExportReport, TensorRecord
from winq.io import atomic_dir
from winq.nn import dequantize_, quant_layers

__all__ = ["HF_DTYPES", "export_hf"]

HF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _max_rel_error(exact: torch.Tensor, stored: torch.Tensor) -> float:
    exact = exact.to(torch.float64)
    nonzero = exact != 0
    if not bool(nonzero.any()):
        return 0.0
    deviation = (stored.to(torch.float64) - exact).abs()[nonzero] / exact.abs()[nonzero]
    return float(deviation.max())


def export_hf(
    model: nn.Module,
    out: str | os.PathLike,
    tokenizer: Any = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Write ``model`` as a plain Hugging Face folder with ``Q(W)`` as its linear weights.

    The model itself is left as it is (a copy is converted), so memory peaks at about twice
    the model.

    Args:
        model: a Hugging Face ``PreTrainedModel``, quantized (QuantLinear layers) or not.
        out: destination folder, built aside and renamed in when complete.
        tokenizer: saved beside the model when given.
        dtype: the weights' dtype (bfloat16, float16 or float32).
        overwrite: replace an existing ``out``.
        progress: show a tqdm bar while quantized layers are converted.

    Returns:
        The :class:`ExportReport`; each quantized layer's weight carries the largest relative
        rounding of ``Q(W)`` to ``dtype``.

    Raises:
        ExportError: ``out`` exists and ``overwrite`` is False, or ``dtype`` is not allowed.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if dtype not in HF_DTYPES.values():
        allowed = ", ".join(HF_DTYPES)
        raise ExportError(f"hf export dtype must be one of {allowed}, got {dtype}")
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    layers = list(quant_layers(model))
    if any(layer.config.a_bits for _, layer in layers):
        logging.getLogger(__name__).warning(
            "the model fake-quantizes activations (a_bits); the hf export keeps Q(W) only"
        )
    errors: dict[str, float] = {}
    for name, layer in tqdm(layers, desc="Q(W)", unit="layer", disable=not progress):
        exact = layer.quantized_weight()
        errors[f"{name}.weight"] = _max_rel_error(exact, exact.to(dtype))
    plain = copy.deepcopy(model)
    dequantize_(plain)
    plain.to(dtype)
    plain.eval()
    records = []
    seen: set[int] = set()
    for name, tensor in plain.state_dict().items():
        if tensor.data_ptr() in seen:
            continue  # a tied copy: save_pretrained writes it once
        seen.add(tensor.data_ptr())
        records.append(
            TensorRecord(
                name,
                name,
                tuple(tensor.shape),
                str(tensor.dtype).removeprefix("torch."),
                tensor.numel() * tensor.element_size(),
                errors.get(name),
            )
        )
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp, quiet_transformers():
            plain.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
    except FileExistsError:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)") from None
    files = {
        str(file.relative_to(out)): file.stat().st_size
        for file in sorted(out.rglob("*"))
        if file.is_file()
    }
    return ExportReport("hf", out, records, files)

"""Checkpoints: a Hugging Face model folder plus ``winq_quant.json``.

``model.safetensors`` holds the latent FP weights and the scales (``<module>.scale``), so a
checkpoint reloads into exactly the model that was saved (bit-identical logits on CPU) and
training can continue from it. A folder without ``winq_quant.json`` is a plain FP checkpoint;
``load(path, bits=B)`` quantizes it on the fly with the initial scales of
:mod:`winq.quantizers`. A packed export (:mod:`winq.export.packed`: bit-packed codes and scales
instead of latent weights) loads too, each latent weight set to its ``Q(W)``.

Writing is atomic: the folder is built under a temporary name beside ``path`` and renamed in,
so an existing checkpoint is never half-overwritten. Reading never executes code: weights come
from safetensors and models are built with ``trust_remote_code=False`` unless asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from winq.config import QuantConfig, parse_bits
from winq.io import atomic_dir, atomic_write_json
from winq.nn import QuantLinear, dequantize_, quant_layers, quantize_

__all__ = [
    "QUANT_FILE",
    "CheckpointError",
    "check_checkpoint_arg",
    "check_folder",
    "first_nonfinite",
    "is_quantized",
    "load",
    "quiet_transformers",
    "read_quant_config",
    "save",
]

QUANT_FILE = "winq_quant.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A path that is not a loadable checkpoint, with a one-line reason."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars for one block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_quant_config(model: nn.Module) -> tuple[QuantConfig | None, list[str]]:
    layers = list(quant_layers(model))
    if not layers:
        return None, []
    configs = {json.dumps(layer.config.to_dict(), sort_keys=True) for _, layer in layers}
    if len(configs) > 1:
        raise ValueError("all QuantLinear layers of a saved model must share one QuantConfig")
    return layers[0][1].config, [name for name, _ in layers]


def save(
    model: nn.Module,
    path: str | os.PathLike,
    tokenizer: Any = None,
    *,
    extra: Callable[[Path], None] | None = None,
    overwrite: bool = True,
    allow_nonfinite: bool = False,
) -> Path:
    """Write ``model`` (and ``tokenizer``) as a checkpoint folder at ``path``, atomically.

    Args:
        model: a Hugging Face ``PreTrainedModel``, quantized or not.
        path: destination folder; an existing one is replaced only once the new one is complete.
        tokenizer: saved beside the model when given.
        extra: called with the temporary folder before it is renamed into place, to add files
            that must appear together with the checkpoint (e.g. optimizer state).
        overwrite: replace an existing folder (True) or raise ``FileExistsError``.
        allow_nonfinite: write weights holding NaN or inf (refused by default, before anything
            is written, so a diverged model never replaces a good checkpoint).

    Returns:
        The checkpoint path.

    Raises:
        ValueError: a parameter or floating buffer holds NaN or inf (unless ``allow_nonfinite``).
    """
    path = Path(path)
    if not allow_nonfinite:
        bad = first_nonfinite(model)
        if bad is not None:
            raise ValueError(
                f"refusing to save {str(path)!r}: {bad} holds NaN or inf "
                "(pass allow_nonfinite=True to write it anyway)"
            )
    config, names = _model_quant_config(model)
    with atomic_dir(path, overwrite=overwrite) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if config is not None:
            head = (
                model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            )
            skipped = [
                name
                for name, module in model.named_modules()
                if type(module) is nn.Linear or (module is head and head is not None)
            ]
            atomic_write_json(
                tmp / QUANT_FILE,
                {
                    "format_version": FORMAT_VERSION,
                    **config.to_dict(),
                    "skipped_modules": sorted(set(skipped)),
                    "quantized_modules": names,
                },
            )
        if extra is not None:
            extra(tmp)
    return path


def first_nonfinite(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer holding NaN or inf, else None."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"weight {name}" if isinstance(tensor, nn.Parameter) else f"buffer {name}"
    return None


def read_quant_config(path: str | os.PathLike) -> tuple[QuantConfig, list[str]] | None:
    """The QuantConfig and quantized module names of a checkpoint, or None for an FP one.

    Raises:
        CheckpointError: ``winq_quant.json`` exists but is unreadable or invalid.
    """
    file = Path(path) / QUANT_FILE
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt {QUANT_FILE} in {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt {QUANT_FILE} in {path}: not a JSON object")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{QUANT_FILE} in {path} has format_version {version!r}; this winq reads {FORMAT_VERSION}"
        )
    names = data.pop("quantized_modules", None)
    data.pop("skipped_modules", None)
    data.pop("packing", None)  # a packed export's grid, read by winq.export.packed.read_packing
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(
            f"corrupt {QUANT_FILE} in {path}: 'quantized_modules' must be a list of names"
        )
    try:
        return QuantConfig.from_dict(data), names
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt {QUANT_FILE} in {path}: {e}") from None


def check_folder(path: str | os.PathLike, name: str = "checkpoint") -> None:
    """Check that ``path`` is a readable checkpoint folder, without loading it.

    Reads ``config.json`` and the safetensors headers only, so a command can refuse a bad
    checkpoint before it builds anything. ``name`` starts each message (a command passes its
    flag, e.g. ``"--init"``).

    Raises:
        CheckpointError: a missing path, a file, a folder without ``config.json`` or weights, an
            unreadable folder, a corrupt ``config.json`` or safetensors header.
    """
    path = Path(path)
    where = f"{name} {str(path)!r}"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{where} is a file, expected a checkpoint folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CheckpointError(f"{where} is not readable (permission)")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{where} is not a checkpoint folder (no config.json)")
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: corrupt config.json ({e})") from None
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise CheckpointError(f"{where} has no model weights (*.safetensors)")
    from safetensors import SafetensorError, safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:  # reads the header only: cheap, and names the broken file
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{where}: corrupt {file.name} ({e})") from None


def check_checkpoint_arg(path: str | os.PathLike, flag: str) -> None:
    """A command's pre-load check of a checkpoint flag (``--ckpt``, ``--init``):
    :func:`check_folder`, its failure reported as a :class:`winq.cli.UsageError` (exit 2)."""
    from winq.cli import UsageError

    try:
        check_folder(path, flag)
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def _load_scales(path: Path, model: nn.Module) -> None:
    from safetensors import SafetensorError, safe_open

    wanted = {f"{name}.scale": layer for name, layer in quant_layers(model)}
    found: set[str] = set()
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key in wanted:
                        layer = wanted[key]
                        tensor = f.get_tensor(key)
                        if tensor.shape != layer.scale.shape:
                            raise CheckpointError(
                                f"scale {key} in {file.name} has shape {tuple(tensor.shape)}, "
                                f"expected {tuple(layer.scale.shape)}"
                            )
                        with torch.no_grad():
                            layer.scale.copy_(tensor)
                        found.add(key)
        except SafetensorError as e:
            raise CheckpointError(f"corrupt {file.name} in {str(path)!r}: {e}") from None
    missing = sorted(set(wanted) - found)
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {len(missing)} scale tensor(s), e.g. {missing[0]}"
        )


def load(
    path: str | os.PathLike,
    bits: float | str | None = None,
    *,
    requantize: bool = False,
    quantizer: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    load_tokenizer: bool = True,
) -> tuple[nn.Module, Any]:
    """Load a winq checkpoint or packed export, or a plain HF checkpoint quantized to ``bits``.

    Args:
        path: a checkpoint folder.
        bits: None keeps the checkpoint's own bits; for an FP checkpoint a width below 16
            quantizes on the fly. A width that differs from a winq checkpoint's is an error
            unless ``requantize`` (then its latent weights are re-quantized with fresh scales).
        requantize: allow ``bits`` to differ from a quantized checkpoint's.
        quantizer: override the quantizer when quantizing on the fly.
        dtype: torch dtype for the weights (default: as saved).
        device: where to put the model (default: CPU).
        attn_implementation: passed to ``from_pretrained`` (e.g. ``"eager"``).
        trust_remote_code: allow models whose code ships with the checkpoint (off by default).
        load_tokenizer: also load the tokenizer saved in the folder, if any.

    Returns:
        ``(model, tokenizer)``; the tokenizer is None when the folder has none.

    Raises:
        CheckpointError: a missing path, a folder that is not a checkpoint, a corrupt file,
            or a bit-width mismatch without ``requantize``.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_folder(path)
    saved = read_quant_config(path)
    packed_grid = None
    if saved is not None:
        from winq.export.packed import read_packing

        packed_grid = read_packing(path)  # None unless a packed export (winq.export.packed)
    if bits is not None:
        try:
            bits = parse_bits(bits)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    saved_bits = saved[0].bits if saved is not None else 16
    if bits is not None and bits != saved_bits and saved is not None and not requantize:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is {saved_bits}-bit but bits={bits} was asked; "
            "pass requantize to re-quantize its latent weights"
        )
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with quiet_transformers():  # the scales are "unexpected keys" to transformers
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load model from {str(path)!r}: {first}") from None
    # A packed export holds codes, not latent weights: it is always built as saved first, each
    # latent weight set to Q(W) itself.
    as_saved = saved is not None and (bits is None or bits == saved_bits)
    if saved is not None and (as_saved or packed_grid is not None):
        config, names = saved
        wanted = set(names)
        quantize_(model, config, filter_fn=lambda name, module: name in wanted)
        got = {name for name, _ in quant_layers(model)}
        if got != wanted:
            missing = sorted(wanted - got)
            raise CheckpointError(
                f"{QUANT_FILE} in {str(path)!r} names modules the model lacks, e.g. {missing[0]}"
            )
        _load_scales(path, model)
        if packed_grid is not None:
            from winq.export.packed import load_packed_weights

            load_packed_weights(path, model, packed_grid)
            if not as_saved:
                dequantize_(model)  # re-quantizing starts from Q(W), its only weights
    if not as_saved and bits is not None and bits != 16:
        # FP checkpoint, or a quantized one re-quantized: keep its granularity and noise
        # settings, take fresh scales from the latent weights.
        settings = saved[0].to_dict() if saved is not None else {}
        settings.update(bits=bits, quantizer=quantizer)
        try:
            quantize_(model, QuantConfig.from_dict(settings))
        except ValueError as e:
            raise CheckpointError(f"cannot quantize {str(path)!r} to {bits} bits: {e}") from None
    if device is not None:
        model.to(device)
    model.eval()
    tokenizer = None
    if load_tokenizer and any(
        (path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            logging.getLogger(__name__).warning("tokenizer in %s not loaded: %s", path, e)
    return model, tokenizer


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLinear) for m in model.modules())

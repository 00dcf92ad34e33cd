"""winq: Hessian spectra of quantized LLMs and WinQ quantization-aware training.

The torch-dependent API is loaded lazily (PEP 562), so ``import winq.plots`` — which reads
saved files only — never imports torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    # quantizers and layers
    "QuantConfig": "winq.config",
    "QuantLinear": "winq.nn",
    "quantize_": "winq.nn",
    "dequantize_": "winq.nn",
    "quant_layers": "winq.nn",
    "reset_": "winq.nn",
    "reset_with_stats_": "winq.nn",
    "RESET_MODES": "winq.nn",
    "snapshot_latents": "winq.nn",
    "restore_latents": "winq.nn",
    "linearized": "winq.nn",
    # exact measurements of the latent grid (no Hessian products)
    "clipped_fraction": "winq.nn",
    "clipped_fractions": "winq.nn",
    "level_codes": "winq.nn",
    "flip_fraction": "winq.nn",
    "grid_dispersion": "winq.nn",
    "LatentStat": "winq.nn",
    "quantizers": "winq.quantizers",
    # checkpoints
    "save": "winq.checkpoint",
    "load": "winq.checkpoint",
    "CheckpointError": "winq.checkpoint",
    # embedded default
    "embedded": "winq.embedded",
    "data": "winq.data",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'winq' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

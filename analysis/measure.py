"""One call from a model and batches to a finished :class:`~winq.analysis.spectrum.Spectrum`.

:func:`measure_spectrum` is what ``winq-spectrum`` and the reproduction study run: the SLQ
density of the selected parameters' Hessian (optionally per transformer block and per module
kind), the extreme eigenvalues by full-reorthogonalisation Lanczos with their residuals, a
Hutch++ trace, and — for a quantized model — the fraction of the selected latent weights that
the quantizer clips (the straight-through estimator gives those weights zero gradient, so each
contributes an exact zero eigenvalue, :mod:`winq.quantizers`; the clipped fraction is the part
of the near-zero mass that is saturation rather than flatness). Everything measured is recorded in
the spectrum's metadata, so a saved folder says how it was made.

This module is where the estimators meet the core: it recognises ``QuantLinear`` layers and
asks :mod:`winq.nn` for the clipped fraction; the estimator modules themselves know nothing
of quantization.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from winq.analysis import diagnostics
from winq.analysis.blocks import GROUPINGS, group_parameters, per_block_slq
from winq.analysis.hvp import HessianOperator
from winq.analysis.lanczos import lanczos
from winq.analysis.slq import slq
from winq.analysis.spectrum import Spectrum
from winq.analysis.trace import hutchinson

__all__ = ["TOP_K_STEPS", "TOP_K_TOL", "measure_spectrum", "quantization_facts"]

# Lanczos steps and relative residual tolerance of the top-k run: the k eigenvalues of largest
# magnitude converge first (Parlett 1998, ch. 12), and the run stops as soon as they reach tol.
TOP_K_STEPS = 100
TOP_K_TOL = 1e-4


def _is_quantized(model: nn.Module) -> bool:
    return any(hasattr(module, "quantized_weight") for module in model.modules())


def quantization_facts(model: nn.Module, names: Sequence[str] | None = None) -> dict:
    """``bits``, ``quantizer``, ``group_size`` and the clipped fraction of a model's selection.

    For a model without QuantLinear layers: ``bits`` 16 and no clipped fraction.
    """
    if not _is_quantized(model):
        return {"bits": 16, "quantizer": None, "clipped_fraction": None}
    from winq.nn import clipped_fraction, quant_layers

    layers = list(quant_layers(model))
    config = layers[0][1].config
    selected = None if names is None else [n for n in names if n.endswith(".weight")]
    return {
        "bits": config.bits,
        "quantizer": config.quantizer,
        "group_size": config.group_size,
        "clipped_fraction": clipped_fraction(model, selected),
    }


def measure_spectrum(
    model: nn.Module,
    batches: Iterable[Mapping],
    *,
    params: str | Sequence[str] = "linear",
    probes: int = 8,
    steps: int | Sequence[int] = 60,
    reorth: str = "none",
    top_k: int = 0,
    top_k_steps: int = TOP_K_STEPS,
    trace: int = 0,
    backend: str = "double_backward",
    seed: int = 0,
    eps: float = diagnostics.DEFAULT_ZERO_EPS,
    relative: bool = False,
    sigma: float = diagnostics.DEFAULT_SIGMA,
    ci: float = diagnostics.DEFAULT_CI,
    per_layer: bool = False,
    group_by: Sequence[str] = GROUPINGS,
    process_group=None,
    basis_device: torch.device | str | None = None,
    progress: bool = True,
    metadata: Mapping | None = None,
) -> Spectrum:
    """Measure the Hessian spectrum of ``model``'s causal-LM loss on ``batches``.

    Args:
        model: a (quantized) causal LM; its mode, attention setting and ``requires_grad``
            flags are restored afterwards (see :class:`~winq.analysis.hvp.HessianOperator`).
        batches: this rank's batches (dicts with ``input_ids`` and optional ``labels`` /
            ``attention_mask``).
        params: parameter selection, as in :func:`~winq.analysis.hvp.select_parameters`.
        probes, steps, reorth, seed: SLQ settings (:func:`~winq.analysis.slq.slq`). Several
            ``steps`` (e.g. ``[30, 60, 120]``) run the largest once and record the others in
            ``metadata["report_steps"]``: the saved summary then has the diagnostics at each
            (``by_steps``), from the same probes (:meth:`~winq.analysis.Spectrum.at_steps`).
        top_k: also compute the ``top_k`` eigenvalues of largest magnitude by full-reorth
            Lanczos (at most ``top_k_steps`` products, stopping at relative residual
            :data:`TOP_K_TOL`), with residual bounds; 0 skips it.
        trace: Hutch++ products for a trace estimate with standard error; 0 uses the SLQ
            estimate.
        backend: ``"double_backward"`` or ``"func"``.
        eps, relative, sigma: near-zero threshold and density broadening saved with the
            spectrum (the summary uses them).
        ci: confidence level of the intervals over probes in the summary.
        per_layer: also one spectrum per group of ``group_by`` (transformer block
            ``layer.<i>`` and module kind ``kind.<q_proj>``...), stored in ``blocks``.
        process_group: all-reduce products over this group (data parallel).
        basis_device: where the top-k Lanczos basis lives (``"cpu"`` spares accelerator
            memory).
        progress: tqdm bars.
        metadata: extra facts recorded (checkpoint, step, ...); they override measured ones.

    Returns:
        The spectrum; ``metadata`` holds the selection, sizes, settings, bits, quantizer,
        clipped fraction, top-k residuals and wall seconds.

    Raises:
        ValueError: an empty selection, bad estimator settings.
    """
    report_steps = sorted({int(m) for m in steps}) if isinstance(steps, Sequence) else None
    if report_steps is not None and not report_steps:
        raise ValueError("steps must name at least one number of Lanczos steps")
    steps = max(report_steps) if report_steps else steps
    for name, value, low in (("probes", probes, 1), ("steps", steps, 1), ("top_k", top_k, 0),
                             ("top_k_steps", top_k_steps, 1), ("trace", trace, 0)):  # fmt: skip
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    if trace and trace < 3:
        raise ValueError(f"trace needs at least 3 Hutch++ products, got {trace}")
    start = time.perf_counter()
    with HessianOperator(
        model, batches, params=params, backend=backend, process_group=process_group
    ) as operator:
        names = list(operator.param_names)
        if top_k > operator.num_params:
            raise ValueError(f"top_k {top_k} exceeds the {operator.num_params} selected parameters")
        common = {"probes": probes, "steps": steps, "reorth": reorth, "seed": seed,
                  "progress": progress}  # fmt: skip
        if per_layer:
            spectrum = per_block_slq(operator, group_by=group_by, **common)
        else:
            spectrum = slq(operator, **common)
        extra: dict = {}
        if top_k:
            run = lanczos(
                operator,
                steps=min(int(top_k_steps), operator.num_params),
                reorth="full",
                basis_device=basis_device,
                seed=seed,
                tol=TOP_K_TOL,
                num_converged=int(top_k),
                which="magnitude",
            )
            order = np.argsort(-np.abs(run.eigenvalues), kind="stable")[: int(top_k)]
            spectrum.top_eigenvalues = [float(run.eigenvalues[i]) for i in order]
            residuals = [float(run.residuals[i]) for i in order]
            extra["top_k"] = {
                "eigenvalues": spectrum.top_eigenvalues,
                "residuals": residuals,
                "relative_residuals": [
                    r / abs(v) if v else math.inf
                    for r, v in zip(residuals, spectrum.top_eigenvalues)
                ],
                "lanczos_steps": int(run.steps),
                "converged": bool(
                    all(
                        r <= TOP_K_TOL * abs(v) for r, v in zip(residuals, spectrum.top_eigenvalues)
                    )
                    or run.breakdown
                ),
            }
        if trace:
            estimate = hutchinson(operator, samples=int(trace), method="hutch++", seed=seed)
            spectrum.trace = float(estimate.estimate)
            spectrum.trace_stderr = float(estimate.stderr)
            spectrum.trace_method = "hutch++"
            extra["trace_matvecs"] = int(estimate.num_matvecs)
        extra.update(operator.metadata())

    facts = quantization_facts(model, names)
    extra.update(facts)
    spectrum.eps, spectrum.relative, spectrum.sigma = float(eps), bool(relative), float(sigma)
    spectrum.ci = float(ci)
    if report_steps is not None and len(report_steps) > 1:
        extra["report_steps"] = report_steps
    if per_layer and facts["clipped_fraction"] is not None:
        from winq.nn import clipped_fraction

        groups = group_parameters(names, group_by)
        for block_name, block in spectrum.blocks.items():
            weights = [n for n in groups.get(block_name, []) if n.endswith(".weight")]
            block.metadata["clipped_fraction"] = clipped_fraction(model, weights)
    for block in spectrum.blocks.values():
        block.eps, block.relative, block.sigma = spectrum.eps, spectrum.relative, spectrum.sigma
        block.ci = spectrum.ci
    spectrum.metadata.update(extra)
    spectrum.metadata["near_zero_eps"] = float(eps)
    spectrum.metadata["near_zero_relative"] = bool(relative)
    spectrum.metadata["sigma"] = float(sigma)
    spectrum.metadata["wall_seconds"] = time.perf_counter() - start
    spectrum.metadata.update(metadata or {})
    return spectrum

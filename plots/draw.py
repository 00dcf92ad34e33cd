"""Draw every figure the inputs support; say why the others were skipped."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from winq.plots.compare import group_by_bits
from winq.plots.figures import (
    plot_alpha_sweep,
    plot_density_over_training,
    plot_latent_mechanism,
    plot_loss_curves,
    plot_magnitudes_by_bits,
    plot_spectrum_over_training,
    qat_name,
)
from winq.plots.readers import Inputs, SpectrumData, format_bits
from winq.plots.style import FORMATS, save
from winq.plots.table import write_summary
from winq.quadrature import DEFAULT_ZERO_EPS

__all__ = ["DEFAULT_EPS", "DrawResult", "draw_all", "slug"]

DEFAULT_EPS = DEFAULT_ZERO_EPS  # the WinQ paper's "probability of a zero eigenvalue" threshold


def slug(text: str) -> str:
    """A file-name-safe version of a label: ``"2-bit WinQ fixed" -> "2bit-winq-fixed"``."""
    text = text.lower().replace("1.58", "1p58").replace("-bit", "bit")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "figure"


def _bits_slug(bits: float | int | None) -> str:
    return slug(format_bits(bits)) if bits is not None else "unknown-bits"


@dataclass
class DrawResult:
    """Files written and figures skipped (``"name: reason"``)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def draw_all(
    inputs: Inputs,
    out_dir: str | os.PathLike,
    *,
    eps: float | None = DEFAULT_EPS,
    sigma: float | None = None,
    mass_sigma: float | None = None,
    formats: Sequence[str] = FORMATS,
) -> DrawResult:
    """Draw every figure the inputs support into ``out_dir``, plus the summary tables.

    Figures: ``density_<run>`` (one per run or series of spectra), ``magnitudes_by_bits``,
    ``spectrum_over_training_<bits>``, ``loss_<bits>`` and ``latent_mechanism_<bits>`` (one per
    bit width with runs; the last where a run logged the latent grid), ``alpha_sweep``; tables
    ``summary_spectra.csv``, ``summary_runs.csv``, ``summary.md``.

    Args:
        inputs: from :func:`winq.plots.load_inputs`.
        out_dir: destination folder (created if missing).
        eps: near-zero threshold; None uses each spectrum's saved one.
        sigma: density kernel width; None uses the saved densities.
        mass_sigma: figures quote the near-zero mass of the density broadened by a Gaussian of
            this width (the WinQ notebooks' convention); None counts the Ritz nodes inside ε,
            as saved. The summary tables always give the saved values.
        formats: image formats to write.
    """
    out_dir = Path(out_dir)
    result = DrawResult()

    def emit(name: str, draw) -> None:
        try:
            figure = draw()
        except ValueError as e:
            result.skipped.append(f"{name}: {e}")
            return
        result.written.extend(save(figure, out_dir, name, formats))

    runs_by_label = {run.label: run for run in inputs.runs}

    # 1. density over training: one figure per run (or per series of loose spectra)
    series: dict[str, list[SpectrumData]] = {}
    for spectrum in inputs.spectra:
        if spectrum.alpha is not None or spectrum.step is None:
            continue
        key = spectrum.run or f"{format_bits(spectrum.bits)} spectra"
        series.setdefault(key, []).append(spectrum)
    if not series:
        result.skipped.append("density_*: no spectra with a training step")
    for key, spectra in series.items():
        run = runs_by_label.get(key)
        if run is not None:
            title = f"Eigenvalue density over training: {run.label} ({run.path.name})"
        else:
            title = f"Eigenvalue density over training: {key}"
        emit(
            f"density_{slug(key)}",
            lambda s=spectra, t=title: plot_density_over_training(
                s, title=t, sigma=sigma, eps=eps, mass_sigma=mass_sigma
            ),
        )

    # 2. magnitudes by bit width: baseline runs' and loose spectra first
    winq_runs = {run.label for run in inputs.runs if not run.is_baseline}
    preferred = [s for s in inputs.spectra if s.run not in winq_runs]
    others = [s for s in inputs.spectra if s.run in winq_runs]
    emit(
        "magnitudes_by_bits",
        lambda: plot_magnitudes_by_bits(preferred + others, eps=eps, mass_sigma=mass_sigma),
    )

    # 3, 5 and 6. per bit width: spectrum over training, loss curves, latent grid
    if not inputs.runs:
        result.skipped.append(
            "spectrum_over_training_*, loss_*, latent_mechanism_*: no run folders"
        )
    for bits, runs in group_by_bits(inputs.runs).items():
        name = _bits_slug(bits)
        kinds = {run.is_baseline for run in runs}
        versus = ": baseline vs WinQ" if kinds == {True, False} else ""
        emit(
            f"spectrum_over_training_{name}",
            lambda r=runs, b=bits, v=versus: plot_spectrum_over_training(
                r, eps=eps, mass_sigma=mass_sigma, title=f"Hessian spectrum over {qat_name(b)}{v}"
            ),
        )
        emit(
            f"loss_{name}",
            lambda r=runs, b=bits, v=versus: plot_loss_curves(
                r, title=f"Loss over {qat_name(b)}{v}"
            ),
        )
        emit(
            f"latent_mechanism_{name}",
            lambda r=runs, b=bits, v=versus: plot_latent_mechanism(
                r, title=f"Latent grid over {qat_name(b)}{v}"
            ),
        )

    # 4. α sweep
    emit("alpha_sweep", lambda: plot_alpha_sweep(inputs.spectra, eps=eps, mass_sigma=mass_sigma))

    # 6. summary tables
    result.written.extend(write_summary(inputs, out_dir))
    return result

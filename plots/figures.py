"""The paper's figures, each a function of loaded data that returns a Figure.

Conventions (those of the WinQ paper's Hessian figures): the eigenvalue density is shown as
probability mass per grid cell on a log axis from 1e-9 to 1, from a Gaussian kernel of width
σ = 5e-3 on a 400-point grid; "near-zero mass" is the spectral mass with |λ| < ε, ε = 1.5e-3.
The α of an interpolation reset weights the latent weights: W ← αW + (1−α)Q(W), so α = 1 is no
reset. Figures only read saved values; see :mod:`winq.plots.readers` for what is re-broadened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from winq.plots.compare import baseline_for, speedup
from winq.plots.readers import LATENT_GRID_COLUMNS, RunData, SpectrumData, format_bits
from winq.plots.style import CYCLE, PALETTE, bits_color, mode_color, new_figure, style
from winq.quadrature import format_estimate

__all__ = [
    "MASS_FLOOR",
    "format_step",
    "plot_alpha_sweep",
    "plot_density_over_training",
    "plot_latent_mechanism",
    "plot_loss_curves",
    "plot_magnitudes_by_bits",
    "plot_spectrum_over_training",
    "qat_name",
]

MASS_FLOOR = 1e-9  # bottom of the log probability-mass axis


def format_step(step: int | None) -> str:
    """``2000 -> "2k"``, ``1500 -> "1.5k"``, ``240000 -> "240k"``, ``2_000_000 -> "2M"``."""
    if step is None:
        return "?"
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if abs(step) >= size:
            return f"{step / size:.3g}{suffix}"
    return str(step)


def qat_name(bits: float | int | None) -> str:
    """``"2-bit QAT"``; ``"FP training"`` for 16 bits."""
    return "FP training" if bits is not None and bits >= 16 else f"{format_bits(bits)} QAT"


def _evenly(items: Sequence, count: int) -> list:
    """At most ``count`` items, evenly spaced, always keeping the first and the last."""
    if len(items) <= count:
        return list(items)
    index = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))
    return [items[i] for i in index]


class _PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which log ticks to label, written as 0.2, 3, 40 (not 2e-01)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _plain_log_axis(ax) -> None:
    """Log y axis labelled 0.3, 1, 3; short ranges get labelled minor ticks."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))


def _eps_text(eps_values: set, sigma: float | None = None) -> str:
    eps_values = {e for e in eps_values if e is not None}
    text = f"|λ| < {next(iter(eps_values)):.2g}" if len(eps_values) == 1 else "|λ| < ε (as saved)"
    return text if sigma is None else f"{text}, σ = {sigma:.2g}"


# --------------------------------------------------------------------------------------------
# 1. density over training


def _mass_points(ax, x, values, low, high, resolved, *, color, label=None, marker="o", ls="-"):
    """Masses with their uncertainty: a line through the points, error bars for the interval
    (none where it is unknown), filled markers where the mass is resolved and hollow ones where
    it is not or where that is unknown."""
    x, values = np.asarray(x, dtype=float), np.asarray(values, dtype=float)
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    ax.plot(x, values, color=color, ls=ls, lw=1.0, label=label)
    known = np.isfinite(low) & np.isfinite(high) & np.isfinite(values)
    if known.any():
        below = np.clip(values[known] - low[known], 0.0, None)
        above = np.clip(high[known] - values[known], 0.0, None)
        ax.errorbar(
            x[known], values[known], yerr=[below, above], fmt="none", ecolor=color,
            elinewidth=0.8, capsize=2.0, alpha=0.8,
        )  # fmt: skip
    solid = np.array([flag is True for flag in resolved], dtype=bool)
    ax.plot(x[solid], values[solid], ls="none", marker=marker, color=color)
    ax.plot(x[~solid], values[~solid], ls="none", marker=marker, color=color, mfc="white")


MASS_LEGEND = "bars: 95% interval over probes; hollow: not resolved by the quadrature"


def _estimate_text(estimate) -> str:
    text = format_estimate(estimate.value, estimate.ci)
    return text if estimate.resolved is not False else f"{text} (unresolved)"


def plot_density_over_training(
    spectra: Sequence[SpectrumData],
    *,
    title: str | None = None,
    sigma: float | None = None,
    eps: float | None = None,
    mass_sigma: float | None = None,
    max_panels: int = 6,
) -> Figure:
    """Eigenvalue density (log probability mass) at several steps of one run, a panel per step.

    Args:
        spectra: spectra of one run (α-sweep spectra and spectra without a step are ignored).
        title: figure title (e.g. the run label).
        sigma: kernel width; None uses the saved density.
        eps: near-zero threshold for the mass quoted in each panel; None uses the saved one.
        mass_sigma: quote the mass of the density broadened by a Gaussian of this width (the
            WinQ notebooks' convention); None counts the Ritz nodes inside ε (as saved).
        max_panels: at most this many steps, evenly spaced, first and last kept.

    Raises:
        ValueError: no spectrum with a step and a density (or Ritz nodes).
    """
    by_step: dict[int, SpectrumData] = {}
    for spectrum in spectra:
        if spectrum.alpha is None and spectrum.step is not None:
            by_step[spectrum.step] = spectrum
    curves = []
    for step in sorted(by_step):
        result = by_step[step].mass_per_bin(sigma)
        if result is not None:
            curves.append((by_step[step], *result))
    if not curves:
        raise ValueError("no spectrum with a training step and a saved density or Ritz nodes")
    curves = _evenly(curves, max_panels)

    columns = min(len(curves), 3)
    rows = math.ceil(len(curves) / columns)
    with style():
        if len(curves) == 1:
            fig = new_figure("one", height=2.6)
        else:
            fig = new_figure("two", height=2.1 * rows + 0.35)
        axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True)).ravel()
        x_low = min(float(grid.min()) for _, grid, _ in curves)
        x_high = max(float(grid.max()) for _, grid, _ in curves)
        spread_shown = False
        for ax, (spectrum, grid, mass) in zip(axes, curves):
            color = bits_color(spectrum.bits)
            shown = np.clip(mass, MASS_FLOOR * 1e-3, None)
            probes = spectrum.per_probe_density(grid, sigma) if len(grid) > 1 else None
            if probes is not None and len(probes) > 1:
                low = np.clip(probes.min(axis=0), MASS_FLOOR * 1e-3, None)
                high = np.clip(probes.max(axis=0), MASS_FLOOR * 1e-3, None)
                ax.fill_between(grid, low, high, color=color, alpha=0.3, lw=0)
                spread_shown = True
            else:
                ax.fill_between(grid, MASS_FLOOR * 1e-3, shown, color=color, alpha=0.18, lw=0)
            ax.plot(grid, shown, color=color, lw=1.0)
            ax.axvline(0.0, color=PALETTE["black"], lw=0.6, ls=":", alpha=0.7)
            ax.set_yscale("log")
            ax.set_ylim(MASS_FLOOR, 1.0)
            ax.set_xlim(x_low, x_high)
            ax.set_title(f"step {format_step(spectrum.step)} of {qat_name(spectrum.bits)}")
            near_zero, used_eps = spectrum.mass("near_zero", eps, mass_sigma)
            lines = []
            if near_zero.value is not None and math.isfinite(near_zero.value):
                eps_note = f"{used_eps:.2g}" if used_eps is not None else "ε"
                kind = "" if mass_sigma is None else " (broadened)"
                lines.append(f"mass |λ|≤{eps_note}{kind}: {_estimate_text(near_zero)}")
            if spectrum.lambda_max is not None and spectrum.lambda_min is not None:
                lines.append(f"λ ∈ [{spectrum.lambda_min:.3g}, {spectrum.lambda_max:.3g}]")
            if lines:
                ax.text(
                    0.97, 0.95, "\n".join(lines), transform=ax.transAxes, ha="right",
                    va="top", fontsize=6.5,
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "#cccccc", "lw": 0.5},
                )  # fmt: skip
        for ax in axes[len(curves) :]:
            ax.set_visible(False)
        for index, ax in enumerate(axes[: len(curves)]):
            if index % columns == 0:
                ax.set_ylabel("probability mass")
            if index >= len(curves) - columns:
                ax.set_xlabel("eigenvalue λ")
                ax.tick_params(labelbottom=True)
        sigma_used = sigma if sigma is not None else curves[0][0].value("density_sigma")
        separator = "\n" if len(curves) == 1 else "; "
        note = f"{separator}Gaussian σ = {sigma_used:.2g}" if sigma_used is not None else ""
        if spread_shown:
            note += "; band: range over probes"
        fig.suptitle((title or "Hessian eigenvalue density over training") + note)
    return fig


# --------------------------------------------------------------------------------------------
# 2. magnitudes by bit width


def plot_magnitudes_by_bits(
    spectra: Sequence[SpectrumData],
    *,
    eps: float | None = None,
    mass_sigma: float | None = None,
    max_steps: int = 4,
) -> Figure:
    """|λ|max, |λmin| and near-zero mass against bit width, at steps measured for every width.

    Where several spectra share a bit width and step the first is used (pass baseline runs'
    spectra first). When no step is common to all widths, each width's last step is shown.
    ``mass_sigma``: see :func:`plot_density_over_training`.

    Raises:
        ValueError: fewer than two bit widths with a stepped spectrum.
    """
    table: dict[float | int, dict[int, SpectrumData]] = {}
    for spectrum in spectra:
        if spectrum.alpha is not None or spectrum.bits is None or spectrum.step is None:
            continue
        table.setdefault(spectrum.bits, {}).setdefault(spectrum.step, spectrum)
    if len(table) < 2:
        raise ValueError(f"needs spectra at two or more bit widths (found {len(table)})")
    widths = sorted(table)
    common = sorted(set.intersection(*(set(steps) for steps in table.values())))
    if common:
        groups = [(f"step {format_step(s)}", {b: table[b][s] for b in widths}) for s in common]
        groups = _evenly(groups, max_steps)
    else:
        groups = [("last measured step", {b: table[b][max(table[b])] for b in widths})]

    quantities = [
        ("|λ|max", lambda s: s.abs_lambda_max, True),
        ("|λmin|", lambda s: None if s.lambda_min is None else abs(s.lambda_min), True),
        ("near-zero mass", None, False),
    ]
    eps_used = {s.mass("near_zero", eps, mass_sigma)[1] for _, g in groups for s in g.values()}
    positions = np.arange(len(widths))
    with style():
        fig = new_figure("two", height=2.5)
        axes = fig.subplots(1, 3)
        shades = _step_shades(len(groups))
        for ax, (name, getter, log) in zip(axes, quantities):
            for (label, chosen), color in zip(groups, shades):
                if getter is None:
                    masses = [chosen[b].mass("near_zero", eps, mass_sigma)[0] for b in widths]
                    _mass_points(
                        ax, positions, [m.value for m in masses], [m.ci[0] for m in masses],
                        [m.ci[1] for m in masses], [m.resolved for m in masses], color=color,
                        label=label,
                    )  # fmt: skip
                    continue
                values = [getter(chosen[b]) for b in widths]
                values = [np.nan if v is None else v for v in values]
                if log:
                    values = [v if v > 0 else np.nan for v in values]
                ax.plot(positions, values, marker="o", color=color, label=label)
            ax.set_xticks(positions, [format_bits(b) for b in widths])
            ax.set_xlabel("bit width")
            if log:
                _plain_log_axis(ax)
                ax.set_title(name)
            else:
                ax.set_ylim(0, 1.02)
                ax.set_title(f"near-zero mass ({_eps_text(eps_used, mass_sigma)})")
        axes[0].set_ylabel("magnitude")
        axes[2].set_ylabel("spectral mass")
        axes[0].legend(loc="best")
        fig.suptitle(f"Hessian eigenvalue magnitudes by bit width\n{MASS_LEGEND}")
    return fig


def _step_shades(count: int) -> list[str]:
    """Colours from early (light) to late (dark) steps: Okabe–Ito sky blue -> blue -> black."""
    ramp = [PALETTE["sky_blue"], PALETTE["blue"], PALETTE["reddish_purple"], PALETTE["black"]]
    if count <= len(ramp):
        return ramp[len(ramp) - count :] if count > 1 else [PALETTE["blue"]]
    return [CYCLE[i % len(CYCLE)] for i in range(count)]


# --------------------------------------------------------------------------------------------
# 3. spectrum over training, baseline vs WinQ


def _run_colors(runs: Sequence[RunData]) -> list[str]:
    colors, used = [], set()
    for run in runs:
        color = mode_color(run.mode)
        if color in used:
            color = next((c for c in CYCLE if c not in used), color)
        used.add(color)
        colors.append(color)
    return colors


def _mark_resets(ax, runs: Sequence[RunData], colors: Sequence[str]) -> None:
    for run, color in zip(runs, colors):
        for step in run.reset_steps:
            ax.axvline(step, color=color, lw=0.8, ls=(0, (2, 2)), alpha=0.75, zorder=0)


def plot_spectrum_over_training(
    runs: Sequence[RunData],
    *,
    eps: float | None = None,
    mass_sigma: float | None = None,
    title: str | None = None,
) -> Figure:
    """Near-zero mass, negative mass and eigenvalue range over training, one line per run.

    Reset steps of each run are vertical dashed lines in the run's colour. Values come from the
    run's spectra, or from its controller diagnostics when it saved no spectra.
    ``mass_sigma``: see :func:`plot_density_over_training` (spectra only).

    Raises:
        ValueError: no run has a spectral measurement with a step.
    """
    series = [(run, run.spectrum_series(eps, mass_sigma)) for run in runs]
    series = [(run, frame) for run, frame in series if not frame.empty]
    if not series:
        raise ValueError("no run has spectra or diagnostics over training")
    runs = [run for run, _ in series]
    colors = _run_colors(runs)
    with style():
        fig = new_figure("two", height=2.7)
        axes = fig.subplots(1, 3, sharex=True)
        labels = []
        for (run, frame), color in zip(series, colors):
            steps = frame["step"].to_numpy(float)
            label = run.label
            if frame["source"].iloc[0] == "diagnostics":
                label += " (logged diagnostics)"
            labels.append(label)
            kw = {"color": color, "marker": "o", "label": label}
            for ax, kind in zip(axes[:2], ("near_zero", "negative")):
                _mass_points(
                    ax, steps, frame[f"{kind}_mass"], frame[f"{kind}_low"],
                    frame[f"{kind}_high"], list(frame[f"{kind}_resolved"]), color=color,
                    label=label,
                )  # fmt: skip
            top = frame["lambda_max"].to_numpy(float)
            bottom = np.abs(frame["lambda_min"].to_numpy(float))
            axes[2].plot(steps, np.where(top > 0, top, np.nan), **kw)
            axes[2].plot(
                steps, np.where(bottom > 0, bottom, np.nan), color=color, marker="s",
                ls="--", mfc="white",
            )  # fmt: skip
        for ax in axes:
            _mark_resets(ax, runs, colors)
            ax.set_xlabel("training step")
        sources = {frame["source"].iloc[0] for _, frame in series}
        eps_note = f"|λ| < {eps:.2g}" if eps is not None else "|λ| < ε"
        if mass_sigma is not None:
            eps_note += f", σ = {mass_sigma:.2g}"
        if sources == {"diagnostics"}:
            eps_note = "as logged"
        axes[0].set_title(f"near-zero mass ({eps_note})")
        axes[0].set_ylabel("spectral mass")
        axes[1].set_title(f"negative mass ({eps_note.replace('|λ| <', 'λ < −')})")
        axes[2].set_title("eigenvalue range")
        _plain_log_axis(axes[2])
        axes[2].set_ylabel("magnitude")
        handles = [
            Line2D([], [], color=c, marker="o", label=label) for label, c in zip(labels, colors)
        ]
        if any(run.reset_steps for run in runs):
            handles.append(Line2D([], [], color="#666666", ls=(0, (2, 2)), label="WinQ reset"))
        handles += [
            Line2D([], [], color="#444444", marker="o", label="λmax"),
            Line2D([], [], color="#444444", marker="s", ls="--", mfc="white", label="|λmin|"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6))
        fig.suptitle(f"{title or 'Hessian spectrum over training'}\n{MASS_LEGEND}")
    return fig


# --------------------------------------------------------------------------------------------
# 4. α sweep


def plot_alpha_sweep(
    spectra: Sequence[SpectrumData],
    *,
    eps: float | None = None,
    mass_sigma: float | None = None,
    title: str | None = None,
) -> Figure:
    """Near-zero mass against the interpolation α of a trial reset, one line per sweep.

    ``mass_sigma``: see :func:`plot_density_over_training`.

    A sweep is the set of spectra with ``metadata.alpha`` sharing run, bit width and step. Error
    bars are the 95% Student-t interval over SLQ probes (:meth:`SpectrumData.mass`; none when
    neither Ritz nodes nor a saved interval exist); hollow markers are masses the quadrature
    does not resolve.

    Raises:
        ValueError: no sweep has two or more α values.
    """
    sweeps: dict[tuple, dict[float, SpectrumData]] = {}
    for spectrum in spectra:
        if spectrum.alpha is None:
            continue
        key = (spectrum.run or "", spectrum.bits, spectrum.step)
        sweeps.setdefault(key, {})[spectrum.alpha] = spectrum
    sweeps = {k: v for k, v in sweeps.items() if len(v) >= 2}
    if not sweeps:
        raise ValueError("needs spectra at two or more α values (metadata.alpha) of one checkpoint")
    eps_used, probe_counts = set(), set()
    with style():
        fig = new_figure("one", height=2.7)
        ax = fig.subplots()
        for index, ((run, bits, step), by_alpha) in enumerate(sorted(sweeps.items(), key=str)):
            alphas = sorted(by_alpha)
            masses = []
            for alpha in alphas:
                spectrum = by_alpha[alpha]
                estimate, used = spectrum.mass("near_zero", eps, mass_sigma)
                eps_used.add(used)
                masses.append(estimate)
                rules = spectrum.rules()
                if rules is not None:
                    probe_counts.add(len(rules[0]))
            color = bits_color(bits) if len(sweeps) > 1 else PALETTE["blue"]
            if len(sweeps) > 1 and len({k[1] for k in sweeps}) < len(sweeps):
                color = CYCLE[index % len(CYCLE)]
            label = f"{run or qat_name(bits)}, step {format_step(step)}"
            _mass_points(
                ax, alphas, [m.value for m in masses], [m.ci[0] for m in masses],
                [m.ci[1] for m in masses], [m.resolved for m in masses], color=color,
                label=label,
            )  # fmt: skip
        ax.set_xlabel("interpolation α   (W ← αW + (1−α)Q(W))")
        ax.set_ylabel(f"near-zero mass ({_eps_text(eps_used, mass_sigma)})")
        ax.set_xlim(-0.05, 1.05)
        counts = f"{min(probe_counts)}" if probe_counts else "?"
        if probe_counts and len(probe_counts) > 1:
            counts += f"–{max(probe_counts)}"
        ax.legend(loc="best", title=f"bars: 95% interval over {counts} probes\nhollow: unresolved")
        ax.set_title(title or "Near-zero mass after a trial reset")
    return fig


# --------------------------------------------------------------------------------------------
# 5. loss curves with speedup


def _smooth(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with bias correction (like pandas ``ewm(adjust=True)``)."""
    if span <= 1 or len(values) < 3:
        return values
    decay = 1.0 - 2.0 / (span + 1.0)
    out = np.empty_like(values)
    num = den = 0.0
    for i, v in enumerate(values):
        num = decay * num + v
        den = decay * den + 1.0
        out[i] = num / den
    return out


def plot_loss_curves(runs: Sequence[RunData], *, title: str | None = None) -> Figure:
    """Training and held-out loss against step for runs of one bit width, with the speedup.

    The held-out panel marks the baseline's final held-out loss (dashed) and the first step at
    which each WinQ run reaches it (star); the legend gives the speedup
    (see :mod:`winq.plots.compare`).

    Raises:
        ValueError: no run has a training or held-out loss.
    """
    runs = [r for r in runs if not (r.loss.empty and r.eval_loss.empty)]
    if not runs:
        raise ValueError("no run has a training or held-out loss")
    colors = _run_colors(runs)
    with style():
        fig = new_figure("two", height=3.3)
        train_ax, eval_ax = fig.subplots(1, 2, sharex=True)
        train_tails, held_out_values = [], []
        for run, color in zip(runs, colors):
            loss = run.loss
            if not loss.empty:
                steps = loss["step"].to_numpy(float)
                values = loss["loss"].to_numpy(float)
                train_tails.append(values[len(values) // 10 :])
                train_ax.plot(steps, values, color=color, lw=0.6, alpha=0.25)
                span = max(1, len(values) // 25)
                train_ax.plot(steps, _smooth(values, span), color=color, label=run.label)
            held_out = run.eval_loss
            if not held_out.empty:
                held_out_values.append(held_out["eval_loss"].to_numpy(float))
                eval_ax.plot(
                    held_out["step"], held_out["eval_loss"], color=color, marker="o",
                    label=run.label,
                )  # fmt: skip
        for ax in (train_ax, eval_ax):
            _mark_resets(ax, runs, colors)
            ax.set_xlabel("training step")
        # y range: every held-out point, and the training loss past its first 10% (the first
        # steps of QAT can sit far above everything else)
        tail = np.concatenate(train_tails) if train_tails else np.array([])
        held = np.concatenate(held_out_values) if held_out_values else np.array([])
        tail, held = tail[np.isfinite(tail)], held[np.isfinite(held)]
        if tail.size or held.size:
            both = np.concatenate([tail, held])
            high = max([float(np.percentile(tail, 99))] if tail.size else [], default=-np.inf)
            high = max(high, float(held.max()) if held.size else -np.inf)
            low = float(both.min())
            pad = 0.06 * max(high - low, 1e-3)
            for ax in (train_ax, eval_ax):
                ax.set_ylim(low - pad, high + pad)
        speedups: dict[int, str] = {}
        target_handles = []
        for index, (run, color) in enumerate(zip(runs, colors)):
            baseline = baseline_for(run, runs)
            result = speedup(baseline, run) if baseline is not None else None
            if result is None:
                continue
            if not any(h.get_label().startswith(baseline.label) for h in target_handles):
                eval_ax.axhline(result.target, color=PALETTE["black"], lw=0.8, ls="--", zorder=1)
                target_handles.append(
                    Line2D([], [], color=PALETTE["black"], lw=0.8, ls="--",
                           label=f"{baseline.label} final: {result.target:.3f}")
                )  # fmt: skip
            if result.steps is not None:
                reached = run.eval_loss
                y = float(reached.loc[reached["step"] == result.steps, "eval_loss"].iloc[0])
                eval_ax.plot(
                    [result.steps], [y], marker="*", ms=10, color=color, mec="white", mew=0.6,
                    zorder=5, ls="none",
                )  # fmt: skip
                speedups[index] = (
                    f"{result.ratio:.2f}× ({result.steps} vs {result.baseline_steps} steps)"
                    if result.ratio
                    else f"reached at step {result.steps}"
                )
            else:
                speedups[index] = "not reached"
        train_ax.set_title("training loss (EMA; raw faint)")
        train_ax.set_ylabel("loss")
        eval_ax.set_title("held-out loss")
        handles = [
            Line2D([], [], color=c, marker="o",
                   label=r.label + (f" — {speedups[i]}" if i in speedups else ""))
            for i, (r, c) in enumerate(zip(runs, colors))
        ]  # fmt: skip
        handles += target_handles
        if any(text != "not reached" for text in speedups.values()):
            handles.append(
                Line2D([], [], color="#444444", marker="*", ms=8, ls="none",
                       label="first reaches the baseline's final held-out loss")
            )  # fmt: skip
        if any(run.reset_steps for run in runs):
            handles.append(Line2D([], [], color="#666666", ls=(0, (2, 2)), label="WinQ reset"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2)
        fig.suptitle(title or "Loss over training")
    return fig


# --------------------------------------------------------------------------------------------
# 6. the latent grid over training (the mechanism a WinQ reset acts on)

# (column, panel title, y label), top to bottom
LATENT_PANELS = (
    ("flip_fraction", "level flips since the previous evaluation", "flip fraction"),
    ("grid_dispersion", "grid dispersion (0: on the grid, ½: spread uniformly)", "dispersion"),
    ("clipped_fraction", "latents outside the quantizer's range", "clipped fraction"),
)
LATENT_NOTE = "exact shares of all quantized latent weights\n(counted, not estimated: no intervals)"


def plot_latent_mechanism(runs: Sequence[RunData], *, title: str | None = None) -> Figure:
    """Flip fraction, grid dispersion and clipped fraction over training, one line per run.

    Three panels stacked on one step axis, one per quantity of the latent grid that
    ``winq-train`` logs with each QAT evaluation (:attr:`RunData.latent_grid`); a panel no run
    logged is left out. The flip fraction covers the interval since the previous evaluation
    and is drawn at the evaluation that ends it. Every value is an exact count over the
    latents, so there are no intervals. Each run keeps its colour of :func:`plot_loss_curves`
    (given the same runs); its resets are vertical dashed lines in that colour.

    Raises:
        ValueError: no run logged any of the three (FP runs, runs from before the fields).
    """
    all_colors = _run_colors(runs)
    drawn = [(run, run.latent_grid, c) for run, c in zip(runs, all_colors)]
    drawn = [(run, frame, c) for run, frame, c in drawn if not frame.empty]
    if not drawn:
        raise ValueError(
            f"no run logged the latent grid ({', '.join(LATENT_GRID_COLUMNS)}) at its evaluations"
        )
    panels = [p for p in LATENT_PANELS if any(f[p[0]].notna().any() for _, f, _ in drawn)]
    runs = [run for run, _, _ in drawn]
    colors = [c for _, _, c in drawn]
    with style():
        fig = new_figure("one", height=1.45 * len(panels) + 1.3)
        axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
        for ax, (key, panel_title, ylabel) in zip(axes, panels):
            values = []
            for run, frame, color in drawn:
                logged = frame[["step", key]].dropna()
                if logged.empty:
                    continue
                y = logged[key].to_numpy(float)
                values.append(y)
                ax.plot(logged["step"].to_numpy(float), y, color=color, marker="o", label=run.label)
            _mark_resets(ax, runs, colors)
            if key == "grid_dispersion":
                ax.axhline(0.5, color=PALETTE["black"], lw=0.6, ls=":", alpha=0.7, zorder=1)
            shown = np.concatenate(values)
            if key == "flip_fraction" and shown.min() > 0 and shown.max() >= 100 * shown.min():
                _plain_log_axis(ax)  # flips decay by orders of magnitude: keep the late ones
            else:
                ax.set_ylim(bottom=0.0)
            ax.set_title(panel_title)
            ax.set_ylabel(ylabel)
        axes[-1].set_xlabel("training step (flips: at the evaluation ending the interval)")
        handles = [
            Line2D([], [], color=c, marker="o", label=run.label) for run, c in zip(runs, colors)
        ]
        if any(run.reset_steps for run in runs):
            handles.append(Line2D([], [], color="#666666", ls=(0, (2, 2)), label="WinQ reset"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2)
        fig.suptitle(f"{title or 'Latent grid over training'}\n{LATENT_NOTE}")
    return fig

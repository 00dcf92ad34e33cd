"""The summary table: one row per spectrum and one per run, as CSV and Markdown.

The CSV files are for machines: numbers are copied from the inputs unchanged and written with
Python's shortest round-trip ``repr``, so reading a cell back with ``float()`` gives exactly the
saved value; every mass has its interval (``_low``, ``_high``, over SLQ probes) and resolution
flag (``_resolved``) beside it, and λmax/λmin the range of the per-probe extremes. The Markdown
table is for people: each mass is written ``value ± half-width`` with the digits its interval
supports (:func:`winq.quadrature.format_estimate`), "(unresolved)" where the quadrature cannot
place it (docs/diagnostics.md), and "(interval unknown)" for files that carry none. Empty cells
(CSV) and "–" (Markdown) mark values the inputs do not have.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from winq.io import atomic_write_text
from winq.plots.compare import baseline_for, speedup
from winq.plots.readers import Inputs, RunData, SpectrumData
from winq.quadrature import format_estimate

__all__ = [
    "RUN_COLUMNS",
    "SPECTRUM_COLUMNS",
    "run_rows",
    "spectrum_rows",
    "write_summary",
]

SPECTRUM_COLUMNS = [
    "path", "run", "bits", "step", "alpha", "lambda_max", "lambda_max_low", "lambda_max_high",
    "lambda_min", "lambda_min_low", "lambda_min_high", "near_zero_eps",
    "near_zero_mass", "near_zero_mass_low", "near_zero_mass_high", "near_zero_mass_resolved",
    "negative_mass", "negative_mass_low", "negative_mass_high", "negative_mass_resolved",
    "clipped_fraction", "trace", "trace_stderr",
]  # fmt: skip
# the Markdown table: (header, how a row's cells make it)
SPECTRUM_MARKDOWN = [
    "path", "run", "bits", "step", "alpha", "lambda_max (probe range)", "lambda_min (probe range)",
    "near_zero_eps", "near_zero_mass", "negative_mass", "clipped_fraction", "trace",
]  # fmt: skip
RUN_COLUMNS = [
    "path", "run", "bits", "mode", "steps", "final_loss", "final_eval_loss", "resets",
    "baseline", "reached_baseline_loss", "steps_to_baseline_loss", "speedup",
]  # fmt: skip


def _raw(value: Any) -> Any:
    """A JSON number as saved (int or float), None for anything else or non-finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _relative(path: Path, root: Path | None) -> str:
    if root is None:
        return str(path)
    try:
        relative = os.path.relpath(path, root)
    except ValueError:
        return str(path)
    return relative


def _root(paths: Sequence[Path]) -> Path | None:
    if not paths:
        return None
    try:
        return Path(os.path.commonpath([p.parent for p in paths]))
    except ValueError:
        return None


def spectrum_rows(spectra: Sequence[SpectrumData], root: Path | None = None) -> list[dict]:
    """One dict per spectrum with :data:`SPECTRUM_COLUMNS`, values as saved."""
    rows = []
    for spectrum in spectra:
        summary, metadata = spectrum.summary, spectrum.metadata
        clipped = summary.get("clipped_fraction")
        if clipped is None:
            clipped = metadata.get("clipped_fraction")
        row = {
            "path": _relative(spectrum.path, root),
            "run": spectrum.run,
            "bits": _raw(metadata.get("bits")),
            "step": _raw(metadata.get("step")),
            "alpha": _raw(metadata.get("alpha")),
            "near_zero_eps": _raw(summary.get("near_zero_eps")),
            "clipped_fraction": _raw(clipped),
            "trace": _raw(summary.get("trace")),
            "trace_stderr": _raw(summary.get("trace_stderr")),
        }
        for key in ("lambda_max", "lambda_min"):
            spread = summary.get(f"{key}_probes")
            low, high = spread if isinstance(spread, list) and len(spread) == 2 else (None, None)
            row.update({key: _raw(summary.get(key)), f"{key}_low": _raw(low),
                        f"{key}_high": _raw(high)})  # fmt: skip
        for kind in ("near_zero", "negative"):
            estimate, _ = spectrum.mass(kind)
            row.update({
                f"{kind}_mass": _raw(estimate.value),
                f"{kind}_mass_low": _raw(estimate.ci[0]),
                f"{kind}_mass_high": _raw(estimate.ci[1]),
                f"{kind}_mass_resolved": estimate.resolved,
            })  # fmt: skip
        rows.append(row)
    return rows


def _mass_text(row: dict, key: str) -> str | None:
    value = row[key]
    if value is None:
        return None
    ci = (row[f"{key}_low"], row[f"{key}_high"])
    text = format_estimate(value, None if None in ci else ci)
    return text + (" (unresolved)" if row[f"{key}_resolved"] is False else "")


def _range_text(row: dict, key: str) -> str | None:
    value, low, high = row[key], row[f"{key}_low"], row[f"{key}_high"]
    if value is None:
        return None
    if low is None or high is None:
        return f"{value:.4g}"
    return f"{value:.4g} [{low:.4g}, {high:.4g}]"


def spectrum_markdown_rows(rows: list[dict]) -> list[dict]:
    """:func:`spectrum_rows` as :data:`SPECTRUM_MARKDOWN` cells, rounded to their intervals."""
    out = []
    for row in rows:
        trace = row["trace"]
        if trace is not None and row["trace_stderr"] is not None:
            trace = f"{trace:.4g} ± {row['trace_stderr']:.2g} (s.e.)"
        out.append({
            "path": row["path"], "run": row["run"], "bits": row["bits"], "step": row["step"],
            "alpha": row["alpha"],
            "lambda_max (probe range)": _range_text(row, "lambda_max"),
            "lambda_min (probe range)": _range_text(row, "lambda_min"),
            "near_zero_eps": row["near_zero_eps"],
            "near_zero_mass": _mass_text(row, "near_zero_mass"),
            "negative_mass": _mass_text(row, "negative_mass"),
            "clipped_fraction": None if row["clipped_fraction"] is None
            else f"{row['clipped_fraction']:.4g}",
            "trace": trace if not isinstance(trace, float) else f"{trace:.4g}",
        })  # fmt: skip
    return out


def run_rows(runs: Sequence[RunData], root: Path | None = None) -> list[dict]:
    """One dict per run with :data:`RUN_COLUMNS`; speedup against the same bit width's baseline."""
    rows = []
    for run in runs:
        baseline = baseline_for(run, runs)
        result = speedup(baseline, run) if baseline is not None else None
        rows.append(
            {
                "path": _relative(run.path, root),
                "run": run.label,
                "bits": run.bits,
                "mode": run.mode,
                "steps": run.steps,
                "final_loss": run.final_loss,
                "final_eval_loss": run.final_eval_loss,
                "resets": len(run.reset_steps),
                "baseline": baseline.label if baseline is not None else None,
                "reached_baseline_loss": None if result is None else result.reached,
                "steps_to_baseline_loss": None if result is None else result.steps,
                "speedup": None if result is None else result.ratio,
            }
        )
    return rows


def _cell(value: Any, empty: str) -> str:
    if value is None:
        return empty
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c], "") for c in columns])
    return buffer.getvalue()


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(escape(_cell(row[c], "–")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    inputs: Inputs, out_dir: str | os.PathLike, root: Path | None = None
) -> list[Path]:
    """Write ``summary_spectra.csv``, ``summary_runs.csv`` (when there are runs / spectra) and
    ``summary.md`` (both tables) into ``out_dir``.

    Args:
        inputs: loaded spectra and runs.
        out_dir: destination folder (created if missing).
        root: paths in the table are written relative to this folder; default: the common
            parent of all inputs.

    Returns:
        The files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if root is None:
        root = _root([s.path for s in inputs.spectra] + [r.path for r in inputs.runs])
    spectra = spectrum_rows(inputs.spectra, root)
    runs = run_rows(inputs.runs, root)
    written = []
    markdown = ["# Summary", ""]
    if root is not None:
        markdown += [f"Paths are relative to `{root}`.", ""]
    if spectra:
        path = out_dir / "summary_spectra.csv"
        atomic_write_text(path, _csv(spectra, SPECTRUM_COLUMNS))
        written.append(path)
        markdown += [
            "## Spectra",
            "",
            "Near-zero mass (|λ| ≤ `near_zero_eps`) and negative mass (λ < −`near_zero_eps`) "
            "as mean ± half-width of the 95% interval over SLQ probes, *(unresolved)* where "
            "the quadrature cannot place them at that threshold; λmax/λmin with the range of "
            "the per-probe extremes. Full precision and the interval ends are in "
            "`summary_spectra.csv`.",
            "",
            _markdown(spectrum_markdown_rows(spectra), SPECTRUM_MARKDOWN),
        ]
    if runs:
        path = out_dir / "summary_runs.csv"
        atomic_write_text(path, _csv(runs, RUN_COLUMNS))
        written.append(path)
        markdown += [
            "## Runs",
            "",
            "`speedup` = baseline's steps / this run's steps to reach the baseline's final "
            "held-out loss (first eval step with `eval_loss` ≤ it, for both runs); empty when "
            "the run is a baseline, has no baseline of its bit width, or did not reach it "
            "(`reached_baseline_loss` False).",
            "",
            _markdown(runs, RUN_COLUMNS),
        ]
    path = out_dir / "summary.md"
    atomic_write_text(path, "\n".join(markdown))
    written.append(path)
    return written

"""The summary table: one row per spectrum and one per run, as CSV and Markdown.

Numbers are copied from the inputs unchanged and written with Python's shortest round-trip
``repr``, so reading a cell back with ``float()`` gives exactly the saved value. Empty cells
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

__all__ = [
    "RUN_COLUMNS",
    "SPECTRUM_COLUMNS",
    "run_rows",
    "spectrum_rows",
    "write_summary",
]

SPECTRUM_COLUMNS = [
    "path", "run", "bits", "step", "alpha", "lambda_max", "lambda_min", "near_zero_mass",
    "near_zero_eps", "negative_mass", "clipped_fraction", "trace",
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
        rows.append(
            {
                "path": _relative(spectrum.path, root),
                "run": spectrum.run,
                "bits": _raw(metadata.get("bits")),
                "step": _raw(metadata.get("step")),
                "alpha": _raw(metadata.get("alpha")),
                "lambda_max": _raw(summary.get("lambda_max")),
                "lambda_min": _raw(summary.get("lambda_min")),
                "near_zero_mass": _raw(summary.get("near_zero_mass")),
                "near_zero_eps": _raw(summary.get("near_zero_eps")),
                "negative_mass": _raw(summary.get("negative_mass")),
                "clipped_fraction": _raw(clipped),
                "trace": _raw(summary.get("trace")),
            }
        )
    return rows


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
            "Values as saved in each `spectrum.json` (near-zero mass at its own `near_zero_eps`).",
            "",
            _markdown(spectra, SPECTRUM_COLUMNS),
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

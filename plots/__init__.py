"""winq.plots: the WinQ paper's figures from saved spectra and training runs.

Reads files only (pandas, NumPy, matplotlib on the Agg canvas) and never imports torch, so
figures can be drawn on any machine from results copied off a GPU box.

Typical use::

    from winq.plots import load_inputs, draw_all
    draw_all(load_inputs(["runs/study-tiny"]), "figures")

or on the command line ``winq-plot runs/study-tiny --out figures``.
"""

from winq.plots.compare import Speedup, baseline_for, group_by_bits, speedup, steps_to_reach
from winq.plots.draw import DEFAULT_EPS, DrawResult, draw_all
from winq.plots.figures import (
    format_step,
    plot_alpha_sweep,
    plot_density_over_training,
    plot_latent_mechanism,
    plot_loss_curves,
    plot_magnitudes_by_bits,
    plot_spectrum_over_training,
)
from winq.plots.readers import (
    Inputs,
    PlotInputError,
    RunData,
    SpectrumData,
    find_inputs,
    load_inputs,
    read_metrics,
    read_run,
    read_spectrum,
)
from winq.plots.style import ONE_COLUMN, PALETTE, TWO_COLUMN, apply, save, style
from winq.plots.table import run_rows, spectrum_rows, write_summary

__all__ = [  # noqa: RUF022 (grouped by topic)
    # reading
    "Inputs",
    "PlotInputError",
    "RunData",
    "SpectrumData",
    "find_inputs",
    "load_inputs",
    "read_metrics",
    "read_run",
    "read_spectrum",
    # comparing runs
    "Speedup",
    "baseline_for",
    "group_by_bits",
    "speedup",
    "steps_to_reach",
    # figures
    "DEFAULT_EPS",
    "DrawResult",
    "draw_all",
    "format_step",
    "plot_alpha_sweep",
    "plot_density_over_training",
    "plot_latent_mechanism",
    "plot_loss_curves",
    "plot_magnitudes_by_bits",
    "plot_spectrum_over_training",
    # tables
    "run_rows",
    "spectrum_rows",
    "write_summary",
    # style
    "ONE_COLUMN",
    "PALETTE",
    "TWO_COLUMN",
    "apply",
    "save",
    "style",
]

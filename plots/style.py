"""One style for every winq figure: sizes, fonts, a colorblind-safe palette, saving.

Figures are built as :class:`matplotlib.figure.Figure` objects on the Agg canvas, never through
``pyplot``: no GUI backend, no global figure registry to leak, nothing is ever shown. Sizes are
those of a two-column paper (one column 3.5 in, full width 7.2 in); fonts are sized to read at
that size. Colours are the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design"),
distinguishable under the common forms of colour blindness; each run kind and bit width keeps
one colour across all figures.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from winq.io import atomic_write_bytes

__all__ = [
    "BITS_COLORS",
    "DPI",
    "FORMATS",
    "MODE_COLORS",
    "ONE_COLUMN",
    "PALETTE",
    "RC",
    "TWO_COLUMN",
    "apply",
    "bits_color",
    "mode_color",
    "new_figure",
    "save",
    "style",
]

# Okabe–Ito, in an order where neighbours contrast well.
PALETTE = {
    "black": "#000000",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "bluish_green": "#009E73",
    "orange": "#E69F00",
    "reddish_purple": "#CC79A7",
    "sky_blue": "#56B4E9",
    "yellow": "#F0E442",
}
CYCLE = [PALETTE[k] for k in ("blue", "vermillion", "bluish_green", "orange", "reddish_purple",
                              "sky_blue", "black", "yellow")]  # fmt: skip

MODE_COLORS = {"off": PALETTE["black"], "fixed": PALETTE["vermillion"], "guided": PALETTE["blue"]}
BITS_COLORS = {
    1: PALETTE["reddish_purple"],
    1.58: PALETTE["vermillion"],
    2: PALETTE["blue"],
    3: PALETTE["bluish_green"],
    4: PALETTE["orange"],
    8: PALETTE["sky_blue"],
    16: PALETTE["black"],
}

ONE_COLUMN = (3.5, 2.6)  # inches
TWO_COLUMN = (7.2, 2.8)
DPI = 150
FORMATS = ("png", "pdf")

RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.titlesize": 9.5,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.prop_cycle": mpl.cycler(color=CYCLE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.5,
    "grid.alpha": 0.8,
    "axes.axisbelow": True,
    "axes.linewidth": 0.7,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "errorbar.capsize": 2.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "pdf.fonttype": 42,  # embed TrueType so text stays editable in the PDF
    "svg.fonttype": "none",
}


def apply() -> None:
    """Set the winq style globally (for interactive use; figure functions use :func:`style`)."""
    mpl.rcParams.update(RC)


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The winq style for one block, restoring the caller's rcParams afterwards."""
    with mpl.rc_context(RC):
        yield


def new_figure(width: str | float = "two", height: float | None = None, **kwargs: Any) -> Figure:
    """A Figure on the Agg canvas with constrained layout.

    Args:
        width: ``"one"`` (one column), ``"two"`` (full width) or inches.
        height: inches; defaults to the width's standard height.
    """
    if width == "one":
        size = ONE_COLUMN
    elif width == "two":
        size = TWO_COLUMN
    else:
        size = (float(width), TWO_COLUMN[1])
    figure = Figure(figsize=(size[0], height or size[1]), layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def mode_color(mode: str) -> str:
    return MODE_COLORS.get(mode, PALETTE["bluish_green"])


def bits_color(bits: float | int | None) -> str:
    if bits is None:
        return PALETTE["sky_blue"]
    for key, color in BITS_COLORS.items():
        if abs(float(bits) - key) < 1e-6:
            return color
    return CYCLE[round(float(bits) * 10) % len(CYCLE)]


def save(
    fig: Figure,
    out_dir: str | os.PathLike,
    name: str,
    formats: Sequence[str] = FORMATS,
    dpi: int = DPI,
) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.<format>`` for each format, atomically.

    Each file is rendered in memory and written through a temporary file and a rename, so an
    interrupted run never leaves a half-written figure under the real name.

    Returns:
        The paths written, in the order of ``formats``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for fmt in formats:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.03)
            path = out_dir / f"{name}.{fmt}"
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
    return written

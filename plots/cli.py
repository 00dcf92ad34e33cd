"""``winq-plot PATH... --out DIR``: the paper's figures from saved spectra and training runs.

Reads spectrum folders and run folders found anywhere under the given paths (see
``docs/formats.md``), never recomputes a spectrum and never imports torch. Exit codes: 0 done,
2 a bad input or output path (one line on stderr), 1 an unexpected failure.
"""

from __future__ import annotations

import argparse
import errno
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from winq.cli import ArgumentParser, UsageError, guarded_main, positive_float
from winq.plots.draw import DEFAULT_EPS, draw_all
from winq.plots.readers import PlotInputError, load_inputs

__all__ = ["main"]

PROG = "winq-plot"
KNOWN_FORMATS = ("png", "pdf", "svg")


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in KNOWN_FORMATS]
    if not formats or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(KNOWN_FORMATS)}, got {text!r}"
        )
    return tuple(dict.fromkeys(formats))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Draw the WinQ paper's figures (PNG and PDF) and a summary table from saved "
        "spectrum folders and training run folders.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH",
        help="spectrum folders, run folders, or folders holding them (searched recursively)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figures")
    parser.add_argument(
        "--eps", type=positive_float, default=DEFAULT_EPS,
        help="near-zero threshold: mass with |λ| < eps (default %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--sigma", type=positive_float, default=None,
        help="Gaussian kernel width for densities (default: as saved)",
    )  # fmt: skip
    parser.add_argument(
        "--mass-sigma", type=positive_float, default=None, metavar="SIGMA",
        help="quote the near-zero mass of the density broadened by a Gaussian of this width "
        "(the WinQ notebooks use 5e-3) instead of counting Ritz nodes inside eps (needs the "
        "saved ritz.parquet; the summary tables keep the saved values)",
    )  # fmt: skip
    parser.add_argument(
        "--format", type=_formats, default=("png", "pdf"), dest="formats",
        help="image formats, comma-separated (default png,pdf)",
    )  # fmt: skip
    return parser


def _check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, or raise UsageError."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".winq-plot-", delete=True):
            pass
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise UsageError(f"--out {out}: cannot write there ({reason})") from None


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = load_inputs(args.paths)
    out = Path(args.out)
    _check_writable(out)
    result = draw_all(inputs, out, eps=args.eps, sigma=args.sigma, mass_sigma=args.mass_sigma,
                      formats=args.formats)  # fmt: skip
    print(
        f"{PROG}: read {len(inputs.spectra)} spectra and {len(inputs.runs)} runs; writing to {out}"
    )
    for path in result.written:
        print(f"wrote {path}")
    for note in result.skipped:
        print(f"skipped {note}")
    sys.stdout.flush()
    return 0


main = guarded_main(PROG, run, usage_errors=(PlotInputError,))


if __name__ == "__main__":
    sys.exit(main())

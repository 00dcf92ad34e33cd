"""The spectrum folder on disk: its schema, its one writer and its one reader (no torch).

A spectrum folder (docs/formats.md, format_version 2) holds

* ``spectrum.json`` — ``format_version``, ``kind`` (``"winq-spectrum"``), ``metadata`` (how
  the spectrum was measured), ``summary`` (the diagnostics) and, for per-block runs,
  ``blocks`` (``{name: {"num_params", "summary"}}``);
* ``ritz.parquet`` — one row per quadrature node: ``probe`` (int), ``node`` (Ritz value θ),
  ``weight`` (quadrature weight τ), plus ``block`` (``"all"`` for the whole selection) in
  per-block runs;
* ``lanczos.parquet`` (format 2) — one row per Lanczos step of each probe: ``probe``,
  ``step`` (from 0), ``alpha``, ``beta`` (+ ``block``): the tridiagonals the nodes come from,
  so the nodes' residual bounds and any shorter run from the same probes can be recomputed;
* ``density.parquet`` — ``lambda``, ``density``: the Gaussian-broadened density on a grid.

Format 1 (before the tridiagonals and the intervals) is still read: its summary has no
``_stderr``/``_ci``/``_resolved`` keys, and its ``negative_mass`` counted θ < 0 (format 2 calls
that ``sign_negative_mass``; its ``negative_mass`` is the mass below −ε).

:class:`winq.analysis.Spectrum` writes through :func:`write_folder` and reads through
:func:`read_document` / :func:`read_rules`; the figures (:mod:`winq.plots`) read through the
same functions, so the schema is checked in one place. Every problem with a file is a
:class:`SpectrumFileError` (a ``ValueError``) with a one-line message naming the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from winq.io import atomic_dir, atomic_write_json
from winq.quadrature import pad_ragged

__all__ = [
    "ALL_BLOCK",
    "DENSITY_FILE",
    "FORMAT_VERSION",
    "KIND",
    "LANCZOS_FILE",
    "RITZ_FILE",
    "SPECTRUM_FILE",
    "SpectrumFileError",
    "is_spectrum_folder",
    "jsonable",
    "read_density",
    "read_document",
    "read_lanczos",
    "read_ritz",
    "read_rules",
    "write_folder",
]

FORMAT_VERSION = 2
KIND = "winq-spectrum"
SPECTRUM_FILE = "spectrum.json"
RITZ_FILE = "ritz.parquet"
LANCZOS_FILE = "lanczos.parquet"
DENSITY_FILE = "density.parquet"
ALL_BLOCK = "all"  # the ``block`` of the whole selection in a per-block ritz.parquet


class SpectrumFileError(ValueError):
    """A spectrum folder whose files cannot be read as the schema says (one-line message)."""


def jsonable(value: Any) -> Any:
    """``value`` for standard JSON: NumPy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def is_spectrum_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / SPECTRUM_FILE).is_file()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def read_document(path: str | os.PathLike) -> dict[str, Any]:
    """``spectrum.json`` of a folder, checked: a JSON object of this kind and a known version,
    whose ``metadata``, ``summary`` and ``blocks`` (each optional) are objects.

    Raises:
        FileNotFoundError: the folder has no ``spectrum.json``.
        SpectrumFileError: unreadable, invalid JSON, another kind, a newer format_version.
    """
    file = Path(path) / SPECTRUM_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SpectrumFileError(
            f"{file}: cannot read {SPECTRUM_FILE} ({e.strerror or e})"
        ) from None
    except UnicodeDecodeError:
        raise SpectrumFileError(f"{file}: {SPECTRUM_FILE} is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpectrumFileError(
            f"{file}: {SPECTRUM_FILE} is not valid JSON (line {e.lineno}, column {e.colno}: "
            f"{e.msg})"
        ) from None
    if not isinstance(document, dict):
        raise SpectrumFileError(f"{file}: expected a JSON object, got {type(document).__name__}")
    kind = document.get("kind")
    if kind is not None and kind != KIND:
        raise SpectrumFileError(f"{file}: not a winq spectrum (kind {kind!r})")
    if "metadata" not in document and "summary" not in document:
        raise SpectrumFileError(f"{file}: no 'metadata' or 'summary' (not a winq spectrum)")
    version = document.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise SpectrumFileError(f"{file}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise SpectrumFileError(
            f"{file}: format_version {version} is newer than this reader ({FORMAT_VERSION})"
        )
    for key in ("metadata", "summary", "blocks"):
        value = document.setdefault(key, {})
        if value is None:
            document[key] = {}
        elif not isinstance(value, dict):
            raise SpectrumFileError(f"{file}: '{key}' must be a JSON object")
    if version < 2:
        _upgrade_from_1(document)
    return document


def _upgrade_from_1(document: dict[str, Any]) -> None:
    """Format 1 saved ``negative_mass`` as the weight of Ritz nodes with θ < 0, whose value
    turns on the sign of the node nearest zero; format 2 calls that ``sign_negative_mass``
    and means λ < −ε by ``negative_mass``. Rename it so that no reader takes the old number
    for the new quantity (format 1 has no intervals: they read as unknown)."""
    blocks = [b.get("summary") for b in document["blocks"].values() if isinstance(b, dict)]
    for summary in [document["summary"], *blocks]:
        if isinstance(summary, dict) and "negative_mass" in summary:
            summary.setdefault("sign_negative_mass", summary.pop("negative_mass"))


def _read_table(path: Path, columns: tuple[str, ...]):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise SpectrumFileError(
            f"{path}: {path.name} is not a readable parquet file ({_one_line(e)})"
        ) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SpectrumFileError(f"{path}: {path.name} lacks column(s) {', '.join(missing)}")
    return frame


def read_ritz(path: str | os.PathLike, block: str | None = ALL_BLOCK):
    """The rows of ``ritz.parquet`` (``probe, node, weight`` and ``block`` if saved), or None
    when the folder has none. ``block`` selects one block of a per-block file (``None``: all
    rows); a file without a ``block`` column is the whole selection.

    Raises:
        SpectrumFileError: an unreadable file or a missing column.
    """
    file = Path(path) / RITZ_FILE
    if not file.is_file():
        return None
    frame = _read_table(file, ("probe", "node", "weight"))
    if block is not None and "block" in frame.columns:
        frame = frame[frame["block"].astype(str) == block]
    return frame.reset_index(drop=True)


def read_rules(frame, width: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded ``(nodes, weights, mask)`` arrays ``(probes, width)`` from ``ritz.parquet`` rows
    (see :func:`winq.quadrature.pad_ragged`); probes are numbered from 0."""
    rows_nodes, rows_weights = [], []
    probes = int(frame["probe"].max()) + 1 if len(frame) else 0
    groups = dict(tuple(frame.groupby("probe", sort=True))) if len(frame) else {}
    for p in range(probes):
        part = groups.get(p)
        nodes = part["node"].to_numpy(np.float64) if part is not None else np.zeros(0)
        weights = part["weight"].to_numpy(np.float64) if part is not None else np.zeros(0)
        rows_nodes.append(nodes)
        rows_weights.append(weights)
    return pad_ragged(rows_nodes, rows_weights, width)


def read_lanczos(path: str | os.PathLike, block: str | None = ALL_BLOCK):
    """``(alphas, betas)``, each ``(probes, steps)`` float64 (NaN after a breakdown), from
    ``lanczos.parquet``, or None when the folder has none (format 1). ``block`` as in
    :func:`read_ritz`.

    Raises:
        SpectrumFileError: an unreadable file or a missing column.
    """
    file = Path(path) / LANCZOS_FILE
    if not file.is_file():
        return None
    frame = _read_table(file, ("probe", "step", "alpha", "beta"))
    if block is not None and "block" in frame.columns:
        frame = frame[frame["block"].astype(str) == block]
    if not len(frame):
        return None
    probes, steps = int(frame["probe"].max()) + 1, int(frame["step"].max()) + 1
    alphas = np.full((probes, steps), np.nan)
    betas = np.full((probes, steps), np.nan)
    rows, columns = frame["probe"].to_numpy(np.int64), frame["step"].to_numpy(np.int64)
    alphas[rows, columns] = frame["alpha"].to_numpy(np.float64)
    betas[rows, columns] = frame["beta"].to_numpy(np.float64)
    return alphas, betas


def read_density(path: str | os.PathLike):
    """``(lambda, density)`` rows of ``density.parquet``, sorted by lambda, or None if absent.

    Raises:
        SpectrumFileError: an unreadable file or a missing column.
    """
    file = Path(path) / DENSITY_FILE
    if not file.is_file():
        return None
    frame = _read_table(file, ("lambda", "density"))
    return frame[["lambda", "density"]].sort_values("lambda").reset_index(drop=True)


def write_folder(
    path: str | os.PathLike,
    document: Mapping[str, Any],
    ritz,
    density,
    overwrite: bool = True,
    lanczos=None,
) -> Path:
    """Write a spectrum folder atomically (:func:`winq.io.atomic_dir`).

    Args:
        path: the folder; an existing one is replaced only once the new one is complete.
        document: ``spectrum.json``'s content without ``format_version``/``kind`` (added here);
            NumPy values and non-finite floats are converted (:func:`jsonable`).
        ritz: a DataFrame with ``probe, node, weight`` (and ``block``) columns.
        density: a DataFrame with ``lambda, density`` columns.
        overwrite: replace an existing folder, or raise ``FileExistsError``.
        lanczos: a DataFrame with ``probe, step, alpha, beta`` (and ``block``), or None.
    """
    body = {"format_version": FORMAT_VERSION, "kind": KIND, **jsonable(dict(document))}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        ritz.to_parquet(tmp / RITZ_FILE, index=False)
        if lanczos is not None:
            lanczos.to_parquet(tmp / LANCZOS_FILE, index=False)
        density.to_parquet(tmp / DENSITY_FILE, index=False)
        atomic_write_json(tmp / SPECTRUM_FILE, body)
    return Path(path)

"""Finding and reading saved spectra and training runs (see ``docs/formats.md``).

Two kinds of folder are recognised anywhere under the paths a user gives:

* a **spectrum folder** holds ``spectrum.json`` (plus ``ritz.parquet`` and ``density.parquet``);
* a **run folder** holds ``metrics.jsonl``, or ``config.json`` beside a ``checkpoints/`` folder.

Spectrum folders inside a run folder (``spectra/step_NNNNNN/``) are attached to that run.
Nothing is recomputed from a model: the only arithmetic here re-broadens the saved Ritz nodes
θ_j and weights τ_j of stochastic Lanczos quadrature when a figure asks for a different kernel
width or ε than the one saved, using the same formulas as the writer::

    density(λ) = mean over probes of Σ_j τ_j · N(λ; θ_j, σ²)
    near-zero mass = mean over probes of Σ_j τ_j · [|θ_j| < ε]
    broadened near-zero mass (σ given) = mean over probes of
                     Σ_j τ_j · [Φ((ε − θ_j)/σ) − Φ((−ε − θ_j)/σ)]   (the WinQ notebooks' convention)
    negative mass  = mean over probes of Σ_j τ_j · [θ_j < 0]

Every problem with an input is raised as :class:`PlotInputError` with a one-line message that
names the file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_GRID_POINTS",
    "FORMAT_VERSION",
    "Inputs",
    "PlotInputError",
    "RunData",
    "SpectrumData",
    "find_inputs",
    "format_bits",
    "load_inputs",
    "read_metrics",
    "read_run",
    "read_spectrum",
]

FORMAT_VERSION = 1
DEFAULT_GRID_POINTS = 400
SPECTRUM_FILE = "spectrum.json"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
RITZ_FILE = "ritz.parquet"
DENSITY_FILE = "density.parquet"
MODES = ("off", "fixed", "guided")


class PlotInputError(ValueError):
    """An input path that cannot be plotted, with a one-line reason naming the path."""


# --------------------------------------------------------------------------------------------
# small helpers


def _number(value: Any) -> float | None:
    """A finite float, or None for null / non-numbers / non-finite values."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def _bits(value: Any) -> float | int | None:
    """Bit width as written by users: 2, 1.58, "1.58", "2" -> 2, 1.58 (None if unknown)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return int(number) if number.is_integer() else number


def format_bits(bits: float | int | None) -> str:
    """``2 -> "2-bit"``, ``1.58 -> "1.58-bit"``, ``16 -> "FP"``, ``None -> "?-bit"``."""
    if bits is None:
        return "?-bit"
    if bits >= 16:
        return "FP"
    return f"{bits:g}-bit"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlotInputError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise PlotInputError(f"{path}: {what} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PlotInputError(
            f"{path}: {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None


def _read_parquet(path: Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise PlotInputError(
            f"{path}: {what} is not a readable parquet file ({_one_line(e)})"
        ) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PlotInputError(f"{path}: {what} lacks column(s) {', '.join(missing)}")
    return frame


# --------------------------------------------------------------------------------------------
# spectra


@dataclass
class SpectrumData:
    """One saved spectrum: ``spectrum.json`` plus its Ritz nodes and density, as read.

    Attributes:
        path: the spectrum folder.
        metadata: ``spectrum.json["metadata"]`` (unknown keys kept).
        summary: ``spectrum.json["summary"]``.
        ritz: ``(probe, node, weight)`` rows of the whole selection, or None if not saved.
        density_table: ``(lambda, density)`` rows, or None if not saved.
        blocks: per-layer summaries (``spectrum.json["blocks"]``), empty if absent.
        run_name: label of the run folder this spectrum sits in (set by :func:`find_inputs`).
    """

    path: Path
    metadata: dict[str, Any]
    summary: dict[str, Any]
    ritz: pd.DataFrame | None = None
    density_table: pd.DataFrame | None = None
    blocks: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None

    # -- metadata ---------------------------------------------------------------------------
    @property
    def bits(self) -> float | int | None:
        return _bits(self.metadata.get("bits"))

    @property
    def step(self) -> int | None:
        step = _number(self.metadata.get("step"))
        return None if step is None else int(step)

    @property
    def alpha(self) -> float | None:
        return _number(self.metadata.get("alpha"))

    @property
    def run(self) -> str | None:
        """The run this spectrum belongs to: its run folder, else ``metadata.run``."""
        if self.run_name is not None:
            return self.run_name
        run = self.metadata.get("run")
        return None if run is None else str(run)

    def value(self, key: str) -> float | None:
        """A summary number (falling back to metadata), None if absent or null."""
        value = self.summary.get(key)
        if value is None:
            value = self.metadata.get(key)
        return _number(value)

    @property
    def lambda_max(self) -> float | None:
        return self.value("lambda_max")

    @property
    def lambda_min(self) -> float | None:
        return self.value("lambda_min")

    @property
    def abs_lambda_max(self) -> float | None:
        """Largest eigenvalue magnitude, ``max(|λmax|, |λmin|)``."""
        stored = self.value("abs_lambda_max")
        if stored is not None:
            return stored
        values = [abs(v) for v in (self.lambda_max, self.lambda_min) if v is not None]
        return max(values) if values else None

    # -- quantities from the Ritz nodes ------------------------------------------------------
    def _probe_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        assert self.ritz is not None
        arrays = []
        for _, rows in self.ritz.groupby("probe", sort=True):
            arrays.append((rows["node"].to_numpy(np.float64), rows["weight"].to_numpy(np.float64)))
        return arrays

    def per_probe_mass(
        self, kind: str, eps: float | None = None, sigma: float | None = None
    ) -> np.ndarray | None:
        """Per-probe ``near_zero`` (|θ| < ε) or ``negative`` (θ < 0) mass; None without Ritz data.

        Args:
            kind: ``"near_zero"`` or ``"negative"``.
            eps: threshold for ``near_zero``; defaults to the saved ``near_zero_eps``.
            sigma: for ``near_zero``, the mass in ``|λ| < ε`` of the density broadened by a
                Gaussian of this width instead of the count of nodes inside (which jumps by
                whole node weights as a node crosses ε).
        """
        if self.ritz is None or len(self.ritz) == 0:
            return None
        if kind == "near_zero":
            eps = self.value("near_zero_eps") if eps is None else eps
            if eps is None:
                return None
            if sigma is None:
                masses = [float(np.sum(w[np.abs(t) < eps])) for t, w in self._probe_arrays()]
            else:
                from scipy.special import ndtr

                masses = [
                    float(np.sum(w * (ndtr((eps - t) / sigma) - ndtr((-eps - t) / sigma))))
                    for t, w in self._probe_arrays()
                ]
        elif kind == "negative":
            masses = [float(np.sum(w[t < 0])) for t, w in self._probe_arrays()]
        else:
            raise ValueError(f"kind must be 'near_zero' or 'negative', got {kind!r}")
        return np.asarray(masses)

    def near_zero_mass(
        self, eps: float | None = None, sigma: float | None = None
    ) -> tuple[float | None, float | None]:
        """Near-zero mass and the ε it was measured with.

        Without ``sigma``: the saved value when ``eps`` is None or equals the saved
        ``near_zero_eps``; otherwise recomputed from the Ritz nodes; the saved value (with its
        own ε) if those are absent. With ``sigma``: the broadened mass from the Ritz nodes,
        ``(None, eps)`` when they were not saved.
        """
        saved, saved_eps = self.value("near_zero_mass"), self.value("near_zero_eps")
        if sigma is not None:
            per_probe = self.per_probe_mass("near_zero", eps, sigma)
            used = saved_eps if eps is None else eps
            return (None if per_probe is None else float(per_probe.mean())), used
        if eps is None or (saved_eps is not None and math.isclose(eps, saved_eps)):
            return saved, saved_eps
        per_probe = self.per_probe_mass("near_zero", eps)
        if per_probe is None:
            return saved, saved_eps
        return float(per_probe.mean()), eps

    def negative_mass(self) -> float | None:
        saved = self.value("negative_mass")
        if saved is not None:
            return saved
        per_probe = self.per_probe_mass("negative")
        return None if per_probe is None else float(per_probe.mean())

    def density(
        self, grid: np.ndarray | None = None, sigma: float | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(grid, density)``: the saved density, or one re-broadened from the Ritz nodes.

        The saved ``density.parquet`` is returned when no grid is asked for and ``sigma`` is
        None or equals the saved ``density_sigma``. Otherwise the Gaussian mixture of the Ritz
        nodes is evaluated on ``grid`` (default: 400 points spanning the nodes ± 5σ).
        Returns None when neither the saved density nor the Ritz nodes can serve.
        """
        saved_sigma = self.value("density_sigma")
        same_sigma = sigma is None or (saved_sigma is not None and math.isclose(sigma, saved_sigma))
        if grid is None and same_sigma and self.density_table is not None:
            table = self.density_table.sort_values("lambda")
            return (
                table["lambda"].to_numpy(np.float64),
                table["density"].to_numpy(np.float64),
            )
        if self.ritz is None or len(self.ritz) == 0:
            if self.density_table is not None and grid is None:
                table = self.density_table.sort_values("lambda")  # best available
                return (
                    table["lambda"].to_numpy(np.float64),
                    table["density"].to_numpy(np.float64),
                )
            return None
        sigma = sigma if sigma is not None else (saved_sigma or 5e-3)
        nodes = self.ritz["node"].to_numpy(np.float64)
        if grid is None:
            grid = np.linspace(
                nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, DEFAULT_GRID_POINTS
            )
        grid = np.asarray(grid, dtype=np.float64)
        density = np.zeros_like(grid)
        probes = self._probe_arrays()
        norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
        for thetas, taus in probes:
            # (grid, nodes) Gaussian kernel
            z = (grid[:, None] - thetas[None, :]) / sigma
            density += norm * np.exp(-0.5 * z * z) @ taus
        return grid, density / len(probes)

    def mass_per_bin(self, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """``(grid, probability mass of each grid cell)``, summing to about 1.

        With Ritz nodes the mass of each cell is the exact integral of the Gaussian mixture
        over the cell, ``Σ_j τ_j [Φ((b - θ_j)/σ) - Φ((a - θ_j)/σ)]`` averaged over probes, on
        the saved grid (or the default one). This stays faithful when the grid is coarser than
        σ, where ``density × cell width`` would alias narrow peaks into spikes and gaps.
        Without Ritz nodes it is the saved density × cell width.
        """
        saved = self.density(sigma=sigma)
        if saved is None:
            return None
        grid, density = saved
        if len(grid) < 2:
            return grid, density
        if self.ritz is None or len(self.ritz) == 0:
            mass = np.clip(density, 0.0, None) * np.gradient(grid)
            total = mass.sum()
            return grid, (mass / total if total > 0 else mass)
        saved_sigma = self.value("density_sigma")
        sigma = sigma if sigma is not None else (saved_sigma or 5e-3)
        edges = np.concatenate([[grid[0]], (grid[1:] + grid[:-1]) / 2, [grid[-1]]])
        edges[0], edges[-1] = -np.inf, np.inf  # the end cells collect the tails
        mass = np.zeros_like(grid)
        probes = self._probe_arrays()
        for thetas, taus in probes:
            # (edges, nodes) normal CDF
            cdf = _normal_cdf((edges[:, None] - thetas[None, :]) / sigma)
            mass += np.diff(cdf, axis=0) @ taus
        return grid, mass / len(probes)


_erf = np.frompyfunc(math.erf, 1, 1)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)).astype(np.float64))


def read_spectrum(path: str | os.PathLike) -> SpectrumData:
    """Read one spectrum folder.

    Raises:
        PlotInputError: missing folder or ``spectrum.json``, invalid JSON, not a winq spectrum,
            a newer format, or unreadable parquet files.
    """
    path = Path(path)
    file = path / SPECTRUM_FILE
    if not file.is_file():
        raise PlotInputError(f"{path}: not a spectrum folder (no {SPECTRUM_FILE})")
    document = _read_json(file, SPECTRUM_FILE)
    if not isinstance(document, dict):
        raise PlotInputError(f"{file}: expected a JSON object, got {type(document).__name__}")
    kind = document.get("kind")
    if kind is not None and kind != "winq-spectrum":
        raise PlotInputError(f"{file}: not a winq spectrum (kind {kind!r})")
    version = document.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise PlotInputError(
            f"{file}: format_version {version} is newer than this reader ({FORMAT_VERSION})"
        )
    metadata = document.get("metadata") or {}
    summary = document.get("summary") or {}
    blocks = document.get("blocks") or {}
    for name, part in (("metadata", metadata), ("summary", summary), ("blocks", blocks)):
        if not isinstance(part, dict):
            raise PlotInputError(f"{file}: '{name}' must be a JSON object")
    if "metadata" not in document and "summary" not in document:
        raise PlotInputError(f"{file}: no 'metadata' or 'summary' (not a winq spectrum)")

    ritz = None
    if (path / RITZ_FILE).is_file():
        ritz = _read_parquet(path / RITZ_FILE, ("probe", "node", "weight"), RITZ_FILE)
        if "block" in ritz.columns:
            ritz = ritz[ritz["block"].astype(str) == "all"]
        ritz = ritz[["probe", "node", "weight"]].reset_index(drop=True)
    density = None
    if (path / DENSITY_FILE).is_file():
        density = _read_parquet(path / DENSITY_FILE, ("lambda", "density"), DENSITY_FILE)
        density = density[["lambda", "density"]].reset_index(drop=True)
    return SpectrumData(path, metadata, summary, ritz, density, blocks)


# --------------------------------------------------------------------------------------------
# runs


def read_metrics(path: str | os.PathLike) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Read ``metrics.jsonl``: one merged row per step, plus the raw records.

    Lines that share a step are merged (a later value for the same key wins); nested records
    (``reset``, ``diagnostics``, ``guide``) stay as dicts in object columns. A last line that
    does not parse (a writer killed mid-line) is ignored; any other bad line is an error.

    Returns:
        ``(frame, records)``: ``frame`` sorted by step with one row per step (empty with a
        ``step`` column when the file has no records), ``records`` the parsed lines in order.

    Raises:
        PlotInputError: unreadable file, a corrupt line before the last, a line that is not a
            JSON object, or a record without an integer ``step``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise PlotInputError(f"{path}: cannot read {METRICS_FILE} ({e.strerror or e})") from None
    lines = text.split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records: list[dict[str, Any]] = []
    for index, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if index == len(numbered) - 1:
                break  # truncated last line
            raise PlotInputError(
                f"{path}: line {lineno} is not valid JSON ({e.msg}, column {e.colno})"
            ) from None
        if not isinstance(record, dict):
            raise PlotInputError(f"{path}: line {lineno} is not a JSON object")
        step = record.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int):
            raise PlotInputError(f"{path}: line {lineno} has no integer 'step'")
        record["step"] = step
        records.append(record)

    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        merged.setdefault(record["step"], {}).update(record)
    if not merged:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")}), records
    frame = pd.DataFrame.from_records([merged[s] for s in sorted(merged)])
    frame["step"] = frame["step"].astype("int64")
    return frame.reset_index(drop=True), records


def _nested(config: dict[str, Any], *keys: str) -> Any:
    value: Any = config
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


@dataclass
class RunData:
    """One training run folder, as read.

    Attributes:
        path: the run folder.
        config: ``config.json`` (empty dict if absent).
        metrics: one row per step (see :func:`read_metrics`).
        records: the raw ``metrics.jsonl`` records.
        spectra: spectrum folders found inside the run, sorted by step.
        label: a display name, unique among the inputs (set by :func:`find_inputs`).
    """

    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    records: list[dict[str, Any]]
    spectra: list[SpectrumData] = field(default_factory=list)
    label: str = ""

    @property
    def bits(self) -> float | int | None:
        for keys in (("bits",), ("quant", "bits"), ("quantization", "bits"), ("model", "bits")):
            bits = _bits(_nested(self.config, *keys))
            if bits is not None:
                return bits
        for spectrum in self.spectra:
            if spectrum.bits is not None:
                return spectrum.bits
        return None

    @property
    def reset_steps(self) -> list[int]:
        """Steps after which a WinQ reset was applied (``reset`` records)."""
        return sorted({r["step"] for r in self.records if isinstance(r.get("reset"), dict)})

    @property
    def mode(self) -> str:
        """WinQ mode: ``"off"`` (baseline), ``"fixed"``, ``"guided"``, or another configured name.

        From ``config["winq"]["mode"]`` (or ``winq_mode``); without one, inferred from the
        reset records: none -> ``"off"``; any with reason ``"guided"`` -> ``"guided"``;
        otherwise ``"fixed"``.
        """
        winq = self.config.get("winq")
        mode = winq.get("mode") if isinstance(winq, dict) else None
        if mode is None:
            mode = self.config.get("winq_mode")
        if isinstance(winq, bool) and mode is None:
            mode = "fixed" if winq else "off"
        if isinstance(mode, str) and mode:
            return mode.lower()
        resets = [r["reset"] for r in self.records if isinstance(r.get("reset"), dict)]
        if not resets:
            return "off"
        return "guided" if any(r.get("reason") == "guided" for r in resets) else "fixed"

    @property
    def is_baseline(self) -> bool:
        return self.mode in ("off", "none", "baseline")

    @property
    def mode_label(self) -> str:
        return "baseline" if self.is_baseline else f"WinQ {self.mode}"

    def _column(self, name: str) -> pd.DataFrame:
        if name not in self.metrics.columns:
            return pd.DataFrame({"step": [], name: []})
        frame = self.metrics[["step", name]].copy()
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
        return frame.dropna().reset_index(drop=True)

    @property
    def loss(self) -> pd.DataFrame:
        """``(step, loss)`` training-loss rows."""
        return self._column("loss")

    @property
    def eval_loss(self) -> pd.DataFrame:
        """``(step, eval_loss)`` held-out rows."""
        return self._column("eval_loss")

    @property
    def final_loss(self) -> float | None:
        loss = self.loss
        return None if loss.empty else float(loss["loss"].iloc[-1])

    @property
    def final_eval_loss(self) -> float | None:
        loss = self.eval_loss
        return None if loss.empty else float(loss["eval_loss"].iloc[-1])

    @property
    def steps(self) -> int | None:
        """Last logged step (else ``config.total_steps``)."""
        if not self.metrics.empty:
            return int(self.metrics["step"].max())
        total = _number(self.config.get("total_steps"))
        return None if total is None else int(total)

    @property
    def diagnostics(self) -> pd.DataFrame:
        """Controller measurements (``diagnostics`` records) flattened: one row per record."""
        rows = [
            {"step": r["step"], **r["diagnostics"]}
            for r in self.records
            if isinstance(r.get("diagnostics"), dict)
        ]
        return pd.DataFrame.from_records(rows) if rows else pd.DataFrame({"step": []})

    def spectrum_series(self, eps: float | None = None, sigma: float | None = None) -> pd.DataFrame:
        """Spectral quantities over training, one row per step.

        From the run's spectra (α-sweep spectra excluded) when there are any, otherwise from
        the controller's ``diagnostics`` records. Columns: ``step, near_zero_mass,
        negative_mass, lambda_max, lambda_min, source``. With ``sigma`` the spectra's near-zero
        mass is the broadened one (:meth:`SpectrumData.near_zero_mass`); logged diagnostics
        keep the controller's own measure.
        """
        rows = []
        for spectrum in self.spectra:
            if spectrum.alpha is not None or spectrum.step is None:
                continue
            rows.append(
                {
                    "step": spectrum.step,
                    "near_zero_mass": spectrum.near_zero_mass(eps, sigma)[0],
                    "negative_mass": spectrum.negative_mass(),
                    "lambda_max": spectrum.lambda_max,
                    "lambda_min": spectrum.lambda_min,
                    "source": "spectrum",
                }
            )
        if not rows:
            for record in self.records:
                diagnostics = record.get("diagnostics")
                if not isinstance(diagnostics, dict):
                    continue
                rows.append(
                    {
                        "step": record["step"],
                        "near_zero_mass": _number(diagnostics.get("near_zero_mass")),
                        "negative_mass": _number(diagnostics.get("negative_mass")),
                        "lambda_max": _number(diagnostics.get("lambda_max")),
                        "lambda_min": _number(diagnostics.get("lambda_min")),
                        "source": "diagnostics",
                    }
                )
        columns = ["step", "near_zero_mass", "negative_mass", "lambda_max", "lambda_min", "source"]
        if not rows:
            return pd.DataFrame(columns=columns)
        frame = pd.DataFrame.from_records(rows, columns=columns)
        frame = frame.drop_duplicates("step", keep="last").sort_values("step")
        return frame.reset_index(drop=True)

    def default_label(self) -> str:
        bits = self.bits
        if bits is None:
            return self.path.name or str(self.path)
        return f"{format_bits(bits)} {self.mode_label}"


def read_run(path: str | os.PathLike) -> RunData:
    """Read one run folder (``config.json`` and/or ``metrics.jsonl``).

    Raises:
        PlotInputError: not a run folder, or a corrupt ``config.json`` / ``metrics.jsonl``.
    """
    path = Path(path)
    has_metrics = (path / METRICS_FILE).is_file()
    has_config = (path / CONFIG_FILE).is_file()
    if not has_metrics and not (has_config and (path / "checkpoints").is_dir()):
        raise PlotInputError(f"{path}: not a run folder (no {METRICS_FILE})")
    config: dict[str, Any] = {}
    if has_config:
        config = _read_json(path / CONFIG_FILE, CONFIG_FILE)
        if not isinstance(config, dict):
            raise PlotInputError(f"{path / CONFIG_FILE}: expected a JSON object")
    if has_metrics:
        metrics, records = read_metrics(path / METRICS_FILE)
    else:
        metrics, records = pd.DataFrame({"step": pd.Series([], dtype="int64")}), []
    run = RunData(path, config, metrics, records)
    run.label = run.default_label()
    return run


# --------------------------------------------------------------------------------------------
# discovery


@dataclass
class Inputs:
    """Everything found under the given paths.

    Attributes:
        spectra: every spectrum (inside runs or not), sorted by (bits, run, step, alpha, path).
        runs: every run, sorted by (bits, baseline first, label).
    """

    spectra: list[SpectrumData] = field(default_factory=list)
    runs: list[RunData] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.spectra or self.runs)


def _is_run_dir(path: Path, names: Iterable[str]) -> bool:
    names = set(names)
    return METRICS_FILE in names or (CONFIG_FILE in names and (path / "checkpoints").is_dir())


def find_inputs(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Spectrum folders and run folders found recursively under ``paths``.

    Hidden folders (temporary folders of atomic writes) and run ``checkpoints/`` are skipped.

    Returns:
        ``(spectrum_folders, run_folders)``, each sorted and without duplicates.

    Raises:
        PlotInputError: a path that does not exist, is a file, or holds nothing to plot.
    """
    if not paths:
        raise PlotInputError("no input paths given")
    spectra: set[Path] = set()
    runs: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise PlotInputError(f"{root}: no such file or directory")
        if not root.is_dir():
            raise PlotInputError(
                f"{root}: is a file; give a spectrum folder, a run folder or a folder holding them"
            )
        found_here = 0
        for current, dirs, files in os.walk(root, onerror=None, followlinks=False):
            here = Path(current)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if SPECTRUM_FILE in files:
                spectra.add(here.resolve())
                found_here += 1
                dirs[:] = []
                continue
            if _is_run_dir(here, files):
                runs.add(here.resolve())
                found_here += 1
                dirs[:] = [d for d in dirs if d != "checkpoints"]
        if not found_here:
            raise PlotInputError(
                f"{root}: nothing to plot (no {SPECTRUM_FILE} or {METRICS_FILE} found under it)"
            )
    return sorted(spectra), sorted(runs)


def _sort_bits(bits: float | int | None) -> float:
    return math.inf if bits is None else float(bits)


def load_inputs(paths: Sequence[str | os.PathLike]) -> Inputs:
    """Find and read every spectrum and run under ``paths``; attach spectra to their runs.

    Raises:
        PlotInputError: see :func:`find_inputs`, :func:`read_spectrum`, :func:`read_run`.
    """
    spectrum_dirs, run_dirs = find_inputs(paths)
    runs = [read_run(p) for p in run_dirs]
    spectra = [read_spectrum(p) for p in spectrum_dirs]
    by_path = {run.path: run for run in runs}
    for spectrum in spectra:
        for parent in spectrum.path.parents:  # nearest enclosing run folder
            if parent in by_path:
                by_path[parent].spectra.append(spectrum)
                break
    for run in runs:
        run.spectra.sort(key=lambda s: (s.alpha is not None, s.step or 0, s.alpha or 0.0))
        run.label = run.default_label()
    # labels must tell runs apart: add the folder name where two coincide
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"
    for run in runs:
        for spectrum in run.spectra:
            spectrum.run_name = run.label
    runs.sort(key=lambda r: (_sort_bits(r.bits), not r.is_baseline, r.mode, r.label))
    spectra.sort(
        key=lambda s: (
            _sort_bits(s.bits),
            (s.run or "").casefold(),
            s.step if s.step is not None else -1,
            s.alpha if s.alpha is not None else -1.0,
            str(s.path),
        )
    )
    return Inputs(spectra, runs)

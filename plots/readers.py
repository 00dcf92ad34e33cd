"""Finding and reading saved spectra and training runs (see ``docs/formats.md``).

Two kinds of folder are recognised anywhere under the paths a user gives:

* a **spectrum folder** holds ``spectrum.json`` (plus ``ritz.parquet`` and ``density.parquet``);
* a **run folder** holds ``metrics.jsonl``, or ``config.json`` beside a ``checkpoints/`` folder.

Spectrum folders inside a run folder (``spectra/step_NNNNNN/``) are attached to that run.
Files are read through :mod:`winq.spectrumfile` and :mod:`winq.runfiles`, the modules that
define them. Nothing is recomputed from a model: when a figure asks for another kernel width or
ε than the one saved, the saved Ritz nodes θ_j and weights τ_j of stochastic Lanczos quadrature
are re-broadened with :mod:`winq.quadrature`, the functions the estimators themselves use
(densities, counted and broadened near-zero masses, negative masses).

Every problem with an input is raised as :class:`PlotInputError` with a one-line message that
names the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from winq import quadrature, runfiles, spectrumfile

__all__ = [
    "DEFAULT_GRID_POINTS",
    "FORMAT_VERSION",
    "LATENT_GRID_COLUMNS",
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

FORMAT_VERSION = spectrumfile.FORMAT_VERSION
DEFAULT_GRID_POINTS = quadrature.DEFAULT_GRID_POINTS
SPECTRUM_FILE = spectrumfile.SPECTRUM_FILE
METRICS_FILE = runfiles.METRICS_FILE
CONFIG_FILE = runfiles.CONFIG_FILE


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


# --------------------------------------------------------------------------------------------
# spectra


MASS_KINDS = ("negative", "near_zero", "positive", "sign_negative")
_UNKNOWN = quadrature.Estimate(math.nan, math.nan, (math.nan, math.nan))


def _saved_estimate(summary: dict[str, Any], key: str) -> quadrature.Estimate:
    """The estimate ``key`` as ``spectrum.json`` saved it; parts it lacks are unknown."""
    ci = summary.get(f"{key}_ci")
    if not (isinstance(ci, list) and len(ci) == 2 and all(_number(x) is not None for x in ci)):
        ci = (math.nan, math.nan)
    stderr = _number(summary.get(f"{key}_stderr"))
    resolved = summary.get(f"{key}_resolved")
    return quadrature.Estimate(
        _number(summary.get(key)),
        math.nan if stderr is None else stderr,
        (float(ci[0]), float(ci[1])),
        resolved if isinstance(resolved, bool) else None,
    )


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
        lanczos: ``(alphas, betas)`` of ``lanczos.parquet``, or None (format 1, or not saved).
        run_name: label of the run folder this spectrum sits in (set by :func:`find_inputs`).
    """

    path: Path
    metadata: dict[str, Any]
    summary: dict[str, Any]
    ritz: pd.DataFrame | None = None
    density_table: pd.DataFrame | None = None
    blocks: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None
    lanczos: tuple[np.ndarray, np.ndarray] | None = None

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
    def rules(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Padded ``(nodes, weights, mask)`` arrays ``(probes, steps)`` of the saved Ritz nodes,
        or None when ``ritz.parquet`` was not saved (or is empty)."""
        if self.ritz is None or len(self.ritz) == 0:
            return None
        return spectrumfile.read_rules(self.ritz)

    def rules_with_residuals(self):
        """``(nodes, weights, mask, residuals)`` of the saved quadrature, or None.

        From the Lanczos coefficients (``lanczos.parquet``, format 2) when saved: the Gauss
        rules with each node's residual bound, which decide whether a mass is resolved. Else
        from the Ritz nodes, residuals unknown (None: every node adjacent to a threshold is
        then counted as ambiguous). None when neither was saved.
        """
        if self.lanczos is not None:
            return quadrature.rules_from_tridiagonals(*self.lanczos)
        rules = self.rules()
        return None if rules is None else (*rules, None)

    def threshold(self, eps: float | None = None) -> tuple[float | None, bool]:
        """``(eps, relative)``: an explicit ``eps`` is absolute; None gives the saved
        ``near_zero_eps`` with its convention (relative to λmax or absolute)."""
        if eps is not None:
            return float(eps), False
        relative = self.summary.get("near_zero_convention") == "relative_to_lambda_max"
        return self.value("near_zero_eps"), relative

    def abs_lambda_max_range(self) -> tuple[float, float] | None:
        """``(low, high)``: the smallest and largest per-probe max |θ| (the spread of
        |λ|max over probes), or None without saved quadrature."""
        rules = self.rules()
        if rules is None:
            return None
        largest, smallest = quadrature.per_probe_extremes(*rules)
        per_probe = np.maximum(np.abs(largest), np.abs(smallest))
        per_probe = per_probe[np.isfinite(per_probe)]
        return (float(per_probe.min()), float(per_probe.max())) if per_probe.size else None

    @property
    def ci_level(self) -> float:
        return self.value("ci_level") or quadrature.DEFAULT_CI

    def mass(
        self, kind: str, eps: float | None = None, sigma: float | None = None
    ) -> tuple[quadrature.Estimate, float | None]:
        """A spectral mass with its interval, and the absolute threshold it was taken at.

        Args:
            kind: ``"negative"`` (λ < −t), ``"near_zero"`` (|λ| ≤ t), ``"positive"``
                (λ > t) or ``"sign_negative"`` (λ < 0).
            eps: the threshold t (absolute); None uses the saved one.
            sigma: for ``near_zero``, the mass in |λ| < t of the density broadened by
                N(0, σ²) (the WinQ notebooks' convention) instead of the nodes counted.

        With saved quadrature (:meth:`rules_with_residuals`) the estimate is recomputed by
        :func:`winq.quadrature.mass_estimates`, the function the estimators use — the saved
        value at the saved threshold, and its interval (Student t over probes) and resolution
        flag, which a near-zero interval wholly below the clipped fraction turns to
        unresolved (:func:`winq.quadrature.below_clipped`). Without it the saved value at the
        saved threshold, with its saved interval when the file has one; anything else is
        unknown (NaN).

        Raises:
            ValueError: an unknown ``kind``, or ``sigma`` with a kind other than near_zero.
        """
        if kind not in MASS_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MASS_KINDS)}, got {kind!r}")
        if sigma is not None and kind != "near_zero":
            raise ValueError(f"sigma applies to the near_zero mass, not {kind!r}")
        key = f"{kind}_mass" + ("" if sigma is None else "_broadened")
        used, relative = self.threshold(eps)
        rules = self.rules_with_residuals()
        if rules is not None and used is not None:
            nodes, weights, mask, residuals = rules
            estimate = quadrature.mass_estimates(
                nodes, weights, mask, residuals, used, relative, sigma, self.ci_level
            )[key]
            threshold = quadrature.near_zero_threshold(nodes, weights, mask, used, relative)
            bound = quadrature.clipped_bound(self.value("clipped_fraction"), threshold, sigma)
            if kind == "near_zero" and quadrature.below_clipped(estimate.ci, bound):
                estimate = dataclasses.replace(estimate, resolved=False)
            return estimate, threshold
        saved_threshold = self.value("near_zero_threshold") or self.value("near_zero_eps")
        same = eps is None or math.isclose(eps, self.value("near_zero_eps") or math.nan)
        if same and sigma is None and self.value(key) is not None:
            return _saved_estimate(self.summary, key), saved_threshold
        return _UNKNOWN, used

    def per_probe_density(self, grid: np.ndarray, sigma: float | None = None) -> np.ndarray | None:
        """``(probes, len(grid))``: each probe's probability mass per grid cell (the spread
        behind the probe-averaged density), or None without Ritz nodes."""
        rules = self.rules()
        if rules is None:
            return None
        nodes, weights, mask = rules
        return np.stack(
            [
                quadrature.mass_per_bin(
                    nodes[p : p + 1], weights[p : p + 1], mask[p : p + 1], grid=grid,
                    sigma=self._sigma(sigma),
                )[1]
                for p in range(nodes.shape[0])
            ]
        )  # fmt: skip

    def _saved_density(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.density_table is None:
            return None
        table = self.density_table.sort_values("lambda")
        return table["lambda"].to_numpy(np.float64), table["density"].to_numpy(np.float64)

    def _sigma(self, sigma: float | None) -> float:
        return (
            sigma
            if sigma is not None
            else (self.value("density_sigma") or quadrature.DEFAULT_SIGMA)
        )

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
        rules = self.rules()
        if grid is None and (same_sigma or rules is None):
            saved = self._saved_density()
            if saved is not None:
                return saved
        if rules is None:
            return None
        return quadrature.density(*rules, grid=grid, sigma=self._sigma(sigma))

    def mass_per_bin(self, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """``(grid, probability mass of each grid cell)``, summing to about 1.

        With Ritz nodes: :func:`winq.quadrature.mass_per_bin` (the exact integral of the
        Gaussian mixture over each cell) on the saved grid, or the default one. Without Ritz
        nodes: the saved density × cell width.
        """
        saved = self.density(sigma=sigma)
        if saved is None:
            return None
        grid, density = saved
        if len(grid) < 2:
            return grid, density
        rules = self.rules()
        if rules is None:
            mass = np.clip(density, 0.0, None) * np.gradient(grid)
            total = mass.sum()
            return grid, (mass / total if total > 0 else mass)
        return quadrature.mass_per_bin(*rules, grid=grid, sigma=self._sigma(sigma))


def read_spectrum(path: str | os.PathLike) -> SpectrumData:
    """Read one spectrum folder (through :mod:`winq.spectrumfile`).

    Raises:
        PlotInputError: missing folder or ``spectrum.json``, invalid JSON, not a winq spectrum,
            a newer format, or unreadable parquet files.
    """
    path = Path(path)
    if not spectrumfile.is_spectrum_folder(path):
        raise PlotInputError(f"{path}: not a spectrum folder (no {SPECTRUM_FILE})")
    try:
        document = spectrumfile.read_document(path)
        ritz = spectrumfile.read_ritz(path)
        density = spectrumfile.read_density(path)
        lanczos = spectrumfile.read_lanczos(path)
    except spectrumfile.SpectrumFileError as e:
        raise PlotInputError(str(e)) from None
    if ritz is not None:
        ritz = ritz[["probe", "node", "weight"]]
    metadata, summary, blocks = document["metadata"], document["summary"], document["blocks"]
    return SpectrumData(path, metadata, summary, ritz, density, blocks, lanczos=lanczos)


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
    try:
        records = runfiles.read_records(path)
    except runfiles.MetricsError as e:
        raise PlotInputError(str(e)) from None
    merged = runfiles.merge_by_step(records)
    if not merged:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")}), records
    frame = pd.DataFrame.from_records(merged)
    frame["step"] = frame["step"].astype("int64")
    return frame.reset_index(drop=True), records


SERIES_MASS_COLUMNS = [
    f"{kind}{suffix}"
    for kind in ("near_zero", "negative")
    for suffix in ("_mass", "_low", "_high", "_resolved")
]


def _mass_columns(kind: str, estimate: quadrature.Estimate) -> dict[str, Any]:
    value = estimate.value
    return {
        f"{kind}_mass": math.nan if value is None else value,
        f"{kind}_low": estimate.ci[0],
        f"{kind}_high": estimate.ci[1],
        f"{kind}_resolved": estimate.resolved,
    }


LATENT_GRID_COLUMNS = ("flip_fraction", "grid_dispersion", "clipped_fraction")


def _logged_number(value: Any) -> float:
    """A logged metric as a float (NumPy scalars unwrapped), NaN when absent or not a number."""
    if isinstance(value, np.generic):
        value = value.item()
    number = _number(value)
    return math.nan if number is None else number


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
        """``config.json``'s ``bits`` (the trainer writes it), else a spectrum's."""
        bits = _bits(self.config.get("bits"))
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
        """WinQ mode: ``"off"`` (baseline), ``"fixed"``, ``"guided"`` (``config["winq"]["mode"]``).

        Without a config that says, inferred from the reset records: none -> ``"off"``; any
        with reason ``"guided"`` -> ``"guided"``; otherwise ``"fixed"``.
        """
        winq = self.config.get("winq")
        mode = winq.get("mode") if isinstance(winq, dict) else None
        if isinstance(mode, str) and mode:
            return mode.lower()
        resets = [r["reset"] for r in self.records if isinstance(r.get("reset"), dict)]
        if not resets:
            return "off"
        return "guided" if any(r.get("reason") == "guided" for r in resets) else "fixed"

    @property
    def is_baseline(self) -> bool:
        return self.mode == "off"

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
    def latent_grid(self) -> pd.DataFrame:
        """The latent grid logged with each QAT evaluation (``docs/formats.md``), one row per
        step that logged any of :data:`LATENT_GRID_COLUMNS`.

        Columns: ``step``, ``flip_fraction`` (share of latents whose level changed since the
        evaluation at ``flip_since``: the interval ending at ``step``), ``flip_since``,
        ``grid_dispersion`` and ``clipped_fraction``; a value not logged at a step (the first
        evaluation has no flip fraction; null, non-numbers) is NaN. Empty for runs that logged
        none of them (FP runs, runs written before the fields existed).
        """
        columns = ["step", *LATENT_GRID_COLUMNS, "flip_since"]
        if not any(name in self.metrics.columns for name in LATENT_GRID_COLUMNS):
            empty = {name: pd.Series([], dtype="float64") for name in columns}
            return pd.DataFrame({**empty, "step": pd.Series([], dtype="int64")})
        frame = pd.DataFrame({"step": self.metrics["step"].to_numpy()})
        for name in columns[1:]:
            if name in self.metrics.columns:
                frame[name] = [_logged_number(v) for v in self.metrics[name]]
            else:
                frame[name] = math.nan
        logged = frame[list(LATENT_GRID_COLUMNS)].notna().any(axis=1)
        return frame[logged].reset_index(drop=True)

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
        the controller's ``diagnostics`` records. Columns: ``step``, ``lambda_max``,
        ``lambda_min``, ``source`` and, for ``near_zero`` and ``negative`` (λ < −ε): the
        mass ``K``, its interval ``K_low``/``K_high`` (NaN when unknown) and ``K_resolved``
        (True/False/None). With ``sigma`` the spectra's near-zero mass is the broadened one
        (:meth:`SpectrumData.mass`); logged diagnostics keep the controller's own measure.
        """
        rows = []
        for spectrum in self.spectra:
            if spectrum.alpha is not None or spectrum.step is None:
                continue
            row = {"step": spectrum.step, "source": "spectrum"}
            for kind, width in (("near_zero", sigma), ("negative", None)):
                row.update(_mass_columns(kind, spectrum.mass(kind, eps, width)[0]))
            row["lambda_max"], row["lambda_min"] = spectrum.lambda_max, spectrum.lambda_min
            rows.append(row)
        if not rows:
            for record in self.records:
                diagnostics = record.get("diagnostics")
                if not isinstance(diagnostics, dict):
                    continue
                row = {"step": record["step"], "source": "diagnostics"}
                for kind in ("near_zero", "negative"):
                    estimate = _saved_estimate(diagnostics, f"{kind}_mass")
                    row.update(_mass_columns(kind, estimate))
                row["lambda_max"] = _number(diagnostics.get("lambda_max"))
                row["lambda_min"] = _number(diagnostics.get("lambda_min"))
                rows.append(row)
        columns = ["step", *SERIES_MASS_COLUMNS, "lambda_max", "lambda_min", "source"]
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
    if not runfiles.is_run_folder(path):
        raise PlotInputError(f"{path}: not a run folder (no {METRICS_FILE})")
    has_metrics = (path / METRICS_FILE).is_file()
    config: dict[str, Any] = {}
    if (path / CONFIG_FILE).is_file():
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
            if runfiles.is_run_folder(here):
                runs.add(here.resolve())
                found_here += 1
                dirs[:] = [d for d in dirs if d != runfiles.CHECKPOINTS]
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

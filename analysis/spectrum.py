r"""``Spectrum``: the result of an SLQ run, its summary, and its folder format.

A spectrum holds, for each of P probes, the m Gauss-quadrature nodes :math:`\theta_{pj}` (Ritz
values) and weights :math:`\tau_{pj}` (squared first components of the tridiagonal's
eigenvectors; :math:`\sum_j \tau_{pj} = 1`), as two ``(probes, steps)`` float64 arrays. A
probe whose Lanczos process broke down after :math:`m_p < m` steps (an invariant subspace:
its nodes are then exact eigenvalues) is padded to m columns with weight 0 and node equal to
the probe's largest node, and ``mask`` marks the real entries: every weighted statistic and
the extreme nodes are unchanged by the padding. On disk, ``ritz.parquet`` stores only the
real nodes (ragged), and :meth:`Spectrum.load` pads again the same way.

Folder format (docs/formats.md, format_version 1), written atomically with
:func:`winq.io.atomic_dir`:

* ``spectrum.json`` — ``format_version``, ``kind``, ``metadata``, ``summary`` and, for
  per-block runs, ``blocks`` (``{name: {"num_params", "summary"}}``);
* ``ritz.parquet`` — columns ``probe``, ``node``, ``weight`` (+ ``block``, ``"all"`` for the
  whole selection, in per-block runs);
* ``density.parquet`` — columns ``lambda``, ``density`` for the whole selection.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from winq.analysis import diagnostics
from winq.io import atomic_dir, atomic_write_json

__all__ = ["FORMAT_VERSION", "Spectrum"]

FORMAT_VERSION = 1
KIND = "winq-spectrum"
ALL_BLOCK = "all"


def _jsonable(value):
    """Convert numpy scalars/arrays and non-finite floats (to None) for standard JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def pad_ragged(
    rows_nodes: Sequence[np.ndarray], rows_weights: Sequence[np.ndarray], width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack ragged per-probe rules into ``(probes, width)`` arrays plus the mask.

    Padding: weight 0 and node equal to the probe's largest node.
    """
    width = max([len(r) for r in rows_nodes] + [0]) if width is None else int(width)
    probes = len(rows_nodes)
    nodes = np.zeros((probes, width), dtype=np.float64)
    weights = np.zeros((probes, width), dtype=np.float64)
    mask = np.zeros((probes, width), dtype=bool)
    for p, (theta, tau) in enumerate(zip(rows_nodes, rows_weights)):
        count = len(theta)
        order = np.argsort(theta, kind="stable")
        nodes[p, :count] = np.asarray(theta, dtype=np.float64)[order]
        weights[p, :count] = np.asarray(tau, dtype=np.float64)[order]
        mask[p, :count] = True
        if count:
            nodes[p, count:] = nodes[p, count - 1]
    return nodes, weights, mask


class Spectrum:
    """Quadrature nodes and weights per probe, with metadata and optional extras.

    Args:
        nodes, weights: ``(probes, steps)`` arrays (1-D is one probe).
        metadata: free-form facts (see docs/formats.md); ``num_params`` is expected.
        mask: ``(probes, steps)`` bool, True for real nodes (default: all True).
        blocks: per-block sub-spectra ``{"layer.0": Spectrum, "kind.q_proj": ...}``.
        top_eigenvalues: extreme eigenvalues from a separate (full-reorth Lanczos or power)
            run, largest first.
        trace, trace_stderr: a Hutchinson/Hutch++ estimate; the summary falls back to the
            SLQ estimate :math:`n\\cdot\\overline{\\sum_j\\tau_j\\theta_j}` when absent.
        trace_method: how ``trace`` was obtained (e.g. ``"hutch++"``).
        eps, relative, sigma: defaults :meth:`summary` and :meth:`density` use (the ones
            saved with the spectrum).
    """

    def __init__(
        self,
        nodes,
        weights,
        metadata: Mapping | None = None,
        mask=None,
        blocks: Mapping[str, Spectrum] | None = None,
        top_eigenvalues: Sequence[float] | None = None,
        trace: float | None = None,
        trace_stderr: float | None = None,
        trace_method: str | None = None,
        eps: float = diagnostics.DEFAULT_ZERO_EPS,
        relative: bool = False,
        sigma: float = diagnostics.DEFAULT_SIGMA,
    ) -> None:
        nodes = np.asarray(nodes, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        if nodes.ndim == 1:
            nodes, weights = nodes[None], weights[None]
        if nodes.shape != weights.shape or nodes.ndim != 2:
            raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} must match (2-D)")
        self.nodes = nodes  # (probes, steps)
        self.weights = weights  # (probes, steps)
        self.mask = np.ones(nodes.shape, bool) if mask is None else np.asarray(mask, bool)
        if self.mask.shape != nodes.shape:
            raise ValueError("mask must have the shape of nodes")
        self.metadata = dict(metadata or {})
        self.blocks = dict(blocks) if blocks else {}
        self.top_eigenvalues = (
            None if top_eigenvalues is None else [float(x) for x in top_eigenvalues]
        )
        self.trace = trace
        self.trace_stderr = trace_stderr
        self.trace_method = trace_method if trace is not None else None
        self.eps = float(eps)
        self.relative = bool(relative)
        self.sigma = float(sigma)

    # -- basic facts

    @property
    def probes(self) -> int:
        return self.nodes.shape[0]

    @property
    def num_nodes(self) -> np.ndarray:
        """Real nodes per probe ``(probes,)`` (fewer than ``steps`` after a breakdown)."""
        return self.mask.sum(axis=1)

    @property
    def num_params(self) -> int | None:
        return self.metadata.get("num_params")

    def __repr__(self) -> str:
        extra = f", blocks={len(self.blocks)}" if self.blocks else ""
        return (
            f"Spectrum(probes={self.probes}, steps={self.nodes.shape[1]}, "
            f"num_params={self.num_params}{extra})"
        )

    # -- estimates

    def moments(self, orders: Sequence[int] = (1, 2, 3, 4)) -> np.ndarray:
        """Estimates of :math:`\\operatorname{tr}(H^k)/n`, averaged over probes, ``(len(orders),)``."""
        return diagnostics.moments(self, orders=orders).mean(axis=0)

    def slq_trace(self) -> tuple[float, float]:
        """(estimate, standard error) of :math:`\\operatorname{tr} H` from the first moments:
        :math:`n` times the probe mean of :math:`\\sum_j\\tau_j\\theta_j = u^\\top H u`."""
        n = self.num_params
        first = diagnostics.moments(self, orders=(1,))[:, 0]
        if n is None or first.size == 0:
            return math.nan, math.nan
        stderr = first.std(ddof=1) / math.sqrt(first.size) if first.size > 1 else math.nan
        return float(n * first.mean()), float(n * stderr)

    def density(
        self, grid=None, sigma: float | None = None, num_points: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(grid, density)``: see :func:`winq.analysis.diagnostics.density`."""
        return diagnostics.density(
            self,
            grid=grid,
            sigma=self.sigma if sigma is None else sigma,
            num_points=num_points or diagnostics.DEFAULT_GRID_POINTS,
        )

    def summary(
        self,
        eps: float | None = None,
        relative: bool | None = None,
        sigma: float | None = None,
        quantiles: Sequence[float] = diagnostics.DEFAULT_QUANTILES,
    ) -> dict:
        """Diagnostics (docs/formats.md ``summary``): λ_max, λ_min, abs_ratio, trace and its
        standard error (``trace_method`` says from what), near_zero_mass with its ε,
        convention, absolute threshold and resolution, negative_mass, density σ, quantiles
        of |λ|, and clipped_fraction / top_eigenvalues when known. Undefined values are NaN
        here and ``null`` in JSON."""
        out = diagnostics.summarize(
            self,
            eps=self.eps if eps is None else eps,
            relative=self.relative if relative is None else relative,
            sigma=self.sigma if sigma is None else sigma,
            quantiles=quantiles,
        )
        if self.trace is not None:
            trace, stderr, method = self.trace, self.trace_stderr, self.trace_method
        else:
            (trace, stderr), method = self.slq_trace(), "slq"
        out["trace"] = trace
        out["trace_stderr"] = math.nan if stderr is None else stderr
        out["trace_method"] = method
        out["clipped_fraction"] = self.metadata.get("clipped_fraction")
        out["top_eigenvalues"] = self.top_eigenvalues
        out["probes"] = self.probes
        out["nodes_per_probe"] = int(self.num_nodes.min()) if self.probes else 0
        return out

    # -- I/O

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the spectrum folder (``spectrum.json``, ``ritz.parquet``,
        ``density.parquet``) atomically; returns the path.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        import pandas as pd

        path = Path(path)
        document = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "metadata": _jsonable(self.metadata),
            "summary": _jsonable(self.summary()),
        }
        if self.blocks:
            document["blocks"] = {
                name: {"num_params": block.num_params, "summary": _jsonable(block.summary())}
                for name, block in self.blocks.items()
            }
        frames = []
        parts = [(ALL_BLOCK, self), *self.blocks.items()]
        for name, spectrum in parts:
            probe_index = np.broadcast_to(np.arange(spectrum.probes)[:, None], spectrum.nodes.shape)
            frame = pd.DataFrame(
                {
                    "probe": probe_index[spectrum.mask].astype(np.int64),
                    "node": spectrum.nodes[spectrum.mask],
                    "weight": spectrum.weights[spectrum.mask],
                }
            )
            if self.blocks:
                frame["block"] = pd.Series([name] * len(frame), dtype="string")
            frames.append(frame)
            if not self.blocks:
                break
        ritz = pd.concat(frames, ignore_index=True)
        grid, values = self.density()
        dens = pd.DataFrame({"lambda": grid.astype(np.float64), "density": values})
        with atomic_dir(path, overwrite=overwrite) as tmp:
            ritz.to_parquet(tmp / "ritz.parquet", index=False)
            dens.to_parquet(tmp / "density.parquet", index=False)
            atomic_write_json(tmp / "spectrum.json", document)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Spectrum:
        """Read a spectrum folder written by :meth:`save`.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: not a winq spectrum, or a newer format version.
        """
        import pandas as pd

        path = Path(path)
        with open(path / "spectrum.json", encoding="utf-8") as f:
            document = json.load(f)
        if document.get("kind") != KIND:
            raise ValueError(f"{path} is not a winq spectrum folder")
        version = document.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported spectrum format_version {version!r}")
        ritz = pd.read_parquet(path / "ritz.parquet")
        block_docs = document.get("blocks") or {}

        def build(frame, metadata, summary):
            rows_nodes, rows_weights = [], []
            probes = int(frame["probe"].max()) + 1 if len(frame) else 0
            for p in range(probes):
                part = frame[frame["probe"] == p]
                rows_nodes.append(part["node"].to_numpy(np.float64))
                rows_weights.append(part["weight"].to_numpy(np.float64))
            # slq pads to min(lanczos_steps, num_params) columns; restore that width
            steps = metadata.get("lanczos_steps") or 0
            n = metadata.get("num_params") or steps
            width = max([len(r) for r in rows_nodes] + [min(int(steps), int(n))]) if probes else 0
            nodes, weights, mask = pad_ragged(rows_nodes, rows_weights, width)
            method = summary.get("trace_method")
            has_trace = method not in (None, "slq")
            return cls(
                nodes,
                weights,
                metadata=metadata,
                mask=mask,
                top_eigenvalues=summary.get("top_eigenvalues"),
                trace=summary.get("trace") if has_trace else None,
                trace_stderr=summary.get("trace_stderr") if has_trace else None,
                trace_method=method if has_trace else None,
                eps=summary.get("near_zero_eps", diagnostics.DEFAULT_ZERO_EPS),
                relative=summary.get("near_zero_convention") == "relative_to_lambda_max",
                sigma=summary.get("density_sigma", diagnostics.DEFAULT_SIGMA),
            )

        metadata = document.get("metadata") or {}
        summary = document.get("summary") or {}
        if "block" in ritz.columns:
            whole = build(ritz[ritz["block"] == ALL_BLOCK], metadata, summary)
            for name, entry in block_docs.items():
                block_meta = dict(metadata)
                block_meta["num_params"] = entry.get("num_params")
                block_meta["block"] = name
                whole.blocks[name] = build(
                    ritz[ritz["block"] == name], block_meta, entry.get("summary") or {}
                )
            return whole
        return build(ritz, metadata, summary)

r"""``Spectrum``: the result of an SLQ run, its summary, and its folder format.

A spectrum holds, for each of P probes, the m Gauss-quadrature nodes :math:`\theta_{pj}` (Ritz
values) and weights :math:`\tau_{pj}` (squared first components of the tridiagonal's
eigenvectors; :math:`\sum_j \tau_{pj} = 1`), as two ``(probes, steps)`` float64 arrays. A
probe whose Lanczos process broke down after :math:`m_p < m` steps (an invariant subspace:
its nodes are then exact eigenvalues) is padded to m columns with weight 0 and node equal to
the probe's largest node, and ``mask`` marks the real entries: every weighted statistic and
the extreme nodes are unchanged by the padding. On disk, ``ritz.parquet`` stores only the
real nodes (ragged), and :meth:`Spectrum.load` pads again the same way.

A spectrum measured by :func:`~winq.analysis.slq` also keeps each probe's Lanczos coefficients
(``lanczos_alpha``, ``lanczos_beta``, ``(probes, steps)``). They give each node's residual
bound :math:`|\beta_m s_{mj}|`, which the summary uses to decide which masses the quadrature
resolves (:mod:`winq.quadrature`), and any shorter run from the same probes: the recurrence
of m steps contains that of every m' < m, so :meth:`Spectrum.at_steps` reports the
diagnostics at 30, 60 and 120 steps from one run of 120.

The folder format (``spectrum.json``, ``ritz.parquet``, ``lanczos.parquet``,
``density.parquet``; docs/formats.md) is defined, written and read by :mod:`winq.spectrumfile`,
the one place that knows it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from winq import quadrature as diagnostics
from winq import spectrumfile
from winq.quadrature import pad_ragged

__all__ = ["FORMAT_VERSION", "Spectrum", "pad_ragged"]

FORMAT_VERSION = spectrumfile.FORMAT_VERSION


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
        eps, relative, sigma, ci: defaults :meth:`summary` and :meth:`density` use (the ones
            saved with the spectrum; ``ci`` is the confidence level of the intervals).
        lanczos_alpha, lanczos_beta: each probe's tridiagonal, ``(probes, steps)`` float64,
            NaN after a breakdown (``beta[:, j]`` couples steps j and j+1; the last is the
            final residual norm), or None when unknown (spectra saved before they were kept).
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
        lanczos_alpha=None,
        lanczos_beta=None,
        ci: float = diagnostics.DEFAULT_CI,
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
        self.ci = float(ci)
        self.lanczos_alpha = None if lanczos_alpha is None else np.asarray(lanczos_alpha, float)
        self.lanczos_beta = None if lanczos_beta is None else np.asarray(lanczos_beta, float)

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

    @property
    def residuals(self) -> np.ndarray | None:
        """``(probes, steps)`` residual bound of every node, aligned with :attr:`nodes` (None
        without the Lanczos coefficients)."""
        if self.lanczos_alpha is None or self.lanczos_beta is None:
            return None
        _, _, _, residuals = diagnostics.rules_from_tridiagonals(
            self.lanczos_alpha, self.lanczos_beta
        )
        if residuals.shape[0] != self.probes or residuals.shape[1] > self.nodes.shape[1]:
            return None
        out = np.full(self.nodes.shape, np.inf)  # padding (after a breakdown) is never counted
        out[:, : residuals.shape[1]] = residuals
        return out

    def at_steps(self, steps: int) -> Spectrum:
        """The spectrum the first ``steps`` Lanczos steps of the same probes give (the leading
        part of each saved tridiagonal), with the same metadata and conventions.

        Raises:
            ValueError: no Lanczos coefficients, or ``steps`` outside [1, steps run].
        """
        if self.lanczos_alpha is None or self.lanczos_beta is None:
            raise ValueError(
                "this spectrum has no Lanczos coefficients (saved before they were kept)"
            )
        ran = self.lanczos_alpha.shape[1]
        if int(steps) != steps or not 1 <= steps <= ran:
            raise ValueError(f"steps must be an integer in [1, {ran}], got {steps}")
        steps = int(steps)
        nodes, weights, mask, _ = diagnostics.rules_from_tridiagonals(
            self.lanczos_alpha, self.lanczos_beta, steps
        )
        metadata = {**self.metadata, "lanczos_steps": steps}
        return Spectrum(
            nodes, weights, metadata, mask, eps=self.eps, relative=self.relative,
            sigma=self.sigma, lanczos_alpha=self.lanczos_alpha[:, :steps],
            lanczos_beta=self.lanczos_beta[:, :steps], ci=self.ci,
        )  # fmt: skip

    def convergence(self, steps: Sequence[int], ci: float | None = None) -> dict:
        """``{m: summary at m steps}`` for each m in ``steps`` (see :meth:`at_steps`)."""
        return {int(m): self.at_steps(m).summary(ci=ci) for m in steps}

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
        ci: float | None = None,
    ) -> dict:
        """Diagnostics (docs/formats.md ``summary``, :func:`winq.quadrature.summarize`):
        λ_max and λ_min with their range over probes; the negative, near-zero and positive
        masses at the threshold (ε, or ε·λ_max), the sign-negative and the broadened
        near-zero masses, each with ``_stderr``, ``_ci`` (Student t over probes at level
        ``ci``) and ``_resolved``; the near-zero mass at a ladder of thresholds; trace and its
        standard error (``trace_method`` says from what); quantiles of |λ|; clipped_fraction
        and top_eigenvalues (with their residual bounds) when known. Undefined values are NaN
        here and ``null`` in JSON."""
        clipped = self.metadata.get("clipped_fraction")
        out = diagnostics.summarize(
            self,
            eps=self.eps if eps is None else eps,
            relative=self.relative if relative is None else relative,
            sigma=self.sigma if sigma is None else sigma,
            quantiles=quantiles,
            residuals=self.residuals,
            ci=self.ci if ci is None else ci,
            clipped_fraction=clipped,
        )
        if self.trace is not None:
            trace, stderr, method = self.trace, self.trace_stderr, self.trace_method
        else:
            (trace, stderr), method = self.slq_trace(), "slq"
        out["trace"] = trace
        out["trace_stderr"] = math.nan if stderr is None else stderr
        out["trace_method"] = method
        out["clipped_fraction"] = clipped
        out["top_eigenvalues"] = self.top_eigenvalues
        top = self.metadata.get("top_k") or {}
        out["top_residuals"] = top.get("residuals") if self.top_eigenvalues else None
        out["probes"] = self.probes
        out["nodes_per_probe"] = int(self.num_nodes.min()) if self.probes else 0
        return out

    # -- I/O

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write the spectrum folder (``spectrum.json``, ``ritz.parquet``, ``lanczos.parquet``
        when the coefficients are known, ``density.parquet``) atomically; returns the path.

        ``metadata["report_steps"]`` (e.g. ``[30, 60, 120]``) adds ``by_steps``: the summary at
        each of those numbers of Lanczos steps, from the same probes (:meth:`at_steps`).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
        """
        import pandas as pd

        document = {"metadata": self.metadata, "summary": self.summary()}
        report_steps = self.metadata.get("report_steps")
        if report_steps and self.lanczos_alpha is not None:
            document["by_steps"] = {str(m): s for m, s in self.convergence(report_steps).items()}
        if self.blocks:
            document["blocks"] = {
                name: {"num_params": block.num_params, "summary": block.summary()}
                for name, block in self.blocks.items()
            }
        parts = [(spectrumfile.ALL_BLOCK, self), *self.blocks.items()]
        if not self.blocks:
            parts = parts[:1]
        ritz, lanczos = [], []
        for name, spectrum in parts:
            probe_index = np.broadcast_to(np.arange(spectrum.probes)[:, None], spectrum.nodes.shape)
            frame = pd.DataFrame(
                {
                    "probe": probe_index[spectrum.mask].astype(np.int64),
                    "node": spectrum.nodes[spectrum.mask],
                    "weight": spectrum.weights[spectrum.mask],
                }
            )
            if spectrum.lanczos_alpha is not None:
                alpha, beta = spectrum.lanczos_alpha, spectrum.lanczos_beta
                done = np.isfinite(alpha)
                rows, steps = np.nonzero(done)
                lanczos.append(
                    pd.DataFrame(
                        {
                            "probe": rows.astype(np.int64),
                            "step": steps.astype(np.int64),
                            "alpha": alpha[done],
                            "beta": beta[done],
                        }
                    )
                )
            if self.blocks:
                frame["block"] = pd.Series([name] * len(frame), dtype="string")
                if spectrum.lanczos_alpha is not None:
                    lanczos[-1]["block"] = pd.Series([name] * len(lanczos[-1]), dtype="string")
            ritz.append(frame)
        grid, values = self.density()
        density = pd.DataFrame({"lambda": grid.astype(np.float64), "density": values})
        return spectrumfile.write_folder(
            path,
            document,
            pd.concat(ritz, ignore_index=True),
            density,
            overwrite,
            lanczos=pd.concat(lanczos, ignore_index=True) if lanczos else None,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Spectrum:
        """Read a spectrum folder written by :meth:`save` (format 1 or 2).

        Raises:
            FileNotFoundError: no ``spectrum.json``.
            ValueError: not a winq spectrum, or a newer format version
                (:class:`winq.spectrumfile.SpectrumFileError`).
        """
        document = spectrumfile.read_document(path)
        ritz = spectrumfile.read_ritz(path, block=None)
        if ritz is None:
            raise FileNotFoundError(f"{Path(path) / spectrumfile.RITZ_FILE} does not exist")

        def build(frame, metadata, summary, block):
            # slq pads to min(lanczos_steps, num_params) columns; restore that width
            steps = metadata.get("lanczos_steps") or 0
            n = metadata.get("num_params") or steps
            longest = int(frame.groupby("probe").size().max()) if len(frame) else 0
            width = max(longest, min(int(steps), int(n))) if len(frame) else 0
            nodes, weights, mask = spectrumfile.read_rules(frame, width)
            tridiagonal = spectrumfile.read_lanczos(path, block)
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
                ci=summary.get("ci_level") or diagnostics.DEFAULT_CI,
                lanczos_alpha=None if tridiagonal is None else tridiagonal[0],
                lanczos_beta=None if tridiagonal is None else tridiagonal[1],
            )

        metadata, summary = document["metadata"], document["summary"]
        if "block" not in ritz.columns:
            return build(ritz, metadata, summary, None)
        whole = build(
            ritz[ritz["block"] == spectrumfile.ALL_BLOCK], metadata, summary, spectrumfile.ALL_BLOCK
        )
        for name, entry in document["blocks"].items():
            block_meta = dict(metadata)
            block_meta["num_params"] = entry.get("num_params")
            block_meta["block"] = name
            whole.blocks[name] = build(
                ritz[ritz["block"] == name], block_meta, entry.get("summary") or {}, name
            )
        return whole

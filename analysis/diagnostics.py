r"""Spectral diagnostics from SLQ quadrature nodes and weights.

SLQ (see :mod:`winq.analysis.slq`) approximates the spectral density
:math:`\phi(\lambda) = \frac1n \sum_i \delta(\lambda - \lambda_i)` by the average over P probes
of m-point Gauss quadrature rules, :math:`\hat\phi = \frac1P \sum_p \sum_j \tau_{pj}
\delta(\lambda - \theta_{pj})` (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019).
Every diagnostic here is a functional of that discrete measure:

* ``lambda_max``/``lambda_min``: the largest/smallest Ritz value over all probes. Ritz values
  lie inside :math:`[\lambda_{\min}, \lambda_{\max}]`, so these are inner estimates that the
  extremes converge to first; ``abs_ratio`` is :math:`|\lambda_{\min}| / \lambda_{\max}`.
* ``negative_mass``: :math:`\hat\phi(\theta < 0)`, the fraction of eigenvalues below zero.
* ``near_zero_mass``: :math:`\hat\phi(|\theta| < \varepsilon)` with an absolute ε, or
  ε·λ_max when ``relative`` (the convention of FINDINGS.md).
* ``abs_quantiles``: quantiles of :math:`|\lambda|` under :math:`\hat\phi`.
* ``density``: :math:`\sum \tau\,\mathcal{N}(\lambda; \theta, \sigma^2)` on a grid.

Defaults are those of the WinQ paper's Hessian notebooks (PAPER.md): Gaussian kernel
σ = 5e-3 on a 400-point grid, and "probability of a zero eigenvalue" = mass with
:math:`|\lambda| < 1.5\cdot10^{-3}`.

Resolution. An m-node Gauss rule cannot place mass more finely than its node spacing: the node
closest to zero carries the whole mass of its neighbourhood, so a near-zero mass at an ε much
smaller than that spacing is counted all-or-nothing per probe (FINDINGS.md: with 30 nodes a
9% null space read as 24%). ``near_zero_resolution`` reports the median over probes of the
width of the cell around the node nearest zero (half-way to each neighbour); when it is
large compared to ε the near-zero mass is coarse, and more Lanczos steps refine it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_GRID_POINTS",
    "DEFAULT_QUANTILES",
    "DEFAULT_SIGMA",
    "DEFAULT_ZERO_EPS",
    "abs_quantiles",
    "abs_ratio",
    "density",
    "lambda_max",
    "lambda_min",
    "moments",
    "near_zero_mass",
    "near_zero_resolution",
    "near_zero_threshold",
    "negative_mass",
    "summarize",
]

DEFAULT_SIGMA = 5e-3  # PAPER.md: Gaussian kernel sigma of the reference notebooks
DEFAULT_GRID_POINTS = 400  # PAPER.md: 400-point grid
DEFAULT_ZERO_EPS = 1.5e-3  # PAPER.md: "probability of zero eigenvalue" = mass at |λ| < 1.5e-3
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)


def _arrays(nodes, weights=None, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nodes, weights, mask) as 2-D float64/bool arrays ``(probes, steps)``; accepts a Spectrum."""
    if hasattr(nodes, "nodes") and hasattr(nodes, "weights"):
        spectrum = nodes
        nodes, weights, mask = spectrum.nodes, spectrum.weights, spectrum.mask
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    if weights is None:
        weights = np.full(nodes.shape, 1.0 / max(nodes.shape[1], 1))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape != nodes.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    mask = np.ones(nodes.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return nodes, weights, mask


def _probe_mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def lambda_max(nodes, weights=None, mask=None) -> float:
    """Largest Ritz value over all probes (NaN for an empty spectrum)."""
    nodes, _, mask = _arrays(nodes, weights, mask)
    return float(nodes[mask].max()) if mask.any() else math.nan


def lambda_min(nodes, weights=None, mask=None) -> float:
    """Smallest Ritz value over all probes (NaN for an empty spectrum)."""
    nodes, _, mask = _arrays(nodes, weights, mask)
    return float(nodes[mask].min()) if mask.any() else math.nan


def abs_ratio(nodes, weights=None, mask=None) -> float:
    """:math:`|\\lambda_{\\min}|/\\lambda_{\\max}` (NaN unless λ_max > 0)."""
    top, bottom = lambda_max(nodes, weights, mask), lambda_min(nodes, weights, mask)
    return abs(bottom) / top if top > 0 else math.nan


def negative_mass(nodes, weights=None, mask=None) -> float:
    """Fraction of the spectrum below zero: mean over probes of Σ τ over θ < 0."""
    nodes, weights, mask = _arrays(nodes, weights, mask)
    return _probe_mean(np.where(mask & (nodes < 0), weights, 0.0).sum(axis=1))


def near_zero_threshold(nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, relative=False):
    """The absolute threshold used for the near-zero mass: ε, or ε·λ_max when ``relative``
    (ε·max|θ| if λ_max ≤ 0)."""
    if not relative:
        return float(eps)
    top = lambda_max(nodes, weights, mask)
    if not top > 0:
        n, _, m = _arrays(nodes, weights, mask)
        top = float(np.abs(n[m]).max()) if m.any() else 0.0
    return float(eps) * top


def near_zero_mass(nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, relative=False) -> float:
    """Fraction of the spectrum with :math:`|\\lambda|` below the threshold
    (:func:`near_zero_threshold`): mean over probes of Σ τ over |θ| < threshold."""
    threshold = near_zero_threshold(nodes, weights, mask, eps, relative)
    nodes, weights, mask = _arrays(nodes, weights, mask)
    return _probe_mean(np.where(mask & (np.abs(nodes) < threshold), weights, 0.0).sum(axis=1))


def near_zero_resolution(nodes, weights=None, mask=None) -> float:
    """Median over probes of the width of the quadrature cell around the node nearest zero.

    The cell of node :math:`\\theta_j` spans half-way to each neighbour; at the ends of the
    rule the half-width towards the missing neighbour is taken equal to the other side.
    """
    nodes, _, mask = _arrays(nodes, weights, mask)
    widths = []
    for row, keep in zip(nodes, mask):
        theta = np.sort(row[keep])
        if theta.size < 2:
            continue
        j = int(np.argmin(np.abs(theta)))
        left = (theta[j] - theta[j - 1]) / 2 if j > 0 else None
        right = (theta[j + 1] - theta[j]) / 2 if j + 1 < theta.size else None
        left = right if left is None else left
        right = left if right is None else right
        widths.append(left + right)
    return float(np.median(widths)) if widths else math.nan


def abs_quantiles(
    nodes, weights=None, mask=None, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> dict[str, float]:
    """Quantiles of :math:`|\\lambda|` under the probe-averaged quadrature measure.

    Returns:
        ``{str(q): value}`` — the smallest |θ| whose cumulative weight reaches q.
    """
    nodes, weights, mask = _arrays(nodes, weights, mask)
    probes = nodes.shape[0]
    if not mask.any():
        return {str(q): math.nan for q in quantiles}
    values = np.abs(nodes[mask])
    mass = (weights / max(probes, 1))[mask]
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(mass[order])
    cumulative /= cumulative[-1] if cumulative[-1] > 0 else 1.0
    out = {}
    for q in quantiles:
        index = min(int(np.searchsorted(cumulative, q - 1e-12, side="left")), values.size - 1)
        out[str(q)] = float(values[index])
    return out


def moments(nodes, weights=None, mask=None, orders: Sequence[int] = (1, 2, 3, 4)) -> np.ndarray:
    """Per-probe quadrature moments :math:`\\sum_j \\tau_{pj}\\theta_{pj}^k`, shape
    ``(probes, len(orders))``; their mean over probes estimates :math:`\\operatorname{tr}(H^k)/n`
    and each equals :math:`u^\\top H^k u` (u the unit probe) exactly for k ≤ 2m−1."""
    nodes, weights, mask = _arrays(nodes, weights, mask)
    w = np.where(mask, weights, 0.0)
    safe = np.where(mask, nodes, 0.0)
    return np.stack([(w * safe**k).sum(axis=1) for k in orders], axis=1)


def density(
    nodes,
    weights=None,
    mask=None,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
    num_points: int = DEFAULT_GRID_POINTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-broadened spectral density :math:`\\frac1P\\sum_{p,j}\\tau_{pj}
    \\mathcal{N}(\\lambda;\\theta_{pj},\\sigma^2)`.

    Args:
        grid: points to evaluate at; default ``num_points`` uniform points over
            :math:`[\\lambda_{\\min} - 5\\sigma, \\lambda_{\\max} + 5\\sigma]`.
        sigma: kernel width (default :data:`DEFAULT_SIGMA`).

    Returns:
        ``(grid, density)`` float64 arrays. The density integrates to 1 over the real line;
        on a grid coarser than σ the discrete sum does not (evaluate on a finer grid then).
    """
    nodes, weights, mask = _arrays(nodes, weights, mask)
    sigma = DEFAULT_SIGMA if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if grid is None:
        if not mask.any():
            return np.zeros(0), np.zeros(0)
        low, high = nodes[mask].min() - 5 * sigma, nodes[mask].max() + 5 * sigma
        grid = np.linspace(low, high, int(num_points))
    grid = np.asarray(grid, dtype=np.float64)
    theta = nodes[mask]
    tau = weights[mask] / max(nodes.shape[0], 1)
    values = np.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    # chunk over nodes so memory stays (chunk, grid) whatever the number of nodes
    for start in range(0, theta.size, 256):
        t = theta[start : start + 256, None]
        values += (tau[start : start + 256, None] * np.exp(-0.5 * ((grid - t) / sigma) ** 2)).sum(0)
    return grid, values * norm


def summarize(
    nodes,
    weights=None,
    mask=None,
    eps: float = DEFAULT_ZERO_EPS,
    relative: bool = False,
    sigma: float = DEFAULT_SIGMA,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> dict:
    """Every diagnostic above in one dict (NaN where undefined)."""
    return {
        "lambda_max": lambda_max(nodes, weights, mask),
        "lambda_min": lambda_min(nodes, weights, mask),
        "abs_ratio": abs_ratio(nodes, weights, mask),
        "near_zero_mass": near_zero_mass(nodes, weights, mask, eps, relative),
        "near_zero_eps": float(eps),
        "near_zero_convention": "relative_to_lambda_max" if relative else "absolute",
        "near_zero_threshold": near_zero_threshold(nodes, weights, mask, eps, relative),
        "near_zero_resolution": near_zero_resolution(nodes, weights, mask),
        "negative_mass": negative_mass(nodes, weights, mask),
        "density_sigma": float(sigma),
        "abs_quantiles": abs_quantiles(nodes, weights, mask, quantiles),
    }

r"""The arithmetic of stochastic Lanczos quadrature (SLQ) results, with NumPy alone (no torch).

SLQ approximates the spectral density :math:`\phi(\lambda) = \frac1n\sum_i\delta(\lambda-\lambda_i)`
of an n×n symmetric H by the average over P probes of m-point Gauss quadrature rules,

.. math::
    \hat\phi = \frac1P \sum_{p=1}^P \sum_{j=1}^m \tau_{pj}\,\delta(\lambda - \theta_{pj}),
    \qquad \sum_j \tau_{pj} = 1,

with Ritz values :math:`\theta_{pj}` as nodes and squared first eigenvector components
:math:`\tau_{pj}` as weights (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019). Every
diagnostic winq reports is a functional of that discrete measure, computed here once for the
whole project: the estimators (:mod:`winq.analysis`), the saved-spectrum readers and figures
(:mod:`winq.plots`), the trainer's controller and the study all call these functions.

* ``lambda_max`` / ``lambda_min``: the extreme Ritz values over all probes — inner estimates,
  since Ritz values lie inside :math:`[\lambda_{\min}, \lambda_{\max}]`.
* ``negative_mass``: :math:`\hat\phi(\theta < 0)`; ``near_zero_mass``:
  :math:`\hat\phi(|\theta| < \varepsilon)` with an absolute ε, or ε·λ_max when ``relative``.
* ``broadened_near_zero_mass``: the mass in :math:`|\lambda| < \varepsilon` of the density
  broadened by a Gaussian of width σ, :math:`\frac1P\sum_{p,j}\tau_{pj}
  [\Phi((\varepsilon-\theta_{pj})/\sigma) - \Phi((-\varepsilon-\theta_{pj})/\sigma)]` — the
  convention of the WinQ paper's Hessian analysis (Li et al., arXiv 2605.17471: σ = 5e-3,
  "probability of a zero eigenvalue" = mass with :math:`|\lambda| < 1.5\cdot10^{-3}`), which,
  unlike counting nodes, does not jump by a whole node's weight as a node crosses ε.
* ``density``: :math:`\frac1P\sum_{p,j}\tau_{pj}\mathcal N(\lambda;\theta_{pj},\sigma^2)` on a
  grid (400 points by default, as in that analysis); ``mass_per_bin``: its exact integral over
  each grid cell.
* ``near_zero_resolution``: the width of the quadrature cell around the node nearest zero
  (half-way to each neighbour), median over probes. An m-node rule cannot place mass more
  finely than its node spacing: the node nearest zero carries the whole mass of its
  neighbourhood, so a mass at an ε much smaller than this width is counted all-or-nothing.

**Masses** split the spectrum at a threshold t (ε, or ε·λ_max): ``negative_mass`` (λ < −t),
``near_zero_mass`` (|λ| ≤ t) and ``positive_mass`` (λ > t) sum to 1 for every probe.
``sign_negative_mass`` (λ < 0) is kept under that name only: with few nodes nearly all the
weight near zero sits on one node, and its sign decides the number.

**Uncertainty.** Each per-probe value is the mass of one probe's spectral measure, and the
probes are independent, so a mass is reported as the probe mean with its standard error and a
Student-t interval (:func:`t_interval`); tests/analysis/test_coverage.py measures the coverage
on matrices of known spectrum (BENCHMARKS.md, "Spectral diagnostics").

**Resolution.** The interval covers the spread over probes, not the quadrature's own error: an
m-node rule cannot place mass more finely than its nodes. A mass bounded by t is *resolved*
when the weight the rule may have put on the wrong side of ±t (:func:`ambiguous_mass`: the
nodes adjacent to ±t, unless converged away from it) is at most the interval's half-width or
1% of the mass; otherwise it is reported as unresolved, with the thresholds that are
resolved.

Inputs are ``(probes, steps)`` arrays of nodes and weights and an optional boolean mask of the
real entries (a probe whose Lanczos process broke down early has fewer nodes; see
:func:`pad_ragged`), or any object with ``nodes``, ``weights`` and ``mask`` attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_CI",
    "DEFAULT_GRID_POINTS",
    "DEFAULT_LADDER",
    "DEFAULT_QUANTILES",
    "DEFAULT_SIGMA",
    "DEFAULT_ZERO_EPS",
    "Estimate",
    "abs_quantiles",
    "abs_ratio",
    "ambiguous_mass",
    "as_rules",
    "below_clipped",
    "broadened_near_zero_mass",
    "clipped_bound",
    "default_grid",
    "density",
    "format_estimate",
    "gauss_rule",
    "lambda_max",
    "lambda_min",
    "mass_estimates",
    "mass_per_bin",
    "masses_by_threshold",
    "moments",
    "near_zero_mass",
    "near_zero_resolution",
    "near_zero_threshold",
    "negative_mass",
    "normal_cdf",
    "pad_ragged",
    "per_probe_broadened_near_zero_mass",
    "per_probe_extremes",
    "per_probe_near_zero_mass",
    "per_probe_negative_mass",
    "per_probe_split",
    "rules_from_tridiagonals",
    "significant_digits",
    "smallest_resolved_threshold",
    "summarize",
    "t_interval",
]

DEFAULT_SIGMA = 5e-3  # Gaussian kernel of the WinQ paper's Hessian densities
DEFAULT_GRID_POINTS = 400  # their grid
DEFAULT_ZERO_EPS = 1.5e-3  # their "probability of a zero eigenvalue": mass with |λ| < 1.5e-3
DEFAULT_QUANTILES = (0.5, 0.9, 0.99)


def normal_cdf(z: np.ndarray | float) -> np.ndarray:
    """The standard normal CDF Φ (``scipy.special.ndtr``), the one used everywhere."""
    from scipy.special import ndtr

    return ndtr(np.asarray(z, dtype=np.float64))


def as_rules(nodes, weights=None, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(nodes, weights, mask)`` as 2-D float64/bool arrays ``(probes, steps)``.

    Accepts arrays, or an object with ``nodes``/``weights``/``mask`` (a Spectrum) in place of
    ``nodes``. Weights default to uniform per probe, the mask to all True.

    Raises:
        ValueError: nodes and weights of different shapes.
    """
    if hasattr(nodes, "nodes") and hasattr(nodes, "weights"):
        spectrum = nodes
        nodes, weights, mask = spectrum.nodes, spectrum.weights, getattr(spectrum, "mask", None)
    nodes = np.atleast_2d(np.asarray(nodes, dtype=np.float64))
    if weights is None:
        weights = np.full(nodes.shape, 1.0 / max(nodes.shape[1], 1))
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape != nodes.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    mask = np.ones(nodes.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return nodes, weights, mask


def pad_ragged(
    rows_nodes: Sequence[np.ndarray], rows_weights: Sequence[np.ndarray], width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack ragged per-probe rules into ``(probes, width)`` arrays plus the mask of real nodes.

    Each row is sorted by node; padding has weight 0 and the probe's largest node, so every
    weighted statistic and the extreme nodes are unchanged by it.
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


def _probe_mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


# -- extremes -----------------------------------------------------------------------------------


def lambda_max(nodes, weights=None, mask=None) -> float:
    """Largest Ritz value over all probes (NaN for an empty spectrum)."""
    nodes, _, mask = as_rules(nodes, weights, mask)
    return float(nodes[mask].max()) if mask.any() else math.nan


def lambda_min(nodes, weights=None, mask=None) -> float:
    """Smallest Ritz value over all probes (NaN for an empty spectrum)."""
    nodes, _, mask = as_rules(nodes, weights, mask)
    return float(nodes[mask].min()) if mask.any() else math.nan


def abs_ratio(nodes, weights=None, mask=None) -> float:
    """:math:`|\\lambda_{\\min}|/\\lambda_{\\max}` (NaN unless λ_max > 0)."""
    top, bottom = lambda_max(nodes, weights, mask), lambda_min(nodes, weights, mask)
    return abs(bottom) / top if top > 0 else math.nan


# -- masses -------------------------------------------------------------------------------------


def per_probe_negative_mass(nodes, weights=None, mask=None) -> np.ndarray:
    """``(probes,)``: Σ τ over θ < 0, per probe."""
    nodes, weights, mask = as_rules(nodes, weights, mask)
    return np.where(mask & (nodes < 0), weights, 0.0).sum(axis=1)


def negative_mass(nodes, weights=None, mask=None) -> float:
    """Fraction of the spectrum below zero: the probe mean of :func:`per_probe_negative_mass`."""
    return _probe_mean(per_probe_negative_mass(nodes, weights, mask))


def near_zero_threshold(nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, relative=False):
    """The absolute threshold of the near-zero mass: ε, or ε·λ_max when ``relative``
    (ε·max|θ| if λ_max ≤ 0)."""
    if not relative:
        return float(eps)
    top = lambda_max(nodes, weights, mask)
    if not top > 0:
        n, _, m = as_rules(nodes, weights, mask)
        top = float(np.abs(n[m]).max()) if m.any() else 0.0
    return float(eps) * top


def per_probe_near_zero_mass(
    nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, relative=False
) -> np.ndarray:
    """``(probes,)``: Σ τ over |θ| < threshold (:func:`near_zero_threshold`), per probe."""
    threshold = near_zero_threshold(nodes, weights, mask, eps, relative)
    nodes, weights, mask = as_rules(nodes, weights, mask)
    return np.where(mask & (np.abs(nodes) < threshold), weights, 0.0).sum(axis=1)


def near_zero_mass(nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, relative=False) -> float:
    """Fraction of the spectrum with |λ| below the threshold: the probe mean of
    :func:`per_probe_near_zero_mass`."""
    return _probe_mean(per_probe_near_zero_mass(nodes, weights, mask, eps, relative))


def per_probe_broadened_near_zero_mass(
    nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, sigma=DEFAULT_SIGMA
) -> np.ndarray:
    """``(probes,)``: the mass in |λ| < ε of each probe's rule broadened by N(0, σ²)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    nodes, weights, mask = as_rules(nodes, weights, mask)
    inside = normal_cdf((eps - nodes) / sigma) - normal_cdf((-eps - nodes) / sigma)
    return np.where(mask, weights * inside, 0.0).sum(axis=1)


def broadened_near_zero_mass(
    nodes, weights=None, mask=None, eps=DEFAULT_ZERO_EPS, sigma=DEFAULT_SIGMA
) -> float:
    """The near-zero mass of the Gaussian-broadened density (the WinQ analysis' convention):
    the probe mean of :func:`per_probe_broadened_near_zero_mass`."""
    return _probe_mean(per_probe_broadened_near_zero_mass(nodes, weights, mask, eps, sigma))


def near_zero_resolution(nodes, weights=None, mask=None) -> float:
    """Median over probes of the width of the quadrature cell around the node nearest zero.

    The cell of node :math:`\\theta_j` spans half-way to each neighbour; at the ends of the
    rule the half-width towards the missing neighbour is taken equal to the other side.
    """
    nodes, _, mask = as_rules(nodes, weights, mask)
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
    nodes, weights, mask = as_rules(nodes, weights, mask)
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
    nodes, weights, mask = as_rules(nodes, weights, mask)
    w = np.where(mask, weights, 0.0)
    safe = np.where(mask, nodes, 0.0)
    return np.stack([(w * safe**k).sum(axis=1) for k in orders], axis=1)


# -- rules from Lanczos coefficients ------------------------------------------------------------


def gauss_rule(alpha, beta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The m-point Gauss rule of one probe's tridiagonal, with each node's residual.

    Args:
        alpha: ``(m,)`` diagonal of :math:`T_m`.
        beta: ``(m,)``: ``beta[:m-1]`` the off-diagonal, ``beta[m-1]`` the norm
            :math:`\\beta_m` of the last Lanczos residual (0 after a breakdown).

    Returns:
        ``(nodes, weights, residuals)``: ascending Ritz values θ_j, weights
        :math:`\\tau_j = s_{1j}^2` and residual bounds :math:`r_j = |\\beta_m s_{mj}|`
        (Parlett 1998, §13.2: some eigenvalue lies within r_j of θ_j).
    """
    from scipy.linalg import eigh_tridiagonal

    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    m = alpha.size
    if m == 1:
        return alpha.copy(), np.ones(1), np.abs(beta[:1])
    theta, vectors = eigh_tridiagonal(alpha, beta[: m - 1])
    weights = vectors[0] ** 2
    return theta, weights / weights.sum(), np.abs(beta[m - 1] * vectors[-1])


def rules_from_tridiagonals(alphas, betas, steps: int | None = None):
    """Padded ``(nodes, weights, mask, residuals)`` of every probe's tridiagonal, truncated to
    its first ``steps`` steps (the rule an m-step run from the same probe would have given:
    the leading principal submatrix of T is the shorter run's T)."""
    alphas = np.atleast_2d(np.asarray(alphas, dtype=np.float64))
    betas = np.atleast_2d(np.asarray(betas, dtype=np.float64))
    rows = []
    for a, b in zip(alphas, betas):
        done = int(np.sum(np.isfinite(a)))
        keep = done if steps is None else min(done, int(steps))
        rows.append(gauss_rule(a[:keep], b[:keep]) if keep else (np.zeros(0),) * 3)
    width = max([len(r[0]) for r in rows] + [0])
    nodes, weights, mask = pad_ragged([r[0] for r in rows], [r[1] for r in rows], width)
    residuals = np.full(nodes.shape, np.inf)
    for p, (theta, _, res) in enumerate(rows):
        order = np.argsort(theta, kind="stable")
        residuals[p, : len(theta)] = res[order]
    return nodes, weights, mask, residuals


# -- resolution -------------------------------------------------------------------------------

CONVERGED_RADIUS = 3.0  # a node with residual r holds its weight within about 3r of itself


def ambiguous_mass(
    nodes,
    weights=None,
    mask=None,
    residuals=None,
    edges: Sequence[float] = (0.0,),
    width: float = 0.0,
    placement: float = 0.0,
) -> np.ndarray:
    r"""``(probes,)``: the weight the quadrature may have put on the wrong side of an edge.

    For a threshold t between the nodes :math:`\theta_k < t < \theta_{k+1}`, the
    Chebyshev–Markov–Stieltjes inequalities bound the probe's true spectral mass below t by
    the rule's :math:`\sum_{j<k}\tau_j` and :math:`\sum_{j\le k+1}\tau_j` (Golub & Meurant,
    *Matrices, Moments and Quadrature*, 2010, §6.1), so the rule's own value
    :math:`\sum_{j\le k}\tau_j` is off by at most :math:`\max(\tau_k, \tau_{k+1})`: only
    the nodes adjacent to t are in doubt, the heavier one by its whole weight. A converged node is not: with residual
    :math:`r_j = |\beta_m s_{mj}|`, the component of its Ritz vector farther than δ from
    :math:`\theta_j` has norm at most :math:`r_j/\delta` (Parlett, *The Symmetric Eigenvalue
    Problem*, 1998, Thm 11.7.1), so a node with :math:`3 r_j` below its distance to t holds
    (nearly all of) its weight on its own side. The ambiguous weight sums, over the edges, the
    heavier adjacent node that is not so converged (any adjacent node without residuals),
    each node counted once.

    ``width`` widens each edge to a window :math:`[e - w, e + w]` for a broadened mass: nodes
    inside it are ambiguous unless placed to within ``placement`` (:math:`3 r_j` ≤ σ), and the
    nearest node on each side is judged by its distance to the window.
    """
    nodes, weights, mask = as_rules(nodes, weights, mask)
    if residuals is None:
        residuals = np.full(nodes.shape, np.inf)
    spread = CONVERGED_RADIUS * np.asarray(residuals, dtype=np.float64)
    out = np.zeros(nodes.shape[0])
    for p in range(nodes.shape[0]):
        theta, tau, reach = nodes[p, mask[p]], weights[p, mask[p]], spread[p, mask[p]]
        doubtful = np.zeros(theta.shape, dtype=bool)
        for edge in edges:
            low, high = edge - width, edge + width
            doubtful |= (theta >= low) & (theta <= high) & ~(reach <= placement)
            neighbours = []
            below, above = np.nonzero(theta < low)[0], np.nonzero(theta > high)[0]
            if below.size and not reach[below[-1]] < low - theta[below[-1]]:
                neighbours.append(below[-1])
            if above.size and not reach[above[0]] < theta[above[0]] - high:
                neighbours.append(above[0])
            if neighbours:  # the bound is one-sided: the heavier neighbour may be misplaced
                doubtful[max(neighbours, key=lambda k: tau[k])] = True
        out[p] = tau[doubtful].sum()
    return out


def per_probe_split(nodes, weights=None, mask=None, threshold: float = DEFAULT_ZERO_EPS):
    """``(negative, near_zero, positive)``, each ``(probes,)``: Σ τ over θ < −t, |θ| ≤ t and
    θ > t. The three sum to each probe's total weight (1)."""
    nodes, weights, mask = as_rules(nodes, weights, mask)
    w = np.where(mask, weights, 0.0)
    return (
        np.where(nodes < -threshold, w, 0.0).sum(axis=1),
        np.where(np.abs(nodes) <= threshold, w, 0.0).sum(axis=1),
        np.where(nodes > threshold, w, 0.0).sum(axis=1),
    )


# -- intervals ----------------------------------------------------------------------------------

DEFAULT_CI = 0.95
RESOLUTION_FLOOR = 0.01  # quadrature ambiguity always tolerated: 1% of the spectral mass


@dataclass(frozen=True)
class Estimate:
    """A probe-averaged estimate with its uncertainty.

    Attributes:
        value: the mean over probes.
        stderr: the standard error of that mean (sample s.d. / √P; NaN for one probe).
        ci: the Student-t interval ``(low, high)`` at the confidence asked (NaN for one probe),
            clipped to ``bounds``.
        resolved: whether the quadrature places mass finely enough at the estimate's
            threshold(s) (None when not applicable or unknown).
        ambiguous: the mean ambiguous weight behind ``resolved`` (None when unknown).
    """

    value: float
    stderr: float
    ci: tuple[float, float]
    resolved: bool | None = None
    ambiguous: float | None = None

    @property
    def half_width(self) -> float:
        low, high = self.ci
        return (high - low) / 2 if math.isfinite(low) and math.isfinite(high) else math.nan

    def separated_from(self, other: Estimate) -> bool:
        """Whether the two intervals do not overlap (False when either is unknown)."""
        a, b = self.ci, other.ci
        if not all(math.isfinite(x) for x in (*a, *b)):
            return False
        return a[1] < b[0] or b[1] < a[0]


def t_interval(values, ci: float = DEFAULT_CI, bounds=(0.0, 1.0)) -> Estimate:
    """Mean, standard error and Student-t interval of per-probe values.

    With P probes the interval is :math:`\\bar x \\pm t_{P-1, (1+c)/2}\\, s/\\sqrt P`. The
    probes are independent and each per-probe value is a sum of many small contributions
    (:math:`(q_i^\\top u)^2` over the eigenvalues counted), so their mean is close to normal;
    the t quantile accounts for estimating s from few probes. Coverage is measured, not
    assumed: tests/analysis/test_coverage.py and BENCHMARKS.md (nominal 95%, observed 88–98%
    on matrices of known spectrum with 4–16 probes).
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Estimate(math.nan, math.nan, (math.nan, math.nan))
    mean = float(values.mean())
    if bounds is not None:  # a mass of weights that sum to 1 in exact arithmetic can reach 1 + ulp
        mean = min(max(mean, bounds[0]), bounds[1])
    if values.size < 2:
        return Estimate(mean, math.nan, (math.nan, math.nan))
    from scipy.stats import t

    stderr = float(values.std(ddof=1) / math.sqrt(values.size))
    half = float(t.ppf(0.5 + ci / 2, values.size - 1)) * stderr
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return Estimate(mean, stderr, (low, high))


# -- densities ----------------------------------------------------------------------------------


def default_grid(
    nodes, weights=None, mask=None, sigma=DEFAULT_SIGMA, num_points=DEFAULT_GRID_POINTS
):
    """``num_points`` uniform points over :math:`[\\theta_{\\min} - 5\\sigma, \\theta_{\\max} +
    5\\sigma]` (empty for an empty spectrum)."""
    nodes, _, mask = as_rules(nodes, weights, mask)
    if not mask.any():
        return np.zeros(0)
    return np.linspace(
        nodes[mask].min() - 5 * sigma, nodes[mask].max() + 5 * sigma, int(num_points)
    )


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
        grid: points to evaluate at; default :func:`default_grid`.
        sigma: kernel width (default :data:`DEFAULT_SIGMA`).

    Returns:
        ``(grid, density)`` float64 arrays. The density integrates to 1 over the real line;
        on a grid coarser than σ the discrete sum does not (:func:`mass_per_bin` does).

    Raises:
        ValueError: a non-positive sigma.
    """
    sigma = DEFAULT_SIGMA if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    nodes, weights, mask = as_rules(nodes, weights, mask)
    if grid is None:
        grid = default_grid(nodes, weights, mask, sigma, num_points)
    grid = np.asarray(grid, dtype=np.float64)
    theta = nodes[mask]
    tau = weights[mask] / max(nodes.shape[0], 1)
    values = np.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    # chunks over nodes keep memory at (chunk, grid) whatever the number of nodes
    for start in range(0, theta.size, 256):
        t = theta[start : start + 256, None]
        values += (tau[start : start + 256, None] * np.exp(-0.5 * ((grid - t) / sigma) ** 2)).sum(0)
    return grid, values * norm


def mass_per_bin(
    nodes, weights=None, mask=None, grid: np.ndarray | None = None, sigma: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(grid, probability mass of each grid cell)`` of the broadened density, summing to 1.

    The mass of a cell is the exact integral of the Gaussian mixture over it,
    :math:`\\frac1P\\sum_{p,j}\\tau_{pj}[\\Phi((b-\\theta_{pj})/\\sigma) -
    \\Phi((a-\\theta_{pj})/\\sigma)]`, with cells half-way between grid points and the end cells
    collecting the tails. Unlike density × cell width it stays faithful on a grid coarser than σ,
    where narrow peaks would alias into spikes and gaps.
    """
    sigma = DEFAULT_SIGMA if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    nodes, weights, mask = as_rules(nodes, weights, mask)
    if grid is None:
        grid = default_grid(nodes, weights, mask, sigma)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.size < 2:
        return grid, np.ones_like(grid)
    edges = np.concatenate([[-np.inf], (grid[1:] + grid[:-1]) / 2, [np.inf]])
    theta = nodes[mask]
    tau = weights[mask] / max(nodes.shape[0], 1)
    mass = np.zeros_like(grid)
    for start in range(0, theta.size, 256):
        cdf = normal_cdf((edges[:, None] - theta[None, start : start + 256]) / sigma)
        mass += np.diff(cdf, axis=0) @ tau[start : start + 256]  # (edges, nodes) -> (cells,)
    return grid, mass


def _estimate_fields(key: str, estimate: Estimate) -> dict:
    """``{K, K_stderr, K_ci, K_resolved}`` of one estimate (the summary's flat layout)."""
    return {
        key: estimate.value,
        f"{key}_stderr": estimate.stderr,
        f"{key}_ci": list(estimate.ci),
        f"{key}_resolved": estimate.resolved,
    }


def _resolved(estimate: Estimate, ambiguous: np.ndarray) -> Estimate:
    """``estimate`` with its resolution: the mean ambiguous weight may not exceed the
    interval's half-width (or :data:`RESOLUTION_FLOOR`, which also serves a single probe), so
    the quadrature's worst case at most doubles the uncertainty the interval states."""
    ambiguity = float(np.mean(ambiguous)) if ambiguous.size else math.nan
    half = estimate.half_width
    tolerance = max(half if math.isfinite(half) else 0.0, RESOLUTION_FLOOR)
    resolved = bool(ambiguity <= tolerance) if math.isfinite(ambiguity) else None
    return Estimate(estimate.value, estimate.stderr, estimate.ci, resolved, ambiguity)


def mass_estimates(
    nodes,
    weights=None,
    mask=None,
    residuals=None,
    eps: float = DEFAULT_ZERO_EPS,
    relative: bool = False,
    sigma: float | None = DEFAULT_SIGMA,
    ci: float = DEFAULT_CI,
) -> dict[str, Estimate]:
    """Every mass at the threshold t = :func:`near_zero_threshold` as an :class:`Estimate`:
    ``negative_mass`` (λ < −t), ``near_zero_mass`` (|λ| ≤ t), ``positive_mass`` (λ > t),
    ``sign_negative_mass`` (λ < 0: decided by the sign of the node nearest zero, so read it
    beside its resolution) and, with ``sigma``, ``near_zero_mass_broadened`` (the mass in
    |λ| < t of the density broadened by N(0, σ²), the WinQ analysis' convention)."""
    nodes, weights, mask = as_rules(nodes, weights, mask)
    threshold = near_zero_threshold(nodes, weights, mask, eps, relative)

    def ambiguous(edges, **kwargs):
        return ambiguous_mass(nodes, weights, mask, residuals, edges, **kwargs)

    negative, near, positive = per_probe_split(nodes, weights, mask, threshold)
    out = {
        "negative_mass": _resolved(t_interval(negative, ci), ambiguous((-threshold,))),
        "near_zero_mass": _resolved(t_interval(near, ci), ambiguous((-threshold, threshold))),
        "positive_mass": _resolved(t_interval(positive, ci), ambiguous((threshold,))),
        "sign_negative_mass": _resolved(
            t_interval(per_probe_negative_mass(nodes, weights, mask), ci), ambiguous((0.0,))
        ),
    }
    if sigma is not None:
        broadened = per_probe_broadened_near_zero_mass(nodes, weights, mask, threshold, sigma)
        out["near_zero_mass_broadened"] = _resolved(
            t_interval(broadened, ci),
            ambiguous((-threshold, threshold), width=3 * sigma, placement=sigma),
        )
    return out


DEFAULT_LADDER = (1e-4, 1e-3, 1e-2, 1e-1)  # thresholds relative to λmax for masses_by_threshold


def masses_by_threshold(
    nodes, weights=None, mask=None, residuals=None, ladder=DEFAULT_LADDER, ci=DEFAULT_CI
) -> dict[str, dict]:
    """The near-zero mass at thresholds ``ladder`` × λmax, each ``{threshold, value, stderr,
    ci, resolved}``: where the mass lives near zero and from where on the rule resolves it."""
    out = {}
    for relative_eps in ladder:
        estimate = mass_estimates(nodes, weights, mask, residuals, relative_eps, True, None, ci)[
            "near_zero_mass"
        ]
        out[f"{relative_eps:g}"] = {
            "threshold": near_zero_threshold(nodes, weights, mask, relative_eps, True),
            "value": estimate.value,
            "stderr": estimate.stderr,
            "ci": list(estimate.ci),
            "resolved": estimate.resolved,
        }
    return out


def smallest_resolved_threshold(
    nodes, weights=None, mask=None, residuals=None, start: float = DEFAULT_ZERO_EPS, ci=DEFAULT_CI
) -> float | None:
    """The smallest absolute threshold t ≥ ``start`` on a grid of ×√10 steps up to |λ|max
    at which the near-zero mass is resolved, or None if none is."""
    nodes_, weights_, mask_ = as_rules(nodes, weights, mask)
    top = float(np.abs(nodes_[mask_]).max()) if mask_.any() else 0.0
    threshold = float(start)
    while threshold <= top:
        estimate = mass_estimates(nodes_, weights_, mask_, residuals, threshold, False, None, ci)
        if estimate["near_zero_mass"].resolved:
            return threshold
        threshold *= math.sqrt(10.0)
    return None


def clipped_bound(
    clipped_fraction: float | None, threshold: float, sigma: float | None = None
) -> float | None:
    r"""The lower bound the clipped latents put on a near-zero mass at ``threshold``.

    Each latent weight outside the quantizer's range is an exact zero eigenvalue of the STE
    Hessian (its row and column vanish), so the clipped fraction c bounds the mass with
    |λ| ≤ t from below for every t ≥ 0. Broadened by N(0, σ²), a point mass at 0 keeps
    :math:`2\Phi(t/\sigma) - 1` of its weight inside |λ| < t, so the bound on the
    broadened mass is c times that."""
    if clipped_fraction is None or not math.isfinite(clipped_fraction):
        return None
    if sigma is None:
        return float(clipped_fraction)
    return float(clipped_fraction) * float(2.0 * normal_cdf(threshold / sigma) - 1.0)


def below_clipped(ci, bound: float | None) -> bool:
    """Whether a near-zero mass interval ``ci`` lies entirely below the :func:`clipped_bound`
    ``bound``: an estimator error, not a finding, so the mass is reported as unresolved."""
    if bound is None or ci is None:
        return False
    high = ci[1]
    return bool(high is not None and math.isfinite(high) and high < bound)


def per_probe_extremes(nodes, weights=None, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """``(largest, smallest)`` Ritz value of each probe, each ``(probes,)`` (±inf for a probe
    without nodes)."""
    nodes, _, mask = as_rules(nodes, weights, mask)
    if nodes.shape[1] == 0:
        return np.full(nodes.shape[0], -np.inf), np.full(nodes.shape[0], np.inf)
    largest = np.where(mask, nodes, -np.inf).max(axis=1)
    smallest = np.where(mask, nodes, np.inf).min(axis=1)
    return largest, smallest


def summarize(
    nodes,
    weights=None,
    mask=None,
    eps: float = DEFAULT_ZERO_EPS,
    relative: bool = False,
    sigma: float = DEFAULT_SIGMA,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    residuals=None,
    ci: float = DEFAULT_CI,
    clipped_fraction: float | None = None,
) -> dict:
    """Every diagnostic above in one dict (NaN where undefined); the schema of
    ``spectrum.json``'s summary (docs/formats.md).

    Masses come with ``K_stderr``, ``K_ci`` (Student t over probes, :func:`t_interval`) and
    ``K_resolved`` (:func:`ambiguous_mass` within the half-width or 1%); the extreme Ritz
    values with their range over probes (``lambda_max_probes``: the smallest and largest of the
    per-probe maxima). With ``clipped_fraction`` — each clipped latent is an exact zero
    eigenvalue of the STE Hessian, so it bounds every near-zero mass from below — a near-zero
    interval that lies entirely below it is flagged (``near_zero_mass_below_clipped``) and
    counted as unresolved.
    """
    nodes, weights, mask = as_rules(nodes, weights, mask)
    largest, smallest = per_probe_extremes(nodes, weights, mask)
    finite = np.isfinite(largest)
    out = {
        "lambda_max": lambda_max(nodes, weights, mask),
        "lambda_max_probes": [float(largest[finite].min()), float(largest[finite].max())]
        if finite.any()
        else [math.nan, math.nan],
        "lambda_min": lambda_min(nodes, weights, mask),
        "lambda_min_probes": [float(smallest[finite].min()), float(smallest[finite].max())]
        if finite.any()
        else [math.nan, math.nan],
        "abs_ratio": abs_ratio(nodes, weights, mask),
        "near_zero_eps": float(eps),
        "near_zero_convention": "relative_to_lambda_max" if relative else "absolute",
        "near_zero_threshold": near_zero_threshold(nodes, weights, mask, eps, relative),
        "near_zero_resolution": near_zero_resolution(nodes, weights, mask),
        "density_sigma": float(sigma),
        "ci_level": float(ci),
        "interval": "student-t over probes",
    }
    for key, estimate in mass_estimates(
        nodes, weights, mask, residuals, eps, relative, sigma, ci
    ).items():
        out.update(_estimate_fields(key, estimate))
    out["near_zero_mass_by_threshold"] = masses_by_threshold(nodes, weights, mask, residuals, ci=ci)
    out["near_zero_resolved_threshold"] = smallest_resolved_threshold(
        nodes, weights, mask, residuals, start=out["near_zero_threshold"], ci=ci
    )
    if clipped_fraction is not None:
        for key, width in (("near_zero_mass", None), ("near_zero_mass_broadened", sigma)):
            if f"{key}_ci" in out:
                bound = clipped_bound(clipped_fraction, out["near_zero_threshold"], width)
                below = below_clipped(out[f"{key}_ci"], bound)
                out[f"{key}_below_clipped"] = below
                if below:
                    out[f"{key}_resolved"] = False
    out["abs_quantiles"] = abs_quantiles(nodes, weights, mask, quantiles)
    return out


def significant_digits(half_width: float) -> int:
    """Decimals worth printing for a value known to ± ``half_width``: the half-width to one
    significant digit, or two when its leading digit is 1 or 2 (0.05, 0.012, 0.8); at most 6."""
    if not math.isfinite(half_width) or half_width <= 0:
        return 4
    exponent = math.floor(math.log10(half_width))
    leading = half_width / 10.0**exponent
    decimals = -exponent + (1 if leading < 3 else 0)
    return min(6, max(0, decimals))


def format_estimate(value: float | None, ci=None, missing: str = "n/a") -> str:
    """``"0.72 ± 0.05"``: a value rounded to the digits its interval supports (the interval's
    half-width with two significant digits); ``"0.7234 (interval unknown)"`` without one."""
    if value is None or not math.isfinite(value):
        return missing
    if ci is None or not all(x is not None and math.isfinite(x) for x in ci):
        return f"{value:.4g} (interval unknown)"
    half = (ci[1] - ci[0]) / 2
    if half <= 0:
        return f"{value:.4g} ± 0"
    decimals = significant_digits(half)
    return f"{value:.{decimals}f} ± {half:.{decimals}f}"

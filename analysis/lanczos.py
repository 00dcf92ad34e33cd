r"""The symmetric Lanczos process on a flat-vector operator, with breakdown handling.

Starting from a unit vector :math:`v_1`, Lanczos (1950) builds an orthonormal basis
:math:`V_m = [v_1, \dots, v_m]` of the Krylov space
:math:`\mathcal{K}_m(H, v_1) = \operatorname{span}\{v_1, Hv_1, \dots, H^{m-1}v_1\}` with the
three-term recurrence

.. math::
    \beta_j v_{j+1} = H v_j - \alpha_j v_j - \beta_{j-1} v_{j-1},\qquad
    \alpha_j = v_j^\top H v_j,\quad \beta_j = \lVert \cdot \rVert,

so that :math:`H V_m = V_m T_m + \beta_m v_{m+1} e_m^\top` with
:math:`T_m = \operatorname{tridiag}(\beta, \alpha, \beta)`. The eigenpairs
:math:`(\theta_j, s_j)` of :math:`T_m` give Ritz values :math:`\theta_j` (ascending here)
and Ritz vectors :math:`y_j = V_m s_j`, with the cheap residual bound
:math:`\lVert H y_j - \theta_j y_j\rVert = |\beta_m\, s_{m,j}|` (Parlett, *The Symmetric
Eigenvalue Problem*, 1998, §13.2; Golub & Van Loan, *Matrix Computations*, 4th ed., §10.1).
The extreme Ritz values converge first, which is why a few dozen products find
:math:`\lambda_{\max}` and :math:`\lambda_{\min}` far faster than power iteration.

Reorthogonalisation. In floating point the :math:`v_j` lose orthogonality as Ritz values
converge, and converged eigenvalues reappear as "ghost" copies (Paige 1976). ``reorth="none"``
keeps three vectors in memory and is the right choice for densities (quadrature stays
accurate: Knizhnerman 1996; Golub & Meurant 2010); ``reorth="full"`` keeps the basis as one
``(m, n)`` tensor and orthogonalises each new vector against it by classical Gram–Schmidt —
one matrix–vector product each way — repeated once when the norm drops by more than
:math:`1/\sqrt{2}` (the DGKS criterion: Daniel, Gragg, Kaufman & Stewart 1976; "twice is
enough", Giraud et al. 2005). ``basis_device="cpu"`` keeps that basis in host memory.

Breakdown. If :math:`\beta_j` is zero (to ``breakdown_tol`` relative to the largest
:math:`|\alpha|+\beta` seen), :math:`\mathcal{K}_j` is an invariant subspace: the process stops
early and :math:`T_j`'s eigenvalues are exact eigenvalues of :math:`H` (a zero operator gives
one node at 0, a rank-one operator two nodes). No division by a tiny :math:`\beta` ever happens,
so no NaN can appear.

Coefficients :math:`\alpha, \beta` are accumulated in float64 whatever the operator's dtype;
inner products of reduced-precision vectors use pairwise summation (``torch.sum``), whose
error grows like :math:`\log n` rather than :math:`n`.

Inner products, norms and the reorthogonalisation coefficients go through the operator's
vector space (:func:`~winq.analysis.operator.vector_space`): for a sharded operator each rank
holds its slice of every Lanczos vector (and of the basis) and the partial sums are
all-reduced, so every rank computes the same :math:`\alpha, \beta` and the same Ritz values
as one process would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from winq.analysis.operator import VectorSpace, check_vector, dot, vector_space

__all__ = ["LanczosResult", "dot", "lanczos", "lanczos_tridiagonal", "tridiagonal_eigh"]

REORTH_MODES = ("none", "full")
_DGKS = 1.0 / math.sqrt(2.0)


def default_breakdown_tol(dtype: torch.dtype) -> float:
    """100 machine epsilons of the operator's dtype, relative to the running norm estimate."""
    return 100.0 * torch.finfo(dtype).eps


@dataclass
class LanczosTridiagonal:
    """The raw output of the recurrence.

    Attributes:
        alpha: ``(m,)`` float64 diagonal of :math:`T_m`.
        beta: ``(m,)`` float64; ``beta[j]`` couples :math:`v_{j+1}` and :math:`v_{j+2}` (0-based
            ``j``), so ``beta[:-1]`` is the off-diagonal and ``beta[-1]`` is :math:`\\beta_m`,
            the norm of the final residual (≈0 after a breakdown).
        breakdown: the recurrence stopped early at an (numerically) invariant subspace.
        basis: ``(m, n)`` orthonormal Lanczos vectors (``reorth="full"`` only), else None.
        num_matvecs: operator products used.
    """

    alpha: np.ndarray
    beta: np.ndarray
    breakdown: bool
    basis: torch.Tensor | None
    num_matvecs: int

    @property
    def steps(self) -> int:
        return len(self.alpha)


def lanczos_tridiagonal(
    op,
    v0: torch.Tensor,
    steps: int,
    reorth: str = "none",
    basis_device: torch.device | str | None = None,
    breakdown_tol: float | None = None,
    callback: Callable[[int], None] | None = None,
    stop: Callable[[list, list], bool] | None = None,
) -> LanczosTridiagonal:
    """Run ``steps`` Lanczos steps from ``v0`` (normalised here) and return :math:`T_m`.

    Args:
        op: an operator (``num_params``, ``dtype``, ``device``, ``@``).
        v0: ``(n,)`` start vector, nonzero (this rank's slice for a sharded operator).
        steps: maximum number of steps m (≥ 1); fewer on breakdown.
        reorth: ``"none"`` (three vectors in memory) or ``"full"`` (basis kept).
        basis_device: where the full basis lives (default: the operator's device).
        breakdown_tol: relative threshold on β (default :func:`default_breakdown_tol`).
        callback: called with the step index after every product (progress bars).
        stop: ``stop(alpha, beta) -> bool`` after every step (lists so far); True ends the
            run early (convergence tests).

    Raises:
        ValueError: bad ``steps``/``reorth``, wrong shape, or a zero start vector.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if reorth not in REORTH_MODES:
        raise ValueError(f"reorth must be one of {REORTH_MODES}, got {reorth!r}")
    steps = int(steps)
    space = vector_space(op)
    check_vector(v0, space.local_size)
    if v0.ndim != 1:
        raise ValueError("v0 must be a single vector of shape (n,)")
    steps = min(steps, op.num_params)  # a Krylov space cannot exceed the dimension
    tol = default_breakdown_tol(op.dtype) if breakdown_tol is None else float(breakdown_tol)

    v = v0.detach().to(device=op.device, dtype=op.dtype).clone()
    norm = space.norm(v)
    if not norm > 0 or not math.isfinite(norm):
        raise ValueError("the start vector must be nonzero and finite")
    v.div_(norm)

    basis = None
    if reorth == "full":
        basis = torch.empty(
            (steps, space.local_size), dtype=op.dtype, device=basis_device or op.device
        )

    alpha: list[float] = []
    beta: list[float] = []
    v_prev: torch.Tensor | None = None
    norm_estimate = 0.0
    breakdown = False
    for j in range(steps):
        if basis is not None:
            basis[j].copy_(v)
        w = op @ v
        if w.dtype != op.dtype:
            w = w.to(op.dtype)
        if v_prev is not None:
            w.sub_(v_prev, alpha=beta[-1])
        a = space.dot(w, v)
        w.sub_(v, alpha=a)
        if basis is not None:
            w = _reorthogonalise(w, basis[: j + 1], space)
        b = space.norm(w)
        alpha.append(a)
        beta.append(b)
        norm_estimate = max(norm_estimate, abs(a) + b + (beta[-2] if j > 0 else 0.0))
        if callback is not None:
            callback(j)
        if not math.isfinite(a) or not math.isfinite(b):
            raise FloatingPointError(f"non-finite Lanczos coefficient at step {j + 1}")
        if b <= tol * norm_estimate:
            breakdown = True
            break
        if stop is not None and stop(alpha, beta):
            break
        if j + 1 < steps:
            v_prev, v = v, w.div_(b)
    if basis is not None:
        basis = basis[: len(alpha)]
    return LanczosTridiagonal(
        alpha=np.asarray(alpha, dtype=np.float64),
        beta=np.asarray(beta, dtype=np.float64),
        breakdown=breakdown,
        basis=basis,
        num_matvecs=len(alpha),
    )


def _reorthogonalise(w: torch.Tensor, basis: torch.Tensor, space: VectorSpace) -> torch.Tensor:
    """Classical Gram–Schmidt of ``w`` against the rows of ``basis``, twice if needed (DGKS)."""
    device = w.device
    on_basis = w.to(basis.device)
    before = space.norm(on_basis)
    for _ in range(2):
        coefficients = space.reduce(torch.mv(basis, on_basis))  # (j,)
        on_basis = on_basis - torch.mv(basis.T, coefficients)
        after = space.norm(on_basis)
        if after > _DGKS * before:
            break
        before = after
    return on_basis.to(device)


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the symmetric tridiagonal :math:`T` (diag ``alpha``,
    off-diagonal ``beta[:len(alpha)-1]``) in float64 by ``scipy.linalg.eigh_tridiagonal``.

    Returns:
        ``(theta, S)``: ascending eigenvalues ``(m,)`` and orthonormal eigenvectors ``(m, m)``
        (column j belongs to ``theta[j]``).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    off = np.asarray(beta, dtype=np.float64)[: max(len(alpha) - 1, 0)]
    theta, vectors = eigh_tridiagonal(alpha, off)
    return theta, vectors


WHICH = ("largest", "smallest", "both", "magnitude")


def watched(theta: np.ndarray, count: int, which: str) -> np.ndarray:
    """Indices of the ``count`` Ritz values at the ``which`` end(s) of ascending ``theta``."""
    m = len(theta)
    count = min(count, m)
    if which == "largest":
        return np.arange(m - count, m)
    if which == "smallest":
        return np.arange(count)
    if which == "both":
        return np.unique(np.concatenate([np.arange(count), np.arange(m - count, m)]))
    return np.argsort(-np.abs(theta), kind="stable")[:count]


def _converged_test(tol: float, count: int, which: str) -> Callable[[list, list], bool]:
    def stop(alpha: list, beta: list) -> bool:
        if len(alpha) < count:
            return False
        theta, vectors = tridiagonal_eigh(np.asarray(alpha), np.asarray(beta))
        index = watched(theta, count, which)
        residuals = np.abs(beta[-1] * vectors[-1, index])
        return bool(np.all(residuals <= tol * np.abs(theta[index])))

    return stop


@dataclass
class LanczosResult:
    """Ritz values and what is known about their accuracy.

    Attributes:
        eigenvalues: ``(m,)`` Ritz values θ, ascending, float64.
        residuals: ``(m,)`` residual estimates :math:`|\\beta_m s_{m,j}|` (exact in exact
            arithmetic; with ``reorth="none"`` they stay valid bounds for converged values).
        weights: ``(m,)`` :math:`s_{1,j}^2`, the Gauss quadrature weights of the start vector.
        alpha, beta: the tridiagonal (see :class:`LanczosTridiagonal`), float64.
        steps: m, the steps done (fewer than asked after a breakdown).
        breakdown: an invariant subspace was found (the eigenvalues are then exact).
        true_residuals: ``(r,)`` :math:`\\lVert H y_j - \\theta_j y_j \\rVert` for the Ritz
            pairs in ``ritz_indices`` (only when requested).
        ritz_vectors: ``(n, r)`` unit Ritz vectors :math:`y_j` for ``ritz_indices`` (this
            rank's rows for a sharded operator).
        ritz_indices: indices into ``eigenvalues``.
        num_matvecs: operator products used.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    weights: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    steps: int
    breakdown: bool
    num_matvecs: int
    true_residuals: np.ndarray | None = None
    ritz_vectors: torch.Tensor | None = None
    ritz_indices: np.ndarray | None = None

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def lambda_min(self) -> float:
        return float(self.eigenvalues[0])


def lanczos(
    op,
    steps: int,
    reorth: str = "full",
    basis_device: torch.device | str | None = None,
    seed: int = 0,
    v0: torch.Tensor | None = None,
    distribution: str = "gaussian",
    true_residuals: bool | int = False,
    breakdown_tol: float | None = None,
    tol: float | None = None,
    num_converged: int = 1,
    which: str = "both",
) -> LanczosResult:
    """Extreme eigenvalues of a symmetric operator by the Lanczos method.

    Args:
        op: the operator (e.g. :class:`~winq.analysis.hvp.HessianOperator`).
        steps: Lanczos steps m (operator products), ≥ 1.
        reorth: ``"full"`` (accurate extremes, basis of m vectors kept) or ``"none"``.
        basis_device: device for the basis (``"cpu"`` offloads it from the accelerator).
        seed: seeds the random start vector when ``v0`` is None.
        v0: an explicit start vector ``(n,)``.
        distribution: ``"gaussian"`` or ``"rademacher"`` for the random start.
        true_residuals: also form Ritz vectors and measure
            :math:`\\lVert H y - \\theta y \\rVert` with one more product each: ``True`` for all
            Ritz pairs, an int k for the k smallest and the k largest. Needs ``reorth="full"``.
        breakdown_tol: see :func:`lanczos_tridiagonal`.
        tol: stop before ``steps`` once the ``num_converged`` Ritz values at the ``which``
            end(s) have residual estimates :math:`|\\beta_j s_{j,i}| \\le tol\\,|\\theta_i|`.
            For a symmetric operator each such θ lies within :math:`tol\\,|\\theta|` of an
            eigenvalue (Parlett 1998, Thm 4.5.1), and usually far closer
            (:math:`r^2/\\text{gap}`). None runs all ``steps``.
        num_converged: how many Ritz values the ``tol`` test watches at each end.
        which: ``"largest"``, ``"smallest"``, ``"both"`` (algebraic ends) or ``"magnitude"``
            (largest :math:`|\\theta|`) for the ``tol`` test.

    Returns:
        A :class:`LanczosResult`.

    Raises:
        ValueError: bad arguments, or ``true_residuals`` without the basis.
    """
    if true_residuals and reorth != "full":
        raise ValueError("true_residuals needs the Lanczos basis: use reorth='full'")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    space = vector_space(op)
    if v0 is None:
        generator = space.generator(seed, op.device)
        v0 = space.random(None, distribution, generator, op.dtype, op.device)
    stop = None if tol is None else _converged_test(float(tol), int(num_converged), which)
    run = lanczos_tridiagonal(op, v0, steps, reorth, basis_device, breakdown_tol, stop=stop)
    theta, vectors = tridiagonal_eigh(run.alpha, run.beta)
    weights = vectors[0] ** 2
    residuals = np.abs(run.beta[-1] * vectors[-1])
    result = LanczosResult(
        eigenvalues=theta,
        residuals=residuals,
        weights=weights,
        alpha=run.alpha,
        beta=run.beta,
        steps=run.steps,
        breakdown=run.breakdown,
        num_matvecs=run.num_matvecs,
    )
    if true_residuals:
        m = run.steps
        if true_residuals is True or 2 * int(true_residuals) >= m:
            indices = np.arange(m)
        else:
            k = int(true_residuals)
            indices = np.concatenate([np.arange(k), np.arange(m - k, m)])
        s = torch.as_tensor(vectors[:, indices], dtype=run.basis.dtype, device=run.basis.device)
        y = (run.basis.T @ s).to(op.device)  # (n, r)
        y = y / space.column_norms(y).to(y.dtype)
        hy = op @ y
        thetas = torch.as_tensor(theta[indices], dtype=y.dtype, device=y.device)
        res = space.column_norms(hy - y * thetas)
        result.true_residuals = res.cpu().numpy()
        result.ritz_vectors = y
        result.ritz_indices = indices
        result.num_matvecs += len(indices)
    return result

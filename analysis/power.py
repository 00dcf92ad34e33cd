r"""Power iteration with deflation: the k eigenvalues of largest magnitude.

For eigenpair i, iterate :math:`v \leftarrow P H P v / \lVert P H P v \rVert` with
:math:`P = I - Q Q^\top` projecting out the eigenvectors already found (projection
deflation, as in PyHessian's ``hessian.eigenvalues``, Yao et al. 2020), with Rayleigh
quotient :math:`\lambda = v^\top H v`. It converges to the eigenvalue of largest :math:`|\lambda|`
in the deflated space at the rate :math:`|\lambda_{i+1}/\lambda_i|` per product
(Golub & Van Loan, *Matrix Computations*, 4th ed., §8.2.1), so clustered eigenvalues need many
products; Lanczos (:func:`~winq.analysis.lanczos.lanczos`) reaches the same accuracy with far
fewer. It is kept for parity with PyHessian and because its memory is k + 2 vectors.

Stopping rule: the residual of the current pair, available from the product just made,
:math:`\lVert PHPv - \lambda v\rVert \le tol\,|\lambda|` (P H P is the operator iterated;
H's own residual, reported in ``residuals``, cannot fall below the error the eigenvectors
found earlier leave in P). For a symmetric operator a unit v
with residual r has an eigenvalue within r of λ (Parlett, *The Symmetric Eigenvalue Problem*,
1998, Thm 4.5.1), and within :math:`r^2/\delta` when the other eigenvalues are at least δ
away (the Kato–Temple inequality), so the test bounds the error of λ by ``tol`` relative. PyHessian's rule
— the relative change of λ between two iterations — is weaker: with eigenvalues 1 and 0.89
(ratio 0.89) λ changes by less than 1e-3 per step while it is still 3e-3 below the top
eigenvalue and the residual is 7% of it. ``converged`` records whether the test was met
within ``max_iter``, ``residuals`` the last residual of each pair.

On a sharded operator the inner products and the deflation's :math:`Q^\top v` are
all-reduced (see :func:`~winq.analysis.operator.vector_space`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from winq.analysis.operator import VectorSpace, vector_space

__all__ = ["PowerIterationResult", "power_iteration"]


@dataclass
class PowerIterationResult:
    """Eigenpairs in the order found (decreasing magnitude).

    Attributes:
        eigenvalues: ``(k,)`` float64 Rayleigh quotients.
        eigenvectors: ``(n, k)`` unit vectors (operator dtype and device).
        residuals: ``(k,)`` :math:`\\lVert H v - \\lambda v \\rVert`.
        converged: ``(k,)`` bool, the stopping rule was met within ``max_iter``.
        iterations: ``(k,)`` products used per eigenpair.
        num_matvecs: total products.
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor
    residuals: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    num_matvecs: int


def _project_out(v: torch.Tensor, basis: torch.Tensor | None, space: VectorSpace) -> torch.Tensor:
    if basis is None:
        return v
    return v - basis @ space.reduce(basis.T @ v)


def power_iteration(
    op,
    k: int = 3,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    distribution: str = "gaussian",
) -> PowerIterationResult:
    """Top-``k`` eigenpairs by magnitude with deflation.

    Args:
        op: a symmetric operator.
        k: number of eigenpairs (≤ ``num_params``).
        max_iter: products per eigenpair at most.
        tol: stop when :math:`\\lVert P H P v - \\lambda v \\rVert \\le tol\\,|\\lambda|` (see
            the module docstring).
        seed: seeds the random start vectors.
        distribution: ``"gaussian"`` or ``"rademacher"`` start vectors.

    Raises:
        ValueError: bad ``k``/``max_iter``/``tol``.
    """
    n = op.num_params
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}], got {k}")
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    space = vector_space(op)
    generator = space.generator(seed, op.device)
    vectors = torch.zeros((space.local_size, int(k)), dtype=op.dtype, device=op.device)
    eigenvalues, residuals, converged, iterations = [], [], [], []
    for i in range(int(k)):
        basis = vectors[:, :i] if i else None
        v = space.random(None, distribution, generator, op.dtype, op.device)
        unit = None
        eigenvalue, residual, done, used = math.nan, math.nan, False, 0
        for _ in range(int(max_iter)):
            v = _project_out(v, basis, space)
            norm = space.norm(v)
            if norm == 0.0:  # P H P annihilates the last iterate: its eigenvalue is 0
                eigenvalue, residual, done = 0.0, 0.0, True
                break
            unit = v / norm
            hv = op @ unit
            used += 1
            eigenvalue = space.dot(hv, unit)
            residual = space.norm(hv - eigenvalue * unit)
            # the test is on P H P, the operator iterated: H's own residual cannot fall below
            # the error the earlier eigenvectors leave in P
            deflated = (
                residual
                if basis is None
                else space.norm(_project_out(hv, basis, space) - eigenvalue * unit)
            )
            if deflated <= tol * abs(eigenvalue):
                done = True
                break
            v = hv
        v = unit if unit is not None else _project_out(v, basis, space)
        vectors[:, i] = v
        eigenvalues.append(eigenvalue)
        residuals.append(residual)
        converged.append(done)
        iterations.append(used)
    return PowerIterationResult(
        eigenvalues=np.asarray(eigenvalues, dtype=np.float64),
        eigenvectors=vectors,
        residuals=np.asarray(residuals, dtype=np.float64),
        converged=np.asarray(converged, dtype=bool),
        iterations=np.asarray(iterations, dtype=np.int64),
        num_matvecs=int(sum(iterations)),
    )

r"""Power iteration with deflation: the k eigenvalues of largest magnitude.

For eigenpair i, iterate :math:`v \leftarrow P H P v / \lVert P H P v \rVert` with
:math:`P = I - Q Q^\top` projecting out the eigenvectors already found (projection
deflation, as in PyHessian's ``hessian.eigenvalues``, Yao et al. 2020), with Rayleigh
quotient :math:`\lambda = v^\top H v`. It converges to the eigenvalue of largest :math:`|\lambda|`
in the deflated space at the rate :math:`|\lambda_{i+1}/\lambda_i|` per product
(Golub & Van Loan, *Matrix Computations*, 4th ed., §8.2.1), so clustered eigenvalues need many
products; Lanczos (:func:`~winq.analysis.lanczos.lanczos`) reaches the same accuracy with far
fewer. It is kept for parity with PyHessian and because its memory is k + 2 vectors.

Stopping rule (PyHessian's): the relative change of the Rayleigh quotient between two
iterations falls below ``tol``. ``converged`` records whether that happened before
``max_iter``; ``residuals`` :math:`\lVert Hv - \lambda v\rVert` are reported from the last
product at no extra cost and say how good each pair actually is (a small change of λ does
not imply a small residual when eigenvalues are close).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from winq.analysis.lanczos import dot
from winq.analysis.probes import make_generator, random_vectors

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


def _project_out(v: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    if basis is None:
        return v
    return v - basis @ (basis.T @ v)


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
        tol: stop when :math:`|\\lambda_t - \\lambda_{t-1}| \\le tol\\,(|\\lambda_t| + 10^{-12})`.
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
    generator = make_generator(seed, op.device)
    vectors = torch.zeros((n, int(k)), dtype=op.dtype, device=op.device)
    eigenvalues, residuals, converged, iterations = [], [], [], []
    for i in range(int(k)):
        basis = vectors[:, :i] if i else None
        v = random_vectors(n, None, distribution, generator, op.dtype, op.device)
        unit = None
        eigenvalue, residual, done, used = math.nan, math.nan, False, 0
        for _ in range(int(max_iter)):
            v = _project_out(v, basis)
            norm = math.sqrt(max(dot(v, v), 0.0))
            if norm == 0.0:  # P H P annihilates the last iterate: its eigenvalue is 0
                eigenvalue, residual, done = 0.0, 0.0, True
                break
            unit = v / norm
            hv = op @ unit
            used += 1
            new = dot(hv, unit)
            residual_vector = hv - new * unit
            residual = math.sqrt(max(dot(residual_vector, residual_vector), 0.0))
            del residual_vector
            previous, eigenvalue = eigenvalue, new
            if abs(new - previous) <= tol * (abs(new) + 1e-12):
                done = True
                break
            v = hv
        v = unit if unit is not None else _project_out(v, basis)
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

r"""Stochastic Lanczos quadrature (SLQ): the spectral density of a large symmetric operator.

For a unit probe u, the spectral measure :math:`\mu_u = \sum_i (q_i^\top u)^2
\delta_{\lambda_i}` (:math:`H = \sum_i \lambda_i q_i q_i^\top`) satisfies
:math:`\int f\,d\mu_u = u^\top f(H) u`. m Lanczos steps from u give the tridiagonal
:math:`T_m = S\,\Theta\,S^\top`, and the m-point Gauss rule with nodes :math:`\theta_j` and
weights :math:`\tau_j = S_{1j}^2` reproduces :math:`\int p\,d\mu_u = u^\top p(H) u` exactly for
every polynomial p of degree ≤ 2m−1 (Golub & Meurant, *Matrices, Moments and Quadrature*,
2010, Thm 6.6). Averaging over random probes with :math:`\mathbb{E}[uu^\top] = I/n`
(Rademacher or Gaussian, normalised) gives the density estimate
:math:`\hat\phi = \frac1P\sum_p\sum_j\tau_{pj}\delta_{\theta_{pj}}` of
:math:`\phi = \frac1n\sum_i\delta_{\lambda_i}`, with
:math:`\mathbb{E}\int f d\hat\phi = \operatorname{tr} f(H)/n` for such polynomials
(Ubaru, Chen & Saad 2017, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature",
Algorithm 1; Ghorbani, Krishnan & Xiao 2019 and PyHessian (Yao et al. 2020) for network
Hessians).

Defaults (probes 8, steps 60, no reorthogonalisation) follow the WinQ notebooks' 60 Lanczos
steps without reorthogonalisation (Li et al., "WinQ", arXiv 2605.17471, and its reference code
github.com/facebookresearch/WinQ); without reorthogonalisation only three vectors
are kept, so memory is O(n) whatever m is, and the quadrature stays accurate in finite
precision although converged Ritz values may appear several times with split weight
(Knizhnerman 1996). The tridiagonal is handled in float64 by
``scipy.linalg.eigh_tridiagonal``. A probe whose Lanczos process breaks down early (an
invariant subspace) yields fewer, exact, nodes; see :class:`~winq.analysis.spectrum.Spectrum`
for how it is padded.

Each probe's Lanczos coefficients are returned too (``spectrum.lanczos_alpha``,
``spectrum.lanczos_beta``, NaN after a breakdown): the recurrence of m steps contains that of
every m' < m, so the quadrature at fewer steps is the eigen-decomposition of the leading
:math:`m' \times m'` block of :math:`T_m`, with no further product.

On a sharded operator (an FSDP-sharded model) the probes are the global vectors one process
on CPU would draw with the same seed, each rank keeping its slice, and the inner products are
all-reduced; the spectrum is then the single-process one up to round-off.
"""

from __future__ import annotations

import importlib.metadata
import time

import numpy as np
import torch

from winq.analysis.lanczos import lanczos_tridiagonal, tridiagonal_eigh
from winq.analysis.operator import vector_space
from winq.analysis.spectrum import Spectrum, pad_ragged

__all__ = ["environment", "slq"]


def environment() -> dict:
    """Versions saved beside every result."""
    try:
        winq_version = importlib.metadata.version("winq")
    except importlib.metadata.PackageNotFoundError:
        winq_version = None
    return {"torch_version": torch.__version__, "winq_version": winq_version}


def slq(
    op,
    probes: int = 8,
    steps: int = 60,
    reorth: str = "none",
    seed: int = 0,
    distribution: str = "rademacher",
    progress: bool = True,
    basis_device: torch.device | str | None = None,
    breakdown_tol: float | None = None,
    metadata: dict | None = None,
) -> Spectrum:
    """Spectral density of ``op`` by stochastic Lanczos quadrature.

    Args:
        op: a symmetric operator (``num_params``, ``dtype``, ``device``, ``@``).
        probes: number of random probes P (≥ 1).
        steps: Lanczos steps m per probe (≥ 1; capped at ``num_params``).
        reorth: ``"none"`` or ``"full"`` (see :mod:`winq.analysis.lanczos`).
        seed: seeds one generator from which the probes are drawn in order.
        distribution: ``"rademacher"`` or ``"gaussian"`` probes (normalised to unit length).
        progress: show a tqdm bar counting operator products.
        basis_device: where a full-reorth basis lives.
        breakdown_tol: relative β threshold for breakdown (default 100 ε of the dtype).
        metadata: extra entries for the spectrum's metadata.

    Returns:
        A :class:`~winq.analysis.spectrum.Spectrum` with ``(probes, min(steps, n))`` nodes and
        weights; each probe's weights sum to 1. Its ``lanczos_alpha`` and ``lanczos_beta``
        are the float64 coefficients ``(probes, min(steps, n))`` of each probe's recurrence
        (``beta[p, j]`` couples steps j and j+1; the last is the final residual norm),
        NaN-padded after a breakdown.

    Raises:
        ValueError: ``probes`` or ``steps`` below 1, unknown ``reorth``/``distribution``.
    """
    from tqdm.auto import tqdm

    if int(probes) != probes or probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    probes, steps = int(probes), int(steps)
    n = op.num_params
    width = min(steps, n)
    space = vector_space(op)
    generator = space.generator(seed, op.device)
    start = time.perf_counter()
    matvecs_before = getattr(op, "num_matvecs", None)
    rows_nodes, rows_weights, breakdowns = [], [], 0
    alphas = np.full((probes, width), np.nan)  # (probes, steps)
    betas = np.full((probes, width), np.nan)
    bar = tqdm(total=probes * width, disable=not progress, desc="slq", unit="hvp", leave=False)
    try:
        for probe in range(probes):
            v0 = space.random(None, distribution, generator, op.dtype, op.device)
            run = lanczos_tridiagonal(
                op,
                v0,
                width,
                reorth=reorth,
                basis_device=basis_device,
                breakdown_tol=breakdown_tol,
                callback=lambda _step: bar.update(1),
            )
            del v0
            bar.update(width - run.steps)
            theta, vectors = tridiagonal_eigh(run.alpha, run.beta)
            tau = vectors[0] ** 2
            tau = tau / tau.sum()  # orthonormal columns: a round-off correction only
            rows_nodes.append(theta)
            rows_weights.append(tau)
            alphas[probe, : run.steps] = run.alpha
            betas[probe, : run.steps] = run.beta
            breakdowns += bool(run.breakdown)
    finally:
        bar.close()
    nodes, weights, mask = pad_ragged(rows_nodes, rows_weights, width)
    info = dict(op.metadata()) if hasattr(op, "metadata") else {"num_params": n}
    info.update(
        {
            "probes": probes,
            "lanczos_steps": steps,
            "reorth": reorth,
            "seed": seed,
            "distribution": distribution,
            "breakdowns": breakdowns,
            "wall_seconds": time.perf_counter() - start,
        }
    )
    if matvecs_before is not None:
        info["num_matvecs"] = op.num_matvecs - matvecs_before
    info.update(environment())
    info.update(metadata or {})
    info.setdefault("num_params", n)
    return Spectrum(
        np.asarray(nodes),
        np.asarray(weights),
        metadata=info,
        mask=mask,
        lanczos_alpha=alphas,
        lanczos_beta=betas,
    )

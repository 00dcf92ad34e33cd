r"""Stochastic trace estimation: Hutchinson and Hutch++.

Hutchinson (1990): with probes :math:`g_i` satisfying :math:`\mathbb{E}[g g^\top] = I`,
:math:`\operatorname{tr} H \approx \frac1m \sum_{i=1}^m g_i^\top H g_i`, unbiased with variance
:math:`O(\lVert H\rVert_F^2/m)`: the error falls like :math:`1/\sqrt{m}`.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace
Estimation", SOSA; Algorithm 1): spend m/3 products on a sketch :math:`Q = \operatorname{qr}(HS)`
of the dominant range, m/3 on the exact trace of the projection,
:math:`\operatorname{tr}(Q^\top H Q)`, and m/3 on Hutchinson for the remainder,

.. math::
    \widehat{\operatorname{tr}} = \operatorname{tr}(Q^\top H Q) + \frac{3}{m}\sum_{i=1}^{m/3}
    g_i^\top (I - QQ^\top) H (I - QQ^\top) g_i .

For positive semi-definite H it reaches relative error ε with :math:`O(1/\varepsilon)`
products instead of :math:`O(1/\varepsilon^2)`: the error falls like :math:`1/m` (faster when
the spectrum decays). Memory: the sketch keeps m/3 vectors of length n.

``stderr`` is the standard error of the mean of the stochastic terms (sample standard
deviation / √count); for Hutch++ it is conditional on the sketch Q, whose part of the
estimate is exact.

On a sharded operator (see :func:`~winq.analysis.operator.vector_space`) each rank holds its
rows of the probes and of Q; the quadratic forms and :math:`Q^\top g` are all-reduced, and Q
is orthonormalised from the all-reduced Gram matrix instead of a local QR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from winq.analysis.operator import VectorSpace, vector_space

__all__ = ["TraceResult", "hutchinson"]

METHODS = ("hutchinson", "hutch++")


@dataclass
class TraceResult:
    """A trace estimate.

    Attributes:
        estimate: the trace estimate.
        stderr: standard error of its stochastic part (NaN with a single sample).
        method: ``"hutchinson"`` or ``"hutch++"``.
        samples: ``(count,)`` the stochastic terms :math:`g^\\top A g` averaged.
        low_rank_trace: Hutch++'s exact :math:`\\operatorname{tr}(Q^\\top H Q)` (0 for Hutchinson).
        num_matvecs: operator products used.
    """

    estimate: float
    stderr: float
    method: str
    samples: np.ndarray
    low_rank_trace: float
    num_matvecs: int


def _quadratic_forms(op, probes: torch.Tensor, chunk: int, space: VectorSpace) -> np.ndarray:
    """:math:`g_i^\\top H g_i` for the columns of ``probes`` (n, count), ``chunk`` at a time."""
    values = []
    for start in range(0, probes.shape[1], chunk):
        block = probes[:, start : start + chunk]
        product = op @ block
        values.append(space.reduce((block.double() * product.double()).sum(dim=0)).cpu())
    return torch.cat(values).numpy()


def hutchinson(
    op,
    samples: int = 100,
    method: str = "hutchinson",
    seed: int = 0,
    distribution: str = "rademacher",
    block_size: int = 1,
) -> TraceResult:
    """Estimate :math:`\\operatorname{tr} H` with ``samples`` operator products.

    Args:
        op: a symmetric operator.
        samples: total products m (Hutch++ needs m ≥ 3 and splits it into thirds, the
            remainder going to the Hutchinson part).
        method: ``"hutchinson"`` or ``"hutch++"``.
        seed: seeds the probes.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        block_size: probes per ``op @ block`` call (memory vs. per-call overhead).

    Raises:
        ValueError: unknown method, too few samples.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(samples) != samples or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    samples, chunk = int(samples), max(1, int(block_size))
    n = op.num_params
    space = vector_space(op)
    generator = space.generator(seed, op.device)

    def draw(count: int) -> torch.Tensor:
        return space.random(count, distribution, generator, op.dtype, op.device)

    if method == "hutchinson":
        values = _quadratic_forms(op, draw(samples), chunk, space)
        return TraceResult(
            estimate=float(values.mean()),
            stderr=_stderr(values),
            method=method,
            samples=values,
            low_rank_trace=0.0,
            num_matvecs=samples,
        )

    if samples < 3:
        raise ValueError(f"hutch++ needs at least 3 samples, got {samples}")
    sketch_size = min(samples // 3, n)
    rest = samples - 2 * sketch_size
    sketch = draw(sketch_size)
    hs = torch.cat([op @ sketch[:, s : s + chunk] for s in range(0, sketch_size, chunk)], dim=1)
    q = space.orthonormal_basis(hs)  # (n, sketch_size), float64 for an orthonormal basis
    del hs, sketch
    q_op = q.to(op.dtype)
    hq = torch.cat([op @ q_op[:, s : s + chunk] for s in range(0, sketch_size, chunk)], dim=1)
    low_rank = float(space.reduce((q * hq.double()).sum().reshape(1))[0])
    del hq
    g = draw(rest).double()
    g = (g - q @ space.reduce(q.T @ g)).to(op.dtype)  # (I - QQ^T) G
    values = _quadratic_forms(op, g, chunk, space)
    return TraceResult(
        estimate=low_rank + float(values.mean()),
        stderr=_stderr(values),
        method=method,
        samples=values,
        low_rank_trace=low_rank,
        num_matvecs=samples,
    )


def _stderr(values: np.ndarray) -> float:
    if values.size < 2:
        return math.nan
    return float(values.std(ddof=1) / math.sqrt(values.size))

r"""Random probe vectors for the stochastic estimators (Hutchinson, Hutch++, SLQ, Lanczos starts).

A Rademacher probe has i.i.d. entries ±1 with probability 1/2; a Gaussian probe i.i.d.
N(0, 1) entries. Both satisfy :math:`\mathbb{E}[v v^\top] = I`, so
:math:`\mathbb{E}[v^\top H v] = \operatorname{tr} H` (Hutchinson 1990). Rademacher probes
have the smaller variance, :math:`2(\|H\|_F^2 - \sum_i H_{ii}^2)` against
:math:`2\|H\|_F^2` (Avron & Toledo 2011), and :math:`v^\top v = n` exactly, so SLQ's
normalised probe :math:`v/\sqrt{n}` still gives an unbiased :math:`\operatorname{tr}(f(H))/n`.

Probes are drawn from a ``torch.Generator`` seeded once per call on the operator's device,
so a seed reproduces the same estimate, and every data-parallel rank draws the same vectors;
the ranks of a sharded operator keep their slices of those same vectors
(:meth:`winq.analysis.sharded.ShardedVectorSpace.random`).
"""

from __future__ import annotations

import torch

__all__ = ["DISTRIBUTIONS", "make_generator", "random_vectors"]

DISTRIBUTIONS = ("rademacher", "gaussian")


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` (CPU generator for meta/unknown devices) seeded with ``seed``."""
    device = torch.device(device)
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        generator = torch.Generator()
    return generator.manual_seed(int(seed))


def random_vectors(
    num_params: int,
    count: int | None,
    distribution: str,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Draw probes: shape ``(num_params,)`` if ``count`` is None, else ``(num_params, count)``.

    Raises:
        ValueError: unknown ``distribution``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    shape = (num_params,) if count is None else (num_params, count)
    gen_device = generator.device
    if distribution == "gaussian":
        out = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device)
    else:
        out = torch.randint(0, 2, shape, generator=generator, device=gen_device).to(dtype)
        out.mul_(2).sub_(1)
    return out.to(device)

r"""The linear-operator protocol every estimator in :mod:`winq.analysis` is written against.

An estimator needs exactly one thing from a symmetric matrix :math:`H \in \mathbb{R}^{n\times n}`:
the product :math:`H v`. Writing power iteration, Lanczos, SLQ and Hutchinson against that one
primitive (as curvlinops does with its ``PyTorchLinearOperator``) means they run unchanged on a
neural network's Hessian (:class:`~winq.analysis.hvp.HessianOperator`) and on a plain dense
matrix (:class:`DenseOperator`), where every result can be checked against ``numpy.linalg.eigh``.

Protocol (duck-typed; :class:`Operator` is a convenient base):

* ``num_params`` — the dimension n;
* ``dtype``, ``device`` — of the vectors the operator accepts and returns;
* ``op @ v`` — ``v`` of shape ``(n,)`` gives ``(n,)``; a block ``(n, k)`` gives ``(n, k)``,
  column j being ``H v[:, j]``;
* optionally ``space`` — the :class:`VectorSpace` its vectors live in (see below).

Vectors are always flat: estimators never see per-parameter lists of tensors.

Vector spaces. An estimator touches vectors in four ways besides ``op @ v``: inner products
:math:`a^\top b`, projections :math:`B (B^\top v)` (reorthogonalisation, deflation, Hutch++),
orthonormalisation of a block, and drawing random probes. :class:`VectorSpace` does these for
vectors held whole by one process — the arithmetic every estimator has always used. An
operator whose vectors are split across processes (an FSDP-sharded model:
:class:`~winq.analysis.sharded.ShardedVectorSpace`) supplies a space whose local shapes are
:math:`(n_{\text{local}},)` and whose reductions are all-reduced, so that every rank computes
the same coefficients and the estimators run unchanged. :func:`vector_space` gives an
operator's space, the plain one when it names none.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from winq.analysis.probes import make_generator, random_vectors

__all__ = [
    "DenseOperator",
    "LinearOperator",
    "Operator",
    "VectorSpace",
    "check_vector",
    "dot",
    "vector_space",
]


@runtime_checkable
class LinearOperator(Protocol):
    """What an estimator may rely on (see the module docstring)."""

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor: ...


def check_vector(v: torch.Tensor, num_params: int) -> None:
    """Raise ``ValueError`` unless ``v`` has shape ``(num_params,)`` or ``(num_params, k)``."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(v).__name__}")
    if v.ndim not in (1, 2) or v.shape[0] != num_params:
        raise ValueError(
            f"expected a vector of shape ({num_params},) or ({num_params}, k), got {tuple(v.shape)}"
        )


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """``a·b`` as a Python float; float64 BLAS for float64, pairwise summation otherwise."""
    if a.dtype == torch.float64:
        return float(torch.dot(a, b))
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
    return float(torch.sum(a * b))


class VectorSpace:
    """Flat vectors of length ``size`` held whole by this process.

    Attributes:
        size: the dimension n.
        local_size: the length of the tensors this process holds (n here).
        sharded: False: nothing is reduced across processes.
    """

    sharded = False

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.local_size = int(size)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """:math:`a^\\top b` of two vectors ``(local_size,)``."""
        return dot(a, b)

    def norm(self, a: torch.Tensor) -> float:
        """:math:`\\lVert a \\rVert_2` of a vector."""
        return math.sqrt(max(self.dot(a, a), 0.0))

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum per-process partial inner products (``B^T v``, ``sum(a * b)``): here nothing
        to sum, the tensor is returned as it is."""
        return partial

    def column_norms(self, block: torch.Tensor) -> torch.Tensor:
        """``(k,)`` float64 norms of the columns of a ``(local_size, k)`` block."""
        return torch.linalg.vector_norm(block.double(), dim=0)

    def orthonormal_basis(self, block: torch.Tensor) -> torch.Tensor:
        """A float64 orthonormal basis ``(local_size, k)`` of the columns' span (QR)."""
        q, _ = torch.linalg.qr(block.double())
        return q

    def generator(self, seed: int, device: torch.device | str) -> torch.Generator:
        """The generator probes are drawn from: seeded on the operator's device."""
        return make_generator(seed, device)

    def random(
        self,
        count: int | None,
        distribution: str,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> torch.Tensor:
        """Probes ``(local_size,)`` or ``(local_size, count)`` (see
        :func:`~winq.analysis.probes.random_vectors`)."""
        return random_vectors(self.size, count, distribution, generator, dtype, device)


def vector_space(op) -> VectorSpace:
    """The space ``op``'s vectors live in: ``op.space`` when it has one, else whole vectors
    of length ``op.num_params``."""
    space = getattr(op, "space", None)
    return space if space is not None else VectorSpace(op.num_params)


class Operator:
    """Base class: subclasses implement :meth:`_matmat` on a ``(n, k)`` block.

    ``op @ v`` validates the shape, counts products in :attr:`num_matvecs` (one per column,
    which is what the cost of every estimator is measured in) and maps a flat vector to a
    one-column block and back. Vectors have ``space.local_size`` entries (``num_params``
    unless a subclass sets a sharded :attr:`space`).
    """

    num_params: int
    dtype: torch.dtype
    device: torch.device
    space: VectorSpace | None = None

    def __init__(self) -> None:
        self.num_matvecs = 0

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:  # (n, k) -> (n, k)
        raise NotImplementedError

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        check_vector(v, self.num_params if self.space is None else self.space.local_size)
        if v.ndim == 1:
            self.num_matvecs += 1
            return self._matmat(v.unsqueeze(1)).squeeze(1)
        self.num_matvecs += v.shape[1]
        return self._matmat(v)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_params, self.num_params)

    def metadata(self) -> dict:
        """Facts about the operator worth saving beside a spectrum (free-form)."""
        return {"num_params": self.num_params}


class DenseOperator(Operator):
    """A dense symmetric matrix as an operator, for testing estimators against ``eigh``.

    Args:
        matrix: ``(n, n)`` tensor or array; converted to a tensor (``dtype``/``device``
            default to the input's, float64 for numpy input).
        check_symmetric: raise if ``matrix`` is not symmetric to round-off.

    Raises:
        ValueError: not square, or not symmetric when ``check_symmetric``.
    """

    def __init__(
        self,
        matrix,
        check_symmetric: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        matrix = torch.as_tensor(matrix)
        if dtype is not None or device is not None:
            matrix = matrix.to(dtype=dtype or matrix.dtype, device=device or matrix.device)
        if not matrix.is_floating_point():
            matrix = matrix.double()
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
        if check_symmetric and matrix.numel():
            scale = matrix.abs().max().clamp_min(torch.finfo(matrix.dtype).tiny)
            asym = (matrix - matrix.T).abs().max() / scale
            if asym > 100 * torch.finfo(matrix.dtype).eps:
                raise ValueError(f"matrix is not symmetric (relative asymmetry {asym:.2e})")
        self.matrix = matrix
        self.num_params = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self.matrix @ block.to(self.dtype)

    def metadata(self) -> dict:
        return {"num_params": self.num_params, "operator": "dense"}

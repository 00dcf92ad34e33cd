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
  column j being ``H v[:, j]``.

Vectors are always flat: estimators never see per-parameter lists of tensors.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["DenseOperator", "LinearOperator", "Operator", "check_vector"]


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


class Operator:
    """Base class: subclasses implement :meth:`_matmat` on a ``(n, k)`` block.

    ``op @ v`` validates the shape, counts products in :attr:`num_matvecs` (one per column,
    which is what the cost of every estimator is measured in) and maps a flat vector to a
    one-column block and back.
    """

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def __init__(self) -> None:
        self.num_matvecs = 0

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:  # (n, k) -> (n, k)
        raise NotImplementedError

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        check_vector(v, self.num_params)
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

r"""Flat vectors split across the ranks of an FSDP2-sharded model, like its parameters.

Under FSDP2 (:func:`winq.sharding.shard_model`) each rank r holds rows
:math:`[a_{p,r}, b_{p,r})` of every parameter p (a dim-0 shard). A flat vector over the
selected parameters (the order of :class:`~winq.analysis.hvp.HessianOperator`: parameters in
``named_parameters`` order, each flattened row-major) is split the same way: rank r holds the
entries :math:`[o_p + a_{p,r} s_p,\ o_p + b_{p,r} s_p)` of each parameter's block (offset
:math:`o_p`, row length :math:`s_p`), concatenated in parameter order — exactly the
flattened local shards, so a Hessian-vector product needs no communication beyond FSDP's own.
Every such piece is a contiguous slice of the global vector and the pieces of a rank come in
increasing global order.

Reductions are sums of per-rank partial sums, all-reduced over the mesh's process group in
float64: :math:`a^\top b = \sum_r a_r^\top b_r`. All-reduce leaves the same value on every
rank, so every rank takes the same decisions (Lanczos breakdowns, convergence tests) and
runs the same number of products, which FSDP's collectives require. A block is
orthonormalised by the Gram matrix instead of a QR of rows no rank holds:
:math:`G = Y^\top Y = U \Sigma U^\top`, :math:`Q = Y U \Sigma^{-1/2}`, applied twice for
orthogonality to round-off ("twice is enough", Giraud et al. 2005; CholeskyQR2, Fukaya et al.
2014, is the same idea with a Cholesky factor); directions with
:math:`\sigma < 10^{-12}\,\sigma_{\max}` are dropped, where QR would return an arbitrary
basis vector.

Probes. A probe is the global vector one process would draw with the same generator
(:func:`~winq.analysis.probes.random_vectors`), each rank keeping its slices. The estimators
draw from :meth:`ShardedVectorSpace.generator`, a CPU generator, and the global vector is
streamed in chunks, never held whole: CPU ``randint`` draws one value per entry in order, and
CPU ``randn`` fills whole blocks of 16 from a sequential stream (recomputing the last 16
entries from fresh draws when the length is not a multiple of 16), so chunks whose lengths are
multiples of 16 — the last one at least 16 long — reproduce the single draw bit for bit
(``tests/analysis/test_sharded.py`` checks it). So a sharded run's probes are those of one
process on CPU with the same seed; on a GPU one process draws from the GPU's generator, a
different stream of the same distribution. Each rank generates all n entries of a probe (at
a few hundred million per second) and keeps its own. Given another generator (CUDA's
counter-based Philox lays numbers out by launch geometry, so it cannot be streamed),
:meth:`ShardedVectorSpace.random` draws the whole vector once and keeps the slices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from winq.analysis.operator import VectorSpace
from winq.analysis.probes import make_generator, random_vectors
from winq.sharding import sharded_rows

__all__ = ["ShardedVectorSpace"]

# entries per streamed chunk of a probe: a multiple of 16 (see the module docstring)
STREAM_CHUNK = 1 << 20
_GRAM_CUTOFF = 1e-12


class ShardedVectorSpace(VectorSpace):
    """Vectors of length ``size`` of which this rank holds ``pieces``.

    Args:
        pieces: ``(global_start, length)`` of each contiguous slice this rank holds, in
            increasing global order; their lengths add up to ``local_size``.
        size: the global dimension n.
        group: the process group the partial sums are all-reduced over.
        device: where reductions run (CPU for gloo, the rank's GPU for NCCL).

    Raises:
        ValueError: pieces out of order, overlapping or outside ``[0, size)``.
    """

    sharded = True

    def __init__(
        self,
        pieces: Sequence[tuple[int, int]],
        size: int,
        group=None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(size)
        self.pieces = [(int(start), int(length)) for start, length in pieces if length > 0]
        end = 0
        for start, length in self.pieces:
            if start < end or start + length > self.size:
                raise ValueError(
                    f"slice [{start}, {start + length}) is out of order or outside [0, {size})"
                )
            end = start + length
        self.local_size = sum(length for _, length in self.pieces)
        self.group = group
        self.device = torch.device(device)

    @classmethod
    def from_parameters(cls, params: Sequence[torch.Tensor], group=None) -> ShardedVectorSpace:
        """The space of flat vectors over ``params`` (dim-0 sharded DTensors or plain tensors
        held whole), each rank holding the rows of its shards.

        Raises:
            ValueError: a parameter sharded in another way (see
                :func:`winq.sharding.sharded_rows`).
        """
        import torch.distributed as dist

        pieces, offset = [], 0
        for p in params:
            start, stop = sharded_rows(p)
            row = p.numel() // p.shape[0] if p.ndim else 1
            pieces.append((offset + start * row, (stop - start) * row))
            offset += p.numel()
        device = torch.device("cpu")
        if group is None:
            group = getattr(params[0], "device_mesh", None)
            group = group.get_group() if group is not None else dist.group.WORLD
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        return cls(pieces, offset, group, device)

    # -- reductions

    def reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum of ``partial`` over the ranks (float64), on ``partial``'s device and dtype."""
        import torch.distributed as dist

        total = partial.detach().to(device=self.device, dtype=torch.float64).contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return total.to(device=partial.device, dtype=partial.dtype)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        partial = torch.sum(a * b, dtype=torch.float64).reshape(1)
        return float(self.reduce(partial)[0])

    def column_norms(self, block: torch.Tensor) -> torch.Tensor:
        squares = (block.double() ** 2).sum(dim=0)
        return self.reduce(squares).clamp_min(0.0).sqrt()

    def orthonormal_basis(self, block: torch.Tensor) -> torch.Tensor:
        q = block.double()
        for _ in range(2):
            gram = self.reduce(q.T @ q)  # (k, k), identical on every rank
            values, vectors = torch.linalg.eigh(gram)
            keep = values > _GRAM_CUTOFF * values.max().clamp_min(0.0)
            if not bool(keep.any()):
                return q[:, :0]
            q = q @ (vectors[:, keep] / values[keep].sqrt())
        return q

    # -- probes

    def generator(self, seed: int, device: torch.device | str) -> torch.Generator:
        """A CPU generator whatever the device, so that probes are streamed (see the module
        docstring) and no rank ever holds a whole vector."""
        return make_generator(seed, "cpu")

    def random(
        self,
        count: int | None,
        distribution: str,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> torch.Tensor:
        """This rank's slices of the probes one process would draw from ``generator``:
        ``(local_size,)`` or ``(local_size, count)``."""
        width = 1 if count is None else int(count)
        shape = (self.local_size,) if count is None else (self.local_size, width)
        out = torch.empty(shape, dtype=dtype, device=device)
        if generator.device.type != "cpu":
            whole = random_vectors(self.size, count, distribution, generator, dtype, device)
            position = 0
            for start, length in self.pieces:
                out[position : position + length] = whole[start : start + length]
                position += length
            return out
        position, piece = 0, 0
        for first, last in _stream_chunks(self.size, width):
            chunk = random_vectors(last - first, count, distribution, generator, dtype, "cpu")
            while piece < len(self.pieces):
                start, length = self.pieces[piece]
                lo, hi = max(start, first), min(start + length, last)
                if hi > lo:
                    into = position + (lo - start)
                    out[into : into + hi - lo] = chunk[lo - first : hi - first].to(device)
                if start + length > last:
                    break  # this piece continues in the next chunk
                position += length
                piece += 1
        return out


def _stream_chunks(rows: int, width: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``[first, last)`` covering ``rows`` rows of ``width`` entries, each chunk a
    multiple of 16 entries except the last, which holds at least 16 (or everything)."""
    step = max(16, (STREAM_CHUNK // max(width, 1)) // 16 * 16)
    first = 0
    while first < rows:
        last = min(first + step, rows)
        if (rows - last) * width < 16:
            last = rows
        yield first, last
        first = last

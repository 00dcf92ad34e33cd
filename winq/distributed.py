"""Data-parallel set-up for ``torchrun``: one process per device, DDP, rank 0 writes.

``torchrun --nproc_per_node N -m winq.train.cli ...`` (or ``winq-train``) sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` then joins the process group — NCCL when
CUDA is available, gloo on CPU — and picks the device. Without those variables everything runs
in one process and the helpers below reduce to no-ops, so the loop has one code path.

Every rank holds identical weights (DDP broadcasts them at start and averages gradients), so
a WinQ reset — a deterministic function of the weights — gives identical results everywhere.
Decisions that depend on measurements (the guided controller) are still broadcast from rank
0, so that no floating-point difference between ranks can ever make them disagree.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Dist",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "cleanup",
    "mean_across_ranks",
    "setup",
]


@dataclass(frozen=True)
class Dist:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str = "auto") -> Dist:
    """Join the process group if launched by ``torchrun``; choose the device.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        RuntimeError: CUDA asked for but not available.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked but CUDA is not available")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if not _launched() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    world_size = int(os.environ["WORLD_SIZE"])
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank, local_rank, world_size, dev, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` from rank ``src`` on every rank (identity in one process)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` in one process)."""
    if not _active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (the tensor itself in one process)."""
    if not _active():
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()

"""Worker for test_hvp_distributed.py: two gloo processes, each with its share of batches.

Run as ``python dist_worker.py OUT_DIR``; each rank saves its products to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WORLD_SIZE = 2


def all_batches() -> list[dict]:
    """Four batches of unequal token counts; rank 0 gets three, rank 1 one (uneven shares)."""
    generator = torch.Generator().manual_seed(7)
    batches = []
    for rows, length in ((2, 12), (1, 7), (3, 5), (2, 9)):
        ids = torch.randint(0, 64, (rows, length), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, length - 2 :] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def shares() -> list[list[int]]:
    return [[0, 1, 2], [3]]


def probe_block(num_params: int) -> torch.Tensor:
    return torch.randn(num_params, 2, generator=torch.Generator().manual_seed(3))


def compute(batches) -> dict:
    from analysis_cases import tiny_llama

    from winq.analysis import HessianOperator, slq

    model = tiny_llama(layers=2, dtype=torch.float32)
    out = {}
    for backend in ("double_backward", "func", "finite_difference"):
        op = HessianOperator(model, batches, backend=backend)
        out[f"{backend}/product"] = op @ probe_block(op.num_params)
    op = HessianOperator(model, batches)
    out["tokens"] = torch.tensor(op.num_tokens)
    out["loss"] = torch.tensor(op.loss())
    out["gradient"] = op.gradient()
    out["slq_nodes"] = torch.as_tensor(slq(op, probes=2, steps=5, progress=False).nodes)
    out["batches"] = torch.tensor(op.metadata()["batches"])
    return out


def run(rank: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE
    )
    try:
        batches = all_batches()
        torch.save(compute([batches[i] for i in shares()[rank]]), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=WORLD_SIZE, join=True)

"""Worker for test_sharded.py: two gloo ranks run the estimators on an FSDP2-sharded model.

Run as ``python sharded_worker.py OUT_DIR``; each rank saves what it measured to
``OUT_DIR/rank<r>.pt``. :func:`measure` is also what the test runs in one process on the
unsharded model, so both sides compute exactly the same things.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORLD_SIZE = 2
# 63 tokens: the embedding and output head have an odd number of rows, so FSDP's shards are
# uneven (32 and 31 rows) and the vectors' slices are too
VOCAB = 63
SLQ = {"probes": 2, "steps": 8, "seed": 0, "progress": False}


def build_model():
    from tiny_models import build_tiny_model

    return build_tiny_model("llama", seed=0, layers=2, vocab=VOCAB)


def all_batches() -> list[dict]:
    """Four batches of unequal sizes, two per rank (FSDP needs equal counts)."""
    generator = torch.Generator().manual_seed(7)
    batches = []
    for rows, length in ((2, 12), (1, 7), (3, 5), (2, 9)):
        ids = torch.randint(0, VOCAB, (rows, length), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, length - 2 :] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def shares() -> list[list[int]]:
    return [[0, 1], [2, 3]]


def global_block(num_params: int) -> torch.Tensor:
    return torch.randn(num_params, 2, generator=torch.Generator().manual_seed(3))


def local_part(op, vector: torch.Tensor) -> torch.Tensor:
    """This rank's slices of a global vector (the vector itself for a plain operator)."""
    if op.space is None:
        return vector
    return torch.cat([vector[start : start + length] for start, length in op.space.pieces])


def measure(model, batches, backend: str = "finite_difference") -> dict:
    from winq.analysis import HessianOperator, hutchinson, lanczos, power_iteration, slq

    op = HessianOperator(model, batches, params="all", backend=backend)
    spectrum = slq(op, **SLQ)
    top = lanczos(op, steps=6, reorth="full", seed=1, true_residuals=1)
    power = power_iteration(op, k=2, max_iter=3, tol=1e-3, seed=2)
    trace = hutchinson(op, samples=4, method="hutch++", seed=0)
    return {
        "num_params": op.num_params,
        "local_size": op.space.local_size if op.space is not None else op.num_params,
        "pieces": op.space.pieces if op.space is not None else [(0, op.num_params)],
        "product": op @ local_part(op, global_block(op.num_params)),
        "gradient": op.gradient(),
        "loss": op.loss(),
        "nodes": torch.as_tensor(spectrum.nodes),
        "weights": torch.as_tensor(spectrum.weights),
        "alpha": torch.as_tensor(spectrum.lanczos_alpha),
        "ritz": torch.as_tensor(top.eigenvalues),
        "true_residuals": torch.as_tensor(top.true_residuals),
        "power": torch.as_tensor(power.eigenvalues),
        "trace": trace.estimate,
        "metadata": op.metadata(),
    }


def run(rank: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE
    )
    try:
        from winq.analysis import HessianOperator
        from winq.sharding import local_tensor, shard_model

        torch.set_num_threads(1)
        model = shard_model(build_model())
        before = [local_tensor(p).clone() for p in model.parameters()]
        batches = all_batches()
        mine = [batches[i] for i in shares()[rank]]
        out = measure(model, mine)
        out["restored"] = all(
            torch.equal(a.view(torch.int32), local_tensor(p).view(torch.int32))
            for a, p in zip(before, model.parameters())
        )
        out["local_parameters"] = sum(local_tensor(p).numel() for p in model.parameters())
        errors = {}
        try:
            HessianOperator(model, mine, params="all", backend="double_backward")
        except ValueError as error:
            errors["double_backward"] = str(error)
        try:  # rank 1 passes one batch fewer: every rank must refuse, none may hang
            HessianOperator(model, mine[: 2 - rank], params="all", backend="finite_difference")
        except ValueError as error:
            errors["uneven"] = str(error)
        out["errors"] = errors
        torch.save(out, f"{folder}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=WORLD_SIZE, join=True)

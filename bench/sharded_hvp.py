"""Hessian-vector products beyond one device: per-rank memory and time, DDP vs FSDP2, double
backward vs finite differences; and how far a bfloat16 model moves the spectrum.

``products`` (the default): on the embedded ``small`` preset (3.67M parameters; the Hessian
w.r.t. its linear layers, 3.1M) with 8 x 128 tokens, each configuration runs in its own gloo
process group on CPU — 1 or 2 ranks, data parallel (DDP: every rank holds the whole model and
its half of the batches; the product is all-reduced) or FSDP2 (``winq.sharding.shard_model``:
every rank holds half of every parameter and of every vector), double backward
(``reuse_graph``: the first product builds and caches each batch's first-order graph, later
ones only backpropagate through it) or central finite differences (two plain backward passes
per product). Per rank it reports the time per product (median over ``--products`` products
after the first, every rank starting each product together), the bytes of the parameters
and of the three vectors Lanczos keeps without reorthogonalisation, and the growth of the
peak resident set while products run (activations, cached graphs, gradients, finite
differences' saved copy of θ). Then one line per comparison, ratio first, each ratio between
configurations measured in this same run.

``precision``: slq (8 probes x 60 steps, the same probes) of the ``tiny`` preset, untrained
(``build_model("tiny", seed=0)``) or after ``--train-steps`` AdamW steps on the embedded
corpus, in float32 and in bfloat16 with float32 vectors (double backward), and with finite
differences in float32: λ_max, the distance between the quadrature measures (Wasserstein-1,
over λ_max) and the negative and near-zero masses (threshold 1% of λ_max), against the
float32 run.

    python bench/sharded_hvp.py                        # small preset, 1 and 2 ranks
    python bench/sharded_hvp.py --preset tiny --products 3
    python bench/sharded_hvp.py precision --train-steps 300
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

CONFIGS = (  # (label, parallelism, world size, backend)
    ("DDP x1 double backward", "ddp", 1, "double_backward"),
    ("DDP x1 finite differences", "ddp", 1, "finite_difference"),
    ("FSDP2 x1 finite differences", "fsdp", 1, "finite_difference"),
    ("DDP x2 double backward", "ddp", 2, "double_backward"),
    ("DDP x2 finite differences", "ddp", 2, "finite_difference"),
    ("FSDP2 x2 finite differences", "fsdp", 2, "finite_difference"),
)
COMPARISONS = (  # (what, measured, baseline, quantity)
    ("time/product", "DDP x1 finite differences", "DDP x1 double backward", "seconds"),
    ("time/product", "DDP x2 finite differences", "DDP x2 double backward", "seconds"),
    ("time/product", "FSDP2 x2 finite differences", "DDP x2 finite differences", "seconds"),
    ("time/product", "FSDP2 x2 finite differences", "FSDP2 x1 finite differences", "seconds"),
    ("time/product", "DDP x2 double backward", "DDP x1 double backward", "seconds"),
    ("parameters/rank", "FSDP2 x2 finite differences", "DDP x2 finite differences", "params"),
    ("parameters/rank", "FSDP2 x2 finite differences", "FSDP2 x1 finite differences", "params"),
    ("vectors/rank", "FSDP2 x2 finite differences", "DDP x2 finite differences", "vectors"),
    ("vectors/rank", "FSDP2 x2 finite differences", "FSDP2 x1 finite differences", "vectors"),
    ("RSS growth/rank", "DDP x1 finite differences", "DDP x1 double backward", "rss"),
    ("RSS growth/rank", "FSDP2 x2 finite differences", "DDP x2 finite differences", "rss"),
    ("RSS growth/rank", "FSDP2 x2 finite differences", "FSDP2 x1 finite differences", "rss"),
)
# near-zero mass threshold for the precision comparison, relative to lambda_max
NEAR_ZERO_RELATIVE = 0.01
UNITS = {"seconds": ("s", 1.0), "params": ("MB", 1e6), "vectors": ("MB", 1e6), "rss": ("MB", 1e6)}


def machine() -> str:
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load}"


def peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def batches_for(rank: int, world: int, preset: str, seq_len: int, batch_size: int, count: int):
    from winq import data, embedded

    return data.probe_batches(
        None, embedded.tokenizer(), seq_len, count, batch_size, rank=rank, world=world
    )


# ----------------------------------------------------------------------------- products


def product_rank(rank: int, world: int, folder: str, config: tuple, args) -> None:
    import torch
    import torch.distributed as dist

    from winq import embedded
    from winq.analysis import HessianOperator
    from winq.io import atomic_write_json
    from winq.sharding import local_tensor, shard_model

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(args.threads)
        _, parallelism, _, backend = config
        model = embedded.build_model(args.preset, seed=0)
        if parallelism == "fsdp":
            shard_model(model)
        batches = batches_for(rank, world, args.preset, args.seq_len, args.batch_size, args.batches)
        op = HessianOperator(model, batches, params="linear", backend=backend)
        size = op.num_params if op.space is None else op.space.local_size
        v = torch.randn(size, generator=torch.Generator().manual_seed(rank))
        before = peak_rss_bytes()
        seconds = []
        for _ in range(args.products + 1):
            dist.barrier()
            start = time.perf_counter()
            op @ v
            dist.barrier()
            seconds.append(time.perf_counter() - start)
        element = torch.finfo(op.dtype).bits // 8
        atomic_write_json(
            f"{folder}/rank{rank}.json",
            {
                "first": seconds[0],
                "seconds": statistics.median(seconds[1:]),
                "params": sum(
                    local_tensor(p).numel() * local_tensor(p).element_size()
                    for p in model.parameters()
                ),
                "vectors": 3 * size * element,
                "rss": peak_rss_bytes() - before,
                "num_params": op.num_params,
            },
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_products(args) -> None:
    import json

    import torch.multiprocessing as mp

    from winq import embedded

    embedded.tokenizer()  # build the corpus and tokenizer once, before any rank needs them
    results = {}
    for config in CONFIGS:
        label, _, world, _ = config
        with tempfile.TemporaryDirectory() as folder:
            mp.spawn(product_rank, args=(world, folder, config, args), nprocs=world, join=True)
            ranks = [json.load(open(f"{folder}/rank{r}.json")) for r in range(world)]
        worst = {key: max(r[key] for r in ranks) for key in ranks[0]}
        results[label] = worst
        print(
            f"{label:30s} {worst['seconds']:.3f} s/product (first {worst['first']:.2f} s), "
            f"parameters {worst['params'] / 1e6:.2f} MB, vectors {worst['vectors'] / 1e6:.2f} MB,"
            f" RSS growth {worst['rss'] / 1e6:.0f} MB per rank",
            flush=True,
        )
    n = results[CONFIGS[0][0]]["num_params"]
    print(
        f"\n{args.preset} preset, Hessian of the linear layers (n = {n}), "
        f"{args.batches} x {args.batch_size} x {args.seq_len} tokens, {args.threads} thread(s) "
        f"per rank, gloo; {machine()}; per rank the worst rank"
    )
    for what, measured, baseline, key in COMPARISONS:
        unit, scale = UNITS[key]
        a, b = results[measured][key], results[baseline][key]
        ratio = a / b if b else float("nan")
        print(
            f"{ratio:6.2f}x  {what:16s} {measured} vs {baseline}: "
            f"{a / scale:.3g} {unit} vs {b / scale:.3g} {unit}"
        )


# ---------------------------------------------------------------------------- precision


def train_briefly(model, steps: int, seq_len: int, batch_size: int) -> float:
    """``steps`` AdamW steps (lr 1e-3) on the embedded corpus; returns the last loss."""
    import torch

    from winq import data, embedded

    blocks = data.lm_blocks(
        None, embedded.tokenizer(), seq_len, "train", max_tokens=steps * batch_size * seq_len + 1
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    loss = float("nan")
    for step in range(steps):
        rows = torch.arange(step * batch_size, (step + 1) * batch_size) % blocks.shape[0]
        ids = blocks[rows]
        out = model(input_ids=ids, labels=ids)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        loss = float(out.loss.detach())
    model.eval()
    return loss


def run_precision(args) -> None:
    import copy

    import numpy as np
    import torch

    from winq import embedded
    from winq.analysis import HessianOperator, slq

    torch.set_num_threads(args.threads)
    model = embedded.build_model("tiny", seed=0)
    state = "untrained"
    if args.train_steps:
        loss = train_briefly(model, args.train_steps, args.seq_len, args.batch_size)
        state = f"after {args.train_steps} AdamW steps (train loss {loss:.3f})"
    batches = batches_for(0, 1, "tiny", args.seq_len, args.batch_size, args.batches)
    runs = {}
    variants = (
        ("float32", model, "double_backward"),
        ("bfloat16", copy.deepcopy(model).to(torch.bfloat16), "double_backward"),
        ("float32 finite differences", model, "finite_difference"),
    )
    for label, variant, backend in variants:
        start = time.perf_counter()
        with HessianOperator(variant, batches, params="linear", backend=backend) as op:
            runs[label] = slq(op, probes=args.probes, steps=args.steps, seed=0, progress=False)
        print(f"{label:28s} slq in {time.perf_counter() - start:.0f} s", flush=True)
    reference = runs["float32"]
    ref = reference.summary(eps=NEAR_ZERO_RELATIVE, relative=True)
    print(
        f"\ntiny preset {state}, linear layers (n = {reference.num_params}), "
        f"{args.batches} x {args.batch_size} x {args.seq_len} tokens, slq {args.probes} probes "
        f"x {args.steps} steps (same probes); {machine()}"
    )
    for label in ("bfloat16", "float32 finite differences"):
        spectrum = runs[label]
        summary = spectrum.summary(eps=NEAR_ZERO_RELATIVE, relative=True)
        moved = spectrum.nodes.max(axis=1) / reference.nodes.max(axis=1) - 1  # (probes,)
        distance = np.array(
            [
                measure_distance(spectrum.nodes[p], spectrum.weights[p], *probe_rule(reference, p))
                for p in range(reference.probes)
            ]
        )
        print(
            f"{summary['lambda_max'] / ref['lambda_max']:.4f}x  lambda_max {label} vs float32: "
            f"{summary['lambda_max']:.4f} vs {ref['lambda_max']:.4f} (per probe "
            f"{moved.mean():+.2e} +- {moved.std(ddof=1):.1e})"
        )
        scale = ref["lambda_max"]
        print(
            f"{distance.mean() / scale:.2e}   quadrature measures {label} vs float32: "
            f"Wasserstein-1 distance / lambda_max per probe {distance.mean() / scale:.2e} +- "
            f"{distance.std(ddof=1) / scale:.1e} (max {distance.max() / scale:.2e})"
        )
        threshold = NEAR_ZERO_RELATIVE * ref["lambda_max"]
        for mass in ("negative_mass", "near_zero_mass"):
            a, b = summary[mass], ref[mass]
            probes_a = per_probe_mass(spectrum, mass, threshold)
            probes_b = per_probe_mass(reference, mass, threshold)
            print(
                f"{a - b:+.2e}  {mass} {label} vs float32: {a:.4f} +- "
                f"{summary[mass + '_stderr']:.4f} vs {b:.4f} +- {ref[mass + '_stderr']:.4f} "
                f"(threshold {NEAR_ZERO_RELATIVE:g} lambda_max; per probe "
                f"{np.array2string(probes_a, precision=4)} vs "
                f"{np.array2string(probes_b, precision=4)})"
            )


def per_probe_mass(spectrum, mass: str, threshold: float):
    """Each probe's weight below -threshold (negative) or within ±threshold (near zero)."""
    import numpy as np

    weights = np.where(spectrum.mask, spectrum.weights, 0.0)
    if mass == "negative_mass":
        inside = spectrum.nodes < -threshold
    else:
        inside = np.abs(spectrum.nodes) < threshold
    return (weights * inside).sum(axis=1)


def probe_rule(spectrum, probe: int):
    keep = spectrum.mask[probe]
    return spectrum.nodes[probe][keep], spectrum.weights[probe][keep]


def measure_distance(nodes_a, weights_a, nodes_b, weights_b) -> float:
    """Wasserstein-1 distance :math:`\\int |F_a - F_b|\\,dx` between two discrete measures.

    Index-wise weight differences mean little once Lanczos has lost orthogonality (a tiny
    perturbation moves interior Ritz values and splits or merges their weights), and the
    Kolmogorov distance jumps with any shift of a heavy node; the earth mover's distance
    measures how far the mass moved, in units of λ.
    """
    import numpy as np

    points = np.union1d(nodes_a, nodes_b)

    def cdf(nodes, weights):
        order = np.argsort(nodes)
        cumulative = np.cumsum(weights[order])
        index = np.searchsorted(nodes[order], points, side="right")
        return np.where(index > 0, cumulative[np.maximum(index - 1, 0)], 0.0)

    gaps = np.abs(cdf(nodes_a, weights_a) - cdf(nodes_b, weights_b))[:-1]
    return float(np.sum(gaps * np.diff(points)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("products", "precision"), default="products")
    parser.add_argument("--preset", default="small", help="embedded preset for products")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per batch")
    parser.add_argument("--batches", type=int, default=2, help="batches in all (split by rank)")
    parser.add_argument("--products", type=int, default=4, help="timed products per config")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--train-steps", type=int, default=0, help="precision: AdamW steps first")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.what == "products":
        run_products(args)
    else:
        run_precision(args)


if __name__ == "__main__":
    main()

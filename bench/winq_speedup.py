"""Does WinQ speed up QAT here? Baseline vs WinQ resets — fixed, per reset mode, guided — by
bit width and run length, with the mechanism (level flips, grid dispersion, clipping) measured.

From an FP checkpoint pre-trained until its held-out loss plateaus (so that QAT is not
confounded with continued pre-training) — ``--init CKPT``, or ``--pretrain-steps N`` to
pre-train one here (the last fifth of its held-out curve is printed as evidence of the
plateau), or by default the preset's cached FP checkpoint — for every bit width, run length
(``--steps``, several values for a run-length series), seed and mode this trains one run with
identical data order, learning rate and length. The modes (``--modes``; :data:`MODES`):

* ``baseline``: no resets, no noise;
* ``fixed``: the paper's schedule, 3 resets (after T/4, T/2, 3T/4) at α = 0.2, mode ``full``,
  noise σ = 1e-3; ``fixed-clipped`` / ``fixed-dither``: the same schedule in the other reset
  modes (``winq-train --winq-reset-mode``);
* ``guided``: ``--guide`` with the latent-grid rule and noise σ = 1e-3 (the controller's
  default when the first tiny grid ran); ``guided-nonoise``: the same without noise
  injection, which separates what the resets do from what the noise does (the default after
  that grid); ``guided-return``: ``guided-nonoise`` that also stops resetting once half of the
  clipping a reset removed is back when the next comes due (``--guide-max-return 0.5``, the
  default since the second tiny grid);
* ``guided-spectrum``: the controller's previous default — spectrum triggers, α auto by
  |λ|max, ``full`` resets (the ``guided`` rows of the earlier grid in BENCHMARKS.md);

and ``--variant NAME=FIELD=VALUE,...`` adds a mode ``NAME`` with those :class:`TrainConfig`
fields (e.g. ``--variant nonoise=winq_resets=3,noise_sigma=0``).

Reported per (bit width, run length, mode), over the seeds — every number a mean with its 95%
Student-t interval over seeds (``mean [low, high]``):

* **final held-out loss**, and its change against the baseline of the same seed,
  ``Δ = (L_mode - L_base) / L_base`` (paired by seed: same data order and start). A mode is
  "worse" / "better" only when the interval of Δ excludes 0;
* **speedup** = (updates the baseline needs to first reach its own final held-out loss) /
  (updates the mode needs to reach it), read off the evaluations ("never" when the mode does
  not reach it in the run); and the same ratio to the loss the baseline has reached after
  25/50/75% of the run (``--targets``), where a mode may lead mid-run and still end behind;
* **the mechanism at each reset** (``reset`` records of ``metrics.jsonl``): grid dispersion and
  clipped fraction just before and after, the flip fraction over the evaluation interval
  before the reset and over the one after it — and the baseline's flip fraction over the same
  intervals, for reference.

Every run is a worker process calling :func:`winq.train.loop.train` with ``--threads`` torch
threads, ``--jobs`` at a time. A run killed after ``--run-timeout`` seconds, or by an
interrupted benchmark, resumes from its last checkpoint (every T/10 updates) when the benchmark
is run again; finished runs are reused, and ``--json`` is rewritten after every run. The grids
in BENCHMARKS.md ("Issue 13")::

    python bench/winq_speedup.py --preset tiny --bits 1 1.58 2 --seeds 0 1 2 \\
        --pretrain-steps 1200 --batch-size 8 --eval-batches 8 --jobs 2 --threads 1 \\
        --modes baseline guided-return guided-nonoise fixed fixed-clipped fixed-dither \\
        --out runs/issue13-tiny --json runs/issue13-tiny/results.json
    python bench/winq_speedup.py --preset small --bits 1 1.58 2 --seeds 0 1 2 \\
        --pretrain-steps 2000 --batch-size 8 --eval-batches 8 --jobs 2 --threads 1 \\
        --modes baseline guided-return --out runs/issue13-small \\
        --json runs/issue13-small/results.json

and a run-length series (several ``--steps``; the resets of ``fixed`` stay at T/4, T/2, 3T/4)::

    python bench/winq_speedup.py --preset tiny --bits 2 --steps 300 1200 3000 --seeds 0 1 2 \\
        --pretrain-steps 1200 --batch-size 8 --eval-batches 8 --jobs 2 \\
        --modes baseline fixed guided-return --out runs/issue13-tiny
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# TrainConfig fields of each mode (on top of the run's length, batch and evaluation settings)
MODES: dict[str, dict[str, Any]] = {
    "baseline": {"winq_resets": 0},
    "fixed": {"winq_resets": 3, "winq_alpha": 0.2, "reset_mode": "full"},
    "fixed-clipped": {"winq_resets": 3, "winq_alpha": 0.2, "reset_mode": "clipped"},
    "fixed-dither": {"winq_resets": 3, "winq_alpha": 0.2, "reset_mode": "dither"},
    "guided": {"guide": True, "noise_sigma": 1e-3, "guide_max_return": None},
    "guided-nonoise": {"guide": True, "noise_sigma": 0.0, "guide_max_return": None},
    "guided-return": {"guide": True, "noise_sigma": 0.0, "guide_max_return": 0.5},  # the default
    "guided-spectrum": {
        "guide": True,
        "guide_rule": "spectrum",
        "winq_alpha": "auto",
        "noise_sigma": 1e-3,
    },
}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------------------------
# running


def _train_worker(fields: dict[str, Any], folder: str, threads: int) -> None:
    """Entry point of a worker process: one run through the trainer's API."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)
    from winq.train.config import TrainConfig
    from winq.train.loop import train
    from winq.train.state import last_checkpoint

    path = Path(folder)
    if (path / "config.json").is_file():
        config = TrainConfig.from_json(json.loads((path / "config.json").read_text()))
        config.progress = False
        train(config, resume=path if last_checkpoint(path) else None)
    else:
        train(TrainConfig(**fields).resolve())


def run_folder(args: argparse.Namespace, bits: str, steps: int, seed: int, mode: str) -> Path:
    return Path(args.out) / f"{args.preset}-w{bits}-T{steps}-s{seed}-{mode}"


def run_fields(args, bits: str, steps: int, seed: int, mode: str) -> dict[str, Any]:
    """The TrainConfig fields of one run."""
    from winq.config import parse_bits

    fields = {
        "preset": args.preset, "bits": parse_bits(bits), "seed": seed, "steps": steps,
        "init": args.init, "eval_every": max(1, steps // 20), "save_every": max(1, steps // 10),
        "keep_last": 1, "eval_batches": args.eval_batches, "progress": False,
        "out": str(run_folder(args, bits, steps, seed, mode)), "overwrite": True,
    }  # fmt: skip
    if args.batch_size:
        fields["batch_size"] = args.batch_size
    fields.update(args.modes[mode])
    return fields


def run_all(args, jobs: list[tuple[str, int, int, str]], on_done) -> None:
    """Run ``jobs`` (bits, steps, seed, mode) ``--jobs`` at a time, skipping finished ones."""
    from winq.runfiles import finished

    context = multiprocessing.get_context("spawn")
    pending = [job for job in jobs if not finished(run_folder(args, *job))]
    for job in jobs:
        if job not in pending:
            on_done(job)
    running: dict[tuple, tuple[Any, float]] = {}
    deadline = time.monotonic() + args.budget
    while pending or running:
        while pending and len(running) < args.jobs:
            if time.monotonic() > deadline:
                print(f"# budget spent: {len(pending)} runs not started", flush=True)
                pending = []
                break
            job = pending.pop(0)
            folder = run_folder(args, *job)
            fields = run_fields(args, *job)
            process = context.Process(
                target=_train_worker, args=(fields, str(folder), args.threads), daemon=True
            )
            process.start()
            running[job] = (process, time.monotonic())
        time.sleep(2.0)
        for job, (process, started) in list(running.items()):
            seconds = time.monotonic() - started
            name = run_folder(args, *job).name
            if process.is_alive():
                if args.run_timeout and seconds > args.run_timeout:
                    process.terminate()
                    process.join()
                    print(f"# {name} stopped after {seconds:.0f} s (resumes on the next "
                          f"invocation; load {load_average()})", flush=True)  # fmt: skip
                    del running[job]
                continue
            del running[job]
            if process.exitcode == 0:
                print(f"# ran {name} in {seconds:.0f} s (load {load_average()})", flush=True)
                on_done(job)
            else:
                print(f"# {name} failed with exit code {process.exitcode}", flush=True)


def pretrain(args) -> Path:
    """Pre-train the FP starting point (reused when complete); print its plateau evidence."""
    from winq.runfiles import finished

    steps = args.pretrain_steps
    folder = Path(args.out) / f"{args.preset}-fp-{steps}"
    if not finished(folder):
        fields = {"preset": args.preset, "bits": 16, "steps": steps, "progress": False,
                  "eval_every": max(1, steps // 20), "out": str(folder), "overwrite": True}  # fmt: skip
        process = multiprocessing.get_context("spawn").Process(
            target=_train_worker, args=(fields, str(folder), args.threads)
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"pre-training {folder} failed with exit code {process.exitcode}")
    curve = eval_curve(read(folder))
    tail = [(s, loss) for s, loss in curve if s >= 0.8 * steps]
    change = (tail[0][1] - tail[-1][1]) / tail[0][1]
    print(f"# FP {folder.name}: held-out loss {curve[-1][1]:.4f}; over the last fifth "
          f"({tail[0][0]}->{tail[-1][0]}) it fell {change:.2%} "
          f"({' '.join(f'{loss:.3f}' for _, loss in tail)})", flush=True)  # fmt: skip
    final = folder / "checkpoints" / (folder / "checkpoints" / "final").read_text().strip()
    return final


def fp_heldout_loss(args) -> tuple[str, float]:
    """The FP starting point's held-out loss on the QAT runs' held-out batches."""
    import torch

    from winq import embedded
    from winq.distributed import Dist
    from winq.train import inputs
    from winq.train.config import TrainConfig
    from winq.train.loop import evaluate

    torch.set_num_threads(args.threads)
    path = args.init or str(embedded.default_checkpoint_path(args.preset))
    config = TrainConfig(preset=args.preset, bits=16, init=path, eval_batches=args.eval_batches,
                         batch_size=args.batch_size)  # fmt: skip
    config.resolve()
    model, tokenizer = inputs.build_model(config)
    data = inputs.build_data(config, tokenizer, Dist(), config.batch_size, model)
    return path, evaluate(model, data.eval_batches, torch.device("cpu"), "fp32")


# --------------------------------------------------------------------------------------------
# reading runs


def read(folder: Path) -> list[dict[str, Any]]:
    from winq.runfiles import read_records

    return read_records(folder / "metrics.jsonl")


def eval_curve(records: list[dict]) -> list[tuple[int, float]]:
    return sorted(
        {r["step"]: r["eval_loss"] for r in records if r.get("eval_loss") is not None}.items()
    )


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    for step, loss in curve:
        if step > 0 and loss <= target:
            return step
    return None


def intermediate_speedup(base: list, mine: list, fraction: float) -> float | None:
    """Speedup to the best loss the baseline has reached after ``fraction`` of its updates."""
    last = base[-1][0]
    reached = [loss for step, loss in base if 0 < step <= fraction * last]
    if not reached:
        return None
    target = min(reached)
    base_steps, mode_steps = steps_to_reach(base, target), steps_to_reach(mine, target)
    return base_steps / mode_steps if mode_steps else None


def flip_after(records: list[dict], step: int) -> float | None:
    """The flip fraction over the first evaluation interval that starts at ``step``."""
    for r in records:
        if r.get("flip_since") == step and "flip_fraction" in r:
            return r["flip_fraction"]
    return None


def flip_before(records: list[dict], step: int) -> float | None:
    """The flip fraction over the evaluation interval that ends at ``step``."""
    for r in records:
        if r["step"] == step and "flip_fraction" in r and "eval_loss" in r:
            return r["flip_fraction"]
    return None


def run_result(folder: Path) -> dict[str, Any]:
    records = read(folder)
    resets = []
    for r in records:
        if "reset" not in r:
            continue
        reset = r["reset"]
        resets.append({
            "step": r["step"], "alpha": reset["alpha"], "mode": reset.get("mode", "full"),
            "before": reset.get("before", {}), "after": reset.get("after", {}),
            "unclipped": reset.get("unclipped"), "moved": reset.get("moved"),
            "weights": reset.get("weights"),
            "flip_before": flip_before(records, r["step"]),
            "flip_after": flip_after(records, r["step"]),
        })  # fmt: skip
    summary = next((r["summary"] for r in records if "summary" in r), {})
    latents = [
        {k: r.get(k) for k in ("step", "flip_fraction", "grid_dispersion", "clipped_fraction")}
        for r in records
        if "grid_dispersion" in r
    ]
    guides = [{"step": r["step"], **r["guide"]} for r in records if "guide" in r]
    return {"curve": eval_curve(records), "resets": resets, "summary": summary,
            "latents": latents, "guides": guides, "records": records}  # fmt: skip


# --------------------------------------------------------------------------------------------
# statistics and the report


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds (NaN bounds for fewer than 2 values)."""
    from winq.quadrature import t_interval

    estimate = t_interval(values, 0.95, bounds=None)
    return estimate.value, estimate.ci[0], estimate.ci[1]


def fmt(values: list[float], digits: int = 4, percent: bool = False) -> str:
    """``mean [low, high]`` (n = …) of per-seed values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    mean, low, high = interval(values)
    if percent:
        mean, low, high = 100 * mean, 100 * low, 100 * high
        text = f"{mean:+.{digits}f}%"
        bounds = f" [{low:+.{digits}f}, {high:+.{digits}f}]" if math.isfinite(low) else ""
    else:
        text = f"{mean:.{digits}f}"
        bounds = f" [{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) else ""
    return f"{text}{bounds}"


def verdict(deltas: list[float]) -> str:
    """ "worse" / "better" when the 95% interval of the paired change excludes 0, else "tie"."""
    if len(deltas) < 2:
        return "n/a"
    _, low, high = interval(deltas)
    return "worse" if low > 0 else "better" if high < 0 else "tie"


def compare(args, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary per (bits, steps, mode) against the baseline, printed and returned."""
    rows = []
    for bits in args.bits:
        for steps in args.steps:
            for mode in [m for m in args.mode_names if m != "baseline"]:
                per_seed = []
                for seed in args.seeds:
                    base = results["runs"].get(run_folder(args, bits, steps, seed, "baseline").name)
                    mine = results["runs"].get(run_folder(args, bits, steps, seed, mode).name)
                    if base is None or mine is None or not base["curve"] or not mine["curve"]:
                        continue
                    target = base["curve"][-1][1]
                    base_steps = steps_to_reach(base["curve"], target)
                    mode_steps = steps_to_reach(mine["curve"], target)
                    final = mine["curve"][-1][1]
                    per_seed.append({
                        "seed": seed, "final": final, "baseline_final": target,
                        "delta": (final - target) / target,
                        "speedup": base_steps / mode_steps if mode_steps else None,
                        "intermediate": {f: intermediate_speedup(base["curve"], mine["curve"], f)
                                         for f in args.targets},
                        "resets": [(r["step"], r["alpha"], r["mode"]) for r in mine["resets"]],
                        "overhead": mine["summary"].get("controller_overhead"),
                    })  # fmt: skip
                if not per_seed:
                    print(f"n/a  w{bits} T{steps} {mode}: no finished pair with the baseline")
                    continue
                row = summarize(bits, steps, mode, per_seed, args.targets)
                rows.append(row)
    return rows


def _speedup_text(values: list[float | None]) -> str:
    reached = [v for v in values if v is not None]
    if len(reached) < len(values):
        return f"never in {len(values) - len(reached)}/{len(values)} seeds" + (
            f" (reached: {', '.join(f'{v:.2f}x' for v in reached)})" if reached else ""
        )
    return fmt(reached, 2) + "x"


def summarize(bits, steps, mode, per_seed, targets) -> dict[str, Any]:
    deltas = [s["delta"] for s in per_seed]
    speedups = [s["speedup"] for s in per_seed]
    row = {
        "bits": bits, "steps": steps, "mode": mode, "seeds": [s["seed"] for s in per_seed],
        "final": fmt([s["final"] for s in per_seed]),
        "baseline_final": fmt([s["baseline_final"] for s in per_seed]),
        "delta": fmt(deltas, 2, percent=True), "verdict": verdict(deltas),
        "speedup": _speedup_text(speedups),
        "intermediate": {f"{f:.0%}": _speedup_text([s["intermediate"][f] for s in per_seed])
                         for f in targets},
        "per_seed": per_seed,
    }  # fmt: skip
    print(f"{row['verdict']:6s} w{bits} T{steps} {mode}: final {row['final']} vs baseline "
          f"{row['baseline_final']}, change {row['delta']} (n={len(per_seed)}); speedup to the "
          f"baseline's final loss {row['speedup']}; "
          + "; ".join(f"to its {k} loss {v}" for k, v in row["intermediate"].items())
          + f"; resets {[s['resets'] for s in per_seed]}", flush=True)  # fmt: skip
    return row


def mechanism(args, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (bits, steps, mode, reset index): the latent grid around the reset, over seeds."""
    rows = []
    keys = ("dispersion_before", "dispersion_after", "clipped_before", "clipped_after",
            "flip_before", "flip_after", "baseline_flip_before", "baseline_flip_after")  # fmt: skip
    for bits in args.bits:
        for steps in args.steps:
            for mode in args.mode_names:
                by_index: dict[int, dict[str, list]] = {}
                for seed in args.seeds:
                    mine = results["runs"].get(run_folder(args, bits, steps, seed, mode).name)
                    base = results["runs"].get(run_folder(args, bits, steps, seed, "baseline").name)
                    if mine is None:
                        continue
                    for index, reset in enumerate(mine["resets"]):
                        slot = by_index.setdefault(index, {k: [] for k in (*keys, "step")})
                        slot["step"].append(reset["step"])
                        slot["dispersion_before"].append(reset["before"].get("grid_dispersion"))
                        slot["dispersion_after"].append(reset["after"].get("grid_dispersion"))
                        slot["clipped_before"].append(reset["before"].get("clipped_fraction"))
                        slot["clipped_after"].append(reset["after"].get("clipped_fraction"))
                        slot["flip_before"].append(reset["flip_before"])
                        slot["flip_after"].append(reset["flip_after"])
                        if base is not None:
                            records = base["records"]
                            slot["baseline_flip_before"].append(flip_before(records, reset["step"]))
                            slot["baseline_flip_after"].append(flip_after(records, reset["step"]))
                for index, slot in sorted(by_index.items()):
                    row = {"bits": bits, "steps": steps, "mode": mode, "reset": index + 1,
                           "at_steps": slot["step"],
                           **{k: fmt(slot[k], 4) for k in keys}}  # fmt: skip
                    rows.append(row)
                    print(f"reset {index + 1} w{bits} T{steps} {mode} (steps {slot['step']}): "
                          f"dispersion {row['dispersion_before']} -> {row['dispersion_after']}; "
                          f"clipped {row['clipped_before']} -> {row['clipped_after']}; "
                          f"flips per interval before {row['flip_before']}, after "
                          f"{row['flip_after']} (baseline {row['baseline_flip_before']}, "
                          f"{row['baseline_flip_after']})", flush=True)  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=FIELD=VALUE,FIELD=VALUE`` -> (NAME, fields); values parsed as JSON when they can be."""
    name, _, spec = text.partition("=")
    fields: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        try:
            fields[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fields[key.strip()] = value
    return name, fields


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--bits", nargs="+", default=["1", "1.58", "2"])
    p.add_argument("--steps", nargs="+", type=int, help="QAT updates, one or more (preset's)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=["baseline", "fixed", "guided"])
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FIELD=VALUE,...",
                   help="an extra mode with these TrainConfig fields")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--run-timeout", type=float, help="stop a run after this many seconds")
    p.add_argument("--budget", type=float, default=math.inf, help="start no run after (s)")
    p.add_argument("--batch-size", type=int, help="sequences per update (preset's)")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches per eval")
    p.add_argument("--init", help="FP checkpoint to start from (default: the preset's cached)")
    p.add_argument("--pretrain-steps", type=int, help="pre-train the FP start here for N steps")
    p.add_argument("--out", default="runs/bench-winq-speedup")
    p.add_argument("--json", help="write the results here (after every finished run)")
    p.add_argument("--targets", nargs="+", type=float, default=[0.25, 0.5, 0.75],
                   help="also report speedups to the baseline's loss after these fractions "
                   "of the run")  # fmt: skip
    p.add_argument("--report-only", action="store_true", help="run nothing; report what exists")
    args = p.parse_args()
    modes = dict(MODES)
    for text in args.variant:
        name, fields = parse_variant(text)
        modes[name] = fields
    unknown = [m for m in args.modes if m not in modes]
    if unknown:
        p.error(f"unknown mode {unknown[0]}; choose from {', '.join(modes)} or add --variant")
    args.mode_names = list(dict.fromkeys(["baseline", *args.modes]))
    args.modes = {m: modes[m] for m in args.mode_names}
    if args.steps is None:
        from winq import embedded

        args.steps = [embedded.training_defaults(args.preset, "qat")["steps"]]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()

    import torch

    if args.pretrain_steps and not args.init:
        args.init = str(pretrain(args))
    machine = (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{args.threads} thread(s) per run, {args.jobs} run(s) at a time")  # fmt: skip
    print(f"# winq_speedup: preset {args.preset}, {machine}; load {load_average()}", flush=True)
    fp_path, fp_loss = fp_heldout_loss(args)
    print(f"# FP start {fp_path}: held-out loss {fp_loss:.4f}", flush=True)
    results: dict[str, Any] = {"machine": machine, "argv": sys.argv[1:], "fp_heldout_loss": fp_loss,
                               "fp_checkpoint": fp_path, "runs": {}}  # fmt: skip

    def save() -> None:
        if args.json:
            from winq.io import atomic_write_text

            slim = {**results, "runs": {name: {k: v for k, v in run.items() if k != "records"}
                                        for name, run in results["runs"].items()}}  # fmt: skip
            atomic_write_text(args.json, json.dumps(slim, indent=1))

    def done(job) -> None:
        folder = run_folder(args, *job)
        results["runs"][folder.name] = run_result(folder)
        save()

    # baselines first, then every other mode, run length by run length (short runs first)
    jobs = [(b, t, s, m) for t in sorted(args.steps) for b in args.bits
            for m in args.mode_names for s in args.seeds]  # fmt: skip
    if args.report_only:
        from winq.runfiles import finished

        for job in jobs:
            if finished(run_folder(args, *job)):
                done(job)
    else:
        run_all(args, jobs, done)
    print(
        f"# winq_speedup: {len(results['runs'])}/{len(jobs)} runs finished; "
        f"{time.perf_counter() - start:.0f} s; load at the end {load_average()}",
        flush=True,
    )
    results["comparisons"] = compare(args, results)
    results["mechanism"] = mechanism(args, results)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

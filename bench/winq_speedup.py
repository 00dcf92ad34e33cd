"""Does WinQ speed up QAT at our scale? Baseline vs WinQ (fixed) vs WinQ (guided).

From an FP checkpoint pre-trained until its held-out loss plateaus (so that QAT is not
confounded with continued pre-training) — ``--init CKPT``, or ``--pretrain-steps N`` to
pre-train one here (``winq-train --bits 16 --steps N``; the last fifth of its held-out curve is
printed as evidence of the plateau), or by default the preset's cached FP checkpoint — for
every bit width and seed this runs ``winq-train`` with identical data order, learning rate
and length:

* ``baseline``: ``--winq-resets 0`` (no resets, no noise);
* ``fixed``: ``--winq-resets 3`` (after T/4, T/2, 3T/4), α = 0.2, noise σ = 1e-3;
* ``guided``: ``--guide`` with the controller's defaults, ``--winq-alpha auto``
  (``--guided-alpha`` to fix α, ``--guide-flags`` for other settings).

and reports, per bit width, for each WinQ mode against the baseline of the same seed:

* **speedup** = (updates the baseline needs to first reach its own final held-out loss) /
  (updates the mode needs to first reach that loss), read off the held-out evaluations
  (every ``--eval-every`` updates; "not reached" if it never does, which means < 1×);
* **final loss at equal steps**: the mode's final held-out loss, and its relative
  improvement over the baseline's, ``(L_base - L_mode) / L_base``;
* **speedup to intermediate targets** (``--targets``, fractions f of the run): the same ratio
  for the loss the baseline has reached after f·T updates, so that a mode that is ahead early
  but behind at the end shows as such.

``--variant NAME=FLAGS`` adds guided runs with other controller settings (mode
``guided-NAME``), so that the benchmark can decide the controller's defaults.

Every run is a ``winq-train`` subprocess with ``--threads`` torch threads, killed after
``--run-timeout`` seconds (reported as timed out; the next invocation resumes it from its last
checkpoint), and no new run starts once ``--budget`` seconds have passed. The FP starting
point's held-out loss is measured on the runs' held-out batches and printed beside the QAT
losses. One line per comparison, ratio first. Run folders are kept under ``--out`` and reused
when complete, so an interrupted benchmark continues where it stopped::

    python bench/winq_speedup.py --preset small --bits 1 1.58 2 --seeds 0 1 2 --pretrain-steps 2000 \
        --train-flags="--batch-size 8" --eval-batches 8 --jobs 2 --budget 7200 \
        --run-timeout 1500 --out runs/bench-small --json runs/bench-small/results.json
    python bench/winq_speedup.py --preset tiny --bits 2 1.58 3 --seeds 0 \
        --train-flags="--batch-size 8" --eval-every 15 --budget 1000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("baseline", "fixed", "guided")


def mode_flags(mode: str, args: argparse.Namespace) -> list[str]:
    if mode == "baseline":
        return ["--winq-resets", "0"]
    if mode == "fixed":
        return ["--winq-resets", str(args.resets), "--winq-alpha", str(args.alpha)]
    flags = ["--guide", "--winq-alpha", args.guided_alpha, *shlex.split(args.guide_flags)]
    if mode.startswith("guided-"):
        flags += shlex.split(args.variants[mode.removeprefix("guided-")])
    return flags


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def winq_train(argv: list[str], args, timeout: float | None = None) -> int | None:
    """``winq-train ARGV`` in a subprocess; its exit code, or None if it ran out of time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(
        [sys.executable, "-m", "winq.train.cli", *argv], env=env, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None
    if process.returncode != 0:
        sys.stderr.write(stderr[-2000:])
    return process.returncode


def run_folder(args: argparse.Namespace, bits: str, seed: int, mode: str) -> Path:
    return Path(args.out) / f"{args.preset}-w{bits}-s{seed}-{mode}"


def records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def finished(folder: Path) -> bool:
    return any("summary" in r for r in records(folder))


def run_one(args, bits: str, seed: int, mode: str, deadline: float) -> Path | None:
    folder = run_folder(args, bits, seed, mode)
    if finished(folder):
        return folder
    if time.perf_counter() > deadline:
        print(f"# skipped {folder.name}: the --budget is spent", flush=True)
        return None
    argv = ["--preset", args.preset, "--bits", bits, "--seed", str(seed), "--no-progress"]
    argv += ["--eval-batches", str(args.eval_batches)]
    if args.init:
        argv += ["--init", str(args.init)]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.eval_every:
        argv += ["--eval-every", str(args.eval_every)]
    argv += ["--save-every", str(args.save_every)] if args.save_every else []
    argv += shlex.split(args.train_flags) + mode_flags(mode, args)
    if (folder / "config.json").exists():
        argv = ["--resume", str(folder), "--no-progress"]
    else:
        argv += ["--out", str(folder), "--overwrite"]
    start = time.perf_counter()
    code = winq_train(argv, args, args.run_timeout)
    seconds = time.perf_counter() - start
    if code is None:
        print(
            f"# {folder.name} timed out after {seconds:.0f} s (load {load_average()})", flush=True
        )
        return None
    if code != 0:
        raise SystemExit(f"winq-train {' '.join(argv)} failed with exit code {code}")
    print(f"# ran {folder.name} in {seconds:.0f} s (load {load_average()})", flush=True)
    return folder


def pretrain(args) -> Path:
    """Pre-train the FP starting point (reused when complete); print its plateau evidence."""
    folder = Path(args.out) / f"{args.preset}-fp-{args.pretrain_steps}"
    if not finished(folder):
        argv = ["--bits", "16", "--preset", args.preset, "--steps", str(args.pretrain_steps),
                "--eval-every", str(max(1, args.pretrain_steps // 20)), "--no-progress"]  # fmt: skip
        if (folder / "config.json").exists():
            argv = ["--resume", str(folder), "--no-progress"]
        else:
            argv += ["--out", str(folder), "--overwrite"]
        if winq_train(argv, args) != 0:
            raise SystemExit(f"pre-training failed: winq-train {' '.join(argv)}")
    curve = eval_curve(folder)
    tail = [(s, loss) for s, loss in curve if s >= 0.8 * args.pretrain_steps]
    change = (tail[0][1] - tail[-1][1]) / tail[0][1]
    print(
        f"# FP {folder.name}: held-out loss {curve[-1][1]:.4f}; over the last fifth "
        f"({tail[0][0]}->{tail[-1][0]}) it fell {change:.2%} "
        f"({' '.join(f'{loss:.3f}' for _, loss in tail)})",
        flush=True,
    )
    final = folder / "checkpoints" / (folder / "checkpoints" / "final").read_text().strip()
    return final


def fp_heldout_loss(args, init: str | None) -> tuple[str, float]:
    """The FP starting point's held-out loss on the QAT runs' held-out batches."""
    import torch

    from winq import embedded
    from winq.distributed import Dist
    from winq.train import inputs
    from winq.train.config import TrainConfig
    from winq.train.loop import evaluate

    torch.set_num_threads(args.threads)
    path = init or str(embedded.default_checkpoint_path(args.preset))
    flags = dict(zip(*[iter(shlex.split(args.train_flags))] * 2))
    config = TrainConfig(preset=args.preset, bits=16, init=path,
                         eval_batches=args.eval_batches)  # fmt: skip
    for flag in ("--batch-size", "--seq-len"):
        if flag in flags:
            setattr(config, flag[2:].replace("-", "_"), int(flags[flag]))
    config.resolve()
    model, tokenizer = inputs.build_model(config)
    data = inputs.build_data(config, tokenizer, Dist(), config.batch_size, model)
    return path, evaluate(model, data.eval_batches, torch.device("cpu"), "fp32")


def eval_curve(folder: Path) -> list[tuple[int, float]]:
    curve = {}
    for r in records(folder):
        if r.get("eval_loss") is not None:
            curve[r["step"]] = r["eval_loss"]
    return sorted(curve.items())


def summary_of(folder: Path) -> dict:
    for r in records(folder):
        if "summary" in r:
            return r["summary"]
    return {}


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    for step, loss in curve:
        if step > 0 and loss <= target:
            return step
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--bits", nargs="+", default=["1", "1.58", "2"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="an extra guided mode 'guided-NAME' with these winq-train flags added",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--variant-bits", nargs="+", help="bit widths of the variants (the first)")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--budget", type=float, default=1200, help="start no run after this (s)")
    p.add_argument("--steps", type=int, help="QAT updates (default: the preset's)")
    p.add_argument("--eval-every", type=int, help="held-out evaluation period (default T/20)")
    p.add_argument("--save-every", type=int, help="checkpoint period (default: the trainer's)")
    p.add_argument("--resets", type=int, default=3, help="resets of the fixed schedule")
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--guided-alpha", default="auto", help="alpha of the guided runs (auto)")
    p.add_argument("--init", help="FP checkpoint to start from (default: the preset's cached)")
    p.add_argument("--pretrain-steps", type=int, help="pre-train the FP start here for N steps")
    p.add_argument("--eval-batches", type=int, default=4, help="held-out batches per eval")
    p.add_argument(
        "--guide-flags",
        default="",
        help="extra winq-train flags of the guided "
        "runs, one string (e.g. --guide-flags='--guide-min-period 50')",
    )
    p.add_argument(
        "--train-flags", default="", help="extra winq-train flags of every run, one string"
    )
    p.add_argument("--out", default="runs/bench-winq-speedup")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--targets", nargs="+", type=float, default=[0.25, 0.5, 0.75],
                   help="also report speedups to the baseline's loss after these fractions "
                   "of the run")  # fmt: skip
    args = p.parse_args()
    args.variants = {}
    for item in args.variant:
        name, _, flags = item.partition("=")
        args.variants[name] = flags
        args.modes.append(f"guided-{name}")
    if args.eval_every is None:
        # T/20 of the preset's default length unless --steps says otherwise
        from winq import embedded

        total = args.steps or embedded.training_defaults(args.preset, "qat")["steps"]
        args.eval_every = max(1, total // 20)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    deadline = start + args.budget

    import torch

    if args.pretrain_steps and not args.init:
        args.init = str(pretrain(args))
    machine = (
        f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s) per run, {args.jobs} run(s) at a time"
    )
    print(f"# winq_speedup: preset {args.preset}, {machine}; load {load_average()}", flush=True)
    fp_path, fp_loss = fp_heldout_loss(args, args.init)
    print(f"# FP start {fp_path}: held-out loss {fp_loss:.4f}", flush=True)
    results = {"machine": machine, "argv": sys.argv[1:], "fp_heldout_loss": fp_loss,
               "runs": {}, "comparisons": []}  # fmt: skip
    # the plain modes at every bit width first, then the guided variants (so a spent budget
    # drops variants before comparisons); --jobs runs at a time, each its own process
    order = [(b, s, m) for b in args.bits for s in args.seeds for m in args.modes if "-" not in m]
    variant_bits = args.variant_bits or args.bits[:1]
    order += [(b, s, m) for b in variant_bits for s in args.seeds for m in args.modes if "-" in m]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        folders = list(pool.map(lambda job: run_one(args, *job, deadline), order))
    for folder in folders:
        if folder is not None:
            results["runs"][folder.name] = {
                "curve": eval_curve(folder),
                "summary": summary_of(folder),
                "resets": [
                    (r["step"], r["reset"]["alpha"]) for r in records(folder) if "reset" in r
                ],
            }

    print(
        f"# winq_speedup: preset {args.preset}, {machine}; FP held-out loss {fp_loss:.4f}; "
        f"{time.perf_counter() - start:.0f} s; load at the end {load_average()}"
    )
    for bits in args.bits:
        for mode in [m for m in args.modes if m != "baseline"]:
            speedups, gains, finals, base_finals, overheads = [], [], [], [], []
            partial: dict[float, list] = {f: [] for f in args.targets}
            for seed in args.seeds:
                base = results["runs"].get(run_folder(args, bits, seed, "baseline").name)
                mine = results["runs"].get(run_folder(args, bits, seed, mode).name)
                if base is None or mine is None:
                    if bits in (args.variant_bits or args.bits[:1]) or "-" not in mode:
                        print(f"n/a  w{bits} {mode} seed {seed}: not run (budget or timeout)")
                    continue
                target = base["curve"][-1][1]
                base_steps = steps_to_reach(base["curve"], target)
                mode_steps = steps_to_reach(mine["curve"], target)
                speedup = base_steps / mode_steps if mode_steps else None
                final, base_final = mine["curve"][-1][1], target
                gain = (base_final - final) / base_final
                overhead = mine["summary"].get("controller_overhead")
                for fraction in args.targets:
                    partial[fraction].append(intermediate_speedup(base["curve"], mine["curve"],
                                                                  fraction))  # fmt: skip
                speedups.append(speedup)
                gains.append(gain)
                finals.append(final)
                base_finals.append(base_final)
                overheads.append(overhead)
                line = (
                    f"{_ratio(speedup)} speedup  w{bits} {mode} seed {seed}: baseline reaches "
                    f"{target:.4f} at step {base_steps}, {mode} at "
                    f"{mode_steps if mode_steps else 'never'}; final {final:.4f} vs {base_final:.4f} "
                    f"({gain:+.2%}); resets (step, alpha) {mine['resets']}"
                )
                if overhead is not None:
                    line += f"; controller overhead {overhead:.1%}"
                print(line, flush=True)
                results["comparisons"].append(
                    {"bits": bits, "mode": mode, "seed": seed, "speedup": speedup,
                     "baseline_steps": base_steps, "mode_steps": mode_steps,
                     "final": final, "baseline_final": base_final, "gain": gain,
                     "controller_overhead": overhead,
                     "intermediate": {str(f): partial[f][-1] for f in args.targets}}
                )  # fmt: skip
            if not speedups:
                continue
            reached = [s for s in speedups if s is not None]
            print(
                f"{_ratio(statistics.median(reached)) if len(reached) == len(speedups) else 'n/a'}"
                f" median speedup  w{bits} {mode}: reached in {len(reached)}/{len(speedups)} "
                f"seeds; final loss {statistics.mean(finals):.4f} vs baseline "
                f"{statistics.mean(base_finals):.4f} (mean {statistics.mean(gains):+.2%})"
            )
            for fraction, values in partial.items():
                ratios = [v for v in values if v is not None]
                shown = " ".join(_ratio(v) for v in values)
                print(
                    f"{_ratio(statistics.median(ratios)) if len(ratios) == len(values) else 'n/a'}"
                    f" median speedup  w{bits} {mode} to the baseline's loss at "
                    f"{fraction:.0%} of the run (per seed: {shown})"
                )
    if args.json:
        from winq.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1))
    return 0


def intermediate_speedup(base: list, mine: list, fraction: float) -> float | None:
    """Speedup to the loss the baseline has reached after ``fraction`` of its updates."""
    last = base[-1][0]
    reached = [loss for step, loss in base if 0 < step <= fraction * last]
    if not reached:
        return None
    target = min(reached)
    base_steps, mode_steps = steps_to_reach(base, target), steps_to_reach(mine, target)
    return base_steps / mode_steps if mode_steps else None


def _ratio(value: float | None) -> str:
    return "never" if value is None or not math.isfinite(value) else f"{value:.2f}x"


if __name__ == "__main__":
    sys.exit(main())

"""``winq-train``: full-precision pre-training, QAT, and WinQ resets on a schedule or guided.

Examples::

    winq-train                                   # the embedded default: pre-train tiny FP if
                                                 # not cached, then 2-bit QAT with WinQ
    winq-train --preset small                    # the same at the larger size
    winq-train --bits 16 --preset tiny           # (re)build the cached FP checkpoint
    winq-train --bits 1.58 --winq-resets 0 --out runs/base        # baseline QAT
    winq-train --bits 2 --guide --winq-alpha auto --out runs/guided
    winq-train --resume runs/guided              # continue from the last checkpoint
    torchrun --nproc_per_node 2 -m winq.train.cli --bits 2 --out runs/ddp
    torchrun --nproc_per_node 8 -m winq.train.cli --init BIG --bits 2 --fsdp --out runs/fsdp

Flags are grouped as in ``--help``. Bad input — an unknown bit width, an ``--init`` that is
not a checkpoint, a missing data file, a non-empty ``--out`` without ``--resume`` or
``--overwrite``, a negative period, α outside [0, 1], a flag that contradicts the run being
resumed — is reported in one line on stderr with exit code 2 before anything is created;
failures while running exit with code 1 (see :mod:`winq.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from winq.cli import (
    ArgumentParser,
    UsageError,
    finite_float,
    fraction,
    guarded_main,
    nonnegative_int,
    positive_float,
    positive_int,
)
from winq.sources import looks_like_path
from winq.train.config import GUIDE_RULES, OPERATIONAL, PRESET_NAMES, RESET_MODES, TrainConfig

__all__ = ["build_parser", "main", "run"]

PROG = "winq-train"


# --------------------------------------------------------------------------------------------
# argument types


def alpha_value(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return fraction(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] or 'auto', got {text}") from None


def optional_positive(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    return positive_float(text)


def optional_nonnegative(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    return nonnegative_float(text)


def shrink_factor(text: str) -> float | None:
    value = optional_positive(text)
    if value is not None and value <= 1:
        raise argparse.ArgumentTypeError(f"must be a factor > 1 or 'off', got {text}")
    return value


def alpha_list(text: str) -> tuple[float, ...]:
    values = tuple(fraction(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list of values in [0, 1]")
    return values


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Pre-train (--bits 16) or quantization-aware train a causal LM, with WinQ "
        "resets on a schedule or guided by Hessian diagnostics.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=PRESET_NAMES, help="embedded model size and defaults (tiny)")
    g.add_argument(
        "--init",
        metavar="CKPT",
        help="start from this checkpoint folder (QAT default: "
        "the preset's cached FP checkpoint, pre-trained first if missing)",
    )
    g.add_argument("--bits", help="weight bits: 1, 1.58, 2, 3, 4, or 16 for FP pre-training (2)")
    g.add_argument("--quantizer", choices=("lsq", "seq"), help="override the quantizer for --bits")
    g.add_argument("--group-size", type=positive_int, help="one scale per group of input columns")
    g.add_argument("--a-bits", type=int, choices=(8, 16), help="8: 8-bit per-token activations")
    g.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer folder (default: the checkpoint's, or the embedded one with --preset)",
    )
    g.add_argument("--trust-remote-code", action="store_true", help="allow checkpoint code")

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="a .txt/.jsonl/.parquet file or folder, or a dataset name "
        "(default: the embedded Shakespeare corpus)",
    )
    g.add_argument("--data-config", help="dataset configuration name")
    g.add_argument("--text-field", help="the text column of jsonl/parquet/datasets (text)")
    g.add_argument("--streaming", action="store_true", help="stream a large dataset")
    g.add_argument("--seq-len", type=positive_int, help="tokens per training sequence")

    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=positive_int, help="optimizer updates (preset default)")
    g.add_argument("--batch-size", type=positive_int, help="sequences per update, all ranks")
    g.add_argument(
        "--micro-batch-size",
        type=positive_int,
        help="sequences per forward per rank (default: batch size / ranks, i.e. no accumulation)",
    )
    g.add_argument("--lr", type=positive_float, help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=fraction, help="final lr / peak lr (0)")
    g.add_argument("--warmup", type=nonnegative_int, help="linear warm-up updates")
    g.add_argument(
        "--weight-decay", type=nonnegative_float, help="AdamW decay on linear weights (0)"
    )
    g.add_argument("--beta1", type=fraction, help="AdamW beta1 (0.9)")
    g.add_argument("--beta2", type=fraction, help="AdamW beta2 (0.95)")
    g.add_argument("--grad-clip", type=positive_float, help="gradient norm clip (1.0)")
    g.add_argument("--seed", type=nonnegative_int, help="seed of data order, init and noise (0)")
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="(auto)")
    g.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model and optimizer state over torchrun's processes with FSDP2 "
        "instead of DDP (docs/scale.md)",
    )

    g = p.add_argument_group("WinQ")
    g.add_argument(
        "--winq-resets",
        type=nonnegative_int,
        help="N resets evenly spaced, after "
        "updates round(i*T/(N+1)); 3 = every quarter; 0 = baseline (3 for QAT)",
    )
    g.add_argument("--winq-period", type=positive_int, help="reset after every K-th update instead")
    g.add_argument(
        "--winq-alpha",
        type=alpha_value,
        help="W <- aW + (1-a)Q(W); 'auto' (with --guide) picks it by measuring (0.2)",
    )
    g.add_argument(
        "--winq-reset-mode",
        dest="reset_mode",
        choices=RESET_MODES,
        help="full: every latent (the paper's); clipped: only latents outside the quantizer's "
        "range; dither: latents re-spread uniformly inside their rounding cells (full)",
    )
    g.add_argument(
        "--noise-sigma",
        type=nonnegative_float,
        help="weight noise std (1e-3 with fixed WinQ resets; 0 for the baseline and --guide)",
    )
    g.add_argument(
        "--noise-sigma-scale",
        type=nonnegative_float,
        help="scale noise std (default: --noise-sigma)",
    )
    g.add_argument("--noise-mode", choices=("pre", "post", "frozen"), help="(pre)")
    g.add_argument("--noise-relative", action="store_true", help="sigma relative to the scale")
    g.add_argument(
        "--reset-optimizer",
        action="store_true",
        help="clear AdamW moments of the quantized layers at a reset",
    )
    g.add_argument(
        "--reset-scales",
        choices=("keep", "freeze", "reinit"),
        help="scales at a "
        "reset: keep learning, freeze for --scale-freeze-steps, or re-initialise from "
        "the reset weights (changes Q(W)) (keep)",
    )
    g.add_argument(
        "--scale-freeze-steps", type=positive_int, help="with --reset-scales freeze (T/20)"
    )

    g = p.add_argument_group("guided resets")
    g.add_argument("--guide", action="store_true", help="reset when the measurements say so")
    g.add_argument(
        "--guide-rule",
        choices=GUIDE_RULES,
        help="latent: exact clipped/flip/dispersion readings; spectrum: Hessian diagnostics "
        "(the earlier default) (latent)",
    )
    g.add_argument(
        "--guide-flip-budget",
        type=optional_nonnegative,
        help="latent rule: refuse resets once the flips per latent predicted for the rest of "
        "the run fall below this, or 'off' (1)",
    )
    g.add_argument(
        "--guide-max-return",
        type=optional_nonnegative,
        help="latent rule: refuse resets once this share of the clipping the last reset "
        "removed has come back by the time the next is due, or 'off' (0.5)",
    )
    g.add_argument(
        "--guide-probes",
        type=positive_int,
        help="spectrum rule: Rademacher probes per measurement; 2 or more give the near-zero "
        "mass the interval --guide-flat-growth needs (1)",
    )
    g.add_argument(
        "--guide-monitor",
        action="store_true",
        help="measure and log Hessian diagnostics only (baseline or fixed runs)",
    )
    g.add_argument(
        "--guide-every",
        type=positive_int,
        help="read every K updates (latent rule T/20, spectrum rule T/10)",
    )
    g.add_argument("--guide-steps", type=positive_int, help="Lanczos steps per measurement (8)")
    g.add_argument("--guide-params", help="'linear', 'all' or a regex on parameter names (linear)")
    g.add_argument(
        "--guide-batch-size",
        type=positive_int,
        help="held-out sequences in the fixed probe batch (1)",
    )
    g.add_argument(
        "--guide-eps", type=positive_float, help="near-zero threshold / lambda_max (1e-3)"
    )
    g.add_argument(
        "--guide-min-period", type=nonnegative_int, help="fewest updates between resets (T/8)"
    )
    g.add_argument(
        "--guide-max-period",
        type=nonnegative_int,
        help="reset after this many updates regardless; 0 = never "
        "(latent rule never, spectrum rule T/2)",
    )
    g.add_argument(
        "--guide-clip-growth",
        type=optional_positive,
        help="clipped-fraction rise that triggers a reset, or 'off' (0.01)",
    )
    g.add_argument(
        "--guide-flat-growth",
        type=optional_positive,
        help="near-zero-mass rise that triggers a reset, or 'off' (off)",
    )
    g.add_argument(
        "--guide-shrink",
        type=shrink_factor,
        help="|lambda|max fall factor that triggers a reset, or 'off' (2)",
    )
    g.add_argument(
        "--guide-lr-floor",
        type=fraction,
        help="refuse resets once lr < this x peak after warm-up (0.25)",
    )
    g.add_argument(
        "--guide-alpha-by",
        choices=("abs_lambda_max", "clipped_fraction", "near_zero_mass"),
        help="how --winq-alpha auto chooses: the gentlest alpha reaching 90%% of the best "
        "|lambda|max rise (or clipped-fraction fall), or the smallest near-zero mass "
        "(abs_lambda_max)",
    )
    g.add_argument(
        "--guide-alpha-candidates",
        type=alpha_list,
        help="for --winq-alpha auto (0,0.2,0.4,0.6,0.8)",
    )

    g = p.add_argument_group("run folder")
    g.add_argument(
        "--out",
        metavar="RUN",
        help="run folder (default runs/<preset>-<bits>-<mode>-"
        "<time>; with --bits 16 and no --out: the preset's cached FP checkpoint)",
    )
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its last checkpoint; its configuration comes from RUN/config.json",
    )
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g.add_argument("--eval-every", type=positive_int, help="held-out evaluation every N (T/10)")
    g.add_argument(
        "--eval-batches",
        type=positive_int,
        help="held-out batches of --batch-size sequences per evaluation (8)",
    )
    g.add_argument(
        "--eval-tasks",
        metavar="TASKS",
        help="after training, run winq-eval on the final checkpoint with these comma-separated "
        "lm-eval tasks or task YAML files (e.g. shakespeare, arc_easy,piqa); results in "
        "RUN/eval (docs/eval.md)",
    )
    g.add_argument(
        "--eval-limit",
        type=positive_float,
        help="items per --eval-tasks task (a count, or a fraction below 1; all)",
    )
    g.add_argument("--save-every", type=positive_int, help="checkpoint every N updates (T/4)")
    g.add_argument("--keep-last", type=positive_int, help="keep only the K newest checkpoints")
    g.add_argument("--log-every", type=positive_int, help="training log line every N (1)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip (and log) updates with a non-finite loss or gradient instead of stopping",
    )
    return p


# --------------------------------------------------------------------------------------------
# cheap checks (no torch import): everything a typo can get wrong


def check_out_folder(path: str, flag: str = "--out") -> None:
    """A run folder must be a folder, or creatable: no file in the way on its path."""
    folder = Path(path)
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{flag} {path}: is a file, expected a folder")
        return
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path}: {parent} is a file, expected a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{flag} {path}: cannot create it in {parent} (permission)")
            return


def check_eval_tasks(config: TrainConfig) -> None:
    """Resolve ``--eval-tasks`` (and load their data) before training, so a task that does not
    exist, or whose data is not available offline, is refused before hours of training."""
    from winq.eval import EvalError, load_tasks, split_tasks

    tasks = split_tasks(config.eval_tasks)
    if not tasks:
        raise UsageError(f"--eval-tasks {config.eval_tasks!r} names no task")
    if config.out is None:
        raise UsageError("--eval-tasks needs --out RUN (the results go to RUN/eval)")

    try:
        load_tasks(tasks)
    except EvalError as e:
        raise UsageError(f"--eval-tasks: {e}") from None


def check_inputs(config: TrainConfig) -> None:
    """File-system checks of the inputs a config names (raises UsageError)."""
    if config.init is not None:
        from winq.checkpoint import check_checkpoint_arg

        check_checkpoint_arg(config.init, "--init")
    if config.tokenizer is not None and not Path(config.tokenizer).exists():
        raise UsageError(f"--tokenizer {config.tokenizer}: no such file or folder")
    if config.data is not None:
        path = Path(config.data)
        if not path.exists() and looks_like_path(config.data):
            raise UsageError(f"--data {config.data}: no such file or folder")
        if path.is_file() and path.stat().st_size == 0:
            raise UsageError(f"--data {config.data}: the file is empty")


def _canonical(key: str, value: Any) -> Any:
    if key == "bits":
        from winq.config import parse_bits

        return parse_bits(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def config_for_resume(run: str, given: dict[str, Any]) -> TrainConfig:
    """The config of the run being resumed; flags given with ``--resume`` must agree with it."""
    folder = Path(run)
    if not folder.exists():
        raise UsageError(f"--resume {run}: no such run folder")
    if not folder.is_dir():
        raise UsageError(f"--resume {run}: is a file, expected a run folder")
    file = folder / "config.json"
    if not file.is_file():
        raise UsageError(f"--resume {run}: not a run folder (no config.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        config = TrainConfig.from_json(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as e:
        raise UsageError(
            f"--resume {run}: corrupt config.json ({' '.join(str(e).split())})"
        ) from None
    from winq.runfiles import read_records

    try:  # checked now: the resumed run rewrites it only after claiming the folder
        read_records(folder / "metrics.jsonl")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(
            f"--resume {run}: corrupt metrics.jsonl ({' '.join(str(e).split())})"
        ) from None
    if given.get("overwrite"):
        raise UsageError("--overwrite conflicts with --resume")
    if "out" in given and Path(given["out"]).resolve() != folder.resolve():
        raise UsageError(f"--out {given['out']} conflicts with --resume {run}")
    for key, value in given.items():
        if key in ("resume", "out", "overwrite"):
            continue
        if key in OPERATIONAL:
            setattr(config, key, value)
            continue
        try:
            mine = _canonical(key, value)
        except ValueError as e:
            raise UsageError(f"--{key.replace('_', '-')}: {e}") from None
        stored = _canonical(key, data.get(key))
        if mine != stored:
            raise UsageError(
                f"--{key.replace('_', '-')} {value} conflicts with the resumed run's "
                f"{key}={stored} (from {file}); drop it"
            )
    return config


# --------------------------------------------------------------------------------------------
# the command


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = vars(args)
    resume = given.get("resume")
    if resume is not None:
        config = config_for_resume(resume, given)
    else:
        fields = {k: v for k, v in given.items() if k != "resume"}
        config = TrainConfig(**fields)
        try:
            config.check_flags()
        except ValueError as e:
            raise UsageError(str(e)) from None
        if config.pretrain and config.out is None and (config.data or config.init):
            raise UsageError(
                "--bits 16 without --out rebuilds the preset's cached FP model from the embedded "
                "corpus; give --out RUN to pre-train on --data or from --init"
            )
        if config.out is not None:
            out = Path(config.out)
            check_out_folder(config.out)
            if (
                out.is_dir()
                and not config.overwrite
                and any(p.name != ".lock" for p in out.iterdir())
            ):
                raise UsageError(
                    f"--out {config.out} is not empty; pass --resume {config.out} to continue "
                    "it or --overwrite to replace it"
                )
    if config.fsdp and (int(os.environ.get("WORLD_SIZE", "0")) < 2 or "RANK" not in os.environ):
        raise UsageError(
            "--fsdp shards the model over torchrun's processes; launch it with "
            "torchrun --nproc_per_node N (N >= 2) -m winq.train.cli ... --fsdp"
        )
    check_inputs(config)
    if config.eval_tasks is not None:
        check_eval_tasks(config)

    # heavy imports from here on
    from winq.train import pipeline

    return pipeline.main_run(config, resume)


def _usage_errors() -> tuple[type[BaseException], ...]:
    # imported lazily so that bad flags are reported without importing torch
    from winq.train.pipeline import usage_error_types

    return usage_error_types()


def main(argv: Sequence[str] | None = None) -> int:
    def runner(argv: Sequence[str] | None) -> int | None:
        try:
            return run(argv)
        except Exception as e:  # map library input errors to exit code 2
            if isinstance(e, UsageError) or not isinstance(e, _usage_errors()):
                raise
            raise UsageError(str(e)) from None

    return guarded_main(PROG, runner)(argv)


if __name__ == "__main__":
    sys.exit(main())

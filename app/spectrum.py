"""``winq-spectrum``: the Hessian spectrum of a (quantized) causal LM checkpoint.

Examples::

    winq-spectrum                                 # the embedded tiny FP model, 2-bit
    winq-spectrum --ckpt runs/w2/checkpoints/step_000600 --out spectra/w2
    winq-spectrum --ckpt path/to/hf-model --bits 2 --per-layer --top-k 3 --trace 30
    winq-spectrum --ckpt runs/w2/checkpoints/step_000600 --bits 1.58 --requantize
    torchrun --nproc_per_node 2 -m winq.app.spectrum --ckpt CKPT --batches 4 --out spectra/x
    torchrun --nproc_per_node 8 -m winq.app.spectrum --ckpt BIG --fsdp --out spectra/big

The loss is the token-weighted next-token cross-entropy over ``--batches`` batches of
``--batch-size`` × ``--seq-len`` tokens of the data's held-out split (by default the embedded
Shakespeare corpus's held-out plays). The Hessian is with respect to ``--params`` (default: the
latent weights of every QuantLinear, the WinQ paper's choice); for a quantized checkpoint it is
the Hessian through the straight-through estimator (:mod:`winq.quantizers`). Under ``torchrun`` every rank
takes its share of the batches, products are all-reduced, and rank 0 writes the folder.
With ``--fsdp`` (``torchrun`` only) the model is sharded with FSDP2 instead — every decoder
block, then the root (:func:`winq.sharding.shard_model`) — products are finite differences of
two ordinary gradients (double backward cannot run through FSDP's collectives), and every
Lanczos, SLQ and Hutchinson vector is sharded like the parameters (``docs/scale.md``).

The path of one checkpoint to a figure: this command loads it (:func:`winq.load`), cuts the
measurement batches (:func:`winq.data.probe_batches`), measures
(:func:`winq.analysis.measure_spectrum`: Hessian products, SLQ, Lanczos, Hutch++), and writes
the folder (:meth:`winq.analysis.Spectrum.save` through :mod:`winq.spectrumfile`), which
``winq-plot`` reads back (:mod:`winq.plots.readers`) to draw. This command lives in the
application layer because, without ``--ckpt``, it pre-trains the embedded default first
(:func:`winq.train.ensure_fp_checkpoint`).

Bad input — a missing or unreadable checkpoint, an unknown bit width, a width that differs
from the checkpoint's without ``--requantize``, ``--steps 0``, a ``--params`` regex that
selects nothing, a sequence longer than the model's context, too little data, an ``--out``
that exists (without ``--overwrite``) or cannot be written — is one line on stderr with exit
code 2, checked before the model is loaded where possible; failures while measuring exit 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from winq.cli import (
    BITS_CHOICES,
    ArgumentParser,
    UsageError,
    bits_value,
    guarded_main,
    nonnegative_int,
    positive_float,
    positive_int,
)
from winq.quadrature import format_estimate
from winq.runfiles import CHECKPOINTS, parse_step
from winq.sources import looks_like_path
from winq.spectrumfile import jsonable

__all__ = ["build_parser", "main", "run"]

PROG = "winq-spectrum"
DTYPES = ("float32", "float64", "bfloat16")
DEFAULT_PRESET = "tiny"
DEFAULT_BITS = "2"  # for the embedded default (an FP checkpoint) when --bits is not given


def confidence(text: str) -> float:
    from winq.cli import finite_float

    value = finite_float(text)
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1), got {text}")
    return value


def trace_samples(text: str) -> int:
    value = nonnegative_int(text)
    if 0 < value < 3:
        raise argparse.ArgumentTypeError(f"Hutch++ needs at least 3 products (or 0), got {text}")
    return value


def build_parser() -> ArgumentParser:
    from winq.quadrature import DEFAULT_SIGMA, DEFAULT_ZERO_EPS

    parser = ArgumentParser(
        prog=PROG,
        description="Hessian spectrum (SLQ density, extreme eigenvalues, trace, saddle-point "
        "diagnostics) of a (quantized) causal LM checkpoint.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt", metavar="PATH",
                       help="winq checkpoint or plain Hugging Face folder (default: the embedded "
                       f"{DEFAULT_PRESET} FP model, pre-trained and cached on first use)")  # fmt: skip
    model.add_argument("--bits", type=bits_value, metavar="B",
                       help=f"{{{','.join(BITS_CHOICES)}}}; default: the checkpoint's own "
                       f"(an FP checkpoint: 16; the embedded default: {DEFAULT_BITS})")  # fmt: skip
    model.add_argument("--requantize", action="store_true",
                       help="allow --bits to differ from a quantized checkpoint's (fresh scales)")  # fmt: skip
    model.add_argument("--quantizer", choices=("lsq", "seq"),
                       help="quantizer when quantizing on the fly (default: by bit width)")  # fmt: skip
    model.add_argument(
        "--tokenizer", metavar="PATH", help="tokenizer folder when the checkpoint has none"
    )
    model.add_argument("--trust-remote-code", action="store_true")
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="PATH_OR_NAME",
                      help="text, jsonl or parquet file, a folder of them, or a dataset name "
                      "(default: the embedded corpus)")  # fmt: skip
    data.add_argument("--data-config", metavar="NAME", help="dataset configuration name")
    data.add_argument("--text-field", default="text", metavar="FIELD")
    data.add_argument("--split", choices=("heldout", "train"), default="heldout",
                      help="which split of the data the loss is measured on (default: heldout)")  # fmt: skip
    data.add_argument(
        "--batches",
        type=positive_int,
        default=2,
        metavar="N",
        help="batches in the loss (all ranks together; default 2)",
    )
    data.add_argument("--batch-size", type=positive_int, default=8, metavar="N")
    data.add_argument("--seq-len", type=positive_int, default=128, metavar="T")
    est = parser.add_argument_group("estimators")
    est.add_argument("--params", default="linear",
                     help="'linear' (QuantLinear latent weights), 'all', a regex, or a comma list "
                     "of parameter names")  # fmt: skip
    est.add_argument(
        "--per-layer",
        action="store_true",
        help="also one spectrum per transformer block and per module kind",
    )
    est.add_argument("--probes", type=positive_int, default=8, metavar="P")
    est.add_argument(
        "--steps",
        type=positive_int,
        nargs="+",
        default=[60],
        metavar="M",
        help="Lanczos steps per probe (default 60); several (--steps 30 60 120) run the largest "
        "once and report every diagnostic at each number of steps, from the same probes",
    )
    est.add_argument("--reorth", choices=("none", "full"), default="none")
    est.add_argument(
        "--top-k",
        type=nonnegative_int,
        default=0,
        metavar="K",
        help="eigenvalues of largest magnitude by full-reorth Lanczos (0: skip)",
    )
    est.add_argument(
        "--trace",
        type=trace_samples,
        default=0,
        metavar="N",
        help="Hutch++ products for the trace (0: the SLQ estimate)",
    )
    est.add_argument(
        "--backend",
        choices=("double_backward", "func", "finite_difference"),
        help="Hessian-vector products (default double_backward; finite_difference with --fsdp)",
    )
    est.add_argument("--eps", type=positive_float, default=DEFAULT_ZERO_EPS,
                     help=f"near-zero threshold on |λ| (default {DEFAULT_ZERO_EPS})")  # fmt: skip
    est.add_argument(
        "--relative-eps", action="store_true", help="the threshold is eps·λmax instead of absolute"
    )
    est.add_argument("--sigma", type=positive_float, default=DEFAULT_SIGMA,
                     help=f"Gaussian broadening of the saved density (default {DEFAULT_SIGMA})")  # fmt: skip
    est.add_argument("--ci", type=confidence, default=0.95, metavar="LEVEL",
                     help="confidence level of the intervals over probes (default 0.95)")  # fmt: skip
    est.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: CUDA if available")  # fmt: skip
    run.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="weights and products (default float32)"
    )
    run.add_argument(
        "--out", metavar="DIR", help="spectrum folder (default: spectra/<checkpoint name>)"
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model and the vectors over torchrun's processes with FSDP2 "
        "(finite-difference products; --batches a multiple of the processes)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


# --------------------------------------------------------------------------------------------
# checks that need no model


def _params_spec(text: str) -> str | list[str]:
    text = text.strip()
    if not text:
        raise UsageError("--params is empty: give 'linear', 'all', a regex or a list of names")
    if text in ("linear", "all"):
        return text
    if "," in text:
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        re.compile(text)
    except re.error as e:
        raise UsageError(f"--params {text!r} is not a valid regular expression: {e}") from None
    return text


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {str(out)!r} exists and is not a folder")
        if any(out.iterdir()):
            if not (out / "spectrum.json").is_file():
                raise UsageError(
                    f"--out {str(out)!r} is a non-empty folder that is not a spectrum folder; "
                    "choose another"
                )
            if not overwrite:
                raise UsageError(f"--out {str(out)!r} already holds a spectrum; pass --overwrite")
    parent = _nearest_existing(out.parent)
    if not parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r} is not writable ({str(parent)!r} is read-only)")
    # os.access says yes to root on a read-only mount or a pseudo file system: try it (the
    # folder is written under a temporary name in that same place, see winq.io.atomic_dir)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".winq-spectrum-probe.", dir=parent))
    except OSError as e:
        raise UsageError(
            f"--out {str(out)!r} is not writable ({str(parent)!r}: {e.strerror})"
        ) from None


def _check_context(ckpt: Path, seq_len: int) -> None:
    """A ``--seq-len`` beyond the checkpoint's context, read from its ``config.json``."""
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--ckpt {str(ckpt)!r}: unreadable config.json ({e})") from None
    context = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(context, int) and seq_len > context:
        raise UsageError(
            f"--seq-len {seq_len} is longer than the model's context ({context} positions)"
        )


def _step_and_run(path: Path) -> tuple[int | None, str | None]:
    """A trainer checkpoint is ``RUN/checkpoints/step_NNNNNN``: its step and run folder."""
    step = parse_step(path.name)
    if step is None:
        return None, None
    run = path.parent.parent if path.parent.name == CHECKPOINTS else None
    return step, (str(run) if run is not None else None)


# --------------------------------------------------------------------------------------------
# the command


def _default_checkpoint(progress: bool, dist) -> Path:
    from winq import embedded

    target = Path(embedded.default_checkpoint_path(DEFAULT_PRESET))
    if (target / "config.json").is_file():
        return target
    from winq.train import ensure_fp_checkpoint

    if dist.is_main:
        print(f"{PROG}: the embedded {DEFAULT_PRESET} FP model is not cached yet; "
              "pre-training it first (a few minutes, once)", file=sys.stderr, flush=True)  # fmt: skip
    return ensure_fp_checkpoint(DEFAULT_PRESET, dist, progress=progress)


def _load_tokenizer(args: argparse.Namespace, tokenizer: Any, ckpt: Path, default: bool):
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        from winq.checkpoint import quiet_transformers

        if not Path(args.tokenizer).is_dir():
            raise UsageError(f"--tokenizer {args.tokenizer!r} is not a folder")
        with quiet_transformers():
            try:
                return AutoTokenizer.from_pretrained(
                    args.tokenizer, trust_remote_code=args.trust_remote_code
                )
            except (OSError, ValueError) as e:
                raise UsageError(
                    f"--tokenizer {args.tokenizer!r}: {str(e).splitlines()[0]}"
                ) from None
    if tokenizer is not None:
        return tokenizer
    if default:
        from winq import embedded

        return embedded.tokenizer()
    raise UsageError(f"--ckpt {str(ckpt)!r} has no tokenizer; pass --tokenizer PATH")


def _batches(args, tokenizer, model, rank: int, world: int) -> tuple[list[dict], int]:
    """This rank's batches (round-robin share) and the total token count asked for."""
    from winq.data import probe_batches

    batches = probe_batches(
        args.data,
        tokenizer,
        args.seq_len,
        args.batches,
        args.batch_size,
        split=args.split,
        rank=rank,
        world=world,
        vocab_size=model.get_input_embeddings().num_embeddings,
        data_config=args.data_config,
        text_field=args.text_field,
        max_positions=getattr(model.config, "max_position_embeddings", None),
    )
    return batches, args.batches * args.batch_size * args.seq_len


def _format_summary(summary: dict, metadata: dict, out: Path | None) -> str:
    def num(value, spec=".6g") -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return format(value, spec)

    def mass(key: str) -> str:
        text = format_estimate(summary.get(key), summary.get(f"{key}_ci"))
        return text if summary.get(f"{key}_resolved") is not False else f"{text}  (unresolved)"

    def spread(key: str) -> str:
        low, high = summary.get(f"{key}_probes") or (None, None)
        return f"{num(summary.get(key))}  (probes {num(low)} .. {num(high)})"

    bits = metadata.get("bits")
    clipped = summary.get("clipped_fraction")
    threshold = summary.get("near_zero_threshold")
    level = f"{summary.get('ci_level', 0.95):.0%}"
    rows = [
        ("checkpoint", str(metadata.get("checkpoint"))),
        ("bits", f"{bits} ({metadata.get('quantizer')})" if bits != 16 else "16 (full precision)"),
        ("parameters", f"{metadata.get('num_params'):,} ({metadata.get('params')})"),
        ("tokens", f"{metadata.get('tokens')}"),
        (
            "probes x steps",
            f"{metadata.get('probes')} x {metadata.get('lanczos_steps')} "
            f"(reorth {metadata.get('reorth')}); masses ± {level} half-width, Student t",
        ),
        ("lambda_max", spread("lambda_max")),
        ("lambda_min", spread("lambda_min")),
        ("|lambda_min|/lambda_max", num(summary.get("abs_ratio"), ".4g")),
        (
            "trace",
            f"{num(summary.get('trace'))} ± {num(summary.get('trace_stderr'), '.3g')} "
            f"(s.e., {summary.get('trace_method')})",
        ),
        (f"near-zero mass (|λ| ≤ {threshold:.3g})", mass("near_zero_mass")),
        (f"negative mass (λ < -{threshold:.3g})", mass("negative_mass")),
        (f"positive mass (λ > {threshold:.3g})", mass("positive_mass")),
        (
            f"broadened near-zero (σ {summary.get('density_sigma'):.2g})",
            mass("near_zero_mass_broadened"),
        ),
        ("sign-negative mass (λ < 0)", mass("sign_negative_mass")),
        ("clipped fraction", "n/a (full precision)" if clipped is None else f"{clipped:.4f}"),
    ]
    top = summary.get("top_eigenvalues")
    if top:
        residuals = summary.get("top_residuals") or [None] * len(top)
        rows.append(("top eigenvalues", ", ".join(
            f"{num(v)} (residual {num(r, '.2g')})" for v, r in zip(top, residuals))))  # fmt: skip
    rows.append(("wall seconds", num(metadata.get("wall_seconds"), ".1f")))
    if out is not None:
        rows.append(("written to", str(out)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def resolution_warning(summary: dict, steps: int) -> str | None:
    """One line when the near-zero mass at the threshold is not resolved: the threshold, the
    resolution reached (the quadrature cell at zero) and what would resolve it."""
    if summary.get("near_zero_mass_resolved") is not False:
        return None
    threshold = summary.get("near_zero_threshold")
    cell = summary.get("near_zero_resolution")
    advice = []
    resolved = summary.get("near_zero_resolved_threshold")
    if resolved is not None:
        advice.append(f"the mass is resolved from |λ| ≤ {resolved:.2g}")
    if cell is not None and math.isfinite(cell) and threshold and cell > threshold:
        # interior node spacing shrinks roughly like 1/m
        advice.append(f"about {math.ceil(steps * cell / threshold):,} Lanczos steps would make "
                      "the cell at zero as narrow as the threshold")  # fmt: skip
    if summary.get("near_zero_mass_below_clipped"):
        advice.append("its interval lies below the clipped fraction, an exact lower bound")
    return (
        f"warning: the near-zero mass at |λ| ≤ {threshold:.3g} is unresolved: the quadrature "
        f"cell around zero is {cell:.2g} wide after {steps} steps"
        + ("; " + "; ".join(advice) if advice else "")
    )


def _convergence_table(by_steps: dict) -> str:
    keys = ("lambda_max", "near_zero_mass", "negative_mass", "positive_mass",
            "near_zero_mass_broadened")  # fmt: skip
    lines = [f"{'steps':>6}  " + "  ".join(f"{k:>22}" for k in keys)]
    for steps, summary in sorted(by_steps.items(), key=lambda kv: int(kv[0])):
        cells = []
        for key in keys:
            if key == "lambda_max":
                cells.append(f"{summary[key]:>22.6g}")
                continue
            text = format_estimate(summary.get(key), summary.get(f"{key}_ci"))
            mark = "" if summary.get(f"{key}_resolved") is not False else "*"
            cells.append(f"{text + mark:>22}")
        lines.append(f"{int(steps):>6}  " + "  ".join(cells))
    lines.append("(* unresolved at that number of steps)")
    return "\n".join(lines)


def _block_lines(spectrum) -> str:
    lines = [f"{'block':<16} {'params':>10} {'lambda_max':>12} {'lambda_min':>12} "
             f"{'near-zero':>10} {'negative':>9} {'clipped':>8}"]  # fmt: skip
    for name, block in spectrum.blocks.items():
        s = block.summary()
        clipped = block.metadata.get("clipped_fraction")
        lines.append(
            f"{name:<16} {block.num_params:>10,} {s['lambda_max']:>12.5g} {s['lambda_min']:>12.5g} "
            f"{s['near_zero_mass']:>10.4f} {s['negative_mass']:>9.4f} "
            f"{'n/a' if clipped is None else format(clipped, '.4f'):>8}"
        )
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    params = _params_spec(args.params)
    ckpt = None if args.ckpt is None else Path(args.ckpt)
    if ckpt is not None:
        from winq.checkpoint import check_checkpoint_arg

        check_checkpoint_arg(ckpt, "--ckpt")
    if args.data is not None and not Path(args.data).exists() and looks_like_path(args.data):
        raise UsageError(f"--data {args.data!r} does not exist")
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise UsageError(f"--tokenizer {args.tokenizer!r} is not a folder")
    if args.out is not None:
        _check_out(Path(args.out), args.overwrite)
    args.backend = _check_fsdp(args)
    if ckpt is not None:
        from winq.checkpoint import read_quant_config

        _check_context(ckpt, args.seq_len)

        saved = read_quant_config(ckpt)
        saved_bits = saved[0].bits if saved is not None else 16
        if args.bits is not None and saved is not None and args.bits != saved_bits:
            if not args.requantize:
                raise UsageError(
                    f"--ckpt {str(ckpt)!r} is {saved_bits}-bit but --bits {args.bits} was given; "
                    "pass --requantize to re-quantize it"
                )

    import torch

    from winq import distributed

    try:
        dist = distributed.setup(args.device)
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    try:
        return _measure(args, params, ckpt, dist, torch)
    finally:
        distributed.cleanup()


def _check_fsdp(args: argparse.Namespace) -> str:
    """The backend to use; ``--fsdp`` refused without torchrun or with an exact backend."""
    if not args.fsdp:
        return args.backend or "double_backward"
    if int(os.environ.get("WORLD_SIZE", "0")) < 2 or "RANK" not in os.environ:
        raise UsageError(
            "--fsdp shards the model over torchrun's processes; launch it with "
            "torchrun --nproc_per_node N (N >= 2) -m winq.app.spectrum ... --fsdp"
        )
    if args.backend not in (None, "finite_difference"):
        raise UsageError(
            f"--backend {args.backend} cannot run with --fsdp: FSDP's all-gathers and "
            "reduce-scatters are not in the autograd graph; use --backend finite_difference"
        )
    world = int(os.environ["WORLD_SIZE"])
    if args.batches % world:
        raise UsageError(
            f"--fsdp needs --batches a multiple of the {world} processes (every rank runs "
            f"each forward's all-gathers together), got {args.batches}"
        )
    return "finite_difference"


def _measure(args, params, ckpt: Path | None, dist, torch) -> int:
    from winq import distributed
    from winq.cli import RuntimeFailure

    default = ckpt is None
    if default:
        ckpt = _default_checkpoint(args.progress, dist)
    bits = args.bits if args.bits is not None else (DEFAULT_BITS if default else None)
    out = Path(args.out) if args.out is not None else Path("spectra") / _default_name(ckpt, bits)
    if args.out is None:
        _check_out(out, args.overwrite)
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = _lock_out(out, args.overwrite)
        except (UsageError, RuntimeFailure) as e:
            refusal = e
    refusal = distributed.broadcast_object(refusal)  # every rank stops, none waits alone
    if refusal is not None:
        raise refusal
    try:
        return _measure_into(out, args, params, ckpt, bits, default, dist, torch)
    finally:
        if lock is not None:
            lock.release()


def out_lock_path(out: Path) -> Path:
    """The lock file of an ``--out`` path: one per resolved path, in the winq cache."""
    import hashlib

    from winq.embedded import cache_dir

    key = hashlib.sha256(str(out.absolute().resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "locks" / f"spectrum-{key}.lock"


def _lock_out(out: Path, overwrite: bool):
    """Hold a lock on ``--out`` while measuring, so that two runs never race to it.

    The lock file lives in the winq cache (``locks/spectrum-<hash of the path>.lock``), not
    beside ``--out``: a refused or failed run leaves nothing in the user's folders. The check
    of ``--out`` is repeated under the lock: a run that finished while this one started would
    otherwise be replaced without ``--overwrite``.
    """
    from winq.cli import RuntimeFailure
    from winq.io import FileLock, LockedError

    lock = FileLock(out_lock_path(out), blocking=False)
    try:
        lock.acquire()
    except LockedError:
        raise RuntimeFailure(
            f"--out {str(out)!r} is being written by another winq-spectrum run "
            f"(lock {str(lock.path)!r}); wait for it or choose another --out"
        ) from None
    try:
        _check_out(out, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def _measure_into(out: Path, args, params, ckpt: Path, bits, default: bool, dist, torch) -> int:
    from winq.analysis.hvp import select_parameters
    from winq.analysis.measure import measure_spectrum
    from winq.checkpoint import load

    if default:
        _check_context(ckpt, args.seq_len)
    if args.batches < dist.world_size:
        raise UsageError(f"--batches {args.batches} is fewer than the {dist.world_size} processes")
    model, tokenizer = load(
        ckpt,
        bits=bits,
        requantize=args.requantize,
        quantizer=args.quantizer,
        dtype=args.dtype,
        device=dist.device,
        trust_remote_code=args.trust_remote_code,
    )
    tokenizer = _load_tokenizer(args, tokenizer, ckpt, default)
    try:
        select_parameters(model, params)
    except ValueError as e:
        raise UsageError(f"--params {args.params!r}: {e}") from None
    batches, tokens = _batches(args, tokenizer, model, dist.rank, dist.world_size)
    step, run_dir = _step_and_run(ckpt)
    group = torch.distributed.group.WORLD if dist.enabled else None
    if args.fsdp:
        from winq.sharding import shard_model

        model = shard_model(model)
        group = None  # the operator reduces over the shards' mesh
    spectrum = measure_spectrum(
        model,
        batches,
        params=params,
        probes=args.probes,
        steps=args.steps,
        reorth=args.reorth,
        top_k=args.top_k,
        trace=args.trace,
        backend=args.backend,
        seed=args.seed,
        eps=args.eps,
        relative=args.relative_eps,
        sigma=args.sigma,
        ci=args.ci,
        per_layer=args.per_layer,
        process_group=group,
        basis_device="cpu" if dist.device.type == "cuda" else None,
        progress=args.progress and dist.is_main,
        metadata={
            "checkpoint": str(ckpt.absolute()),
            "step": step,
            "run": run_dir,
            "alpha": None,
            "batches": args.batches,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "data": args.data if args.data is not None else "embedded:heldout",
            "split": args.split,
            "requested_tokens": tokens,
        },
    )
    if not dist.is_main:
        return 0
    spectrum.save(out, overwrite=args.overwrite)
    summary = spectrum.summary()
    by_steps = spectrum.convergence(args.steps) if len(args.steps) > 1 else {}
    if args.json:
        document = {"out": str(out), "summary": summary}
        if by_steps:
            document["by_steps"] = {str(m): s for m, s in by_steps.items()}
        if spectrum.blocks:
            document["blocks"] = {name: b.summary() for name, b in spectrum.blocks.items()}
        print(json.dumps(jsonable(document), indent=2))
    else:
        print(_format_summary(summary, spectrum.metadata, out))
        if by_steps:
            print()
            print(_convergence_table(by_steps))
        if spectrum.blocks:
            print()
            print(_block_lines(spectrum))
    warning = resolution_warning(summary, max(args.steps))
    if warning is not None:
        print(f"{PROG}: {warning}", file=sys.stderr)
    return 0


def _default_name(ckpt: Path, bits) -> str:
    _, run_dir = _step_and_run(ckpt)
    name = f"{Path(run_dir).name}-{ckpt.name}" if run_dir is not None else ckpt.name
    return name if bits is None else f"{name}-w{bits}"


def _usage_errors() -> tuple[type[BaseException], ...]:
    from winq.checkpoint import CheckpointError
    from winq.data import DataError

    return (CheckpointError, DataError)


main = guarded_main(PROG, run, usage_errors=_usage_errors)

if __name__ == "__main__":
    sys.exit(main())

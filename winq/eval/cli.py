"""``winq-eval``: zero-shot accuracy and perplexity of a (quantized) checkpoint, with intervals.

Examples::

    winq-eval                                         # embedded tiny FP model, shakespeare
    winq-eval --ckpt runs/w2/checkpoints/step_000300 --out evals/w2
    winq-eval --ckpt path/to/hf-model --bits 2 --tasks arc_easy,piqa,wikitext --device cuda
    winq-eval --ckpt CKPT --tasks my_task.yaml,shakespeare_nextline --limit 200 --json

The model is loaded by :func:`winq.load` (a winq checkpoint at its own bits; a plain Hugging
Face folder quantized on the fly with ``--bits``) and evaluated fake-quantized, as it runs in
winq, by lm-evaluation-harness (:mod:`winq.eval.harness`). ``--tasks`` takes lm-eval task,
group and tag names, paths to task YAML files, and the embedded ``shakespeare``,
``shakespeare_nextline``, ``shakespeare_ppl`` (:mod:`winq.eval.tasks`). The table gives, per
task and metric, lm-eval's value, a 95% interval (Wilson for accuracies, a bootstrap over
documents for perplexities: :mod:`winq.eval.intervals`), the items, chance for multiple
choice, and lm-eval's own standard error. ``--out DIR`` writes ``results.json`` and
``samples.jsonl`` atomically (:mod:`winq.eval.results`).

Without ``--ckpt`` the embedded preset's FP model is used; it must have been pre-trained
(``winq-train --bits 16 --preset tiny``): this command is core and does not train.

Bad input -- an unknown task (with lm-eval's closest names), a hub task whose data is not
cached while offline, a missing task file, a missing or unloadable checkpoint, a bad
``--bits``, an ``--out`` that exists without ``--overwrite`` -- is one line on stderr with exit
code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from winq.cli import (
    BITS_CHOICES,
    ArgumentParser,
    UsageError,
    bits_value,
    guarded_main,
    nonnegative_int,
)

__all__ = ["build_parser", "main", "run"]

PROG = "winq-eval"
DEFAULT_PRESET = "tiny"


def limit_value(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a positive item count or a fraction in (0, 1), got {text}"
        )
    if value >= 1:
        if not value.is_integer():
            raise argparse.ArgumentTypeError(
                f"must be a whole item count or a fraction in (0, 1), got {text}"
            )
        return int(value)
    return value


def batch_size_value(text: str) -> int | str:
    if text == "auto" or (text.startswith("auto:") and text[5:].replace(".", "", 1).isdigit()):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer or 'auto', got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text}")
    return value


def task_list(text: str) -> list[str]:
    from winq.eval.harness import split_tasks

    names = split_tasks(text)
    if not names:
        raise argparse.ArgumentTypeError("no task names given")
    return names


def build_parser() -> ArgumentParser:
    from winq.eval.harness import DEFAULT_BATCH_SIZE, DEFAULT_TASKS
    from winq.eval.intervals import BOOTSTRAP_RESAMPLES

    parser = ArgumentParser(
        prog=PROG,
        description="Zero-shot accuracy and perplexity of a (quantized) causal LM checkpoint "
        "through lm-evaluation-harness, each score with a 95% interval.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt", metavar="PATH",
                       help="winq checkpoint or plain Hugging Face folder (default: the embedded "
                       "preset's pre-trained FP model)")  # fmt: skip
    model.add_argument("--preset", choices=("tiny", "small"), default=DEFAULT_PRESET,
                       help="the embedded model used without --ckpt (default tiny)")  # fmt: skip
    model.add_argument("--bits", type=bits_value, metavar="B",
                       help=f"{{{','.join(BITS_CHOICES)}}}; default: the checkpoint's own (an FP "
                       "checkpoint with --bits B is quantized on the fly)")  # fmt: skip
    model.add_argument("--requantize", action="store_true",
                       help="allow --bits to differ from a quantized checkpoint's (fresh scales)")  # fmt: skip
    model.add_argument(
        "--tokenizer", metavar="PATH", help="tokenizer folder when the checkpoint has none"
    )
    model.add_argument("--trust-remote-code", action="store_true")
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument("--tasks", type=task_list, default=list(DEFAULT_TASKS),
                       metavar="LIST",
                       help="comma-separated lm-eval task/group/tag names, task YAML files, and "
                       "the embedded shakespeare, shakespeare_nextline, shakespeare_ppl "
                       f"(default: {','.join(DEFAULT_TASKS)})")  # fmt: skip
    tasks.add_argument("--limit", type=limit_value, metavar="N",
                       help="items per task: a count, or a fraction in (0, 1)")  # fmt: skip
    tasks.add_argument("--num-fewshot", type=nonnegative_int, default=0, metavar="K",
                       help="examples in each prompt (default 0: zero-shot)")  # fmt: skip
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=batch_size_value, default=DEFAULT_BATCH_SIZE,
                     metavar="N", help=f"requests per forward, or auto (default {DEFAULT_BATCH_SIZE})")  # fmt: skip
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="auto: CUDA if available")  # fmt: skip
    run.add_argument("--seed", type=int, default=0,
                     help="lm-eval's seeds and the bootstrap's (default 0)")  # fmt: skip
    run.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, metavar="B",
                     help=f"bootstrap resamples for perplexity intervals (default {BOOTSTRAP_RESAMPLES})")  # fmt: skip
    run.add_argument("--out", metavar="DIR", help="write results.json and samples.jsonl here")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run.add_argument("--json", action="store_true", help="print the scores as JSON on stdout")
    run.add_argument("--verbose", action="store_true", help="keep lm-eval's log messages")
    return parser


def _checkpoint(args: argparse.Namespace) -> str:
    from winq import embedded
    from winq.checkpoint import check_checkpoint_arg

    if args.ckpt is not None:
        check_checkpoint_arg(args.ckpt, "--ckpt")
        return args.ckpt
    path = embedded.default_checkpoint_path(args.preset)
    if not (path / "config.json").is_file():
        raise UsageError(
            f"no --ckpt given and the embedded {args.preset} FP model is not pre-trained yet "
            f"({path}): run 'winq-train --bits 16 --preset {args.preset}' first, or pass --ckpt"
        )
    check_checkpoint_arg(path, "the embedded checkpoint")
    return str(path)


def _summary(result) -> str:
    meta = result.metadata
    bits = meta.get("bits")
    width = "full precision" if bits == 16 else f"{bits}-bit ({meta.get('quantizer')})"
    seconds = meta.get("seconds", {}).get("total", float("nan"))
    return (
        f"{PROG}: {meta.get('checkpoint') or meta.get('model')}, {width}, "
        f"{meta.get('num_fewshot')}-shot, lm-eval {meta.get('versions', {}).get('lm_eval')}, "
        f"{seconds:.1f} s"
    )


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from winq.eval.harness import check_out, evaluate

    if args.resamples < 100:
        raise UsageError(f"--resamples must be at least 100, got {args.resamples}")
    if args.out is not None:
        check_out(args.out, args.overwrite)
    checkpoint = _checkpoint(args)
    result = evaluate(
        checkpoint, args.tasks, tokenizer=args.tokenizer, bits=args.bits,
        requantize=args.requantize, limit=args.limit, batch_size=args.batch_size,
        device=args.device, num_fewshot=args.num_fewshot, seed=args.seed, out=args.out,
        overwrite=args.overwrite, resamples=args.resamples,
        trust_remote_code=args.trust_remote_code, verbose=args.verbose,
    )  # fmt: skip
    if args.json:
        data = result.to_dict()
        data.pop("lm_eval", None)  # in results.json; too long for a terminal
        print(json.dumps(data, indent=2))
    else:
        print(_summary(result))
        print(result.table())
        if args.out is not None:
            print(f"{PROG}: wrote {args.out}")
    sys.stdout.flush()
    return 0


def _usage_errors() -> tuple[type[BaseException], ...]:
    from winq.checkpoint import CheckpointError
    from winq.eval.harness import EvalError

    return (EvalError, CheckpointError)


main = guarded_main(PROG, run, usage_errors=_usage_errors)

if __name__ == "__main__":
    sys.exit(main())

"""``winq-export``: write a winq checkpoint as a plain HF folder, a packed folder or a GGUF file.

Examples::

    winq-export runs/w2/checkpoints/final --format gguf --out w2.gguf
    winq-export runs/w2/checkpoints/step_000300 --format packed --out w2-packed
    winq-export runs/w2/checkpoints/step_000300 --format hf --dtype float32 --out w2-hf
    winq-export ~/.cache/winq/models/tiny-fp --bits 4 --format gguf --out tiny-w4.gguf

Every export is exact (:mod:`winq.export`): ``hf`` holds ``Q(W)`` as plain weights, ``packed``
the integer codes and scales (read back by ``winq.load``), ``gguf`` each quantized tensor in the
most compact GGUF block type that stores its grid exactly (``--gguf-type`` forces one). The
command prints one line per tensor: its name in the export, shape, storage type, bytes, and the
largest relative deviation of a stored weight from ``Q(W)``.

Bad input — a missing or unreadable checkpoint, a ``--format`` or ``--dtype`` outside the
allowed values, an ``--out`` that exists (without ``--overwrite``), a model GGUF cannot hold
(not a Llama, no quantized layer, a row length or group size no exact type fits) — is one line
on stderr with exit code 2, and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from winq.cli import ArgumentParser, UsageError, guarded_main
from winq.export import FORMATS, GGUF_ARCHITECTURES, GGUF_TYPES, ExportError, check_dtype, export

__all__ = ["build_parser", "main", "run"]

PROG = "winq-export"
BITS_CHOICES = ("1", "1.58", "2", "3", "4")
DTYPE_CHOICES = ("bfloat16", "float16", "float32")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Export a winq checkpoint exactly: plain Hugging Face weights (hf), "
        "bit-packed codes and scales (packed), or a llama.cpp GGUF file (gguf).",
    )
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="winq checkpoint (or packed export) folder")  # fmt: skip
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="folder (hf, packed) or .gguf file (gguf) to write")  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPE_CHOICES,
                        help="hf: weight dtype (default bfloat16); gguf: dtype of embeddings and "
                        "an untied output head (default float32); not for packed")  # fmt: skip
    parser.add_argument("--gguf-type", default="auto",
                        choices=("auto", *GGUF_TYPES),
                        help="GGUF block type of every quantized tensor (default auto: the most "
                        "compact exact one per tensor)")  # fmt: skip
    parser.add_argument("--bits", choices=BITS_CHOICES,
                        help="quantize an FP checkpoint on the fly (initial scales) before "
                        "exporting")  # fmt: skip
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer folder when the checkpoint has none")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    return parser


def _precheck(args) -> None:
    """Refuse bad input from the files alone, before the model is loaded."""
    from winq.checkpoint import CheckpointError, check_folder, read_quant_config

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {str(out)!r} already exists (pass --overwrite to replace it)")
    try:
        check_dtype(args.format, args.dtype)
    except ExportError as e:
        raise UsageError(str(e)) from None
    if args.gguf_type != "auto" and args.format != "gguf":
        raise UsageError(f"--gguf-type applies to --format gguf, not {args.format}")
    try:
        check_folder(args.checkpoint, "CKPT")
        saved = read_quant_config(args.checkpoint)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    if args.format in ("packed", "gguf") and saved is None and args.bits is None:
        raise UsageError(
            f"checkpoint {args.checkpoint!r} has no quantized layers: nothing to "
            f"{'pack' if args.format == 'packed' else 'store in GGUF blocks'} "
            "(pass --bits B to quantize it on the fly, or use --format hf)"
        )
    if args.format == "gguf":
        config = json.loads((Path(args.checkpoint) / "config.json").read_text())
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if model_type not in GGUF_ARCHITECTURES:
            raise UsageError(
                f"gguf export supports the {', '.join(GGUF_ARCHITECTURES)} architecture; "
                f"checkpoint {args.checkpoint!r} is {model_type!r} (use --format packed or hf)"
            )
    if args.tokenizer is not None and not Path(args.tokenizer).is_dir():
        raise UsageError(f"--tokenizer {args.tokenizer!r} is not a folder")


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _precheck(args)
    from winq.checkpoint import load

    model, tokenizer = load(args.checkpoint, bits=args.bits)
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as e:
            raise UsageError(f"--tokenizer {args.tokenizer!r} cannot be loaded: {e}") from None
    report = export(
        model,
        args.format,
        args.out,
        tokenizer=tokenizer,
        dtype=args.dtype,
        gguf_type=args.gguf_type,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(report.table())
    return 0


def _usage_errors() -> tuple[type[BaseException], ...]:
    from winq.checkpoint import CheckpointError

    return (ExportError, CheckpointError)


main = guarded_main(PROG, run, usage_errors=_usage_errors)

if __name__ == "__main__":
    raise SystemExit(main())

r"""Do winq's GGUF exports run in llama.cpp as winq's own quantized model does?

For each bit width this takes a trained tiny model — by default a ``winq-train`` QAT run of the
embedded ``tiny`` preset from its cached FP checkpoint (``--source qat``; ``--source init``
quantizes the FP checkpoint with initial scales instead, no training), exports it with
``winq.export`` to GGUF (the most compact exact block type per tensor, and Q4_0 for comparison),
packed and hf bfloat16, runs the GGUF file end to end in llama.cpp (``llama-cpp-python``), and
reports against winq's own model (float32, PyTorch) on held-out text
(``winq.data.lm_blocks(None, tokenizer, seq_len, "heldout")``):

* **top-1 agreement**: the fraction of positions where llama.cpp's most likely next token is
  winq's;
* **KL**: the mean ``KL(p_winq || p_llama.cpp)`` of the next-token distributions (nats/token);
* the same two for the **file alone**: the GGUF decoded by transformers' GGUF reader and run in
  PyTorch, which isolates what the export changes (float16 block scales) from what llama.cpp's
  kernels change;
* **loss**: each side's held-out cross-entropy (nats/token);
* **sizes**: the GGUF file, the packed ``model.safetensors``, the winq checkpoint's and the hf
  bfloat16 export's ``model.safetensors``;
* **speed**: llama.cpp's tokens/s over whole blocks (prompt processing) and one token at a time
  (decoding), and winq's (PyTorch) tokens/s over whole blocks, all on ``--threads`` threads.

Every mean is printed with its standard error over the ``--blocks`` held-out blocks (blocks are
the independent units; tokens within one are not). llama.cpp's matrix products quantize the
activations to 8 bits (its ``Q8_0``/``Q8_K`` dot products) and accumulate in another order, so a
small KL remains even though the weights are winq's ``Q(W)`` up to the float16 rounding of the
block scales (tests/export check that part exactly, with ``gguf``'s own reader).

llama.cpp comes from PyPI: when ``llama_cpp`` is not importable this builds the
``llama-cpp-python`` source distribution with the machine's cmake and C/C++ compiler into
``--install-dir`` (default ``bench/results/llama_cpp_python``, ignored by git), for AVX2 rather
than the build machine's own instruction set (see :func:`build_llama_cpp`) — 3 to 5 minutes on
2 cores, shown as the build's step counter. Nothing of llama.cpp is kept in the repository.
Usage (the runs in BENCHMARKS.md)::

    python bench/gguf_llamacpp.py --qat-steps 60 --train-flags "--batch-size 8 --seq-len 128" \
        --json bench/results/gguf_llamacpp_tiny.json              # 1, 1.58, 2, 3, 4 bits
    winq-train --preset small --bits 16 --steps 300 --warmup 15 --batch-size 8 --seq-len 128 \
        --out bench/results/gguf_runs/small-fp
    python bench/gguf_llamacpp.py --preset small --bits 1 1.58 2 --qat-steps 60 \
        --train-flags "--init bench/results/gguf_runs/small-fp/checkpoints/step_000300 \
        --batch-size 8 --seq-len 128" --json bench/results/gguf_llamacpp_small.json
    python bench/gguf_llamacpp.py --source init --bits 4 3      # no training

The tiny preset's rows (128 and 384 weights) are not multiples of 256, so its exports are all
Q4_0 (Q5_0 for SEQ 4-bit); the small preset's (256, 768) take the compact TQ2_0 and Q2_K.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP_VERSION = "0.3.36"
BITS = ("1", "1.58", "2", "3", "4")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", nargs="+", default=list(BITS), choices=BITS)
    parser.add_argument("--source", choices=("qat", "init"), default="qat",
                        help="qat: winq-train QAT runs (default); init: FP model, initial scales")  # fmt: skip
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--qat-steps", type=int, default=None,
                        help="QAT updates per bit width (default: the preset's)")  # fmt: skip
    parser.add_argument("--train-flags", default="",
                        help="extra winq-train flags for the QAT runs, e.g. '--init CKPT'")  # fmt: skip
    parser.add_argument("--runs", type=Path, default=ROOT / "bench/results/gguf_runs",
                        help="QAT run folders (reused when complete) and exports")  # fmt: skip
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=16, help="held-out blocks evaluated")
    parser.add_argument("--decode-tokens", type=int, default=64,
                        help="tokens decoded one at a time per block for the decode speed")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--install-dir", type=Path,
                        default=ROOT / "bench/results/llama_cpp_python")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


# -- llama.cpp ------------------------------------------------------------------------------------


def import_llama_cpp(install_dir: Path):
    """``llama_cpp``, built from PyPI's source distribution into ``install_dir`` if needed."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        pass
    if not (install_dir / "llama_cpp").is_dir():
        build_llama_cpp(install_dir)
    sys.path.insert(0, str(install_dir))
    return importlib.import_module("llama_cpp")


def build_llama_cpp(install_dir: Path) -> None:
    from tqdm.auto import tqdm

    print(f"llama_cpp is not importable: building llama-cpp-python {LLAMA_CPP_VERSION} from its "
          f"PyPI source distribution into {install_dir} (3 to 5 minutes on 2 cores)",
          flush=True)  # fmt: skip
    env = dict(os.environ)
    # The library only: no examples, tests, tools, server or multimodal projector. And not a
    # native build: on a CPU that advertises AMX, ggml's native build uses AMX tiles, and in a
    # virtual machine that does not grant the tile state the first matrix product dies of a
    # general protection fault (seen here); AVX2 + FMA + F16C runs on every x86-64 of the last
    # decade and is what llama.cpp's own portable CPU builds target.
    env["CMAKE_ARGS"] = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF "
                         "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF "
                         "-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                         "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF")  # fmt: skip
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    # --no-cache-dir: pip's wheel cache is keyed by the version, not by CMAKE_ARGS
    command = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps", "--no-binary",
               "llama-cpp-python", "--target", str(install_dir), "-v",
               f"llama-cpp-python=={LLAMA_CPP_VERSION}", "diskcache"]  # fmt: skip
    log = install_dir.parent / "llama_cpp_build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    step = re.compile(r"\[(\d+)/(\d+)\]")
    bar = tqdm(desc="building llama.cpp", unit="step")
    with open(log, "w") as record:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in process.stdout:
            record.write(line)
            match = step.search(line)
            if match:
                bar.total = int(match.group(2))
                bar.n = int(match.group(1))
                bar.refresh()
        code = process.wait()
    bar.close()
    if code != 0:
        raise SystemExit(f"building llama-cpp-python failed (exit {code}); see {log}")


# -- models ---------------------------------------------------------------------------------------


def checkpoint_for(bits: str, args) -> Path:
    """A trained checkpoint at ``bits``: a QAT run's final checkpoint (run once, then reused)."""
    if args.source == "init":
        from winq import distributed
        from winq.train import ensure_fp_checkpoint

        return Path(ensure_fp_checkpoint(args.preset, distributed.Dist(), progress=True))
    run = args.runs / f"{args.preset}-w{bits}"
    final = run / "checkpoints" / "final"
    if not final.is_file():
        from winq.train.cli import main as train

        flags = ["--preset", args.preset, "--bits", bits, "--out", str(run), "--overwrite"]
        if args.qat_steps is not None:
            flags += ["--steps", str(args.qat_steps),
                      "--warmup", str(max(1, args.qat_steps // 20))]  # fmt: skip
        flags += shlex.split(args.train_flags)
        print(f"QAT at {bits} bits: winq-train {shlex.join(flags)}", flush=True)
        if train(flags) != 0:
            raise SystemExit(f"winq-train failed for {bits} bits")
    return run / "checkpoints" / final.read_text().strip()


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def mean_stderr(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, stderr


def compare(llama_cpp, gguf_path: Path, model, blocks, args) -> dict:
    """llama.cpp vs winq on held-out blocks: agreement, KL, losses, tokens/s."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from winq.checkpoint import quiet_transformers

    # Control: the same file decoded by transformers' GGUF reader and run in PyTorch, so only
    # the export (float16 block scales) differs from winq, not llama.cpp's arithmetic.
    with quiet_transformers():
        decoded = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=args.seq_len, n_batch=args.seq_len,
                          n_ubatch=args.seq_len, n_threads=args.threads,
                          n_threads_batch=args.threads, logits_all=True, verbose=False)  # fmt: skip
    agreement, kl, loss_winq, loss_llama, agreement_file, kl_file = [], [], [], [], [], []
    llama_seconds = winq_seconds = decode_seconds = 0.0
    for block in blocks:
        tokens = block.tolist()
        start = time.perf_counter()
        with torch.no_grad():
            logits_winq = model(block[None]).logits[0].double()
        winq_seconds += time.perf_counter() - start
        with torch.no_grad():
            logits_file = decoded(block[None]).logits[0].double()
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        llama_seconds += time.perf_counter() - start
        logits_llama = torch.from_numpy(np.array(llm.scores[: len(tokens)])).double()
        logp_winq = torch.log_softmax(logits_winq, -1)
        logp_llama = torch.log_softmax(logits_llama, -1)
        agreement.append(float((logits_winq.argmax(-1) == logits_llama.argmax(-1)).double().mean()))
        kl.append(float((logp_winq.exp() * (logp_winq - logp_llama)).sum(-1).mean()))
        logp_file = torch.log_softmax(logits_file, -1)
        agreement_file.append(
            float((logits_winq.argmax(-1) == logits_file.argmax(-1)).double().mean())
        )
        kl_file.append(float((logp_winq.exp() * (logp_winq - logp_file)).sum(-1).mean()))
        targets = block[1:]
        loss_winq.append(float(-logp_winq[:-1].gather(1, targets[:, None]).mean()))
        loss_llama.append(float(-logp_llama[:-1].gather(1, targets[:, None]).mean()))
        llm.reset()
        start = time.perf_counter()
        for token in tokens[: args.decode_tokens]:
            llm.eval([token])
        decode_seconds += time.perf_counter() - start
    llm.close()
    tokens_total = blocks.numel()
    return {
        "top1_agreement": mean_stderr(agreement),
        "kl_nats": mean_stderr(kl),
        "file_only_top1_agreement": mean_stderr(agreement_file),
        "file_only_kl_nats": mean_stderr(kl_file),
        "loss_winq": mean_stderr(loss_winq),
        "loss_llama_cpp": mean_stderr(loss_llama),
        "llama_cpp_prompt_tokens_per_s": tokens_total / llama_seconds,
        "llama_cpp_decode_tokens_per_s": len(blocks)
        * min(args.decode_tokens, args.seq_len)
        / decode_seconds,
        "winq_tokens_per_s": tokens_total / winq_seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    llama_cpp = import_llama_cpp(args.install_dir)
    import torch

    import winq
    from winq.data import lm_blocks
    from winq.export import export
    from winq.nn import quant_layers

    torch.set_num_threads(args.threads)
    args.runs.mkdir(parents=True, exist_ok=True)
    results = []
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} thread(s); "
          f"llama-cpp-python {llama_cpp.__version__}; {args.blocks} held-out blocks of "
          f"{args.seq_len} tokens; mean ± standard error over blocks", flush=True)  # fmt: skip
    for bits in args.bits:
        checkpoint = checkpoint_for(bits, args)
        model, tokenizer = winq.load(checkpoint, bits=bits if args.source == "init" else None)
        blocks = lm_blocks(None, tokenizer, args.seq_len, "heldout")[: args.blocks]
        exports = args.runs / f"exports-{args.source}-w{bits}"
        sizes = {"winq_checkpoint": weights_bytes(checkpoint)}
        packed = export(model, "packed", exports / "packed", overwrite=True, progress=False)
        sizes["packed"] = packed.files["model.safetensors"]
        hf = export(model, "hf", exports / "hf-bf16", overwrite=True, progress=False)
        sizes["hf_bfloat16"] = hf.files["model.safetensors"]
        # The quantized linear layers alone (the tiny models' files are mostly embeddings).
        layers = dict(quant_layers(model))
        latent = sum(4 * (m.weight.numel() + m.scale.numel()) for m in layers.values())
        codes = [r for r in packed.tensors if r.name.rpartition(".")[0] in layers]
        linear = {
            "winq_checkpoint": latent,
            "packed": sum(r.nbytes for r in codes),
            "hf_bfloat16": sum(r.nbytes for r in hf.tensors if r.max_rel_error is not None),
        }
        weights = sum(m.weight.numel() for m in layers.values())
        auto_types = None
        for gguf_type in ("auto", "Q4_0"):
            path = exports / f"model-{gguf_type}.gguf"
            try:
                report = export(model, "gguf", path, tokenizer=tokenizer, gguf_type=gguf_type,
                                overwrite=True, progress=False)  # fmt: skip
            except ValueError as e:  # e.g. Q4_0 for SEQ 4-bit
                print(f"{bits:>4} bits  {gguf_type:5}  not exported: {e}")
                continue
            chosen = sorted({r.type for r in report.tensors if r.max_rel_error is not None})
            if gguf_type == "Q4_0" and chosen == auto_types:
                continue  # auto already chose Q4_0
            auto_types = chosen
            metrics = compare(llama_cpp, path, model, blocks, args)
            linear["gguf"] = sum(r.nbytes for r in report.tensors if r.max_rel_error is not None)
            row = {"bits": bits, "source": args.source, "gguf_request": gguf_type,
                   "gguf_types": chosen, "gguf_bytes": report.total_bytes, **sizes,
                   "linear_bytes": dict(linear), "linear_weights": weights, **metrics}  # fmt: skip
            results.append(row)
            agree, kl = metrics["top1_agreement"], metrics["kl_nats"]
            lw, ll = metrics["loss_winq"], metrics["loss_llama_cpp"]
            fa, fk = metrics["file_only_top1_agreement"], metrics["file_only_kl_nats"]
            print(f"{bits:>4} bits  {'+'.join(chosen):6} top-1 agreement {agree[0]:.4f} ± "
                  f"{agree[1]:.4f}  KL {kl[0]:.2e} ± {kl[1]:.1e} nats  (file alone, in PyTorch: "
                  f"{fa[0]:.4f} ± {fa[1]:.4f}, KL {fk[0]:.1e} ± {fk[1]:.1e})  loss winq {lw[0]:.4f} "
                  f"± {lw[1]:.4f} / llama.cpp {ll[0]:.4f} ± {ll[1]:.4f}  sizes: GGUF "
                  f"{report.total_bytes / 1e6:.3f} MB, packed {sizes['packed'] / 1e6:.3f} MB, "
                  f"checkpoint {sizes['winq_checkpoint'] / 1e6:.3f} MB, hf bf16 "
                  f"{sizes['hf_bfloat16'] / 1e6:.3f} MB  linear layers, bits/weight: "
                  + ", ".join(f"{k} {8 * v / weights:.2f}" for k, v in linear.items())
                  + "  tokens/s: llama.cpp prompt "
                  f"{metrics['llama_cpp_prompt_tokens_per_s']:.0f}, decode "
                  f"{metrics['llama_cpp_decode_tokens_per_s']:.0f}, winq (PyTorch) "
                  f"{metrics['winq_tokens_per_s']:.0f}", flush=True)  # fmt: skip
    if args.json is not None:
        from winq.io import atomic_write_json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, {
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "machine": platform.platform(), "processor": platform.processor(),
            "threads": args.threads, "torch": torch.__version__,
            "llama_cpp_python": llama_cpp.__version__, "seq_len": args.seq_len,
            "blocks": args.blocks, "results": results,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

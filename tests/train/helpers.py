"""Shared helpers of the trainer tests: miniature run configs and metrics comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# a miniature run: a few updates of 4 sequences of 16 tokens
MINI = {
    "steps": 12,
    "batch_size": 4,
    "seq_len": 16,
    "lr": 3e-3,
    "warmup": 2,
    "eval_batches": 2,
    "progress": False,
}
MINI_FLAGS = [
    "--steps", "12", "--batch-size", "4", "--seq-len", "16", "--lr", "3e-3", "--warmup", "2",
    "--eval-batches", "2", "--no-progress",
]  # fmt: skip

WALL_CLOCK = {"seconds", "tokens_per_second", "summary"}


def comparable(records: list[dict]) -> list[dict]:
    """Records without wall-clock fields (and controller timings)."""
    out = []
    for record in records:
        record = {k: v for k, v in record.items() if k not in WALL_CLOCK}
        if isinstance(record.get("diagnostics"), dict):
            record["diagnostics"] = {
                k: v for k, v in record["diagnostics"].items() if k != "seconds"
            }
        if len(record) > 1:
            out.append(record)
    return out


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def env(**extra: str) -> dict[str, str]:
    """The environment of a trainer subprocess: one thread (2 shared cores), test cache."""
    environ = dict(os.environ)
    environ.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests"), str(HERE), environ.get("PYTHONPATH", "")]
    )
    environ.update(extra)
    return environ


def run_cli(args: list[str], cwd: Path, timeout: float = 300, faults: str | None = None,
            **extra_env: str):  # fmt: skip
    """``winq-train ARGS`` in a subprocess (``python -m winq.train.cli``); with ``faults``, the
    fault hook of that spec installed (:mod:`faulty_train`)."""
    module = ["winq.train.cli"] if faults is None else ["faulty_train", faults]
    return subprocess.run(
        [sys.executable, "-m", *module, *args],
        cwd=cwd,
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )

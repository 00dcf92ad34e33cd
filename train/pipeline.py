"""What one ``winq-train`` invocation does after its flags are checked.

1. Resolve the config: the preset's defaults for whatever was not given (:mod:`winq.embedded`).
2. QAT without ``--init`` starts from the preset's cached FP checkpoint; if it is missing it is
   pre-trained first (:func:`ensure_fp_checkpoint`), under the cache's lock so two processes
   never build it twice or see half of it.
3. ``--bits 16`` without ``--out`` *is* that pre-training: its run folder lives in the cache
   (``$WINQ_CACHE/runs/pretrain-<preset>``, resumable if interrupted) and its final checkpoint is
   published atomically at ``embedded.default_checkpoint_path(preset)``.
4. Join the ``torchrun`` process group if there is one, and :func:`winq.train.loop.train`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from winq import distributed
from winq.cli import UsageError
from winq.train.config import TrainConfig

__all__ = ["ensure_fp_checkpoint", "main_run", "pretrain_run_dir", "usage_error_types"]


def usage_error_types() -> tuple[type[BaseException], ...]:
    """Library exceptions that mean "bad input" (exit code 2) at the command line."""
    from winq.checkpoint import CheckpointError
    from winq.data import DataError
    from winq.train.state import StateError

    return (CheckpointError, DataError, StateError)


def pretrain_run_dir(preset: str) -> Path:
    from winq import embedded

    return Path(embedded.cache_dir()) / "runs" / f"pretrain-{preset}"


def _say(dist: distributed.Dist, message: str) -> None:
    if dist.is_main:
        print(message, file=sys.stderr, flush=True)


def ensure_fp_checkpoint(
    preset: str, dist: distributed.Dist, progress: bool = True, overwrite: bool = False
) -> Path:
    """The preset's cached FP checkpoint, pre-training it first if it is missing.

    Rank 0 holds the cache's build lock (other processes building the same preset wait); in a
    ``torchrun`` job every rank joins the pre-training, which is data-parallel like any run.
    """
    from winq import embedded
    from winq.train.loop import train
    from winq.train.state import last_checkpoint

    target = Path(embedded.default_checkpoint_path(preset))
    need = distributed.broadcast_object(overwrite or not (target / "config.json").is_file())
    if not need:
        return target
    lock = embedded.build_lock(preset) if dist.is_main else None
    if lock is not None:
        lock.__enter__()
    try:
        if distributed.broadcast_object(overwrite or not (target / "config.json").is_file()):
            run_dir = pretrain_run_dir(preset)
            if overwrite and dist.is_main and run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            distributed.barrier()
            resume = run_dir if (run_dir / "config.json").is_file() else None
            if resume is not None and last_checkpoint(run_dir) is None:
                resume = None  # nothing to continue: start again
            config = TrainConfig(preset=preset, bits=16, out=str(run_dir), overwrite=True,
                                 progress=progress)  # fmt: skip
            if resume is not None:
                config = TrainConfig.from_json(_read_json(run_dir / "config.json"))
                config.progress = progress
            else:
                config.resolve()
            _say(dist, f"winq-train: pre-training the {preset} FP model -> {target}")
            train(config, resume=resume, dist=dist, cache_target=target)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    distributed.barrier()
    return target


def _read_json(path: Path):
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def evaluate_final(config: TrainConfig, result: Any, dist: distributed.Dist) -> None:
    """``--eval-tasks``: :func:`winq.eval.evaluate_checkpoint` on the final checkpoint, on the
    main process (the others wait), results in ``RUN/eval`` (replaced on a rerun)."""
    if dist.is_main:
        from winq.eval import evaluate_checkpoint, split_tasks

        if result.final_checkpoint is None:
            raise RuntimeError("--eval-tasks: the run saved no checkpoint to evaluate")
        limit = config.eval_limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        evaluated = evaluate_checkpoint(
            result.final_checkpoint,
            split_tasks(config.eval_tasks),
            out=Path(result.out) / "eval",
            overwrite=True,
            limit=limit,
            device=config.device or "auto",
            seed=config.seed or 0,
        )
        _say(dist, f"winq-train: evaluated {result.final_checkpoint}\n{evaluated.table()}")
    distributed.barrier()


def main_run(config: TrainConfig, resume: str | None) -> int:
    """Resolve, pre-train the default FP model if needed, and train (see module docstring)."""
    from winq.train.loop import train

    dist = distributed.setup(config.device)
    try:
        if resume is None:
            try:
                config.resolve()
            except ValueError as e:
                raise UsageError(str(e)) from None
            try:
                config.grad_accum(dist.world_size)
            except ValueError as e:
                raise UsageError(str(e)) from None
            if config.pretrain and config.out is None:
                target = ensure_fp_checkpoint(
                    config.preset, dist, config.progress, overwrite=config.overwrite
                )
                _say(dist, f"winq-train: FP checkpoint of preset {config.preset}: {target}")
                return 0
            if not config.pretrain and config.init is None:
                config.init = str(ensure_fp_checkpoint(config.preset, dist, config.progress))
        result = train(config, resume=resume, dist=dist)
        summary = result.summary
        loss = f"{result.eval_loss:.4f}" if result.eval_loss is not None else "n/a"
        overhead = summary.get("controller_overhead")
        extra = f", controller overhead {overhead:.1%}" if overhead else ""
        _say(
            dist,
            f"winq-train: {result.out}: step {result.step}, held-out loss {loss}, "
            f"{summary.get('resets', 0)} resets{extra}; last checkpoint {result.final_checkpoint}",
        )
        if config.eval_tasks is not None:
            evaluate_final(config, result, dist)
        return 0
    finally:
        distributed.cleanup()

"""A run's state on disk: claiming its folder, saving checkpoints, and resuming from them.

Layout and ``metrics.jsonl`` are those of :mod:`winq.runfiles`; this module adds what needs
torch. A checkpoint at step N is ``RUN/checkpoints/step_NNNNNN/``: a :func:`winq.save` folder
(model, scales, tokenizer, ``winq_quant.json``) with ``trainer_state.pt`` added inside before
the folder is renamed into place, so the model and the state it belongs with appear together
or not at all. ``trainer_state.pt`` holds plain tensors, numbers, strings, lists and dicts only —
the optimizer's ``state_dict`` (an ``--fsdp`` run: the whole optimizer state gathered to rank 0,
keyed by parameter name; its latent level codes, which each rank holds for its own rows, as a
list by rank), the schedule's parameters, every rank's RNG states, the data
position, the controller's state, cumulative counters — and is read with
``torch.load(weights_only=True)``, which executes no code. After a checkpoint is complete
``checkpoints/final`` is pointed at it, and ``--keep-last K`` prunes older ones.

A run folder is written by one process at a time: :class:`RunFolder` takes an advisory lock
on ``RUN/.lock`` (released when the process dies), writes ``config.json`` for a new run or,
on resume, cuts ``metrics.jsonl`` back to the checkpoint's step and removes the temporaries
of writes a kill interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from winq import distributed
from winq.cli import RuntimeFailure, UsageError
from winq.io import FileLock, LockedError, atomic_dir, atomic_write_json
from winq.runfiles import (
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    STATE_FILE,
    MetricsLog,
    checkpoint_dir,
    last_checkpoint,
    prune_checkpoints,
    remove_leftovers,
    set_final,
    truncate_after,
)

__all__ = [
    "STATE_FILE",
    "STATE_VERSION",
    "RunFolder",
    "StateError",
    "get_rng_state",
    "last_checkpoint",
    "load_trainer_state",
    "publish_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

STATE_VERSION = 1


class StateError(ValueError):
    """A run folder without a usable checkpoint, or a corrupt ``trainer_state.pt``."""


# -- RNG state ----------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain Python values (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- checkpoints --------------------------------------------------------------------------------


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` safely (``weights_only=True``).

    Raises:
        StateError: missing, unreadable, or not a winq trainer state.
    """
    file = Path(folder) / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StateError(f"{file} does not exist") from None
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateError(f"cannot read {file}: {first}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise StateError(f"{file} is not a winq trainer state (version {STATE_VERSION})")
    return state


def _nonfinite_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The name of the first non-finite parameter or AdamW moment, or None if all are finite."""
    from winq.checkpoint import first_nonfinite

    bad = first_nonfinite(model)
    if bad is not None:
        return bad
    names = {id(p): n for n, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and not bool(torch.isfinite(value).all()):
                return f"AdamW {key} of {names.get(id(param), 'a parameter')}"
    return None


def _nonfinite_gathered(model_state: dict, optimizer_state: dict) -> str | None:
    """:func:`_nonfinite_state` for gathered state dicts (an FSDP run, on rank 0)."""
    for name, tensor in model_state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"weight {name}"
    for name, moments in optimizer_state.get("state", {}).items():
        for key, value in moments.items():
            if torch.is_tensor(value) and not bool(torch.isfinite(value).all()):
                return f"AdamW {key} of {name}"
    return None


def save_checkpoint(
    out: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    dist: distributed.Dist,
    keep_last: int | None = None,
) -> Path:
    """Write ``checkpoints/step_NNNNNN`` (model + trainer state) atomically, on rank 0.

    ``trainer_state`` is completed here with the version, the step, the optimizer's state and
    every rank's RNG state (gathered, so all ranks must call this together).

    Raises:
        RuntimeFailure: a non-finite weight or AdamW moment (nothing is written; every rank
            holds the same weights, so every rank refuses alike and none is left waiting).
    """
    import winq
    from winq.sharding import (
        full_optimizer_state_dict,
        full_state_dict,
        is_sharded,
        unsharded_parameters,
    )

    sharded = is_sharded(model)
    if sharded:  # gathered to rank 0 (collectives: every rank takes part), checked there
        whole = full_state_dict(model)
        optimizer_state = full_optimizer_state_dict(model, optimizer)
        bad = _nonfinite_gathered(whole, optimizer_state) if dist.is_main else None
        bad = distributed.broadcast_object(bad)
    else:
        whole, optimizer_state = None, None
        bad = _nonfinite_state(model, optimizer)
    if bad is not None:
        good = last_checkpoint(out)
        where = f"; the last good checkpoint is {good[1]}" if good else ""
        raise RuntimeFailure(f"non-finite {bad} at step {step}; checkpoint not written{where}")
    rng = distributed.all_gather_object(get_rng_state())  # every rank's, in rank order
    folder = checkpoint_dir(out, step)
    if dist.is_main:
        state = {
            "version": STATE_VERSION,
            "step": step,
            # FSDP: the whole optimizer state keyed by parameter name (see winq.sharding)
            "optimizer": optimizer_state if sharded else optimizer.state_dict(),
            "rng": rng,
            "world_size": dist.world_size,
            **trainer_state,
        }
        whole_model = unsharded_parameters(model, whole) if sharded else contextlib.nullcontext()
        with whole_model:
            winq.save(
                model, folder, tokenizer, extra=lambda tmp: torch.save(state, tmp / STATE_FILE)
            )
        set_final(out, step)
        prune_checkpoints(out, keep_last)
    distributed.barrier()
    return folder


def publish_checkpoint(source: Path, target: Path) -> Path:
    """Copy a checkpoint folder (without its trainer state) to ``target``, atomically."""
    with atomic_dir(target) as tmp:
        for item in source.iterdir():
            if item.name == STATE_FILE:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    return target


# -- the run folder -----------------------------------------------------------------------------


def _is_empty(out: Path) -> bool:
    return not out.exists() or all(p.name == LOCK_FILE for p in out.iterdir())


def _clear(out: Path) -> None:
    for child in out.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def default_out(preset: str, bits: float | int, mode: str) -> Path:
    """``runs/<preset>-<fp|wB>-<mode>-<time>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = "fp" if bits == 16 else f"w{bits:g}"
    return Path("runs") / f"{preset}-{name}-{mode}-{stamp}"


@dataclasses.dataclass
class RunFolder:
    """The folder one run writes: where it is and which checkpoint it resumes from.

    Attributes:
        out: the run folder.
        resume: whether this process continues an existing run.
        checkpoint: ``(step, folder)`` of the checkpoint to resume from, or None (a fresh
            start, also for a resumed run that never saved one).
    """

    out: Path
    resume: bool
    checkpoint: tuple[int, Path] | None

    @classmethod
    def choose(
        cls, out: str | None, resume: str | None, overwrite: bool, default: Path
    ) -> RunFolder:
        """Decide and check the folder before anything is built.

        Raises:
            UsageError: ``out`` is a file, or is not empty without ``overwrite``.
        """
        if resume is not None:
            return cls(Path(resume), True, last_checkpoint(resume))
        path = Path(out or distributed.broadcast_object(str(default)))
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file, expected a folder")
        if not overwrite and not _is_empty(path):
            raise UsageError(f"--out {path} is not empty; pass --resume {path} or --overwrite")
        return cls(path, False, None)

    @property
    def start_step(self) -> int:
        return self.checkpoint[0] if self.checkpoint is not None else 0

    def claim(self, dist: distributed.Dist, overwrite: bool, config: dict[str, Any]) -> RunClaim:
        """Lock the folder (rank 0) and prepare it: write ``config`` as ``config.json`` for a
        new run (clearing an old one with ``overwrite``), or cut ``metrics.jsonl`` back to the
        checkpoint and remove interrupted writes when resuming. All ranks call this together.

        Raises:
            RuntimeFailure: another live process holds the folder's lock.
            UsageError: the folder filled up since :meth:`choose` and ``overwrite`` is off.
        """
        lock, claimed = None, True
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.out / LOCK_FILE, blocking=False)
            try:
                lock.acquire()
            except LockedError:
                lock, claimed = None, False
        if not distributed.broadcast_object(claimed):
            raise RuntimeFailure(
                f"{self.out} is in use by another winq-train run (lock {self.out / LOCK_FILE})"
            )
        try:
            if dist.is_main:
                if not self.resume:
                    if not _is_empty(self.out):
                        if not overwrite:  # someone wrote here since the check in choose()
                            raise UsageError(
                                f"--out {self.out} is not empty; pass --resume or --overwrite"
                            )
                        _clear(self.out)
                    atomic_write_json(self.out / CONFIG_FILE, config)
                else:  # drop what a killed run logged or half-wrote after its last checkpoint
                    # (skips logged at the checkpoint's own step came after it was written)
                    step = self.start_step if self.checkpoint else -1
                    truncate_after(self.out / METRICS_FILE, step, drop_at_step=("skipped",))
                    remove_leftovers(self.out)
            distributed.barrier()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return RunClaim(MetricsLog(self.out / METRICS_FILE, enabled=dist.is_main), lock)


@dataclasses.dataclass
class RunClaim:
    """A claimed run folder: its metrics log, and the lock to release when the run ends."""

    metrics: MetricsLog
    lock: FileLock | None

    def __enter__(self) -> MetricsLog:
        return self.metrics

    def __exit__(self, *exc: object) -> None:
        self.metrics.close()
        if self.lock is not None:
            self.lock.release()

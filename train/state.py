"""Training checkpoints: the model folder plus ``trainer_state.pt``, and how to find the last.

A checkpoint at step N is ``RUN/checkpoints/step_NNNNNN/``: a :func:`winq.save` folder (model,
scales, tokenizer, ``winq_quant.json``) with ``trainer_state.pt`` added inside before the folder
is renamed into place, so the model and the state it belongs with appear together or not at
all. ``trainer_state.pt`` holds plain tensors, numbers, strings, lists and dicts only — the
optimizer's ``state_dict``, the schedule's parameters, every rank's RNG states, the data
position, the controller's state, cumulative tokens and seconds — and is read with
``torch.load(weights_only=True)``, which executes no code.

After a checkpoint is complete, ``RUN/checkpoints/final`` (a text file, written atomically)
is set to its folder name: it always names the last complete checkpoint. ``--keep-last K``
then deletes older ``step_*`` folders beyond the K newest (never the one ``final`` names).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from winq.io import atomic_write_text

__all__ = [
    "FINAL_POINTER",
    "STATE_FILE",
    "StateError",
    "checkpoint_dir",
    "get_rng_state",
    "last_checkpoint",
    "load_trainer_state",
    "prune_checkpoints",
    "set_final",
    "set_rng_state",
]

STATE_FILE = "trainer_state.pt"
FINAL_POINTER = "final"
STATE_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class StateError(ValueError):
    """A run folder without a usable checkpoint, or a corrupt ``trainer_state.pt``."""


def checkpoint_dir(run: str | Path, step: int) -> Path:
    """``RUN/checkpoints/step_NNNNNN`` (six digits, more if needed)."""
    return Path(run) / "checkpoints" / f"step_{step:06d}"


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


def set_final(run: str | Path, step: int) -> None:
    """Point ``RUN/checkpoints/final`` at the checkpoint of ``step`` (atomic)."""
    folder = checkpoint_dir(run, step)
    atomic_write_text(folder.parent / FINAL_POINTER, folder.name + "\n")


def _complete(folder: Path) -> bool:
    return (
        folder.is_dir()
        and (folder / STATE_FILE).is_file()
        and (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def _step_of(folder: Path) -> int | None:
    match = _STEP_DIR.match(folder.name)
    return int(match.group(1)) if match else None


def last_checkpoint(run: str | Path) -> tuple[int, Path] | None:
    """``(step, folder)`` of the last complete checkpoint of a run, or None.

    ``checkpoints/final`` is trusted when it names a complete folder; otherwise (a kill
    between the folder's rename and the pointer's update, a pointer edited by hand) the
    complete ``step_*`` folder with the highest step is used.
    """
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return None
    pointer = root / FINAL_POINTER
    candidates: list[tuple[int, Path]] = []
    for folder in root.iterdir():
        step = _step_of(folder)
        if step is not None and _complete(folder):
            candidates.append((step, folder))
    if not candidates:
        return None
    best = max(candidates)
    if pointer.is_file():
        try:
            named = root / pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named is not None and _step_of(named) is not None and _complete(named):
            step = _step_of(named)
            if step is not None and step >= best[0]:
                return step, named
    return best


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


def prune_checkpoints(run: str | Path, keep_last: int | None) -> list[Path]:
    """Delete ``step_*`` folders beyond the ``keep_last`` newest; never the one ``final`` names.

    Returns:
        The folders deleted.
    """
    if keep_last is None or keep_last <= 0:
        return []
    root = Path(run) / "checkpoints"
    found = last_checkpoint(run)
    protected = found[1] if found is not None else None
    folders = sorted(
        (step, folder) for folder in root.iterdir() if (step := _step_of(folder)) is not None
    )
    removed = []
    for _, folder in folders[:-keep_last]:
        if protected is not None and folder.resolve() == protected.resolve():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed

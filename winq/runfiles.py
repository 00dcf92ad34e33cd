"""The run folder on disk: its layout, step naming and ``metrics.jsonl`` (standard library only).

A run folder (``winq-train --out RUN``, docs/formats.md) is laid out as::

    RUN/config.json                      the resolved configuration (kind "winq-train")
    RUN/metrics.jsonl                    one JSON record per line, each with an integer "step"
    RUN/checkpoints/step_NNNNNN/         a checkpoint (model folder + trainer_state.pt)
    RUN/checkpoints/final                text: the name of the last complete checkpoint
    RUN/spectra/step_NNNNNN/             spectrum folders measured during or after training
    RUN/.lock                            held by the process writing the run

Steps are optimizer updates done, written with at least six digits (``step_000240``).

``metrics.jsonl`` is appended one line per record, each line written with a single ``write``,
flushed and ``fsync``-ed (:class:`MetricsLog`), so a kill leaves at most one truncated last
line, which every reader here ignores. Non-finite numbers are written as ``null``. Several
records may share a step; :func:`merge_by_step` merges them (later keys win). On ``--resume``
the file is cut back to the checkpoint's step (:func:`truncate_after`) so the finished file
equals an uninterrupted run's, wall-clock fields aside.

The trainer, the reproduction study and the figures all read and write run folders through
this module; nothing else parses these files.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from winq.io import atomic_write_text

__all__ = [
    "CHECKPOINTS",
    "CONFIG_FILE",
    "FINAL_POINTER",
    "LOCK_FILE",
    "METRICS_FILE",
    "SPECTRA",
    "STATE_FILE",
    "WALL_CLOCK_KEYS",
    "MetricsError",
    "MetricsLog",
    "checkpoint_dir",
    "checkpoints",
    "finished",
    "finite_or_none",
    "is_complete_checkpoint",
    "is_run_folder",
    "last_checkpoint",
    "merge_by_step",
    "parse_step",
    "prune_checkpoints",
    "read_records",
    "remove_leftovers",
    "set_final",
    "spectrum_dir",
    "step_name",
    "truncate_after",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SPECTRA = "spectra"
FINAL_POINTER = "final"
STATE_FILE = "trainer_state.pt"
LOCK_FILE = ".lock"

# keys whose values depend on the machine's speed, not on the computation
WALL_CLOCK_KEYS = frozenset({"seconds", "tokens_per_second", "summary"})

_STEP_NAME = re.compile(r"^step_(\d{6,})$")


# -- layout -------------------------------------------------------------------------------------


def step_name(step: int) -> str:
    """``step_NNNNNN`` (six digits, more if needed)."""
    return f"step_{int(step):06d}"


def parse_step(name: str) -> int | None:
    """The step of a ``step_NNNNNN`` name, or None for any other name."""
    match = _STEP_NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoint_dir(run: str | os.PathLike, step: int) -> Path:
    return Path(run) / CHECKPOINTS / step_name(step)


def spectrum_dir(run: str | os.PathLike, step: int) -> Path:
    return Path(run) / SPECTRA / step_name(step)


def is_run_folder(path: str | os.PathLike) -> bool:
    """A folder with ``metrics.jsonl``, or with ``config.json`` beside ``checkpoints/``."""
    path = Path(path)
    return (path / METRICS_FILE).is_file() or (
        (path / CONFIG_FILE).is_file() and (path / CHECKPOINTS).is_dir()
    )


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """A checkpoint folder with its trainer state, config and weights all present."""
    folder = Path(folder)
    return (
        folder.is_dir()
        and (folder / STATE_FILE).is_file()
        and (folder / CONFIG_FILE).is_file()
        and any(folder.glob("*.safetensors"))
    )


def checkpoints(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint of a run, by step."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        step = parse_step(folder.name)
        if step is not None and is_complete_checkpoint(folder):
            found.append((step, folder))
    return sorted(found)


def last_checkpoint(run: str | os.PathLike) -> tuple[int, Path] | None:
    """``(step, folder)`` of the last complete checkpoint of a run, or None.

    ``checkpoints/final`` is trusted when it names a complete folder at least as late as any
    other; otherwise (a kill between a folder's rename and the pointer's update, a pointer
    edited by hand) the complete ``step_*`` folder with the highest step is used.
    """
    found = checkpoints(run)
    if not found:
        return None
    best = found[-1]
    pointer = Path(run) / CHECKPOINTS / FINAL_POINTER
    if pointer.is_file():
        try:
            named = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return best
        step = parse_step(named)
        folder = Path(run) / CHECKPOINTS / named
        if step is not None and step >= best[0] and is_complete_checkpoint(folder):
            return step, folder
    return best


def set_final(run: str | os.PathLike, step: int) -> None:
    """Point ``RUN/checkpoints/final`` at the checkpoint of ``step`` (atomic)."""
    atomic_write_text(Path(run) / CHECKPOINTS / FINAL_POINTER, step_name(step) + "\n")


def prune_checkpoints(run: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete ``step_*`` folders beyond the ``keep_last`` newest; never the last complete one.

    Returns:
        The folders deleted.
    """
    if keep_last is None or keep_last <= 0:
        return []
    root = Path(run) / CHECKPOINTS
    found = last_checkpoint(run)
    protected = found[1].resolve() if found is not None else None
    folders = sorted(
        (step, folder) for folder in root.iterdir() if (step := parse_step(folder.name)) is not None
    )
    removed = []
    for _, folder in folders[:-keep_last]:
        if folder.resolve() == protected:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def remove_leftovers(run: str | os.PathLike) -> None:
    """Delete the temporaries of writes a kill interrupted: ``.NAME.XXXX.tmp`` files and
    folders, and ``.NAME.old.*`` folders of a replaced folder (see :func:`winq.io.atomic_dir`)."""
    for folder in (Path(run), Path(run) / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for leftover in [*folder.glob(".*.tmp"), *folder.glob(".*.old.*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


# -- metrics.jsonl ------------------------------------------------------------------------------


class MetricsError(ValueError):
    """A ``metrics.jsonl`` line (not the last) that is not a record; one-line message."""


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (recursively) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (a no-op when ``enabled`` is False: other ranks).

    Args:
        path: the file; created on the first record.
        enabled: False on ranks other than 0.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file = None

    def write(self, step: int, **fields: Any) -> dict[str, Any]:
        """Append ``{"step": step, **fields}`` (fields that are None are left out)."""
        record = {"step": int(step), **{k: v for k, v in fields.items() if v is not None}}
        if not self.enabled:
            return record
        line = json.dumps(finite_or_none(record), allow_nan=False) + "\n"
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _parse_lines(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` pairs of a metrics text; a truncated last line is dropped."""
    numbered = [(i + 1, line) for i, line in enumerate(text.split("\n")) if line.strip()]
    parsed = []
    for index, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if index == len(numbered) - 1:
                break  # a writer killed mid-line
            raise MetricsError(
                f"{path}: line {lineno} is not valid JSON ({e.msg}, column {e.colno})"
            ) from None
        if not isinstance(record, dict):
            raise MetricsError(f"{path}: line {lineno} is not a JSON object")
        step = record.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int):
            raise MetricsError(f"{path}: line {lineno} has no integer 'step'")
        record["step"] = step
        parsed.append((line, record))
    return parsed


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise MetricsError(f"{path}: cannot read {METRICS_FILE} ({e.strerror or e})") from None


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` in file order (empty if the file does not exist).

    Raises:
        MetricsError: an unreadable file, or a line before the last that is not a JSON object
            with an integer ``step``.
    """
    path = Path(path)
    if not path.exists():
        return []
    return [record for _, record in _parse_lines(path, _read_text(path))]


def merge_by_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, in step order: records sharing a step merged, later keys winning."""
    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        merged.setdefault(record["step"], {}).update(record)
    return [merged[step] for step in sorted(merged)]


def finished(run: str | os.PathLike) -> bool:
    """Whether a run wrote its closing ``summary`` record (it ran to its last step)."""
    try:
        return any("summary" in r for r in read_records(Path(run) / METRICS_FILE))
    except MetricsError:
        return False


def truncate_after(path: str | os.PathLike, step: int, drop_at_step: tuple[str, ...] = ()) -> int:
    """Rewrite ``metrics.jsonl`` (atomically) keeping only the records with ``step <= step``.

    Records are kept byte for byte, in order; a truncated last line is dropped.

    Args:
        path: the file.
        step: the last step kept.
        drop_at_step: also drop records *at* ``step`` that have any of these keys (what a run
            logs at a step after that step's checkpoint, e.g. ``"skipped"``).

    Returns:
        The number of records dropped.

    Raises:
        MetricsError: a corrupt line before the last.
    """
    path = Path(path)
    if not path.exists():
        return 0
    text = _read_text(path)
    parsed = _parse_lines(path, text)
    kept = [
        line
        for line, record in parsed
        if record["step"] < step
        or (record["step"] == step and not any(key in record for key in drop_at_step))
    ]
    total = sum(1 for line in text.split("\n") if line.strip())
    new_text = "".join(line + "\n" for line in kept)
    if new_text != text:
        atomic_write_text(path, new_text)
    return total - len(kept)

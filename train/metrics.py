"""``metrics.jsonl``: one JSON object per line, appended and synced as the run goes.

Each line is written with a single ``write`` and then flushed and ``fsync``-ed, so a kill
leaves at most one truncated last line, which readers ignore (``docs/formats.md``). Non-finite
numbers are written as ``null`` so the file stays standard JSON.

On ``--resume`` the file is cut back to the records of the checkpoint's step and earlier
(:func:`truncate_after`): the records a killed run wrote after its last complete checkpoint are
dropped and written again by the resumed run, so the finished file equals an uninterrupted
run's (apart from wall-clock fields).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from winq.io import atomic_write_text

__all__ = ["WALL_CLOCK_KEYS", "MetricsLog", "finite_or_none", "read_records", "truncate_after"]

# keys whose values depend on the machine's speed, not on the computation
WALL_CLOCK_KEYS = frozenset({"seconds", "tokens_per_second", "summary"})


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
    """Appends records to ``metrics.jsonl`` (a no-op on ranks other than 0).

    Args:
        path: the file; created on the first record.
        enabled: False on non-zero ranks.
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


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The parsed records of a ``metrics.jsonl``, ignoring a truncated last line.

    Raises:
        ValueError: a line before the last that is not a JSON object with an integer step.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    records = []
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {index + 1} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}: line {index + 1} is not a record with an integer step")
        records.append(record)
    return records


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
        ValueError: a corrupt line before the last.
    """
    path = Path(path)
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    kept: list[str] = []
    dropped = 0
    lines = [line for line in text.split("\n") if line.strip()]
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                dropped += 1
                break
            raise ValueError(f"{path}: line {index + 1} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}: line {index + 1} is not a record with an integer step")
        late = record["step"] == step and any(key in record for key in drop_at_step)
        if record["step"] <= step and not late:
            kept.append(line)
        else:
            dropped += 1
    new_text = "".join(line + "\n" for line in kept)
    if new_text != text:
        atomic_write_text(path, new_text)
    return dropped

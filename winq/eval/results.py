"""The result of one ``winq-eval`` run: per task and metric, the score, its 95% interval and n.

An :class:`EvalResult` holds one :class:`TaskScore` per evaluated task (and per lm-eval group
that aggregates its members), each with one :class:`MetricScore` per metric and filter; the
run's settings and software versions (``metadata``); and lm-eval's own bookkeeping (task
configs and versions, n-shot, sample counts, its result table) under ``lm_eval``. It is plain
data: :meth:`EvalResult.to_dict` gives standard JSON (a non-finite number, e.g. the perplexity
of a diverged model, is written as ``null``, as in every winq file), and a results folder
holds::

    results.json    EvalResult.to_dict()   (kind "winq-eval", format_version 1)
    samples.jsonl   one line per item, task and filter: {task, doc_id, filter, <metric>: value}
                    (the per-item values the intervals were computed from)

How each interval is computed is in :mod:`winq.eval.intervals`; ``MetricScore.method`` names
it. The repository's ``docs/eval.md`` describes the folder for readers outside Python.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from winq.io import atomic_dir, atomic_write_json, atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "RESULTS_FILE",
    "SAMPLES_FILE",
    "EvalResult",
    "MetricScore",
    "ResultsFileError",
    "TaskScore",
    "jsonable",
]

KIND = "winq-eval"
FORMAT_VERSION = 1
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"


class ResultsFileError(ValueError):
    """A results folder that cannot be read, with a one-line reason."""


def jsonable(value: Any) -> Any:
    """``value`` as standard JSON data: tuples to lists, non-finite floats to None, and
    anything else JSON cannot hold (dtypes, functions) to its ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _number(value: Any) -> float | None:
    """A float from JSON; None (no value) stays None."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class MetricScore:
    """One metric of one task.

    Attributes:
        metric: lm-eval's metric name (``acc``, ``acc_norm``, ``word_perplexity``, ...).
        value: lm-eval's aggregate over the items (NaN, written as null, if not finite).
        low, high: the interval's ends (None where none could be computed).
        method: how the interval was computed: ``wilson``, ``bootstrap`` (percentile, over
            items), ``normal`` (value ± z·lm-eval's stderr; groups only), or None.
        n: the items the value aggregates.
        filter: lm-eval's filter (``none`` unless the task filters model outputs).
        lm_eval_stderr: lm-eval's own standard error (a normal approximation for means;
            None where lm-eval reports none).
        higher_is_better: lm-eval's direction of the metric.
    """

    metric: str
    value: float
    low: float | None
    high: float | None
    method: str | None
    n: int
    filter: str = "none"
    lm_eval_stderr: float | None = None
    higher_is_better: bool | None = None

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.low is None or self.high is None else (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricScore:
        return cls(
            metric=str(data["metric"]),
            value=math.nan if data["value"] is None else float(data["value"]),
            low=_number(data.get("low")),
            high=_number(data.get("high")),
            method=data.get("method"),
            n=int(data["n"]),
            filter=str(data.get("filter", "none")),
            lm_eval_stderr=_number(data.get("lm_eval_stderr")),
            higher_is_better=data.get("higher_is_better"),
        )


@dataclass(frozen=True)
class TaskScore:
    """The metrics of one task or group.

    Attributes:
        name: lm-eval's task (or group) name.
        kind: ``task`` or ``group``.
        version: the task's version (its config's ``metadata.version``).
        num_fewshot: examples in each prompt.
        n: items evaluated (after ``limit``); for a group, over its tasks.
        n_total: items the task has.
        output_type: lm-eval's ``output_type`` (``multiple_choice``, ...); None for a group.
        chance: for multiple choice, the expected accuracy of a uniform guess (the mean over
            items of 1/#choices); None otherwise.
        metrics: one per metric and filter.
    """

    name: str
    kind: str
    version: Any
    num_fewshot: int | None
    n: int | None
    n_total: int | None
    output_type: str | None
    chance: float | None
    metrics: tuple[MetricScore, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = {k: jsonable(v) for k, v in asdict(self).items() if k != "metrics"}
        data["metrics"] = [m.to_dict() for m in self.metrics]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskScore:
        return cls(
            name=str(data["name"]),
            kind=str(data.get("kind", "task")),
            version=data.get("version"),
            num_fewshot=data.get("num_fewshot"),
            n=data.get("n"),
            n_total=data.get("n_total"),
            output_type=data.get("output_type"),
            chance=_number(data.get("chance")),
            metrics=tuple(MetricScore.from_dict(m) for m in data.get("metrics", [])),
        )


@dataclass
class EvalResult:
    """Scores of one checkpoint on a list of tasks (see the module docstring).

    Attributes:
        tasks: one :class:`TaskScore` per task, in lm-eval's order, then aggregating groups.
        metadata: the checkpoint and its bits, the run's settings, software versions, wall
            times.
        lm_eval: lm-eval's bookkeeping: ``version``, ``configs``, ``versions``, ``n-shot``,
            ``n-samples``, ``higher_is_better``, ``group_subtasks``, ``results``, ``config``.
    """

    tasks: list[TaskScore]
    metadata: dict[str, Any] = field(default_factory=dict)
    lm_eval: dict[str, Any] = field(default_factory=dict)

    def task(self, name: str) -> TaskScore:
        """The :class:`TaskScore` of ``name``.

        Raises:
            KeyError: no such task in this result (the message lists those there are).
        """
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no task {name!r}; have {', '.join(t.name for t in self.tasks)}")

    def score(self, task: str, metric: str = "acc", filter: str = "none") -> MetricScore:
        """The :class:`MetricScore` of ``metric`` on ``task``.

        Raises:
            KeyError: no such task or metric (the message lists those there are).
        """
        scores = self.task(task).metrics
        for score in scores:
            if score.metric == metric and score.filter == filter:
                return score
        have = ", ".join(f"{s.metric},{s.filter}" for s in scores)
        raise KeyError(f"task {task!r} has no metric {metric!r} (filter {filter!r}); have {have}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "metadata": jsonable(self.metadata),
            "tasks": [task.to_dict() for task in self.tasks],
            "lm_eval": jsonable(self.lm_eval),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Read :meth:`to_dict`'s output.

        Raises:
            ResultsFileError: not a winq-eval result, or another format version.
        """
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ResultsFileError('not a winq-eval result (no "kind": "winq-eval")')
        if data.get("format_version") != FORMAT_VERSION:
            raise ResultsFileError(
                f"winq-eval result format_version {data.get('format_version')!r}; "
                f"this winq reads {FORMAT_VERSION}"
            )
        try:
            tasks = [TaskScore.from_dict(task) for task in data["tasks"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ResultsFileError(f"corrupt winq-eval result: {e!r}") from None
        return cls(tasks, dict(data.get("metadata", {})), dict(data.get("lm_eval", {})))

    def save(
        self,
        folder: str | os.PathLike,
        samples: list[dict[str, Any]] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the results folder atomically (see the module docstring).

        Args:
            folder: destination; an existing one is replaced only once the new one is complete.
            samples: per-item rows for ``samples.jsonl`` (omitted when None).
            overwrite: replace an existing folder (True) or raise ``FileExistsError``.
        """
        folder = Path(folder)
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            atomic_write_json(tmp / RESULTS_FILE, self.to_dict())
            if samples is not None:
                lines = (json.dumps(jsonable(row), allow_nan=False) + "\n" for row in samples)
                atomic_write_text(tmp / SAMPLES_FILE, "".join(lines))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> EvalResult:
        """Read a results folder written by :meth:`save`.

        Raises:
            ResultsFileError: a missing or corrupt ``results.json``.
        """
        path = Path(folder) / RESULTS_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ResultsFileError(f"{str(folder)!r} holds no {RESULTS_FILE}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsFileError(f"cannot read {str(path)!r}: {e}") from None
        return cls.from_dict(data)

    def table(self) -> str:
        """A plain-text table: task, metric, value, 95% interval, n, chance, lm-eval stderr."""
        confidence = self.metadata.get("confidence", 0.95)
        header = [
            "task",
            "metric",
            "value",
            f"{confidence:.0%} interval",
            "n",
            "chance",
            "lm-eval stderr",
        ]
        rows = [header]
        for task in self.tasks:
            for score in task.metrics:
                metric = (
                    score.metric if score.filter == "none" else f"{score.metric},{score.filter}"
                )
                interval = (
                    f"[{_fmt(score.low)}, {_fmt(score.high)}]"
                    if score.interval is not None
                    else "n/a"
                )
                chance = (
                    _fmt(task.chance) if task.chance is not None and "acc" in score.metric else ""
                )
                stderr = _fmt(score.lm_eval_stderr) if score.lm_eval_stderr is not None else "n/a"
                rows.append(
                    [task.name, metric, _fmt(score.value), interval, str(score.n), chance, stderr]
                )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        right = {2, 4, 5, 6}
        lines = []
        for row in rows:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 10:
        return f"{value:.4f}"
    if abs(value) < 1e5:
        return f"{value:.2f}"
    return f"{value:.4g}"

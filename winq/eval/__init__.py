"""Zero-shot accuracy and perplexity of winq models through lm-evaluation-harness.

QAT papers report zero-shot accuracy (ARC-e/c, BoolQ, PIQA, SIQA, HellaSwag, OBQA, WinoGrande)
and WikiText-2 perplexity measured with lm-evaluation-harness; this package measures them on a
winq checkpoint as it runs in winq (fake-quantized, see :mod:`winq.eval.harness`), with a 95%
interval on every score (:mod:`winq.eval.intervals`), and ships an offline benchmark for the
embedded default, cut from the held-out Shakespeare plays (:mod:`winq.eval.tasks`). The
command is ``winq-eval`` (:mod:`winq.eval.cli`); the repository's ``docs/eval.md`` is the guide.

    from winq.eval import evaluate
    result = evaluate("runs/w2/checkpoints/step_000300", ["shakespeare", "arc_easy"])
    result.score("shakespeare_nextline", "acc")    # value, low, high, n, lm_eval_stderr
    print(result.table())
"""

from __future__ import annotations

from winq.eval.harness import (
    DEFAULT_TASKS,
    EvalError,
    OutputExistsError,
    TaskDataError,
    TaskNotFoundError,
    TaskSpecError,
    check_out,
    evaluate,
    evaluate_checkpoint,
    load_tasks,
    split_tasks,
)
from winq.eval.intervals import bootstrap_ratio_interval, wilson_interval
from winq.eval.results import EvalResult, MetricScore, ResultsFileError, TaskScore
from winq.eval.tasks import EMBEDDED_TASKS, ensure_benchmark

__all__ = [
    "DEFAULT_TASKS",
    "EMBEDDED_TASKS",
    "EvalError",
    "EvalResult",
    "MetricScore",
    "OutputExistsError",
    "ResultsFileError",
    "TaskDataError",
    "TaskNotFoundError",
    "TaskScore",
    "TaskSpecError",
    "bootstrap_ratio_interval",
    "check_out",
    "ensure_benchmark",
    "evaluate",
    "evaluate_checkpoint",
    "load_tasks",
    "split_tasks",
    "wilson_interval",
]

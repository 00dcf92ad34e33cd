"""EvalResult: the table a user reads, and the folder written and read back (standard JSON)."""

from __future__ import annotations

import json
import math

import pytest

from winq.eval import EvalResult, MetricScore, ResultsFileError, TaskScore


def _result(perplexity: float = 123.456) -> EvalResult:
    acc = MetricScore("acc", 0.39, 0.3602, 0.4206, "wilson", 1000, "none", 0.0154, True)
    ppl = MetricScore("word_perplexity", perplexity, 110.0, 140.0, "bootstrap", 100, "none")
    return EvalResult(
        tasks=[
            TaskScore("nextline", "task", 1.0, 0, 1000, 1000, "multiple_choice", 0.25, (acc,)),
            TaskScore("ppl", "task", 1.0, 0, 100, 100, "loglikelihood_rolling", None, (ppl,)),
        ],
        metadata={"bits": 2, "confidence": 0.95},
        lm_eval={"version": "0.4.13", "configs": {"nextline": {"dtype": object()}}},
    )


def test_the_table_shows_value_interval_n_chance_and_stderr():
    lines = _result().table().splitlines()
    assert lines[0].split() == ["task", "metric", "value", "95%", "interval", "n", "chance",
                                "lm-eval", "stderr"]  # fmt: skip
    assert lines[1].split() == ["nextline", "acc", "0.3900", "[0.3602,", "0.4206]", "1000",
                                "0.2500", "0.0154"]  # fmt: skip
    assert lines[2].split() == ["ppl", "word_perplexity", "123.46", "[110.00,", "140.00]", "100",
                                "n/a"]  # fmt: skip


def test_the_folder_round_trips(tmp_path):
    result = _result()
    result.save(tmp_path / "scores", samples=[{"task": "ppl", "doc_id": 0, "bpb": (-3.5, 7)}])
    again = EvalResult.load(tmp_path / "scores")
    assert again.tasks == result.tasks
    assert again.score("nextline", "acc").interval == (0.3602, 0.4206)
    row = json.loads((tmp_path / "scores" / "samples.jsonl").read_text())
    assert row == {"task": "ppl", "doc_id": 0, "bpb": [-3.5, 7]}
    with pytest.raises(FileExistsError):
        result.save(tmp_path / "scores")


def test_a_non_finite_score_is_written_as_null(tmp_path):
    _result(perplexity=math.inf).save(tmp_path / "scores")
    text = (tmp_path / "scores" / "results.json").read_text()
    data = json.loads(text)  # standard JSON: no Infinity or NaN tokens
    assert data["tasks"][1]["metrics"][0]["value"] is None
    assert math.isnan(EvalResult.load(tmp_path / "scores").score("ppl", "word_perplexity").value)


def test_reading_something_else_fails_in_one_line(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"kind": "winq-spectrum"}))
    with pytest.raises(ResultsFileError, match="not a winq-eval result"):
        EvalResult.load(tmp_path)
    with pytest.raises(ResultsFileError, match=r"holds no results\.json"):
        EvalResult.load(tmp_path / "missing")
    with pytest.raises(KeyError, match="no task 'piqa'; have nextline, ppl"):
        _result().task("piqa")

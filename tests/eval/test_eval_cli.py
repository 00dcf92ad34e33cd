"""winq-eval end to end on the embedded benchmark: scores with intervals, the results folder,
lm-eval's bookkeeping, and the fake-quantized model being the one lm-eval runs."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

import winq
from winq.eval import EvalResult, evaluate, evaluate_checkpoint, wilson_interval
from winq.eval.cli import main


@pytest.fixture(scope="module")
def cli_run(knowing_checkpoint, known_items, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-cli") / "scores"
    argv = ["--ckpt", str(knowing_checkpoint), "--tasks", "shakespeare", "--limit",
            str(known_items), "--batch-size", "32", "--out", str(out), "--json"]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, out, stdout.getvalue()


def test_the_cli_scores_the_embedded_benchmark(cli_run, known_items):
    code, out, stdout = cli_run
    assert code == 0
    result = EvalResult.load(out)
    printed = json.loads(stdout)  # --json: the results file without lm-eval's bookkeeping
    assert printed["tasks"] == result.to_dict()["tasks"]
    acc = result.score("shakespeare_nextline", "acc")
    assert 0.0 <= acc.low <= acc.value <= acc.high <= 1.0
    assert acc.n == known_items and acc.method == "wilson"
    right = round(acc.value * acc.n)
    assert (acc.low, acc.high) == pytest.approx(wilson_interval(right, acc.n), abs=1e-12)
    task = result.task("shakespeare_nextline")
    assert task.chance == 0.25 and task.n == known_items and task.n_total == 1000
    # The model has memorised these 32 answers (conftest) and seen none of the distractors:
    # it gets 28 of 32 here (Wilson [0.72, 0.95]). Chance is 1/4; the assertion asks only that
    # the whole 95% interval lie above it, which holds from 15 of 32 right (P(>= 15 | p = 1/4)
    # = 0.004), so it does not hang on this particular training run.
    assert acc.low > task.chance, acc
    # It learnt the lines without their contexts (as "eos \n line"), exactly the unconditional
    # request of acc_mutual_info, so for it the context *lowers* the answer's likelihood: the
    # mutual-information score, computed from lm-eval's second set of requests, is 0 of 32.
    assert result.score("shakespeare_nextline", "acc_mutual_info").value < task.chance


def test_the_results_file_records_lm_evals_bookkeeping(cli_run, known_items):
    import lm_eval

    _, out, _ = cli_run
    data = json.loads((out / "results.json").read_text())  # plain JSON, no NaN
    assert data["kind"] == "winq-eval"
    meta = data["metadata"]
    assert meta["bits"] == 16 and meta["limit"] == known_items and meta["num_fewshot"] == 0
    assert meta["versions"]["lm_eval"] == lm_eval.__version__
    assert meta["seconds"]["total"] > 0
    book = data["lm_eval"]
    assert book["version"] == lm_eval.__version__
    for name in ("shakespeare_nextline", "shakespeare_ppl"):
        assert book["versions"][name] == 1.0
        assert book["n-shot"][name] == 0
        assert book["configs"][name]["task"] == name
    for task in data["tasks"]:
        assert task["version"] == 1.0 and task["num_fewshot"] == 0


def test_perplexity_intervals_and_the_samples_file(cli_run, known_items):
    _, out, _ = cli_run
    result = EvalResult.load(out)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    ppl = [row for row in rows if row["task"] == "shakespeare_ppl"]
    assert len(ppl) == known_items
    # lm-eval's bits per byte is -Σ LL / (Σ bytes · ln 2) over the logged per-document pairs
    lls = [row["bits_per_byte"][0] for row in ppl]
    nbytes = [row["bits_per_byte"][1] for row in ppl]
    bpb = result.score("shakespeare_ppl", "bits_per_byte")
    assert bpb.value == pytest.approx(-sum(lls) / sum(nbytes) / math.log(2), rel=1e-12)
    byte_ppl = result.score("shakespeare_ppl", "byte_perplexity")
    assert bpb.value == pytest.approx(math.log2(byte_ppl.value), rel=1e-12)
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        score = result.score("shakespeare_ppl", metric)
        assert score.method == "bootstrap" and score.n == known_items
        assert score.low < score.value < score.high, score
        assert score.lm_eval_stderr is None  # lm-eval gives none for these
    # the same bootstrap resamples map through monotone transforms: the ends correspond
    assert bpb.low == pytest.approx(math.log2(byte_ppl.low), rel=1e-9)
    assert bpb.high == pytest.approx(math.log2(byte_ppl.high), rel=1e-9)


def test_lm_eval_runs_the_fake_quantized_model(knowing_checkpoint, tmp_path):
    model, tokenizer = winq.load(knowing_checkpoint, bits=2)
    layers = list(winq.quant_layers(model))
    assert layers
    calls = []
    layers[0][1].register_forward_hook(lambda *_: calls.append(1))
    in_memory = evaluate(model, ["shakespeare_nextline"], tokenizer=tokenizer, limit=8,
                         out=tmp_path / "memory")  # fmt: skip
    assert calls, "lm-eval never called the QuantLinear forward"
    assert in_memory.metadata["bits"] == 2 and in_memory.metadata["quantizer"] == "seq"
    # the checkpoint path, quantized on the fly, scores each item as the model built above
    from_path = evaluate_checkpoint(
        knowing_checkpoint, ["shakespeare_nextline"], bits=2, limit=8, out=tmp_path / "path"
    )
    assert from_path.metadata["bits"] == 2 and from_path.metadata["checkpoint"]
    assert (tmp_path / "memory" / "samples.jsonl").read_text() == (
        tmp_path / "path" / "samples.jsonl"
    ).read_text()

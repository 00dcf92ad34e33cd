"""A checkpoint that knows the embedded benchmark's first answers, for the winq-eval tests."""

from __future__ import annotations

import json

import pytest
import torch

# The first KNOWN_ITEMS items of shakespeare_nextline; the model below is trained on their answers.
KNOWN_ITEMS = 32
TRAINING_STEPS = 60


@pytest.fixture(scope="session")
def known_items() -> int:
    """How many of the first shakespeare_nextline items ``knowing_checkpoint`` knows."""
    return KNOWN_ITEMS


@pytest.fixture(scope="session")
def knowing_checkpoint(tmp_path_factory):
    """The embedded tiny model after 60 full-batch AdamW steps (lr 1e-2) on the true answers of
    the first 32 ``shakespeare_nextline`` items, each as ``eos + "\\n" + line + eos`` -- the
    continuation lm-eval scores. It has memorised those 32 lines (training loss about 0.5
    nats/token) and seen none of their distractors, so it knows the answers: a model above
    chance by construction, in a few seconds instead of minutes of pre-training."""
    import winq
    from winq import embedded
    from winq.eval import tasks

    folder = tasks.ensure_benchmark()
    lines = (folder / "nextline.jsonl").read_text().splitlines()[:KNOWN_ITEMS]
    items = [json.loads(line) for line in lines]
    tokenizer = embedded.tokenizer()
    eos = tokenizer.eos_token_id
    sequences = [
        [eos, *tokenizer("\n" + item["choices"][item["label"]])["input_ids"], eos] for item in items
    ]
    length = max(map(len, sequences))
    input_ids = torch.full((len(sequences), length), eos)
    labels = torch.full((len(sequences), length), -100)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        labels[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    model = embedded.build_model("tiny", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for _ in range(TRAINING_STEPS):
                out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("eval") / "knowing"
    winq.save(model.eval(), path, tokenizer)
    return path

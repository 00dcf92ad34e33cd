"""The data pipeline: every source type, the held-out split, packing, batches, and errors."""

from __future__ import annotations

import json

import pytest
import torch

from winq import data, embedded
from winq.data import DataError


@pytest.fixture(scope="session")
def tokenizer():
    return embedded.tokenizer()


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=3)
    return path


DOCS = [f"Document {i}: the quick brown fox, number {i}.\nIts second line." for i in range(200)]


# -- sources --------------------------------------------------------------------------------


def test_embedded_source_is_the_corpus():
    assert data.load_texts(None, "heldout") == embedded.corpus_texts("heldout")
    assert data.describe_source(None) == "the embedded corpus"


def test_text_files_one_document_each_with_separator_lines(tmp_path):
    (tmp_path / "a.txt").write_text("First play.\n\nStill first.\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# Second\n<|endoftext|>\nThird\n", encoding="utf-8")
    docs = list(data._local_documents(tmp_path, "text"))
    assert docs == ["First play.\n\nStill first.\n", "# Second\n", "Third\n"]
    # the embedded corpus file reads back as its plays
    train_txt = embedded.corpus_files("heldout")
    assert list(data._local_documents(train_txt, "text")) == embedded.corpus_texts("heldout")


def test_jsonl_json_and_parquet_files(tmp_path):
    records = [{"id": i, "body": text} for i, text in enumerate(DOCS[:7])]
    records.insert(3, {"id": -1, "body": ""})  # empty documents are skipped
    records.insert(4, {"id": -2, "body": None})
    jsonl = _write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "list.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "lines.json").write_text(jsonl.read_text(), encoding="utf-8")
    parquet = _write_parquet(tmp_path / "d.parquet", {"body": [r["body"] for r in records]})
    for path in (jsonl, tmp_path / "list.json", tmp_path / "lines.json", parquet):
        assert list(data._local_documents(path, "body")) == DOCS[:7], path


def test_folder_reads_every_data_file_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two", encoding="utf-8")
    (tmp_path / "1.jsonl").write_text('{"text": "one"}\n', encoding="utf-8")
    _write_parquet(tmp_path / "c.parquet", {"text": ["three", "four"]})
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "notes.csv").write_text("ignored", encoding="utf-8")
    assert list(data._local_documents(tmp_path, "text")) == ["one", "two", "three", "four"]
    assert data.describe_source(tmp_path) == f"data folder '{tmp_path}'"


def test_heldout_split_by_document_hash(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in DOCS])
    train = data.load_texts(path, "train")
    heldout = data.load_texts(path, "heldout")
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(DOCS)
    assert 2 <= len(heldout) <= 20  # 5% of 200 on average
    assert data.load_texts(path, "heldout") == heldout  # deterministic
    # streaming reads lazily and splits the same way
    stream = data.load_texts(path, "heldout", streaming=True)
    assert not isinstance(stream, list)
    assert list(stream) == heldout
    bigger = data.load_texts(path, "heldout", heldout_fraction=0.3)
    assert set(heldout) <= set(bigger) and len(bigger) > 2 * len(heldout)


def test_single_document_is_cut_into_head_and_tail(tmp_path):
    text = "".join(f"line {i}\n" for i in range(100))
    path = tmp_path / "one.txt"
    path.write_text(text, encoding="utf-8")
    (train,) = data.load_texts(path, "train", heldout_fraction=0.1)
    (heldout,) = data.load_texts(path, "heldout", heldout_fraction=0.1)
    assert train + heldout == text
    assert heldout.startswith("line 9") and heldout.endswith("line 99\n")


class _FakeDatasets:
    """``datasets.load_dataset`` answering with an in-memory DatasetDict."""

    def __init__(self, splits):
        import datasets

        self.dict = datasets.DatasetDict(
            {name: datasets.Dataset.from_dict(cols) for name, cols in splits.items()}
        )
        self.calls = []

    def __call__(self, name, config=None, streaming=False, **kwargs):
        self.calls.append((name, config, streaming))
        if streaming:
            import datasets

            return datasets.IterableDatasetDict(
                {k: v.to_iterable_dataset() for k, v in self.dict.items()}
            )
        return self.dict


def test_dataset_with_its_own_validation_split(monkeypatch):
    import datasets

    fake = _FakeDatasets({"train": {"text": ["a", "b", ""]}, "validation": {"text": ["v"]}})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert data.load_texts("user/corpus", "train", data_config="en") == ["a", "b"]
    assert data.load_texts("user/corpus", "heldout", data_config="en") == ["v"]
    assert list(data.load_texts("user/corpus", "heldout", streaming=True)) == ["v"]
    assert fake.calls[0] == ("user/corpus", "en", False)
    assert fake.calls[-1][2] is True


def test_dataset_without_validation_split_is_hash_split(monkeypatch):
    import datasets

    fake = _FakeDatasets({"train": {"text": DOCS, "n": list(range(len(DOCS)))}})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    train, heldout = data.load_texts("x/y", "train"), data.load_texts("x/y", "heldout")
    assert sorted(train + heldout) == sorted(DOCS) and heldout
    assert list(data.load_texts("x/y", "heldout", streaming=True)) == heldout
    with pytest.raises(DataError, match=r"dataset 'x/y' has no field 'body' \(fields: text, n\)"):
        data.load_texts("x/y", text_field="body")


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # bound, never listening: a connection is refused at once
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("hub", ["up", "down", "proxy"])
def test_unreachable_hub_loads_from_the_cache_only(monkeypatch, hub):
    import socket

    import datasets
    import datasets.config
    import huggingface_hub.constants

    for module in (datasets.config, huggingface_hub.constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", False)  # as without HF_HUB_OFFLINE set
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1] if hub == "up" else _closed_port()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        if hub == "proxy":
            monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
        seen = []

        def load_dataset(name, config, streaming=False):
            seen.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
            return {"train": {"text": ["a"]}, "validation": {"text": ["v"]}}

        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        assert data.hub_reachable(timeout=2.0) is (hub != "down")
        assert data.load_texts("user/corpus", "heldout") == ["v"]
    offline = hub == "down"  # offline only while loading; restored afterwards
    assert seen == [(offline, offline)]
    assert not datasets.config.HF_HUB_OFFLINE and not huggingface_hub.constants.HF_HUB_OFFLINE


def test_unknown_dataset_offline_is_a_data_error():
    # conftest.py sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: the hub is "unreachable"
    with pytest.raises(DataError, match=r"dataset 'no-such-dataset-xyz' not found locally"):
        data.load_texts("no-such-dataset-xyz")


# -- errors ---------------------------------------------------------------------------------


def test_data_errors_name_the_problem(tmp_path):
    def fails(pattern, source, **kwargs):
        with pytest.raises(DataError, match=pattern):
            data.load_texts(source, **kwargs)

    fails(r"data file '.*missing.jsonl' not found", tmp_path / "missing.jsonl")
    fails(r"data file 'nowhere/x.txt' not found", "nowhere/x.txt")
    jsonl = _write_jsonl(tmp_path / "x.jsonl", [{"body": "a", "id": 1}])
    fails(r"data file '.*x.jsonl' has no field 'text' on line 1 \(fields: body, id\)", jsonl)
    _write_jsonl(tmp_path / "n.jsonl", [{"text": "a"}, {"text": 3}])
    fails(r"field 'text' on line 2 is a int, not a string", tmp_path / "n.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n', encoding="utf-8")
    fails(r"'.*bad.jsonl' line 2 is not valid JSON", tmp_path / "bad.jsonl")
    parquet = _write_parquet(tmp_path / "p.parquet", {"content": ["a"]})
    fails(r"'.*p.parquet' has no column 'text' \(columns: content\)", parquet)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    fails(r"'.*broken.parquet' is not a readable parquet file", tmp_path / "broken.parquet")
    (tmp_path / "blank.txt").write_text("  \n\n", encoding="utf-8")
    fails(r"data file '.*blank.txt' has no text", tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    fails(r"'.*latin1.txt' is not UTF-8 text", tmp_path / "latin1.txt")
    (tmp_path / "t.csv").write_text("a,b\n", encoding="utf-8")
    fails(r"unsupported data file '.*t.csv'", tmp_path / "t.csv")
    (tmp_path / "empty").mkdir()
    fails(r"data folder '.*empty' has no data files", tmp_path / "empty")
    fails(r"unknown split 'validation'", None, split="validation")
    assert issubclass(DataError, ValueError)


def test_block_errors(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Too short.", encoding="utf-8")
    with pytest.raises(DataError, match=r"--seq-len 2048 exceeds the model's context of 1024"):
        data.lm_blocks(path, tokenizer, 2048, max_positions=1024)
    with pytest.raises(
        DataError,
        match=r"train split of data file '.*short.txt' has \d tokens, fewer than one block of --seq-len 64",
    ):
        data.lm_blocks(path, tokenizer, 64)
    with pytest.raises(DataError, match="positive"):
        data.lm_blocks(path, tokenizer, 0)


# -- tokens and blocks ----------------------------------------------------------------------


def test_documents_are_joined_by_eos_and_packed(tokenizer):
    texts = ["To be, or not to be", "that is the question"]
    stream = torch.cat([torch.from_numpy(a) for a in data.iter_tokens(texts, tokenizer)])
    eos = tokenizer.eos_token_id
    expected = [*tokenizer.encode(texts[0]), eos, *tokenizer.encode(texts[1]), eos]
    assert stream.tolist() == expected
    blocks = data.pack(data.iter_tokens(texts, tokenizer), 4)
    assert blocks.dtype == torch.long and blocks.shape == (len(expected) // 4, 4)
    assert blocks.flatten().tolist() == expected[: blocks.numel()]
    capped = torch.cat([torch.from_numpy(a) for a in data.iter_tokens(texts, tokenizer, 5)])
    assert capped.tolist() == expected[:5]


def test_lm_blocks_of_a_file_and_max_tokens(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in DOCS])
    blocks = data.lm_blocks(path, tokenizer, 32)
    expected = data.pack(data.iter_tokens(data.load_texts(path), tokenizer), 32)
    assert torch.equal(blocks, expected)
    assert data.lm_blocks(path, tokenizer, 32, max_tokens=100).shape == (3, 32)
    train, heldout = data.train_and_heldout_blocks(path, tokenizer, 32)
    assert torch.equal(train, blocks)
    assert heldout.shape[1] == 32 and heldout.shape[0] >= 1


def test_probe_batches_are_the_leading_heldout_blocks_shared_by_rank(tmp_path, tokenizer):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(DOCS * 5), encoding="utf-8")
    everything = data.lm_blocks(str(path), tokenizer, 16, split="heldout")
    blocks = data.lm_blocks(str(path), tokenizer, 16, split="heldout", max_tokens=6 * 16 + 1)
    assert blocks.shape[0] == 6 and everything.shape[0] > 6
    batches = data.probe_batches(str(path), tokenizer, 16, 3, 2)
    assert [b["input_ids"].shape for b in batches] == [(2, 16)] * 3
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), blocks[:6])
    shares = [data.probe_batches(str(path), tokenizer, 16, 3, 2, rank=r, world=2) for r in (0, 1)]
    assert [len(s) for s in shares] == [2, 1]  # batches 0, 2 and batch 1
    for i, batch in enumerate(batches):
        assert torch.equal(shares[i % 2][i // 2]["input_ids"], batch["input_ids"])
    many = everything.shape[0] + 1
    with pytest.raises(DataError, match=rf"has {many - 1} blocks of 16 tokens; {many} "):
        data.probe_batches(str(path), tokenizer, 16, many, 1)
    top = int(blocks[:6].max())
    with pytest.raises(DataError, match=f"token id {top} but the model's vocabulary has {top}"):
        data.probe_batches(str(path), tokenizer, 16, 3, 2, vocab_size=top)
    assert len(data.probe_batches(str(path), tokenizer, 16, 3, 2, vocab_size=top + 1)) == 3


def test_streaming_reads_no_further_than_needed(tmp_path, tokenizer):
    path = tmp_path / "big.jsonl"
    _write_jsonl(path, [{"text": t} for t in DOCS])
    with path.open("a", encoding="utf-8") as f:
        f.write("{this line is never read when streaming\n")
    blocks = data.lm_blocks(path, tokenizer, 16, max_tokens=160, streaming=True)
    assert blocks.shape == (10, 16)
    with pytest.raises(DataError, match="not valid JSON"):
        data.lm_blocks(path, tokenizer, 16, max_tokens=160)


def test_embedded_blocks_are_cached_and_heldout_is_shuffled(tokenizer, monkeypatch):
    blocks = data.lm_blocks(None, tokenizer, 128, "heldout")
    files = list((embedded.cache_dir() / "tokens").glob("heldout-*.npy"))
    assert len(files) == 1
    monkeypatch.setattr(data, "iter_tokens", lambda *a, **k: pytest.fail("re-tokenized"))
    again = data.lm_blocks(None, tokenizer, 128, "heldout")
    assert torch.equal(again, blocks)
    monkeypatch.undo()
    uncached = data.lm_blocks(None, tokenizer, 128, "heldout", cache=False)
    assert torch.equal(uncached, blocks)
    # the held-out order is a fixed permutation of the packed stream: all plays early on
    stream = data._embedded_tokens("heldout", tokenizer, cache=True)
    ordered = data.pack(stream, 128)
    assert not torch.equal(blocks, ordered)
    assert sorted(map(tuple, blocks.tolist())) == sorted(map(tuple, ordered.tolist()))
    first = {int(torch.nonzero(torch.all(ordered == b, dim=1))[0]) for b in blocks[:40]}
    assert max(first) - min(first) > ordered.shape[0] // 2
    assert data.lm_blocks(None, tokenizer, 128, "heldout", max_tokens=1000).shape == (7, 128)


# -- batches --------------------------------------------------------------------------------


@pytest.fixture
def blocks():
    return torch.arange(50 * 8).view(50, 8)  # block i holds 8i .. 8i+7


def _ids(batch):
    return (batch["input_ids"][:, 0] // 8).tolist()


def test_batches_shape_and_epochs(blocks):
    it = data.batch_iterator(blocks, 8, seed=1)
    assert it.batches_per_epoch == 6
    first = next(it)
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    assert first["input_ids"].shape == (8, 8) and first["input_ids"].dtype == torch.long
    assert torch.equal(first["attention_mask"], torch.ones(8, 8, dtype=torch.long))
    assert torch.equal(first["labels"], first["input_ids"])
    seen = _ids(first) + [i for _ in range(5) for i in _ids(next(it))]
    assert len(set(seen)) == 48  # an epoch visits distinct blocks; 2 left over are dropped
    assert it.position == data.Position(1, 0) and it.steps_done == 6
    assert _ids(next(it)) != _ids(first)  # a new permutation each epoch


def test_shuffling_is_deterministic_by_seed(blocks):
    state = torch.random.get_rng_state()
    a = [_ids(b) for b, _ in zip(data.batch_iterator(blocks, 8, seed=7), range(15))]
    torch.manual_seed(123)  # the global RNG plays no part
    b = [_ids(b) for b, _ in zip(data.batch_iterator(blocks, 8, seed=7), range(15))]
    c = [_ids(b) for b, _ in zip(data.batch_iterator(blocks, 8, seed=8), range(15))]
    assert a == b and a != c
    torch.random.set_rng_state(state)


@pytest.mark.parametrize("stop", [1, 4, 6, 11])
def test_resume_from_a_saved_position_is_exact(blocks, stop):
    reference = data.batch_iterator(blocks, 8, seed=3)
    expected = [next(reference)["input_ids"] for _ in range(20)]
    it = data.batch_iterator(blocks, 8, seed=3)
    for _ in range(stop):
        next(it)
    state = it.state_dict()
    assert all(isinstance(v, int) for v in state.values())
    resumed = data.batch_iterator(blocks, 8, seed=3)
    resumed.load_state_dict(state)
    again = data.batch_iterator(blocks, 8, seed=3, epoch=state["epoch"], index=state["index"])
    for k in range(stop, 20):
        batch = expected[k]
        assert torch.equal(next(resumed)["input_ids"], batch)
        assert torch.equal(next(again)["input_ids"], batch)


def test_resume_refuses_other_data(blocks):
    state = data.batch_iterator(blocks, 8, seed=3).state_dict()
    with pytest.raises(ValueError, match="seed 3, this one 4"):
        data.batch_iterator(blocks, 8, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="num_blocks 50, this one 40"):
        data.batch_iterator(blocks[:40], 8, seed=3).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_union_is_the_global_batch(blocks, world_size):
    single = data.batch_iterator(blocks, 8, seed=2)
    ranks = [
        data.batch_iterator(blocks, 8, seed=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for _ in range(14):  # across two epoch boundaries
        parts = [next(it)["input_ids"] for it in ranks]
        assert all(p.shape == (8 // world_size, 8) for p in parts)
        assert torch.equal(torch.cat(parts), next(single)["input_ids"])


def test_batch_errors(blocks):
    with pytest.raises(DataError, match="50 blocks of 8 tokens, fewer than one batch of 64"):
        data.batch_iterator(blocks, 64)
    with pytest.raises(ValueError, match="multiple of world size 4"):
        data.batch_iterator(blocks, 6, world_size=4)
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        data.batch_iterator(blocks, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="outside 6 batches per epoch"):
        data.batch_iterator(blocks, 8, index=6)

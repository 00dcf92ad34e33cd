"""Is ``--data X`` a local path or a Hugging Face dataset name? One rule for every command.

A data source is a **local path** when it exists, or when it cannot be a dataset name:

* it starts with ``/``, ``.`` or ``~`` (absolute, relative or home paths: ``./x``, ``../x``);
* it ends with a path separator (``corpus/``);
* it has more than one ``/`` (hub names are ``name`` or ``owner/name``);
* it ends with a data-file suffix (``.txt``, ``.md``, ``.jsonl``, ``.json``, ``.parquet``,
  ``.gz``).

Anything else — ``wikitext``, ``Salesforce/wikitext`` — is a **dataset name**, tried with
``datasets.load_dataset`` (which also finds a dataset cached earlier, offline). So a missing
``x.jsonl`` is reported as a missing file at once, while ``owner/name`` is always tried as a
dataset, also when a file of that name does not exist. Standard library only: the commands
check their flags with it before importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_SUFFIXES", "describe_source", "looks_like_path"]

DATA_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")
_PATH_ONLY_SUFFIXES = (*DATA_SUFFIXES, ".gz")


def looks_like_path(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a local file or folder (see the module docstring)."""
    text = os.fspath(source)
    if Path(text).expanduser().exists():
        return True
    normalised = text.replace(os.sep, "/")
    return (
        normalised.startswith(("/", ".", "~"))
        or normalised.endswith("/")
        or normalised.count("/") > 1
        or normalised.lower().endswith(_PATH_ONLY_SUFFIXES)
    )


def describe_source(source: str | os.PathLike | None) -> str:
    """How messages name a source: ``data file 'x.jsonl'``, ``dataset 'name'``, ..."""
    if source is None:
        return "the embedded corpus"
    if Path(source).expanduser().is_dir():
        return f"data folder '{source}'"
    if looks_like_path(source):
        return f"data file '{source}'"
    return f"dataset '{source}'"

"""Plain-text conventions shared by :mod:`winq.embedded` and :mod:`winq.data` (no torch).

A text file may hold several documents separated by lines that are exactly ``<|endoftext|>``
(the convention of GPT-2-style text dumps); the embedded corpus' ``train.txt`` is written so.
"""

from __future__ import annotations

import re

DOCUMENT_SEPARATOR = "<|endoftext|>"

_SEPARATOR_LINE = re.compile(rf"(?m)^{re.escape(DOCUMENT_SEPARATOR)}[ \t]*(?:\r?\n|$)")


def join_documents(documents: list[str]) -> str:
    """One text holding ``documents`` (each ending with a newline) and separator lines."""
    return f"{DOCUMENT_SEPARATOR}\n".join(d if d.endswith("\n") else d + "\n" for d in documents)


def split_documents(text: str) -> list[str]:
    """The documents of a text, split at separator lines; blank documents are dropped."""
    return [doc for doc in _SEPARATOR_LINE.split(text) if doc.strip()]

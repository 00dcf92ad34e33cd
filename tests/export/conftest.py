"""Fixtures of the export tests: the embedded tokenizer, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from winq import embedded

    return embedded.tokenizer()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models run fastest on one thread (see tests/conftest.py)."""
    yield

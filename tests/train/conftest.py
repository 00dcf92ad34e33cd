"""Fixtures of the trainer tests: miniature runs of the embedded ``tiny`` model (seq 16)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield

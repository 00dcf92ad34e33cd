"""Fixtures of the application tests (``winq-spectrum``, ``winq-reproduce``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield

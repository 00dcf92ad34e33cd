"""Shared fixtures; the model builders live in ``tiny_models`` (importable from every test folder)."""

from __future__ import annotations

import os
import tempfile

# Tests never touch the network or the user's cache: hub look-ups fail fast, and the embedded
# default is built once per test session in a temporary cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["WINQ_CACHE"] = os.environ.get("WINQ_TEST_CACHE") or tempfile.mkdtemp(
    prefix="winq-test-cache-"
)

import pytest
import torch
from tiny_models import ARCHITECTURES, build_tiny_model


@pytest.fixture
def tiny_llama():
    return build_tiny_model("llama")


@pytest.fixture(params=ARCHITECTURES)
def tiny_model(request):
    return build_tiny_model(request.param)


@pytest.fixture
def token_batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 64, (2, 12), generator=generator)

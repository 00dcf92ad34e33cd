"""Shared fixtures; the model builders live in ``tiny_models`` (importable from every test folder)."""

from __future__ import annotations

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

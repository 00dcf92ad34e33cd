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


@pytest.fixture(scope="session")
def fp_checkpoint(tmp_path_factory):
    """An FP checkpoint of the (untrained) tiny preset with the embedded tokenizer."""
    import winq
    from winq import embedded

    path = tmp_path_factory.mktemp("fp") / "ckpt"
    winq.save(embedded.build_model("tiny", seed=0), path, embedded.tokenizer())
    return path


@pytest.fixture
def one_thread():
    """Miniature models run fastest on one thread, and a second would only fight for the
    CPU with anything else running on a 2-core machine (subprocesses get OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

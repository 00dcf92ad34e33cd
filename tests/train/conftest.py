"""Fixtures of the trainer tests: miniature runs of the embedded ``tiny`` model (seq 16)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fp_checkpoint(tmp_path_factory):
    """An FP checkpoint of the (untrained) tiny preset with the embedded tokenizer."""
    import winq
    from winq import embedded

    path = tmp_path_factory.mktemp("fp") / "ckpt"
    winq.save(embedded.build_model("tiny", seed=0), path, embedded.tokenizer())
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Miniature models run fastest on one thread, and a second would only fight for the
    CPU with anything else running on a 2-core machine (subprocesses get OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

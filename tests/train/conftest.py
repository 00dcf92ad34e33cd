"""Fixtures of the trainer tests: miniature runs (a 2-layer, hidden-32 Llama, seq 16)."""

from __future__ import annotations

import pytest
import standins

standins.install()


@pytest.fixture
def fp_checkpoint(tmp_path_factory):
    """An FP checkpoint of the miniature model (built once per test)."""
    import winq
    from winq import embedded

    path = tmp_path_factory.mktemp("fp") / "ckpt"
    winq.save(embedded.build_model("tiny", seed=0), path)
    return path

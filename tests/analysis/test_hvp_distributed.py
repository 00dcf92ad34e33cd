"""Data-parallel products: 2 gloo processes on CPU give the single-process result, with every
backend (finite differences take the same step on every rank)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_worker import all_batches, compute

pytestmark = pytest.mark.distributed


def test_two_gloo_ranks_match_one_process(tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = compute(all_batches())
    for key, expected in single.items():
        for rank in ranks:
            got = rank[key]
            if key in ("tokens", "batches"):
                assert got == expected, key
                continue
            difference = float((got - expected).norm() / expected.norm())
            # finite differences divide the ranks' summation-order round-off by 2ε
            tolerance = 1e-4 if key.startswith("finite_difference") else 1e-5
            assert difference <= tolerance, (key, difference)
    # both ranks hold the same all-reduced result
    assert torch.equal(ranks[0]["double_backward/product"], ranks[1]["double_backward/product"])

"""Sharded vectors and FSDP2-sharded operators: probes, reductions, and 2 gloo ranks against one
process (finite differences) and against exact products (double backward)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ARCHITECTURES, build_tiny_model

from winq.analysis import sharded
from winq.analysis.probes import make_generator, random_vectors
from winq.analysis.sharded import ShardedVectorSpace, _stream_chunks
from winq.sharding import decoder_layers, shard_model, sharded_rows

LAYER_LISTS = {
    "llama": lambda m: m.model.layers,
    "qwen2": lambda m: m.model.layers,
    "mistral": lambda m: m.model.layers,
    "gpt_neox": lambda m: m.gpt_neox.layers,
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_decoder_layers_are_found_generically(arch):
    model = build_tiny_model(arch, layers=3)
    layers = decoder_layers(model)
    assert len(layers) == 3
    assert all(a is b for a, b in zip(layers, LAYER_LISTS[arch](model)))


def test_shard_model_and_sharded_rows_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match=r"torch\.distributed initialised"):
        shard_model(build_tiny_model("llama"))
    with pytest.raises(ValueError, match=r"no nn\.ModuleList"):
        decoder_layers(torch.nn.Linear(2, 2))
    assert sharded_rows(torch.zeros(5, 3)) == (0, 5)
    with pytest.raises(ValueError, match="out of order"):
        ShardedVectorSpace([(4, 4), (2, 1)], 10)
    with pytest.raises(ValueError, match="outside"):
        ShardedVectorSpace([(8, 4)], 10)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), width=st.integers(1, 5), chunk=st.integers(1, 20))
def test_stream_chunks_tile_the_rows_in_multiples_of_16(rows, width, chunk):
    with mock.patch.object(sharded, "STREAM_CHUNK", 16 * chunk):
        chunks = list(_stream_chunks(rows, width))
    assert chunks[0][0] == 0 and chunks[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert all((last - first) * width % 16 == 0 for first, last in chunks[:-1])
    first, last = chunks[-1]
    assert (last - first) * width >= 16 or len(chunks) == 1


@st.composite
def slices(draw):
    """A vector length and the increasing, disjoint slices one rank holds of it."""
    size = draw(st.integers(1, 400))
    cuts = sorted(draw(st.lists(st.integers(0, size), min_size=2, max_size=8)))
    keep = draw(st.lists(st.booleans(), min_size=len(cuts) - 1, max_size=len(cuts) - 1))
    pieces = [(a, b - a) for (a, b), k in zip(itertools.pairwise(cuts), keep) if k]
    return size, pieces


@settings(max_examples=60, deadline=None)
@given(
    case=slices(),
    count=st.sampled_from([None, 1, 3]),
    distribution=st.sampled_from(["rademacher", "gaussian"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    chunk=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_probes_are_slices_of_the_single_process_draw(
    case, count, distribution, dtype, chunk, seed
):
    size, pieces = case
    space = ShardedVectorSpace(pieces, size)
    # small chunks, so that the stream is cut where a single draw is not
    with mock.patch.object(sharded, "STREAM_CHUNK", 16 * chunk):
        local = space.random(count, distribution, make_generator(seed, "cpu"), dtype, "cpu")
    whole = random_vectors(size, count, distribution, make_generator(seed, "cpu"), dtype, "cpu")
    expected = torch.cat([whole[s : s + n] for s, n in pieces]) if pieces else whole[:0]
    assert local.shape == expected.shape
    assert torch.equal(local, expected)


def relative(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def assemble(ranks: list[dict], key: str) -> torch.Tensor:
    """The global vector whose slices the ranks hold under ``key``."""
    local = ranks[0][key]
    out = torch.zeros((ranks[0]["num_params"], *local.shape[1:]), dtype=local.dtype)
    for rank in ranks:
        position = 0
        for start, length in rank["pieces"]:
            out[start : start + length] = rank[key][position : position + length]
            position += length
    return out


@pytest.mark.distributed
def test_fsdp2_finite_differences_match_one_process(tmp_path, one_thread):
    worker = Path(__file__).with_name("sharded_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    from sharded_worker import all_batches, build_model, measure

    single = measure(build_model(), all_batches())
    exact = measure(build_model(), all_batches(), backend="double_backward")
    n = single["num_params"]

    # memory: each rank holds half of the parameters and of every vector (uneven shards:
    # the 63-row embedding and head split 32/31)
    total = sum(p.numel() for p in build_model().parameters())
    assert sum(r["local_parameters"] for r in ranks) == total
    assert sum(r["local_size"] for r in ranks) == n == total
    for rank in ranks:
        assert abs(rank["local_parameters"] - total / 2) <= 2 * 32
        assert rank["local_size"] == rank["local_parameters"]
        assert rank["restored"]  # θ bit for bit after every estimator
        assert "not in the autograd graph" in rank["errors"]["double_backward"]
        assert "same number of batches" in rank["errors"]["uneven"]
        assert rank["metadata"]["sharded"] and rank["metadata"]["world_size"] == 2
        assert rank["metadata"]["fd_unit_roundoff"] == 2.0**-24

    # the ranks agree exactly on every all-reduced quantity
    for key in ("nodes", "weights", "alpha", "ritz", "power"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key

    # against one process with the same finite differences: round-off apart
    sharded_run = ranks[0]
    assert relative(assemble(ranks, "product"), single["product"]) <= 1e-4  # measured 5e-5
    assert relative(assemble(ranks, "gradient"), single["gradient"]) <= 1e-5
    assert sharded_run["loss"] == pytest.approx(single["loss"], rel=1e-6)
    assert sharded_run["nodes"].max() == pytest.approx(float(single["nodes"].max()), rel=1e-4)
    assert relative(sharded_run["weights"], single["weights"]) <= 1e-4  # measured 5e-6
    assert relative(sharded_run["ritz"], single["ritz"]) <= 1e-4
    assert relative(sharded_run["power"], single["power"]) <= 1e-3  # 3 unconverged steps
    assert sharded_run["trace"] == pytest.approx(single["trace"], rel=1e-3)

    # against exact products: the finite-difference error
    assert relative(assemble(ranks, "product"), exact["product"]) <= 1e-3  # measured 3e-4
    assert sharded_run["nodes"].max() == pytest.approx(float(exact["nodes"].max()), rel=1e-3)
    assert relative(sharded_run["weights"], exact["weights"]) <= 1e-3
    assert relative(sharded_run["ritz"], exact["ritz"]) <= 1e-3

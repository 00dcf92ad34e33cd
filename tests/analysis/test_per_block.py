"""Per-block spectra: grouping by transformer block and module kind, block products, I/O."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from analysis_cases import llama_batches, tiny_llama
from tiny_models import build_tiny_model

from winq.analysis import HessianOperator, Spectrum, group_parameters, per_block_slq

LLAMA_KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_grouping_llama_and_gpt_neox_names():
    llama = HessianOperator(tiny_llama(layers=2, dtype=torch.float32), llama_batches())
    groups = group_parameters(llama.param_names)
    assert list(groups) == ["layer.0", "layer.1"] + [f"kind.{k}" for k in LLAMA_KINDS]
    assert groups["kind.q_proj"] == [f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1)]
    assert len(groups["layer.1"]) == 7
    neox = build_tiny_model("gpt_neox")
    names = HessianOperator(neox, [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}]).param_names
    neox_groups = group_parameters(names)
    assert sorted(k for k in neox_groups if k.startswith("kind.")) == [
        "kind.dense",
        "kind.dense_4h_to_h",
        "kind.dense_h_to_4h",
        "kind.query_key_value",
    ]
    assert group_parameters(["transformer.h.3.attn.c_proj.weight"], ("layer",)) == {
        "layer.3": ["transformer.h.3.attn.c_proj.weight"]
    }
    with pytest.raises(ValueError, match="group_by"):
        group_parameters(names, ("head",))


def test_block_products_are_diagonal_blocks_of_the_full_product(generator):
    model = tiny_llama(layers=2, dtype=torch.float64)
    op = HessianOperator(model, llama_batches())
    names = group_parameters(op.param_names)["kind.v_proj"]
    block = op.restrict(names)
    v = torch.randn(block.num_params, generator=generator, dtype=torch.float64)
    full = torch.zeros(op.num_params, dtype=torch.float64)
    pieces = op.unflatten(full)
    block_pieces = block.unflatten(v)
    for name in names:
        pieces[name].copy_(block_pieces[name])
    expected = op.unflatten(op @ full)
    got = block.unflatten(block @ v)
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-14)


def test_per_block_slq_in_one_call_and_saved(tmp_path):
    model = tiny_llama(layers=2, dtype=torch.float32)
    op = HessianOperator(model, llama_batches())
    spectrum = per_block_slq(op, probes=2, steps=6, seed=0, progress=False)
    assert list(spectrum.blocks) == ["layer.0", "layer.1"] + [f"kind.{k}" for k in LLAMA_KINDS]
    assert spectrum.nodes.shape == (2, 6)
    assert spectrum.blocks["kind.q_proj"].num_params == 2 * 32 * 32
    assert spectrum.blocks["layer.0"].num_params == op.num_params // 2
    assert len(op._shared.graphs) == 2  # one first-order graph per batch, shared by all blocks
    spectrum.save(tmp_path / "blocks")
    ritz = pd.read_parquet(tmp_path / "blocks" / "ritz.parquet")
    assert list(ritz.columns) == ["probe", "node", "weight", "block"]
    assert set(ritz["block"]) == {"all", *spectrum.blocks}
    sums = ritz.groupby(["block", "probe"])["weight"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-12)
    document = json.loads((tmp_path / "blocks" / "spectrum.json").read_text())
    assert document["blocks"]["layer.1"]["num_params"] == op.num_params // 2
    assert "lambda_max" in document["blocks"]["kind.down_proj"]["summary"]
    loaded = Spectrum.load(tmp_path / "blocks")
    assert list(loaded.blocks) == list(spectrum.blocks)
    np.testing.assert_array_equal(
        loaded.blocks["kind.o_proj"].nodes, spectrum.blocks["kind.o_proj"].nodes
    )
    np.testing.assert_array_equal(loaded.nodes, spectrum.nodes)

    only_layers = per_block_slq(
        op, group_by=("layer",), include_all=False, probes=1, steps=3, progress=False
    )
    assert list(only_layers.blocks) == ["layer.0", "layer.1"] and only_layers.probes == 0

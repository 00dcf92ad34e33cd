"""Spectrum.save / Spectrum.load in the format of docs/formats.md."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from winq.analysis import DenseOperator, Spectrum, hutchinson, slq


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def same_summary(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and math.isnan(x):
            assert y is None or math.isnan(y), key
        else:
            assert x == y, key


def test_round_trip_with_documented_columns(prescribed, tmp_path):
    matrix, _ = prescribed
    op = DenseOperator(matrix)
    spectrum = slq(
        op, probes=3, steps=10, seed=0, progress=False, metadata={"bits": 2, "step": None}
    )
    trace = hutchinson(op, samples=30, method="hutch++")
    spectrum.trace, spectrum.trace_stderr, spectrum.trace_method = (
        trace.estimate,
        trace.stderr,
        "hutch++",
    )
    spectrum.top_eigenvalues = [10.0, 8.0]
    folder = spectrum.save(tmp_path / "spec")
    assert sorted(p.name for p in folder.iterdir()) == [
        "density.parquet",
        "lanczos.parquet",
        "ritz.parquet",
        "spectrum.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    document = strict_json(folder / "spectrum.json")
    assert document["format_version"] == 2 and document["kind"] == "winq-spectrum"
    lanczos = pd.read_parquet(folder / "lanczos.parquet")
    assert list(lanczos.columns) == ["probe", "step", "alpha", "beta"]
    assert len(lanczos) == 3 * 10 and sorted(lanczos["probe"].unique()) == [0, 1, 2]
    assert "blocks" not in document
    for key in (
        "num_params",
        "probes",
        "lanczos_steps",
        "reorth",
        "seed",
        "wall_seconds",
        "torch_version",
        "bits",
    ):
        assert key in document["metadata"], key
    for key in (
        "lambda_max",
        "lambda_min",
        "abs_ratio",
        "trace",
        "trace_stderr",
        "near_zero_mass",
        "near_zero_eps",
        "negative_mass",
        "density_sigma",
        "abs_quantiles",
        "top_eigenvalues",
    ):
        assert key in document["summary"], key
    assert document["summary"]["trace"] == pytest.approx(trace.estimate)
    ritz = pd.read_parquet(folder / "ritz.parquet")
    assert list(ritz.columns) == ["probe", "node", "weight"]
    assert str(ritz["probe"].dtype) == "int64" and str(ritz["node"].dtype) == "float64"
    np.testing.assert_allclose(ritz.groupby("probe")["weight"].sum(), 1.0, atol=1e-14)
    dens = pd.read_parquet(folder / "density.parquet")
    assert list(dens.columns) == ["lambda", "density"] and len(dens) == 400

    loaded = Spectrum.load(folder)
    np.testing.assert_array_equal(loaded.nodes, spectrum.nodes)
    np.testing.assert_array_equal(loaded.weights, spectrum.weights)
    assert loaded.trace == pytest.approx(trace.estimate) and loaded.top_eigenvalues == [10.0, 8.0]
    same_summary(loaded.summary(), spectrum.summary())
    assert loaded.metadata["bits"] == 2


def test_ragged_probes_round_trip(tmp_path):
    eigenvalues = np.array([-1.0] * 5 + [2.0] * 5)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 10)))
    spectrum = slq(DenseOperator((q * eigenvalues) @ q.T), probes=2, steps=6, progress=False)
    assert list(spectrum.num_nodes) == [2, 2]
    spectrum.save(tmp_path / "s")
    assert len(pd.read_parquet(tmp_path / "s" / "ritz.parquet")) == 4  # real nodes only
    loaded = Spectrum.load(tmp_path / "s")
    assert loaded.nodes.shape == (2, 6)
    np.testing.assert_array_equal(loaded.mask, spectrum.mask)
    np.testing.assert_array_equal(loaded.nodes, spectrum.nodes)


def test_overwrite_and_errors(prescribed, tmp_path):
    spectrum = slq(DenseOperator(prescribed[0]), probes=1, steps=4, progress=False)
    spectrum.save(tmp_path / "s")
    spectrum.save(tmp_path / "s")  # atomic replace
    with pytest.raises(FileExistsError):
        spectrum.save(tmp_path / "s", overwrite=False)
    document = strict_json(tmp_path / "s" / "spectrum.json")
    document["format_version"] = 99
    (tmp_path / "s" / "spectrum.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="format_version"):
        Spectrum.load(tmp_path / "s")
    (tmp_path / "s" / "spectrum.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(ValueError, match="not a winq spectrum"):
        Spectrum.load(tmp_path / "s")
    with pytest.raises(FileNotFoundError):
        Spectrum.load(tmp_path / "missing")

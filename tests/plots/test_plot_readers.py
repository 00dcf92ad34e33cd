"""Finding and reading spectrum and run folders; clear errors for bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from plot_fixtures import (
    BASELINE_EVAL,
    EVAL_STEPS,
    SAVED_EPS,
    SIGMA,
    density_on_grid,
    ritz_nodes,
    write_run,
    write_spectrum,
)

from winq import quadrature
from winq.plots import PlotInputError, load_inputs, read_metrics, read_run, read_spectrum
from winq.plots.readers import find_inputs


def test_finds_every_run_and_spectrum(study, inputs):
    assert [run.label for run in inputs.runs] == [
        "1-bit baseline",
        "2-bit baseline",
        "2-bit WinQ fixed",
        "2-bit WinQ guided",
    ]
    assert len(inputs.spectra) == 3 + 3 + 3 + 6 + 1  # 1-bit, 2-bit x2, α sweep, loose 3-bit
    by_label = {run.label: run for run in inputs.runs}
    assert len(by_label["2-bit baseline"].spectra) == 3 + 6
    assert by_label["2-bit WinQ guided"].spectra == []
    loose = [s for s in inputs.spectra if s.run is None]
    assert len(loose) == 1 and loose[0].bits == 3
    assert {s.run for s in by_label["2-bit baseline"].spectra} == {"2-bit baseline"}


def test_hidden_temporary_folders_and_checkpoints_are_skipped(tmp_path):
    write_spectrum(tmp_path / "spec", bits=2, step=10)
    write_spectrum(tmp_path / ".spec.abc.tmp", bits=2, step=20)  # an atomic write in progress
    write_run(tmp_path / "run", bits=2, mode="off", eval_losses=BASELINE_EVAL)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000100"
    write_spectrum(checkpoint / "stray", bits=2, step=30)
    spectra, runs = find_inputs([tmp_path, tmp_path / "spec"])  # overlapping paths: no duplicates
    assert [p.name for p in spectra] == ["spec"]
    assert [p.name for p in runs] == ["run"]


def test_metrics_merge_lines_of_one_step_and_drop_a_truncated_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 0, "loss": 3.5, "lr": 0.001}\n'
        '{"step": 0, "eval_loss": 3.25, "surprise": [1]}\n'
        "\n"
        '{"step": 10, "loss": 3.0}\n'
        '{"step": 10, "reset": {"alpha": 0.2, "reason": "schedule", "layers": 14}}\n'
        '{"step": 20, "loss": 2.'
    )
    frame, records = read_metrics(path)
    assert frame["step"].tolist() == [0, 10]
    assert frame.loc[0, "loss"] == 3.5 and frame.loc[0, "eval_loss"] == 3.25
    assert frame.loc[1, "reset"] == {"alpha": 0.2, "reason": "schedule", "layers": 14}
    assert len(records) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": 0}\nnot json\n{"step": 1}\n', "line 2 is not valid JSON"),
        ('{"step": 0}\n[1, 2]\n{"step": 1}\n', "line 2 is not a JSON object"),
        ('{"loss": 1.0}\n{"step": 1}\n', "line 1 has no integer 'step'"),
        ('{"step": "ten"}\n{"step": 1}\n', "line 1 has no integer 'step'"),
    ],
)
def test_corrupt_metrics_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    with pytest.raises(PlotInputError, match=message) as info:
        read_metrics(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_run_properties(inputs):
    runs = {run.label: run for run in inputs.runs}
    fixed, guided, base = (
        runs["2-bit WinQ fixed"],
        runs["2-bit WinQ guided"],
        runs["2-bit baseline"],
    )
    assert (base.mode, fixed.mode, guided.mode) == ("off", "fixed", "guided")
    assert base.is_baseline and not fixed.is_baseline
    assert fixed.reset_steps == [250, 500, 750]
    assert fixed.eval_loss["step"].tolist() == EVAL_STEPS
    assert base.final_eval_loss == BASELINE_EVAL[-1]
    assert fixed.steps == 1000  # the truncated last line was dropped
    series = guided.spectrum_series()
    assert series["source"].unique().tolist() == ["diagnostics"]
    assert series["step"].tolist() == [0, 250, 500, 750, 1000]
    assert base.spectrum_series()["step"].tolist() == [0, 500, 1000]  # α sweep excluded


def test_mode_falls_back_to_reset_records_and_label_to_folder(tmp_path):
    write_run(
        tmp_path / "no-config-guided",
        bits=2,
        mode="guided",
        eval_losses=BASELINE_EVAL,
        resets=(100,),
        reset_reason="guided",
        config="absent",
    )
    write_run(tmp_path / "plain", bits=2, mode="off", eval_losses=BASELINE_EVAL, config={})
    guided = read_run(tmp_path / "no-config-guided")
    assert guided.mode == "guided" and guided.bits is None
    assert guided.label == "no-config-guided"
    plain = read_run(tmp_path / "plain")
    assert plain.mode == "off" and plain.label == "plain"


def test_duplicate_labels_get_the_folder_name(tmp_path):
    for seed in (0, 1):
        write_run(
            tmp_path / f"seed{seed}", bits=2, mode="off", eval_losses=BASELINE_EVAL, seed=seed
        )
    labels = sorted(run.label for run in load_inputs([tmp_path]).runs)
    assert labels == ["2-bit baseline (seed0)", "2-bit baseline (seed1)"]


def test_saved_density_is_used_and_rebroadened_on_request(tmp_path):
    write_spectrum(tmp_path / "s", bits=2, step=5, seed=3)
    spectrum = read_spectrum(tmp_path / "s")
    saved = pd.read_parquet(tmp_path / "s" / "density.parquet")
    grid, density = spectrum.density()
    np.testing.assert_array_equal(grid, saved["lambda"].to_numpy())
    np.testing.assert_array_equal(density, saved["density"].to_numpy())

    # the same σ on the same grid recomputed from the nodes matches the saved density
    _, redensity = spectrum.density(grid=grid, sigma=SIGMA)
    np.testing.assert_allclose(redensity, density, rtol=1e-10, atol=1e-12)

    # a wider kernel on a fine grid: a different curve, still a probability density
    fine = np.linspace(grid[0] - 1, grid[-1] + 1, 20001)
    _, wide = spectrum.density(grid=fine, sigma=0.05)
    assert np.trapezoid(wide, fine) == pytest.approx(1.0, abs=1e-6)

    mass_grid, mass = spectrum.mass_per_bin()
    np.testing.assert_array_equal(mass_grid, grid)
    assert mass.sum() == pytest.approx(1.0, abs=1e-12)
    assert mass.min() >= 0


def test_masses_saved_or_recomputed_from_ritz(tmp_path):
    """At the saved threshold the recomputed masses are the saved ones, intervals included;
    at another ε they are counted from the Ritz nodes, with a Student-t interval over probes
    computed here from the per-probe counts."""
    document = write_spectrum(tmp_path / "s", bits=2, step=5, seed=4)
    summary = document["summary"]
    spectrum = read_spectrum(tmp_path / "s")
    for kind in ("negative", "near_zero", "positive", "sign_negative"):
        estimate, threshold = spectrum.mass(kind)
        assert threshold == pytest.approx(summary["near_zero_threshold"], rel=1e-15)
        assert estimate.value == pytest.approx(summary[f"{kind}_mass"], abs=1e-15)
        assert list(estimate.ci) == pytest.approx(summary[f"{kind}_mass_ci"], abs=1e-15)
        assert estimate.resolved == summary[f"{kind}_mass_resolved"]
    nodes, weights = ritz_nodes(4, 8.0, 0.3)
    per_probe = np.array([w[np.abs(t) <= 0.05].sum() for t, w in zip(nodes, weights)])
    estimate, eps = spectrum.mass("near_zero", 0.05)
    assert eps == 0.05 and estimate.value == pytest.approx(per_probe.mean(), abs=1e-15)
    half = (
        scipy.stats.t.ppf(0.975, len(per_probe) - 1)
        * per_probe.std(ddof=1)
        / np.sqrt(len(per_probe))
    )
    assert estimate.ci[1] == pytest.approx(min(1.0, per_probe.mean() + half), rel=1e-12)
    with pytest.raises(ValueError, match="kind must be one of"):
        spectrum.mass("tiny")
    with pytest.raises(ValueError, match="sigma applies to the near_zero mass"):
        spectrum.mass("negative", sigma=0.1)


def test_masses_of_a_format_1_spectrum_read_as_unknown_intervals(tmp_path):
    """A spectrum.json written before intervals existed (format 1, summary only) still
    loads; its θ < 0 weight is read as sign_negative_mass, never as the λ < −ε mass, and
    its intervals are unknown."""
    document = write_spectrum(
        tmp_path / "old", bits=2, step=5, write_ritz=False, write_density=False
    )
    (tmp_path / "old" / "lanczos.parquet").unlink(missing_ok=True)
    old = {"format_version": 1, "kind": document["kind"], "metadata": document["metadata"],
           "summary": {"lambda_max": 8.0, "near_zero_mass": 0.25, "near_zero_eps": SAVED_EPS,
                       "negative_mass": 0.4}}  # fmt: skip
    (tmp_path / "old" / "spectrum.json").write_text(json.dumps(old))
    spectrum = read_spectrum(tmp_path / "old")
    sign, _ = spectrum.mass("sign_negative")
    assert sign.value == 0.4 and np.isnan(sign.ci).all() and sign.resolved is None
    assert np.isnan(spectrum.mass("negative")[0].value)
    near, _ = spectrum.mass("near_zero")
    assert near.value == 0.25 and np.isnan(near.ci).all()


def test_broadened_near_zero_mass_is_the_density_integral(tmp_path):
    write_spectrum(tmp_path / "s", bits=2, step=5, seed=4)
    spectrum = read_spectrum(tmp_path / "s")
    eps, sigma = 0.2, 0.05
    # the Gaussian-broadened density integrated over |λ| < ε on a fine grid (trapezoid)
    grid = np.linspace(-eps, eps, 40001)
    _, density = spectrum.density(grid=grid, sigma=sigma)
    estimate, used = spectrum.mass("near_zero", eps, sigma)
    assert used == eps and estimate.value == pytest.approx(np.trapezoid(density, grid), rel=1e-7)
    # the probe-to-probe spread the density panels draw averages to the pooled density
    fine = np.linspace(-eps, eps, 4001)
    probes = spectrum.per_probe_density(fine, sigma)
    nodes, weights, mask = spectrum.rules()
    assert probes.shape == (nodes.shape[0], fine.size)
    pooled = quadrature.mass_per_bin(nodes, weights, mask, grid=fine, sigma=sigma)[1]
    np.testing.assert_allclose(probes.mean(axis=0), pooled, rtol=1e-10, atol=1e-15)
    # a vanishing kernel counts the nodes inside ε again; a wide one spreads mass outside
    assert spectrum.mass("near_zero", eps, 1e-12)[0].value == pytest.approx(
        spectrum.mass("near_zero", eps)[0].value, abs=1e-12
    )
    assert spectrum.mass("near_zero", eps, 100.0)[0].value < 0.01
    write_spectrum(tmp_path / "bare", bits=2, step=5, write_ritz=False, write_density=False)
    (tmp_path / "bare" / "lanczos.parquet").unlink(missing_ok=True)
    bare, used = read_spectrum(tmp_path / "bare").mass("near_zero", eps, sigma)
    assert used == eps and np.isnan(bare.value)


def test_summary_only_spectrum_and_per_layer_ritz(tmp_path):
    document = write_spectrum(
        tmp_path / "bare", bits=1.58, step=5, write_ritz=False, write_density=False
    )
    bare = read_spectrum(tmp_path / "bare")
    assert bare.bits == 1.58 and bare.density() is None and bare.mass_per_bin() is None
    (tmp_path / "bare" / "lanczos.parquet").unlink(missing_ok=True)
    bare = read_spectrum(tmp_path / "bare")
    estimate, threshold = bare.mass("near_zero")
    assert threshold == document["summary"]["near_zero_threshold"]
    assert estimate.value == document["summary"]["near_zero_mass"]
    assert list(estimate.ci) == document["summary"]["near_zero_mass_ci"]
    assert np.isnan(bare.mass("near_zero", 0.5)[0].value)  # another ε needs the Ritz nodes

    write_spectrum(tmp_path / "layers", bits=2, step=5, per_layer=True, seed=2)
    layers = read_spectrum(tmp_path / "layers")
    nodes, _ = ritz_nodes(2, 8.0, 0.3)
    assert len(layers.ritz) == nodes.size  # only the block "all"
    assert "layer.0" in layers.blocks


def test_density_fixture_helper_integrates_to_one():
    nodes, weights = ritz_nodes(0, 8.0, 0.3)
    grid, density = density_on_grid(nodes, weights, points=40001)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "spectrum.json is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"kind": "something-else", "metadata": {}}', "not a winq spectrum"),
        ('{"kind": "winq-spectrum", "format_version": 9, "metadata": {}}', "newer than"),
        ('{"kind": "winq-spectrum", "metadata": [1]}', "'metadata' must be a JSON object"),
        ('{"hello": 1}', "not a winq spectrum"),
    ],
)
def test_corrupt_spectrum_json(tmp_path, content, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "spectrum.json").write_text(content)
    with pytest.raises(PlotInputError, match=message) as info:
        load_inputs([tmp_path])
    assert "\n" not in str(info.value)


def test_corrupt_parquet_and_missing_columns(tmp_path):
    write_spectrum(tmp_path / "a", bits=2, step=1)
    (tmp_path / "a" / "ritz.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(PlotInputError, match=r"ritz\.parquet is not a readable parquet file"):
        read_spectrum(tmp_path / "a")
    write_spectrum(tmp_path / "b", bits=2, step=1)
    pd.DataFrame({"lambda": [0.0]}).to_parquet(tmp_path / "b" / "density.parquet")
    with pytest.raises(PlotInputError, match=r"density\.parquet lacks column"):
        read_spectrum(tmp_path / "b")


def test_corrupt_config(tmp_path):
    write_run(tmp_path / "r", bits=2, mode="off", eval_losses=BASELINE_EVAL)
    (tmp_path / "r" / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(PlotInputError, match="expected a JSON object"):
        read_run(tmp_path / "r")


def test_path_errors(tmp_path):
    with pytest.raises(PlotInputError, match="no such file or directory"):
        find_inputs([tmp_path / "missing"])
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(PlotInputError, match="is a file"):
        find_inputs([tmp_path / "file.txt"])
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(PlotInputError, match="nothing to plot"):
        find_inputs([tmp_path / "empty"])
    with pytest.raises(PlotInputError, match="no input paths"):
        find_inputs([])


def test_a_format_1_spectrum_with_ritz_nodes_plots(tmp_path):
    """Format 1 with ``ritz.parquet`` but no ``lanczos.parquet``: masses are recomputed from
    the nodes with their intervals over probes, resolution is judged as if no node had
    converged (no residuals: conservative), and the density and magnitude figures draw it."""
    import matplotlib.pyplot as plt

    from winq.plots.figures import plot_density_over_training, plot_magnitudes_by_bits

    document = write_spectrum(tmp_path / "old", bits=2, step=5, seed=2)
    (tmp_path / "old" / "lanczos.parquet").unlink(missing_ok=True)
    summary = {
        k: v
        for k, v in document["summary"].items()
        if not k.endswith(("_ci", "_stderr", "_resolved"))
    }
    old = {"format_version": 1, "kind": document["kind"], "metadata": document["metadata"],
           "summary": summary}  # fmt: skip
    (tmp_path / "old" / "spectrum.json").write_text(json.dumps(old))
    spectrum = read_spectrum(tmp_path / "old")
    near, _ = spectrum.mass("near_zero")
    low, high = near.ci
    assert low <= near.value <= high and near.resolved is False  # the adjacent nodes weigh 7.5%
    write_spectrum(tmp_path / "new", bits=1, step=5, seed=3)  # magnitudes need two widths
    pair = [spectrum, read_spectrum(tmp_path / "new")]
    for figure in (plot_density_over_training([spectrum]), plot_magnitudes_by_bits(pair)):
        assert figure.axes and any(ax.lines or ax.collections for ax in figure.axes)
        plt.close(figure)

"""The latent grid over training (flip fraction, grid dispersion, clipped fraction): read as
logged, drawn as logged with the resets marked, and left out for runs that never logged it.

Run folders are written by hand here (a few lines of ``metrics.jsonl``, ``docs/formats.md``):
no trainer, no spectra, so the whole file takes a second or two.
"""

from __future__ import annotations

import json
import math

import pytest

from winq.plots import (
    draw_all,
    load_inputs,
    plot_latent_mechanism,
    plot_loss_curves,
    read_run,
    save,
)
from winq.plots.figures import LATENT_PANELS
from winq.plots.readers import LATENT_GRID_COLUMNS

FLIPS = {100: 0.21354166666666666, 200: 0.0390625, 300: 0.0087890625}
DISPERSION = {0: 0.4871234567891234, 100: 0.3125, 200: 0.19140625, 300: 0.2790178571428571}
CLIPPED = {0: 0.0123456789, 100: 0.015625, 200: 0.017578125, 300: 0.0185546875}


def _write_run(folder, records, config=None):
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    text = "".join(json.dumps(record) + "\n" for record in records)
    (folder / "metrics.jsonl").write_text(text)
    return folder


def _grid_records(resets=(), shift=0.0, first_flip=True):
    """Training lines, evaluations at 0, 100, 200, 300 logging the latent grid (no flip fraction
    at the first), resets between evaluations with their nested before/after grids."""
    records = []
    for step in range(0, 301, 50):
        records.append({"step": step, "loss": 3.0 - step / 400, "lr": 1e-3})
        if step in resets:
            records.append({"step": step, "reset": {
                "alpha": 0.2, "mode": "full", "reason": "schedule", "layers": 2,
                "before": {"grid_dispersion": 0.01, "clipped_fraction": 0.5, "flip_fraction": 0.9},
                "after": {"grid_dispersion": 0.45, "clipped_fraction": 0.0},
            }})  # fmt: skip
        if step % 100:
            continue
        record = {"step": step, "eval_loss": 3.1 - step / 500, "eval_ppl": 20.0}
        record["grid_dispersion"] = DISPERSION[step] + shift
        record["clipped_fraction"] = CLIPPED[step] + shift
        if step in FLIPS:
            record["flip_fraction"] = FLIPS[step] + shift
            record["flip_since"] = step - 100
        record["latents"] = {"grid_dispersion": {"model.layers.0.mlp.up_proj": 0.25}}
        if step == 300:  # the evaluation's fields on a second line of the same step
            records.append({"step": step, "eval_loss": record.pop("eval_loss")})
        records.append(record)
    return records


def _old_records():
    """A run from before the latent grid was logged (or an FP run): losses only."""
    records = [{"step": s, "loss": 3.0 - s / 400} for s in range(0, 301, 50)]
    return records + [{"step": s, "eval_loss": 3.0 - s / 450} for s in (0, 100, 200, 300)]


@pytest.fixture
def runs(tmp_path):
    """2-bit baseline (no resets) and 2-bit WinQ fixed (resets after steps 150 and 250)."""
    _write_run(tmp_path / "in" / "base", _grid_records(), {"bits": 2, "winq": {"mode": "off"}})
    _write_run(
        tmp_path / "in" / "fixed",
        _grid_records(resets=(150, 250), shift=1e-3),
        {"bits": 2, "winq": {"mode": "fixed"}},
    )
    return load_inputs([tmp_path / "in"]).runs


def _data_lines(ax, labels):
    return {line.get_label(): line for line in ax.get_lines() if line.get_label() in labels}


def test_reader_gives_the_logged_values(runs):
    base, fixed = runs
    assert (base.label, fixed.label) == ("2-bit baseline", "2-bit WinQ fixed")
    grid = base.latent_grid
    assert grid["step"].tolist() == [0, 100, 200, 300]  # not the reset step 150
    assert grid["grid_dispersion"].tolist() == [DISPERSION[s] for s in (0, 100, 200, 300)]
    assert grid["clipped_fraction"].tolist() == [CLIPPED[s] for s in (0, 100, 200, 300)]
    assert math.isnan(grid["flip_fraction"][0]) and math.isnan(grid["flip_since"][0])
    assert grid["flip_fraction"].tolist()[1:] == [FLIPS[s] for s in (100, 200, 300)]
    assert grid["flip_since"].tolist()[1:] == [0, 100, 200]
    assert fixed.reset_steps == [150, 250] and base.reset_steps == []


def test_reader_tolerates_missing_and_null_fields(tmp_path):
    old = read_run(_write_run(tmp_path / "old", _old_records()))
    assert old.latent_grid.empty
    assert list(old.latent_grid.columns) == ["step", *LATENT_GRID_COLUMNS, "flip_since"]
    records = [
        {"step": 0, "clipped_fraction": 0.25},
        {"step": 10, "grid_dispersion": None, "flip_fraction": "n/a", "clipped_fraction": 0},
        {"step": 20, "grid_dispersion": True},
    ]
    run = read_run(_write_run(tmp_path / "partial", records))
    grid = run.latent_grid
    assert grid["step"].tolist() == [0, 10]  # step 20 logged nothing usable
    assert grid["clipped_fraction"].tolist() == [0.25, 0.0]
    assert grid[["flip_fraction", "grid_dispersion"]].isna().all().all()


def test_figure_draws_the_logged_values_and_marks_resets(runs, tmp_path, check_image):
    fig = plot_latent_mechanism(runs, title="Latent grid over 2-bit QAT")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [title for _, title, _ in LATENT_PANELS]
    assert "no intervals" in fig.get_suptitle()
    labels = {run.label for run in runs}
    loss_colors = {
        line.get_label(): line.get_color()
        for line in plot_loss_curves(runs).axes[1].get_lines()
        if line.get_label() in labels
    }
    for ax, (key, _, _) in zip(axes, LATENT_PANELS):
        lines = _data_lines(ax, labels)
        assert set(lines) == labels
        for run in runs:
            logged = {r["step"]: r[key] for r in run.records if key in r}  # the file's values
            line = lines[run.label]
            assert [float(x) for x in line.get_xdata()] == list(logged)
            assert [float(y) for y in line.get_ydata()] == list(logged.values())
            assert line.get_color() == loss_colors[run.label]  # same colour as the loss curves
        vertical = [
            line for line in ax.get_lines()
            if len(line.get_xdata()) == 2 and len(set(line.get_xdata())) == 1
        ]  # fmt: skip
        assert sorted(line.get_xdata()[0] for line in vertical) == [150, 250]
        assert {line.get_color() for line in vertical} == {loss_colors["2-bit WinQ fixed"]}
    assert axes[-1].get_xlabel().startswith("training step")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["2-bit baseline", "2-bit WinQ fixed", "WinQ reset"]
    (png,) = save(fig, tmp_path / "out", "latent", ("png",))
    check_image(png)


def test_a_panel_no_run_logged_is_left_out(tmp_path):
    records = [r for r in _grid_records() if r["step"] == 0]  # one evaluation: no flips yet
    run = read_run(_write_run(tmp_path / "one-eval", records, {"bits": 3}))
    fig = plot_latent_mechanism([run])
    assert [ax.get_title() for ax in fig.axes] == [t for k, t, _ in LATENT_PANELS[1:]]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["3-bit baseline"]


def test_flips_decaying_by_orders_of_magnitude_get_a_log_axis(tmp_path):
    records = [{"step": s, "flip_fraction": f} for s, f in ((100, 0.3), (200, 0.01), (300, 1e-4))]
    fig = plot_latent_mechanism([read_run(_write_run(tmp_path / "r", records))])
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [0.3, 0.01, 1e-4]


def test_runs_without_the_fields_are_left_out(tmp_path, runs):
    old = read_run(_write_run(tmp_path / "old", _old_records(), {"bits": 2}))
    fp = read_run(_write_run(tmp_path / "fp", _old_records(), {"bits": 16}))
    with pytest.raises(ValueError, match="no run logged the latent grid"):
        plot_latent_mechanism([old, fp])
    fig = plot_latent_mechanism([old, *runs])  # mixed: only the runs that logged it
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["2-bit baseline", "2-bit WinQ fixed", "WinQ reset"]


def test_draw_all_writes_it_only_where_a_run_logged_the_fields(tmp_path, runs, check_image):
    _write_run(tmp_path / "in" / "fp", _old_records(), {"bits": 16})  # beside the 2-bit runs
    result = draw_all(load_inputs([tmp_path / "in"]), tmp_path / "out")
    names = {p.name for p in result.written}
    assert {"latent_mechanism_2bit.png", "latent_mechanism_2bit.pdf"} <= names
    assert not any(name.startswith("latent_mechanism_fp") for name in names)
    assert any(note.startswith("latent_mechanism_fp: no run logged") for note in result.skipped)
    check_image(tmp_path / "out" / "latent_mechanism_2bit.png")
    assert (tmp_path / "out" / "latent_mechanism_2bit.pdf").read_bytes().startswith(b"%PDF")


def test_draw_all_without_the_fields_draws_nothing_and_does_not_fail(tmp_path):
    _write_run(tmp_path / "in" / "old", _old_records(), {"bits": 2, "winq": {"mode": "off"}})
    result = draw_all(load_inputs([tmp_path / "in"]), tmp_path / "out", formats=("png",))
    assert "loss_2bit.png" in {p.name for p in result.written}
    assert not list((tmp_path / "out").glob("latent_mechanism*"))
    assert any(note.startswith("latent_mechanism_2bit: ") for note in result.skipped)

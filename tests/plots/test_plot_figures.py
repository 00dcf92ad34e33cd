"""Every figure function on the miniature study: PNG and PDF written, readable, not blank."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pytest
from matplotlib.figure import Figure
from plot_fixtures import BASELINE_EVAL, write_run, write_spectrum

from winq.plots import (
    draw_all,
    format_step,
    load_inputs,
    plot_alpha_sweep,
    plot_density_over_training,
    plot_loss_curves,
    plot_magnitudes_by_bits,
    plot_spectrum_over_training,
    save,
    style,
)


def _save_and_check(fig, tmp_path, name, check_image):
    assert isinstance(fig, Figure)
    png, pdf = save(fig, tmp_path, name)
    assert png == tmp_path / f"{name}.png" and pdf == tmp_path / f"{name}.pdf"
    check_image(png)
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files


def _runs(inputs, bits):
    return [run for run in inputs.runs if run.bits == bits]


def test_density_over_training(inputs, tmp_path, check_image):
    run = next(r for r in inputs.runs if r.label == "2-bit baseline")
    fig = plot_density_over_training(run.spectra, title=run.label, eps=1.5e-3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["step 0 of 2-bit QAT", "step 500 of 2-bit QAT", "step 1k of 2-bit QAT"]
    for ax in fig.axes:
        assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((1e-9, 1.0))
    _save_and_check(fig, tmp_path, "density", check_image)


def test_density_with_another_sigma_and_many_steps(tmp_path, check_image):
    spectra_dir = tmp_path / "spectra"
    for i, step in enumerate(range(0, 9000, 1000)):
        write_spectrum(spectra_dir / f"s{i}", bits=1.58, step=step, seed=i)
    spectra = load_inputs([spectra_dir]).spectra
    fig = plot_density_over_training(spectra, sigma=0.05, max_panels=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "step 0 of 1.58-bit QAT" and titles[-1] == "step 8k of 1.58-bit QAT"
    assert len(titles) == 4
    _save_and_check(fig, tmp_path, "density_sigma", check_image)


def test_magnitudes_by_bits(inputs, tmp_path, check_image):
    fig = plot_magnitudes_by_bits(inputs.spectra, eps=1.5e-3)
    assert [ax.get_title() for ax in fig.axes][:2] == ["|λ|max", "|λmin|"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1-bit", "2-bit", "3-bit"]
    _save_and_check(fig, tmp_path, "magnitudes", check_image)


def test_magnitudes_at_common_steps(inputs, tmp_path, check_image):
    spectra = [s for s in inputs.spectra if s.bits in (1, 2)]  # both measured at 0, 500, 1000
    fig = plot_magnitudes_by_bits(spectra)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["step 0", "step 500", "step 1k"]
    _save_and_check(fig, tmp_path, "magnitudes_steps", check_image)


def test_spectrum_over_training_marks_resets(inputs, tmp_path, check_image):
    runs = _runs(inputs, 2)
    fig = plot_spectrum_over_training(runs, eps=1.5e-3)
    vertical = [
        line
        for line in fig.axes[0].get_lines()
        if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2
    ]
    assert sorted(line.get_xdata()[0] for line in vertical) == [250, 300, 500, 750, 800]
    _save_and_check(fig, tmp_path, "over_training", check_image)


def test_alpha_sweep_with_error_bars(inputs, tmp_path, check_image):
    fig = plot_alpha_sweep(inputs.spectra, eps=1.5e-3)
    ax = fig.axes[0]
    assert "95% interval over 6 probes" in ax.get_legend().get_title().get_text()
    assert ax.containers and ax.containers[0].has_yerr
    _save_and_check(fig, tmp_path, "alpha", check_image)


def test_alpha_sweep_broadened_mass(inputs, tmp_path, check_image):
    fig = plot_alpha_sweep(inputs.spectra, eps=1.5e-3, mass_sigma=5e-3)
    ax = fig.axes[0]
    assert "σ = 0.005" in ax.get_ylabel()
    sweep = sorted((s for s in inputs.spectra if s.alpha is not None), key=lambda s: s.alpha)
    expected = [s.mass("near_zero", 1.5e-3, 5e-3)[0].value for s in sweep]
    drawn = np.asarray(ax.get_lines()[0].get_ydata(), dtype=float)
    np.testing.assert_allclose(drawn, expected, rtol=1e-12)
    assert not np.allclose(drawn, [s.mass("near_zero", 1.5e-3)[0].value for s in sweep])
    _save_and_check(fig, tmp_path, "alpha_broadened", check_image)


def test_loss_curves_with_speedup(inputs, tmp_path, check_image):
    fig = plot_loss_curves(_runs(inputs, 2))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "2-bit WinQ fixed — 2.50× (400 vs 1000 steps)" in legend
    assert "2-bit WinQ guided — not reached" in legend
    _save_and_check(fig, tmp_path, "loss", check_image)


def test_figure_functions_refuse_inputs_they_cannot_draw(inputs):
    no_sweep = [s for s in inputs.spectra if s.alpha is None]
    one_bit = [s for s in inputs.spectra if s.bits == 1]
    with pytest.raises(ValueError, match="two or more α"):
        plot_alpha_sweep(no_sweep)
    with pytest.raises(ValueError, match="two or more bit widths"):
        plot_magnitudes_by_bits(one_bit)
    with pytest.raises(ValueError, match="training step"):
        plot_density_over_training([s for s in inputs.spectra if s.alpha is not None])
    with pytest.raises(ValueError, match="no run"):
        plot_spectrum_over_training([])
    with pytest.raises(ValueError, match="no run"):
        plot_loss_curves([])


def test_style_is_scoped():
    before = mpl.rcParams["font.size"]
    with style():
        assert mpl.rcParams["axes.spines.top"] is False
    assert mpl.rcParams["font.size"] == before


def test_format_step():
    assert [format_step(s) for s in (0, 999, 1000, 1500, 2000, 240000, 2_500_000, None)] == [
        "0",
        "999",
        "1k",
        "1.5k",
        "2k",
        "240k",
        "2.5M",
        "?",
    ]


def test_draw_all_on_the_study(inputs, tmp_path, check_image):
    result = draw_all(inputs, tmp_path)
    names = {p.name for p in result.written}
    expected = {
        "density_1bit-baseline",
        "density_2bit-baseline",
        "density_2bit-winq-fixed",
        "density_3bit-spectra",
        "magnitudes_by_bits",
        "spectrum_over_training_1bit",
        "spectrum_over_training_2bit",
        "loss_1bit",
        "loss_2bit",
        "latent_mechanism_2bit",
        "alpha_sweep",
    }
    assert names == {f"{n}.{ext}" for n in expected for ext in ("png", "pdf")} | {
        "summary_spectra.csv",
        "summary_runs.csv",
        "summary.md",
    }
    assert [note.split(":")[0] for note in result.skipped] == ["latent_mechanism_1bit"]
    for name in expected:
        check_image(tmp_path / f"{name}.png")


def test_draw_all_skips_what_the_inputs_do_not_support(tmp_path, check_image):
    write_spectrum(tmp_path / "in" / "one", bits=2, step=100)
    result = draw_all(load_inputs([tmp_path / "in"]), tmp_path / "out", formats=("png",))
    names = sorted(p.name for p in result.written)
    assert names == ["density_2bit-spectra.png", "summary.md", "summary_spectra.csv"]
    check_image(tmp_path / "out" / "density_2bit-spectra.png")
    skipped = " | ".join(result.skipped)
    assert "magnitudes_by_bits" in skipped and "alpha_sweep" in skipped
    assert "no run folders" in skipped


def test_draw_all_runs_without_spectra(tmp_path, check_image):
    write_run(tmp_path / "in" / "r", bits=3, mode="off", eval_losses=BASELINE_EVAL)
    result = draw_all(load_inputs([tmp_path / "in"]), tmp_path / "out", formats=("png",))
    assert "loss_3bit.png" in {p.name for p in result.written}
    check_image(tmp_path / "out" / "loss_3bit.png")
    assert any(note.startswith("spectrum_over_training_3bit") for note in result.skipped)

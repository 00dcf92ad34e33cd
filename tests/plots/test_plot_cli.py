"""``winq-plot``: output on good inputs, exit 2 with one line on stderr on bad ones; no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from plot_fixtures import write_spectrum

from winq.plots.cli import main


def _winq_plot(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("WINQ_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "winq.plots.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def _assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("winq-plot: error:")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_import_does_not_import_torch():
    code = (
        "import sys, winq.plots, winq.plots.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plots_the_study_in_process(study, tmp_path, capsys):
    assert main([str(study), "--out", str(tmp_path / "figs"), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert "read 16 spectra and 4 runs" in out
    assert f"wrote {tmp_path / 'figs' / 'loss_2bit.png'}" in out
    assert not list((tmp_path / "figs").glob("*.pdf"))


def test_broadened_mass_flag(study, tmp_path, capsys):
    out = tmp_path / "figs"
    argv = [str(study), "--out", str(out), "--format", "png", "--mass-sigma", "5e-3"]
    assert main(argv) == 0
    assert (out / "alpha_sweep.png").is_file() and (out / "magnitudes_by_bits.png").is_file()


def test_cli_subprocess_end_to_end(tmp_path):
    write_spectrum(tmp_path / "in" / "s", bits=2, step=10)
    result = _winq_plot(tmp_path / "in", "--out", tmp_path / "out", "--eps", "1e-3")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "density_2bit-spectra.png").is_file()
    assert (tmp_path / "out" / "density_2bit-spectra.pdf").is_file()
    assert "skipped alpha_sweep" in result.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "file", "corrupt"])
def test_bad_inputs_exit_2_with_one_line(tmp_path, case):
    if case == "missing":
        path, fragment = tmp_path / "does-not-exist", "no such file or directory"
    elif case == "empty":
        path, fragment = tmp_path / "empty", "nothing to plot"
        (path / "sub").mkdir(parents=True)
        (path / "notes.txt").write_text("no results here")
    elif case == "file":
        path, fragment = tmp_path / "spectrum.json", "is a file"
        path.write_text("{}")
    else:
        path, fragment = tmp_path / "bad", "not valid JSON"
        path.mkdir()
        (path / "spectrum.json").write_text('{"kind": "winq-spec')
    result = _winq_plot(path, "--out", tmp_path / "out")
    _assert_usage_error(result, fragment, str(path))
    assert not (tmp_path / "out").exists()


def test_unwritable_out_exits_2(tmp_path):
    write_spectrum(tmp_path / "in" / "s", bits=2, step=10)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        result = _winq_plot(tmp_path / "in", "--out", out)
        _assert_usage_error(result, "--out")


@pytest.mark.parametrize(
    "args",
    [["--eps", "-1"], ["--sigma", "nan"], ["--mass-sigma", "0"], ["--format", "gif"], []],
    ids=["eps", "sigma", "mass-sigma", "format", "no-out"],
)
def test_bad_flags_exit_2(study, tmp_path, args, capsys):
    argv = [str(study), *args]
    if args:
        argv += ["--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("winq-plot: error:")

"""``winq-reproduce`` end to end at a miniature size: every stage's files, resuming after a
failure without redoing finished stages, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from winq.analysis import Spectrum
from winq.app import study
from winq.app.study import main

MINI = ["--bits", "2", "1.58", "--steps", "8", "--batch-size", "2", "--seq-len", "16",
        "--eval-every", "2", "--eval-batches", "1", "--probes", "2", "--lanczos-steps", "4",
        "--spectrum-batch-size", "2", "--alphas", "0,0.2,1", "--eval-limit", "8",
        "--no-progress"]  # fmt: skip


def mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_study_end_to_end_and_resume(fp_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    args = ["--init", str(fp_checkpoint), "--out", str(out), *MINI]

    # an interruption after the runs and spectra (the sweep fails): exit 1, one line
    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(study, "alpha_sweep", broken)
    assert main(args) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("simulated failure")
    monkeypatch.undo()
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "w1.58-baseline", "w1.58-fixed", "w2-baseline", "w2-fixed", "w2-guided"]  # fmt: skip
    done = mtimes(runs)
    assert not (out / "REPORT.md").exists()

    assert main(args) == 0  # resumes: runs and spectra untouched, the rest produced
    assert {p: t for p, t in mtimes(runs).items() if p in done} == done
    # spectra: step 0 and every checkpoint (every quarter) at the sweep bits, else 0 and end
    for name in ("w2-baseline", "w2-fixed", "w2-guided"):
        steps = sorted(p.name for p in (runs / name / "spectra").iterdir())
        assert steps == [f"step_{s:06d}" for s in (0, 2, 4, 6, 8)], (name, steps)
    for name in ("w1.58-baseline", "w1.58-fixed"):
        steps = sorted(p.name for p in (runs / name / "spectra").iterdir())
        assert steps == ["step_000000", "step_000008"]
    last = Spectrum.load(runs / "w2-baseline" / "spectra" / "step_000008")
    assert last.metadata["step"] == 8 and last.metadata["bits"] == 2
    assert last.metadata["clipped_fraction"] is not None
    fixed = [json.loads(line) for line in (runs / "w2-fixed" / "metrics.jsonl").open()]
    assert [r["step"] for r in fixed if "reset" in r] == [2, 4, 6]  # 3 resets, every quarter
    alphas = sorted(Spectrum.load(p).metadata["alpha"] for p in (out / "alpha_sweep").iterdir())
    assert alphas == [0.0, 0.2, 1.0]

    figures = out / "figures"
    expected = ["alpha_sweep", "magnitudes_by_bits", "spectrum_over_training_2bit",
                "loss_2bit", "loss_1p58bit", "density_2bit-baseline"]  # fmt: skip
    for name in expected:
        for suffix in (".png", ".pdf"):
            assert (figures / f"{name}{suffix}").is_file(), name + suffix
        with Image.open(figures / f"{name}.png") as image:
            assert np.asarray(image.convert("L"), dtype=float).var() > 10  # not blank
    for table in ("summary.md", "summary_runs.csv", "summary_spectra.csv"):
        assert (figures / table).is_file()

    report = (out / "REPORT.md").read_text()
    for finding in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)"):
        assert f"**{finding}" in report, finding
    # the report's numbers are the saved ones
    assert f"{last.summary()['clipped_fraction']:.4g}" in report
    assert "figures/alpha_sweep.png" in report
    # zero-shot scores of the FP model and every run, each with its interval over the items
    assert "## Zero-shot scores on the embedded benchmark" in report
    for name in ("fp", "w2-baseline", "w2-guided", "w1.58-fixed"):
        saved = json.loads((out / "eval" / name / "results.json").read_text())
        accuracy = next(m for t in saved["tasks"] for m in t["metrics"] if m["metric"] == "acc")
        assert accuracy["n"] == 8 and accuracy["low"] <= accuracy["value"] <= accuracy["high"]
        assert f"| {name} | " in report

    before = mtimes(out)
    assert main(args) == 0  # a finished study only redraws
    after = mtimes(out)
    assert {p: t for p, t in after.items() if "runs" in p.parts or "alpha_sweep" in p.parts} == {
        p: t for p, t in before.items() if "runs" in p.parts or "alpha_sweep" in p.parts
    }


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--bits", "5"], "--bits 5"),
        (["--bits", "16"], "full precision"),
        (["--bits", "2", "--sweep-bits", "3"], "not among"),
        (["--alphas", "0,2"], "--alphas"),
        (["--steps", "0"], "positive integer"),
        (["--preset", "huge"], "invalid choice"),
        (["--init", "{tmp}/missing"], "does not exist"),
        (["--out", "{tmp}/a_file"], "not a folder"),
        (["--out", "{tmp}/other"], "not a study"),
    ],
)
def test_bad_inputs_exit_2(tmp_path, capsys, extra, needle):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    extra = [e.format(tmp=tmp_path) for e in extra]
    base = ["--out", str(tmp_path / "study")] if "--out" not in extra else []
    before = mtimes(tmp_path)
    assert main([*base, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert mtimes(tmp_path) == before and not (tmp_path / "study").exists()


def test_changed_settings_are_refused(fp_checkpoint, tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    config = study._config_from_args(study.build_parser().parse_args(
        ["--init", str(fp_checkpoint), *MINI]))  # fmt: skip
    from dataclasses import asdict

    (out / study.STUDY_FILE).write_text(json.dumps(asdict(config)))
    assert main(["--init", str(fp_checkpoint), "--out", str(out), *MINI, "--seed", "1"]) == 2
    assert "seed" in capsys.readouterr().err

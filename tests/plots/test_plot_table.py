"""The summary table copies every number from the inputs exactly."""

from __future__ import annotations

import csv
import json

import pytest

from winq.plots import write_summary


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(cell: str):
    return None if cell == "" else float(cell)


@pytest.fixture(scope="module")
def tables(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    written = write_summary(inputs, out)
    assert {p.name for p in written} == {"summary_spectra.csv", "summary_runs.csv", "summary.md"}
    return out


def test_spectrum_rows_equal_the_saved_json(study, tables):
    rows = _read_csv(tables / "summary_spectra.csv")
    files = sorted(study.rglob("spectrum.json"))
    assert len(rows) == len(files) == 16
    by_path = {row["path"]: row for row in rows}
    for file in files:
        document = json.loads(file.read_text())
        row = by_path[str(file.parent.relative_to(study))]
        summary, metadata = document["summary"], document["metadata"]
        for key in ("lambda_max", "lambda_min", "near_zero_mass", "near_zero_eps"):
            assert _number(row[key]) == summary[key], (file, key)
        for key in ("negative_mass", "clipped_fraction", "trace"):
            assert _number(row[key]) == summary[key], (file, key)
        assert _number(row["bits"]) == metadata["bits"]
        assert _number(row["step"]) == metadata["step"]
        assert _number(row["alpha"]) == metadata["alpha"]


def test_run_rows_equal_the_metrics(study, tables):
    rows = {row["run"]: row for row in _read_csv(tables / "summary_runs.csv")}
    assert list(rows) == [
        "1-bit baseline",
        "2-bit baseline",
        "2-bit WinQ fixed",
        "2-bit WinQ guided",
    ]
    for row in rows.values():
        lines = []
        for text in (study / row["path"] / "metrics.jsonl").read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                pass  # the truncated tail
        losses = [line["loss"] for line in lines if "loss" in line]
        evals = [line["eval_loss"] for line in lines if "eval_loss" in line]
        assert float(row["final_loss"]) == losses[-1]
        assert float(row["final_eval_loss"]) == evals[-1]
        assert int(row["steps"]) == max(line["step"] for line in lines)
        assert int(row["resets"]) == sum("reset" in line for line in lines)
    fixed, guided = rows["2-bit WinQ fixed"], rows["2-bit WinQ guided"]
    assert (fixed["baseline"], fixed["steps_to_baseline_loss"], fixed["speedup"]) == (
        "2-bit baseline",
        "400",
        "2.5",
    )
    assert fixed["reached_baseline_loss"] == "True"
    assert (guided["reached_baseline_loss"], guided["speedup"]) == ("False", "")
    assert rows["2-bit baseline"]["speedup"] == "" and rows["2-bit baseline"]["baseline"] == ""


def test_csv_masses_carry_intervals_and_markdown_rounds_to_them(tables):
    rows = _read_csv(tables / "summary_spectra.csv")
    markdown = (tables / "summary.md").read_text()
    assert "## Spectra" in markdown and "## Runs" in markdown
    lines = {line.split(" | ")[0][2:]: line for line in markdown.splitlines()
             if line.startswith("| ")}  # fmt: skip
    for row in rows:
        for key in ("near_zero_mass", "negative_mass"):
            value, low, high = (_number(row[f"{key}{s}"]) for s in ("", "_low", "_high"))
            assert row[f"{key}_resolved"] in ("True", "False", "")
            if low is not None:
                assert 0.0 <= low <= value <= high <= 1.0, (row["path"], key)
        line = lines[row["path"]]
        lambda_max = _number(row["lambda_max"])
        assert f"{lambda_max:.4g} [" in line  # λmax with its range over probes
        near, low, high = (_number(row[f"near_zero_mass{s}"]) for s in ("", "_low", "_high"))
        if low is not None and high > low:
            assert " ± " in line and repr(near) not in line  # rounded, never 16 digits
    rows = [line for line in markdown.splitlines() if line.startswith("| runs/qat-2bit-fixed |")]
    assert len(rows) == 1 and "| 400 | 2.5 |" in rows[0]

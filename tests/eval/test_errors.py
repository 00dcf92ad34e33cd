"""Bad input to winq-eval: one line on stderr naming the problem, exit code 2, nothing written.

Most rows call the command's ``main`` in this process (what the console script calls); the
offline hub task runs as a subprocess so that it sees an empty Hugging Face cache.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from winq.eval.cli import main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("winq-eval: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_an_unknown_task_names_close_matches(fp_checkpoint, tmp_path, capsys):
    out = tmp_path / "scores"
    code = main(["--ckpt", str(fp_checkpoint), "--tasks", "arc_easyy", "--out", str(out)])
    line = _one_line(capsys)
    assert code == 2
    assert "unknown task 'arc_easyy'" in line and "did you mean arc_easy" in line
    assert not out.exists()


def test_a_missing_task_file(fp_checkpoint, tmp_path, capsys):
    out = tmp_path / "scores"
    missing = tmp_path / "nope.yaml"
    code = main(["--ckpt", str(fp_checkpoint), "--tasks", str(missing), "--out", str(out)])
    assert code == 2
    assert f"task file '{missing}' does not exist" in _one_line(capsys)
    assert not out.exists()


def test_an_offline_hub_task_without_a_cache(fp_checkpoint, tmp_path):
    out = tmp_path / "scores"
    empty = tmp_path / "hf-home"
    env = dict(os.environ, HF_HOME=str(empty), HF_DATASETS_CACHE=str(empty / "datasets"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # fmt: skip
    command = [sys.executable, "-m", "winq.eval.cli", "--ckpt", str(fp_checkpoint),
               "--tasks", "arc_easy", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("winq-eval: error: task 'arc_easy' cannot load its data")
    assert "offline" in lines[0] and "dataset_path: json" in lines[0]
    assert not out.exists()


def test_an_existing_out_needs_overwrite(fp_checkpoint, tmp_path, capsys):
    out = tmp_path / "scores"
    out.mkdir()
    (out / "results.json").write_text("earlier results")
    code = main(["--ckpt", str(fp_checkpoint), "--tasks", "shakespeare", "--out", str(out)])
    assert code == 2
    assert "already holds results; pass --overwrite" in _one_line(capsys)
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert (out / "results.json").read_text() == "earlier results"


def test_overwrite_never_replaces_a_foreign_folder(fp_checkpoint, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    argv = ["--ckpt", str(fp_checkpoint), "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    assert "not a winq-eval results folder" in _one_line(capsys)
    assert (out / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "--limit: must be a positive item count"),
        (["--limit", "2.5"], "--limit: must be a whole item count"),
        (["--bits", "5"], "--bits: must be one of 1, 1.58, 2, 3, 4, 16, got 5"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer or 'auto'"),
        (["--tasks", " , "], "--tasks: no task names given"),
        (["--ckpt", "/nonexistent/ckpt"], "--ckpt '/nonexistent/ckpt' does not exist"),
    ],
)
def test_bad_flags(argv, message, tmp_path, capsys):
    out = tmp_path / "scores"
    code = main([*argv, "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_task_file_whose_data_is_missing(fp_checkpoint, tmp_path, capsys):
    task = tmp_path / "local.yaml"
    task.write_text(
        "task: local_lines\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {tmp_path / 'missing.jsonl'}}}}}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
    )
    out = tmp_path / "scores"
    code = main(["--ckpt", str(fp_checkpoint), "--tasks", str(task), "--out", str(out)])
    assert code == 2
    line = _one_line(capsys)
    assert f"task '{task}' cannot load its data" in line and "missing.jsonl" in line
    assert not out.exists()

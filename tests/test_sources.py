"""One rule tells a local path from a dataset name, for every command (winq.sources)."""

from __future__ import annotations

import pytest

from winq.sources import describe_source, looks_like_path


@pytest.mark.parametrize(
    ("text", "is_path"),
    [
        ("Salesforce/wikitext", False),  # owner/name: a hub dataset
        ("wikitext", False),
        ("./x", True),
        ("../x", True),
        ("/abs/x", True),
        ("~/x", True),
        ("x.jsonl", True),
        ("data/train.parquet", True),
        ("notes.md", True),
        ("dump.json.gz", True),
        ("a/b/c", True),  # hub names have at most one slash
        ("corpus/", True),
    ],
)
def test_the_rule(text, is_path):
    assert looks_like_path(text) is is_path


def test_an_existing_folder_or_file_is_a_path_whatever_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    (tmp_path / "corpus").write_text("text")
    assert looks_like_path("owner/name") and looks_like_path("corpus")
    assert describe_source("owner/name") == "data folder 'owner/name'"
    assert describe_source("corpus") == "data file 'corpus'"
    assert describe_source("Salesforce/wikitext") == "dataset 'Salesforce/wikitext'"
    assert describe_source(None) == "the embedded corpus"


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--data", "Salesforce/wikitext", "dataset 'Salesforce/wikitext'"),
        ("--data", "missing.jsonl", "missing.jsonl"),
    ],
)
def test_every_command_applies_it(fp_checkpoint, tmp_path, capsys, flag, value, expected):
    """A hub name is tried as a dataset (offline: 'not found'), never refused as a missing
    path; a missing file is refused before anything is loaded."""
    from winq.app.spectrum import main as spectrum
    from winq.train.cli import main as train

    args = [flag, value, "--batches", "1", "--batch-size", "1", "--seq-len", "8"]
    assert spectrum(["--ckpt", str(fp_checkpoint), *args, "--out", str(tmp_path / "s")]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1
    if "/" in value:
        assert "does not exist" not in error
    assert train(["--init", str(fp_checkpoint), flag, value, "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()

"""Crash-safe folder output: the atomic exchange, the two-rename fallback, failures."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from winq import io


def _folder(path, text):
    path.mkdir(parents=True)
    (path / "marker.txt").write_text(text)
    return path


def _exchange_supported(tmp_path) -> bool:
    a, b = _folder(tmp_path / "probe-a", "a"), _folder(tmp_path / "probe-b", "b")
    supported = io.exchange_paths(a, b)
    for p in (a, b):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    return supported


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_exchange_paths_swaps_two_folders(tmp_path):
    if not _exchange_supported(tmp_path):
        pytest.skip("this file system does not support RENAME_EXCHANGE")
    a, b = _folder(tmp_path / "a", "first"), _folder(tmp_path / "b", "second")
    assert io.exchange_paths(a, b) is True
    assert (a / "marker.txt").read_text() == "second"
    assert (b / "marker.txt").read_text() == "first"
    with pytest.raises(FileNotFoundError) as info:
        io.exchange_paths(a, tmp_path / "missing")
    assert info.value.errno == errno.ENOENT
    assert (a / "marker.txt").read_text() == "second"  # a failed call changed nothing


def test_exchange_paths_elsewhere_is_a_no(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    a, b = _folder(tmp_path / "a", "first"), _folder(tmp_path / "b", "second")
    assert io.exchange_paths(a, b) is False
    assert (a / "marker.txt").read_text() == "first"


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_atomic_dir_replaces_a_folder(monkeypatch, tmp_path, exchange):
    if exchange and not (sys.platform.startswith("linux") and _exchange_supported(tmp_path)):
        pytest.skip("no RENAME_EXCHANGE here")
    if not exchange:
        monkeypatch.setattr(io, "exchange_paths", lambda a, b: False)
    target = _folder(tmp_path / "ckpt", "old")
    moved = []
    real_replace = os.replace

    def replace(src, dst):
        moved.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with io.atomic_dir(target) as tmp:
        (tmp / "marker.txt").write_text("new")
        assert (target / "marker.txt").read_text() == "old"  # untouched until the block ends
    assert (target / "marker.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # neither the temporary nor the old copy
    # the exchange never takes the target away; the fallback renames it aside first
    aside = [dst for src, dst in moved if src == os.fspath(target)]
    assert (aside == []) if exchange else (len(aside) == 1 and ".ckpt.old." in aside[0])


def test_atomic_dir_failure_and_no_overwrite(tmp_path):
    target = _folder(tmp_path / "ckpt", "old")
    with pytest.raises(RuntimeError, match="disk full"), io.atomic_dir(target) as tmp:
        (tmp / "marker.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "marker.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    with pytest.raises(FileExistsError), io.atomic_dir(target, overwrite=False):
        pass
    with io.atomic_dir(tmp_path / "fresh" / "spectrum") as tmp:  # parents created
        (tmp / "marker.txt").write_text("new")
    assert (tmp_path / "fresh" / "spectrum" / "marker.txt").read_text() == "new"

"""The import layers (setup.cfg's import-linter contracts) hold, and the check can fail.

The violations below are injected into a staged copy of the package tree (links to the real
files, with one file or folder replaced by an edited copy), never into the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lint_layers  # noqa: E402


def test_the_repository_keeps_every_contract(tmp_path):
    lint_layers.stage(tmp_path)
    result = lint_layers.lint(tmp_path, quiet=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _replace_with_copy(link: Path, append: str) -> None:
    """Turn a staged link into a real copy and append code to it (a file) or add a module."""
    target = link.resolve()
    link.unlink()
    if target.is_dir():
        shutil.copytree(target, link, ignore=shutil.ignore_patterns("__pycache__"))
        (link / "leak.py").write_text(append)
    else:
        link.write_text(target.read_text() + append)


@pytest.mark.parametrize(
    ("where", "code", "contract"),
    [
        # a lazy import inside a function counts
        ("io.py", "\n\ndef _leak():\n    from winq.train import loop\n", "layers"),
        ("plots", "def leak():\n    import torch\n", "plots reads files"),
        ("plots", "def leak():\n    from winq.analysis import slq\n", "plots reads files"),
        ("analysis", "def leak():\n    import winq.app.study\n", "layers"),
        ("train", "def leak():\n    import winq.plots\n", "layers"),
    ],
)
def test_a_violation_breaks_a_contract(tmp_path, where, code, contract):
    package = lint_layers.stage(tmp_path)
    _replace_with_copy(package / where, code)
    result = lint_layers.lint(tmp_path, quiet=True)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout


def test_the_file_readers_import_no_torch():
    code = (
        "import sys\n"
        "import winq.plots, winq.runfiles, winq.spectrumfile, winq.quadrature, winq.sources\n"
        "import winq.plots.cli\n"
        "# every command parses its flags (and refuses bad ones) before torch is imported\n"
        "import winq.export.cli, winq.eval.cli, winq.train.cli, winq.app.spectrum, winq.app.study\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""Check winq's import layers with import-linter (``lint-imports``, contracts in setup.cfg).

setup.cfg maps five source folders under one import name (``winq``: winq/, ``winq.analysis``:
analysis/, ``winq.train``: train/, ``winq.plots``: plots/, ``winq.app``: app/), but
import-linter's graph builder (grimp) discovers modules by walking the root package's folder.
So this script lays the folders out as one package tree of symbolic links in a temporary
folder, puts it first on ``PYTHONPATH`` and runs ``lint-imports`` there; its exit code is
lint-imports'. Usage: ``python tools/lint_layers.py`` (from any folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"analysis": "analysis", "train": "train", "plots": "plots", "app": "app"}


def stage(destination: Path) -> Path:
    """Build ``destination/winq``: a link to every entry of winq/ and one per sub-package."""
    package = destination / "winq"
    package.mkdir()
    for entry in (ROOT / "winq").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to(ROOT / folder)
    return package


def lint(staged: Path, quiet: bool = False) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree staged in ``staged`` (the folder holding ``winq``)."""
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(staged), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [command, str(ROOT / "setup.cfg"), "--no-cache"],
        cwd=staged,
        env=env,
        capture_output=quiet,
        text=True,
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="winq-layers-") as tmp:
        stage(Path(tmp))
        return lint(Path(tmp)).returncode


if __name__ == "__main__":
    sys.exit(main())

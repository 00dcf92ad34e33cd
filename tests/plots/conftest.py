"""Fixtures for winq.plots: one miniature study on disk, built once per session."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from plot_fixtures import build_study

from winq.plots import load_inputs


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """Folder holding runs/ (four runs with spectra, resets, an α sweep) and loose/."""
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="session")
def inputs(study):
    return load_inputs([study])


def assert_image(path, min_variance: float = 1e-3) -> None:
    """A readable PNG that is not blank (pixel variance above ``min_variance``)."""
    assert path.is_file() and path.stat().st_size > 0, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.var(pixels[..., :3])) > min_variance, f"{path} looks blank"


@pytest.fixture
def check_image():
    return assert_image

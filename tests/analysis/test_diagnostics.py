"""Diagnostics on hand-made quadrature rules, where every answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from winq.analysis import (
    DEFAULT_GRID_POINTS,
    DEFAULT_SIGMA,
    DEFAULT_ZERO_EPS,
    Spectrum,
    abs_quantiles,
    abs_ratio,
    density,
    lambda_max,
    lambda_min,
    near_zero_mass,
    near_zero_resolution,
    negative_mass,
)

NODES = np.array([[-0.5, -1e-4, 2e-4, 1.0, 4.0], [-0.2, 0.0, 0.5, 2.0, 3.0]])
WEIGHTS = np.array([[0.1, 0.2, 0.3, 0.2, 0.2], [0.25, 0.25, 0.25, 0.15, 0.1]])


def test_paper_defaults():
    assert (DEFAULT_SIGMA, DEFAULT_GRID_POINTS, DEFAULT_ZERO_EPS) == (5e-3, 400, 1.5e-3)


def test_extremes_masses_and_ratio():
    assert lambda_max(NODES, WEIGHTS) == 4.0 and lambda_min(NODES, WEIGHTS) == -0.5
    assert abs_ratio(NODES, WEIGHTS) == pytest.approx(0.125)
    # negative: probe 0 has 0.1 + 0.2, probe 1 has 0.25 -> mean 0.275
    assert negative_mass(NODES, WEIGHTS) == pytest.approx(0.275)
    # |θ| < 1.5e-3: probe 0 has 0.2 + 0.3, probe 1 has 0.25 -> 0.375
    assert near_zero_mass(NODES, WEIGHTS) == pytest.approx(0.375)
    assert near_zero_mass(NODES, WEIGHTS, eps=1.5e-4) == pytest.approx((0.2 + 0.25) / 2)
    # relative: ε·λmax = 0.1·4 = 0.4 -> probe 0: 0.2 + 0.3, probe 1: -0.2 and 0.0 -> 0.5
    assert near_zero_mass(NODES, WEIGHTS, eps=0.1, relative=True) == pytest.approx(0.5)
    # 0.2·4 = 0.8 -> probe 0 adds -0.5 (0.6), probe 1 adds 0.5 (0.75)
    assert near_zero_mass(NODES, WEIGHTS, eps=0.2, relative=True) == pytest.approx((0.6 + 0.75) / 2)


def test_quantiles_of_absolute_values():
    quantiles = abs_quantiles(NODES, WEIGHTS, quantiles=(0.1, 0.5, 0.99))
    # pooled |θ| with weight/2: 0(.125) 1e-4(.1) 2e-4(.15) .2(.125) .5(.05) .5(.125) 1(.1) 2(.075) 3(.05) 4(.1)
    # cumulative .125 .225 .375 .5 ...: the median is the first value reaching 0.5
    assert quantiles == {"0.1": 0.0, "0.5": 0.2, "0.99": 4.0}


def test_density_integrates_to_one_and_is_centred():
    grid = np.linspace(-2, 6, 20001)
    _, values = density(NODES, WEIGHTS, grid=grid, sigma=0.05)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(values * grid, grid) == pytest.approx((NODES * WEIGHTS).sum() / 2, abs=1e-6)
    default_grid, default_values = density(NODES, WEIGHTS)
    assert default_grid.shape == default_values.shape == (400,)
    assert default_grid[0] == pytest.approx(-0.5 - 5 * DEFAULT_SIGMA)
    with pytest.raises(ValueError, match="sigma"):
        density(NODES, WEIGHTS, sigma=0.0)


def test_resolution_is_the_cell_around_the_node_nearest_zero():
    # probe 0: nearest zero is -1e-4; half-way to -0.5 is 0.24995 and to 2e-4 is 1.5e-4 -> 0.2501
    # probe 1: nearest is 0.0, cell from -0.1 to 0.25 -> width 0.35; median of the two
    assert near_zero_resolution(NODES, WEIGHTS) == pytest.approx((0.2501 + 0.35) / 2)


def test_summary_records_its_conventions():
    spectrum = Spectrum(NODES, WEIGHTS, metadata={"num_params": 10, "clipped_fraction": 0.1})
    summary = spectrum.summary(eps=0.1, relative=True)
    assert summary["near_zero_eps"] == 0.1
    assert summary["near_zero_convention"] == "relative_to_lambda_max"
    assert summary["near_zero_threshold"] == pytest.approx(0.4)
    assert summary["clipped_fraction"] == 0.1
    assert summary["trace_method"] == "slq"
    assert summary["trace"] == pytest.approx(10 * (NODES * WEIGHTS).sum(axis=1).mean())
    assert summary["density_sigma"] == DEFAULT_SIGMA
    empty = Spectrum(np.zeros((0, 0)), np.zeros((0, 0)))
    assert math.isnan(empty.summary()["lambda_max"])

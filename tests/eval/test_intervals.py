"""The intervals: Wilson against scipy's implementation and by its exact coverage; the ratio
bootstrap by closed-form edge cases and by simulated coverage (fixed seeds, stated tolerance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from winq.eval.intervals import (
    bootstrap_interval,
    bootstrap_ratio_interval,
    normal_quantile,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("successes", "trials"), [(0, 10), (10, 10), (3, 10), (81, 263), (412, 1000)]
)
def test_wilson_matches_scipy(successes, trials):
    expected = stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(successes, trials)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_wilson_closed_form_at_zero_successes():
    # p = 0: the interval is [0, z²/(n + z²)]
    z = normal_quantile(0.95)
    assert z == pytest.approx(1.959963984540054, abs=1e-12)
    low, high = wilson_interval(0, 20)
    assert low == 0.0
    assert high == pytest.approx(z * z / (20 + z * z), abs=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_wilson_exact_coverage_is_near_nominal(p):
    # Coverage summed exactly over the binomial distribution (no sampling): at n = 200 the
    # Wilson interval's coverage oscillates around 95% within about a point (Brown, Cai &
    # DasGupta 2001, fig. 5).
    n = 200
    pmf = stats.binom.pmf(np.arange(n + 1), n, p)
    covered = [wilson_interval(k, n) for k in range(n + 1)]
    coverage = sum(w for w, (lo, hi) in zip(pmf, covered) if lo <= p <= hi)
    assert 0.93 <= coverage <= 0.97


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"successes must be in \[0, 5\], got 6"):
        wilson_interval(6, 5)


def test_ratio_bootstrap_collapses_on_a_constant_ratio():
    # every document has the same log-likelihood per byte: every resample gives the same ratio
    bytes_ = np.array([10.0, 200.0, 37.0, 5.0])
    low, high = bootstrap_ratio_interval(-0.7 * bytes_, bytes_, lambda r: math.exp(-r))
    assert low == pytest.approx(math.exp(0.7), rel=1e-12)
    assert high == pytest.approx(math.exp(0.7), rel=1e-12)


def test_ratio_bootstrap_orders_a_decreasing_transform_and_is_seeded():
    rng = np.random.default_rng(0)
    weights = rng.integers(50, 500, size=40).astype(float)
    lls = -weights * rng.uniform(0.5, 1.5, size=40)
    first = bootstrap_ratio_interval(lls, weights, lambda r: math.exp(-r), seed=3)
    again = bootstrap_ratio_interval(lls, weights, lambda r: math.exp(-r), seed=3)
    assert first == again
    point = math.exp(-lls.sum() / weights.sum())
    assert first[0] < point < first[1]


def test_ratio_bootstrap_coverage():
    # 300 simulated benchmarks of 60 documents: lengths vary 20..400 units, the per-unit
    # log-likelihood of a document is -1 + N(0, 0.3²)/sqrt(length/100) (longer documents are
    # less noisy), so the token-weighted true ratio is exactly -1. The percentile bootstrap is
    # first-order accurate: its coverage should be within a few points of 95%; 300 replicates
    # give a binomial standard error of 1.3 points, so the window [0.89, 0.99] is ±4.5 of them.
    rng = np.random.default_rng(1234)
    hits = 0
    replicates = 300
    for replicate in range(replicates):
        units = rng.integers(20, 401, size=60).astype(float)
        rate = -1.0 + rng.normal(0.0, 0.3, size=60) / np.sqrt(units / 100)
        low, high = bootstrap_ratio_interval(rate * units, units, resamples=1000, seed=replicate)
        hits += low <= -1.0 <= high
    assert 0.89 <= hits / replicates <= 0.99


def test_ratio_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ratio_interval([])
    with pytest.raises(ValueError, match="3 numerators but 2 denominators"):
        bootstrap_ratio_interval([1.0, 2.0, 3.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.5"):
        bootstrap_ratio_interval([1.0], confidence=1.5)


def test_generic_bootstrap_of_a_median_brackets_it():
    values = list(np.random.default_rng(0).normal(3.0, 1.0, size=101))
    low, high = bootstrap_interval(values, lambda xs: float(np.median(xs)), resamples=300)
    assert low < float(np.median(values)) < high
    assert high - low < 1.0

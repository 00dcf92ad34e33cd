"""Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff 2021): unbiasedness and rates."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_cases import matrix_with_spectrum

from winq.analysis import DenseOperator, HessianOperator, hutchinson

SAMPLE_SIZES = (12, 48, 192)
SEEDS = range(30)


def rms_relative_errors(op, trace, method):
    errors = []
    for m in SAMPLE_SIZES:
        squared = [
            (hutchinson(op, samples=m, method=method, seed=s).estimate - trace) ** 2 for s in SEEDS
        ]
        errors.append(np.sqrt(np.mean(squared)) / abs(trace))
    return np.array(errors)


def test_convergence_rates():
    # PSD with eigenvalues 1/i: Hutchinson's error falls like m^-1/2, Hutch++'s like m^-1.
    # Root-mean-square error over 30 fixed seeds, log-log slope over m = 12, 48, 192.
    eigenvalues = 1.0 / np.arange(1, 301)
    op = DenseOperator(matrix_with_spectrum(eigenvalues))
    trace = eigenvalues.sum()
    plain = rms_relative_errors(op, trace, "hutchinson")
    plus = rms_relative_errors(op, trace, "hutch++")
    plain_slope = np.polyfit(np.log(SAMPLE_SIZES), np.log(plain), 1)[0]
    plus_slope = np.polyfit(np.log(SAMPLE_SIZES), np.log(plus), 1)[0]
    assert -0.7 < plain_slope < -0.3, plain_slope  # measured -0.50
    assert plus_slope < -0.9, plus_slope  # measured -1.18
    assert plus[-1] < plain[-1] / 3


def test_hutch_plus_plus_is_exact_on_low_rank():
    eigenvalues = np.zeros(80)
    eigenvalues[:5] = [9.0, -4.0, 3.0, 2.0, 1.0]
    op = DenseOperator(matrix_with_spectrum(eigenvalues))
    result = hutchinson(op, samples=30, method="hutch++", seed=1)  # sketch of 10 >= rank 5
    assert result.estimate == pytest.approx(11.0, abs=1e-10)
    assert result.low_rank_trace == pytest.approx(11.0, abs=1e-10)
    assert result.num_matvecs == 30 and len(result.samples) == 10


def test_hutchinson_is_within_its_standard_error(prescribed):
    matrix, eigenvalues = prescribed
    result = hutchinson(DenseOperator(matrix), samples=200, seed=0)
    assert abs(result.estimate - eigenvalues.sum()) < 4 * result.stderr
    assert result.method == "hutchinson" and result.num_matvecs == 200
    blocked = hutchinson(DenseOperator(matrix), samples=200, seed=0, block_size=16)
    assert blocked.estimate == pytest.approx(result.estimate, rel=1e-12)


def test_llama_trace(exact_llama, llama_reference):
    model, batches, names = exact_llama
    dense, _ = llama_reference
    op = HessianOperator(model, batches, params=names)
    result = hutchinson(op, samples=60, method="hutch++", seed=0, block_size=4)
    exact = float(dense.trace())
    assert abs(result.estimate - exact) < max(4 * result.stderr, 1e-9 * abs(exact))


def test_bad_arguments(prescribed):
    op = DenseOperator(prescribed[0])
    with pytest.raises(ValueError, match="method"):
        hutchinson(op, method="xtrace")
    with pytest.raises(ValueError, match="at least 3"):
        hutchinson(op, samples=2, method="hutch++")
    with pytest.raises(ValueError, match="samples"):
        hutchinson(op, samples=0)

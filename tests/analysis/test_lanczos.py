"""Lanczos against numpy.linalg.eigh: extremes, residuals, breakdown, basis offload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_cases import matrix_with_spectrum

from winq.analysis import DenseOperator, HessianOperator, lanczos


def test_full_reorth_extremes_match_eigh(prescribed):
    matrix, eigenvalues = prescribed
    result = lanczos(DenseOperator(matrix), steps=60, reorth="full", seed=0)
    # 1e-4 relative is the bar; with full reorth the isolated extremes are exact
    assert result.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-10)
    assert result.lambda_min == pytest.approx(eigenvalues[0], rel=1e-4)
    assert np.all(np.diff(result.eigenvalues) >= 0)
    assert result.alpha.dtype == np.float64 and result.beta.dtype == np.float64
    assert result.steps == 60 and not result.breakdown and result.num_matvecs == 60
    # every Ritz value lies inside the spectrum (Cauchy interlacing)
    assert result.eigenvalues.min() >= eigenvalues[0] - 1e-12
    assert result.eigenvalues.max() <= eigenvalues[-1] + 1e-12


def test_residual_estimates_equal_true_residuals(prescribed):
    matrix, _ = prescribed
    result = lanczos(DenseOperator(matrix), steps=40, reorth="full", true_residuals=True)
    assert result.true_residuals.shape == (40,)
    # |beta_m s_mj| is the exact residual norm when the basis is orthonormal
    np.testing.assert_allclose(result.residuals, result.true_residuals, rtol=1e-6, atol=1e-10)
    y = result.ritz_vectors.numpy()
    np.testing.assert_allclose(y.T @ y, np.eye(40), atol=1e-10)
    assert result.num_matvecs == 80
    k = lanczos(DenseOperator(matrix), steps=40, reorth="full", true_residuals=2)
    assert list(k.ritz_indices) == [0, 1, 38, 39]
    np.testing.assert_allclose(k.true_residuals, result.true_residuals[[0, 1, 38, 39]], atol=1e-10)


def test_without_reorth_extremes_still_converge(prescribed):
    matrix, eigenvalues = prescribed
    result = lanczos(DenseOperator(matrix), steps=120, reorth="none", seed=3)
    assert result.lambda_max == pytest.approx(eigenvalues[-1], rel=1e-8)
    assert result.lambda_min == pytest.approx(eigenvalues[0], rel=1e-4)
    assert np.isfinite(result.eigenvalues).all()


def test_basis_on_cpu_gives_the_same_result(prescribed):
    matrix, _ = prescribed
    here = lanczos(DenseOperator(matrix), steps=50, reorth="full", seed=1)
    offloaded = lanczos(DenseOperator(matrix), steps=50, reorth="full", seed=1, basis_device="cpu")
    np.testing.assert_array_equal(here.eigenvalues, offloaded.eigenvalues)
    np.testing.assert_array_equal(here.alpha, offloaded.alpha)


def test_zero_operator_breaks_down_to_one_exact_node():
    result = lanczos(DenseOperator(np.zeros((6, 6))), steps=5)
    assert result.breakdown and result.steps == 1
    assert list(result.eigenvalues) == [0.0] and list(result.weights) == [1.0]
    assert list(result.residuals) == [0.0]


@pytest.mark.parametrize("reorth", ["none", "full"])
def test_rank_one_operator_gives_two_exact_nodes(reorth):
    u = np.random.default_rng(0).standard_normal(40)
    result = lanczos(DenseOperator(2.5 * np.outer(u, u)), steps=10, reorth=reorth)
    assert result.breakdown and result.steps == 2
    np.testing.assert_allclose(result.eigenvalues, [0.0, 2.5 * u @ u], atol=1e-12, rtol=1e-13)
    assert np.isfinite(result.weights).all() and result.weights.sum() == pytest.approx(1.0)


def test_invariant_subspace_gives_the_exact_spectral_measure():
    eigenvalues = np.array([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0, 7.0, 9.0])
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    matrix = (q * eigenvalues) @ q.T
    coefficients = np.array([0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 3.0, 0.0])  # 4 eigenvectors
    start = q @ coefficients
    result = lanczos(DenseOperator(matrix), steps=8, v0=torch.as_tensor(start), reorth="none")
    assert result.breakdown and result.steps == 4
    np.testing.assert_allclose(result.eigenvalues, [-1.0, 0.5, 4.0, 7.0], atol=1e-12)
    expected = coefficients[[1, 3, 5, 6]] ** 2 / (coefficients**2).sum()
    np.testing.assert_allclose(result.weights, expected, atol=1e-12)


def test_steps_are_capped_at_the_dimension():
    matrix = matrix_with_spectrum(np.arange(1.0, 6.0))
    result = lanczos(DenseOperator(matrix), steps=50, reorth="full")
    assert result.steps <= 5
    np.testing.assert_allclose(result.eigenvalues, np.arange(1.0, 6.0), atol=1e-12)


def test_bad_arguments(prescribed):
    op = DenseOperator(prescribed[0])
    with pytest.raises(ValueError, match="steps"):
        lanczos(op, steps=0)
    with pytest.raises(ValueError, match="reorth"):
        lanczos(op, steps=3, reorth="partial")
    with pytest.raises(ValueError, match="nonzero"):
        lanczos(op, steps=3, v0=torch.zeros(op.num_params, dtype=torch.float64))
    with pytest.raises(ValueError, match="true_residuals"):
        lanczos(op, steps=3, reorth="none", true_residuals=True)
    with pytest.raises(ValueError, match="symmetric"):
        DenseOperator(np.triu(np.ones((4, 4))))


def test_llama_extremes_match_dense_eigh(exact_llama, llama_reference):
    model, batches, names = exact_llama
    _, eigenvalues = llama_reference
    op = HessianOperator(model, batches, params=names)
    result = lanczos(op, steps=80, reorth="full", seed=0, true_residuals=1)
    top, bottom = eigenvalues[-1], eigenvalues[0]
    assert result.lambda_max == pytest.approx(top, rel=1e-4)
    assert result.lambda_min == pytest.approx(bottom, rel=1e-4)
    # the reported residuals bound the eigenvalue error (Kahan-Parlett-Jiang: |θ-λ| <= r)
    assert abs(result.lambda_max - top) <= result.true_residuals[-1] + 1e-12


@pytest.mark.parametrize("which", ["largest", "magnitude", "both"])
def test_tol_stops_once_the_watched_values_converge(prescribed, which):
    matrix, eigenvalues = prescribed
    result = lanczos(DenseOperator(matrix), steps=100, tol=1e-3, num_converged=2, which=which)
    assert result.steps < 100 and not result.breakdown
    watched = {"largest": [-1, -2], "magnitude": [-1, -2], "both": [-1, -2, 0, 1]}[which]
    for i in watched:
        # the residual bound guarantees |θ - λ| <= 1e-3 |θ|
        assert result.eigenvalues[i] == pytest.approx(eigenvalues[i], rel=1e-3)
        assert result.residuals[i] <= 1e-3 * abs(result.eigenvalues[i])
    with pytest.raises(ValueError, match="which"):
        lanczos(DenseOperator(matrix), steps=5, tol=1e-3, which="middle")

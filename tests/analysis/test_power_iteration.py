"""Power iteration with deflation: top-k by magnitude, residuals, convergence flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_cases import matrix_with_spectrum

from winq.analysis import DenseOperator, HessianOperator, lanczos, power_iteration


def test_top_k_by_magnitude_with_deflation():
    # a large negative eigenvalue must be found by magnitude, between two positives
    eigenvalues = np.concatenate([[-7.0], np.linspace(-1, 1, 57), [10.0, 4.0]])
    op = DenseOperator(matrix_with_spectrum(eigenvalues, seed=3))
    result = power_iteration(op, k=3, max_iter=500, tol=1e-12, seed=0)
    np.testing.assert_allclose(result.eigenvalues, [10.0, -7.0, 4.0], rtol=1e-8)
    assert result.converged.all()
    assert (result.residuals < 1e-3).all()
    vectors = result.eigenvectors.numpy()
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-8)
    for value, vector, residual in zip(result.eigenvalues, vectors.T, result.residuals):
        assert np.linalg.norm(op.matrix.numpy() @ vector - value * vector) == pytest.approx(
            residual, rel=1e-6, abs=1e-12
        )
    assert result.num_matvecs == result.iterations.sum() == op.num_matvecs


def test_not_converged_is_reported():
    eigenvalues = np.concatenate([np.linspace(0, 1, 40), [5.0, 4.99]])  # ratio 0.998: slow
    op = DenseOperator(matrix_with_spectrum(eigenvalues))
    result = power_iteration(op, k=1, max_iter=5, tol=1e-10)
    assert not result.converged[0] and result.iterations[0] == 5
    assert result.residuals[0] > 1e-3


def test_zero_operator_and_bad_arguments():
    result = power_iteration(DenseOperator(np.zeros((5, 5))), k=2)
    assert list(result.eigenvalues) == [0.0, 0.0] and result.converged.all()
    assert np.isfinite(result.eigenvectors.numpy()).all()
    op = DenseOperator(np.eye(3))
    for kwargs in ({"k": 0}, {"k": 4}, {"max_iter": 0}, {"tol": -1.0}):
        with pytest.raises(ValueError):
            power_iteration(op, **kwargs)


def test_llama_top_eigenvalue_agrees_with_lanczos(exact_llama, llama_reference):
    model, batches, names = exact_llama
    _, eigenvalues = llama_reference
    op = HessianOperator(model, batches, params=names)
    result = power_iteration(op, k=1, max_iter=300, tol=1e-8)
    top = eigenvalues[np.argmax(np.abs(eigenvalues))]
    assert result.eigenvalues[0] == pytest.approx(top, rel=1e-4)
    assert lanczos(op, steps=60).lambda_max == pytest.approx(eigenvalues[-1], rel=1e-6)
    assert isinstance(result.eigenvectors, torch.Tensor) and result.eigenvectors.shape == (3072, 1)


def test_converged_means_the_residual_and_the_eigenvalue_are_within_tol():
    # eigenvalues 1 and 0.89 on top of a bulk in [0, 0.5]: lambda creeps up by less than
    # 1e-3 per step long before it is within 1e-3 of 1 (the rule on successive changes
    # stopped here at 13 products, 3.2e-3 low, with a residual of 1.8% of lambda)
    eigenvalues = np.concatenate([np.linspace(0, 0.5, 60), [0.89, 1.0]])
    op = DenseOperator(matrix_with_spectrum(eigenvalues, seed=0))
    tol = 1e-3
    result = power_iteration(op, k=1, tol=tol, seed=0)
    assert result.converged[0]
    assert result.residuals[0] <= tol * abs(result.eigenvalues[0])
    assert abs(result.eigenvalues[0] - 1.0) <= tol  # measured 7.6e-6 (about r^2 / gap)
    vector = result.eigenvectors[:, 0].numpy()
    assert np.linalg.norm(op.matrix.numpy() @ vector - result.eigenvalues[0] * vector) == (
        pytest.approx(result.residuals[0], rel=1e-6)
    )

"""SLQ: exact per-probe quadrature moments, unbiased spectral moments, breakdown padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from winq.analysis import DenseOperator, HessianOperator, slq
from winq.analysis.probes import make_generator, random_vectors

ORDERS = (1, 2, 3, 4)


def probe_vectors(n: int, probes: int, seed: int, distribution: str) -> list[np.ndarray]:
    """The unit probes slq draws (same generator, same order)."""
    generator = make_generator(seed, "cpu")
    out = []
    for _ in range(probes):
        z = random_vectors(n, None, distribution, generator, torch.float64, "cpu").numpy()
        out.append(z / np.linalg.norm(z))
    return out


def moment_tolerance(matrix: np.ndarray, k: int, probes: int) -> float:
    """4 standard errors of the Rademacher estimate of tr(A^k)/n from ``probes`` unit probes:
    Var(z^T B z) = 2 (||B||_F^2 - sum_i B_ii^2) for z Rademacher (Hutchinson 1990)."""
    n = matrix.shape[0]
    power = np.linalg.matrix_power(matrix, k)
    variance = 2 * ((power**2).sum() - (np.diag(power) ** 2).sum()) / n**2
    return 4 * np.sqrt(variance / probes)


@pytest.mark.parametrize("reorth", ["none", "full"])
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_each_probe_reproduces_its_quadratic_forms_exactly(prescribed, reorth, distribution):
    matrix, _ = prescribed
    spectrum = slq(
        DenseOperator(matrix),
        probes=3,
        steps=12,
        reorth=reorth,
        seed=5,
        distribution=distribution,
        progress=False,
    )
    # Gauss quadrature with m nodes is exact up to degree 2m-1 = 23; test k = 1..8
    orders = tuple(range(1, 9))
    quadrature = spectrum_moments(spectrum, orders)
    for p, u in enumerate(probe_vectors(matrix.shape[0], 3, 5, distribution)):
        exact = [u @ np.linalg.matrix_power(matrix, k) @ u for k in orders]
        np.testing.assert_allclose(quadrature[p], exact, rtol=1e-10)


def spectrum_moments(spectrum, orders) -> np.ndarray:
    from winq.analysis import moments

    return moments(spectrum, orders=orders)


def test_spectral_moments_within_stated_tolerance(prescribed):
    matrix, eigenvalues = prescribed
    probes = 32
    spectrum = slq(DenseOperator(matrix), probes=probes, steps=30, seed=0, progress=False)
    estimates = spectrum.moments(ORDERS)
    for k, estimate in zip(ORDERS, estimates):
        exact = np.mean(eigenvalues**k)
        assert abs(estimate - exact) <= moment_tolerance(matrix, k, probes), k
    assert spectrum.nodes.shape == spectrum.weights.shape == (probes, 30)
    np.testing.assert_allclose(spectrum.weights.sum(axis=1), 1.0, atol=1e-14)
    assert spectrum.metadata["num_matvecs"] == probes * 30
    assert spectrum.metadata["probes"] == probes and spectrum.metadata["lanczos_steps"] == 30


def test_llama_spectral_moments(exact_llama, llama_reference):
    model, batches, names = exact_llama
    dense, eigenvalues = llama_reference
    probes = 8
    op = HessianOperator(model, batches, params=names)
    spectrum = slq(op, probes=probes, steps=20, seed=0, progress=False)
    matrix = dense.numpy()
    for k, estimate in zip(ORDERS, spectrum.moments(ORDERS)):
        exact = np.mean(eigenvalues**k)
        assert abs(estimate - exact) <= moment_tolerance(matrix, k, probes), k
    # per probe, exactness against the dense matrix (degree <= 2m - 1 = 39)
    u = probe_vectors(op.num_params, 1, 0, "rademacher")[0]
    np.testing.assert_allclose(
        spectrum_moments(spectrum, ORDERS)[0],
        [u @ np.linalg.matrix_power(matrix, k) @ u for k in ORDERS],
        rtol=1e-9,
    )
    assert spectrum.metadata["backend"] == "double_backward"
    assert spectrum.metadata["params"] == names


def test_breakdown_pads_with_weight_zero_nodes():
    eigenvalues = np.array([-1.0] * 10 + [0.0] * 20 + [3.0] * 10)  # 3 distinct eigenvalues
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    spectrum = slq(
        DenseOperator((q * eigenvalues) @ q.T), probes=4, steps=10, seed=0, progress=False
    )
    assert spectrum.nodes.shape == (4, 10)
    assert spectrum.metadata["breakdowns"] == 4
    assert list(spectrum.num_nodes) == [3, 3, 3, 3]
    assert np.isfinite(spectrum.nodes).all() and np.isfinite(spectrum.weights).all()
    np.testing.assert_allclose(
        spectrum.nodes[spectrum.mask].reshape(4, 3), [[-1, 0, 3]] * 4, atol=1e-12
    )
    assert (spectrum.weights[~spectrum.mask] == 0).all()
    np.testing.assert_allclose(spectrum.weights.sum(axis=1), 1.0, atol=1e-14)
    # padding repeats the largest node: extremes and weighted statistics are unaffected
    assert spectrum.nodes.max() == pytest.approx(3.0) and spectrum.nodes.min() == pytest.approx(
        -1.0
    )
    summary = spectrum.summary(eps=1e-6)
    assert summary["near_zero_mass"] == pytest.approx(0.5, abs=0.25)
    assert summary["lambda_max"] == pytest.approx(3.0)


def test_zero_operator_spectrum():
    spectrum = slq(DenseOperator(np.zeros((7, 7))), probes=2, steps=5, progress=False)
    assert list(spectrum.num_nodes) == [1, 1]
    summary = spectrum.summary()
    assert summary["lambda_max"] == 0.0 and summary["near_zero_mass"] == 1.0
    assert summary["negative_mass"] == 0.0


def test_seed_reproduces_and_progress_bar_runs(prescribed, capsys):
    op = DenseOperator(prescribed[0])
    first = slq(op, probes=2, steps=8, seed=3, progress=True)
    second = slq(op, probes=2, steps=8, seed=3, progress=False)
    np.testing.assert_array_equal(first.nodes, second.nodes)
    third = slq(op, probes=2, steps=8, seed=4, progress=False)
    assert not np.array_equal(first.nodes, third.nodes)
    with pytest.raises(ValueError, match="probes"):
        slq(op, probes=0)
    with pytest.raises(ValueError, match="steps"):
        slq(op, steps=0)
    with pytest.raises(ValueError, match="distribution"):
        slq(op, distribution="uniform", progress=False)


def test_lanczos_coefficients_contain_every_shorter_run(prescribed):
    from winq.analysis.lanczos import tridiagonal_eigh

    op = DenseOperator(prescribed[0])
    long = slq(op, probes=3, steps=30, seed=2, progress=False)
    short = slq(op, probes=3, steps=10, seed=2, progress=False)
    assert long.lanczos_alpha.shape == long.lanczos_beta.shape == (3, 30)
    assert long.lanczos_alpha.dtype == np.float64
    # the first 10 steps of the 30-step recurrence are the 10-step recurrence, bit for bit
    np.testing.assert_array_equal(long.lanczos_alpha[:, :10], short.lanczos_alpha)
    np.testing.assert_array_equal(long.lanczos_beta[:, :10], short.lanczos_beta)
    for p in range(3):
        theta, vectors = tridiagonal_eigh(long.lanczos_alpha[p, :10], long.lanczos_beta[p, :10])
        np.testing.assert_array_equal(theta, short.nodes[p])
        np.testing.assert_allclose(vectors[0] ** 2, short.weights[p], rtol=1e-12)
        theta, _ = tridiagonal_eigh(long.lanczos_alpha[p], long.lanczos_beta[p])
        np.testing.assert_array_equal(theta, long.nodes[p])


def test_lanczos_coefficients_are_nan_after_a_breakdown():
    eigenvalues = np.array([-1.0] * 5 + [2.0] * 5)  # two distinct eigenvalues: 2 steps
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    spectrum = slq(DenseOperator((q * eigenvalues) @ q.T), probes=2, steps=6, progress=False)
    assert spectrum.lanczos_alpha.shape == (2, 6)
    assert np.isfinite(spectrum.lanczos_alpha[:, :2]).all()
    assert np.isnan(spectrum.lanczos_alpha[:, 2:]).all()
    assert np.isnan(spectrum.lanczos_beta[:, 2:]).all()
    assert (np.abs(spectrum.lanczos_beta[:, 1]) < 1e-12).all()  # the breakdown's residual

"""Fixtures for the winq.analysis tests: dense references are computed once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_cases import (
    LLAMA_NAMES,
    float64_rmsnorm,
    llama_batches,
    llama_dense_hessian,
    matrix_with_spectrum,
    prescribed_eigenvalues,
    tiny_llama,
)


@pytest.fixture(scope="session")
def prescribed():
    """(matrix, eigenvalues): the quadratic with a prescribed spectrum, float64."""
    eigenvalues = prescribed_eigenvalues()
    return matrix_with_spectrum(eigenvalues), eigenvalues


@pytest.fixture(scope="session")
def llama_reference():
    """(dense Hessian (3072, 3072) float64, its eigenvalues) of the 1-layer float64 Llama."""
    with float64_rmsnorm():
        hessian = llama_dense_hessian(tiny_llama(), llama_batches(), list(LLAMA_NAMES))
    return hessian, np.linalg.eigvalsh(hessian.numpy())


@pytest.fixture
def exact_llama():
    """(model, batches, names): the float64 Llama with RMSNorm kept in float64 for the test."""
    with float64_rmsnorm():
        yield tiny_llama(), llama_batches(), list(LLAMA_NAMES)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)

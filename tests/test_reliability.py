"""Interruptions while writing, and estimators on hostile operators.

* ``kill -9`` at random moments of a process that keeps writing spectrum folders and
  checkpoints (new ones and replacements): afterwards every folder under a visible name is
  complete and loads; whatever a killed write left behind is under a hidden temporary name.
* Lanczos on random symmetric matrices (hypothesis) and on indefinite, near-singular and badly
  scaled ones: every reported residual is the true ``‖Hy − θy‖`` to round-off, and every Ritz
  value lies within its residual of an eigenvalue (for a symmetric matrix an eigenvalue lies
  within ‖Hy − θy‖ of θ for any unit y; Parlett 1998, Thm 4.5.1) — so a user reading the
  residuals knows how far to trust each value, however ill-conditioned the operator.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import winq
from winq.analysis import DenseOperator, Spectrum, lanczos

WRITER = textwrap.dedent(
    """
    import sys, itertools
    from pathlib import Path
    import numpy as np
    import winq
    from winq import embedded
    from winq.analysis import Spectrum

    root = Path(sys.argv[1])
    model = embedded.build_model("tiny", seed=0)
    winq.quantize_(model, winq.QuantConfig(bits=2))
    rng = np.random.default_rng(int(sys.argv[2]))
    print("ready", flush=True)
    for i in itertools.count():
        nodes = np.sort(rng.normal(size=(4, 40)), axis=1)
        weights = rng.dirichlet(np.ones(40), size=4)
        spectrum = Spectrum(nodes, weights, metadata={"num_params": 1000, "step": i})
        spectrum.save(root / "spectrum_same")           # replaced again and again
        spectrum.save(root / f"spectrum_{i % 3}")
        winq.save(model, root / f"ckpt_{i % 2}")
    """
)


def check_folders(root: Path) -> int:
    """Every visible folder is complete and loads; returns how many were checked."""
    checked = 0
    for folder in sorted(root.iterdir()):
        if folder.name.startswith("."):
            assert folder.name.endswith(".tmp") or ".old." in folder.name, folder.name
            continue
        if folder.name.startswith("spectrum_"):
            spectrum = Spectrum.load(folder)
            assert spectrum.nodes.shape == (4, 40)
            np.testing.assert_allclose(spectrum.weights.sum(axis=1), 1.0)
        elif folder.name.startswith("ckpt_"):
            model, _ = winq.load(folder)
            assert winq.nn.clipped_fraction(model) >= 0.0
        checked += 1
    return checked


@pytest.mark.slow
def test_kill_9_while_writing_spectra_and_checkpoints(tmp_path):
    rng = random.Random(0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "out"
    root.mkdir()
    kills = checked = 0
    for attempt in range(5):
        process = subprocess.Popen([sys.executable, str(script), str(root), str(attempt)],
                                   stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.2, 1.5))  # somewhere inside a save
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        checked += check_folders(root)
    assert kills == 5 and checked >= 5


def _matrix(eigenvalues: np.ndarray, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return (q * eigenvalues) @ q.T


def _check_residuals(matrix: np.ndarray, steps: int, seed: int = 0):
    operator = DenseOperator(torch.from_numpy(matrix))
    result = lanczos(operator, steps=steps, reorth="full", seed=seed, true_residuals=True)
    eigenvalues = np.linalg.eigvalsh(matrix)
    scale = np.abs(eigenvalues).max()
    vectors = result.ritz_vectors.numpy()
    thetas = result.eigenvalues[result.ritz_indices]
    for k, theta in enumerate(thetas):
        y = vectors[:, k]
        true = np.linalg.norm(matrix @ y - theta * y)
        # the reported residual is the true one (to round-off of the scale) ...
        assert abs(result.true_residuals[k] - true) <= 1e-10 * scale
        # ... and bounds the distance to the nearest eigenvalue
        assert np.abs(eigenvalues - theta).min() <= true + 1e-10 * scale
    # the cheap estimates |beta_m s_mj| agree with the true residuals too
    np.testing.assert_allclose(result.residuals[result.ritz_indices], result.true_residuals,
                               rtol=1e-6, atol=1e-9 * scale)  # fmt: skip
    return result, eigenvalues


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 40),
    steps_fraction=st.floats(0.2, 1.0),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-6, 6),
)
def test_lanczos_residuals_are_honest_on_random_symmetric_matrices(n, steps_fraction, seed,
                                                                   log_scale):  # fmt: skip
    rng = np.random.default_rng(seed)
    eigenvalues = rng.normal(size=n) * 10.0**log_scale
    steps = max(1, round(steps_fraction * n))
    result, exact = _check_residuals(_matrix(eigenvalues, seed), steps, seed)
    if steps == n and not result.breakdown:  # the whole space: the exact spectrum
        np.testing.assert_allclose(result.eigenvalues, exact, rtol=0,
                                   atol=1e-8 * np.abs(exact).max())  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["indefinite", "near_singular", "badly_scaled", "clustered_with_zero_block"],
)
def test_hostile_operators_report_their_accuracy(case):
    n = 120
    rng = np.random.default_rng(1)
    if case == "indefinite":
        eigenvalues = np.concatenate([-np.logspace(0, 2, n // 2), np.logspace(0, 2, n // 2)])
    elif case == "near_singular":
        eigenvalues = np.concatenate([rng.uniform(1, 10, n - 10), np.full(10, 1e-13)])
    elif case == "badly_scaled":  # condition number 1e12
        eigenvalues = np.logspace(-12, 0, n) * rng.choice([-1, 1], size=n)
    else:
        eigenvalues = np.concatenate([np.zeros(60), 5 + 1e-9 * rng.normal(size=30),
                                      rng.uniform(-3, 3, 30)])  # fmt: skip
    result, exact = _check_residuals(_matrix(eigenvalues, 2), steps=40)
    assert np.all(np.isfinite(result.eigenvalues)) and np.all(np.isfinite(result.residuals))
    # the extremes converge first: both ends to 1e-8 of the scale within 40 steps
    scale = np.abs(exact).max()
    assert abs(result.eigenvalues[-1] - exact[-1]) <= 1e-8 * scale
    assert abs(result.eigenvalues[0] - exact[0]) <= 1e-8 * scale

"""Coverage of winq's mass intervals, and what a real quantized model's masses resolve.

Two parts, each printing a markdown table for BENCHMARKS.md ("Spectral diagnostics"):

* ``coverage``: on a dense float64 matrix of known spectrum (a random rotation of 60% exact
  zeros, 10% eigenvalues in [-2, -0.1], 30% in [0.1, 10]; n = 1000, as
  tests/analysis/test_coverage.py), SLQ with 4, 8 and 16 probes × ``--steps`` Lanczos steps over
  ``--seeds`` seeds: how often the nominal 95% Student-t interval of each mass at the threshold
  ``--threshold`` holds the true mass, how often the threshold is resolved, the mean
  half-width, and the coverage of a 95% percentile bootstrap over probes (2000 resamples).
* ``model``: a saved ``winq-spectrum`` folder of a real quantized model (one SLQ run of 16
  probes × 120 steps); the masses at ε = 1.5e-3 (absolute, the WinQ convention) read from its
  first 4/8/16 probes truncated to 30/60/120 steps (the same run, :meth:`Spectrum.at_steps`),
  with the Hessian-vector products each costs.

    python bench/mass_coverage.py coverage --seeds 100
    winq-spectrum --bits 2 --probes 16 --steps 120 --out spectra/tiny-2bit
    python bench/mass_coverage.py model spectra/tiny-2bit
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from winq import quadrature
from winq.analysis import DenseOperator, slq

MASSES = ("negative_mass", "near_zero_mass", "positive_mass")


def known_matrix(n: int = 1000) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(0)
    k_zero, k_neg = int(0.6 * n), int(0.1 * n)
    eigenvalues = np.concatenate(
        [
            np.zeros(k_zero),
            -rng.uniform(0.1, 2.0, k_neg),
            rng.uniform(0.1, 10.0, n - k_zero - k_neg),
        ]
    )
    generator = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    matrix = (q * torch.as_tensor(eigenvalues)) @ q.T
    return (matrix + matrix.T) / 2, eigenvalues


def coverage(args) -> None:
    matrix, eigenvalues = known_matrix()
    t = args.threshold
    truth = {
        "negative_mass": float(np.mean(eigenvalues < -t)),
        "near_zero_mass": float(np.mean(np.abs(eigenvalues) <= t)),
        "positive_mass": float(np.mean(eigenvalues > t)),
    }
    operator = DenseOperator(matrix)
    print(f"threshold {t}, {args.steps} steps, {args.seeds} seeds; true masses {truth}\n")
    print("| probes | mass | true | coverage of 95% CI | resolved | coverage where resolved "
          "| mean half-width | bootstrap coverage |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for probes in (4, 8, 16):
        hits = {k: [] for k in MASSES}
        flags = {k: [] for k in MASSES}
        halves = {k: [] for k in MASSES}
        boot = {k: [] for k in MASSES}
        rng = np.random.default_rng(12345)
        for seed in range(args.seeds):
            spectrum = slq(operator, probes=probes, steps=args.steps, seed=seed, progress=False)
            estimates = quadrature.mass_estimates(
                spectrum, residuals=spectrum.residuals, eps=t, sigma=None
            )
            split = dict(zip(MASSES, quadrature.per_probe_split(spectrum, threshold=t)))
            for key in MASSES:
                low, high = estimates[key].ci
                draws = rng.integers(0, probes, size=(2000, probes))
                means = split[key][draws].mean(axis=1)
                b_low, b_high = np.quantile(means, [0.025, 0.975])
                boot[key].append(b_low <= truth[key] <= b_high)
                hits[key].append(low <= truth[key] <= high)
                flags[key].append(bool(estimates[key].resolved))
                halves[key].append(estimates[key].half_width)
        for key in MASSES:
            h, f = np.array(hits[key]), np.array(flags[key])
            where = f"{h[f].mean():.0%}" if f.any() else "n/a"
            print(f"| {probes} | {key} | {truth[key]:.3f} | {h.mean():.0%} | {f.mean():.0%} | "
                  f"{where} | {np.mean(halves[key]):.3f} | {np.mean(boot[key]):.0%} |")  # fmt: skip


def model(args) -> None:
    from winq.analysis import Spectrum

    full = Spectrum.load(args.spectrum)
    probes_run, steps_run = full.nodes.shape
    seconds = full.metadata.get("wall_seconds")
    per_product = seconds / (probes_run * steps_run) if seconds else math.nan
    clipped = full.metadata.get("clipped_fraction")
    eps = args.eps
    print(f"{args.spectrum}: {probes_run} probes x {steps_run} steps, about "
          f"{per_product:.3f} s per Hessian-vector product (the run's wall time over its "
          f"products), clipped fraction {clipped}\n")  # fmt: skip
    print(
        f"| probes | steps | products | near-zero mass (\\|λ\\| ≤ {eps:g}) | resolved "
        f"| clipped bound | sign-negative mass (λ < 0) | negative mass (λ < −{eps:g}) "
        "| smallest resolved threshold |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        truncated = full.at_steps(min(steps, steps_run))
        residuals = truncated.residuals
        for probes in args.probes:
            if probes > probes_run:
                continue
            rules = (truncated.nodes[:probes], truncated.weights[:probes], truncated.mask[:probes])
            res = residuals[:probes] if residuals is not None else None
            est = quadrature.mass_estimates(*rules, residuals=res, eps=eps, sigma=None)
            near, sign, neg = (est[k] for k in ("near_zero_mass", "sign_negative_mass",
                                                  "negative_mass"))  # fmt: skip
            below = quadrature.below_clipped(near.ci, quadrature.clipped_bound(clipped, eps))
            smallest = quadrature.smallest_resolved_threshold(*rules, residuals=res, start=eps)
            print(f"| {probes} | {steps} | {probes * steps} | "
                  f"{quadrature.format_estimate(near.value, near.ci)} | "
                  f"{near.resolved and not below} | {'below' if below else 'ok'} | "
                  f"{quadrature.format_estimate(sign.value, sign.ci)} "
                  f"({'resolved' if sign.resolved else 'unresolved'}) | "
                  f"{quadrature.format_estimate(neg.value, neg.ci)} | "
                  f"{'none' if smallest is None else f'{smallest:.2g}'} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    c = sub.add_parser("coverage")
    c.add_argument("--seeds", type=int, default=100)
    c.add_argument("--steps", type=int, default=80)
    c.add_argument("--threshold", type=float, default=0.25)
    m = sub.add_parser("model")
    m.add_argument("spectrum", help="a winq-spectrum folder (e.g. 16 probes x 120 steps)")
    m.add_argument("--probes", type=int, nargs="+", default=[4, 8, 16])
    m.add_argument("--steps", type=int, nargs="+", default=[30, 60, 120])
    m.add_argument("--eps", type=float, default=1.5e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    (coverage if args.part == "coverage" else model)(args)


if __name__ == "__main__":
    main()

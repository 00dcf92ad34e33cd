r"""Spectral diagnostics from SLQ quadrature nodes and weights.

Every diagnostic winq reports — extreme Ritz values, negative and near-zero masses (counted or
Gaussian-broadened), densities, the quadrature's resolution near zero, quantiles of
:math:`|\lambda|`, moments, and their intervals over probes and resolution — is a functional of the probe-averaged Gauss quadrature measure
:math:`\hat\phi = \frac1P\sum_{p,j}\tau_{pj}\delta_{\theta_{pj}}`. The arithmetic lives in
:mod:`winq.quadrature`, which needs no torch, so that the figures (:mod:`winq.plots`), the
trainer's controller and the study compute every mass with the same functions as the
estimators; this module is its face inside :mod:`winq.analysis`.
"""

from __future__ import annotations

from winq.quadrature import (
    DEFAULT_CI,
    DEFAULT_GRID_POINTS,
    DEFAULT_QUANTILES,
    DEFAULT_SIGMA,
    DEFAULT_ZERO_EPS,
    Estimate,
    abs_quantiles,
    abs_ratio,
    ambiguous_mass,
    broadened_near_zero_mass,
    density,
    lambda_max,
    lambda_min,
    mass_estimates,
    mass_per_bin,
    masses_by_threshold,
    moments,
    near_zero_mass,
    near_zero_resolution,
    near_zero_threshold,
    negative_mass,
    per_probe_broadened_near_zero_mass,
    per_probe_near_zero_mass,
    per_probe_negative_mass,
    per_probe_split,
    summarize,
    t_interval,
)

__all__ = [
    "DEFAULT_CI",
    "DEFAULT_GRID_POINTS",
    "DEFAULT_QUANTILES",
    "DEFAULT_SIGMA",
    "DEFAULT_ZERO_EPS",
    "Estimate",
    "abs_quantiles",
    "abs_ratio",
    "ambiguous_mass",
    "broadened_near_zero_mass",
    "density",
    "lambda_max",
    "lambda_min",
    "mass_estimates",
    "mass_per_bin",
    "masses_by_threshold",
    "moments",
    "near_zero_mass",
    "near_zero_resolution",
    "near_zero_threshold",
    "negative_mass",
    "per_probe_broadened_near_zero_mass",
    "per_probe_near_zero_mass",
    "per_probe_negative_mass",
    "per_probe_split",
    "summarize",
    "t_interval",
]

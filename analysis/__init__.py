"""winq.analysis: Hessian spectra of (quantized) language models.

Every estimator is a function of a linear operator (``op @ v`` on flat vectors), so the same
code runs on a model's exact Hessian-vector products and on a dense matrix in the tests::

    from winq.analysis import HessianOperator, lanczos, slq, hutchinson

    H = HessianOperator(model, batches, params="linear")  # exact H @ v
    top = lanczos(H, steps=80, reorth="full")             # extreme eigenvalues + residuals
    spec = slq(H, probes=8, steps=60)                      # density by Lanczos quadrature
    spec.summary(); spec.save("spectra/step_001000")

The estimator modules import nothing from ``winq`` but ``winq.io``; a quantized model's
``QuantLinear`` layers are recognised by duck typing (a ``quantized_weight`` method).
:func:`measure_spectrum` (what ``winq-spectrum`` runs) is where they meet the core: it also
records bits, quantizer and the clipped fraction of the selected latent weights.
"""

from winq.analysis.blocks import group_parameters, per_block_slq
from winq.analysis.diagnostics import (
    DEFAULT_GRID_POINTS,
    DEFAULT_QUANTILES,
    DEFAULT_SIGMA,
    DEFAULT_ZERO_EPS,
    abs_quantiles,
    abs_ratio,
    density,
    lambda_max,
    lambda_min,
    moments,
    near_zero_mass,
    near_zero_resolution,
    near_zero_threshold,
    negative_mass,
    summarize,
)
from winq.analysis.hvp import HessianOperator, causal_lm_loss, product_mode, select_parameters
from winq.analysis.lanczos import LanczosResult, lanczos, lanczos_tridiagonal
from winq.analysis.measure import measure_spectrum
from winq.analysis.operator import DenseOperator, LinearOperator, Operator
from winq.analysis.power import PowerIterationResult, power_iteration
from winq.analysis.slq import slq
from winq.analysis.spectrum import Spectrum
from winq.analysis.trace import TraceResult, hutchinson

__all__ = [  # noqa: RUF022 (grouped by topic, not sorted)
    # operators
    "DenseOperator",
    "HessianOperator",
    "LinearOperator",
    "Operator",
    "causal_lm_loss",
    "product_mode",
    "select_parameters",
    # eigenvalues
    "LanczosResult",
    "PowerIterationResult",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    # densities
    "Spectrum",
    "group_parameters",
    "per_block_slq",
    "slq",
    # one call: density + top-k + trace + quantization facts
    "measure_spectrum",
    # trace
    "TraceResult",
    "hutchinson",
    # diagnostics
    "DEFAULT_GRID_POINTS",
    "DEFAULT_QUANTILES",
    "DEFAULT_SIGMA",
    "DEFAULT_ZERO_EPS",
    "abs_quantiles",
    "abs_ratio",
    "density",
    "lambda_max",
    "lambda_min",
    "moments",
    "near_zero_mass",
    "near_zero_resolution",
    "near_zero_threshold",
    "negative_mass",
    "summarize",
]

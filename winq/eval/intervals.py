r"""95% intervals for benchmark scores: Wilson for accuracies, a bootstrap over items otherwise.

**Accuracy** (a mean of 0/1 item scores, ``k`` right of ``n``): the Wilson score interval
(Wilson 1927; recommended over the normal "Wald" interval by Brown, Cai & DasGupta 2001,
*Interval Estimation for a Binomial Proportion*), with ``p = k/n`` and ``z`` the standard
normal quantile (1.96 for 95%)::

    centre = (p + z²/2n) / (1 + z²/n),   half = z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).

It stays inside [0, 1], is not degenerate at p = 0 or 1, and its coverage stays close to the
nominal level at the few hundred items of a small benchmark or a ``--limit`` run, where the
normal approximation lm-eval reports as ``acc_stderr`` (``sqrt(p(1-p)/(n-1))``) is too narrow
near 0 and 1 (zero width when every item is right or every item wrong).

**Ratio scores** (perplexities, bits per byte): lm-eval aggregates per-document pairs
``(LL_d, u_d)`` (log-likelihood, and words or bytes) as ``r = Σ LL_d / Σ u_d`` and reports
``exp(-r)`` or ``-r / ln 2``; it gives no standard error for them. The interval here is the
percentile bootstrap over documents (Efron & Tibshirani 1993, ch. 13): resample the documents
with replacement ``B`` times, recompute ``r`` on each resample (the token weighting is kept:
long documents weigh more), and take the 2.5% and 97.5% quantiles of ``r``; a monotone
transform maps them onto the reported scale. A mean of real-valued item scores is the ratio
with ``u_d = 1``. Documents are resampled as independent units although neighbouring passages
of one play are not quite independent, so the interval is, if anything, a little narrow.

Any other aggregation (F1, BLEU, ...) gets the same percentile bootstrap, calling lm-eval's own
aggregation function on each resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "bootstrap_interval",
    "bootstrap_ratio_interval",
    "normal_quantile",
    "wilson_interval",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
# resamples drawn at once: bounds the (resamples, items) index array to about 64 MB
_CHUNK_ELEMENTS = 8_000_000


def normal_quantile(confidence: float = CONFIDENCE) -> float:
    """``z`` with ``P(|Z| <= z) = confidence`` for a standard normal Z (1.95996 for 95%)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (see the module docstring).

    Raises:
        ValueError: ``trials < 1``, ``successes`` outside ``[0, trials]``, or a confidence
            outside (0, 1).
    """
    if trials < 1:
        raise ValueError(f"the Wilson interval needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    z = normal_quantile(confidence)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def _resample_indices(items: int, resamples: int, seed: int):
    """Yield (chunk, items) arrays of indices drawn uniformly with replacement."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(items, 1))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        yield rng.integers(0, items, size=(size, items))
        done += size


def bootstrap_ratio_interval(
    numerators: Sequence[float],
    denominators: Sequence[float] | None = None,
    transform: Callable[[float], float] | None = None,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``transform(Σ numerators / Σ denominators)``.

    Args:
        numerators: one value per item (e.g. a document's log-likelihood).
        denominators: one positive weight per item (words, bytes); None for 1 each (a mean).
        transform: a monotone map onto the reported scale (e.g. ``lambda r: math.exp(-r)``);
            None for the ratio itself. A decreasing map swaps the ends, which are returned in
            increasing order.
        confidence: the interval's level.
        resamples: bootstrap resamples of the items.
        seed: the resampling generator's seed (the interval is a deterministic function of it).

    Raises:
        ValueError: no items, mismatched lengths, a non-positive total weight, or a confidence
            outside (0, 1).
    """
    _check_confidence(confidence)
    numerator = np.asarray(numerators, dtype=np.float64)
    if numerator.ndim != 1 or numerator.size == 0:
        raise ValueError("the bootstrap needs a non-empty list of item values")
    if denominators is None:
        denominator = np.ones_like(numerator)
    else:
        denominator = np.asarray(denominators, dtype=np.float64)
        if denominator.shape != numerator.shape:
            raise ValueError(f"{numerator.size} numerators but {denominator.size} denominators")
    if not denominator.sum() > 0:
        raise ValueError("the bootstrap needs a positive total weight")
    ratios = []
    for indices in _resample_indices(numerator.size, resamples, seed):
        # (chunk,) sums over each resample; a resample of zero weight cannot occur with
        # positive weights, and is dropped where some weights are zero
        weight = denominator[indices].sum(axis=1)
        keep = weight > 0
        ratios.append(numerator[indices].sum(axis=1)[keep] / weight[keep])
    ratio = np.concatenate(ratios)
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratio, [tail, 1 - tail])
    if transform is None:
        return float(low), float(high)
    ends = sorted((float(transform(float(low))), float(transform(float(high)))))
    return ends[0], ends[1]


def bootstrap_interval(
    items: Sequence[Any],
    statistic: Callable[[list[Any]], float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of any ``statistic`` of a list of items.

    For aggregations with no vectorised form (lm-eval's F1, BLEU, ...): ``statistic`` is called
    once per resample, so the default is 1000 resamples.

    Raises:
        ValueError: no items, or a confidence outside (0, 1).
    """
    _check_confidence(confidence)
    items = list(items)
    if not items:
        raise ValueError("the bootstrap needs a non-empty list of items")
    values = []
    for indices in _resample_indices(len(items), resamples, seed):
        for row in indices:
            values.append(float(statistic([items[i] for i in row])))
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        raise ValueError("the statistic is not finite on any bootstrap resample")
    tail = (1 - confidence) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)

r"""The guided WinQ controller: measure, decide, reset.

Two rules (``--guide-rule``), both called by the loop every ``--guide-every`` updates through
:meth:`Controller.run`.

**The latent rule** (``latent``, the default; :func:`decide_latent`) reads the latent grid
exactly and at no Hessian cost (:mod:`winq.train.latents`): the clipped fraction ``c`` (latents
outside the STE range, zero gradient), the grid dispersion ``D`` (0 on the grid, 1/2 spread
uniformly over the cells; in units of the half cell) and the flip fraction ``f`` since its
previous reading, ``Δt`` updates earlier. From ``f`` and the learning-rate schedule it predicts
how far the latents can still travel,

.. math::

    F_{\mathrm{rem}}(t) = f \cdot \frac{\sum_{u=t}^{T-1} \eta_u}{\sum_{u=t-\Delta t}^{t-1} \eta_u},

the flips per latent the rest of the run makes if flips keep pace with the learning rate spent
(AdamW moves a latent by at most about η per update). For latents spread over their cells a
flip is one cell width of travel, so ``F_rem`` is also the travel left, in cell widths.

A reset is due when saturation has built up since the last reset (or the start):
``c - c_ref >= clip_growth``. The due reset is first tried (exactly: the latents are copied,
reset, measured and restored), which gives its *collapse* ``ΔD = D - D_after``: a ``full``
reset at α takes in-range latents from ``D`` to ``α·D``, a ``clipped`` one leaves them where
they are (``ΔD <= 0``). It takes back ``ΔD/2`` cell widths of travel from every in-range
latent, which the rest of the run must make good before flips resume. The reset is refused —
and the controller stops — when ``F_rem < flip_budget · ΔD/2`` (the latents cannot travel back)
or, after warm-up, once the learning rate is below ``lr_floor`` of its peak, or once the last
reset has been undone: when the share of the clipping it removed that is back by the time the
next reset comes due, :func:`clipping_returned`,

.. math::

    r = \frac{c - c_{\mathrm{after}}}{c_{\mathrm{before}} - c_{\mathrm{after}}},

reaches ``max_return``. A reset is meant to free latents trapped outside the range, where the
straight-through estimator gives them no gradient. A reset that is undone before the next one
comes due freed nothing for long: the range edge absorbs them again, as they get no gradient
once outside. Every further reset then only perturbs the scales' gradients (a clipped latent
contributes its level's bound to its scale's gradient, an in-range one its rounding error) and
the optimizer's moments. The first reset is always allowed: before it there is no evidence
either way. It resets in
``--winq-reset-mode`` with ``--winq-alpha`` (or ``auto``: the gentlest candidate α that
removes at least 90% of the clipping the strongest removes, by the same exact trials).

Evidence for the thresholds (BENCHMARKS.md, "Does WinQ speed up QAT here?"). On the small preset
(400 updates, 1/1.58/2 bits, 3 seeds) every ``full`` reset schedule ended 0.6–2.3% behind plain
QAT: after a reset the runs improved 0.009–0.044 over the last half against the baselines'
0.057–0.087, and one α = 0 reset at 1 bit stalled a run as much as three — the collapse onto the
grid, not the count of resets, is the harm. Hence: the default mode is ``clipped`` (``ΔD <= 0``:
nothing in range collapses, so the budget test never refuses it and a reset can only take
saturated latents back into range); ``clip_growth`` = 0.01 (the 2-bit runs clip 1–3% of their
latents, so a reset waits for saturation comparable to what is there); ``flip_budget`` = 1 (a
collapse of ΔD/2 cell widths must be recoverable at least once over); ``lr_floor`` = 0.25 (below
it the rest of a cosine schedule decaying to zero holds 6% of the run's learning-rate budget).
On the tiny preset (300 updates, 3 seeds; the table "Issue 13" in BENCHMARKS.md) this rule
without ``max_return`` ties with plain QAT at 1 bit (Δ −0.04% [−0.18, +0.09]) and 2 bits (+0.01%
[−0.07, +0.10]) and is worse at 1.58 bits (+0.10% [+0.02, +0.19]). Each clipped reset took the
clipped fraction to 0 and left the dispersion and the flip rate where the baseline has them, yet
three of them cost a little. ``max_return`` = 0.5 comes from the second tiny grid ("Issue 13,
second tiny grid"). When the next reset came due, 0.73–0.75 (1 bit), 0.56–0.59 (1.58 bits) and
0.60–0.76 (2 bits) of the clipping the previous reset removed was back, in every seed, although
the held-out gradient pushes only 52–53% of the clipped latents outward
(``bench/clipped_gradient.py``): the edge absorbs them, the loss does not hold them there. With
it the controller resets once at every width and stops, which ties with plain QAT at 1 and 1.58
bits (+0.06% [−0.49, +0.60], +0.07% [−0.30, +0.43]). At 2 bits the one reset still costs +0.09%
[+0.01, +0.18]. On the small preset (400 updates, 3 seeds; "the default controller on the small
preset") it ends level with plain QAT at every width: +0.01% [−0.33, +0.34] at 1 bit, −0.03%
[−0.32, +0.25] at 1.58 bits. At 2 bits no reset was allowed, because clipping grew by
``clip_growth`` only below ``lr_floor``, so the run is plain QAT bit for bit. Where saturation
builds up early, the rule still needs a first reset to learn that resets are undone.

**The spectrum rule** (``spectrum``, the previous default; :func:`decide`). Every
``--guide-every`` updates it measures, on one fixed held-out probe batch, the clipped fraction
and ``--guide-steps`` Lanczos steps (full reorthogonalisation) on the Hessian of the quantized
model's loss with respect to the selected latent weights, from ``--guide-probes`` fixed
Rademacher probes: Ritz values :math:`\theta_j` and Gauss-quadrature weights :math:`\tau_j`
give :math:`\lambda_{\max}`, :math:`\lambda_{\min}`,
:math:`|\lambda|_{\max} = \max(|\lambda_{\max}|, |\lambda_{\min}|)`, the near-zero mass
:math:`\sum_j \tau_j [\,|\theta_j| < \varepsilon\,\lambda_{\max}]` and the negative mass
:math:`\sum_j \tau_j [\theta_j < 0]`. The same probes and batch are used for every
measurement (common random numbers), so successive measurements differ because the weights
moved, not because the probe did.

With 8–16 Lanczos nodes from one probe (tiny preset, 2-bit, 300 updates, BENCHMARKS.md)
:math:`\lambda_{\max}` is converged (the same to 4 digits as with 30 nodes), but nearly all the
quadrature weight (0.93–0.99) sits on one node within 1e-2·λmax of zero, which lands on either
side of 1e-3·λmax from one measurement to the next: the near-zero mass read 0.98, 0, 0.97, 0,
... on consecutive measurements of one run. A reset is due when, since the measurement just
after the last reset (or at step 0),

* the clipped fraction grew by at least ``clip_growth`` (exact), or
* :math:`|\lambda|_{\max}` shrank by at least the factor ``shrink`` (default 2), or
* the near-zero mass grew by at least ``flat_growth`` (off by default) *and* beyond its
  measurement error: the 95% Student-t intervals over probes (:func:`winq.quadrature.t_interval`)
  of the two masses do not overlap. With one probe there is no interval, so this trigger
  cannot fire; it needs ``--guide-probes 2`` or more;

but only once ``min_period`` steps have passed since the last reset; after ``max_period``
steps a reset is due whatever was measured. A due reset is refused (and the controller stops)
after warm-up once the learning rate is below ``lr_floor`` of its peak. α is fixed or chosen
among candidates by a trial reset at each (``alpha_by``): the gentlest candidate reaching
``alpha_gain`` (0.9) of the largest rise of :math:`|\lambda|_{\max}` (or fall of the clipped
fraction), or the smallest near-zero mass. A reset leaves Q(W) — hence the loss and the
scales — unchanged, so a trial costs only the measurement, and the chosen candidate's
measurement is bit-for-bit what the real reset gives: it becomes the new reference.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from winq.train.config import ALPHA_CRITERIA, GUIDE_RULES

__all__ = [
    "ALPHA_CRITERIA",
    "DIAGNOSTIC_KEYS",
    "GUIDE_RULES",
    "Controller",
    "Decision",
    "GuideRule",
    "choose_alpha",
    "clipping_returned",
    "decide",
    "decide_latent",
    "make_measure",
    "remaining_flips",
    "respread_need",
    "spectral_summary",
    "trial_reset",
]

DIAGNOSTIC_KEYS = (
    "lambda_max",
    "lambda_min",
    "abs_lambda_max",
    "near_zero_mass",
    "negative_mass",
    "clipped_fraction",
)
TIE_TOLERANCE = 1e-3

Measure = Callable[[nn.Module], dict[str, Any]]


@dataclass
class GuideRule:
    """Thresholds of the guided controller (see the module docstring).

    Attributes:
        kind: ``"latent"`` or ``"spectrum"``.
        min_period: fewest steps between two resets (and between step 0 and the first).
        max_period: a reset is due after this many steps whatever was measured (None: never).
        clip_growth: rise in clipped fraction (absolute) that triggers a reset (None: off).
        flat_growth: rise in near-zero mass (absolute) that triggers a reset when it is also
            beyond the masses' intervals (None: off; spectrum rule).
        shrink: factor by which |λ|max must fall to trigger a reset (None: off; spectrum rule).
        lr_floor: refuse resets after warm-up once lr < lr_floor · peak lr.
        flip_budget: refuse resets once the predicted flips per latent in the rest of the run,
            :func:`remaining_flips`, fall below this (None: off; latent rule).
        max_return: refuse resets once this share of the clipping the last reset removed has
            come back, :func:`clipping_returned` (None: off; latent rule).
        alpha_by: criterion of ``--winq-alpha auto`` (see the module docstring).
        alpha_gain: fraction of the best candidate's gain the chosen (gentlest) one must reach.
    """

    kind: str = "latent"
    min_period: int = 1
    max_period: int | None = None
    clip_growth: float | None = 0.01
    flat_growth: float | None = None
    shrink: float | None = 2.0
    lr_floor: float = 0.25
    flip_budget: float | None = 1.0
    max_return: float | None = 0.5
    alpha_by: str = "abs_lambda_max"
    alpha_gain: float = 0.9


@dataclass
class Decision:
    """``decision`` is ``"reset"``, ``"wait"`` or ``"refuse"``; ``reason`` says why."""

    decision: str
    reason: str
    triggers: list[str] = field(default_factory=list)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _min_period_wait(steps_since_reset: int, rule: GuideRule) -> Decision | None:
    if steps_since_reset < rule.min_period:
        return Decision(
            "wait", f"{steps_since_reset} steps since the last reset < min period {rule.min_period}"
        )
    return None


def _clip_trigger(now: dict[str, Any], reference: dict[str, Any] | None, rule: GuideRule):
    if reference is None or rule.clip_growth is None:
        return None
    c_now, c_ref = _num(now.get("clipped_fraction")), _num(reference.get("clipped_fraction"))
    if c_now is not None and c_ref is not None and c_now - c_ref >= rule.clip_growth:
        return f"clipped fraction {c_ref:.4f} -> {c_now:.4f}"
    return None


def _lr_refusal(lr_fraction: float, after_warmup: bool, rule: GuideRule) -> str | None:
    if after_warmup and lr_fraction < rule.lr_floor:
        return f"lr at {lr_fraction:.3f} of peak < floor {rule.lr_floor}"
    return None


# --------------------------------------------------------------------------------------------
# the latent rule


def remaining_flips(flip_fraction: float | None, spent: float, remaining: float) -> float | None:
    """Flips per latent the rest of the run makes if flips keep pace with the learning rate:
    ``f · remaining / spent`` (module docstring), or None when ``f`` is unknown or nothing was
    spent over its interval."""
    f = _num(flip_fraction)
    if f is None or spent <= 0:
        return None
    return f * remaining / spent


def respread_need(collapse: float | None) -> float | None:
    """The mean travel, in cell widths, a reset that lowers the grid dispersion by
    ``collapse`` takes back from the in-range latents: ``collapse / 2`` (dispersion is in
    half-cells), or None when the reset lowers nothing (``clipped``) or ``collapse`` is
    unknown."""
    collapse = _num(collapse)
    if collapse is None or collapse <= 0:
        return None
    return collapse / 2


def clipping_returned(now: dict[str, Any], reference: dict[str, Any] | None) -> float | None:
    """The share of the clipping the last reset removed that is back now:
    ``(c - c_after) / (c_before - c_after)`` with ``c_before`` / ``c_after`` the clipped
    fractions just before and after that reset (the reference's ``clipped_before_reset`` and
    ``clipped_fraction``); None before the first reset or when the reset removed nothing."""
    if reference is None:
        return None
    before = _num(reference.get("clipped_before_reset"))
    after, c = _num(reference.get("clipped_fraction")), _num(now.get("clipped_fraction"))
    if before is None or after is None or c is None or before - after <= 0:
        return None
    return (c - after) / (before - after)


def decide_latent(
    reading: dict[str, Any],
    reference: dict[str, Any] | None,
    *,
    steps_since_reset: int,
    lr_fraction: float,
    after_warmup: bool,
    rule: GuideRule,
) -> Decision:
    """The latent rule's decision from one reading (a pure function; see module docstring).

    Args:
        reading: the latent grid now: ``clipped_fraction``, ``grid_dispersion``,
            ``flip_fraction``, ``remaining_flips`` and ``collapse``, the fall of the grid
            dispersion the planned reset causes (measured by a trial reset; None = unknown).
        reference: the reading just after the last reset (or the first one; with
            ``clipped_before_reset``, the clipped fraction just before that reset); None if
            there is none yet, in which case only ``max_period`` can make a reset due.
        steps_since_reset: optimizer steps since the last reset (or since step 0).
        lr_fraction: the current learning rate over the peak learning rate.
        after_warmup: whether warm-up is over (the learning-rate refusal applies only then).
        rule: the thresholds.
    """
    waiting = _min_period_wait(steps_since_reset, rule)
    if waiting is not None:
        return waiting
    triggers: list[str] = []
    if rule.max_period is not None and steps_since_reset >= rule.max_period:
        triggers.append(f"{steps_since_reset} steps since the last reset >= max period")
    clipped = _clip_trigger(reading, reference, rule)
    if clipped is not None:
        triggers.append(clipped)
    if not triggers:
        return Decision("wait", "no trigger")
    refusals = []
    flips, need = _num(reading.get("remaining_flips")), respread_need(reading.get("collapse"))
    if rule.flip_budget is not None and flips is not None and need is not None:
        if flips < rule.flip_budget * need:
            refusals.append(
                f"{flips:.3g} flips per latent predicted for the rest of the run < "
                f"{rule.flip_budget:g} x the {need:.3g} cell widths the reset takes back"
            )
    returned = clipping_returned(reading, reference)
    if rule.max_return is not None and returned is not None and returned >= rule.max_return:
        refusals.append(
            f"{returned:.2f} of the clipping the last reset removed is back (>= "
            f"{rule.max_return:g}): resets do not keep latents in range here"
        )
    lr = _lr_refusal(lr_fraction, after_warmup, rule)
    if lr is not None:
        refusals.append(lr)
    if refusals:
        return Decision("refuse", f"{'; '.join(refusals)} ({'; '.join(triggers)})", triggers)
    return Decision("reset", "; ".join(triggers), triggers)


# --------------------------------------------------------------------------------------------
# the spectrum rule


def _masses_separated(now: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether the two near-zero masses' 95% intervals over probes are disjoint (False when
    either has no interval, e.g. one probe)."""
    from winq.quadrature import Estimate

    def estimate(reading: dict[str, Any]) -> Estimate:
        ci = reading.get("near_zero_mass_ci") or (math.nan, math.nan)
        return Estimate(math.nan, math.nan, tuple(math.nan if _num(x) is None else x for x in ci))

    return estimate(now).separated_from(estimate(reference))


def decide(
    diagnostics: dict[str, Any],
    reference: dict[str, Any] | None,
    *,
    steps_since_reset: int,
    lr_fraction: float,
    after_warmup: bool,
    rule: GuideRule,
) -> Decision:
    """The spectrum rule's decision from one measurement (a pure function; module docstring).

    Args:
        diagnostics: the measurement now (keys of :data:`DIAGNOSTIC_KEYS`, and
            ``near_zero_mass_ci`` with two or more probes; None = unknown).
        reference: the measurement just after the last reset (or the first one); None if there
            is none yet, in which case only ``max_period`` can make a reset due.
        steps_since_reset: optimizer steps since the last reset (or since step 0).
        lr_fraction: the current learning rate over the peak learning rate.
        after_warmup: whether warm-up is over (the refusal applies only then).
        rule: the thresholds.
    """
    waiting = _min_period_wait(steps_since_reset, rule)
    if waiting is not None:
        return waiting
    triggers: list[str] = []
    if rule.max_period is not None and steps_since_reset >= rule.max_period:
        triggers.append(f"{steps_since_reset} steps since the last reset >= max period")
    if reference is not None:
        clipped = _clip_trigger(diagnostics, reference, rule)
        if clipped is not None:
            triggers.append(clipped)
        now, ref = _num(diagnostics.get("near_zero_mass")), _num(reference.get("near_zero_mass"))
        if rule.flat_growth is not None and now is not None and ref is not None:
            if now - ref >= rule.flat_growth and _masses_separated(diagnostics, reference):
                triggers.append(f"near-zero mass {ref:.3f} -> {now:.3f}")
        now, ref = _num(diagnostics.get("abs_lambda_max")), _num(reference.get("abs_lambda_max"))
        if rule.shrink is not None and now is not None and ref is not None and ref > 0:
            if now <= ref / rule.shrink:
                triggers.append(f"|lambda|max {ref:.4g} -> {now:.4g}")
    if not triggers:
        return Decision("wait", "no trigger")
    lr = _lr_refusal(lr_fraction, after_warmup, rule)
    if lr is not None:
        return Decision("refuse", f"{lr} ({'; '.join(triggers)})", triggers)
    return Decision("reset", "; ".join(triggers), triggers)


def choose_alpha(
    candidates: dict[float, dict[str, Any]],
    before: dict[str, Any] | None = None,
    by: str = "abs_lambda_max",
    gain: float = 0.9,
) -> float:
    """The α to reset with, from trial measurements (see the module docstring).

    Args:
        candidates: trial measurements by candidate α.
        before: the measurement without a reset (α = 1); needed by the gain criteria.
        by: ``"abs_lambda_max"`` (rise), ``"clipped_fraction"`` (fall) or ``"near_zero_mass"``.
        gain: the share of the best candidate's gain the chosen one must reach.

    Raises:
        ValueError: no candidates, or an unknown criterion.
    """
    if not candidates:
        raise ValueError("no alpha candidates")
    if by not in ALPHA_CRITERIA:
        raise ValueError(f"alpha criterion must be one of {', '.join(ALPHA_CRITERIA)}, got {by!r}")
    if by == "near_zero_mass":

        def key(alpha: float) -> tuple[float, float]:
            mass = _num(candidates[alpha].get("near_zero_mass"))
            return (math.inf if mass is None else round(mass / TIE_TOLERANCE), -alpha)

        return min(candidates, key=key)
    sign = 1.0 if by == "abs_lambda_max" else -1.0
    start = _num((before or {}).get(by))
    gains = {}
    for alpha, measured in candidates.items():
        value = _num(measured.get(by))
        if value is not None and start is not None:
            gains[alpha] = sign * (value - start)
    best = max(gains.values(), default=0.0)
    if best <= 0:
        return max(candidates)
    return max(alpha for alpha, g in gains.items() if g >= gain * best)


# --------------------------------------------------------------------------------------------
# measurement


def spectral_summary(nodes, weights, eps: float, mask=None) -> dict[str, Any]:
    """Extreme eigenvalues and masses from Ritz nodes and quadrature weights.

    Uses :mod:`winq.quadrature` (near-zero threshold ``eps·λmax``); ``mask`` marks real nodes
    when Lanczos stopped early on some probe. The masses split at t = eps·λmax
    (:func:`winq.quadrature.mass_estimates`: ``negative_mass`` θ < −t, ``near_zero_mass``
    |θ| ≤ t, ``positive_mass`` θ > t, and ``sign_negative_mass`` θ < 0), each with its 95%
    Student-t interval over probes, ``K_ci`` (None with one probe).

    Args:
        nodes: ``(probes, steps)`` or ``(steps,)`` Ritz values θ.
        weights: same shape, quadrature weights τ (each probe's sum to 1).
        eps: near-zero threshold relative to λmax.
    """
    from winq import quadrature as d

    top, bottom = d.lambda_max(nodes, weights, mask), d.lambda_min(nodes, weights, mask)
    masses = d.mass_estimates(nodes, weights, mask, eps=eps, relative=True, sigma=None)

    def interval(key: str) -> list[float] | None:
        ci = masses[key].ci
        return [float(x) for x in ci] if all(math.isfinite(x) for x in ci) else None

    out: dict[str, Any] = {
        "lambda_max": top,
        "lambda_min": bottom,
        "abs_lambda_max": max(abs(top), abs(bottom)),
    }
    # the three-way split at t = eps·λmax (|θ| ≤ t near zero, θ < −t negative), and θ < 0
    # under its own name: with few nodes its value is the sign of the node nearest zero
    for key in ("near_zero_mass", "negative_mass", "positive_mass", "sign_negative_mass"):
        out[key] = masses[key].value
        out[f"{key}_ci"] = interval(key)
    return {
        **out,
        "near_zero_eps": eps,
        # the same mass at other thresholds, and the quadrature's resolution near zero (the
        # width of the cell of the node nearest zero, relative to λmax): with few Lanczos
        # nodes the mass at a small ε is all-or-nothing, so read it beside these
        "near_zero_mass_by_eps": {
            f"{e:g}": d.near_zero_mass(nodes, weights, mask, eps=e, relative=True)
            for e in (1e-4, 1e-3, 1e-2, 1e-1)
        },
        "near_zero_resolution": d.near_zero_resolution(nodes, weights, mask) / top
        if top > 0
        else None,
    }


def make_measure(
    probe_batches: list[dict[str, torch.Tensor]],
    params: str = "linear",
    lanczos_steps: int = 12,
    eps: float = 1e-3,
    seed: int = 0,
    probes: int = 1,
) -> Measure:
    """The spectrum rule's measurement: clipped fraction + full-reorth Lanczos quadrature.

    Args:
        probe_batches: this rank's share of the fixed held-out probe batch (the Hessian
            operator all-reduces across ranks, so every rank gets the whole batch's result).
        params: the parameter selection (``"linear"``, ``"all"``, a regex; see
            :func:`winq.analysis.select_parameters`).
        lanczos_steps: Lanczos steps (= Hessian-vector products) per probe.
        eps: near-zero threshold relative to λmax.
        seed: seeds the (fixed) probe vectors.
        probes: Rademacher probes per measurement (two or more give the near-zero mass an
            interval, which ``flat_growth`` needs).
    """

    def measure(model: nn.Module) -> dict[str, Any]:
        from winq.analysis import measure_spectrum

        spectrum = measure_spectrum(
            model,
            probe_batches,
            params=params,
            probes=probes,
            steps=lanczos_steps,
            reorth="full",
            seed=seed,
            progress=False,
        )
        result = spectral_summary(spectrum.nodes, spectrum.weights, eps, spectrum.mask)
        clipped = spectrum.metadata["clipped_fraction"]  # None for a model without QuantLinear
        result["clipped_fraction"] = 0.0 if clipped is None else clipped
        result["num_params"] = int(spectrum.num_params)
        return result

    return measure


@contextlib.contextmanager
def trial_reset(
    model: nn.Module,
    alpha: float,
    mode: str = "full",
    generator: torch.Generator | None = None,
) -> Iterator[None]:
    """Reset ``model`` (α, mode, dither generator as :func:`winq.nn.reset_`) for the duration
    of the block, then restore its latents exactly."""
    from winq.nn import reset_, restore_latents, snapshot_latents

    snapshot = snapshot_latents(model)
    try:
        reset_(model, alpha, mode, generator)
        yield
    finally:
        restore_latents(snapshot)


# --------------------------------------------------------------------------------------------
# the controller


class Controller:
    """Holds the guided controller's state between readings; the loop calls :meth:`run`.

    Args:
        rule: the rule and its thresholds.
        measure: ``model -> diagnostics`` (see :func:`make_measure`) of the spectrum rule and
            of ``--guide-monitor``; called with the model in eval mode and the global RNG
            forked around it. Unused by the latent rule (None is fine then).
        alpha: the fixed α, or None to choose among ``alpha_candidates``.
        alpha_candidates: α values tried with ``--winq-alpha auto``.
        every: read every this many steps (the loop asks :meth:`due`).
        monitor_only: measure and log, never decide or reset (``--guide-monitor``).
        mode: the reset mode (:data:`winq.nn.RESET_MODES`).
        schedule: the run's learning-rate schedule (the latent rule's flip budget needs it).
        generator: ``step -> torch.Generator`` for ``dither`` trial resets (the same the
            real reset at that step uses).
    """

    def __init__(
        self,
        rule: GuideRule,
        measure: Measure | None,
        alpha: float | None = 0.2,
        alpha_candidates: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8),
        every: int = 1,
        monitor_only: bool = False,
        mode: str = "full",
        schedule: Any = None,
        generator: Callable[[int], torch.Generator] | None = None,
    ) -> None:
        self.rule = rule
        self._measure_fn = measure
        self.alpha = alpha
        self.alpha_candidates = tuple(float(a) for a in alpha_candidates)
        self.every = int(every)
        self.monitor_only = monitor_only
        self.mode = mode
        self.schedule = schedule
        self._generator = generator
        self.reference: dict[str, Any] | None = None
        self.last_reset_step = 0
        self.stopped = False
        self.seconds = 0.0
        self.measurements = 0
        # the latent rule's level codes at its last reading (and that reading's step)
        self.codes: dict[str, torch.Tensor] | None = None
        self.codes_step: int | None = None

    @property
    def latent(self) -> bool:
        return self.rule.kind == "latent" and not self.monitor_only

    # -- state for checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": dict(self.reference) if self.reference is not None else None,
            "last_reset_step": self.last_reset_step,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "measurements": self.measurements,
            "codes": self.codes,
            "codes_step": self.codes_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state.get("reference")
        self.last_reset_step = int(state.get("last_reset_step", 0))
        self.stopped = bool(state.get("stopped", False))
        self.seconds = float(state.get("seconds", 0.0))
        self.measurements = int(state.get("measurements", 0))
        self.codes = state.get("codes")
        self.codes_step = state.get("codes_step")

    def _decision_state(self) -> dict[str, Any]:
        """What every rank must agree on after a decision (the codes are computed from the
        same weights on every rank, so they are not sent)."""
        state = self.state_dict()
        del state["codes"], state["codes_step"]
        return state

    # -- readings ----------------------------------------------------------------------------
    def measure(self, model: nn.Module) -> dict[str, Any]:
        """One spectrum measurement (model in eval mode, global RNG untouched), timed."""
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                diagnostics = dict(self._measure_fn(model))
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.measurements += 1
        diagnostics["seconds"] = seconds
        return diagnostics

    def read_latents(self, model: nn.Module, step: int) -> dict[str, Any]:
        """The latent rule's reading at ``step`` (exact; remembers this step's level codes)."""
        from winq.nn import flip_fraction, level_codes
        from winq.train.latents import latent_summary

        start = time.perf_counter()
        reading: dict[str, Any] = {"step": int(step), **latent_summary(model)}
        if self.codes is not None:
            reading["flip_fraction"] = _num(flip_fraction(self.codes, model).value)
            reading["flip_since"] = self.codes_step
            if self.schedule is not None:
                spent = self.schedule.budget(self.codes_step, step)
                remaining = self.schedule.budget(step, self.schedule.total_steps)
                reading["remaining_flips"] = remaining_flips(
                    reading["flip_fraction"], spent, remaining
                )
        self.codes = {name: codes.cpu() for name, codes in level_codes(model).items()}
        self.codes_step = int(step)
        self.seconds += time.perf_counter() - start
        self.measurements += 1
        return reading

    def initial(self, model: nn.Module) -> dict[str, Any]:
        """The reading (latent rule) or measurement (otherwise) at step 0: the first reference."""
        self.reference = self.read_latents(model, 0) if self.latent else self.measure(model)
        return self.reference

    def begin(
        self, model: nn.Module, sync: Callable[[Any], Any] = lambda value: value
    ) -> dict[str, Any]:
        """The first reference, read before the first update; returns the record to log at
        step 0: ``{"guide": reading}`` (latent rule) or ``{"diagnostics": measurement}``."""
        self.reference = sync(self.initial(model))
        if self.latent:
            reading = {k: v for k, v in self.reference.items() if k != "step"}
            return {"guide": {"rule": "latent", **reading, "decision": "wait",
                              "reason": "the first reading: the reference"}}  # fmt: skip
        return {"diagnostics": self.reference}

    # -- decisions ---------------------------------------------------------------------------
    def decide_now(
        self, reading: dict[str, Any], step: int, lr_fraction: float, after_warmup: bool
    ) -> Decision:
        """Apply the rule against the current reference; a refusal stops the controller."""
        rule = decide_latent if self.latent else decide
        decision = rule(
            reading,
            self.reference,
            steps_since_reset=step - self.last_reset_step,
            lr_fraction=lr_fraction,
            after_warmup=after_warmup,
            rule=self.rule,
        )
        if decision.decision == "refuse":
            self.stopped = True
        return decision

    def trials(self, model: nn.Module, step: int = 0) -> dict[float, dict[str, Any]]:
        """A trial reset and measurement at every candidate α (only the fixed α if set); the
        latent rule measures the grid exactly (:func:`~winq.train.latents.latent_summary`)."""
        from winq.train.latents import latent_summary

        alphas = self.alpha_candidates if self.alpha is None else (self.alpha,)
        candidates: dict[float, dict[str, Any]] = {}
        for alpha in alphas:
            generator = self._generator(step) if self.mode == "dither" and self._generator else None
            with trial_reset(model, alpha, self.mode, generator):
                candidates[alpha] = latent_summary(model) if self.latent else self.measure(model)
        return candidates

    def pick_alpha(
        self, candidates: dict[float, dict[str, Any]], before: dict[str, Any] | None
    ) -> float:
        if self.alpha is not None:
            return self.alpha
        by = "clipped_fraction" if self.latent else self.rule.alpha_by
        return choose_alpha(candidates, before, by, self.rule.alpha_gain)

    def step(
        self,
        model: nn.Module,
        step: int,
        lr_fraction: float,
        after_warmup: bool,
        sync: Callable[[Any], Any] = lambda value: value,
    ) -> tuple[dict[str, Any] | None, Decision | None, float | None, dict[float, dict]]:
        """Read and decide at ``step``.

        Args:
            sync: applied to the reading, the decision and the trial measurements before
                they are used (``distributed.broadcast_object`` makes every rank take rank 0's,
                so ranks never diverge; all ranks must call this together).

        Returns:
            ``(reading, decision, alpha, candidates)``: all None/empty when nothing was read
            (the controller has stopped, or — spectrum rule — fewer than ``min_period`` steps
            have passed since the last reset, so no reset could be decided); ``alpha`` the α
            to reset with when the decision is ``"reset"``; ``candidates`` the trial
            measurements by α (with ``auto`` α; empty unless a reset was decided).
        """
        if self.stopped:
            return None, None, None, {}
        if self.latent:  # cheap and exact: read every time, so the flip fraction is per period
            return self._latent_step(model, step, lr_fraction, after_warmup, sync)
        if step - self.last_reset_step < self.rule.min_period:
            return None, None, None, {}
        else:
            reading = sync(self.measure(model))
        decision = sync(self.decide_now(reading, step, lr_fraction, after_warmup))
        self.stopped = decision.decision == "refuse"
        if decision.decision != "reset":
            return reading, decision, None, {}
        candidates = sync(self.trials(model, step))
        return reading, decision, self.pick_alpha(candidates, reading), candidates

    def _latent_step(self, model, step, lr_fraction, after_warmup, sync):
        """:meth:`step` of the latent rule: a reset that is due is first tried (exactly, at
        every candidate α with ``auto``), and the fall of the grid dispersion it would cause
        goes into the reading as ``collapse`` before the rule decides."""
        reading = sync(self.read_latents(model, step))
        returned = clipping_returned(reading, self.reference)
        if returned is not None:
            reading["clipping_returned"] = returned
        candidates, alpha = {}, None
        if self.decide_now(reading, step, lr_fraction, after_warmup).decision == "reset":
            candidates = sync(self.trials(model, step))
            alpha = self.pick_alpha(candidates, reading)
            after = _num(candidates[alpha].get("grid_dispersion"))
            before = _num(reading.get("grid_dispersion"))
            if after is not None and before is not None:
                reading["collapse"] = before - after
        decision = sync(self.decide_now(reading, step, lr_fraction, after_warmup))
        self.stopped = decision.decision == "refuse"
        if decision.decision != "reset":
            return reading, decision, None, {}
        return reading, decision, alpha, candidates if self.alpha is None else {}

    def after_reset(self, step: int, measured: dict[str, Any]) -> None:
        """Record a reset at ``step`` whose post-reset measurement is ``measured``."""
        self.last_reset_step = step
        self.reference = measured

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the loop should call :meth:`run` after update ``step``."""
        return step % self.every == 0 and step < total_steps

    def run(
        self,
        model: nn.Module,
        step: int,
        lr_fraction: float,
        after_warmup: bool,
        reset: Callable[[float], dict[str, Any]],
        sync: Callable[[Any], Any] = lambda value: value,
    ) -> list[dict[str, Any]]:
        """Everything the controller does after update ``step``: read, decide, reset.

        Args:
            model: the (unwrapped) model.
            reset: ``alpha -> reset record``: applies a reset with the run's options
                (:func:`winq.train.loop.apply_reset`).
            sync: see :meth:`step`; the controller's state is also taken from rank 0.

        Returns:
            The records to log at ``step``, as they happened: ``{"diagnostics": ...}`` (a
            spectrum measurement), ``{"guide": ...}`` (the decision; the latent rule's reading
            in it) and ``{"reset": ...}`` (none when nothing was read).
        """
        records: list[dict[str, Any]] = []
        if self.monitor_only:
            records.append({"diagnostics": sync(self.measure(model))})
            return records
        reading, decision, alpha, candidates = self.step(
            model, step, lr_fraction, after_warmup, sync=sync
        )
        if reading is not None:
            guide: dict[str, Any] = {"rule": self.rule.kind}
            if self.latent:
                guide.update({k: v for k, v in reading.items() if k != "step"})
            else:
                records.append({"diagnostics": reading})
            guide.update(decision=decision.decision, reason=decision.reason)
            if decision.decision == "reset":
                guide["alpha"] = alpha
                if candidates:
                    key = "clipped_fraction" if self.latent else "near_zero_mass"
                    guide["candidates"] = {f"{a:g}": c.get(key) for a, c in candidates.items()}
            records.append({"guide": guide})
            if decision.decision == "reset":
                record = reset(alpha)
                if self.latent:
                    before = reading.get("clipped_fraction")
                    measured = {**reading, **record["after"], "clipped_before_reset": before}
                else:
                    measured = candidates[alpha]
                self.after_reset(step, measured)
                records.append({"reset": record})
        # every rank keeps rank 0's state, so later decisions agree
        self.load_state_dict({**sync(self._decision_state()), "codes": self.codes,
                              "codes_step": self.codes_step})  # fmt: skip
        return records

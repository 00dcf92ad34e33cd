r"""The spectrum-guided WinQ controller: measure, decide, reset.

Every ``--guide-every`` steps the controller measures, on one fixed held-out probe batch,

* ``clipped_fraction`` — the share of latent weights outside the quantizer's range (zero STE
  gradient). It is exact and free, and it is the part of the Hessian's null space that a reset
  removes (``docs`` / FINDINGS: a 2-bit reset took it from 8.9% to 0.03%);
* a few Lanczos steps (``--guide-steps``, full reorthogonalisation) on the Hessian of the
  quantized model's loss with respect to the selected latent weights (``--guide-params``),
  from one fixed Rademacher probe: Ritz values :math:`\theta_j` and Gauss-quadrature weights
  :math:`\tau_j` give :math:`\lambda_{\max}`, :math:`\lambda_{\min}`,
  :math:`|\lambda|_{\max} = \max(|\lambda_{\max}|, |\lambda_{\min}|)`, the near-zero mass
  :math:`\sum_j \tau_j [\,|\theta_j| < \varepsilon\,\lambda_{\max}]` (ε relative, as in
  FINDINGS, so it does not grow merely because the whole spectrum shrinks) and the negative mass
  :math:`\sum_j \tau_j [\theta_j < 0]`.

The same probe vector and batch are used for every measurement (common random numbers), so
successive measurements differ because the weights moved, not because the probe did.

**What can be measured at this cost** (tiny preset, 2-bit, 300 updates, BENCHMARKS.md): with
8–16 Lanczos nodes from one probe, :math:`\lambda_{\max}` is already converged (the same to 4
digits as with 30 nodes), but nearly all the quadrature weight (0.93–0.99) sits on a single
node within 1e-2·λmax of zero, which lands on either side of 1e-3·λmax (and of 0) from one
measurement to the next: the near-zero mass read 0.98, 0, 0.97, 0, ... and the negative mass
0.01, 0.99, ... on consecutive measurements of one run. They are logged, with the mass at
several thresholds and the quadrature's resolution near zero, but do not drive decisions by
default. The clipped fraction grew steadily (0.7% → 3.0%, flattening as the learning rate
decayed), and a trial reset's effect on :math:`|\lambda|_{\max}` is monotone in α.

**The rule** (:func:`decide`). The reference is the measurement just after the last reset
(or at step 0). A reset is due when, since then,

* the clipped fraction grew by at least ``clip_growth`` (absolute; default 0.01), or
* :math:`|\lambda|_{\max}` shrank by at least the factor ``shrink`` (default 2), or
* the near-zero mass grew by at least ``flat_growth`` (absolute; off by default, see above),

but only once ``min_period`` steps have passed since the last reset (measurements before that
are skipped: nothing could be decided); after ``max_period`` steps a reset is due whatever was
measured. A due reset is *refused* once warm-up is over and the learning rate has decayed
below ``lr_floor`` of its peak: FINDINGS found resets late in a decaying schedule hurt
(latents collapse onto the grid, level flips stop). After the first refusal the controller
stops measuring, since the learning rate only falls from there.

**α** is fixed (``--winq-alpha A``) or chosen (``--winq-alpha auto``) among candidates by a
trial reset at each: the latent weights are copied, reset with that α, measured, and restored
exactly. A reset leaves Q(W) — hence the loss and the scales — unchanged and changes the
Hessian only through the clip mask, so a trial costs only the measurement. The criterion
(``alpha_by``):

* ``"abs_lambda_max"`` (default): a stronger reset (smaller α) un-clips more weights and raises
  :math:`|\lambda|_{\max}` monotonically, with diminishing returns; take the *gentlest*
  candidate (largest α) that achieves at least ``alpha_gain`` (0.9) of the largest rise over
  the pre-reset value among the candidates. If no candidate raises it (1-bit LSQ: a reset
  cannot un-clip anything), the gentlest candidate.
* ``"clipped_fraction"``: the same rule on the fall of the clipped fraction (exact, but blind
  to the curvature).
* ``"near_zero_mass"``: the smallest near-zero mass (ties within 1e-3 to the larger α) —
  the criterion of the paper's α sweep, meaningful only with enough Lanczos steps.

The chosen candidate's measurement is bit-for-bit what the real reset gives, so it becomes the
new reference.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from winq.train.config import ALPHA_CRITERIA

__all__ = [
    "ALPHA_CRITERIA",
    "DIAGNOSTIC_KEYS",
    "Controller",
    "Decision",
    "GuideRule",
    "choose_alpha",
    "decide",
    "latent_snapshot",
    "make_measure",
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
        min_period: fewest steps between two resets (and between step 0 and the first).
        max_period: a reset is due after this many steps whatever was measured (None: never).
        clip_growth: rise in clipped fraction (absolute) that triggers a reset (None: off).
        flat_growth: rise in near-zero mass (absolute) that triggers a reset (None: off).
        shrink: factor by which |λ|max must fall to trigger a reset (None: off).
        lr_floor: refuse resets after warm-up once lr < lr_floor · peak lr.
        alpha_by: criterion of ``--winq-alpha auto`` (see the module docstring).
        alpha_gain: fraction of the best candidate's gain the chosen (gentlest) one must reach.
    """

    min_period: int = 1
    max_period: int | None = None
    clip_growth: float | None = 0.01
    flat_growth: float | None = None
    shrink: float | None = 2.0
    lr_floor: float = 0.25
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


def decide(
    diagnostics: dict[str, Any],
    reference: dict[str, Any] | None,
    *,
    steps_since_reset: int,
    lr_fraction: float,
    after_warmup: bool,
    rule: GuideRule,
) -> Decision:
    """The controller's decision from one measurement (a pure function; see module docstring).

    Args:
        diagnostics: the measurement now (keys of :data:`DIAGNOSTIC_KEYS`; None = unknown).
        reference: the measurement just after the last reset (or the first one); None if there
            is none yet, in which case only ``max_period`` can make a reset due.
        steps_since_reset: optimizer steps since the last reset (or since step 0).
        lr_fraction: the current learning rate over the peak learning rate.
        after_warmup: whether warm-up is over (the refusal applies only then).
        rule: the thresholds.
    """
    if steps_since_reset < rule.min_period:
        return Decision(
            "wait", f"{steps_since_reset} steps since the last reset < min period {rule.min_period}"
        )
    triggers: list[str] = []
    if rule.max_period is not None and steps_since_reset >= rule.max_period:
        triggers.append(f"{steps_since_reset} steps since the last reset >= max period")
    if reference is not None:
        now, ref = (
            _num(diagnostics.get("clipped_fraction")),
            _num(reference.get("clipped_fraction")),
        )
        if rule.clip_growth is not None and now is not None and ref is not None:
            if now - ref >= rule.clip_growth:
                triggers.append(f"clipped fraction {ref:.4f} -> {now:.4f}")
        now, ref = _num(diagnostics.get("near_zero_mass")), _num(reference.get("near_zero_mass"))
        if rule.flat_growth is not None and now is not None and ref is not None:
            if now - ref >= rule.flat_growth:
                triggers.append(f"near-zero mass {ref:.3f} -> {now:.3f}")
        now, ref = _num(diagnostics.get("abs_lambda_max")), _num(reference.get("abs_lambda_max"))
        if rule.shrink is not None and now is not None and ref is not None and ref > 0:
            if now <= ref / rule.shrink:
                triggers.append(f"|lambda|max {ref:.4g} -> {now:.4g}")
    if not triggers:
        return Decision("wait", "no trigger")
    if after_warmup and lr_fraction < rule.lr_floor:
        return Decision(
            "refuse",
            f"lr at {lr_fraction:.3f} of peak < floor {rule.lr_floor} ({'; '.join(triggers)})",
            triggers,
        )
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


def spectral_summary(nodes, weights, eps: float, mask=None) -> dict[str, float]:
    """Extreme eigenvalues and masses from Ritz nodes and quadrature weights.

    Uses :mod:`winq.analysis.diagnostics` (near-zero threshold ``eps·λmax``, the FINDINGS
    convention); ``mask`` marks real nodes when Lanczos stopped early on some probe.

    Args:
        nodes: ``(probes, steps)`` or ``(steps,)`` Ritz values θ.
        weights: same shape, quadrature weights τ (each probe's sum to 1).
        eps: near-zero threshold relative to λmax.
    """
    from winq.analysis import diagnostics as d

    top, bottom = d.lambda_max(nodes, weights, mask), d.lambda_min(nodes, weights, mask)
    return {
        "lambda_max": top,
        "lambda_min": bottom,
        "abs_lambda_max": max(abs(top), abs(bottom)),
        "near_zero_mass": d.near_zero_mass(nodes, weights, mask, eps=eps, relative=True),
        "negative_mass": d.negative_mass(nodes, weights, mask),
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
) -> Measure:
    """The production measurement: clipped fraction + one-probe, full-reorth Lanczos quadrature.

    Args:
        probe_batches: this rank's share of the fixed held-out probe batch (the Hessian
            operator all-reduces across ranks, so every rank gets the whole batch's result).
        params: the parameter selection (``"linear"``, ``"all"``, a regex; see
            :func:`winq.analysis.select_parameters`).
        lanczos_steps: Lanczos steps (= Hessian-vector products) per measurement.
        eps: near-zero threshold relative to λmax.
        seed: seeds the (fixed) probe vector.
    """

    def measure(model: nn.Module) -> dict[str, Any]:
        from winq.analysis import measure_spectrum

        spectrum = measure_spectrum(
            model,
            probe_batches,
            params=params,
            probes=1,
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


@torch.no_grad()
def latent_snapshot(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor, Any, Any]]:
    """Copies of every QuantLinear's latent weight and frozen-noise draws, to restore later."""
    from winq.nn import quant_layers

    return [
        (layer, layer.weight.detach().clone(), layer._frozen_noise, layer._frozen_scale_noise)
        for _, layer in quant_layers(model)
    ]


@torch.no_grad()
def restore_snapshot(snapshot: list[tuple[nn.Module, torch.Tensor, Any, Any]]) -> None:
    for layer, weight, noise, scale_noise in snapshot:
        layer.weight.copy_(weight)
        layer._frozen_noise = noise
        layer._frozen_scale_noise = scale_noise


@contextlib.contextmanager
def trial_reset(model: nn.Module, alpha: float) -> Iterator[None]:
    """Reset ``model`` with ``alpha`` for the duration of the block, then restore it exactly."""
    from winq.nn import reset_

    snapshot = latent_snapshot(model)
    try:
        reset_(model, alpha)
        yield
    finally:
        restore_snapshot(snapshot)


class Controller:
    """Holds the guided controller's state between measurements; the loop calls :meth:`step`.

    Args:
        rule: the decision thresholds.
        measure: ``model -> diagnostics`` (see :func:`make_measure`); called with the model in
            eval mode, must not touch the global RNG (the loop forks it around the call).
        alpha: the fixed α, or None to choose among ``alpha_candidates``.
        alpha_candidates: α values tried with ``--winq-alpha auto``.
    """

    def __init__(
        self,
        rule: GuideRule,
        measure: Measure,
        alpha: float | None = 0.2,
        alpha_candidates: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8),
    ) -> None:
        self.rule = rule
        self.measure = measure
        self.alpha = alpha
        self.alpha_candidates = tuple(float(a) for a in alpha_candidates)
        self.reference: dict[str, Any] | None = None
        self.last_reset_step = 0
        self.stopped = False
        self.seconds = 0.0
        self.measurements = 0

    # -- state for checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": dict(self.reference) if self.reference is not None else None,
            "last_reset_step": self.last_reset_step,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "measurements": self.measurements,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state.get("reference")
        self.last_reset_step = int(state.get("last_reset_step", 0))
        self.stopped = bool(state.get("stopped", False))
        self.seconds = float(state.get("seconds", 0.0))
        self.measurements = int(state.get("measurements", 0))

    def rule_dict(self) -> dict[str, Any]:
        return asdict(self.rule)

    # -- work --------------------------------------------------------------------------------
    def _measure(self, model: nn.Module) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                diagnostics = dict(self.measure(model))
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.measurements += 1
        diagnostics["seconds"] = seconds
        return diagnostics

    def measure_now(self, model: nn.Module) -> dict[str, Any]:
        """One measurement (model in eval mode, global RNG untouched), timed in ``seconds``."""
        return self._measure(model)

    def initial(self, model: nn.Module) -> dict[str, Any]:
        """Measure at step 0: the first reference."""
        diagnostics = self._measure(model)
        self.reference = diagnostics
        return diagnostics

    def decide_now(
        self, diagnostics: dict[str, Any], step: int, lr_fraction: float, after_warmup: bool
    ) -> Decision:
        """Apply :func:`decide` against the current reference; a refusal stops the controller."""
        decision = decide(
            diagnostics,
            self.reference,
            steps_since_reset=step - self.last_reset_step,
            lr_fraction=lr_fraction,
            after_warmup=after_warmup,
            rule=self.rule,
        )
        if decision.decision == "refuse":
            self.stopped = True
        return decision

    def trials(self, model: nn.Module) -> dict[float, dict[str, Any]]:
        """A trial reset and measurement at every candidate α (only the fixed α if set)."""
        alphas = self.alpha_candidates if self.alpha is None else (self.alpha,)
        candidates: dict[float, dict[str, Any]] = {}
        for alpha in alphas:
            with trial_reset(model, alpha):
                candidates[alpha] = self._measure(model)
        return candidates

    def pick_alpha(
        self, candidates: dict[float, dict[str, Any]], before: dict[str, Any] | None
    ) -> float:
        if self.alpha is not None:
            return self.alpha
        return choose_alpha(candidates, before, self.rule.alpha_by, self.rule.alpha_gain)

    def step(
        self,
        model: nn.Module,
        step: int,
        lr_fraction: float,
        after_warmup: bool,
        sync: Callable[[Any], Any] = lambda value: value,
    ) -> tuple[dict[str, Any] | None, Decision | None, float | None, dict[float, dict]]:
        """Measure and decide at ``step``.

        Args:
            sync: applied to the measurement, the decision and the trial measurements before
                they are used (``distributed.broadcast_object`` makes every rank take rank 0's,
                so ranks never diverge; all ranks must call this together).

        Returns:
            ``(diagnostics, decision, alpha, candidates)``: all None/empty when nothing was
            measured (the controller has stopped, or fewer than ``min_period`` steps have
            passed since the last reset, so no reset could be decided); ``alpha`` the α to
            reset with when the decision is ``"reset"``; ``candidates`` the trial measurements
            by α (empty unless a reset was decided).
        """
        if self.stopped or step - self.last_reset_step < self.rule.min_period:
            return None, None, None, {}
        diagnostics = sync(self._measure(model))
        decision = sync(self.decide_now(diagnostics, step, lr_fraction, after_warmup))
        self.stopped = decision.decision == "refuse"
        if decision.decision != "reset":
            return diagnostics, decision, None, {}
        candidates = sync(self.trials(model))
        return diagnostics, decision, self.pick_alpha(candidates, diagnostics), candidates

    def after_reset(self, step: int, measured: dict[str, Any]) -> None:
        """Record a reset at ``step`` whose post-reset measurement is ``measured``."""
        self.last_reset_step = step
        self.reference = measured

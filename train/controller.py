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

**The rule** (:func:`decide`). The reference is the measurement just after the last reset
(or at step 0). A reset is due when, since then,

* the clipped fraction grew by at least ``clip_growth`` (absolute), or
* the near-zero mass grew by at least ``flat_growth`` (absolute), or
* :math:`|\lambda|_{\max}` shrank by at least the factor ``shrink``,

but only once ``min_period`` steps have passed since the last reset; after ``max_period``
steps a reset is due whatever was measured. A due reset is *refused* once warm-up is over
and the learning rate has decayed below ``lr_floor`` of its peak: FINDINGS found resets late
in a decaying schedule hurt (latents collapse onto the grid, level flips stop), and a run
cannot recover from a late reset at a small learning rate. After the first refusal the
controller stops measuring, since the learning rate only falls from there.

**α** is fixed (``--winq-alpha A``) or chosen (``--winq-alpha auto``) among candidates by
a trial reset at each: the latent weights are copied, reset with that α, measured, and
restored exactly. A reset leaves Q(W) — hence the loss and the scales — unchanged, so a trial
costs only the measurement. The candidate with the smallest near-zero mass wins (ties, to
1e-3: the larger α, i.e. the gentler reset). The chosen candidate's measurement is
bit-for-bit what the real reset gives, so it becomes the new reference.
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

__all__ = [
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
    """

    min_period: int = 1
    max_period: int | None = None
    clip_growth: float | None = 0.02
    flat_growth: float | None = 0.05
    shrink: float | None = 1.5
    lr_floor: float = 0.25


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


def choose_alpha(candidates: dict[float, dict[str, Any]]) -> float:
    """The candidate α whose trial reset gives the smallest near-zero mass.

    Ties (within 1e-3) go to the larger α; candidates without a finite near-zero mass lose.

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("no alpha candidates")

    def key(alpha: float) -> tuple[float, float]:
        mass = _num(candidates[alpha].get("near_zero_mass"))
        return (math.inf if mass is None else round(mass / TIE_TOLERANCE), -alpha)

    return min(candidates, key=key)


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
        from winq.analysis import HessianOperator, slq
        from winq.nn import clipped_fraction

        with HessianOperator(model, probe_batches, params=params) as operator:
            spectrum = slq(
                operator, probes=1, steps=lanczos_steps, reorth="full", seed=seed, progress=False
            )
            names = list(operator.param_names)
        result = spectral_summary(spectrum.nodes, spectrum.weights, eps, spectrum.mask)
        result["clipped_fraction"] = clipped_fraction(model, names)
        result["num_params"] = int(operator.num_params)
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
        alpha_candidates: Sequence[float] = (0.0, 0.2, 0.4, 0.6),
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

    def pick_alpha(self, candidates: dict[float, dict[str, Any]]) -> float:
        return choose_alpha(candidates) if self.alpha is None else self.alpha

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
            ``(diagnostics, decision, alpha, candidates)``: diagnostics None when the controller
            has stopped; ``alpha`` the α to reset with when the decision is ``"reset"``;
            ``candidates`` the trial measurements by α (empty unless a reset was decided).
        """
        if self.stopped:
            return None, None, None, {}
        diagnostics = sync(self._measure(model))
        decision = sync(self.decide_now(diagnostics, step, lr_fraction, after_warmup))
        self.stopped = decision.decision == "refuse"
        if decision.decision != "reset":
            return diagnostics, decision, None, {}
        candidates = sync(self.trials(model))
        return diagnostics, decision, self.pick_alpha(candidates), candidates

    def after_reset(self, step: int, measured: dict[str, Any]) -> None:
        """Record a reset at ``step`` whose post-reset measurement is ``measured``."""
        self.last_reset_step = step
        self.reference = measured

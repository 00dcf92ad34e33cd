"""``TrainConfig``: every setting of a training run, resolved and validated before any work.

The command line (:mod:`winq.train.cli`) fills a ``TrainConfig`` with the flags the user gave;
:meth:`TrainConfig.resolve` then fills what was left open from the preset's defaults and the
mode (``bits`` 16 is pre-training, below 16 is QAT), and :meth:`TrainConfig.validate` refuses
impossible combinations with a one-line ``ValueError`` (exit 2 at the command line). The
resolved config is what ``RUN/config.json`` holds (:meth:`to_json`), and what ``--resume``
reads back, so a resumed run is configured exactly as the original.

Defaults that depend on the run's length are relative to it: with ``T = steps``, evaluation
every ``T/10`` steps, checkpoints every ``T/4``, controller measurements every ``T/10``,
min period ``T/8`` and max period ``T/2`` between guided resets.

Weight decay (``--weight-decay``, default 0, as in the WinQ/ParetoQ reference runs) applies
only to the weight matrices of linear layers (latent weights of quantized ones included) —
never to quantizer scales, norms, biases or embeddings: decaying a scale would shrink the
quantization grid, and decaying embeddings/norms is the usual mistake.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from winq.config import NOISE_MODES, QuantConfig, parse_bits

__all__ = [
    "GUIDE_RULES",
    "PRESET_NAMES",
    "RESET_MODES",
    "RESET_SCALES",
    "TrainConfig",
    "preset_defaults",
]

PRESET_NAMES = ("tiny", "small")
RESET_SCALES = ("keep", "freeze", "reinit")
RESET_MODES = ("full", "clipped", "dither")  # winq.nn.RESET_MODES (no torch import here)
GUIDE_RULES = ("latent", "spectrum")  # --guide-rule (winq.train.controller)
# the reset mode of guided runs unless --winq-reset-mode says otherwise (the controller's
# docstring gives the evidence); fixed schedules default to the paper's "full"
GUIDED_RESET_MODE = "clipped"
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_NOISE_SIGMA = 1e-3  # the paper's σ, on by default in WinQ runs only
DEFAULT_ALPHA_CANDIDATES = (0.0, 0.2, 0.4, 0.6, 0.8)
ALPHA_CRITERIA = ("abs_lambda_max", "clipped_fraction", "near_zero_mass")  # --guide-alpha-by

# fields added after format_version 1 was fixed, with the value that reproduces what a run
# written before them did (so such a run can still be resumed)
ADDED_FIELDS: dict[str, Any] = {
    "reset_mode": "full",
    "guide_rule": "spectrum",
    "guide_flip_budget": None,
    "guide_max_return": None,
    "guide_probes": 1,
    "eval_tasks": None,
    "eval_limit": None,
}

# fields that may differ between a run and its --resume (they do not change the computation)
OPERATIONAL = frozenset({"progress", "keep_last", "skip_nonfinite", "eval_tasks", "eval_limit"})


def preset_defaults(preset: str, pretrain: bool) -> dict[str, Any]:
    """Training hyper-parameters of a preset (from :mod:`winq.embedded`).

    Returns a dict with ``steps, batch_size, seq_len, lr, warmup`` (and possibly more).
    """
    from winq import embedded

    return dict(embedded.training_defaults(preset, "pretrain" if pretrain else "qat"))


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; None means "resolve from the preset/mode" (see ``resolve``)."""

    # model
    preset: str = "tiny"
    init: str | None = None
    bits: float | int = 2
    quantizer: str | None = None
    group_size: int | None = None
    a_bits: int | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    # data
    data: str | None = None
    data_config: str | None = None
    text_field: str = "text"
    streaming: bool = False
    seq_len: int | None = None
    # optimization
    steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    lr: float | None = None
    min_lr_ratio: float = 0.0
    warmup: int | None = None
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    fsdp: bool = False
    # WinQ
    winq_resets: int | None = None
    winq_period: int | None = None
    winq_alpha: float | str = 0.2
    reset_mode: str | None = None
    noise_sigma: float | None = None
    noise_sigma_scale: float | None = None
    noise_mode: str = "pre"
    noise_relative: bool = False
    reset_optimizer: bool = False
    reset_scales: str = "keep"
    scale_freeze_steps: int | None = None
    # guided controller
    guide: bool = False
    guide_rule: str = "latent"
    guide_monitor: bool = False
    guide_every: int | None = None
    guide_flip_budget: float | None = 1.0
    guide_max_return: float | None = 0.5
    guide_probes: int = 1
    guide_steps: int = 8
    guide_params: str = "linear"
    guide_batch_size: int = 1
    guide_eps: float = 1e-3
    guide_min_period: int | None = None
    guide_max_period: int | None = None
    guide_clip_growth: float | None = 0.01
    guide_flat_growth: float | None = None
    guide_shrink: float | None = 2.0
    guide_lr_floor: float = 0.25
    guide_alpha_by: str = "abs_lambda_max"
    guide_alpha_candidates: tuple[float, ...] = DEFAULT_ALPHA_CANDIDATES
    # run folder
    out: str | None = None
    overwrite: bool = False
    eval_every: int | None = None
    eval_batches: int = 8
    eval_tasks: str | None = None  # winq-eval on the final checkpoint (comma-separated)
    eval_limit: float | None = None
    save_every: int | None = None
    keep_last: int | None = None
    log_every: int = 1
    progress: bool = True
    skip_nonfinite: bool = False

    # -- derived ---------------------------------------------------------------------------
    @property
    def pretrain(self) -> bool:
        return self.bits == 16

    @property
    def winq_mode(self) -> str:
        if self.pretrain:
            return "off"
        if self.guide:
            return "guided"
        if self.winq_period is not None or (self.winq_resets or 0) > 0:
            return "fixed"
        return "off"

    @property
    def alpha_auto(self) -> bool:
        return self.winq_alpha == "auto"

    def quant_config(self) -> QuantConfig:
        return QuantConfig(
            bits=self.bits,
            quantizer=self.quantizer,
            group_size=self.group_size,
            a_bits=self.a_bits,
            noise_sigma=self.noise_sigma or 0.0,
            noise_sigma_scale=self.noise_sigma_scale,
            noise_mode=self.noise_mode,
            noise_relative=self.noise_relative,
        )

    def reset_steps(self) -> list[int]:
        """The steps of the fixed schedule (empty unless the mode is ``"fixed"``)."""
        from winq.train.schedule import fixed_reset_steps

        if self.winq_mode != "fixed":
            return []
        return fixed_reset_steps(self.steps, self.winq_resets or 0, self.winq_period)

    # -- resolution and validation ---------------------------------------------------------
    def check_flags(self) -> None:
        """Checks that need no preset or file: combinations of the flags as given.

        Raises:
            ValueError: one line naming the flags.
        """
        try:
            self.bits = parse_bits(self.bits)
        except ValueError as e:
            raise ValueError(f"--bits: {e}") from None
        if self.preset not in PRESET_NAMES:
            raise ValueError(
                f"--preset must be one of {', '.join(PRESET_NAMES)}, got {self.preset!r}"
            )
        if self.pretrain:
            for flag, given in (
                ("--winq-resets", self.winq_resets),
                ("--winq-period", self.winq_period),
                ("--guide", self.guide or None),
                ("--quantizer", self.quantizer),
                ("--group-size", self.group_size),
                ("--a-bits", self.a_bits),
                ("--noise-sigma", self.noise_sigma or None),
            ):
                if given is not None and given != 0:
                    raise ValueError(
                        f"{flag} needs QAT (--bits below 16); --bits 16 is pre-training"
                    )
        if self.winq_period is not None and self.winq_resets:
            raise ValueError("give either --winq-resets or --winq-period, not both")
        if self.guide and (self.winq_period is not None or self.winq_resets):
            raise ValueError("--guide decides when to reset; drop --winq-resets/--winq-period")
        if self.fsdp and (self.guide_monitor or (self.guide and self.guide_rule == "spectrum")):
            raise ValueError(
                "--fsdp cannot measure spectra during training (--guide-monitor, --guide-rule "
                "spectrum): their products are double backward, which FSDP cannot run; use "
                "--guide-rule latent, or measure checkpoints with winq-spectrum --fsdp"
            )
        if self.guide and self.guide_monitor:
            raise ValueError("--guide-monitor only measures; it cannot be combined with --guide")
        if isinstance(self.winq_alpha, str):
            if self.winq_alpha != "auto":
                raise ValueError(
                    f"--winq-alpha must be in [0, 1] or 'auto', got {self.winq_alpha!r}"
                )
            if not self.guide:
                raise ValueError("--winq-alpha auto chooses alpha by measuring; it needs --guide")
        elif not 0.0 <= float(self.winq_alpha) <= 1.0:
            raise ValueError(f"--winq-alpha must be in [0, 1] or 'auto', got {self.winq_alpha}")
        if self.scale_freeze_steps is not None and self.reset_scales != "freeze":
            raise ValueError("--scale-freeze-steps needs --reset-scales freeze")
        if self.reset_mode is not None and self.reset_mode not in RESET_MODES:
            raise ValueError(
                f"--winq-reset-mode must be one of {', '.join(RESET_MODES)}, got {self.reset_mode!r}"
            )
        if self.pretrain and self.reset_mode not in (None, "full"):
            raise ValueError(
                "--winq-reset-mode needs QAT (--bits below 16); --bits 16 is pre-training"
            )
        if self.guide_rule not in GUIDE_RULES:
            raise ValueError(
                f"--guide-rule must be one of {', '.join(GUIDE_RULES)}, got {self.guide_rule!r}"
            )
        if self.guide_flip_budget is not None and not (
            math.isfinite(self.guide_flip_budget) and self.guide_flip_budget >= 0
        ):
            raise ValueError(
                f"--guide-flip-budget must be a number >= 0 or 'off', got {self.guide_flip_budget}"
            )
        if self.guide_max_return is not None and not (
            math.isfinite(self.guide_max_return) and self.guide_max_return >= 0
        ):
            raise ValueError(
                f"--guide-max-return must be a number >= 0 or 'off', got {self.guide_max_return}"
            )
        if self.guide_probes < 1:
            raise ValueError(f"--guide-probes must be a positive integer, got {self.guide_probes}")
        if self.reset_scales not in RESET_SCALES:
            raise ValueError(f"--reset-scales must be one of {', '.join(RESET_SCALES)}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"--noise-mode must be one of {', '.join(NOISE_MODES)}")
        for value in self.guide_alpha_candidates:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--guide-alpha-candidates must lie in [0, 1], got {value}")
        if self.guide_alpha_by not in ALPHA_CRITERIA:
            raise ValueError(f"--guide-alpha-by must be one of {', '.join(ALPHA_CRITERIA)}")
        if not self.guide_alpha_candidates:
            raise ValueError("--guide-alpha-candidates needs at least one value")
        if self.min_lr_ratio < 0 or self.min_lr_ratio > 1:
            raise ValueError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.pretrain:
            try:
                self.quant_config()
            except ValueError as e:
                raise ValueError(str(e)) from None

    def resolve(self, defaults: dict[str, Any] | None = None) -> TrainConfig:
        """Fill every None from the preset's defaults and the run's length; then validate.

        Args:
            defaults: the preset's hyper-parameters (default :func:`preset_defaults`).

        Returns:
            ``self``.

        Raises:
            ValueError: an impossible combination (one line).
        """
        self.check_flags()
        if defaults is None:
            defaults = preset_defaults(self.preset, self.pretrain)
        if self.warmup is None and self.steps is not None:
            # an implicit warm-up follows an explicit run length (5% of it for every preset)
            from winq.embedded import scaled_warmup

            self.warmup = scaled_warmup(defaults, self.steps)
        for name in ("steps", "batch_size", "seq_len", "lr", "warmup"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        total = int(self.steps)
        if self.winq_resets is None:  # the paper's 3, as many as a very short run holds
            implicit = 0 if self.pretrain or self.guide or self.winq_period else 3
            self.winq_resets = min(implicit, max(0, total - 1))
        if self.noise_sigma is None:
            # the paper's σ with its fixed schedule; none for the guided controller, whose
            # default must do no harm: on the tiny grid (BENCHMARKS.md, issue 13) noise
            # σ = 1e-3 alone, with no reset made, ended 1-bit QAT worse in 3 of 3 seeds
            self.noise_sigma = DEFAULT_NOISE_SIGMA if self.winq_mode == "fixed" else 0.0
        if self.eval_every is None:
            self.eval_every = max(1, total // 10)
        if self.save_every is None:
            self.save_every = max(1, total // 4)
        if self.reset_mode is None:
            latent = self.guide and self.guide_rule == "latent"
            self.reset_mode = GUIDED_RESET_MODE if latent else "full"
        if self.guide or self.guide_monitor:
            # the latent rule's readings are exact and cheap: every T/20 updates, and no reset
            # is ever forced; the spectrum rule's cost a Lanczos run each (T/10, forced at T/2)
            spectrum = self.guide_rule == "spectrum" or self.guide_monitor
            if self.guide_every is None:
                self.guide_every = max(1, total // (10 if spectrum else 20))
            if self.guide_min_period is None:
                self.guide_min_period = max(1, total // 8)
            if self.guide_max_period is None:
                self.guide_max_period = max(1, total // 2) if spectrum else 0
        if self.reset_scales == "freeze" and self.scale_freeze_steps is None:
            self.scale_freeze_steps = max(1, total // 20)
        self.validate()
        return self

    def validate(self) -> None:
        """Checks of the resolved config (see :meth:`resolve`)."""
        self.check_flags()
        if self.warmup >= self.steps and self.steps > 1:
            raise ValueError(f"--warmup {self.warmup} must be smaller than --steps {self.steps}")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"--batch-size {self.batch_size} is not a multiple of "
                f"--micro-batch-size {self.micro_batch_size}"
            )
        if self.winq_mode == "fixed":
            try:
                self.reset_steps()
            except ValueError as e:
                raise ValueError(f"--winq-resets: {e}") from None
        if (
            self.guide_max_period
            and self.guide_min_period
            and self.guide_max_period < self.guide_min_period
        ):
            raise ValueError(
                f"--guide-max-period {self.guide_max_period} is below --guide-min-period "
                f"{self.guide_min_period}"
            )
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"--lr must be a positive number, got {self.lr}")

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per rank per update, so that ``batch_size`` sequences make an update.

        Raises:
            ValueError: the global batch does not split evenly over ranks and micro-batches.
        """
        micro = self.micro_batch_size or max(1, self.batch_size // world_size)
        per_update = micro * world_size
        if self.batch_size % per_update:
            raise ValueError(
                f"--batch-size {self.batch_size} must be a multiple of micro-batch {micro} x "
                f"{world_size} processes"
            )
        return self.batch_size // per_update

    def micro(self, world_size: int) -> int:
        return self.micro_batch_size or max(1, self.batch_size // world_size)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["guide_alpha_candidates"] = list(self.guide_alpha_candidates)
        return data

    def to_json(self, **extra: Any) -> dict[str, Any]:
        """``config.json``: every field, plus the derived ``total_steps`` and ``winq`` block."""
        quant = None if self.pretrain else self.quant_config()
        winq: dict[str, Any] = {"mode": self.winq_mode}
        if not self.pretrain:
            winq.update(
                {
                    "resets": self.winq_resets,
                    "period": self.winq_period,
                    "reset_steps": self.reset_steps(),
                    "alpha": self.winq_alpha,
                    "reset_mode": self.reset_mode,
                    "reset_optimizer": self.reset_optimizer,
                    "reset_scales": self.reset_scales,
                    "scale_freeze_steps": self.scale_freeze_steps,
                    "noise": {
                        "sigma": self.noise_sigma,
                        "sigma_scale": quant.scale_noise if quant else None,
                        "mode": self.noise_mode,
                        "relative": self.noise_relative,
                    },
                }
            )
            if self.guide or self.guide_monitor:
                winq["guide"] = {
                    "rule": self.guide_rule,
                    "monitor_only": self.guide_monitor,
                    "every": self.guide_every,
                    "flip_budget": self.guide_flip_budget,
                    "max_return": self.guide_max_return,
                    "probes": self.guide_probes,
                    "lanczos_steps": self.guide_steps,
                    "params": self.guide_params,
                    "batch_size": self.guide_batch_size,
                    "near_zero_eps": self.guide_eps,
                    "near_zero_eps_relative": True,
                    "min_period": self.guide_min_period,
                    "max_period": self.guide_max_period,
                    "clip_growth": self.guide_clip_growth,
                    "flat_growth": self.guide_flat_growth,
                    "shrink": self.guide_shrink,
                    "lr_floor": self.guide_lr_floor,
                    "alpha_candidates": list(self.guide_alpha_candidates),
                    "alpha_by": self.guide_alpha_by,
                }
        return {
            "format_version": 1,
            "kind": "winq-train",
            **self.to_dict(),
            "quantizer": quant.quantizer if quant else None,
            "total_steps": self.steps,
            "winq": winq,
            **extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from ``config.json`` (derived keys ignored).

        Raises:
            ValueError: not a winq-train config, or a missing/invalid field.
        """
        if not isinstance(data, dict) or data.get("kind") != "winq-train":
            raise ValueError("not a winq-train config.json")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {**ADDED_FIELDS, **data}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        values = {k: data[k] for k in names}
        values["guide_alpha_candidates"] = tuple(values["guide_alpha_candidates"])
        config = cls(**values)
        config.validate()
        return config

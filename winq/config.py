"""``QuantConfig``: what to quantize and how, validated when it is made.

Bit widths follow ParetoQ (Liu et al. 2025) and WinQ: 1, 1.58 (ternary), 2, 3 and 4 bits for
weights, 16 meaning full precision. The default quantizer per width is ParetoQ's: stretched
elastic quantization (SEQ) for 2 bits and ternary, learned step-size quantization (LSQ) for
1, 3 and 4 bits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["BITS", "GRANULARITIES", "NOISE_MODES", "QUANTIZERS", "QuantConfig", "parse_bits"]

BITS = (1, 1.58, 2, 3, 4, 16)
QUANTIZERS = {"lsq": (1, 2, 3, 4), "seq": (1.58, 2, 3, 4)}
DEFAULT_QUANTIZER = {1: "lsq", 1.58: "seq", 2: "seq", 3: "lsq", 4: "lsq"}
GRANULARITIES = ("per_row", "per_group", "per_tensor")
NOISE_MODES = ("pre", "post", "frozen")
A_BITS = (8, 16)


def parse_bits(value: Any) -> float | int:
    """Turn ``"2"``, ``2.0``, ``"1.58"`` or ``"ternary"`` into a canonical bit width.

    Raises:
        ValueError: the value is not one of 1, 1.58, 2, 3, 4, 16.
    """
    allowed = ", ".join(str(b) for b in BITS)
    if isinstance(value, str) and value.strip().lower() in ("ternary", "1.5", "1.58", "1.585"):
        return 1.58
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"bits must be one of {allowed}, got {value!r}") from None
    if math.isclose(number, 1.58, abs_tol=0.01):
        return 1.58
    if number.is_integer() and int(number) in BITS:
        return int(number)
    raise ValueError(f"bits must be one of {allowed}, got {value!r}")


@dataclasses.dataclass
class QuantConfig:
    """Weight (and optional activation) fake-quantization settings.

    Args:
        bits: weight bit width: 1, 1.58 (ternary), 2, 3, 4, or 16 (no quantization).
        quantizer: ``"lsq"`` or ``"seq"``; ``None`` picks ParetoQ's default for ``bits``.
        granularity: one scale per output row (``"per_row"``, the default and the paper's),
            per group of ``group_size`` input columns (``"per_group"``), or one per tensor.
        group_size: input columns per scale; setting it implies ``"per_group"``.
        a_bits: 8 adds per-token symmetric 8-bit fake-quantization of every quantized
            linear layer's input (the paper's W·A8 settings); None or 16 leaves inputs alone.
        noise_sigma: std of the noise added to the latent weights in training forwards.
        noise_sigma_scale: std of the noise added to the scales; None uses ``noise_sigma``.
        noise_mode: ``"pre"`` (perturb W and s, then quantize; the paper's), ``"post"`` (add
            noise to Q(W)), or ``"frozen"`` (like ``pre`` with one draw kept until the next reset).
        noise_relative: sigma is relative to each row's (group's) scale instead of absolute.

    Raises:
        ValueError: on any value outside its allowed set, or an incompatible combination.
    """

    bits: float | int = 2
    quantizer: str | None = None
    granularity: str = "per_row"
    group_size: int | None = None
    a_bits: int | None = None
    noise_sigma: float = 0.0
    noise_sigma_scale: float | None = None
    noise_mode: str = "pre"
    noise_relative: bool = False

    def __post_init__(self) -> None:
        self.bits = parse_bits(self.bits)
        if self.quantizer is not None:
            if not isinstance(self.quantizer, str) or self.quantizer.lower() not in QUANTIZERS:
                raise ValueError(
                    f"quantizer must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}"
                )
            self.quantizer = self.quantizer.lower()
        if self.bits == 16:
            if self.quantizer is not None:
                raise ValueError(
                    f"quantizer {self.quantizer!r} needs bits below 16; bits=16 means full precision"
                )
        else:
            if self.quantizer is None:
                self.quantizer = DEFAULT_QUANTIZER[self.bits]
            supported = QUANTIZERS[self.quantizer]
            if self.bits not in supported:
                raise ValueError(
                    f"quantizer {self.quantizer!r} supports bits "
                    f"{', '.join(map(str, supported))}, got bits={self.bits}"
                )
        if self.group_size is not None:
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
                raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
            if self.group_size <= 0:
                raise ValueError(f"group_size must be a positive integer, got {self.group_size}")
            if self.granularity == "per_row":
                self.granularity = "per_group"
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.granularity == "per_group" and self.group_size is None:
            raise ValueError("granularity 'per_group' needs a group_size")
        if self.granularity != "per_group" and self.group_size is not None:
            raise ValueError(
                f"group_size={self.group_size} conflicts with granularity {self.granularity!r}"
            )
        if self.a_bits is not None:
            if self.a_bits not in A_BITS:
                raise ValueError(f"a_bits must be 8 or 16 (or None), got {self.a_bits!r}")
            if self.a_bits == 16:
                self.a_bits = None
        for name in ("noise_sigma", "noise_sigma_scale"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {self.noise_mode!r}"
            )

    @property
    def enabled(self) -> bool:
        """False for bits=16: ``quantize_`` then leaves the model as it is."""
        return self.bits != 16

    @property
    def scale_noise(self) -> float:
        return self.noise_sigma if self.noise_sigma_scale is None else self.noise_sigma_scale

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Build from a dict, refusing unknown keys with a message naming them."""
        if not isinstance(data, dict):
            raise ValueError(
                f"quantization config must be a JSON object, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown quantization setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**data)

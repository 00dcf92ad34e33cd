"""``QuantLinear``, ``quantize_`` and the WinQ primitives (reset and noise injection).

A ``QuantLinear`` is an ``nn.Linear`` whose ``weight`` is the latent full-precision weight W
and which adds a learnable ``scale`` s; its forward uses ``Q(W; s)`` (see
:mod:`winq.quantizers`). Being a subclass of ``nn.Linear`` keeps every tool that looks for
linear layers (PEFT, hooks, our Hessian operator) working on quantized models.

WinQ (Li et al., arXiv 2605.17471) adds two things:

* the interpolation reset ``W <- α·W + (1-α)·Q(W)``, applied under ``no_grad`` after an
  optimizer step. Every weight moves straight toward its own quantized value, so Q(W) — and the
  quantized model's output — is unchanged, while the latent weights leave the flat region they
  settled in and clipped weights move back inside the quantizer's range;
* noise injection in training forwards: ``W~ = W + σ_w·ε``, ``s~ = s + σ_s·ε'`` with fresh
  ε ~ N(0, I) each forward, then ``Q(W~; s~)``; gradients flow to W and s. Variants: noise
  added after quantization (``post``), one draw kept until the next reset (``frozen``), and σ
  relative to each row's scale. Evaluation forwards (``model.eval()``) never see noise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from winq.config import QuantConfig
from winq.quantizers import (
    SCALE_EPS,
    fake_quantize,
    get_quantizer,
    grad_scale_factor,
    grid_ratio,
    group_view,
    init_scale,
    quantize_activations,
)

__all__ = [
    "QuantLinear",
    "clipped_fraction",
    "default_filter",
    "dequantize_",
    "quant_layers",
    "quantize_",
    "reset_",
    "set_noise_",
]


class QuantLinear(nn.Linear):
    """A linear layer with fake-quantized weights and a learnable scale.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        config: the quantization settings; ``config.bits`` must be below 16.

    Attributes:
        weight: latent full-precision weights, shape (out, in).
        scale: (out, 1) per row, (out, in/group_size) per group, (1, 1) per tensor.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: QuantConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        config = config if config is not None else QuantConfig()
        if not config.enabled:
            raise ValueError("QuantLinear needs bits below 16; use nn.Linear for full precision")
        self.config = config
        self.quantizer = get_quantizer(config.quantizer, config.bits)
        self.scale = nn.Parameter(
            torch.ones(self._scale_shape(), device=self.weight.device, dtype=self.weight.dtype)
        )
        self.register_buffer("_frozen_noise", None, persistent=False)
        self.register_buffer("_frozen_scale_noise", None, persistent=False)

    def _scale_shape(self) -> tuple[int, int]:
        granularity = self.config.granularity
        if granularity == "per_row":
            return (self.out_features, 1)
        if granularity == "per_tensor":
            return (1, 1)
        group_size = self.config.group_size
        if self.in_features % group_size:
            raise ValueError(
                f"group_size={group_size} does not divide in_features={self.in_features}"
            )
        return (self.out_features, self.in_features // group_size)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig) -> QuantLinear:
        """A QuantLinear sharing ``linear``'s weight and bias, scale initialised from W."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            config=config,
            device="meta",
            dtype=linear.weight.dtype,
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.scale = nn.Parameter(
            init_scale(linear.weight, layer.quantizer, layer._scale_shape()),
            requires_grad=linear.weight.requires_grad,
        )
        layer.train(linear.training)
        return layer

    def to_linear(self, quantized: bool = True) -> nn.Linear:
        """An ``nn.Linear`` holding Q(W) (``quantized=True``) or the latent W."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.quantized_weight() if quantized else self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.train(self.training)
        return linear

    @property
    def grad_scale(self) -> float:
        return grad_scale_factor(self.weight.numel(), self.quantizer)

    def quantized_weight(self) -> torch.Tensor:
        """Q(W) without noise or gradient."""
        with torch.no_grad():
            return fake_quantize(self.weight, self.scale.detach(), self.quantizer, 1.0)

    def clip_mask(self) -> torch.Tensor:
        """Boolean (out, in): True where W/s lies in the range the STE passes gradient."""
        with torch.no_grad():
            w = group_view(self.weight, self.scale.shape)
            x = grid_ratio(w, self.scale.clamp_min(SCALE_EPS).unsqueeze(-1))
            return self.quantizer.in_range(x).reshape(self.weight.shape)

    def _per_weight_scale(self) -> torch.Tensor:
        """The scale each weight is quantized with, broadcast to (out, in), detached."""
        scale = self.scale.detach()
        ones = group_view(torch.ones_like(self.weight.detach()), scale.shape)
        return (ones * scale.unsqueeze(-1)).reshape(self.weight.shape)

    def perturbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W~, s~) for a ``pre``/``frozen`` noisy training forward: W + σ_w·ε, s + σ_s·ε'.

        Returns the parameters themselves when noise is off or the layer is in eval mode.
        """
        config = self.config
        sigma_w, sigma_s = config.noise_sigma, config.scale_noise
        weight, scale = self.weight, self.scale
        if not self.training or config.noise_mode == "post" or (sigma_w == 0 and sigma_s == 0):
            return weight, scale
        if config.noise_mode == "frozen":
            if self._frozen_noise is None:
                self._frozen_noise = torch.randn_like(weight.detach())
                self._frozen_scale_noise = torch.randn_like(scale.detach())
            eps_w, eps_s = self._frozen_noise, self._frozen_scale_noise
        else:
            eps_w, eps_s = torch.randn_like(weight.detach()), torch.randn_like(scale.detach())
        if sigma_w > 0:
            sigma = sigma_w * self._per_weight_scale() if config.noise_relative else sigma_w
            weight = weight + sigma * eps_w
        if sigma_s > 0:
            sigma = sigma_s * scale.detach() if config.noise_relative else sigma_s
            scale = scale + sigma * eps_s
        return weight, scale

    def fake_quantized_weight(self) -> torch.Tensor:
        """The weight this forward uses: Q(W~; s~) with gradients to W and s (plus the
        post-quantization noise in ``post`` mode, training only)."""
        weight, scale = self.perturbed()
        q = fake_quantize(weight, scale, self.quantizer, self.grad_scale)
        sigma_w = self.config.noise_sigma
        if self.training and self.config.noise_mode == "post" and sigma_w > 0:
            sigma = sigma_w * self._per_weight_scale() if self.config.noise_relative else sigma_w
            q = q + sigma * torch.randn_like(q.detach())
        return q

    def clear_frozen_noise(self) -> None:
        self._frozen_noise = None
        self._frozen_scale_noise = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.a_bits is not None:
            x = quantize_activations(x, self.config.a_bits)
        weight = self.fake_quantized_weight().to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        c = self.config
        text = f"{super().extra_repr()}, bits={c.bits}, quantizer={c.quantizer}, {c.granularity}"
        if c.group_size:
            text += f"({c.group_size})"
        if c.a_bits:
            text += f", a_bits={c.a_bits}"
        if c.noise_sigma or c.scale_noise:
            text += f", noise={c.noise_mode}:{c.noise_sigma}"
        return text


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    if getter is None:
        return None
    try:
        return getter()
    except (AttributeError, NotImplementedError):
        return None


def default_filter(name: str, module: nn.Module) -> bool:
    """Every linear layer except an output head named ``lm_head``/``embed_out``/``output``."""
    last = name.rsplit(".", 1)[-1]
    return last not in ("lm_head", "embed_out", "output", "score")


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    filter_fn: Callable[[str, nn.Module], bool] | str | None = None,
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` by a :class:`QuantLinear`.

    The output head (``model.get_output_embeddings()``, or a layer named ``lm_head``) is never
    quantized; embeddings and norms are not linear layers and stay as they are.

    Args:
        model: any module, typically a Hugging Face causal LM.
        config: the quantization settings; ``bits=16`` leaves the model unchanged.
        filter_fn: ``(name, module) -> bool`` selecting layers to quantize, or a regex that
            module names must match (``re.search``); None quantizes every eligible layer.

    Returns:
        ``model`` (modified in place).

    Raises:
        ValueError: a layer's shape is incompatible with the config (e.g. ``group_size``).
    """
    if not config.enabled:
        return model
    if isinstance(filter_fn, str):
        pattern = re.compile(filter_fn)
        filter_fn = lambda name, module: bool(pattern.search(name))  # noqa: E731
    head = _output_head(model)
    targets = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or module is head or not default_filter(name, module):
            continue
        if filter_fn is not None and not filter_fn(name, module):
            continue
        targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        try:
            setattr(parent, child, QuantLinear.from_linear(linear, config))
        except ValueError as e:
            raise ValueError(f"cannot quantize {name}: {e}") from None
    return model


def dequantize_(model: nn.Module, quantized: bool = True) -> nn.Module:
    """Replace every QuantLinear by an ``nn.Linear`` holding Q(W) (or the latent W)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.to_linear(quantized=quantized))
    return model


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLinear]]:
    """(name, layer) for every QuantLinear in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            yield name, module


@torch.no_grad()
def reset_(model: nn.Module, alpha: float = 0.2) -> int:
    """WinQ's interpolation reset ``W <- α·W + (1-α)·Q(W)`` on every QuantLinear.

    Every latent weight moves straight toward its own quantized value and its distance to it
    shrinks by α (α = 1 leaves W exactly as it is, α = 0 puts it exactly on the grid). Scales are untouched, and Q(W) is
    unchanged: the rare weight that floating-point rounding would push across a rounding
    boundary (possible only for α very near 1) keeps its old value, so the invariant is exact.
    Frozen noise draws are discarded, so ``frozen`` noise redraws after a reset.

    Args:
        model: a model containing QuantLinear layers.
        alpha: weight kept on the latent W, in [0, 1]; 0 snaps W onto the grid.

    Returns:
        The number of layers reset.

    Raises:
        ValueError: alpha outside [0, 1].
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    count = 0
    for _, layer in quant_layers(model):
        q = layer.quantized_weight()
        new = alpha * layer.weight + (1.0 - alpha) * q
        layer_q_new = fake_quantize(new, layer.scale.detach(), layer.quantizer, 1.0)
        new = torch.where(layer_q_new == q, new, layer.weight)
        layer.weight.copy_(new)
        layer.clear_frozen_noise()
        count += 1
    return count


def set_noise_(
    model: nn.Module,
    sigma: float,
    sigma_scale: float | None = None,
    mode: str | None = None,
    relative: bool | None = None,
) -> int:
    """Change the noise settings of every QuantLinear; returns the number of layers."""
    count = 0
    for _, layer in quant_layers(model):
        config = layer.config.to_dict()
        config.update(noise_sigma=sigma, noise_sigma_scale=sigma_scale)
        if mode is not None:
            config["noise_mode"] = mode
        if relative is not None:
            config["noise_relative"] = relative
        layer.config = QuantConfig.from_dict(config)
        layer.clear_frozen_noise()
        count += 1
    return count


def clipped_fraction(model: nn.Module, names: list[str] | None = None) -> float:
    """Fraction of latent weights outside the quantizer's range (zero STE gradient).

    Args:
        model: a model with QuantLinear layers.
        names: optional parameter names (``"...q_proj.weight"``) restricting the count.

    Returns:
        Clipped weights / weights considered; 0.0 if there is no quantized layer.
    """
    wanted = set(names) if names is not None else None
    clipped = total = 0
    for name, layer in quant_layers(model):
        if wanted is not None and f"{name}.weight" not in wanted:
            continue
        mask = layer.clip_mask()
        clipped += int((~mask).sum())
        total += mask.numel()
    return clipped / total if total else 0.0

r"""``QuantLinear``, ``quantize_``, the WinQ primitives, and exact measurements of the latent grid.

A ``QuantLinear`` is an ``nn.Linear`` whose ``weight`` is the latent full-precision weight W
and which adds a learnable ``scale`` s; its forward uses ``Q(W; s) = s·q(W/s)`` (see
:mod:`winq.quantizers`). Being a subclass of ``nn.Linear`` keeps every tool that looks for
linear layers (PEFT, hooks, our Hessian operator) working on quantized models. Below,
``x = W/s`` is a latent in units of its scale (computed in float32 or wider, as the quantizer
does), ``q(x)`` its level, ``[c_lo, c_hi]`` the rounding cell of that level within the STE
range ``[x_lo, x_hi]`` (:attr:`winq.quantizers.Quantizer.cells`), and a latent is *clipped*
when ``x`` lies outside that range (zero STE gradient).

WinQ (Li et al., arXiv 2605.17471) adds two things:

* the interpolation reset, applied under ``no_grad`` after an optimizer step, in one of
  :data:`RESET_MODES` (α in [0, 1] is the share of the latent's offset from its level kept):

  - ``full`` (the paper's): ``W <- α·W + (1-α)·Q(W)``. Every latent moves straight toward its
    own quantized value, so Q(W) — and the quantized model's output — is unchanged.
  - ``clipped``: the same rule on the clipped latents only; in-range latents keep their value
    bit for bit. A clipped latent the rule leaves outside the range (always so for 1-bit LSQ
    and LSQ b >= 2, whose outermost levels lie on the range edge: ``α·x + (1-α)·x_hi > x_hi``
    whenever ``x > x_hi``) is placed just inside the edge, at ``x_hi - m`` (``x_lo + m``),
    with ``m = max(1e-3, 2·eps·|edge|)`` and eps the weight dtype's machine epsilon, so that
    rounding the new weight to its dtype cannot push it back out.
  - ``dither``: ``W <- Q(W) + α·(W_c - Q(W)) + (1-α)·d`` with ``d = s·(t - q(x))``,
    ``t ~ Uniform[c_lo, c_hi)`` drawn from a caller's ``torch.Generator``, and
    ``W_c = s·clamp(x, c_lo, c_hi)`` the latent clamped into its own cell (``W_c = W`` for
    in-range latents; clipped latents are thus un-clipped too). ``Q + d`` and ``W_c`` both lie
    in the cell, so does their mix: Q(W) is unchanged and every latent ends in range. At
    α = 0 the latents are spread uniformly over their cells instead of collapsing onto the
    grid; at α = 1 in-range latents are untouched and clipped ones are clamped into range.
    A latent that lands outside the range after rounding to its dtype is placed as in
    ``clipped``; one whose draw rounds into a neighbouring cell (bfloat16, near a cell edge)
    takes ``W_c`` instead.

  Small-scale runs motivate the variants (BENCHMARKS.md, "Does WinQ speed up QAT here?"):
  a ``full`` reset puts the in-range latents on or near the grid, after which a decaying
  learning rate rarely moves one across a rounding boundary, while moving clipped latents back
  into range costs little. In every mode a latent whose new value would change its level
  (possible only through floating-point rounding at a cell edge or a tie of ``torch.round``)
  keeps its old value (``dither``: ``W_c`` if that keeps the level), so ``Q(W)`` is unchanged
  bit for bit; :func:`reset_with_stats_` counts how often that guard fires;
* noise injection in training forwards: ``W~ = W + σ_w·ε``, ``s~ = s + σ_s·ε'`` with fresh
  ε ~ N(0, I) each forward, then ``Q(W~; s~)``; gradients flow to W and s. Variants: noise
  added after quantization (``post``), one draw kept until the next reset (``frozen``), and σ
  relative to each row's scale. Evaluation forwards (``model.eval()``) never see noise.

Exact, cheap measurements of the mechanism (no Hessian products; every one a fraction or mean
over all latent weights of all layers, i.e. weighted by weight count, with per-layer values):

* :func:`level_codes`: ``k(x)``, the index of ``q(x)`` among the quantizer's levels;
* :func:`flip_fraction`: ``#{k_now != k_before} / #W``, the share of latents whose level
  changed since an earlier :func:`level_codes`;
* :func:`grid_dispersion`: the mean over in-range latents of ``r = |x - q(x)| / |b - q(x)|``
  with ``b = c_hi`` if ``x >= q(x)`` and ``b = c_lo`` otherwise (the cell edge on its side;
  for the outermost cells the range edge; ``r = 0`` where ``b = q(x)``, which in range means
  ``x = q(x)``; ``r`` is capped at 1 against float32 rounding at cell edges). ``r = 0`` on the
  grid, ``r = 1`` at a cell edge, and a latent uniform on its cell has ``E[r] = 1/2`` exactly,
  also in asymmetric cells and for 1-bit LSQ, whose levels sit at the outer edge of their
  cells. Clipped latents are excluded (their offset measures the clip, not the cell);
  :func:`clipped_fractions` reports them;
* :func:`clipped_fractions`: ``#{x outside [x_lo, x_hi]} / #W`` per layer and overall.

For Hessian products by finite differences, :func:`linearized` replaces each layer's
``Q(W; s)`` by its STE linearisation at the current point, ``Q0 + M0 ⊙ (W - W0)`` (M0 the
range mask at W0, s frozen). Its gradient is ``M0 ⊙ ∇L(Q0 + M0 ⊙ (W - W0))``, so
``(∇L(W0 + εv) - ∇L(W0 - εv)) / 2ε = M0 H_Q M0 v + O(ε²)``: the product the double backward
through the STE computes, without the jumps of the real ``Q`` when ``W0 ± εv`` crosses a
rounding boundary.

FSDP2 (:func:`winq.sharding.shard_model`): outside a forward, every QuantLinear's weight and
scale are ``DTensor`` shards of dim 0, this rank's rows. Everything here that reads or writes
latents (resets, the grid statistics, level codes) runs on the shards inside
:func:`local_shards` — elementwise per row, so each rank does its rows exactly as one process
would — and sums its counts over the ranks, so every rank gets the whole model's statistic.
A per-tensor scale (one row) is read as a whole on every rank. Inside :func:`linearized`, a
sharded layer's forward all-gathers its recorded W0, Q0 and M0 (three extra all-gathers of the
layer per forward, freed with the layer's activations).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
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
    "RESET_MODES",
    "LatentSnapshot",
    "LatentStat",
    "LinearizationPoint",
    "QuantLinear",
    "ResetStats",
    "clipped_fraction",
    "clipped_fractions",
    "default_filter",
    "dequantize_",
    "flip_fraction",
    "grid_dispersion",
    "level_codes",
    "linearized",
    "local_shards",
    "quant_layers",
    "quantize_",
    "reset_",
    "reset_with_stats_",
    "restore_latents",
    "set_noise_",
    "snapshot_latents",
]

RESET_MODES = ("full", "clipped", "dither")
# Distance (in units of s) inside the range edge at which ``clipped`` places a latent that its
# rule leaves outside; widened to 2ε·|edge| for low-precision weights (see the module docstring).
UNCLIP_MARGIN = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class LinearizationPoint:
    """Where :func:`linearized` linearises one layer (tensors of the weight's dtype/device).

    Attributes:
        weight: W0, the latent weights on entry (a copy), (out, in).
        scale: s0, the scale on entry (a copy).
        quantized: Q0 = Q(W0; s0), (out, in).
        mask: M0, 1 where W0/s0 is in the STE range and 0 where clipped, (out, in).
    """

    weight: torch.Tensor
    scale: torch.Tensor
    quantized: torch.Tensor
    mask: torch.Tensor

    def gathered(self) -> LinearizationPoint:
        """The point with W0, Q0 and M0 all-gathered from their shards (FSDP2; a collective:
        every rank of the mesh must call it, as each does in the layer's forward)."""
        return LinearizationPoint(
            weight=self.weight.full_tensor(),
            scale=self.scale,
            quantized=self.quantized.full_tensor(),
            mask=self.mask.full_tensor(),
        )


class QuantLinear(nn.Linear):
    """A linear layer with fake-quantized weights and a learnable scale.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        config: the quantization settings; ``config.bits`` must be below 16.

    Attributes:
        weight: latent full-precision weights, shape (out, in).
        scale: (out, 1) per row, (out, in/group_size) per group, (1, 1) per tensor.
    """

    # Set by :func:`linearized` for the duration of its block; a class default so that layers
    # built before it existed (unpickled modules) have it too.
    _linearization: LinearizationPoint | None = None

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
            return self.quantizer.in_range(self.grid_position()).reshape(self.weight.shape)

    def grid_position(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``x = W/s`` grouped as (rows, groups, group_len), no gradient, in the precision and
        with the clamped scale :func:`~winq.quantizers.fake_quantize` uses.

        Args:
            weight: weights to place on this layer's grid instead of ``self.weight``.
        """
        weight = self.weight if weight is None else weight
        scale = self.scale.detach().clamp_min(SCALE_EPS).unsqueeze(-1)  # (rows, groups, 1)
        with torch.no_grad():
            return grid_ratio(group_view(weight.detach(), self.scale.shape), scale)

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
        post-quantization noise in ``post`` mode, training only); inside :func:`linearized`,
        ``Q0 + M0·(W - W0)`` with gradient to W only and no noise."""
        point = self._linearization
        if point is not None:
            if _is_dtensor(point.weight) and not _is_dtensor(self.weight):
                point = point.gathered()  # inside FSDP's forward: the weight is unsharded
            return point.quantized + point.mask * (self.weight - point.weight)
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


def _is_dtensor(tensor: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@contextlib.contextmanager
def local_shards(model: nn.Module) -> Iterator[object | None]:
    """Inside the block every QuantLinear of an FSDP2-sharded model holds plain tensors: its
    weight is this rank's rows (sharing the shard's storage, so in-place writes stick), its
    scale the same rows (per row or per group) or the whole one-row scale (per tensor; a
    copy, written back to its shard on exit). Nothing changes for an unsharded model.

    Not for forwards: FSDP expects its own parameters back before the next one.

    Yields:
        The process group of the shards' mesh (sum the ranks' counts over it), or None when
        the model is not sharded.

    Raises:
        ValueError: some QuantLinear layers are sharded and others not, or a layer has fewer
            output rows than ranks (its weight would be held whole by some ranks).
    """
    from winq.sharding import local_tensor, sharded_rows

    layers = list(quant_layers(model))
    sharded = [_is_dtensor(layer.weight) for _, layer in layers]
    if not any(sharded):
        yield None
        return
    if not all(sharded):
        raise ValueError("some QuantLinear layers are FSDP-sharded and others not")
    swapped = []  # (layer, parameter name, the DTensor, its plain stand-in, rows to write back)
    group = None
    try:
        for name, layer in layers:
            weight = layer.weight
            mesh = weight.device_mesh
            group, world = mesh.get_group(), mesh.size()
            if weight.shape[0] < world:
                raise ValueError(
                    f"{name} has {weight.shape[0]} output rows, fewer than the {world} ranks it "
                    "is sharded over"
                )
            for key in ("weight", "scale"):
                param = layer._parameters[key]
                rows = None
                if param.shape[0] == weight.shape[0]:
                    plain = local_tensor(param)
                else:  # a per-tensor scale: one row, on one rank
                    plain = param.full_tensor().detach()
                    rows = sharded_rows(param)
                stand_in = nn.Parameter(plain, requires_grad=False)
                layer._parameters[key] = stand_in
                swapped.append((layer, key, param, stand_in, rows))
        yield group
    finally:
        for layer, key, param, stand_in, rows in reversed(swapped):
            layer._parameters[key] = param
            if rows is not None:
                with torch.no_grad():
                    local_tensor(param).copy_(stand_in.detach()[rows[0] : rows[1]])


def _summed(values: list[float], group) -> list[float]:
    """``values`` summed over the ranks of ``group`` (as they are when ``group`` is None)."""
    if group is None:
        return values
    backend = torch.distributed.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, group=group)
    return tensor.tolist()


@dataclasses.dataclass
class ResetStats:
    """What one reset did, summed over the layers (see :func:`reset_with_stats_`).

    Attributes:
        layers: QuantLinear layers reset.
        weights: latent weights in them.
        moved: latents whose value changed.
        unclipped: latents outside the STE range before the reset and inside after it.
        guarded: latents whose new value would have changed their quantized level
            (floating-point rounding at a cell edge or a tie); they kept their old value, or
            in ``dither`` took the latent clamped into its cell where that keeps the level.
    """

    layers: int = 0
    weights: int = 0
    moved: int = 0
    unclipped: int = 0
    guarded: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _check_reset_arguments(alpha: float, mode: str, generator: torch.Generator | None) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if mode not in RESET_MODES:
        raise ValueError(f"reset mode must be one of {', '.join(RESET_MODES)}, got {mode!r}")
    if mode == "dither" and not isinstance(generator, torch.Generator):
        raise ValueError(
            "reset mode 'dither' draws random offsets and needs a torch.Generator "
            f"(seed it from the run seed and step), got {generator!r}"
        )
    return alpha


def _pulled_into_range(layer: QuantLinear, candidate: torch.Tensor) -> torch.Tensor:
    """``candidate`` with every latent outside the STE range moved to just inside its edge.

    The outermost cell on each side reaches the range edge and is wider than the margin, so
    the moved latent keeps the level it had outside.
    """
    x = layer.grid_position(candidate)  # (rows, groups, group_len)
    low, high = layer.quantizer.ste_range
    epsilon = torch.finfo(candidate.dtype).eps
    # Rounding ``x·s`` to the weight dtype moves x by up to ε/2 relative, so a margin of
    # 2ε·|edge| keeps the stored weight inside whatever the dtype.
    low_inside = low + max(UNCLIP_MARGIN, 2 * epsilon * abs(low))
    high_inside = high - max(UNCLIP_MARGIN, 2 * epsilon * abs(high))
    scale = layer.scale.detach().clamp_min(SCALE_EPS).unsqueeze(-1).to(x.dtype)
    placed = (x.clamp(low_inside, high_inside) * scale).to(candidate.dtype)
    outside = ~layer.quantizer.in_range(x)
    grouped = group_view(candidate, layer.scale.shape)
    return torch.where(outside, placed, grouped).reshape(candidate.shape)


def _dithered(
    layer: QuantLinear, alpha: float, inside: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q + α·(W_c - Q) + (1-α)·d`` and ``W_c`` (see the module docstring), both in the
    weight's dtype and shape."""
    quantizer = layer.quantizer
    x = layer.grid_position()  # (rows, groups, group_len), float32 or wider
    cells = quantizer.cells.to(device=x.device, dtype=x.dtype)[quantizer.level_index(x)]
    cell_low, cell_high = cells[..., 0], cells[..., 1]
    # Drawn on the generator's device, so a CPU generator gives the same draws whatever
    # device the model is on; one draw per latent, clipped or not, so the generator's state
    # after a reset depends only on the model's shapes.
    uniform = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    target = cell_low + uniform.to(x.device) * (cell_high - cell_low)  # Q + d, in units of s
    scale = layer.scale.detach().clamp_min(SCALE_EPS).unsqueeze(-1).to(x.dtype)
    weight = group_view(layer.weight.detach(), layer.scale.shape).to(x.dtype)
    grouped_inside = group_view(inside, layer.scale.shape)
    anchor = torch.where(grouped_inside, weight, torch.clamp(x, cell_low, cell_high) * scale)
    # anchor + (1-α)·(target - anchor) rather than α·anchor + (1-α)·target: at α = 1 the
    # second term is an exact zero and in-range latents keep their value.
    new = anchor + (1.0 - alpha) * (target * scale - anchor)
    shape, dtype = layer.weight.shape, layer.weight.dtype
    return new.to(dtype).reshape(shape), anchor.to(dtype).reshape(shape)


def _reset_layer_(
    layer: QuantLinear, alpha: float, mode: str, generator: torch.Generator | None
) -> tuple[int, int, int]:
    """Reset one layer in place; returns (moved, unclipped, guarded) counts."""
    weight = layer.weight
    q = layer.quantized_weight()
    inside = layer.clip_mask()
    fallback = None
    if mode == "full":
        candidate = alpha * weight + (1.0 - alpha) * q
    elif mode == "clipped":
        candidate = torch.where(inside, weight, alpha * weight + (1.0 - alpha) * q)
        candidate = _pulled_into_range(layer, candidate)
    else:
        candidate, anchor = _dithered(layer, alpha, inside, generator)
        candidate = _pulled_into_range(layer, candidate)
        # In low precision a draw near a cell edge can round into the next cell; the latent
        # then still leaves the clip (clamped into its cell) rather than keep its old value.
        fallback = _pulled_into_range(layer, anchor)

    def keeps_level(new: torch.Tensor) -> torch.Tensor:
        return fake_quantize(new, layer.scale.detach(), layer.quantizer, 1.0) == q

    new = weight
    if fallback is not None:
        new = torch.where(keeps_level(fallback), fallback, new)
    candidate_keeps = keeps_level(candidate)
    new = torch.where(candidate_keeps, candidate, new)
    moved = int((new != weight).sum())
    weight.copy_(new)
    layer.clear_frozen_noise()
    unclipped = int((layer.clip_mask() & ~inside).sum())
    return moved, unclipped, int((~candidate_keeps).sum())


@torch.no_grad()
def reset_with_stats_(
    model: nn.Module,
    alpha: float = 0.2,
    mode: str = "full",
    generator: torch.Generator | None = None,
) -> ResetStats:
    """:func:`reset_`, returning what it did (moved, un-clipped and guarded latents).

    Args and Raises: as :func:`reset_`.

    Returns:
        The counts summed over every QuantLinear.
    """
    alpha = _check_reset_arguments(alpha, mode, generator)
    stats = ResetStats()
    with local_shards(model) as group:
        for _, layer in quant_layers(model):
            moved, unclipped, guarded = _reset_layer_(layer, alpha, mode, generator)
            stats.layers += 1
            stats.weights += layer.weight.numel()
            stats.moved += moved
            stats.unclipped += unclipped
            stats.guarded += guarded
    counts = _summed([stats.weights, stats.moved, stats.unclipped, stats.guarded], group)
    stats.weights, stats.moved, stats.unclipped, stats.guarded = (int(c) for c in counts)
    return stats


def reset_(
    model: nn.Module,
    alpha: float = 0.2,
    mode: str = "full",
    generator: torch.Generator | None = None,
) -> int:
    """WinQ's interpolation reset on every QuantLinear, in one of :data:`RESET_MODES`.

    * ``"full"``: ``W <- α·W + (1-α)·Q(W)``; every latent's distance to its quantized value
      shrinks by α (α = 1 leaves W exactly as it is, α = 0 puts it exactly on the grid).
    * ``"clipped"``: the same rule on latents outside the STE range only, each then placed just
      inside the range edge if still outside; in-range latents are untouched bit for bit.
    * ``"dither"``: ``W <- Q + α·(W_c - Q) + (1-α)·d`` with d uniform over Q's rounding cell
      within the range (clipped latents first clamped into their cell, so they end in range);
      needs ``generator``, from which it takes one uniform draw per latent (layer by layer in
      module order, row-major within a layer, clipped or not). The same generator state gives
      the same reset bit for bit, so a trainer that seeds one from (run seed, step) resumes
      reproducibly.

    In every mode scales are untouched and Q(W) is unchanged bit for bit: a latent that
    floating-point rounding would push into another level keeps its old value. Frozen noise
    draws are discarded, so ``frozen`` noise redraws after a reset. The formulas are in the
    module docstring.

    Args:
        model: a model containing QuantLinear layers.
        alpha: share of each latent's offset from its level kept, in [0, 1].
        mode: one of :data:`RESET_MODES`.
        generator: the source of ``dither``'s draws (on any device; a CPU generator gives
            device-independent draws); ignored by the other modes.

    Returns:
        The number of layers reset.

    Raises:
        ValueError: alpha outside [0, 1], an unknown mode, or ``dither`` without a generator.
    """
    return reset_with_stats_(model, alpha, mode, generator).layers


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
    with local_shards(model) as group:
        for name, layer in quant_layers(model):
            if wanted is not None and f"{name}.weight" not in wanted:
                continue
            mask = layer.clip_mask()
            clipped += int((~mask).sum())
            total += mask.numel()
    clipped, total = _summed([clipped, total], group)
    return clipped / total if total else 0.0


# ------------------------------------------------------------------------------ snapshots


@dataclasses.dataclass(frozen=True, eq=False)
class _SavedLatents:
    name: str
    layer: QuantLinear
    weight: torch.Tensor
    frozen_noise: torch.Tensor | None
    frozen_scale_noise: torch.Tensor | None


@dataclasses.dataclass(frozen=True, eq=False)
class LatentSnapshot:
    """Copies of every QuantLinear's latent weights and frozen noise draws, for
    :func:`restore_latents` (scales, biases and optimizer state are not part of it)."""

    layers: tuple[_SavedLatents, ...]

    @property
    def names(self) -> list[str]:
        return [saved.name for saved in self.layers]


def _copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()


def snapshot_latents(model: nn.Module) -> LatentSnapshot:
    """Copy every QuantLinear's latent weights and frozen noise draws (on their device)."""
    return LatentSnapshot(
        tuple(
            _SavedLatents(
                name=name,
                layer=layer,
                weight=_copy(layer.weight),
                frozen_noise=_copy(layer._frozen_noise),
                frozen_scale_noise=_copy(layer._frozen_scale_noise),
            )
            for name, layer in quant_layers(model)
        )
    )


def restore_latents(snapshot: LatentSnapshot) -> None:
    """Put back, bit for bit, the latent weights and frozen noise draws of ``snapshot``.

    Weights are copied into the existing parameters (optimizers keep their references); the
    noise buffers are set to the snapshot's tensors, which is safe because a draw is only ever
    replaced, never changed in place.

    Raises:
        ValueError: a layer's weight no longer has the shape it had in the snapshot.
    """
    for saved in snapshot.layers:
        if saved.layer.weight.shape != saved.weight.shape:
            raise ValueError(
                f"cannot restore {saved.name}: its weight is now {tuple(saved.layer.weight.shape)}"
                f", the snapshot holds {tuple(saved.weight.shape)}"
            )
    with torch.no_grad():
        for saved in snapshot.layers:
            saved.layer.weight.copy_(saved.weight)
            saved.layer._frozen_noise = saved.frozen_noise
            saved.layer._frozen_scale_noise = saved.frozen_scale_noise


# ------------------------------------------------------------------ latent-grid measurements


@dataclasses.dataclass(frozen=True)
class LatentStat:
    """A statistic over latent weights: overall, per layer, and how many weights it is over.

    Attributes:
        value: over all layers' weights together (weighted by weight count, not a mean of the
            per-layer values); NaN when ``count`` is 0.
        per_layer: the same statistic for each QuantLinear, keyed by module name (NaN for a
            layer with nothing to count).
        count: the number of latent weights ``value`` is over.
    """

    value: float
    per_layer: dict[str, float]
    count: int

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return {
            "value": _json_number(self.value),
            "per_layer": {name: _json_number(v) for name, v in self.per_layer.items()},
            "count": self.count,
        }


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _ratio(numerator: float, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def _stat(parts: dict[str, tuple[float, int]], group=None) -> LatentStat:
    """A LatentStat from per-layer (sum, count) pairs (this rank's, summed over ``group``)."""
    if group is not None:
        flat = _summed([x for pair in parts.values() for x in pair], group)
        parts = {name: (flat[2 * i], int(flat[2 * i + 1])) for i, name in enumerate(parts)}
    total = sum(numerator for numerator, _ in parts.values())
    count = sum(denominator for _, denominator in parts.values())
    per_layer = {name: _ratio(numerator, n) for name, (numerator, n) in parts.items()}
    return LatentStat(value=_ratio(total, count), per_layer=per_layer, count=count)


def _float_sum(tensor: torch.Tensor) -> float:
    # Accumulate in float64 where the device has it (MPS does not).
    dtype = None if tensor.device.type == "mps" else torch.float64
    return float(tensor.sum(dtype=dtype))


def level_codes(model: nn.Module) -> dict[str, torch.Tensor]:
    """The index of each latent's quantized level among its quantizer's levels.

    Computed by :meth:`winq.quantizers.Quantizer.level_index` on ``x = W/s`` in the precision
    :func:`~winq.quantizers.fake_quantize` uses, so two latents share a code exactly when they
    share a quantized value.

    Returns:
        ``{module name: codes}``, each (out, in) int8 (at most 16 levels) on the layer's device;
        for an FSDP2-sharded model this rank's rows.
    """
    with local_shards(model):
        return {
            name: layer.quantizer.level_index(layer.grid_position())
            .to(torch.int8)
            .reshape(layer.weight.shape)
            for name, layer in quant_layers(model)
        }


def flip_fraction(previous_codes: dict[str, torch.Tensor], model: nn.Module) -> LatentStat:
    """Share of latent weights whose quantized level changed since ``previous_codes``.

    Args:
        previous_codes: :func:`level_codes` of the same model earlier (any device).
        model: the model now.

    Returns:
        ``#{k_now != k_before} / #W`` overall and per layer; ``count`` is ``#W``.

    Raises:
        ValueError: ``previous_codes`` lacks a layer of ``model``, has one it lacks, or a
            layer's codes have another shape.
    """
    with local_shards(model) as group:
        current = level_codes(model)
    missing = sorted(set(current) - set(previous_codes))
    if missing:
        raise ValueError(f"previous_codes has no entry for layer {missing[0]}")
    unknown = sorted(set(previous_codes) - set(current))
    if unknown:
        raise ValueError(f"previous_codes has layer {unknown[0]}, which the model does not have")
    parts = {}
    for name, codes in current.items():
        before = previous_codes[name]
        if tuple(before.shape) != tuple(codes.shape):
            raise ValueError(
                f"previous_codes[{name!r}] has shape {tuple(before.shape)}, "
                f"the layer has {tuple(codes.shape)}"
            )
        parts[name] = (int((before.to(codes.device) != codes).sum()), codes.numel())
    return _stat(parts, group)


def grid_dispersion(model: nn.Module) -> LatentStat:
    """Mean position of in-range latents within their rounding cells: 0 on the grid, 1/2 spread
    uniformly, 1 at the cell edges.

    Per latent ``r = |x - q(x)| / |b - q(x)|`` with b the edge of its level's cell (within the
    STE range) on the side the latent lies; clipped latents are left out (see
    :func:`clipped_fractions`). The definition is in the module docstring.

    Returns:
        The mean of r overall and per layer; ``count`` is the number of in-range latents.
    """
    parts = {}
    with torch.no_grad(), local_shards(model) as group:
        for name, layer in quant_layers(model):
            quantizer = layer.quantizer
            x = layer.grid_position()
            level = quantizer.q(x)
            cells = quantizer.cells.to(device=x.device, dtype=x.dtype)[quantizer.level_index(x)]
            edge = torch.where(x >= level, cells[..., 1], cells[..., 0])
            span = (edge - level).abs()
            # span is 0 only on a cell's zero-width side, where an in-range latent sits on
            # its level; float32 rounding at cell edges can put r a hair above 1.
            ratio = torch.where(span > 0, (x - level).abs() / span, 0.0).clamp(max=1.0)
            inside = quantizer.in_range(x)
            parts[name] = (_float_sum(torch.where(inside, ratio, 0.0)), int(inside.sum()))
    return _stat(parts, group)


def clipped_fractions(model: nn.Module) -> LatentStat:
    """Share of latent weights outside the quantizer's STE range, overall and per layer
    (:func:`clipped_fraction` gives the overall value for a chosen set of layers)."""
    parts = {}
    with local_shards(model) as group:
        for name, layer in quant_layers(model):
            mask = layer.clip_mask()
            parts[name] = (int((~mask).sum()), mask.numel())
    return _stat(parts, group)


# ---------------------------------------------------------------------- linearisation


def _like(reference: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """``local`` as a DTensor sharded like ``reference`` when that is one, else itself."""
    if not _is_dtensor(reference):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local,
        reference.device_mesh,
        reference.placements,
        run_check=False,
        shape=reference.shape,
        stride=reference.stride(),
    )


@contextlib.contextmanager
def linearized(
    model: nn.Module, restore_weights: bool = True
) -> Iterator[dict[str, LinearizationPoint]]:
    """Inside the block every QuantLinear forward uses ``Q0 + M0·(W - W0)`` instead of Q(W; s).

    On entry each layer records W0 (its latent weights), s0, Q0 = Q(W0; s0) and the range
    mask M0. Inside, the forward is the STE's linearisation at W0: its value at W = W0 is Q0
    bit for bit, its gradient reaches W through M0 and nothing else (the scale is frozen and
    gets none), there is no noise injection (in training mode too), and it has no jumps when
    W crosses a rounding boundary — so central differences of gradients give ``M0·H·M0·v``
    (module docstring). ``quantized_weight`` and ``clip_mask`` keep describing the real Q.

    Args:
        model: a model with QuantLinear layers (none quantizing activations).
        restore_weights: on exit, copy W0 back into every layer's weights (bit for bit), so a
            caller may perturb them freely inside, even if the block raises.

    Yields:
        ``{module name: LinearizationPoint}``, the recorded W0, s0, Q0 and M0.

    Raises:
        ValueError: a layer fake-quantizes its input activations (``a_bits``), which this
            linearisation does not cover; raised on entry, before anything changes.
    """
    layers = list(quant_layers(model))
    for name, layer in layers:
        if layer.config.a_bits is not None:
            raise ValueError(
                f"cannot linearise {name}: it quantizes its input activations "
                f"(a_bits={layer.config.a_bits}), which the STE linearisation does not cover"
            )
    with torch.no_grad():
        weights = {name: layer.weight.detach().clone() for name, layer in layers}
        scales = {name: layer.scale.detach().clone() for name, layer in layers}
        with local_shards(model):  # Q0 and M0 row by row, on this rank's rows when sharded
            local = {
                name: (layer.quantized_weight(), layer.clip_mask().to(layer.weight.dtype))
                for name, layer in layers
            }
        points = {
            name: LinearizationPoint(
                weight=weights[name],
                scale=scales[name],
                quantized=_like(weights[name], local[name][0]),
                mask=_like(weights[name], local[name][1]),
            )
            for name, _ in layers
        }
    outer = [layer._linearization for _, layer in layers]  # kept so blocks can nest
    try:
        for name, layer in layers:
            layer._linearization = points[name]
        yield points
    finally:
        for (name, layer), previous in zip(layers, outer):
            layer._linearization = previous
            if restore_weights:
                with torch.no_grad():
                    layer.weight.copy_(points[name].weight)

r"""Hessian-vector products of a causal language model's loss, as a flat-vector operator.

The loss is the token-weighted mean of the next-token cross-entropy over all batches,

.. math::
    L(\theta) = \frac{\sum_b S_b(\theta)}{\sum_b N_b},\qquad
    S_b = \sum_{t \in b} -\log p_\theta(y_t \mid y_{<t}),

where :math:`N_b` counts the positions of batch b whose (shifted) label is not ``-100``; so
:math:`H = \sum_b \nabla^2 S_b / \sum_b N_b` is exactly the Hessian of the loss over the
concatenated data, whatever the batches' sizes. For a model with winq ``QuantLinear`` layers
the latent weights enter through :math:`Q(W)` with a straight-through estimator whose
derivative is the clip mask M and whose second derivative is zero, so the product is the
Hessian of the loss at :math:`Q(W)` masked to the unclipped coordinates,
:math:`M H_{Q(W)} M` (the STE of :mod:`winq.quantizers`; WinQ, Li et al., arXiv 2605.17471,
measures this Hessian) — the exact backends need nothing quantizer-specific.

Two exact backends (Pearlmutter 1994, "Fast exact multiplication by the Hessian"):

* ``"double_backward"`` — reverse-over-reverse. One forward and one ``create_graph`` backward
  per batch give :math:`g_b = \nabla S_b` as a differentiable graph; then
  :math:`\nabla^2 S_b\, v = \nabla_\theta (g_b^\top v)` is one more backward through it.
  With ``reuse_graph`` the first-order graph of a batch is built once and reused by every
  later product (the ``cached_graphs`` knob bounds how many batches keep theirs: the memory
  of a cached graph is about that of a training step's activations, twice over).
* ``"func"`` — forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad`` of the loss
  as a function of the selected parameters (``functional_call``). Nothing is cached; each
  product costs a forward and a backward carrying dual numbers.

Both run attention through PyTorch's math SDPA kernel (``sdpa_kernel([SDPBackend.MATH])``;
fused kernels have no double backward and no forward-mode AD) and switch Hugging Face
attention implementations other than ``"eager"``/``"sdpa"`` (flash, flex, ...) to
``"eager"``.

One approximate backend, ``"finite_difference"``: the central difference of two ordinary
gradients,

.. math::
    Hv \approx \frac{\nabla L(\theta + \varepsilon v) - \nabla L(\theta - \varepsilon v)}
    {2\varepsilon},

as Granziol & Juarev (2026) ran stochastic Lanczos quadrature to 100B parameters. Nothing
but a plain backward runs, so fused attention, activation checkpointing, autocast, and FSDP's
collectives (which are not in the autograd graph) all work.

The step. Write :math:`x = \varepsilon\lVert v\rVert` for the length of the perturbation.
Taylor expansion of the gradient gives the truncation error
:math:`\frac{\varepsilon^2}{6}\nabla^4 L[v, v, v]`, of order :math:`x^2 K` with K the fourth
derivative along v (largest along the sharpest directions, which Lanczos looks for first).
Two round-offs are divided by :math:`2\varepsilon`: each computed gradient is off by about
:math:`uG` (G the gradient's scale, u the unit round-off of the precision the forward really
runs in), and the stored weights :math:`\theta \pm \varepsilon v` are rounded, which moves the
direction actually applied by a vector of norm about :math:`u\lVert\theta\rVert` (Nocedal &
Wright, *Numerical Optimization*, 2nd ed., §8.1, weigh the same two kinds of error for a
difference of gradients). The total :math:`x^2 K + u(a + b\lVert\theta\rVert)/x` is smallest
at :math:`x^* = (u (a + b\lVert\theta\rVert)/2K)^{1/3}`, with an error of order
:math:`u^{2/3}`. The constants are unknown but do not grow with the model (K is set by the
weights' operator norms, O(1), not by the parameter count), so with :math:`a = b`,

.. math::
    \varepsilon = c\, \frac{\big(u\,(1 + \lVert \theta \rVert)\big)^{1/3}}{\lVert v \rVert},

with c = 0.1 from the error curves measured on tiny Llama and Qwen2 models in float32
(``tests/analysis/test_finite_difference.py``): relative error of :math:`Hv` at most 7e-4 for
random v, and at most 5e-4 of :math:`\lambda_{\max}` on the extreme Ritz vectors, for the
linear layers and for all parameters alike; c = 0.03 triples the first, c = 0.3 multiplies
the second by up to nine. A step proportional to :math:`1 + \lVert\theta\rVert` instead would
need a different c for each selection (the norms' unit weights make :math:`\lVert\theta\rVert`
four times larger while the sharp directions stay as sharp), and for an 8B model
(:math:`\lVert\theta\rVert \approx 2\cdot 10^3`) it would move the weights by about 7c
along every direction, the sharpest included. u is found from the model, not
from the parameters' dtype: the first product runs one short forward recording the dtype of
every floating-point tensor produced (a ``TorchFunctionMode``) and takes the largest unit
round-off among them and the parameters' — Hugging Face's RMSNorm and rotary embeddings
compute in float32 even in a float64 model, autocast runs matrix products in bfloat16, an FSDP
mixed-precision policy all-gathers in its own dtype. ``fd_eps`` replaces :math:`c\,u^{1/3}`.
In bfloat16 no step is accurate (:math:`u^{2/3} \approx 2.5\cdot 10^{-2}`): on the tiny Llama
the default step is 30% off and the best one (``fd_eps=0.3``) 2.5%, against 6e-3 for double
backward in bfloat16. Finite differences want a float32 forward — a mixed-precision policy
that computes in bfloat16 rounds the perturbed weights to bfloat16 as well.

θ is restored after every product by copying back a saved copy (never by subtracting
:math:`\varepsilon v`, which drifts by a rounding per product), so the weights are unchanged
bit for bit however many products run.

Through the STE a perturbation of the latent weights is wrong: Q is piecewise constant, so the
difference is exactly zero where no weight crosses a rounding boundary and huge where one
does. Products on a model with ``QuantLinear`` layers therefore run inside
``winq.nn.linearized(model)``, where each layer computes
:math:`Q(W_0) + M_0 \odot (W - W_0)` with :math:`W_0, Q(W_0), M_0` frozen at θ: the STE's
linearisation, whose Hessian at θ is exactly :math:`M H_{Q(W)} M`.

Vectors are flat: a vector's entries follow :attr:`HessianOperator.param_names` (the order of
``model.named_parameters()``), each parameter flattened row-major (``p.reshape(-1)``), so
``v[offset:offset + p.numel()].view(p.shape)`` is that parameter's block. Their dtype
(``vector_dtype``) may be above the model's: a bfloat16 model gets float32 vectors by default;
tangents are rounded to the model's dtype for the product and products are accumulated and
returned in the vector dtype, and Lanczos keeps its coefficients in float64 as always.

Products run with the model in eval mode (dropout off; winq noise injection is active only in
training mode) and ``requires_grad`` on the selected parameters only. Mode, attention setting
and flags are restored afterwards, also on an exception.

Data parallel: when ``torch.distributed`` is initialised each rank passes its own batches; the
token counts are all-reduced once and every product's numerator :math:`\sum_b \nabla^2 S_b v`
is all-reduced, so every rank gets the single-process result.

Sharded (FSDP2, :func:`winq.sharding.shard_model`): the selected parameters are DTensors
sharded on dim 0, and so are the operator's vectors: each rank holds its rows of every
parameter's block, flattened in the same order
(:class:`~winq.analysis.sharded.ShardedVectorSpace`, whose all-reduced inner products the
estimators use). Only ``"finite_difference"`` runs there; FSDP's reduce-scatter already sums
the ranks' gradients (each rank computes on its own batches, and every rank must pass the same
number of batches, since each forward all-gathers). Memory per rank for parameters, gradients
and vectors is :math:`1/W` of the whole.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from winq.analysis.operator import Operator, VectorSpace
from winq.sharding import is_sharded, local_tensor

__all__ = [
    "BACKENDS",
    "HessianOperator",
    "causal_lm_loss",
    "forward_dtypes",
    "product_mode",
    "select_parameters",
    "unit_roundoff",
]

BACKENDS = ("double_backward", "func", "finite_difference")
IGNORE_INDEX = -100

LossFn = Callable[[nn.Module, Mapping], "torch.Tensor | tuple[torch.Tensor, float]"]


# ----------------------------------------------------------------------------- the loss


def causal_lm_loss(model: nn.Module, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of one batch and the number of tokens it sums over.

    ``labels`` default to ``input_ids`` with ``-100`` where ``attention_mask`` is 0; logits at
    position t predict the label at t+1 (the shift Hugging Face applies inside its loss, done
    here so that the sum and the count are exact).

    Returns:
        ``(loss_sum, num_tokens)``: a scalar tensor and an integer tensor.
    """
    labels = _labels(batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None:
        inputs.setdefault("use_cache", False)
    output = model(**inputs)
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    shifted_logits = logits[:, :-1, :]  # (batch, seq-1, vocab)
    shifted_labels = labels[:, 1:]  # (batch, seq-1)
    loss_sum = nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss_sum, (shifted_labels != IGNORE_INDEX).sum()


def _labels(batch: Mapping) -> torch.Tensor:
    if batch.get("labels") is not None:
        return batch["labels"]
    labels = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is not None:
        labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    return labels


def _default_token_count(batch: Mapping) -> int:
    return int((_labels(batch)[:, 1:] != IGNORE_INDEX).sum())


# ----------------------------------------------------------------------- parameter selection


def select_parameters(model: nn.Module, params: str | Sequence[str] = "linear") -> list[str]:
    """Names of the parameters a Hessian is taken with respect to, in ``named_parameters`` order.

    Args:
        model: the model.
        params: ``"linear"`` — the ``.weight`` of every module with a ``quantized_weight``
            method (winq ``QuantLinear``: the latent weights) if the model has any, else of
            every ``nn.Linear`` except the output head (``model.get_output_embeddings()``);
            ``"all"``; a regular expression (``re.search`` on parameter names); or a list
            of names.

    Returns:
        Parameter names (deduplicated: tied parameters appear once).

    Raises:
        ValueError: the selection is empty, or a listed name does not exist.
    """
    named = dict(model.named_parameters())
    if isinstance(params, str) and params == "all":
        chosen = set(named)
    elif isinstance(params, str) and params == "linear":
        by_id = {id(p): name for name, p in named.items()}
        modules = list(model.modules())
        quantized = [
            m
            for m in modules
            if callable(getattr(m, "quantized_weight", None))
            and isinstance(getattr(m, "weight", None), nn.Parameter)
        ]
        if quantized:
            targets = [m.weight for m in quantized]
        else:
            head = _output_head(model)
            head_weight = getattr(head, "weight", None)
            targets = [
                m.weight
                for m in modules
                if isinstance(m, nn.Linear) and m is not head and m.weight is not head_weight
            ]
        chosen = {by_id[id(p)] for p in targets if id(p) in by_id}
    elif isinstance(params, str):
        try:
            pattern = re.compile(params)
        except re.error as e:
            raise ValueError(f"params={params!r} is not a valid regular expression: {e}") from None
        chosen = {name for name in named if pattern.search(name)}
    else:
        aliases = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
        by_id = {id(p): name for name, p in named.items()}
        missing = [name for name in params if name not in aliases]
        if missing:
            raise ValueError(f"no parameter named {missing[0]!r} in {type(model).__name__}")
        chosen = {by_id[id(aliases[name])] for name in params}
    if not chosen:
        raise ValueError(f"params={params!r} selects no parameter of {type(model).__name__}")
    return [name for name in named if name in chosen]


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    if getter is None:
        return None
    try:
        return getter()
    except (AttributeError, NotImplementedError):
        return None


# --------------------------------------------------------------------- the product context


def _attention_configs(model: nn.Module) -> list:
    """Every distinct Hugging Face config reachable from the model's modules, parents first."""
    seen, configs = set(), []
    for module in model.modules():
        config = getattr(module, "config", None)
        if (
            config is not None
            and hasattr(config, "_attn_implementation")
            and id(config) not in seen
        ):
            seen.add(id(config))
            configs.append(config)
    return configs


def _restore_attention(config, impl) -> None:
    """Put one config's attention setting back without touching its sub-configs (each is
    restored from its own record)."""
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = impl
    else:  # older transformers: a plain attribute
        config._attn_implementation = impl


@contextlib.contextmanager
def product_mode(
    model: nn.Module,
    differentiable: Iterable[nn.Parameter],
    attn_implementation: str | None = None,
    math_attention: bool = True,
) -> Iterator[None]:
    """Put ``model`` in the state Hessian-vector products need; restore it afterwards.

    Eval mode (no dropout, no winq noise) and ``requires_grad`` only on ``differentiable``.
    With ``math_attention`` (what the exact backends need): the math SDPA kernel, and Hugging
    Face attention other than eager/sdpa switched to eager; without it the attention is left
    as it is. ``attn_implementation``, when given, is forced either way. Restores every
    module's mode, every parameter's flag and every config's attention setting, also on an
    exception.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    configs = _attention_configs(model)
    attention = [(c, c._attn_implementation) for c in configs]
    wanted = {id(p) for p in differentiable}
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(id(p) in wanted)
        for config, impl in attention:
            if attn_implementation is not None:
                config._attn_implementation = attn_implementation
            elif math_attention and impl not in (None, "eager", "sdpa"):
                config._attn_implementation = "eager"
        kernels = sdpa_kernel([SDPBackend.MATH]) if math_attention else contextlib.nullcontext()
        with kernels:
            yield
    finally:
        for config, impl in attention:
            _restore_attention(config, impl)
        for p, flag in flags:
            p.requires_grad_(flag)
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _differentiable(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` on ``params`` for a backward through cached graphs (autograd refuses
    to differentiate w.r.t. a tensor whose flag is off, even if it was on when the graph was
    recorded); the flags are restored afterwards."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can reparametrise it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Mapping):
        return self.loss_fn(self.model, batch)


def _split_loss(result) -> tuple[torch.Tensor, torch.Tensor | float]:
    if isinstance(result, tuple):
        loss, weight = result
        return loss, weight
    return result, 1.0


# ------------------------------------------------------------------------- finite differences

# c in the step rule eps = c (u (1 + |theta|))^(1/3) / |v| (module docstring)
FD_STEP_CONSTANT = 0.1
# the dtype-probing forward runs on this many leading tokens of one row of the first batch
_PROBE_TOKENS = 16


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon: the largest relative error of one rounding in ``dtype``."""
    return torch.finfo(dtype).eps / 2


class _FloatingDtypes(TorchFunctionMode):
    """Records the dtype of every floating-point tensor the torch functions called under it
    return."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self._record(result)
        return result

    def _record(self, value) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                self.seen.add(value.dtype)
        elif isinstance(value, (tuple, list)):
            for item in value:
                self._record(item)


def forward_dtypes(model: nn.Module, batch: Mapping, loss_fn: LossFn | None = None) -> set:
    """The floating-point dtypes a forward of ``model`` on ``batch`` computes in.

    Runs ``loss_fn`` (default :func:`causal_lm_loss`) once under ``no_grad`` in the caller's
    context (autocast, FSDP, ``winq.nn.linearized``), so what it sees is what a product sees.
    With the default loss only the first row's first 16 tokens are used.
    """
    if loss_fn is None:
        batch = {
            k: v[:1, :_PROBE_TOKENS] if isinstance(v, torch.Tensor) and v.ndim == 2 else v
            for k, v in batch.items()
        }
    recorder = _FloatingDtypes()
    with torch.no_grad(), recorder:
        (loss_fn or causal_lm_loss)(model, batch)
    return recorder.seen


def _has_quantized_layers(model: nn.Module) -> bool:
    return any(callable(getattr(m, "quantized_weight", None)) for m in model.modules())


def _check_linearizable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        a_bits = getattr(getattr(module, "config", None), "a_bits", None)
        if callable(getattr(module, "quantized_weight", None)) and a_bits is not None:
            raise ValueError(
                f"backend='finite_difference' cannot linearise {name}: it quantizes its input "
                f"activations (a_bits={a_bits}), whose STE the linearisation does not cover; "
                "use backend='double_backward'"
            )


def _linearization(model: nn.Module):
    """``winq.nn.linearized(model)`` for a model with QuantLinear layers, else nothing."""
    if not _has_quantized_layers(model):
        return contextlib.nullcontext()
    from winq.nn import linearized

    return linearized(model)


# ------------------------------------------------------------------------------ the operator


class _Shared:
    """State shared by an operator and its restrictions: model, data, cached graphs."""

    def __init__(self, model, batches, names, params, backend, loss_fn, cache_limit, group, attn):
        self.model = model
        self.batches = batches
        self.names = names
        self.params = params
        self.backend = backend
        self.loss_fn = loss_fn
        self.cache_limit = cache_limit
        self.group = group
        self.attn_implementation = attn
        self.graphs: dict[int, tuple[torch.Tensor | None, ...]] = {}
        self.batch_weights: list[float | None] = [None] * len(batches)
        self.total_weight: float | None = None
        self.sharded = False
        self.mesh_size = 1
        self.fd_eps: float | None = None
        self.fd_unit_roundoff: float | None = None


class HessianOperator(Operator):
    """``H @ v`` for the Hessian of a causal LM's loss w.r.t. selected parameters.

    Args:
        model: a causal LM (Hugging Face style: ``model(input_ids=..., attention_mask=...)``
            returns an object with ``.logits``), or any module when ``loss_fn`` is given; may
            be sharded with FSDP2 (:func:`winq.sharding.shard_model`).
        batches: an iterable of dicts with ``input_ids`` (batch, seq) and optional
            ``attention_mask`` and ``labels`` (moved to the parameters' device once).
            Under ``torch.distributed``, this rank's share (the same number on every rank
            when the model is sharded).
        params: ``"linear"``, ``"all"``, a regex, or a list of names (see
            :func:`select_parameters`).
        backend: ``"double_backward"``, ``"func"`` or ``"finite_difference"``.
        reuse_graph: keep each batch's first-order graph across products (double backward).
        loss_fn: ``loss_fn(model, batch) -> (loss_sum, weight)`` replacing the causal-LM loss;
            the operator's loss is ``Σ loss_sum / Σ weight``. A bare scalar return means
            weight 1 (a mean over batches).
        cached_graphs: with ``reuse_graph``, how many batches keep their graph (the first
            ``cached_graphs``; the rest are recomputed every product). None: all.
        process_group: the group to all-reduce over (None: the default group, if
            ``torch.distributed`` is initialised; a sharded model uses its mesh's group).
        attn_implementation: force a Hugging Face attention implementation during products
            (default: keep eager/sdpa, switch anything else to eager; finite differences
            keep whatever the model uses).
        fd_eps: the finite-difference step in units of :math:`(1 + \\lVert\\theta\\rVert)^{1/3}
            / \\lVert v\\rVert` (a positive float; default :math:`0.1\\,u^{1/3}` with u the
            unit round-off of the forward, see the module docstring).
        vector_dtype: dtype of the vectors the operator takes and returns (default the
            parameters' dtype, float32 for a bfloat16 or float16 model).

    Attributes:
        param_names, param_shapes: the selection, in the flattening order of vectors
            (global shapes for a sharded model).
        num_params: the dimension n (all ranks together for a sharded model).
        dtype: the vector dtype; ``model_dtype`` is the parameters'.
        space: a :class:`~winq.analysis.sharded.ShardedVectorSpace` for a sharded model
            (vectors hold this rank's ``space.local_size`` entries), else None.
        num_tokens: the total token count (all ranks) the loss is averaged over, for the
            default loss; for a custom ``loss_fn`` the total weight once the first product ran.

    Raises:
        ValueError: empty selection, unknown backend, a backend other than
            ``"finite_difference"`` on a sharded model, ``fd_eps`` not positive, no batches,
            mixed dtypes or devices.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Mapping],
        params: str | Sequence[str] = "linear",
        backend: str = "double_backward",
        reuse_graph: bool = True,
        loss_fn: LossFn | None = None,
        cached_graphs: int | None = None,
        process_group=None,
        attn_implementation: str | None = None,
        fd_eps: float | None = None,
        vector_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if cached_graphs is not None and cached_graphs < 0:
            raise ValueError(f"cached_graphs must be >= 0, got {cached_graphs}")
        if fd_eps is not None:
            if backend != "finite_difference":
                raise ValueError(f"fd_eps applies to backend='finite_difference', not {backend!r}")
            if isinstance(fd_eps, bool) or not (math.isfinite(float(fd_eps)) and fd_eps > 0):
                raise ValueError(f"fd_eps must be a positive finite number, got {fd_eps!r}")
        sharded = is_sharded(model)
        if sharded and backend != "finite_difference":
            raise ValueError(
                f"backend={backend!r} cannot run on an FSDP-sharded model: FSDP's all-gathers "
                "and reduce-scatters are not in the autograd graph; use "
                "backend='finite_difference'"
            )
        if backend == "finite_difference":
            _check_linearizable(model)  # fail now, not at the first product
        names = select_parameters(model, params)
        named = dict(model.named_parameters())
        tensors = [named[name] for name in names]
        dtypes = {p.dtype for p in tensors}
        devices = {p.device for p in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"selected parameters must share one dtype and device, got {dtypes} / {devices}"
            )
        self.model_dtype = tensors[0].dtype
        self.dtype = _vector_dtype(self.model_dtype, vector_dtype)
        self.device = tensors[0].device
        self.params_spec = params if isinstance(params, str) else list(params)
        self.reuse_graph = bool(reuse_graph)
        batches = [self._to_device(b) for b in batches]
        group = None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if sharded:
            group = _mesh_group(tensors) if process_group is None else process_group
        elif distributed:
            group = process_group if process_group is not None else torch.distributed.group.WORLD
        if not distributed and not batches:
            raise ValueError("batches is empty")
        limit = (len(batches) if cached_graphs is None else cached_graphs) if reuse_graph else 0
        self._shared = _Shared(
            model,
            batches,
            names,
            tensors,
            backend,
            loss_fn,
            limit,
            group,
            attn_implementation,
        )
        self._shared.fd_eps = None if fd_eps is None else float(fd_eps)
        if sharded:
            self._shared.sharded = True
            self._shared.mesh_size = torch.distributed.get_world_size(group)
            fewest = -self._all_reduce_scalar(-len(batches), op="max")
            most = self._all_reduce_scalar(len(batches), op="max")
            if fewest != most or most == 0:
                raise ValueError(
                    "every rank of a sharded model must pass the same number of batches "
                    f"(each forward all-gathers), got between {int(fewest)} and {int(most)}"
                )
        self._set_index(list(range(len(names))))
        self.num_batches = self._all_reduce_scalar(len(batches))
        if loss_fn is None:
            for i, batch in enumerate(batches):
                self._shared.batch_weights[i] = float(_default_token_count(batch))
            self._shared.total_weight = self._all_reduce_scalar(
                sum(self._shared.batch_weights) if batches else 0.0
            )
            if self._shared.total_weight <= 0:
                raise ValueError("the batches contain no token to predict (all labels -100)")

    # -- construction helpers

    def _set_index(self, index: list[int]) -> None:
        shared = self._shared
        params = [shared.params[i] for i in index]
        self._index = index
        self.param_names = [shared.names[i] for i in index]
        self.param_shapes = [tuple(p.shape) for p in params]
        self._local_shapes = [tuple(local_tensor(p).shape) for p in params]
        self._sizes = [math.prod(shape) for shape in self._local_shapes]
        self.num_params = sum(p.numel() for p in params)
        self.space = None
        if shared.sharded:
            from winq.analysis.sharded import ShardedVectorSpace

            self.space = ShardedVectorSpace.from_parameters(params, shared.group)

    def _to_device(self, batch: Mapping) -> dict:
        if not isinstance(batch, Mapping):
            raise TypeError(f"each batch must be a dict, got {type(batch).__name__}")
        return {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    def restrict(self, names: Sequence[str]) -> HessianOperator:
        """The diagonal block :math:`H_{BB}` for the parameters ``names`` (a subset of
        :attr:`param_names`, kept in this operator's order). Shares the model, the data and
        the cached first-order graphs, and its products are cheaper: autograd only
        traverses what the block's gradient depends on.

        Raises:
            ValueError: a name not in this operator's selection, or an empty list.
        """
        position = {name: i for i, name in zip(self._index, self.param_names)}
        missing = [n for n in names if n not in position]
        if missing:
            raise ValueError(f"{missing[0]!r} is not among this operator's parameters")
        wanted = set(names)
        if not wanted:
            raise ValueError("restrict() needs at least one parameter name")
        block = object.__new__(HessianOperator)
        Operator.__init__(block)
        block.__dict__.update(
            {k: v for k, v in self.__dict__.items() if k not in ("num_matvecs", "_index")}
        )
        block._set_index([i for i, n in zip(self._index, self.param_names) if n in wanted])
        block.params_spec = list(block.param_names)
        return block

    # -- public helpers

    @property
    def model(self) -> nn.Module:
        return self._shared.model

    @property
    def backend(self) -> str:
        return self._shared.backend

    @property
    def num_tokens(self) -> float | None:
        return self._shared.total_weight

    @property
    def sharded(self) -> bool:
        """Whether the model is FSDP-sharded (vectors then hold this rank's slices)."""
        return self._shared.sharded

    def offsets(self) -> list[int]:
        """Start of each parameter's block in a flat vector (same order as ``param_names``;
        in this rank's local vector for a sharded model)."""
        starts, total = [], 0
        for size in self._sizes:
            starts.append(total)
            total += size
        return starts

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat vector as ``{name: tensor of the parameter's (local) shape}``."""
        pieces = vector.split(self._sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.param_names, pieces, self._local_shapes)
        }

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """One flat vector from per-parameter tensors (a dict by name, or a list in order)."""
        if isinstance(tensors, Mapping):
            tensors = [tensors[name] for name in self.param_names]
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def parameters_vector(self) -> torch.Tensor:
        """The current values of the selected parameters as one flat vector."""
        return self.flatten([local_tensor(self._shared.params[i]) for i in self._index])

    def clear_cache(self) -> None:
        """Drop every cached first-order graph (frees their memory; shared with restrictions)."""
        self._shared.graphs.clear()

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc) -> None:
        self.clear_cache()

    def metadata(self) -> dict:
        """What the operator averages over, for a saved spectrum's ``metadata``.

        ``tokens`` is an integer when the batches' weights are token counts (the default loss),
        the weights' sum otherwise. For finite differences, ``fd_relative_step`` is
        :math:`c\\,u^{1/3}` (or ``fd_eps``) and ``fd_unit_roundoff`` the u found, once the
        first product ran.
        """
        shared = self._shared
        info = {
            "params": self.params_spec,
            "num_params": self.num_params,
            "backend": shared.backend,
            "reuse_graph": self.reuse_graph,
            "batches": int(self.num_batches),
            "tokens": _count(shared.total_weight),
            "dtype": str(self.model_dtype).replace("torch.", ""),
            "vector_dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "world_size": (
                torch.distributed.get_world_size(shared.group) if shared.group is not None else 1
            ),
            "sharded": shared.sharded,
        }
        if shared.backend == "finite_difference":
            info["fd_unit_roundoff"] = shared.fd_unit_roundoff
            info["fd_relative_step"] = (
                shared.fd_eps
                if shared.fd_eps is not None or shared.fd_unit_roundoff is None
                else FD_STEP_CONSTANT * shared.fd_unit_roundoff ** (1 / 3)
            )
        return info

    def loss(self) -> float:
        """The loss (token-weighted mean over all batches and ranks)."""
        shared = self._shared
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        weight = 0.0
        with torch.no_grad(), self._mode([]):
            for batch in shared.batches:
                loss, w = self._loss_and_weight(batch)
                total += loss.double()
                weight += float(w)
        total = self._all_reduce(total.reshape(1))[0]
        weight = self._all_reduce_scalar(weight)
        return float(total) / weight

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the loss w.r.t. the selected parameters (this rank's slice for
        a sharded model)."""
        shared = self._shared
        params = [shared.params[i] for i in self._index]
        out = torch.zeros(self.space_size, dtype=self.dtype, device=self.device)
        with self._mode(params):
            grads = self._gradient_sum(params)
        torch._foreach_add_(list(out.split(self._sizes)), [g.reshape(-1) for g in grads])
        if not shared.sharded:  # FSDP's reduce-scatter has summed the ranks already
            out = self._all_reduce(out)
        return out / self._finish_weights()

    @property
    def space_size(self) -> int:
        """Entries of the vectors this process holds (``num_params`` unless sharded)."""
        return self.num_params if self.space is None else self.space.local_size

    # -- products

    def _mode(self, params):
        shared = self._shared
        return product_mode(
            shared.model,
            params,
            shared.attn_implementation,
            math_attention=shared.backend != "finite_difference",
        )

    def _loss_and_weight(self, batch: Mapping):
        shared = self._shared
        if shared.loss_fn is None:
            return causal_lm_loss(shared.model, batch)
        return _split_loss(shared.loss_fn(shared.model, batch))

    def _record_weight(self, index: int, weight) -> None:
        shared = self._shared
        if shared.batch_weights[index] is None:
            shared.batch_weights[index] = float(weight)

    def _finish_weights(self) -> float:
        shared = self._shared
        if shared.total_weight is None:
            shared.total_weight = self._all_reduce_scalar(sum(shared.batch_weights))
            if shared.total_weight == 0:
                raise ValueError("the total loss weight over all batches is zero")
        return shared.total_weight

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        block = block.to(device=self.device, dtype=self.dtype)
        columns = block.shape[1]
        out = torch.zeros((columns, self.space_size), dtype=self.dtype, device=self.device)
        # per column, views of out's row shaped like each parameter: where products accumulate
        targets = [
            [piece.view(shape) for piece, shape in zip(row.split(self._sizes), self._local_shapes)]
            for row in out
        ]
        backend = self._shared.backend
        # finite differences perturb in the vector dtype (one rounding to the model's dtype);
        # the exact backends need tangents in the model's dtype
        tangent_dtype = self.dtype if backend == "finite_difference" else self.model_dtype
        tangents = [
            [
                piece.view(shape)
                for piece, shape in zip(
                    col.to(tangent_dtype).contiguous().split(self._sizes), self._local_shapes
                )
            ]
            for col in block.T
        ]
        if backend == "double_backward":
            self._double_backward(tangents, targets)
        elif backend == "func":
            self._forward_over_reverse(tangents, targets)
        else:
            self._finite_difference(tangents, targets)
        if not self._shared.sharded:  # FSDP's reduce-scatter has summed the ranks already
            out = self._all_reduce(out)
        out.div_(self._finish_weights())
        return out.T

    def _double_backward(self, tangents, targets) -> None:
        shared = self._shared
        all_params = shared.params
        params = [all_params[i] for i in self._index]
        need_forward = any(b not in shared.graphs for b in range(len(shared.batches)))
        context = self._mode(all_params) if need_forward else _differentiable(all_params)
        with context:
            for b, batch in enumerate(shared.batches):
                grads = shared.graphs.get(b)
                cached = grads is not None
                if not cached:
                    loss, weight = self._loss_and_weight(batch)
                    self._record_weight(b, weight)
                    grads = torch.autograd.grad(
                        loss, all_params, create_graph=True, allow_unused=True
                    )
                    cached = b < shared.cache_limit
                    if cached:
                        shared.graphs[b] = grads
                outputs, inputs, keep = [], [], []
                for position, i in enumerate(self._index):
                    g = grads[i]
                    if g is not None and g.requires_grad:
                        outputs.append(g)
                        inputs.append(all_params[i])
                        keep.append(position)
                if not outputs:
                    continue  # the block's gradient is constant: its Hessian block is zero
                for column, (tangent, target) in enumerate(zip(tangents, targets)):
                    products = torch.autograd.grad(
                        outputs,
                        params if len(keep) == len(params) else inputs,
                        grad_outputs=[tangent[p] for p in keep],
                        retain_graph=cached or column + 1 < len(tangents),
                        allow_unused=True,
                        materialize_grads=True,
                    )
                    torch._foreach_add_([target[p] for p in keep], list(products))

    def _forward_over_reverse(self, tangents, targets) -> None:
        from torch.func import functional_call, grad, jvp

        shared = self._shared
        names = [shared.names[i] for i in self._index]
        module = _LossModule(shared.model, shared.loss_fn or causal_lm_loss)
        primals = tuple(shared.params[i].detach() for i in self._index)

        with self._mode([]):
            for b, batch in enumerate(shared.batches):

                def loss_of(*values, batch=batch):
                    state = {f"model.{name}": value for name, value in zip(names, values)}
                    loss, weight = _split_loss(functional_call(module, state, (batch,)))
                    return loss, torch.as_tensor(weight).detach()

                gradient = grad(loss_of, argnums=tuple(range(len(names))), has_aux=True)
                for tangent, target in zip(tangents, targets):
                    _, products, weight = jvp(gradient, primals, tuple(tangent), has_aux=True)
                    torch._foreach_add_(target, list(products))
                self._record_weight(b, weight)

    def _finite_difference(self, tangents, targets) -> None:
        """Central differences of gradients at θ ± εv, θ restored from a saved copy."""
        shared = self._shared
        params = [shared.params[i] for i in self._index]
        shards = [local_tensor(p) for p in params]  # views: writing them moves the model
        saved = [shard.clone() for shard in shards]
        space = self.space or VectorSpace(self.num_params)
        theta = math.sqrt(
            float(space.reduce(torch.stack([s.double().pow(2).sum() for s in saved]).sum()))
        )
        try:
            with self._mode(params), _linearization(shared.model):
                relative = self._fd_relative_step()
                for tangent, target in zip(tangents, targets):
                    squares = torch.stack([t.double().pow(2).sum() for t in tangent]).sum()
                    norm = math.sqrt(float(space.reduce(squares)))
                    if norm == 0.0:
                        continue  # H 0 = 0
                    step = relative * (1.0 + theta) ** (1 / 3) / norm
                    for sign in (1.0, -1.0):
                        with torch.no_grad():
                            for shard, origin, piece in zip(shards, saved, tangent):
                                shard.copy_(torch.add(origin, piece, alpha=sign * step))
                        grads = self._gradient_sum(params)
                        for into, g in zip(target, grads):
                            into.add_(g.to(into.dtype), alpha=sign)
                    for into in target:
                        into.div_(2.0 * step)
        finally:
            with torch.no_grad():
                for shard, origin in zip(shards, saved):
                    shard.copy_(origin)

    def _fd_relative_step(self) -> float:
        """c u^(1/3), or ``fd_eps``; u measured by one short forward at the first product (the
        caller has entered the product context, so autocast and linearisation count)."""
        shared = self._shared
        if shared.fd_unit_roundoff is None:
            dtypes = {self.model_dtype}
            if shared.batches:
                dtypes |= forward_dtypes(shared.model, shared.batches[0], shared.loss_fn)
            roundoff = max(unit_roundoff(dtype) for dtype in dtypes)
            # every rank must take the same step: the coarsest precision any rank saw
            shared.fd_unit_roundoff = self._all_reduce_scalar(roundoff, op="max")
        if shared.fd_eps is not None:
            return shared.fd_eps
        return FD_STEP_CONSTANT * shared.fd_unit_roundoff ** (1 / 3)

    def _gradient_sum(self, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
        """:math:`\\sum_b \\nabla S_b` over this rank's batches w.r.t. ``params`` (local shards;
        for a sharded model already summed over the ranks by FSDP's reduce-scatter)."""
        shared = self._shared
        if not shared.sharded:
            total = None
            for b, batch in enumerate(shared.batches):
                loss, weight = self._loss_and_weight(batch)
                self._record_weight(b, weight)
                grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
                if total is None:
                    total = list(grads)
                else:
                    torch._foreach_add_(total, list(grads))
            return total if total is not None else [torch.zeros_like(p) for p in params]
        # FSDP reduces gradients only through .grad; it averages over the mesh, so the loss is
        # scaled by the mesh size to get the sum. The user's .grad is put back afterwards.
        previous = [p.grad for p in params]
        try:
            for p in params:
                p.grad = None
            for b, batch in enumerate(shared.batches):
                loss, weight = self._loss_and_weight(batch)
                self._record_weight(b, weight)
                (loss * shared.mesh_size).backward()
            return [
                local_tensor(p.grad) if p.grad is not None else torch.zeros_like(local_tensor(p))
                for p in params
            ]
        finally:
            for p, grad in zip(params, previous):
                p.grad = grad

    # -- distributed

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        group = self._shared.group
        if group is not None:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
        return tensor

    def _all_reduce_scalar(self, value: float, op: str = "sum") -> float:
        group = self._shared.group
        if group is None:
            return value
        backend = torch.distributed.get_backend(group)
        device = self.device if backend == "nccl" else torch.device("cpu")
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        reduce_op = (
            torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
        )
        torch.distributed.all_reduce(tensor, op=reduce_op, group=group)
        return float(tensor[0])


def _vector_dtype(model_dtype: torch.dtype, vector_dtype: torch.dtype | None) -> torch.dtype:
    if vector_dtype is None:
        return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype
    if not isinstance(vector_dtype, torch.dtype) or not vector_dtype.is_floating_point:
        raise ValueError(f"vector_dtype must be a floating-point torch.dtype, got {vector_dtype!r}")
    return vector_dtype


def _mesh_group(params: Sequence[torch.Tensor]):
    """The process group of the 1-D device mesh the sharded parameters live on."""
    meshes = {id(p.device_mesh): p.device_mesh for p in params if hasattr(p, "device_mesh")}
    if len(meshes) != 1 or len(params) != sum(hasattr(p, "device_mesh") for p in params):
        raise ValueError("every selected parameter of a sharded model must be sharded on one mesh")
    mesh = next(iter(meshes.values()))
    if mesh.ndim != 1:
        raise ValueError(f"a sharded operator needs a 1-D device mesh, got shape {mesh.shape}")
    return mesh.get_group()


def _count(weight: float | None) -> int | float | None:
    """A summed loss weight as an integer when it is a whole number (a token count)."""
    if weight is None or not float(weight).is_integer():
        return weight
    return int(weight)

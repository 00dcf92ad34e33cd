r"""Exact Hessian-vector products of a causal language model's loss, as a flat-vector operator.

The loss is the token-weighted mean of the next-token cross-entropy over all batches,

.. math::
    L(\theta) = \frac{\sum_b S_b(\theta)}{\sum_b N_b},\qquad
    S_b = \sum_{t \in b} -\log p_\theta(y_t \mid y_{<t}),

where :math:`N_b` counts the positions of batch b whose (shifted) label is not ``-100``; so
:math:`H = \sum_b \nabla^2 S_b / \sum_b N_b` is exactly the Hessian of the loss over the
concatenated data, whatever the batches' sizes. For a model with winq ``QuantLinear`` layers
the latent weights enter through :math:`Q(W)` with a straight-through estimator whose
derivative is the clip mask M and whose second derivative is zero, so the product computed
here is the Hessian of the loss at :math:`Q(W)` masked to the unclipped coordinates,
:math:`M H_{Q(W)} M` (see DESIGN.md) — nothing quantizer-specific is needed in this module.

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

Vectors are flat: a vector's entries follow :attr:`HessianOperator.param_names` (the order of
``model.named_parameters()``), each parameter flattened row-major (``p.reshape(-1)``), so
``v[offset:offset + p.numel()].view(p.shape)`` is that parameter's block.

Products run with the model in eval mode (dropout off; winq noise injection is active only in
training mode), attention through PyTorch's math SDPA kernel
(``sdpa_kernel([SDPBackend.MATH])``; fused kernels have no double backward and no forward-mode
AD), Hugging Face attention implementations other than ``"eager"``/``"sdpa"`` (flash, flex,
...) switched to ``"eager"``, and ``requires_grad`` on the selected parameters only. Mode,
attention setting and flags are restored afterwards, also on an exception.

Data parallel: when ``torch.distributed`` is initialised each rank passes its own batches; the
token counts are all-reduced once and every product's numerator :math:`\sum_b \nabla^2 S_b v`
is all-reduced, so every rank gets the single-process result.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from winq.analysis.operator import Operator

__all__ = ["BACKENDS", "HessianOperator", "causal_lm_loss", "select_parameters"]

BACKENDS = ("double_backward", "func")
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
) -> Iterator[None]:
    """Put ``model`` in the state Hessian-vector products need; restore it afterwards.

    Eval mode (no dropout, no winq noise), ``requires_grad`` only on ``differentiable``,
    the math SDPA kernel, and Hugging Face attention other than eager/sdpa switched to eager
    (or to ``attn_implementation`` when given). Restores every module's mode, every
    parameter's flag and every config's attention setting, also on an exception.
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
            elif impl not in (None, "eager", "sdpa"):
                config._attn_implementation = "eager"
        with sdpa_kernel([SDPBackend.MATH]):
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


class HessianOperator(Operator):
    """``H @ v`` for the Hessian of a causal LM's loss w.r.t. selected parameters.

    Args:
        model: a causal LM (Hugging Face style: ``model(input_ids=..., attention_mask=...)``
            returns an object with ``.logits``), or any module when ``loss_fn`` is given.
        batches: an iterable of dicts with ``input_ids`` (batch, seq) and optional
            ``attention_mask`` and ``labels`` (moved to the parameters' device once).
            Under ``torch.distributed``, this rank's share.
        params: ``"linear"``, ``"all"``, a regex, or a list of names (see
            :func:`select_parameters`).
        backend: ``"double_backward"`` or ``"func"``.
        reuse_graph: keep each batch's first-order graph across products (double backward).
        loss_fn: ``loss_fn(model, batch) -> (loss_sum, weight)`` replacing the causal-LM loss;
            the operator's loss is ``Σ loss_sum / Σ weight``. A bare scalar return means
            weight 1 (a mean over batches).
        cached_graphs: with ``reuse_graph``, how many batches keep their graph (the first
            ``cached_graphs``; the rest are recomputed every product). None: all.
        process_group: the group to all-reduce over (None: the default group, if
            ``torch.distributed`` is initialised).
        attn_implementation: force a Hugging Face attention implementation during products
            (default: keep eager/sdpa, switch anything else to eager).

    Attributes:
        param_names, param_shapes: the selection, in the flattening order of vectors.
        num_params: the dimension n.
        num_tokens: the total token count (all ranks) the loss is averaged over, for the
            default loss; for a custom ``loss_fn`` the total weight once the first product ran.

    Raises:
        ValueError: empty selection, unknown backend, no batches, mixed dtypes or devices.
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
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if cached_graphs is not None and cached_graphs < 0:
            raise ValueError(f"cached_graphs must be >= 0, got {cached_graphs}")
        names = select_parameters(model, params)
        named = dict(model.named_parameters())
        tensors = [named[name] for name in names]
        dtypes = {p.dtype for p in tensors}
        devices = {p.device for p in tensors}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"selected parameters must share one dtype and device, got {dtypes} / {devices}"
            )
        self.dtype = tensors[0].dtype
        self.device = tensors[0].device
        self.params_spec = params if isinstance(params, str) else list(params)
        self.reuse_graph = bool(reuse_graph)
        batches = [self._to_device(b) for b in batches]
        group = None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            group = process_group if process_group is not None else torch.distributed.group.WORLD
        elif not batches:
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
        self._index = index
        self.param_names = [shared.names[i] for i in index]
        self.param_shapes = [tuple(shared.params[i].shape) for i in index]
        self._sizes = [shared.params[i].numel() for i in index]
        self.num_params = sum(self._sizes)

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

    def offsets(self) -> list[int]:
        """Start of each parameter's block in a flat vector (same order as ``param_names``)."""
        starts, total = [], 0
        for size in self._sizes:
            starts.append(total)
            total += size
        return starts

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``(n,)`` vector as ``{name: tensor of the parameter's shape}``."""
        pieces = vector.split(self._sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.param_names, pieces, self.param_shapes)
        }

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """One flat vector from per-parameter tensors (a dict by name, or a list in order)."""
        if isinstance(tensors, Mapping):
            tensors = [tensors[name] for name in self.param_names]
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def parameters_vector(self) -> torch.Tensor:
        """The current values of the selected parameters as one flat vector."""
        return self.flatten([self._shared.params[i].detach() for i in self._index])

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
        the weights' sum otherwise.
        """
        shared = self._shared
        return {
            "params": self.params_spec,
            "num_params": self.num_params,
            "backend": shared.backend,
            "reuse_graph": self.reuse_graph,
            "batches": int(self.num_batches),
            "tokens": _count(shared.total_weight),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "world_size": (
                torch.distributed.get_world_size(shared.group) if shared.group is not None else 1
            ),
        }

    def loss(self) -> float:
        """The loss (token-weighted mean over all batches and ranks)."""
        shared = self._shared
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        weight = 0.0
        with torch.no_grad(), product_mode(shared.model, [], shared.attn_implementation):
            for batch in shared.batches:
                loss, w = self._loss_and_weight(batch)
                total += loss.double()
                weight += float(w)
        total = self._all_reduce(total.reshape(1))[0]
        weight = self._all_reduce_scalar(weight)
        return float(total) / weight

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the loss w.r.t. the selected parameters."""
        shared = self._shared
        params = [shared.params[i] for i in self._index]
        out = torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        weight = 0.0
        with product_mode(shared.model, params, shared.attn_implementation):
            for batch in shared.batches:
                loss, w = self._loss_and_weight(batch)
                grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
                out += torch.cat([g.reshape(-1) for g in grads])
                weight += float(w)
        out = self._all_reduce(out)
        return out / self._all_reduce_scalar(weight)

    # -- products

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
        out = torch.zeros((columns, self.num_params), dtype=self.dtype, device=self.device)
        # per column, views of out's row shaped like each parameter: where products accumulate
        targets = [
            [piece.view(shape) for piece, shape in zip(row.split(self._sizes), self.param_shapes)]
            for row in out
        ]
        tangents = [
            [
                piece.view(shape)
                for piece, shape in zip(col.contiguous().split(self._sizes), self.param_shapes)
            ]
            for col in block.T
        ]
        if self._shared.backend == "double_backward":
            self._double_backward(tangents, targets)
        else:
            self._forward_over_reverse(tangents, targets)
        out = self._all_reduce(out)
        out.div_(self._finish_weights())
        return out.T

    def _double_backward(self, tangents, targets) -> None:
        shared = self._shared
        all_params = shared.params
        params = [all_params[i] for i in self._index]
        need_forward = any(b not in shared.graphs for b in range(len(shared.batches)))
        context = (
            product_mode(shared.model, all_params, shared.attn_implementation)
            if need_forward
            else _differentiable(all_params)
        )
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

        with product_mode(shared.model, [], shared.attn_implementation):
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

    # -- distributed

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        group = self._shared.group
        if group is not None:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
        return tensor

    def _all_reduce_scalar(self, value: float) -> float:
        if self._shared.group is None:
            return value
        backend = torch.distributed.get_backend(self._shared.group)
        device = self.device if backend == "nccl" else torch.device("cpu")
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        self._all_reduce(tensor)
        return float(tensor[0])


def _count(weight: float | None) -> int | float | None:
    """A summed loss weight as an integer when it is a whole number (a token count)."""
    if weight is None or not float(weight).is_integer():
        return weight
    return int(weight)

r"""FSDP2 sharding of a causal LM: one ``fully_shard`` call per decoder block and one for the root.

PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP";
the FSDP2 design in the PyTorch documentation, "torch.distributed.fsdp.fully_shard") replaces
every parameter of a wrapped module by a ``DTensor`` sharded on dim 0 over a 1-D device mesh
of W ranks: rank r keeps rows :math:`[r\,c, \min((r+1)c, d))` of a parameter with d rows,
:math:`c = \lceil d/W\rceil` (``torch.chunk``'s split, so the last ranks may hold fewer rows
or none). Before a wrapped module's forward its parameters are all-gathered, afterwards they
are freed again; in backward the gradients are reduce-scattered, so each rank ends with its
own rows of the gradient averaged over ranks. Wrapping each decoder block separately bounds
the unsharded memory to one block at a time; the root call collects what is left (embeddings,
final norm, output head; tied weights stay one parameter).

Checkpoints stay whole: :func:`full_state_dict` and :func:`full_optimizer_state_dict`
gather the parameters and the optimizer state to rank 0's CPU
(``torch.distributed.checkpoint.state_dict`` with ``full_state_dict=True``,
``cpu_offload=True``), :func:`unsharded_parameters` lets rank 0 write the model as an ordinary
Hugging Face folder, and :func:`load_full_optimizer_state_dict` shards a saved optimizer
state again on resume.

Per rank, parameters, gradients and optimizer state then take :math:`1/W` of their size, which
is what lets a Hessian spectrum (``winq.analysis``) or a training run (``winq.train``) reach
models larger than one device. The helpers here import torch only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "decoder_layers",
    "full_optimizer_state_dict",
    "full_state_dict",
    "is_sharded",
    "load_full_optimizer_state_dict",
    "local_tensor",
    "shard_model",
    "sharded_rows",
    "unsharded_parameters",
]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a causal LM, in order.

    Found generically: the ``nn.ModuleList`` holding the most parameters among those whose
    entries are all of one class (``model.layers`` for Llama, Qwen2 and Mistral,
    ``gpt_neox.layers`` for GPT-NeoX, ``transformer.h`` for GPT-2 — and any list of experts
    nested inside a block holds fewer parameters than the list of blocks).

    Raises:
        ValueError: the model has no such list.
    """
    best, best_size = None, -1
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = module, size
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of identical blocks to shard"
        )
    return list(best)


def is_sharded(model: nn.Module) -> bool:
    """True when any parameter of ``model`` is a ``DTensor`` (FSDP2 has been applied)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_model(
    model: nn.Module,
    mesh=None,
    reshard_after_forward: bool = True,
    mp_policy=None,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2: each decoder block, then the root.

    Args:
        model: a causal LM (see :func:`decoder_layers` for how the blocks are found).
        mesh: a ``DeviceMesh``; default a 1-D mesh over the default process group, on CUDA
            when the parameters are there, else on CPU (gloo).
        reshard_after_forward: free the all-gathered parameters after each block's forward
            (FSDP's memory-saving default); False keeps them until backward (ZeRO-2 style).
        mp_policy: an optional ``torch.distributed.fsdp.MixedPrecisionPolicy``.

    Returns:
        ``model`` itself, now an ``FSDPModule`` whose parameters are DTensors.

    Raises:
        ValueError: ``torch.distributed`` is not initialised, or the model is already sharded
            or has no list of decoder blocks.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "shard_model needs torch.distributed initialised (torchrun, or init_process_group)"
        )
    if is_sharded(model):
        raise ValueError(f"{type(model).__name__} is already sharded")
    layers = decoder_layers(model)
    if mesh is None:
        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        options["mp_policy"] = mp_policy
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def sharded_rows(param: torch.Tensor) -> tuple[int, int]:
    """The rows ``[start, stop)`` of dim 0 that this rank holds of a parameter.

    A plain tensor is held whole: ``(0, len)``. A ``DTensor`` must be sharded on dim 0 over a
    1-D mesh (what :func:`shard_model` builds); its split is ``torch.chunk``'s, checked against
    the local shard's length.

    Raises:
        ValueError: another placement (replicated, sharded on another dim, a 2-D mesh).
    """
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return 0, (param.shape[0] if param.ndim else 1)
    placements = tuple(param.placements)
    if len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(
            f"expected a parameter sharded on dim 0 over a 1-D mesh, got placements {placements}"
        )
    rows = param.shape[0]
    world = param.device_mesh.size()
    rank = param.device_mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    local_rows = param.to_local().shape[0]
    if stop - start != local_rows:
        raise ValueError(
            f"a dim-0 shard of {rows} rows on rank {rank} of {world} holds {local_rows} rows, "
            f"not torch.chunk's {stop - start}"
        )
    return start, stop


def local_tensor(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter as a detached view sharing its storage (the whole
    tensor when plain), so an in-place write changes the parameter."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return param.to_local().detach()
    return param.detach()


def _options(**overrides):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **overrides)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on the other ranks); a collective:
    every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state for the whole model, keyed by parameter name, on rank 0's CPU
    (empty on the other ranks); a collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a :func:`full_optimizer_state_dict` (given on every rank) into the optimizer of a
    sharded model: each rank keeps its rows. A collective."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options())


@contextlib.contextmanager
def unsharded_parameters(model: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block the model's parameters are the whole tensors of ``state`` (from
    :func:`full_state_dict`, on rank 0), so ``save_pretrained`` writes an ordinary checkpoint;
    tied parameters stay one. The sharded parameters are put back on exit. Not for forwards.

    Raises:
        ValueError: ``state`` lacks a parameter of the model.
    """
    whole: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in whole:
            continue
        if name not in state:
            raise ValueError(f"the gathered state dict has no entry {name!r}")
        whole[id(param)] = nn.Parameter(state[name], requires_grad=param.requires_grad)
    swapped = []
    try:
        for module in model.modules():
            for key, param in list(module._parameters.items()):
                if param is not None and id(param) in whole:
                    module._parameters[key] = whole[id(param)]
                    swapped.append((module, key, param))
        yield
    finally:
        for module, key, param in swapped:
            module._parameters[key] = param

"""The training loop: FP pre-training, QAT, and WinQ resets (fixed or spectrum-guided).

:func:`train` reads top to bottom like nanochat's ``base_train.py``: build everything, claim the
run folder, then one ``while`` loop whose body is

1. the evaluation and checkpoint blocks for the current step (``last_step`` forces both);
2. one optimizer update (:func:`optimizer_update`: gradient accumulation over micro-batches,
   DDP averaging over ranks, gradient clipping, AdamW at the cosine schedule's learning rate) —
   step N means "after N updates" in every log line and checkpoint name;
3. one log line;
4. WinQ, after the update: a scheduled reset, or the controller's turn (one call).

Everything random is drawn from the global torch RNG (noise injection) or from generators
seeded by ``--seed`` (data order), and every piece of state — weights, scales, AdamW moments,
RNG states of every rank, the data position, the controller — is in the checkpoint, so a run
resumed with ``--resume`` writes exactly the records an uninterrupted run writes (bit-identical
on CPU, wall-clock fields aside).

Non-finite loss or gradient norm: the run stops with exit code 1 and its last good checkpoint
intact (nothing is saved after the fault); with ``--skip-nonfinite`` the update is skipped —
gradients dropped, no optimizer update, the step not advanced — logged as
``{"step": N, "skipped": "..."}`` (N updates done so far), and attempted again with the next
batch; more than 20 consecutive skips stop the run. A checkpoint is never written with a
non-finite weight or optimizer moment. Skips are part of the run's state (the count is in the
checkpoint, and a resumed run drops the skip records a killed run logged after its last
checkpoint), so resuming stays bit-exact. Tests provoke such faults through
:func:`set_fault_hook`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from winq import distributed
from winq.cli import RuntimeFailure, UsageError
from winq.train.config import TrainConfig
from winq.train.controller import Controller, GuideRule, make_measure
from winq.train.latents import LatentTracker, latent_summary, reset_generator
from winq.train.schedule import CosineSchedule
from winq.train.state import (
    RunFolder,
    default_out,
    last_checkpoint,
    load_trainer_state,
    publish_checkpoint,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["Counters", "FaultHook", "RunResult", "evaluate", "set_fault_hook", "train"]

MAX_CONSECUTIVE_SKIPS = 20


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, the final step and the last held-out loss."""

    out: Path
    step: int
    eval_loss: float | None
    final_checkpoint: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Counters:
    """Progress that is not in the model or optimizer, saved in every checkpoint."""

    tokens: int = 0
    seconds: float = 0.0  # wall seconds of the run's earlier processes (resumes add up)
    skipped: int = 0  # updates skipped for a non-finite loss (--skip-nonfinite)
    scale_freeze_until: int = 0  # scales get lr 0 before this step (--reset-scales freeze)
    resets: int = 0


class FaultHook(Protocol):
    """Test-only faults, indexed by attempted update (0-based, skipped attempts included)."""

    def loss(self, attempt: int, loss: torch.Tensor) -> torch.Tensor: ...

    def gradients(self, attempt: int, model: nn.Module) -> None: ...


_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> None:
    """Install (or remove, with None) the fault hook the tests use to provoke bad updates."""
    global _fault_hook
    _fault_hook = hook


# --------------------------------------------------------------------------------------------
# pieces of a step


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on linear weight matrices only; scales in a group of their own."""
    from winq.nn import QuantLinear

    decay_ids, scale_ids = set(), set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            decay_ids.add(id(module.weight))
        if isinstance(module, QuantLinear):
            scale_ids.add(id(module.scale))
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, scales, other = [], [], []
    seen: set[int] = set()
    for param in model.parameters():  # deduplicated: tied weights appear once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in scale_ids:
            scales.append(param)
        elif id(param) in decay_ids and id(param) not in embeddings:
            decay.append(param)
        else:
            other.append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": other, "weight_decay": 0.0},
        {"name": "scales", "params": scales, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: list[torch.Tensor], device: torch.device, precision: str
) -> float:
    """Held-out loss: token-weighted mean next-token cross-entropy over ``batches`` (all ranks).

    The model runs in eval mode (no noise injection); its mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for input_ids in batches:
            input_ids = input_ids.to(device)
            with _autocast(device, precision):
                loss = model(input_ids=input_ids, labels=input_ids).loss
            tokens = input_ids.shape[0] * (input_ids.shape[1] - 1)
            total += loss.double() * tokens
            count += tokens
        # FSDP: every forward all-gathers on all ranks together, so a rank with fewer
        # held-out batches runs discarded forwards until the others are done
        for _ in range(_missing_forwards(model, len(batches), device)):
            with _autocast(device, precision):
                model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    finally:
        model.train(was_training)
    pair = torch.stack([total, count])
    if distributed._active():
        torch.distributed.all_reduce(pair)
    return float(pair[0] / pair[1]) if float(pair[1]) > 0 else math.nan


def _missing_forwards(model: nn.Module, mine: int, device: torch.device) -> int:
    """How many forwards this rank lacks against the rank with the most (0 unless sharded)."""
    from winq.sharding import is_sharded

    if not is_sharded(model):
        return 0
    most = torch.tensor([mine], device=device)
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    return int(most) - mine


@dataclass
class Parts:
    """What a run is made of once built (see :func:`build`)."""

    model: nn.Module  # what the forward runs: the DDP wrapper under torchrun
    raw_model: nn.Module  # the model itself: saved, reset, measured
    tokenizer: Any
    data: Any  # winq.train.inputs.TrainData
    optimizer: torch.optim.Optimizer
    schedule: CosineSchedule
    controller: Controller | None
    counters: Counters
    latents: LatentTracker | None = None  # QAT only: level codes of the last evaluation
    sharded: bool = False  # --fsdp: level codes are this rank's rows

    def trainer_state(self) -> dict[str, Any]:
        """Everything a checkpoint needs besides the model, optimizer and RNG (all ranks call
        it together: under FSDP the states holding level codes are gathered, one per rank)."""
        controller = self.controller.state_dict() if self.controller else None
        latents = self.latents.state_dict() if self.latents else None
        if self.sharded:
            controller = distributed.all_gather_object(controller)
            latents = distributed.all_gather_object(latents)
        return {
            "schedule": self.schedule.state_dict(),
            "data": self.data.state_dict(),
            "controller": controller,
            "counters": dataclasses.asdict(self.counters),
            "latents": latents,
        }


def build(config: TrainConfig, dist: distributed.Dist, run: RunFolder) -> Parts:
    """The model, data, optimizer, schedule and controller of a run, restored from the run's
    checkpoint when resuming (then with every rank's RNG state as saved)."""
    from winq.train import inputs

    torch.manual_seed(config.seed)
    state = None
    if run.checkpoint is not None:
        state = load_trainer_state(run.checkpoint[1])
        raw_model, tokenizer = inputs.load_model(config, str(run.checkpoint[1]))
    else:
        raw_model, tokenizer = inputs.build_model(config)
    raw_model.to(dist.device).train()
    if config.fsdp:  # before the optimizer: fully_shard replaces the parameters
        from winq.sharding import shard_model

        shard_model(raw_model)
    data = inputs.build_data(config, tokenizer, dist, config.micro(dist.world_size), raw_model)
    optimizer = torch.optim.AdamW(
        _param_groups(raw_model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=1e-8,
    )
    schedule = CosineSchedule(config.lr, config.steps, config.warmup, config.min_lr_ratio)
    controller = None
    if config.guide or config.guide_monitor:
        controller = _build_controller(config, data, schedule)
    counters = Counters()
    latents = None if config.pretrain else LatentTracker()
    if state is not None:
        if int(state.get("world_size", 1)) != dist.world_size:
            raise UsageError(
                f"{run.out} was trained with {state.get('world_size')} processes; resume it "
                f"with the same number (this is {dist.world_size})"
            )
        if config.fsdp:
            from winq.sharding import load_full_optimizer_state_dict

            load_full_optimizer_state_dict(raw_model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        data.load_state_dict(state["data"])
        if controller is not None and state.get("controller") is not None:
            controller.load_state_dict(_this_rank(state["controller"], config, dist))
        counters = Counters(**state["counters"])
        if latents is not None:
            latents.load_state_dict(_this_rank(state.get("latents"), config, dist))
        set_rng_state(state["rng"][dist.rank])
    else:
        torch.manual_seed(config.seed + dist.rank)  # noise draws differ between ranks
    model = raw_model
    if dist.enabled and not config.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = DistributedDataParallel(raw_model, device_ids=device_ids)
    return Parts(
        model, raw_model, tokenizer, data, optimizer, schedule, controller, counters, latents,
        sharded=config.fsdp,
    )  # fmt: skip


def _this_rank(saved: Any, config: TrainConfig, dist: distributed.Dist) -> Any:
    """This rank's entry of a state saved one per rank (``--fsdp``), else the state."""
    return saved[dist.rank] if config.fsdp and saved is not None else saved


def _build_controller(config: TrainConfig, data: Any, schedule: CosineSchedule) -> Controller:
    rule = GuideRule(
        kind=config.guide_rule,
        min_period=config.guide_min_period,
        max_period=config.guide_max_period or None,
        clip_growth=config.guide_clip_growth,
        flat_growth=config.guide_flat_growth,
        shrink=config.guide_shrink,
        lr_floor=config.guide_lr_floor,
        flip_budget=config.guide_flip_budget,
        max_return=config.guide_max_return,
        alpha_by=config.guide_alpha_by,
    )
    measure = None
    if config.guide_rule == "spectrum" or config.guide_monitor:
        import winq.analysis  # noqa: F401  (imported now, not inside the first measurement)

        measure = make_measure(
            data.probe_batches(config.guide_batch_size),
            config.guide_params,
            config.guide_steps,
            config.guide_eps,
            config.seed,
            config.guide_probes,
        )
    return Controller(
        rule,
        measure,
        alpha=None if config.alpha_auto else float(config.winq_alpha),
        alpha_candidates=config.guide_alpha_candidates,
        every=config.guide_every,
        monitor_only=config.guide_monitor,
        mode=config.reset_mode,
        schedule=schedule,
        generator=lambda step: reset_generator(config.seed, step),
    )


def optimizer_update(
    parts: Parts, config: TrainConfig, dist: distributed.Dist, step: int, metrics: Any, out: Path
) -> tuple[float, float]:
    """One optimizer update at the schedule's learning rate; returns ``(loss, grad_norm)``.

    An update whose loss or gradient norm is not finite is skipped and retried with the next
    batch under ``--skip-nonfinite`` (logged), and stops the run otherwise.

    Raises:
        RuntimeFailure: a non-finite update without ``--skip-nonfinite``, or too many in a row.
    """
    lr = parts.schedule(step)
    for group in parts.optimizer.param_groups:
        frozen = group["name"] == "scales" and step < parts.counters.scale_freeze_until
        group["lr"] = 0.0 if frozen else lr
    grad_accum = config.grad_accum(dist.world_size)
    for _ in range(MAX_CONSECUTIVE_SKIPS + 1):
        attempt = step + parts.counters.skipped
        loss_sum = torch.zeros((), device=dist.device)
        for micro_step in range(grad_accum):
            input_ids = parts.data.next_batch().to(dist.device)
            # FSDP reduce-scatters every micro-batch (its gradients accumulate sharded)
            sync = micro_step == grad_accum - 1 or not dist.enabled or config.fsdp
            with contextlib.nullcontext() if sync else parts.model.no_sync():
                with _autocast(dist.device, config.precision):
                    loss = parts.model(input_ids=input_ids, labels=input_ids).loss
                if _fault_hook is not None:
                    loss = _fault_hook.loss(attempt, loss)
                loss_sum += loss.detach()
                (loss / grad_accum).backward()
        if _fault_hook is not None:
            _fault_hook.gradients(attempt, parts.raw_model)
        train_loss = float(distributed.mean_across_ranks(loss_sum / grad_accum))
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(parts.raw_model.parameters(), config.grad_clip)
        )
        if math.isfinite(train_loss) and math.isfinite(grad_norm):
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
            return train_loss, grad_norm
        parts.optimizer.zero_grad(set_to_none=True)
        what = f"non-finite loss {train_loss}, gradient norm {grad_norm}"
        if not config.skip_nonfinite:
            good = last_checkpoint(out)
            where = f"; the last good checkpoint is {good[1]}" if good else ""
            raise RuntimeFailure(
                f"{what} at update {step + 1}{where}; nothing was saved after it "
                f"(--resume {out} --skip-nonfinite skips such updates)"
            )
        parts.counters.skipped += 1
        metrics.write(step, skipped=what)
    raise RuntimeFailure(
        f"{MAX_CONSECUTIVE_SKIPS + 1} non-finite updates in a row at update {step + 1}; stopping"
    )


@torch.no_grad()
def apply_reset(
    parts: Parts,
    config: TrainConfig,
    step: int,
    alpha: float,
    mode: str | None = None,
    reason: str = "schedule",
) -> dict[str, Any]:
    """A WinQ reset of every QuantLinear after update ``step``, then the scale and optimizer
    options; returns the ``reset`` record, with the latent grid measured before and after.

    ``mode`` (default ``--winq-reset-mode``) is one of :data:`winq.nn.RESET_MODES`; ``dither``
    draws from :func:`~winq.train.latents.reset_generator` of (``--seed``, ``step``), so a
    resumed run repeats it bit for bit. ``--reset-scales keep`` (the default, as in the WinQ
    reference code) leaves the scales alone; ``freeze`` gives them learning rate 0 for
    ``--scale-freeze-steps`` updates (their AdamW moments keep accumulating); ``reinit``
    re-initialises them from the reset weights with the quantizer's initial-scale rule
    (:func:`winq.quantizers.init_scale`) — which changes Q(W), unlike the reset itself — and
    clears their moments. ``--reset-optimizer`` clears the AdamW moments of every quantized
    layer's weight and scale, so bias correction starts again.

    Returns:
        ``{"alpha", "mode", "reason", "layers", "weights", "moved", "unclipped", "guarded",
        "before": {"grid_dispersion", "clipped_fraction", "flip_fraction", "flip_since"},
        "after": {"grid_dispersion", "clipped_fraction"}}`` — the counts of
        :class:`winq.nn.ResetStats`; ``flip_fraction`` is the share of levels changed since
        the last evaluation (absent before the first).
    """
    from winq.nn import local_shards, quant_layers, reset_with_stats_
    from winq.quantizers import init_scale

    mode = mode or config.reset_mode
    model = parts.raw_model
    before = latent_summary(model)
    if parts.latents is not None:
        before.update(parts.latents.flips_since_last(model))
    generator = reset_generator(config.seed, step) if mode == "dither" else None
    stats = reset_with_stats_(model, alpha, mode, generator)
    parts.counters.resets += 1
    if config.reset_scales == "freeze":
        parts.counters.scale_freeze_until = step + config.scale_freeze_steps
    if config.reset_scales == "reinit":
        with local_shards(model) as group:  # FSDP: each rank its rows (a row's scale is its own)
            for name, layer in quant_layers(model):
                if group is not None and layer.scale.shape[0] != layer.weight.shape[0]:
                    raise RuntimeFailure(
                        f"--reset-scales reinit with --fsdp needs a scale per row or group; "
                        f"{name} has one per tensor"
                    )
                shape = tuple(layer.scale.shape)
                layer.scale.copy_(init_scale(layer.weight, layer.quantizer, shape))
    for _, layer in quant_layers(model):
        if config.reset_scales == "reinit":
            parts.optimizer.state.pop(layer.scale, None)
        if config.reset_optimizer:
            parts.optimizer.state.pop(layer.weight, None)
            parts.optimizer.state.pop(layer.scale, None)
    return {"alpha": alpha, "mode": mode, "reason": reason, **stats.to_dict(),
            "before": before, "after": latent_summary(model)}  # fmt: skip


def latent_fields(parts: Parts, step: int) -> dict[str, Any]:
    """The mechanism's fields of the evaluation record at ``step`` (none for FP runs)."""
    return parts.latents.evaluate(parts.raw_model, step) if parts.latents is not None else {}


def _versions() -> dict[str, str]:
    import transformers

    import winq

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "winq": winq.__version__,
    }


# --------------------------------------------------------------------------------------------
# the loop


def train(
    config: TrainConfig,
    resume: str | Path | None = None,
    dist: distributed.Dist | None = None,
    cache_target: Path | None = None,
) -> RunResult:
    """Run (or resume) one training run described by a resolved ``config``.

    Args:
        config: the resolved configuration (``config.resolve()`` done; for ``--resume`` read
            from the run's ``config.json``).
        resume: the run folder to continue from its last complete checkpoint (from scratch,
            with the same config, if it has none yet).
        dist: the process's place in a ``torchrun`` job (default: :func:`distributed.setup`).
        cache_target: also publish the final checkpoint there (the cached FP model of a
            preset), atomically.

    Raises:
        UsageError: bad input found while setting up (nothing has been written then).
        RuntimeFailure: a non-finite loss, a lock held by another run, a corrupt checkpoint.
    """
    dist = dist if dist is not None else distributed.setup(config.device)
    default = default_out(config.preset, config.bits, config.winq_mode)
    run = RunFolder.choose(config.out, resume, config.overwrite, default)
    parts = build(config, dist, run)
    raw_model, controller, counters = parts.raw_model, parts.controller, parts.counters
    resolved = config.to_json(world_size=dist.world_size, grad_accum=config.grad_accum(dist.world_size),
                              micro_batch_size_resolved=config.micro(dist.world_size),
                              out=str(run.out), versions=_versions())  # fmt: skip
    total_steps, start_step = config.steps, run.start_step
    reset_steps = set(config.reset_steps())
    timers = dict.fromkeys(("train", "eval", "checkpoint", "controller"), 0.0)
    with run.claim(dist, config.overwrite, resolved) as metrics:
        run_start = time.perf_counter()
        progress = None
        if dist.is_main and config.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=total_steps, initial=start_step, desc=run.out.name,
                            dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        if start_step == 0 and controller is not None:
            t0 = time.perf_counter()
            metrics.write(0, **controller.begin(raw_model, sync=distributed.broadcast_object))
            timers["controller"] += time.perf_counter() - t0

        step, eval_loss = start_step, None
        while True:
            last_step = step == total_steps
            resumed_here = step == start_step and start_step > 0  # evaluated and saved before

            if not resumed_here and (last_step or step % config.eval_every == 0):
                t0 = time.perf_counter()
                eval_loss = evaluate(raw_model, parts.data.eval_batches, dist.device,
                                     config.precision)  # fmt: skip
                latents = latent_fields(parts, step)
                timers["eval"] += time.perf_counter() - t0
                metrics.write(step, eval_loss=eval_loss, eval_ppl=math.exp(min(eval_loss, 700.0)),
                              **latents)  # fmt: skip

            if step > start_step and (last_step or step % config.save_every == 0):
                t0 = time.perf_counter()
                counters_now = dataclasses.replace(
                    counters, seconds=counters.seconds + time.perf_counter() - run_start
                )
                state = {**parts.trainer_state(), "counters": dataclasses.asdict(counters_now)}
                save_checkpoint(run.out, step, raw_model, parts.tokenizer, state,
                                parts.optimizer, dist, config.keep_last)  # fmt: skip
                timers["checkpoint"] += time.perf_counter() - t0

            if last_step:
                break

            t0 = time.perf_counter()
            train_loss, grad_norm = optimizer_update(parts, config, dist, step, metrics, run.out)
            lr = parts.schedule(step)
            step += 1
            counters.tokens += config.batch_size * config.seq_len
            step_seconds = time.perf_counter() - t0
            timers["train"] += step_seconds

            tokens_per_second = config.batch_size * config.seq_len / step_seconds
            if step % config.log_every == 0 or step == total_steps:
                metrics.write(step, loss=train_loss, lr=lr, grad_norm=grad_norm,
                              tokens=counters.tokens,
                              seconds=counters.seconds + time.perf_counter() - run_start,
                              tokens_per_second=tokens_per_second)  # fmt: skip
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}",
                                     tok_s=f"{tokens_per_second:.0f}", refresh=False)  # fmt: skip

            # -- WinQ, after the update: a scheduled reset, or the controller's turn
            if step in reset_steps:
                metrics.write(
                    step, reset=apply_reset(parts, config, step, float(config.winq_alpha))
                )
            if controller is not None and controller.due(step, total_steps):
                t0 = time.perf_counter()
                records = controller.run(
                    raw_model, step, parts.schedule.fraction(step), step >= config.warmup,
                    reset=lambda alpha, at=step: apply_reset(parts, config, at, alpha, reason="guided"),
                    sync=distributed.broadcast_object,
                )  # fmt: skip
                for record in records:
                    metrics.write(step, **record)
                timers["controller"] += time.perf_counter() - t0

        if progress is not None:
            progress.close()
        wall = time.perf_counter() - run_start
        summary = {
            "seconds": counters.seconds + wall,
            "this_process_seconds": wall,
            **{f"{name}_seconds": seconds for name, seconds in timers.items()},
            # controller time over the time spent in optimizer updates (this process)
            "controller_overhead": timers["controller"] / timers["train"]
            if timers["train"]
            else None,
            "controller_measurements": controller.measurements if controller else 0,
            "resets": counters.resets,
            "skipped_updates": counters.skipped,
            "final_eval_loss": eval_loss,
        }
        if start_step < total_steps:
            metrics.write(total_steps, summary=summary)
        final = last_checkpoint(run.out)
        if cache_target is not None and dist.is_main and final is not None:
            publish_checkpoint(final[1], cache_target)
        distributed.barrier()
    return RunResult(run.out, step, eval_loss, final[1] if final else None, summary)

"""The training loop: FP pre-training, QAT, and WinQ resets (fixed or spectrum-guided).

One function, :func:`train`, read top to bottom like nanochat's ``base_train.py``: set-up,
then one ``while`` loop whose body is

1. evaluation and checkpoint blocks for the current step (``last_step`` forces both);
2. one optimizer update (gradient accumulation over micro-batches, DDP averaging over ranks,
   gradient clipping, AdamW with the cosine schedule's learning rate) — step N means "after N
   updates" in every log line and checkpoint name;
3. one log line;
4. WinQ, after the update: a scheduled reset, or a controller measurement and its decision.

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
non-finite weight or optimizer moment (the run stops instead). Skips are part of the run's
state (the count is in the checkpoint, and a resumed run drops the skip records a killed run
logged after its last checkpoint), so resuming stays bit-exact.

Fault injection for tests: the environment variable ``WINQ_TRAIN_FAULT`` is a comma-separated
list of attempted-update indices (0-based, counted over attempts, skipped ones included), each
optionally followed by ``:nan`` (the default: the loss times NaN), ``:inf`` (the loss times
inf) or ``:grad`` (a finite loss, but one gradient entry set to NaN after the backward pass).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from winq import distributed
from winq.cli import RuntimeFailure, UsageError
from winq.io import FileLock, LockedError, atomic_write_json
from winq.train.config import TrainConfig
from winq.train.controller import Controller, GuideRule, make_measure
from winq.train.metrics import MetricsLog, truncate_after
from winq.train.schedule import CosineSchedule
from winq.train.state import (
    STATE_FILE,
    STATE_VERSION,
    checkpoint_dir,
    get_rng_state,
    last_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    set_final,
    set_rng_state,
)

__all__ = ["LOCK_FILE", "RunResult", "train"]

LOCK_FILE = ".lock"
MAX_CONSECUTIVE_SKIPS = 20


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, the final step and the last held-out loss."""

    out: Path
    step: int
    eval_loss: float | None
    final_checkpoint: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# set-up helpers


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on linear weight matrices only; scales in a group of their own."""
    from winq.nn import QuantLinear

    decay_ids = set()
    scale_ids = set()
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


FAULT_KINDS = ("nan", "inf", "grad")


def _fault_plan() -> dict[int, str]:
    """``WINQ_TRAIN_FAULT`` parsed: attempted-update index -> fault kind (see module docstring).

    Raises:
        RuntimeFailure: a malformed value.
    """
    text = os.environ.get("WINQ_TRAIN_FAULT", "").strip()
    plan: dict[int, str] = {}
    for item in text.split(",") if text else []:
        index, _, kind = item.strip().partition(":")
        kind = kind or "nan"
        if not index.strip().isdigit() or kind not in FAULT_KINDS:
            raise RuntimeFailure(
                f"WINQ_TRAIN_FAULT: expected INDEX[:{'|'.join(FAULT_KINDS)}], got {item!r}"
            )
        plan[int(index)] = kind
    return plan


@torch.no_grad()
def _poison_gradient(model: nn.Module) -> None:
    """Set one gradient entry to NaN (the ``:grad`` fault of ``WINQ_TRAIN_FAULT``)."""
    grad = next(p.grad for p in model.parameters() if p.grad is not None)
    grad.view(-1)[0] = float("nan")


def _nonfinite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The name of the first non-finite parameter or AdamW moment, or None if all are finite."""
    from winq.checkpoint import first_nonfinite

    bad = first_nonfinite(model)
    if bad is not None:
        return bad
    names = {id(p): n for n, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and not bool(torch.isfinite(value).all()):
                return f"AdamW {key} of {names.get(id(param), 'a parameter')}"
    return None


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
    finally:
        model.train(was_training)
    pair = torch.stack([total, count])
    if distributed._active():
        torch.distributed.all_reduce(pair)
    return float(pair[0] / pair[1]) if float(pair[1]) > 0 else math.nan


# --------------------------------------------------------------------------------------------
# run folder


def default_out(config: TrainConfig) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    bits = "fp" if config.pretrain else f"w{config.bits:g}"
    return Path("runs") / f"{config.preset}-{bits}-{config.winq_mode}-{stamp}"


def _run_is_empty(out: Path) -> bool:
    return not out.exists() or all(p.name == LOCK_FILE for p in out.iterdir())


def _remove_leftovers(out: Path) -> None:
    """Temporary files and folders of writes a kill interrupted (``.name.XXXX.tmp``, and
    ``.name.old.*`` of a replaced folder)."""
    for folder in (out, out / "checkpoints"):
        if not folder.is_dir():
            continue
        for leftover in [*folder.glob(".*.tmp"), *folder.glob(".*.old.*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _clear_run(out: Path) -> None:
    for child in out.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# --------------------------------------------------------------------------------------------
# WinQ at a reset


@torch.no_grad()
def _apply_reset(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    alpha: float,
    counters: Counters,
) -> int:
    """``W <- αW + (1-α)Q(W)`` on every QuantLinear, then the scale and optimizer options.

    ``--reset-scales keep`` (the default, as in the reference code) leaves the scales alone;
    ``freeze`` gives them learning rate 0 for ``--scale-freeze-steps`` updates (their AdamW
    moments keep accumulating); ``reinit`` re-initialises them from the reset weights with
    the rules of DESIGN.md — which changes Q(W), unlike the reset itself — and clears their
    moments. ``--reset-optimizer`` clears the AdamW moments of every quantized layer's weight
    and scale, so bias correction starts again.

    Returns:
        The number of layers reset.
    """
    from winq.nn import quant_layers, reset_
    from winq.quantizers import init_scale

    layers = reset_(model, alpha)
    counters.resets += 1
    if config.reset_scales == "freeze":
        counters.scale_freeze_until = step + config.scale_freeze_steps
    for _, layer in quant_layers(model):
        if config.reset_scales == "reinit":
            layer.scale.copy_(init_scale(layer.weight, layer.quantizer, tuple(layer.scale.shape)))
            optimizer.state.pop(layer.scale, None)
        if config.reset_optimizer:
            optimizer.state.pop(layer.weight, None)
            optimizer.state.pop(layer.scale, None)
    return layers


@dataclass
class Counters:
    """Progress that is not in the model or optimizer, saved in every checkpoint."""

    tokens: int = 0
    seconds: float = 0.0  # wall seconds of the run's earlier processes (resumes add up)
    skipped: int = 0  # updates skipped for a non-finite loss (--skip-nonfinite)
    scale_freeze_until: int = 0  # scales get lr 0 before this step (--reset-scales freeze)
    resets: int = 0


def _versions() -> dict[str, str]:
    import transformers

    import winq

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "winq": winq.__version__,
    }


def train(
    config: TrainConfig,
    resume: str | os.PathLike | None = None,
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

    Returns:
        A :class:`RunResult`.

    Raises:
        UsageError: bad input found while setting up (nothing has been written then).
        RuntimeFailure: a non-finite loss, a lock held by another run, a corrupt checkpoint.
    """
    from winq.train import inputs

    dist = dist if dist is not None else distributed.setup(config.device)
    device, is_main = dist.device, dist.is_main
    grad_accum = config.grad_accum(dist.world_size)
    micro = config.micro(dist.world_size)
    total_steps = config.steps
    tokens_per_step = config.batch_size * config.seq_len

    # -- the run folder: decided and checked before anything is built ------------------------
    if resume is not None:
        out = Path(resume)
        found = last_checkpoint(out)
    else:
        out = Path(config.out or distributed.broadcast_object(str(default_out(config))))
        found = None
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, expected a folder")
        if not config.overwrite and not _run_is_empty(out):
            raise UsageError(f"--out {out} is not empty; pass --resume {out} or --overwrite")

    # -- model, tokenizer, data --------------------------------------------------------------
    torch.manual_seed(config.seed)
    if found is not None:
        start_step, checkpoint = found
        state = load_trainer_state(checkpoint)
        raw_model, tokenizer = inputs.load_model(config, str(checkpoint))
    else:
        start_step, state = 0, None
        raw_model, tokenizer = inputs.build_model(config)
    raw_model.to(device).train()
    data = inputs.build_data(config, tokenizer, dist, micro, raw_model)

    # -- optimizer, schedule, WinQ -------------------------------------------------------------
    optimizer = torch.optim.AdamW(
        _param_groups(raw_model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=1e-8,
    )
    schedule = CosineSchedule(config.lr, total_steps, config.warmup, config.min_lr_ratio)
    reset_steps = set(config.reset_steps())
    controller = None
    if config.guide or config.guide_monitor:
        import winq.analysis  # noqa: F401  (imported now, not inside the first measurement)

        controller = Controller(
            GuideRule(
                min_period=config.guide_min_period,
                max_period=config.guide_max_period or None,
                clip_growth=config.guide_clip_growth,
                flat_growth=config.guide_flat_growth,
                shrink=config.guide_shrink,
                lr_floor=config.guide_lr_floor,
                alpha_by=config.guide_alpha_by,
            ),
            make_measure(
                data.probe_batches(config.guide_batch_size),
                config.guide_params,
                config.guide_steps,
                config.guide_eps,
                config.seed,
            ),
            alpha=None if config.alpha_auto else float(config.winq_alpha),
            alpha_candidates=config.guide_alpha_candidates,
        )

    counters = Counters()
    if state is not None:
        if int(state.get("world_size", 1)) != dist.world_size:
            raise UsageError(
                f"{out} was trained with {state.get('world_size')} processes; resume it with "
                f"the same number (this is {dist.world_size})"
            )
        optimizer.load_state_dict(state["optimizer"])
        data.load_state_dict(state["data"])
        if controller is not None and state.get("controller") is not None:
            controller.load_state_dict(state["controller"])
        counters = Counters(**state["counters"])
        set_rng_state(state["rng"][dist.rank])
    else:
        torch.manual_seed(config.seed + dist.rank)  # noise draws differ between ranks

    model = raw_model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # -- claim the run folder: rank 0 writes, a lock keeps a second run out ----------------
    lock = None
    claimed = True
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(out / LOCK_FILE, blocking=False)
        try:
            lock.acquire()
        except LockedError:
            lock, claimed = None, False
    if not distributed.broadcast_object(claimed):
        raise RuntimeFailure(f"{out} is in use by another winq-train run (lock {out / LOCK_FILE})")
    metrics = MetricsLog(out / "metrics.jsonl", enabled=is_main)
    try:
        if is_main:
            if resume is None:
                if not _run_is_empty(out):
                    if not config.overwrite:  # someone wrote here since the check above
                        raise UsageError(f"--out {out} is not empty; pass --resume or --overwrite")
                    _clear_run(out)
                atomic_write_json(
                    out / "config.json",
                    config.to_json(
                        world_size=dist.world_size,
                        grad_accum=grad_accum,
                        micro_batch_size_resolved=micro,
                        out=str(out),
                        versions=_versions(),
                    ),
                )
            else:  # drop what a killed run logged or half-wrote after its last checkpoint
                # (skips logged at the checkpoint's own step came after it was written)
                truncate_after(
                    out / "metrics.jsonl", start_step if found else -1, drop_at_step=("skipped",)
                )
                _remove_leftovers(out)
        distributed.barrier()

        # -- the loop ------------------------------------------------------------------------
        faults = _fault_plan()
        attempts = start_step + counters.skipped
        consecutive_skips = 0
        eval_loss: float | None = None
        timers = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "controller": 0.0}
        run_start = time.perf_counter()
        progress = None
        if is_main and config.progress:
            from tqdm.auto import tqdm

            progress = tqdm(
                total=total_steps, initial=start_step, desc=out.name, dynamic_ncols=True,
                file=sys.stderr,
            )  # fmt: skip

        if start_step == 0 and controller is not None:
            # the reference later measurements are compared with: the model QAT starts from
            diagnostics = distributed.broadcast_object(controller.initial(raw_model))
            controller.reference = diagnostics
            timers["controller"] += diagnostics["seconds"]
            metrics.write(0, diagnostics=diagnostics)

        step = start_step
        while True:
            last_step = step == total_steps
            resumed_here = step == start_step and start_step > 0  # evaluated and saved before

            # -- held-out evaluation ---------------------------------------------------------
            if not resumed_here and (last_step or step % config.eval_every == 0):
                t0 = time.perf_counter()
                eval_loss = evaluate(raw_model, data.eval_batches, device, config.precision)
                timers["eval"] += time.perf_counter() - t0
                metrics.write(step, eval_loss=eval_loss, eval_ppl=math.exp(min(eval_loss, 700.0)))

            # -- checkpoint ------------------------------------------------------------------
            if step > start_step and (last_step or step % config.save_every == 0):
                t0 = time.perf_counter()
                seconds = counters.seconds + time.perf_counter() - run_start
                _save(config, dist, out, raw_model, tokenizer, optimizer, schedule, data,
                      controller, step, counters, seconds)  # fmt: skip
                timers["checkpoint"] += time.perf_counter() - t0

            if last_step:
                break

            # -- one optimizer update (attempted again with the next batch after a skip) -------
            t0 = time.perf_counter()
            lr = schedule(step)
            for group in optimizer.param_groups:
                frozen = group["name"] == "scales" and step < counters.scale_freeze_until
                group["lr"] = 0.0 if frozen else lr
            while True:
                fault = faults.get(attempts)
                loss_sum = torch.zeros((), device=device)
                for micro_step in range(grad_accum):
                    input_ids = data.next_batch().to(device)
                    sync = micro_step == grad_accum - 1
                    with contextlib.nullcontext() if sync or not dist.enabled else model.no_sync():
                        with _autocast(device, config.precision):
                            loss = model(input_ids=input_ids, labels=input_ids).loss
                        if fault in ("nan", "inf"):
                            loss = loss * float(fault)
                        loss_sum += loss.detach()
                        (loss / grad_accum).backward()
                if fault == "grad":
                    _poison_gradient(raw_model)
                attempts += 1
                train_loss = float(distributed.mean_across_ranks(loss_sum / grad_accum))
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip)
                )
                if math.isfinite(train_loss) and math.isfinite(grad_norm):
                    break
                optimizer.zero_grad(set_to_none=True)
                what = f"non-finite loss {train_loss}, gradient norm {grad_norm}"
                if not config.skip_nonfinite:
                    good = last_checkpoint(out)
                    where = f"; the last good checkpoint is {good[1]}" if good else ""
                    raise RuntimeFailure(
                        f"{what} at update {step + 1}{where}; nothing was saved after it "
                        f"(--resume {out} --skip-nonfinite skips such updates)"
                    )
                counters.skipped += 1
                consecutive_skips += 1
                metrics.write(step, skipped=what)
                if consecutive_skips > MAX_CONSECUTIVE_SKIPS:
                    raise RuntimeFailure(
                        f"{consecutive_skips} non-finite updates in a row at update {step + 1}; "
                        "stopping"
                    )
            consecutive_skips = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            counters.tokens += tokens_per_step
            step_seconds = time.perf_counter() - t0
            timers["train"] += step_seconds

            # -- log -------------------------------------------------------------------------
            tokens_per_second = tokens_per_step / step_seconds if step_seconds > 0 else None
            if step % config.log_every == 0 or step == total_steps:
                metrics.write(
                    step,
                    loss=train_loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens=counters.tokens,
                    seconds=counters.seconds + time.perf_counter() - run_start,
                    tokens_per_second=tokens_per_second,
                )
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{train_loss:.3f}", lr=f"{lr:.2e}",
                    tok_s=f"{tokens_per_second or 0:.0f}", refresh=False,
                )  # fmt: skip

            # -- WinQ, after the update: a scheduled reset, or the controller's decision -----
            if step in reset_steps:
                alpha = float(config.winq_alpha)
                layers = _apply_reset(raw_model, optimizer, config, step, alpha, counters)
                metrics.write(step, reset={"alpha": alpha, "reason": "schedule", "layers": layers})
            if controller is not None and step % config.guide_every == 0 and step < total_steps:
                t1 = time.perf_counter()
                if config.guide_monitor:
                    diagnostics = distributed.broadcast_object(controller.measure_now(raw_model))
                    metrics.write(step, diagnostics=diagnostics)
                else:
                    diagnostics, decision, alpha, candidates = controller.step(
                        raw_model,
                        step,
                        schedule.fraction(step),
                        step >= config.warmup,
                        sync=distributed.broadcast_object,
                    )
                    if diagnostics is not None:
                        metrics.write(step, diagnostics=diagnostics)
                        guide = {"decision": decision.decision, "reason": decision.reason}
                        if decision.decision == "reset":
                            guide["alpha"] = alpha
                            guide["candidates"] = {
                                f"{a:g}": c.get("near_zero_mass") for a, c in candidates.items()
                            }
                        metrics.write(step, guide=guide)
                        if decision.decision == "reset":
                            layers = _apply_reset(
                                raw_model, optimizer, config, step, alpha, counters
                            )
                            controller.after_reset(step, candidates[alpha])
                            metrics.write(
                                step, reset={"alpha": alpha, "reason": "guided", "layers": layers}
                            )
                    # every rank keeps rank 0's controller state, so later decisions agree
                    controller.load_state_dict(
                        distributed.broadcast_object(controller.state_dict())
                    )
                timers["controller"] += time.perf_counter() - t1

        if progress is not None:
            progress.close()

        # -- summary: the run's last metrics line ----------------------------------------------
        wall = time.perf_counter() - run_start
        summary = {
            "seconds": counters.seconds + wall,
            "this_process_seconds": wall,
            "train_seconds": timers["train"],
            "eval_seconds": timers["eval"],
            "checkpoint_seconds": timers["checkpoint"],
            "controller_seconds": timers["controller"],
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
        final = last_checkpoint(out)
        if cache_target is not None and is_main and final is not None:
            publish_checkpoint(final[1], cache_target)
        distributed.barrier()
    finally:
        metrics.close()
        if lock is not None:
            lock.release()
    return RunResult(out, step, eval_loss, final[1] if final else None, summary)


def _save(
    config: TrainConfig,
    dist: distributed.Dist,
    out: Path,
    model: nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    schedule: CosineSchedule,
    data: Any,
    controller: Controller | None,
    step: int,
    counters: Counters,
    seconds: float,
) -> Path:
    """Write ``checkpoints/step_NNNNNN`` (model + trainer state) atomically; rank 0 only."""
    import winq

    # every rank holds the same weights, so every rank refuses alike (no rank left waiting)
    bad = _nonfinite_state(model, optimizer)
    if bad is not None:
        good = last_checkpoint(out)
        where = f"; the last good checkpoint is {good[1]}" if good else ""
        raise RuntimeFailure(f"non-finite {bad} at step {step}; checkpoint not written{where}")
    rng = distributed.all_gather_object(get_rng_state())  # every rank's, in rank order
    folder = checkpoint_dir(out, step)
    if dist.is_main:
        saved = dataclasses.asdict(counters)
        saved["seconds"] = seconds
        state = {
            "version": STATE_VERSION,
            "step": step,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng,
            "data": data.state_dict(),
            "controller": controller.state_dict() if controller is not None else None,
            "counters": saved,
            "world_size": dist.world_size,
        }

        def write_state(tmp: Path) -> None:
            torch.save(state, tmp / STATE_FILE)

        winq.save(model, folder, tokenizer, extra=write_state)
        set_final(out, step)
        prune_checkpoints(out, config.keep_last)
    distributed.barrier()
    return folder


def publish_checkpoint(source: Path, target: Path) -> Path:
    """Copy a checkpoint folder (without its trainer state) to ``target``, atomically."""
    from winq.io import atomic_dir

    with atomic_dir(target) as tmp:
        for item in source.iterdir():
            if item.name == STATE_FILE:
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    return target

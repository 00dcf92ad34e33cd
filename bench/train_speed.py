"""What does a training step cost, and what do WinQ's resets and the guided controller add?

For each preset (the embedded ``tiny`` and ``small`` Llama models, at the preset's QAT batch and
sequence length), one training step — forward, backward, gradient clipping, AdamW update — is
timed for the FP model and for QAT (every linear layer but ``lm_head`` a ``QuantLinear``),
without and with WinQ noise injection (σ = 1e-3) and 8-bit activations. Each variant runs
``--warmup`` untimed steps, then ``--steps`` timed ones, variants interleaved round-robin so
that a slow spell of a shared machine hits them all alike; medians are reported.

Then, on the QAT model and in the same process:

* **reset**: one ``winq.reset_(model, 0.2)`` (every layer's ``W <- αW + (1-α)Q(W)``);
* **controller**: one measurement of the guided controller at the trainer's defaults
  (``make_measure``: clipped fraction + ``--guide-steps`` Lanczos steps with full
  reorthogonalisation on ``--guide-batch-size`` sequences), and one ``--winq-alpha auto``
  decision's trial resets (one measurement per candidate α);
* **overhead at the defaults, worst case**: the controller's time over the optimizer updates'
  time for a guided run of the preset's default length ``T``, if every measurement the rule
  allows triggered a reset with ``auto`` α (measurements every ``T/10`` updates, none within
  the minimum period ``T/8`` of a reset, none after the first refusal once the learning rate
  is below a quarter of its peak). A run that resets less measures less often after the
  minimum period but tries no candidates; ``bench/winq_speedup.py`` reports the measured
  figure from each guided run's summary.

One line per comparison, ratio first::

    python bench/train_speed.py                         # tiny and small, 2-bit, 1 thread
    python bench/train_speed.py --presets tiny --bits 1.58 --steps 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

VARIANTS = (
    ("FP", None),
    ("QAT", {}),
    ("QAT + noise", {"noise_sigma": 1e-3}),
    ("QAT + a8", {"a_bits": 8}),
    ("QAT + noise + a8", {"noise_sigma": 1e-3, "a_bits": 8}),
)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build(preset: str, bits, settings, seed: int):
    import torch

    import winq
    from winq import embedded

    model = embedded.build_model(preset, seed=seed)
    if settings is not None:
        winq.quantize_(model, winq.QuantConfig(bits=bits, **settings))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, optimizer


def step(model, optimizer, batch) -> float:
    import torch

    start = time.perf_counter()
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def latent_costs(model, repeats: int) -> dict[str, float]:
    """Seconds of the latent grid's exact statistics: one evaluation's fields (flip fraction,
    dispersion, clipped fraction, per layer), one latent-rule reading, and a reset per mode."""
    import torch

    from winq.nn import RESET_MODES, reset_
    from winq.train.controller import Controller, GuideRule
    from winq.train.latents import LatentTracker, reset_generator
    from winq.train.schedule import CosineSchedule

    tracker = LatentTracker()
    tracker.evaluate(model, 0)
    controller = Controller(GuideRule(), None, schedule=CosineSchedule(1e-3, 1000, 50))
    controller.read_latents(model, 0)
    costs = {
        "evaluation fields": timed(lambda: tracker.evaluate(model, 10), repeats),
        "latent-rule reading": timed(lambda: controller.read_latents(model, 10), repeats),
    }
    for mode in RESET_MODES:
        with torch.no_grad():
            saved = [layer.weight.clone() for _, layer in winq_layers(model)]
        costs[f"reset ({mode})"] = timed(
            lambda mode=mode: reset_(model, 0.2, mode, reset_generator(0, 1)), repeats
        )
        with torch.no_grad():
            for (_, layer), weight in zip(winq_layers(model), saved):
                layer.weight.copy_(weight)
    return costs


def winq_layers(model):
    import winq

    return list(winq.quant_layers(model))


def controller_costs(model, batch, repeats: int) -> tuple[float, float, int, object]:
    """Seconds of one spectrum-rule measurement and of one auto-α decision's trials, at the
    defaults of ``--guide-rule spectrum``."""
    import winq
    from winq.train.config import DEFAULT_ALPHA_CANDIDATES, TrainConfig
    from winq.train.controller import Controller, GuideRule, make_measure

    defaults = TrainConfig(bits=2, guide=True, guide_rule="spectrum", winq_alpha="auto")
    probe = [{"input_ids": batch[: defaults.guide_batch_size]}]
    measure = make_measure(probe, defaults.guide_params, defaults.guide_steps, defaults.guide_eps)
    controller = Controller(GuideRule(kind="spectrum"), measure, None, DEFAULT_ALPHA_CANDIDATES)
    # move the latents off the grid as training would, so trial resets have work to do
    import torch

    with torch.no_grad():
        for _, layer in winq.quant_layers(model):
            layer.weight.add_(0.2 * layer.scale * torch.randn_like(layer.weight))
    controller.measure(model)  # untimed: imports, first graph
    one = timed(lambda: controller.measure(model), repeats)
    trials = timed(lambda: controller.trials(model), 1)
    return one, trials, len(DEFAULT_ALPHA_CANDIDATES), defaults


def worst_case_schedule(preset: str) -> tuple[int, int]:
    """(measurements, resets) of a guided run at the defaults if every measurement the rule
    allows triggers a reset: the controller measures at step 0, then every ``guide_every``
    steps once ``min_period`` steps have passed since the last reset, resets until the
    learning rate falls below ``lr_floor`` of its peak (after warm-up), and stops measuring at
    the first refusal."""
    from winq.train.config import TrainConfig
    from winq.train.controller import GuideRule
    from winq.train.schedule import CosineSchedule

    cfg = TrainConfig(
        preset=preset, bits=2, guide=True, guide_rule="spectrum", winq_alpha="auto"
    ).resolve()
    schedule = CosineSchedule(cfg.lr, cfg.steps, cfg.warmup, cfg.min_lr_ratio)
    rule = GuideRule(min_period=cfg.guide_min_period, lr_floor=cfg.guide_lr_floor)
    measurements, resets, last = 1, 0, 0
    for step in range(cfg.guide_every, cfg.steps, cfg.guide_every):
        if step - last < rule.min_period:
            continue
        measurements += 1
        if step >= cfg.warmup and schedule.fraction(step) < rule.lr_floor:
            break  # refused: the controller stops measuring
        resets, last = resets + 1, step
    return measurements, resets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--bits", default="2")
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, help="default: the preset's QAT batch")
    p.add_argument("--seq-len", type=int, help="default: the preset's")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md)")
    p.add_argument("--repeats", type=int, default=3, help="controller measurements timed")
    args = p.parse_args()

    import torch

    from winq import embedded
    from winq.nn import reset_

    torch.set_num_threads(args.threads)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(f"# train_speed: {args.bits}-bit QAT vs FP; {machine}; load {load_average()}")
    for preset in args.presets:
        defaults = embedded.training_defaults(preset, "qat")
        batch_size = args.batch_size or defaults["batch_size"]
        seq_len = args.seq_len or defaults["seq_len"]
        generator = torch.Generator().manual_seed(0)
        models = {name: build(preset, args.bits, s, 0) for name, s in VARIANTS}
        vocab = models["FP"][0].config.vocab_size
        batch = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
        times: dict[str, list[float]] = {name: [] for name in models}
        for i in range(args.warmup + args.steps):
            for name, (model, optimizer) in models.items():
                seconds = step(model, optimizer, batch)
                if i >= args.warmup:
                    times[name].append(seconds)
        fp = statistics.median(times["FP"])
        params = sum(p.numel() for p in models["FP"][0].parameters())
        shape = f"batch {batch_size}x{seq_len}"
        for name in models:
            median = statistics.median(times[name])
            print(
                f"{median / fp:.2f}x  {preset} {name:<17} step {median * 1e3:7.1f} ms vs FP "
                f"{fp * 1e3:7.1f} ms  ({params / 1e6:.2f}M params, {shape}, "
                f"{batch_size * seq_len / median:,.0f} tok/s)"
            )
        qat_step = statistics.median(times["QAT + noise"])  # WinQ runs inject noise
        model = models["QAT + noise"][0]
        reset = timed(lambda model=model: reset_(model, 0.2), 5)
        print(
            f"{reset / qat_step:.4f}x  {preset} one reset (alpha 0.2) {reset * 1e3:.2f} ms vs "
            f"QAT+noise step {qat_step * 1e3:.1f} ms"
        )
        latent = latent_costs(model, args.repeats)
        for name, seconds in latent.items():
            print(
                f"{seconds / qat_step:.4f}x  {preset} {name} {seconds * 1e3:.2f} ms vs "
                f"QAT+noise step {qat_step * 1e3:.1f} ms"
            )
        from winq.train.config import TrainConfig

        total = defaults["steps"]
        latent_cfg = TrainConfig(preset=preset, bits=2, guide=True).resolve()
        readings = 1 + total // latent_cfg.guide_every
        bound = (readings * latent["latent-rule reading"] + 3 * latent["reset (clipped)"]) / (
            total * qat_step
        )
        print(
            f"{bound:.2%}  {preset} latent-rule overhead at the defaults, worst case (T={total}: "
            f"{readings} readings, 3 clipped resets) / {total} QAT+noise steps"
        )
        one, trials, candidates, cfg = controller_costs(model, batch, args.repeats)
        print(
            f"{one / qat_step:.2f}x  {preset} one spectrum-rule measurement {one * 1e3:.0f} ms "
            f"({cfg.guide_steps} Lanczos steps, {cfg.guide_batch_size}x{seq_len} probe) vs "
            f"QAT+noise step {qat_step * 1e3:.1f} ms"
        )
        print(
            f"{trials / qat_step:.2f}x  {preset} one auto-alpha decision ({candidates} trial "
            f"resets + measurements) {trials * 1e3:.0f} ms vs QAT+noise step"
        )
        measurements, resets = worst_case_schedule(preset)
        bound = (measurements * one + resets * trials) / (total * qat_step)
        print(
            f"{bound:.1%}  {preset} spectrum-rule overhead at its defaults, worst case (T={total}: "
            f"{measurements} measurements, {resets} of them auto-alpha resets) / {total} "
            f"QAT+noise steps; target <= 10%"
        )
    print(f"# load at the end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

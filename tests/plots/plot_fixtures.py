"""Small spectrum folders and run folders, written by the library's own writers.

Spectra by :meth:`winq.analysis.Spectrum.save` (``spectrum.json`` + ``ritz.parquet`` +
``density.parquet``); runs by the trainer's writers: ``config.json`` from
:meth:`winq.train.config.TrainConfig.to_json` (written atomically, as the training loop does),
``metrics.jsonl`` by :class:`winq.runfiles.MetricsLog`, ``spectra/step_NNNNNN/`` by
``Spectrum.save``. Tests that need a hand-made ``config.json`` (empty, absent) still pass one.
Summaries are computed from the Ritz nodes with the documented formulas so every number is
self-consistent, and deliberately given awkward float values so that "copied exactly" is tested.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SIGMA = 5e-3
SAVED_EPS = 1e-3
GRID_POINTS = 400

# Speedup case, computed by hand: the baseline's final held-out loss is 2.0 (step 1000, first
# reached there); "fixed" first gets to <= 2.0 at step 400 -> speedup 1000 / 400 = 2.5;
# "guided" bottoms out at 2.05 -> not reached.
EVAL_STEPS = list(range(0, 1001, 100))
BASELINE_EVAL = [3.0, 2.8, 2.6, 2.45, 2.3, 2.2, 2.12, 2.08, 2.05, 2.02, 2.0]
FIXED_EVAL = [3.0, 2.5, 2.2, 2.1, 1.99, 1.97, 1.95, 1.94, 1.93, 1.92, 1.91]
GUIDED_EVAL = [3.0, 2.7, 2.5, 2.35, 2.25, 2.18, 2.12, 2.09, 2.07, 2.06, 2.05]
EXPECTED_FIXED_STEPS = 400
EXPECTED_FIXED_SPEEDUP = 2.5


def ritz_nodes(seed: int, scale: float, flat: float, probes: int = 6, steps: int = 48):
    """Ritz nodes and weights of a plausible Hessian: a few outliers, a bulk, a near-zero mass.

    Returns:
        ``(nodes, weights)`` each ``(probes, steps)``; each probe's weights sum to 1.
    """
    rng = np.random.default_rng(seed)
    nodes = np.empty((probes, steps))
    weights = np.empty((probes, steps))
    for p in range(probes):
        near_zero = round(flat * steps)
        bulk = steps - near_zero - 3
        theta = np.concatenate(
            [
                rng.normal(0.0, 3e-4, near_zero),
                rng.uniform(-0.08 * scale, 0.3 * scale, bulk),
                scale * np.array([0.55, 0.8, 1.0]) * (1 + 0.02 * rng.standard_normal(3)),
            ]
        )
        tau = rng.uniform(0.5, 1.5, steps)
        tau[:near_zero] *= 3.0
        tau[-3:] *= 0.05
        nodes[p] = np.sort(theta)
        weights[p] = (tau / tau.sum())[np.argsort(theta)]
    return nodes, weights


def density_on_grid(nodes, weights, sigma=SIGMA, points=GRID_POINTS):
    grid = np.linspace(nodes.min() - 5 * sigma, nodes.max() + 5 * sigma, points)
    z = (grid[:, None, None] - nodes[None]) / sigma  # (grid, probes, steps)
    kernel = np.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))
    return grid, (kernel * weights[None]).sum(axis=2).mean(axis=1)


def write_spectrum(
    folder: Path,
    *,
    bits,
    step,
    seed: int = 0,
    scale: float = 8.0,
    flat: float = 0.3,
    alpha=None,
    run=None,
    per_layer: bool = False,
    write_ritz: bool = True,
    write_density: bool = True,
    extra_metadata: dict | None = None,
) -> dict:
    """Write one spectrum folder with the library's own :meth:`Spectrum.save`; returns the
    ``spectrum.json`` document as written (``write_ritz``/``write_density`` False remove that
    file afterwards, as a user's damaged folder would lack it)."""
    from winq.analysis import Spectrum

    nodes, weights = ritz_nodes(seed, scale, flat)
    clipped = round(0.01 + 0.001 * seed + 1e-9 * seed, 12)
    metadata = {
        "checkpoint": f"runs/x/checkpoints/step_{step or 0:06d}",
        "bits": bits,
        "quantizer": "seq" if bits in (2, 1.58) else "lsq",
        "step": step,
        "run": run,
        "alpha": alpha,
        "params": "linear",
        "num_params": 123457,
        "probes": nodes.shape[0],
        "lanczos_steps": nodes.shape[1],
        "reorth": "none",
        "backend": "double_backward",
        "seed": seed,
        "batches": 2,
        "tokens": 2048,
        "wall_seconds": 1.25,
        "clipped_fraction": clipped,
        "unknown_future_key": {"nested": [1, 2]},
        **(extra_metadata or {}),
    }
    blocks = None
    if per_layer:
        blocks = {"layer.0": Spectrum(nodes * 0.1, weights, metadata={"num_params": 1234},
                                      eps=SAVED_EPS, sigma=SIGMA)}  # fmt: skip
    spectrum = Spectrum(nodes, weights, metadata=metadata, blocks=blocks,
                        top_eigenvalues=[float(nodes.max()), 7.1, 5.0],
                        trace=41.0 + seed / 7.0, trace_stderr=0.7, trace_method="hutch++",
                        eps=SAVED_EPS, sigma=SIGMA)  # fmt: skip
    spectrum.save(folder)
    if not write_ritz:
        (folder / "ritz.parquet").unlink()
    if not write_density:
        (folder / "density.parquet").unlink()
    return json.loads((folder / "spectrum.json").read_text())


def latent_grid(step: int, seed: int, resets=()) -> dict:
    """The latent-grid fields an evaluation at ``step`` logs (awkward floats; no flip fraction
    at the first evaluation): flips decay, dispersion falls and each reset spreads it again."""
    progress = step / EVAL_STEPS[-1]
    fields = {
        "grid_dispersion": 0.48 - 0.3 * progress + 0.1 * sum(r < step for r in resets) + seed / 7e3,
        "clipped_fraction": 0.02 + progress / 61 + seed / 300,
    }
    if step > EVAL_STEPS[0]:
        flips = 0.3 / (1 + step / 37) * (1 + seed / 7)
        fields.update(flip_fraction=flips, flip_since=step - 100)
    fields["latents"] = {name: {"model.layers.0.mlp.up_proj": value}
                         for name, value in fields.items() if name != "flip_since"}  # fmt: skip
    return fields


def write_run(
    folder: Path,
    *,
    bits,
    mode,
    eval_losses,
    resets=(),
    reset_reason="schedule",
    spectra_steps=(),
    seed: int = 0,
    diagnostics: bool = False,
    truncated_tail: bool = False,
    config: dict | None = None,
    latents: bool = False,
) -> None:
    """Write one run folder with training/eval metrics, resets and spectra at some steps
    (``metrics.jsonl`` by the trainer's :class:`MetricsLog`, spectra by ``Spectrum.save``);
    ``latents``: each evaluation also logs the latent grid (:func:`latent_grid`)."""
    folder.mkdir(parents=True, exist_ok=True)
    if config is None:  # the resolved configuration, as the training loop writes it
        from winq.train.config import TrainConfig

        config = TrainConfig(
            bits=bits,
            steps=EVAL_STEPS[-1],
            winq_resets=len(resets) if mode == "fixed" else 0,
            guide=mode == "guided",
        ).to_json(world_size=1)
    if config != "absent":
        from winq.io import atomic_write_json

        atomic_write_json(folder / "config.json", config)
    rng = np.random.default_rng(seed)
    lines = []
    eval_at = dict(zip(EVAL_STEPS, eval_losses))
    for step in range(0, EVAL_STEPS[-1] + 1, 10):
        # training loss tracks the held-out loss with noise
        known = [v for v in eval_losses[: step // 100 + 1] if v is not None]
        nearest = known[-1] if known else 3.0
        loss = float(nearest + 0.05 + 0.04 * rng.standard_normal())
        lines.append({"step": step, "loss": loss, "lr": 1e-3, "tokens": step * 2048})
        if eval_at.get(step) is not None:  # a separate line for the same step: readers merge
            line = {"step": step, "eval_loss": eval_at[step], "eval_ppl": 2.0, "new": 1}
            lines.append({**line, **(latent_grid(step, seed, resets) if latents else {})})
        if step in resets:
            reset = {"alpha": 0.2, "reason": reset_reason}
            if latents:  # the grid just before and after, nested: not an evaluation's fields
                reset["before"] = {
                    "grid_dispersion": 0.05,
                    "clipped_fraction": 0.03,
                    "flip_fraction": 0.01,
                    "flip_since": step // 100 * 100,
                }
                reset["after"] = {"grid_dispersion": 0.4, "clipped_fraction": 0.0}
            lines.append({"step": step, "reset": reset})
        if diagnostics and step % 250 == 0:
            lines.append(
                {
                    "step": step,
                    "diagnostics": {
                        "lambda_max": 8.0 - step / 200,
                        "lambda_min": -0.4 + step / 5000,
                        "near_zero_mass": 0.3 + step / 4000,
                        "negative_mass": 0.2 - step / 10000,
                        "clipped_fraction": 0.01,
                        "seconds": 0.5,
                    },
                }
            )
            lines.append({"step": step, "guide": {"decision": "wait", "reason": "test"}})
    from winq.runfiles import MetricsLog  # the trainer's own writer

    log = MetricsLog(folder / "metrics.jsonl")
    for line in lines:
        log.write(**line)
    log.close()
    if truncated_tail:
        with open(folder / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write('{"step": 1000, "loss": 2.')  # a writer killed mid-line
    (folder / "checkpoints").mkdir(exist_ok=True)
    for i, step in enumerate(spectra_steps):
        progress = step / EVAL_STEPS[-1]
        write_spectrum(
            folder / "spectra" / f"step_{step:06d}",
            bits=bits,
            step=step,
            seed=seed * 10 + i,
            scale=(8.0 if mode == "off" else 9.0) * (1 - 0.5 * progress) * bits / 2,
            flat=0.2 + 0.3 * progress,
        )


def build_study(root: Path) -> Path:
    """A miniature study: 2-bit baseline / fixed / guided, 1-bit baseline, a loose 3-bit
    spectrum, an α sweep at the 2-bit baseline's last checkpoint. The WinQ runs log the latent
    grid at their evaluations; the baselines do not (runs from before the fields existed).
    """
    runs = root / "runs"
    write_run(
        runs / "qat-2bit-baseline",
        bits=2,
        mode="off",
        eval_losses=BASELINE_EVAL,
        spectra_steps=(0, 500, 1000),
        seed=1,
    )
    write_run(
        runs / "qat-2bit-fixed",
        bits=2,
        mode="fixed",
        eval_losses=FIXED_EVAL,
        resets=(250, 500, 750),
        spectra_steps=(0, 500, 1000),
        seed=2,
        truncated_tail=True,
        latents=True,
    )
    write_run(
        runs / "qat-2bit-guided",
        bits=2,
        mode="guided",
        eval_losses=GUIDED_EVAL,
        resets=(300, 800),
        reset_reason="guided",
        diagnostics=True,
        seed=3,
        latents=True,
    )
    write_run(
        runs / "qat-1bit-baseline",
        bits=1,
        mode="off",
        eval_losses=[v + 0.4 for v in BASELINE_EVAL],
        spectra_steps=(0, 500, 1000),
        seed=4,
    )
    sweep = runs / "qat-2bit-baseline" / "spectra" / "alpha_sweep"
    for i, alpha in enumerate((0.0, 0.2, 0.4, 0.6, 0.8, 1.0)):
        write_spectrum(
            sweep / f"alpha_{alpha:.1f}",
            bits=2,
            step=1000,
            alpha=alpha,
            seed=100 + i,
            scale=4.0,
            flat=0.45 + 0.3 * (alpha - 0.3) ** 2,
        )
    write_spectrum(root / "loose" / "spectrum-3bit", bits=3, step=1000, seed=7, scale=6.0)
    return root

"""``winq-reproduce``: the WinQ paper's saddle-point findings, reproduced end to end.

One command runs the whole study on the embedded default (or on ``--init CKPT``)::

    winq-reproduce --preset tiny --out runs/study-tiny     # about 15 minutes on 2 CPU cores
    winq-reproduce --preset small --out runs/study-small   # about an hour
    winq-reproduce --out runs/study-tiny                   # again: resumes, or redraws

Stages, each skipped when its output is complete (so an interrupted study resumes where it
stopped; a training run killed half-way continues from its last checkpoint):

1. **FP model**: the preset's cached full-precision checkpoint, pre-trained first if missing
   (``--init CKPT`` uses another).
2. **QAT runs** in ``OUT/runs/w<bits>-<mode>``: at every bit width (default 1, 1.58, 2, 3) a
   baseline (ParetoQ-style QAT, no resets, no noise) and WinQ on a fixed schedule (3 resets,
   α = 0.2, noise σ = 1e-3: the settings of the WinQ reference code, facebookresearch/WinQ); at
   ``--sweep-bits`` also
   WinQ guided by the spectrum (``--guide --winq-alpha auto``). Identical data order, learning
   rate and length for all; checkpoints every quarter of the run.
3. **Spectra** in ``RUN/spectra/step_<N>``: SLQ of the Hessian w.r.t. every QuantLinear's latent
   weights on a fixed held-out batch, at step 0 (the FP model quantized, where QAT starts) and
   at every checkpoint for the ``--sweep-bits`` runs; at step 0 and the end for the others.
4. **α sweep** in ``OUT/alpha_sweep/alpha_<α>``: at the last checkpoint of the ``--sweep-bits``
   baseline, the spectrum after a trial reset ``W <- α·W + (1-α)·Q(W)`` for each α (our
   convention: α weights W, so α = 1 is no reset; the WinQ paper's sweep weights Q(W)).
5. **Figures** (``OUT/figures``, via :mod:`winq.plots`) and **REPORT.md**: for each finding —
   (a) near-zero concentration grows during QAT, (b) eigenvalue magnitudes shrink during QAT,
   (c) lower bit widths give smaller magnitudes, (d) resets raise the magnitudes, (e) WinQ
   reaches the baseline's loss in fewer steps, (f) how much of the near-zero mass is STE
   saturation (clipped latent weights) — whether this run reproduces it, with the numbers, all
   read back from the saved files.

Budget of the tiny preset (measured on 2 CPU cores, torch 2.13 CPU): 9 QAT runs of 240 updates
of 16 × 128 tokens (≈ 0.09 s each, ≈ 30 s per run with evaluations), 33 spectra of 4 probes ×
30 Lanczos steps on 8 × 128 held-out tokens (≈ 6 s each), the pre-training of the FP model
when it is not cached (600 updates, ≈ 2 min). ``--preset small`` doubles the run length and
uses the larger model. The sizes of both are the ``"study"`` rows of
:data:`winq.embedded.TRAINING_DEFAULTS`.

Every stage calls the libraries directly — :func:`winq.train.train` with a
:class:`~winq.train.TrainConfig`, :func:`winq.analysis.measure_spectrum`,
:func:`winq.plots.draw_all` — and reads run folders through :mod:`winq.runfiles`.

``OUT/study.json`` records the settings; rerunning with different ones is refused (a mixed
study would compare unlike things) unless ``--overwrite`` starts afresh. Bad input is one
line on stderr with exit code 2; a failure while running exits 1.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from winq import quadrature
from winq.cli import (
    ArgumentParser,
    UsageError,
    guarded_main,
    positive_float,
    positive_int,
)
from winq.embedded import PRESETS, scaled_warmup
from winq.quadrature import DEFAULT_SIGMA, DEFAULT_ZERO_EPS, Estimate, format_estimate

if TYPE_CHECKING:
    from winq.train import TrainConfig

__all__ = ["StudyConfig", "build_parser", "main", "run", "run_study", "write_report"]

PROG = "winq-reproduce"
STUDY_FILE = "study.json"
DEFAULT_BITS = ("1", "1.58", "2", "3")
DEFAULT_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_EVAL_TASKS = ("shakespeare",)  # winq.eval's offline benchmark of the embedded default
EVAL_METRICS = (  # (task, metric) quoted in REPORT.md
    ("shakespeare_nextline", "acc_mutual_info"),
    ("shakespeare_nextline", "acc"),
    ("shakespeare_ppl", "bits_per_byte"),
)
# the WinQ paper's conventions (winq.quadrature): near-zero = |λ| < 1.5e-3, kernel σ = 5e-3
ZERO_EPS = DEFAULT_ZERO_EPS
DENSITY_SIGMA = DEFAULT_SIGMA


def _preset_study(preset: str) -> dict[str, Any]:
    """The study's sizes for a preset (the ``"study"`` row of the preset table)."""
    from winq.embedded import training_defaults

    return training_defaults(preset, "study")


_TINY = _preset_study("tiny")


@dataclass
class StudyConfig:
    """Everything that decides the study's results (saved as ``study.json``).

    The per-preset sizes default to the tiny preset's ``"study"`` row of
    :data:`winq.embedded.TRAINING_DEFAULTS`; ``from_preset`` takes another preset's.
    """

    preset: str = "tiny"
    init: str | None = None
    bits: list[str] = field(default_factory=lambda: list(DEFAULT_BITS))
    sweep_bits: str = "2"
    guided: bool = True
    steps: int = _TINY["steps"]
    batch_size: int = _TINY["batch_size"]
    seq_len: int = _TINY["seq_len"]
    lr: float = _TINY["lr"]
    warmup: int = _TINY["warmup"]
    eval_every: int = _TINY["eval_every"]
    eval_batches: int = _TINY["eval_batches"]
    resets: int = 3
    alpha: float = 0.2
    noise_sigma: float = 1e-3
    probes: int = _TINY["probes"]
    lanczos_steps: int = _TINY["lanczos_steps"]
    spectrum_batches: int = _TINY["spectrum_batches"]
    spectrum_batch_size: int = _TINY["spectrum_batch_size"]
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    seed: int = 0
    eval_tasks: list[str] = field(default_factory=lambda: list(DEFAULT_EVAL_TASKS))
    eval_limit: int | None = None  # items per task (all)

    @classmethod
    def from_preset(cls, preset: str, **changes: Any) -> StudyConfig:
        """The preset's study sizes, then ``changes``."""
        return cls(preset=preset, **{**_preset_study(preset), **changes})

    @property
    def save_every(self) -> int:
        return max(1, self.steps // 4)

    def modes(self, bits: str) -> list[str]:
        return ["baseline", "fixed"] + (
            ["guided"] if self.guided and bits == self.sweep_bits else []
        )


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Reproduce the WinQ paper's saddle-point findings at small scale: FP model, "
        "baseline and WinQ QAT at several bit widths, spectra over training, an alpha sweep, "
        "figures and REPORT.md.",
    )
    p.add_argument("--preset", choices=tuple(PRESETS), default="tiny")
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/study-<preset>)")
    p.add_argument("--init", metavar="CKPT", help="FP checkpoint to start from (default: the "
                   "preset's cached one, pre-trained first if missing)")  # fmt: skip
    p.add_argument("--bits", nargs="+", metavar="B", help="bit widths (default 1 1.58 2 3)")
    p.add_argument("--sweep-bits", metavar="B", help="bit width of the guided run, the spectra "
                   "at every checkpoint and the alpha sweep (default 2)")  # fmt: skip
    p.add_argument("--no-guided", dest="guided", action="store_false", help="skip the guided run")
    p.add_argument("--steps", type=positive_int, help="QAT updates per run (preset default)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seq-len", type=positive_int)
    p.add_argument("--eval-every", type=positive_int)
    p.add_argument("--eval-batches", type=positive_int)
    p.add_argument("--probes", type=positive_int, help="SLQ probes per spectrum")
    p.add_argument("--lanczos-steps", type=positive_int, help="Lanczos steps per probe")
    p.add_argument("--spectrum-batches", type=positive_int)
    p.add_argument("--spectrum-batch-size", type=positive_int)
    p.add_argument("--alphas", help="comma-separated α values of the sweep in [0, 1]")
    p.add_argument("--resets", type=positive_int, default=3, help="resets of the fixed schedule")
    p.add_argument("--alpha", type=positive_float, default=0.2, help="α of the fixed schedule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tasks", metavar="TASKS", default=",".join(DEFAULT_EVAL_TASKS),
                   help="winq-eval tasks scored on the FP model and every run's final "
                   "checkpoint (comma-separated; default shakespeare; 'none' skips)")  # fmt: skip
    p.add_argument("--eval-limit", type=positive_int, metavar="N",
                   help="items per --eval-tasks task (default: all)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="discard an existing study in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _config_from_args(args) -> StudyConfig:
    from winq.config import parse_bits

    bits = args.bits or list(DEFAULT_BITS)
    canonical = []
    for text in bits:
        try:
            value = parse_bits(text)
        except ValueError as e:
            raise UsageError(f"--bits {text}: {e}") from None
        if value == 16:
            raise UsageError("--bits 16 is full precision: the study quantizes (1, 1.58, 2, 3, 4)")
        canonical.append(f"{value:g}")
    if len(set(canonical)) != len(canonical):
        raise UsageError(f"--bits lists a width twice: {' '.join(bits)}")
    sweep = args.sweep_bits or ("2" if "2" in canonical else canonical[0])
    try:
        sweep = f"{parse_bits(sweep):g}"
    except ValueError as e:
        raise UsageError(f"--sweep-bits {args.sweep_bits}: {e}") from None
    if sweep not in canonical:
        raise UsageError(f"--sweep-bits {sweep} is not among --bits {' '.join(canonical)}")
    alphas = list(DEFAULT_ALPHAS)
    if args.alphas is not None:
        try:
            alphas = sorted({float(a) for a in args.alphas.split(",") if a.strip()})
        except ValueError:
            raise UsageError(f"--alphas {args.alphas!r}: expected numbers in [0, 1]") from None
        if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
            raise UsageError(f"--alphas {args.alphas!r}: expected numbers in [0, 1]")
    if args.alpha > 1:
        raise UsageError(f"--alpha must be in (0, 1], got {args.alpha}")
    sizes = _preset_study(args.preset)
    given = {key: getattr(args, key) for key in sizes
             if getattr(args, key, None) is not None}  # fmt: skip
    from winq.eval import EvalError, load_tasks, split_tasks

    tasks = split_tasks(args.eval_tasks)
    if tasks == ["none"]:
        tasks = []
    elif tasks:
        try:
            load_tasks(tasks)
        except EvalError as e:
            raise UsageError(f"--eval-tasks: {e}") from None
    config = StudyConfig.from_preset(args.preset, init=args.init, bits=canonical,
                                     sweep_bits=sweep, guided=args.guided, alphas=alphas,
                                     resets=args.resets, alpha=args.alpha, seed=args.seed,
                                     eval_tasks=tasks, eval_limit=args.eval_limit,
                                     **given)  # fmt: skip
    if config.init is not None:
        config.init = str(Path(config.init).absolute())
    if args.steps is not None:  # the warm-up follows the run's length
        config.warmup = scaled_warmup(sizes, config.steps)
    if config.eval_every > config.steps:
        config.eval_every = config.steps
    return config


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"study-{config.preset}"
    if config.init is not None:
        from winq.checkpoint import check_checkpoint_arg

        check_checkpoint_arg(config.init, "--init")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    saved = out / STUDY_FILE
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        if not saved.is_file():
            raise UsageError(f"--out {str(out)!r} is a non-empty folder that is not a study; "
                             "choose another or pass --overwrite")  # fmt: skip
        try:
            previous = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"corrupt {saved}: {e}; pass --overwrite to start afresh") from None
        if previous != asdict(config):
            changed = sorted(k for k in asdict(config) if previous.get(k) != asdict(config)[k])
            raise UsageError(
                f"{saved} was made with other settings ({', '.join(changed)}); "
                "rerun with the same flags to resume, or pass --overwrite"
            )
    run_study(config, out, progress=args.progress, overwrite=args.overwrite)
    return 0


# --------------------------------------------------------------------------------------------
# the stages


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def run_dir(out: Path, bits: str, mode: str) -> Path:
    return out / "runs" / f"w{bits}-{mode}"


def qat_config(config: StudyConfig, init: Path, bits: str, mode: str, folder: Path,
               progress: bool) -> TrainConfig:  # fmt: skip
    """The resolved :class:`~winq.train.TrainConfig` of one QAT run of the study: the same
    data order, learning rate and length for every mode; checkpoints every quarter."""
    from winq.train import TrainConfig

    values: dict[str, Any] = {
        "init": str(init), "bits": bits, "steps": config.steps,
        "batch_size": config.batch_size, "seq_len": config.seq_len, "lr": config.lr,
        "warmup": config.warmup, "eval_every": config.eval_every,
        "eval_batches": config.eval_batches, "save_every": config.save_every,
        "seed": config.seed, "out": str(folder), "overwrite": True, "progress": progress,
    }  # fmt: skip
    if mode == "baseline":
        values.update(winq_resets=0, noise_sigma=0.0)
    elif mode == "fixed":
        values.update(winq_resets=config.resets, winq_alpha=config.alpha,
                      noise_sigma=config.noise_sigma)  # fmt: skip
    else:
        values.update(guide=True, winq_alpha="auto", noise_sigma=config.noise_sigma)
    try:
        return TrainConfig(**values).resolve()
    except ValueError as e:
        raise UsageError(str(e)) from None


def train_runs(config: StudyConfig, out: Path, init: Path, progress: bool) -> list[Path]:
    """Stage 2: every QAT run (finished ones skipped, interrupted ones resumed)."""
    from winq.runfiles import CONFIG_FILE, finished, last_checkpoint
    from winq.train import TrainConfig, train

    runs = []
    for bits in config.bits:
        for mode in config.modes(bits):
            folder = run_dir(out, bits, mode)
            runs.append(folder)
            if finished(folder):
                continue
            _say(f"QAT {bits}-bit {mode} -> {folder}")
            if (folder / CONFIG_FILE).is_file() and last_checkpoint(folder) is not None:
                saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
                resumed = TrainConfig.from_json(saved)
                resumed.progress = progress
                train(resumed, resume=folder)
            else:
                train(qat_config(config, init, bits, mode, folder, progress))
    return runs


def _spectrum_batches(config: StudyConfig, tokenizer) -> list[dict]:
    from winq.data import DataError, probe_batches

    try:
        return probe_batches(None, tokenizer, config.seq_len, config.spectrum_batches,
                             config.spectrum_batch_size)  # fmt: skip
    except DataError as e:
        raise UsageError(str(e)) from None


def _measure(model, batches, config: StudyConfig, progress: bool, metadata: dict):
    from winq.analysis.measure import measure_spectrum

    return measure_spectrum(model, batches, probes=config.probes, steps=config.lanczos_steps,
                            seed=config.seed, eps=ZERO_EPS, progress=progress,
                            metadata=metadata)  # fmt: skip


def spectra(config: StudyConfig, out: Path, init: Path, runs: list[Path], progress: bool) -> None:
    """Stage 3: spectra at step 0 and at the checkpoints (existing ones skipped)."""
    import winq
    from winq import embedded
    from winq.runfiles import checkpoints, spectrum_dir

    tokenizer = embedded.tokenizer() if config.init is None else None
    todo: list[tuple[Path, int, Path, str]] = []
    for folder in runs:
        bits, _ = folder.name[1:].split("-", 1)
        points = [(0, init)]
        saved = checkpoints(folder)
        if bits == config.sweep_bits:
            points += saved
        elif saved:
            points.append(saved[-1])
        for step, ckpt in points:
            target = spectrum_dir(folder, step)
            if not (target / "spectrum.json").is_file():
                todo.append((folder, step, ckpt, bits))
    if not todo:
        return
    _say(f"{len(todo)} spectra ({config.probes} probes x {config.lanczos_steps} Lanczos steps)")
    batches = None
    from tqdm.auto import tqdm

    for folder, step, ckpt, bits in tqdm(todo, desc="spectra", disable=not progress):
        model, own_tokenizer = winq.load(ckpt, bits=bits if step == 0 else None)
        if batches is None:
            tokenizer = tokenizer or own_tokenizer
            if tokenizer is None:
                raise UsageError(f"{ckpt} has no tokenizer")
            batches = _spectrum_batches(config, tokenizer)
        spectrum = _measure(model, batches, config, False, {
            "checkpoint": str(ckpt.absolute()), "step": step, "run": str(folder),
            "alpha": None, "mode": folder.name.split("-", 1)[1]})  # fmt: skip
        spectrum.save(spectrum_dir(folder, step))


def alpha_sweep(config: StudyConfig, out: Path, progress: bool) -> Path | None:
    """Stage 4: spectra after trial resets at the last checkpoint of the sweep baseline."""
    import winq
    from winq import embedded
    from winq.runfiles import checkpoints

    base = run_dir(out, config.sweep_bits, "baseline")
    saved = checkpoints(base)
    if not saved:
        return None
    step, ckpt = saved[-1]
    sweep = out / "alpha_sweep"
    todo = [a for a in config.alphas if not (sweep / f"alpha_{a:.2f}" / "spectrum.json").is_file()]
    if not todo:
        return sweep
    _say(f"alpha sweep at step {step} of {base.name}: {', '.join(f'{a:g}' for a in todo)}")
    from tqdm.auto import tqdm

    batches = None
    for alpha in tqdm(todo, desc="alpha sweep", disable=not progress):
        model, tokenizer = winq.load(ckpt)
        if batches is None:
            batches = _spectrum_batches(config, tokenizer or embedded.tokenizer())
        winq.reset_(model, alpha)
        spectrum = _measure(model, batches, config, False, {
            "checkpoint": str(ckpt.absolute()), "step": step, "run": str(base),
            "alpha": alpha, "alpha_convention": "W <- alpha*W + (1-alpha)*Q(W)",
            "mode": "baseline"})  # fmt: skip
        spectrum.save(sweep / f"alpha_{alpha:.2f}")
    return sweep


def eval_dir(out: Path, name: str) -> Path:
    return out / "eval" / name


def zero_shot(config: StudyConfig, out: Path, init: Path, runs: list[Path], progress: bool):
    """Stage 5: ``config.eval_tasks`` (winq-eval) on the FP model and every run's last
    checkpoint (existing results skipped)."""
    if not config.eval_tasks:
        return
    from winq.eval import evaluate
    from winq.runfiles import last_checkpoint

    targets = [("fp", init)]
    for folder in runs:
        last = last_checkpoint(folder)  # (step, folder) or None
        if last is not None:
            targets.append((folder.name, last[1]))
    todo = [(name, ckpt) for name, ckpt in targets
            if not (eval_dir(out, name) / "results.json").is_file()]  # fmt: skip
    if not todo:
        return
    _say(f"zero-shot {','.join(config.eval_tasks)} on {len(todo)} models")
    from tqdm.auto import tqdm

    for name, ckpt in tqdm(todo, desc="zero-shot", disable=not progress):
        evaluate(ckpt, config.eval_tasks, device="cpu", seed=config.seed,
                 limit=config.eval_limit, out=eval_dir(out, name), overwrite=True)  # fmt: skip


def _zero_shot_lines(config: StudyConfig, out: Path) -> list[str]:
    """REPORT.md's zero-shot section: one row per model, each score with its interval over
    the items, and per bit width whether WinQ and the baseline differ beyond them."""
    from winq.eval import EvalResult, ResultsFileError

    results = {}
    for folder in sorted((out / "eval").glob("*/results.json")) if (out / "eval").is_dir() else []:
        try:
            results[folder.parent.name] = EvalResult.load(folder.parent)
        except (OSError, ValueError, ResultsFileError):
            continue
    if not results:
        return []

    def score(result, task, metric):
        try:
            return result.score(task, metric)
        except KeyError:
            return None

    def cell(found) -> str:
        if found is None:
            return "n/a"
        if found.low is None or found.high is None:
            return f"{found.value:.3f} (interval unknown)"
        return f"{found.value:.3f} [{found.low:.3f}, {found.high:.3f}]"

    metrics = [(t, m) for t, m in EVAL_METRICS
               if any(score(r, t, m) is not None for r in results.values())]  # fmt: skip
    if not metrics:
        return []
    names = ["fp", *sorted(n for n in results if n != "fp")]
    lines = ["## Zero-shot scores on the embedded benchmark", "",
             "winq-eval (lm-eval) on the FP model and each run's last checkpoint, as the "
             "quantized model runs in winq; 95% intervals over the items (Wilson for "
             "accuracies, bootstrap for bits per byte; docs/eval.md). Next-line accuracy has "
             "chance 0.25.", "",
             "| model | " + " | ".join(f"{t.replace('shakespeare_', '')} {m}" for t, m in metrics)
             + " |", "|---|" + "---|" * len(metrics)]  # fmt: skip
    for name in names:
        if name in results:
            found = [cell(score(results[name], t, m)) for t, m in metrics]
            lines.append(f"| {name} | " + " | ".join(found) + " |")
    compare = []
    task, metric = metrics[0]
    for bits in config.bits:
        base = results.get(f"w{bits}-baseline")
        for mode in ("fixed", "guided"):
            other = results.get(f"w{bits}-{mode}")
            if base is None or other is None:
                continue
            a, b = score(base, task, metric), score(other, task, metric)
            if a is None or b is None or None in (a.low, a.high, b.low, b.high):
                continue
            apart = a.high < b.low or b.high < a.low
            verdict = (("higher" if b.value > a.value else "lower") + " than the baseline"
                       if apart else "no difference beyond the intervals")  # fmt: skip
            compare.append(f"{bits}-bit {mode}: {verdict}")
    lines += ["", f"WinQ against the baseline ({metric}): "
              + ("; ".join(compare) if compare else "no pair measured") + ".", ""]  # fmt: skip
    return lines


def run_study(config: StudyConfig, out: Path, progress: bool = True, overwrite: bool = False):
    """Run (or resume) every stage; returns the path of REPORT.md."""
    from winq.io import FileLock, LockedError, atomic_write_json

    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(out / ".study.lock", blocking=False)
        lock.acquire()
    except LockedError:
        raise UsageError(f"another winq-reproduce is running in {str(out)!r}") from None
    try:
        atomic_write_json(out / STUDY_FILE, asdict(config))
        start = time.perf_counter()
        if config.init is not None:
            init = Path(config.init)
        else:
            from winq import distributed
            from winq.train import ensure_fp_checkpoint

            _say(f"FP model of the {config.preset} preset (pre-trained and cached if missing)")
            init = ensure_fp_checkpoint(config.preset, distributed.Dist(), progress=progress)
        runs = train_runs(config, out, init, progress)
        spectra(config, out, init, runs, progress)
        alpha_sweep(config, out, progress)
        zero_shot(config, out, init, runs, progress)
        report = write_report(config, out)
        _say(f"done in {time.perf_counter() - start:.0f} s: {report}")
        return report
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------
# the report


def _fmt(value: float | None, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _pm(estimate: Estimate) -> str:
    """``0.21 ± 0.05``, rounded to its interval; ``(unresolved)`` appended when the quadrature
    does not resolve it."""
    text = format_estimate(estimate.value, estimate.ci)
    return f"{text} (unresolved)" if estimate.resolved is False else text


def _range_estimate(value: float | None, spread: tuple[float, float] | None) -> Estimate:
    """|λ|max as an estimate whose interval is its range over the probes (each probe's Lanczos
    converges to the top of the spectrum from below, so the range is what one probe more or
    less can move it)."""
    low, high = spread if spread is not None else (math.nan, math.nan)
    return Estimate(math.nan if value is None else value, math.nan, (low, high), True)


def _pm_range(estimate: Estimate) -> str:
    if not all(math.isfinite(x) for x in estimate.ci):
        return f"{_fmt(estimate.value)} (range unknown)"
    return f"{_fmt(estimate.value)} [{estimate.ci[0]:.4g}, {estimate.ci[1]:.4g}]"


def _change(before: Estimate, after: Estimate) -> str:
    """``rise`` / ``fall`` when the two intervals separate (both resolved), ``no separable
    change`` when they overlap, ``unresolved`` when either estimate is not resolved or has no
    interval."""
    if before.resolved is False or after.resolved is False:
        return "unresolved"
    if not all(math.isfinite(x) for x in (*before.ci, *after.ci)):
        return "unresolved"
    if not before.separated_from(after):
        return "no separable change"
    return "rise" if after.value > before.value else "fall"


OPPOSITE = {"rise": "fall", "fall": "rise", "lower": "higher", "higher": "lower"}


def _verdict(outcomes: Sequence[str], expected: str) -> str:
    """*reproduced* when most comparisons separate in the paper's direction, *refuted* when
    most separate the other way, *inconclusive* otherwise (overlapping or unresolved
    intervals count against both); *not measured* without comparisons."""
    if not outcomes:
        return "**not measured**"
    if sum(o == expected for o in outcomes) * 2 > len(outcomes):
        return "**reproduced**"
    if sum(o == OPPOSITE[expected] for o in outcomes) * 2 > len(outcomes):
        return "**refuted**"
    return "**inconclusive**"


def write_report(config: StudyConfig, out: Path) -> Path:
    """Draw every figure into ``OUT/figures`` and write ``OUT/REPORT.md`` from saved files.

    Every mass is quoted with its 95% interval over SLQ probes and its resolution flag
    (:meth:`winq.plots.readers.SpectrumData.mass`), |λ|max with its range over probes, and a
    finding's verdict follows from those intervals (:func:`_verdict`), not from point values.
    """
    from winq.io import atomic_write_text
    from winq.plots.compare import speedup
    from winq.plots.draw import draw_all
    from winq.plots.readers import load_inputs

    paths = [p for p in (out / "runs", out / "alpha_sweep") if p.exists()]
    inputs = load_inputs(paths)
    figures = out / "figures"
    drawn = draw_all(inputs, figures, eps=ZERO_EPS, mass_sigma=DENSITY_SIGMA)

    runs = {run.path.name: run for run in inputs.runs}

    def spectra_of(name: str):
        run = runs.get(name)
        return [] if run is None else [s for s in run.spectra if s.alpha is None]

    def mass(s) -> Estimate:  # the WinQ paper's "probability of a zero eigenvalue"
        return s.mass("near_zero", ZERO_EPS, DENSITY_SIGMA)[0]

    def node_mass(s) -> Estimate:
        return s.mass("near_zero", ZERO_EPS)[0]

    def magnitude(s) -> Estimate:
        return _range_estimate(s.abs_lambda_max, s.abs_lambda_max_range())

    lines = [f"# WinQ saddle-point study ({config.preset} preset)", ""]
    lines += [
        f"Settings: QAT of {config.steps} updates × {config.batch_size} × {config.seq_len} tokens "
        f"at {', '.join(config.bits)} bits from the FP model; WinQ fixed = {config.resets} resets, "
        f"α = {config.alpha}, noise σ = {config.noise_sigma}; spectra: SLQ with "
        f"{config.probes} probes × {config.lanczos_steps} Lanczos steps on "
        f"{config.spectrum_batches} × {config.spectrum_batch_size} × {config.seq_len} held-out "
        "tokens, Hessian w.r.t. all QuantLinear latent weights through the STE; near-zero "
        f"mass = mass with |λ| < {ZERO_EPS:g} of the density broadened by a Gaussian of "
        f"σ = {DENSITY_SIGMA:g} (the WinQ notebooks' convention; the mass of the bare quadrature "
        "nodes, which jumps by whole node weights, is shown beside it).",
        "",
        "Uncertainty: a mass is quoted as mean ± half-width of its 95% Student-t interval over "
        "the probes, and marked *(unresolved)* when the Gauss quadrature cannot place that much "
        "mass on one side of the threshold (docs/diagnostics.md: the weight of unconverged "
        "nodes next to ±ε exceeds the half-width, or the interval lies below the clipped "
        "fraction, an exact lower bound). |λ|max is quoted with its range over probes. A "
        "change counts only when the two intervals separate; a finding is *reproduced* when "
        "most comparisons separate in the paper's direction, *refuted* when most separate the "
        "other way, and *inconclusive* otherwise. Every number is read from the saved spectrum "
        f"and run folders (`winq-plot {out}/runs {out}/alpha_sweep --eps {ZERO_EPS:g} "
        f"--mass-sigma {DENSITY_SIGMA:g} --out DIR` redraws the figures).",
        "",
    ]
    table = [["bits", "step 0 near-zero", "final near-zero", "final near-zero (nodes)",
              "resolved from", "step 0 abs λmax", "final abs λmax", "final clipped",
              "final held-out loss"]]  # fmt: skip
    grow, shrink, finals = [], [], {}
    for bits in config.bits:
        series = spectra_of(f"w{bits}-baseline")
        run = runs.get(f"w{bits}-baseline")
        if len(series) < 2 or run is None:
            continue
        first, last = series[0], series[-1]
        m0, m1 = mass(first), mass(last)
        a0, a1 = magnitude(first), magnitude(last)
        clipped = last.value("clipped_fraction")
        loss = run.eval_loss
        final_loss = float(loss["eval_loss"].iloc[-1]) if not loss.empty else None
        finals[bits] = (a1, m1, clipped, last)
        grow.append((bits, _change(m0, m1)))
        shrink.append((bits, _change(a0, a1)))
        resolved_from = last.value("near_zero_resolved_threshold")
        table.append([bits, _pm(m0), _pm(m1), _pm(node_mass(last)),
                      _fmt(resolved_from, ".2g") if resolved_from else "none",
                      _pm_range(a0), _pm_range(a1), _fmt(clipped, ".3f"),
                      _fmt(final_loss)])  # fmt: skip

    def listing(pairs) -> str:
        return ", ".join(f"{bits}-bit: {outcome}" for bits, outcome in pairs) or "none"

    lines += ["## Findings", ""]
    lines += [f"**(a) Near-zero concentration grows during QAT** — "
              f"{_verdict([o for _, o in grow], 'rise')}: the near-zero mass from step 0 to the "
              f"end of each baseline run ({listing(grow)}; table below).", ""]  # fmt: skip
    lines += [f"**(b) Eigenvalue magnitudes shrink during QAT** — "
              f"{_verdict([o for _, o in shrink], 'fall')}: max |λ| from step 0 to the end "
              f"({listing(shrink)}; a change counts when the probe ranges separate).", ""]  # fmt: skip
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines += ["", "*resolved from*: the smallest threshold ≥ the quoted one at which the "
              "final near-zero mass (nodes counted) is resolved (`near_zero_resolved_threshold` "
              f"in spectrum.json); where it exceeds {ZERO_EPS:g}, the notebooks' threshold is "
              "finer than these probes × Lanczos steps can place mass, and the masses at it "
              "are marked unresolved.", ""]  # fmt: skip
    ordered = sorted(finals, key=float)
    pairs = [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]
    orders = []
    for a, b in pairs:  # the paper: fewer bits, smaller magnitudes
        change = _change(finals[b][0], finals[a][0])
        orders.append({"fall": "lower", "rise": "higher"}.get(change, change))
    lines += [f"**(c) Lower bit widths give smaller magnitudes** — {_verdict(orders, 'lower')}: "
              "final max |λ| (range over probes) by bit width "
              + ", ".join(f"{b}-bit {_pm_range(finals[b][0])}" for b in ordered)
              + f"; {orders.count('lower')} of {len(pairs)} pairs separate in the paper's order, "
              f"{orders.count('higher')} in the other.", ""]  # fmt: skip

    sweep = sorted((s for s in inputs.spectra if s.alpha is not None), key=lambda s: s.alpha)
    by_alpha = {round(s.alpha, 4): s for s in sweep}
    no_reset, reset = by_alpha.get(1.0), by_alpha.get(round(config.alpha, 4))
    outcome_d: list[str] = []
    text_d = "no α sweep was measured"
    if no_reset is not None and reset is not None:
        before, after = magnitude(no_reset), magnitude(reset)
        outcome_d = [_change(before, after)]
        text_d = (f"at step {no_reset.step} of the {config.sweep_bits}-bit baseline a reset with "
                  f"α = {config.alpha:g} moved max |λ| from {_pm_range(before)} to "
                  f"{_pm_range(after)} ({outcome_d[0]}), the near-zero mass from "
                  f"{_pm(mass(no_reset))} to {_pm(mass(reset))} and the clipped fraction from "
                  f"{_fmt(no_reset.value('clipped_fraction'), '.3f')} to "
                  f"{_fmt(reset.value('clipped_fraction'), '.3f')} (exact)")  # fmt: skip
        text_d += "; across the sweep: " + ", ".join(
            f"α={s.alpha:g}: {_pm_range(magnitude(s))}" for s in sweep)  # fmt: skip
    lines += [f"**(d) Resets raise the magnitudes** — {_verdict(outcome_d, 'rise')}: "
              f"{text_d}.", ""]  # fmt: skip

    texts = []
    for bits in config.bits:
        base = runs.get(f"w{bits}-baseline")
        for mode in config.modes(bits)[1:]:
            other = runs.get(f"w{bits}-{mode}")
            if base is None or other is None:
                continue
            result = speedup(base, other)
            if result is not None:
                texts.append(f"{bits}-bit {mode}: {result.describe()}")
    lines += ["**(e) WinQ reaches the baseline's loss in fewer steps** — "
              + ("**inconclusive** (one seed per run: a speedup needs an interval over seeds, "
                 "which `bench/winq_speedup.py` measures; BENCHMARKS.md has that grid): "
                 if texts else "**not measured**: ")
              + ("; ".join(texts) or "no WinQ run beside a baseline") + ".", ""]  # fmt: skip

    shares = []
    for bits in ordered:
        _, _m, clipped, last = finals[bits]
        nodes = node_mass(last)
        if clipped is None or not math.isfinite(nodes.value):
            continue
        low, high = nodes.ci
        if quadrature.below_clipped(nodes.ci, clipped):
            share = ("unresolved: the whole interval lies below the clipped fraction, an exact "
                     "lower bound, so the quadrature missed mass at zero (more probes × steps "
                     "or a coarser threshold)")  # fmt: skip
        elif math.isfinite(low) and math.isfinite(high) and high > 0:
            share = (
                f"{min(1.0, clipped / high):.0%}–"
                f"{'100%' if low <= clipped else f'{clipped / low:.0%}'}"
            )
        else:
            share = "unknown (no interval)"
        shares.append(f"{bits}-bit: clipped fraction {_fmt(clipped, '.3f')} (exact), near-zero "
                      f"mass of the nodes {_pm(nodes)} → saturation share {share}")  # fmt: skip
    lines += ["**(f) How much of the near-zero mass is saturation** — each clipped latent "
              "weight has zero STE gradient and contributes an exact zero eigenvalue, so the "
              "clipped fraction is the saturation part of the near-zero mass (a lower bound on "
              "it): " + ("; ".join(shares) if shares else "not measured")
              + ". The rest is flatness of the loss itself.", ""]  # fmt: skip

    lines += _zero_shot_lines(config, out)
    lines += ["## Figures", ""]
    for path in sorted(p for p in drawn.written if p.suffix == ".png"):
        lines += [f"![{path.stem}](figures/{path.name})", ""]
    if drawn.skipped:
        lines += ["Not drawn: " + "; ".join(drawn.skipped), ""]
    summary = figures / "summary.md"
    if summary.is_file():
        lines += ["## Summary table", "", summary.read_text(encoding="utf-8").strip(), ""]
    report = out / "REPORT.md"
    atomic_write_text(report, "\n".join(lines))
    return report


main = guarded_main(PROG, run)

if __name__ == "__main__":
    sys.exit(main())

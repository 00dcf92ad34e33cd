"""The training loop, in-process, on miniature runs: learning, resume, resets, guide, faults."""

from __future__ import annotations

import json

import pytest
import torch
from faulty_train import install as install_faults
from helpers import MINI, comparable, read_metrics

import winq
from winq.cli import RuntimeFailure, UsageError
from winq.train import inputs
from winq.train.config import TrainConfig
from winq.train.loop import Counters, Parts, apply_reset, evaluate, train
from winq.train.state import last_checkpoint, load_trainer_state


def config(fp_checkpoint, out, **overrides) -> TrainConfig:
    values = {**MINI, "init": str(fp_checkpoint), "bits": 2, "out": str(out), **overrides}
    return TrainConfig(**values).resolve()


def eval_losses(records):
    return {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}


def test_loss_decreases_on_a_fixed_batch(fp_checkpoint, tmp_path, monkeypatch):
    build = inputs.build_data

    def one_batch(cfg, tokenizer, dist, micro, model=None):
        from winq.data import BatchIterator

        data = build(cfg, tokenizer, dist, micro, model)
        blocks = data.batches.blocks[: cfg.batch_size]  # every update sees this one batch
        data.batches = BatchIterator(blocks, cfg.batch_size, cfg.seed)
        return data

    monkeypatch.setattr(inputs, "build_data", one_batch)
    train(config(fp_checkpoint, tmp_path / "run", winq_resets=0, steps=15, lr=1e-2))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 15
    assert losses[-1] < 0.8 * losses[0]


def test_run_folder_follows_the_format(fp_checkpoint, tmp_path):
    run = tmp_path / "run"
    result = train(config(fp_checkpoint, run, save_every=5, keep_last=2))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "winq-train" and cfg["bits"] == 2 and cfg["quantizer"] == "seq"
    assert cfg["total_steps"] == 12 and cfg["world_size"] == 1
    assert cfg["winq"]["mode"] == "fixed" and cfg["winq"]["reset_steps"] == [3, 6, 9]
    assert cfg["winq"]["noise"]["sigma"] == 1e-3  # WinQ runs inject noise by default
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["final", "step_000010", "step_000012"]  # keep-last 2
    assert (run / "checkpoints" / "final").read_text().strip() == "step_000012"
    assert result.final_checkpoint == run / "checkpoints" / "step_000012"
    state = load_trainer_state(result.final_checkpoint)
    assert state["step"] == 12 and state["counters"]["tokens"] == 12 * 4 * 16
    model, _ = winq.load(result.final_checkpoint)
    assert len(list(winq.quant_layers(model))) > 0
    records = read_metrics(run)
    assert all(isinstance(r["step"], int) for r in records)
    train_lines = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_lines] == list(range(1, 13))
    assert {"lr", "tokens", "seconds", "grad_norm", "tokens_per_second"} <= set(train_lines[0])
    assert set(eval_losses(records)) == set(range(13))  # eval every T/10 = 1 update
    assert "eval_ppl" in next(r for r in records if "eval_loss" in r)
    summary = records[-1]["summary"]
    assert summary["resets"] == 3 and summary["final_eval_loss"] == result.eval_loss


def test_resets_exactly_at_schedule_and_loss_unchanged(fp_checkpoint, tmp_path):
    common = {"noise_sigma": 0.0, "eval_every": 1}
    base = read_metrics(train(config(fp_checkpoint, tmp_path / "b", winq_resets=0, **common)).out)
    fixed = read_metrics(train(config(fp_checkpoint, tmp_path / "f", winq_resets=3, **common)).out)
    resets = [r for r in fixed if "reset" in r]
    assert [r["step"] for r in resets] == [3, 6, 9]
    for r in resets:
        reset = r["reset"]
        assert (reset["alpha"], reset["mode"], reset["reason"]) == (0.2, "full", "schedule")
        assert (reset["layers"], reset["weights"], reset["guarded"]) == (14, 393216, 0)
    base_eval, fixed_eval = eval_losses(base), eval_losses(fixed)
    # identical trajectories up to the first reset, and the reset itself changes nothing the
    # quantized model computes: the held-out loss at step 3 (after the reset) is the baseline's
    for step in range(4):
        assert fixed_eval[step] == base_eval[step]
    assert fixed_eval[4] != base_eval[4]  # the latent weights did move


def test_reset_leaves_held_out_loss_bit_identical(fp_checkpoint):
    cfg = TrainConfig(**MINI, init=str(fp_checkpoint), bits=2, winq_resets=0).resolve()
    model, tokenizer = inputs.build_model(cfg)
    from winq.distributed import Dist

    data = inputs.build_data(cfg, tokenizer, Dist(), 4, model)
    with torch.no_grad():  # move the latents off the grid first, as training would
        for _, layer in winq.quant_layers(model):
            layer.weight.add_(0.3 * layer.scale * torch.randn_like(layer.weight))
    optimizer = torch.optim.AdamW(model.parameters())
    parts = Parts(model, model, tokenizer, data, optimizer, None, None, Counters())
    before = evaluate(model, data.eval_batches, torch.device("cpu"), "fp32")
    clipped = winq.clipped_fraction(model)
    for alpha in (0.0, 0.2, 0.7):
        apply_reset(parts, cfg, 1, alpha)
        assert evaluate(model, data.eval_batches, torch.device("cpu"), "fp32") == before
    assert winq.clipped_fraction(model) < clipped


def test_resume_is_bit_identical(fp_checkpoint, tmp_path, monkeypatch):
    """Interrupted (a fault at update 8, checkpoint at 5) and resumed == uninterrupted."""
    kwargs = {"save_every": 5, "guide": True, "guide_rule": "spectrum", "winq_resets": None,
              "winq_alpha": "auto", "guide_every": 2, "guide_steps": 6}  # fmt: skip
    whole = train(config(fp_checkpoint, tmp_path / "whole", **kwargs)).out
    install_faults(monkeypatch, "7")
    with pytest.raises(RuntimeFailure, match="non-finite"):
        train(config(fp_checkpoint, tmp_path / "cut", **kwargs))
    install_faults(monkeypatch, None)
    cut = tmp_path / "cut"
    assert last_checkpoint(cut)[0] == 5
    assert max(r["step"] for r in read_metrics(cut)) == 7  # records past the checkpoint...
    resumed = TrainConfig.from_json(json.loads((cut / "config.json").read_text()))
    train(resumed, resume=cut)
    a, b = comparable(read_metrics(whole)), comparable(read_metrics(cut))
    assert a == b  # ...were dropped and written again, identically
    assert any("diagnostics" in r for r in a) and any("reset" in r for r in a)


def test_guided_mode_logs_every_measurement_and_decision(fp_checkpoint, tmp_path):
    run = train(
        config(
            fp_checkpoint,
            tmp_path / "g",
            guide=True,
            guide_rule="spectrum",
            winq_alpha="auto",
            guide_every=2,
            guide_steps=6,
            guide_min_period=4,
            guide_max_period=6,
            guide_lr_floor=0.0,
        )
    ).out
    records = read_metrics(run)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["winq"]["mode"] == "guided" and cfg["winq"]["guide"]["every"] == 2
    assert cfg["winq"]["alpha"] == "auto" and cfg["winq"]["guide"]["rule"] == "spectrum"
    assert cfg["winq"]["reset_mode"] == "full"  # the spectrum rule's resets: the paper's
    diagnostics = [r for r in records if "diagnostics" in r]
    guides = [r for r in records if "guide" in r]
    resets = [r for r in records if "reset" in r]
    for r in diagnostics:
        d = r["diagnostics"]
        assert {"lambda_max", "lambda_min", "abs_lambda_max", "near_zero_mass", "negative_mass",
                "clipped_fraction", "seconds"} <= set(d)  # fmt: skip
        assert d["lambda_max"] >= d["lambda_min"] and 0 <= d["clipped_fraction"] <= 1
    # measured at 0 (the reference), then only where a reset could be decided: >= 4 steps
    # after the last reset, and the max period (6) forces one at the latest
    assert diagnostics[0]["step"] == 0 and guides[0]["step"] == 4
    assert resets and resets[0]["step"] <= 6
    last_reset = 0
    for r in diagnostics[1:]:
        if r["step"] - last_reset < 4:
            raise AssertionError(f"measured at {r['step']}, within the min period")
        decision = next(g for g in guides if g["step"] == r["step"])["guide"]
        if decision["decision"] == "reset":
            reset = next(x for x in resets if x["step"] == r["step"])["reset"]
            assert reset["reason"] == "guided" and reset["alpha"] == decision["alpha"]
            assert set(decision["candidates"]) == {"0", "0.2", "0.4", "0.6", "0.8"}
            last_reset = r["step"]
    assert records[-1]["summary"]["controller_seconds"] > 0


def test_nonfinite_stops_and_keeps_last_good_checkpoint(fp_checkpoint, tmp_path, monkeypatch):
    install_faults(monkeypatch, "6")
    with pytest.raises(RuntimeFailure, match=r"non-finite loss .* update 7.*step_000006"):
        train(config(fp_checkpoint, tmp_path / "r", save_every=3))
    run = tmp_path / "r"
    assert last_checkpoint(run)[0] == 6
    # (checkpoint 6 was written before update 7 failed; nothing after it)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_000003",
        "step_000006",
    ]


def test_skip_nonfinite_skips_and_logs(fp_checkpoint, tmp_path, monkeypatch):
    install_faults(monkeypatch, "2,5")
    result = train(config(fp_checkpoint, tmp_path / "r", skip_nonfinite=True))
    records = read_metrics(result.out)
    skipped = [r for r in records if "skipped" in r]
    assert [r["step"] for r in skipped] == [2, 4]  # steps counted in updates done
    assert result.step == 12 and records[-1]["summary"]["skipped_updates"] == 2
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))


def test_second_run_on_same_out_is_locked_out(fp_checkpoint, tmp_path):
    from winq.io import FileLock

    run = tmp_path / "r"
    run.mkdir()
    with FileLock(run / ".lock", blocking=False):
        with pytest.raises(RuntimeFailure, match="in use by another"):
            train(config(fp_checkpoint, run))
    assert not (run / "config.json").exists()


def test_non_empty_out_refused_and_overwrite(fp_checkpoint, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        train(config(fp_checkpoint, run))
    train(config(fp_checkpoint, run, overwrite=True, steps=4, warmup=1))
    assert not (run / "notes.txt").exists() and (run / "config.json").exists()


def test_pretraining_and_options(fp_checkpoint, tmp_path):
    """bits 16 from a fresh preset model; QAT with a-bits 8, group size, reset options."""
    fp = train(TrainConfig(**{**MINI, "steps": 6}, bits=16, out=str(tmp_path / "fp")).resolve())
    cfg = json.loads((fp.out / "config.json").read_text())
    assert cfg["winq"] == {"mode": "off"} and cfg["quantizer"] is None
    assert fp.eval_loss < read_metrics(fp.out)[0]["eval_loss"]
    qat = train(
        config(
            fp.final_checkpoint,
            tmp_path / "q",
            a_bits=8,
            group_size=16,
            bits=4,
            reset_optimizer=True,
            reset_scales="freeze",
            scale_freeze_steps=2,
            winq_period=4,
        )
    )
    model, _ = winq.load(qat.final_checkpoint)
    layer = next(layer for _, layer in winq.quant_layers(model))
    assert layer.config.a_bits == 8 and layer.config.group_size == 16 and layer.config.bits == 4
    assert [r["step"] for r in read_metrics(qat.out) if "reset" in r] == [4, 8]


def test_default_command_pretrains_the_cache_then_runs_qat(tmp_path, monkeypatch):
    """``winq-train`` with no arguments: pre-train the tiny FP model into the cache if it is
    missing (miniature defaults here), then 2-bit QAT with fixed WinQ resets into runs/."""
    import shutil

    from winq import embedded
    from winq.train.cli import main

    session_cache = embedded.ensure_built()
    cache = tmp_path / "cache"
    for name in ("corpus", "tokenizer", "tokens"):  # reuse the session's corpus and tokenizer
        if (session_cache / name).exists():
            shutil.copytree(session_cache / name, cache / name)
    monkeypatch.setenv("WINQ_CACHE", str(cache))
    mini = {k: MINI[k] for k in ("steps", "batch_size", "seq_len", "lr", "warmup")}
    monkeypatch.setattr(embedded, "training_defaults", lambda preset, mode="pretrain": dict(mini))
    monkeypatch.chdir(tmp_path)

    assert main(["--no-progress", "--eval-batches", "2"]) == 0
    target = embedded.default_checkpoint_path("tiny")
    assert (target / "config.json").is_file() and not (target / "trainer_state.pt").exists()
    assert not winq.checkpoint.is_quantized(winq.load(target)[0])
    pretrain = json.loads((cache / "runs" / "pretrain-tiny" / "config.json").read_text())
    assert pretrain["bits"] == 16 and pretrain["winq"] == {"mode": "off"}
    (run,) = (tmp_path / "runs").iterdir()
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["bits"] == 2 and config_json["winq"]["mode"] == "fixed"
    assert config_json["init"] == str(target) and config_json["preset"] == "tiny"
    assert (run / "checkpoints" / "final").is_file()
    # the cache is reused: --bits 16 without --out has nothing to do
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert main(["--bits", "16", "--no-progress"]) == 0
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


def test_user_text_file_with_the_preset_model(fp_checkpoint, tmp_path):
    from winq import embedded

    text = "\n".join(embedded.corpus_texts("heldout"))[:60_000]
    (tmp_path / "mine.txt").write_text(text)
    result = train(config(fp_checkpoint, tmp_path / "r", data=str(tmp_path / "mine.txt"), steps=4,
                          warmup=1))  # fmt: skip
    cfg = json.loads((result.out / "config.json").read_text())
    assert cfg["data"].endswith("mine.txt") and result.eval_loss is not None

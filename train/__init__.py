"""winq.train: the training loop behind ``winq-train``.

FP pre-training (``bits=16``), quantization-aware training at 1, 1.58, 2, 3 and 4 bits, and
WinQ's interpolation resets — on a fixed schedule or decided by a controller that measures
Hessian diagnostics during training::

    from winq.train import TrainConfig, train

    config = TrainConfig(bits=2, guide=True, winq_alpha="auto", out="runs/guided").resolve()
    result = train(config)          # RunResult(out, step, eval_loss, final_checkpoint, summary)

Modules, one idea each: ``config`` (TrainConfig), ``schedule`` (cosine LR, fixed reset steps),
``controller`` (the spectrum-guided controller), ``inputs`` (model, tokenizer, batches),
``state`` (claiming the run folder, checkpoints and resume), ``loop`` (train),
``pipeline`` (pre-training the embedded default, one ``winq-train`` invocation) and ``cli``
(the command's flags). The run folder's layout and ``metrics.jsonl`` are :mod:`winq.runfiles`;
torchrun/DDP set-up is :mod:`winq.distributed`.

Names load lazily so that ``winq-train --help`` and flag errors never import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainConfig": "winq.train.config",
    "train": "winq.train.loop",
    "RunResult": "winq.train.loop",
    "evaluate": "winq.train.loop",
    "Controller": "winq.train.controller",
    "GuideRule": "winq.train.controller",
    "decide": "winq.train.controller",
    "CosineSchedule": "winq.train.schedule",
    "fixed_reset_steps": "winq.train.schedule",
    "lr_at": "winq.train.schedule",
    "last_checkpoint": "winq.train.state",
    "ensure_fp_checkpoint": "winq.train.pipeline",
    "main": "winq.train.cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'winq.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

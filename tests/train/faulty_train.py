"""Test faults for the trainer: a :class:`winq.train.loop.FaultHook` built from a spec.

A spec is a comma-separated list of attempted-update indices (0-based, counted over attempts,
skipped ones included), each optionally followed by ``:nan`` (the default: the loss times NaN),
``:inf`` (the loss times inf) or ``:grad`` (a finite loss, but one gradient entry set to NaN
after the backward pass). ``python -m faulty_train SPEC ARGS...`` runs ``winq-train ARGS`` with
the hook installed (the subprocess tests of the command).
"""

from __future__ import annotations

import sys

import torch

KINDS = ("nan", "inf", "grad")


class Faults:
    """The hook: ``loss`` poisons the loss of the listed attempts, ``gradients`` a gradient."""

    def __init__(self, spec: str) -> None:
        self.plan: dict[int, str] = {}
        for item in spec.split(","):
            index, _, kind = item.strip().partition(":")
            kind = kind or "nan"
            if not index.isdigit() or kind not in KINDS:
                raise ValueError(f"fault spec: expected INDEX[:{'|'.join(KINDS)}], got {item!r}")
            self.plan[int(index)] = kind

    def loss(self, attempt: int, loss: torch.Tensor) -> torch.Tensor:
        kind = self.plan.get(attempt)
        return loss * float(kind) if kind in ("nan", "inf") else loss

    @torch.no_grad()
    def gradients(self, attempt: int, model: torch.nn.Module) -> None:
        if self.plan.get(attempt) == "grad":
            grad = next(p.grad for p in model.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("nan")


def install(monkeypatch, spec: str | None) -> None:
    """Install the hook of ``spec`` (None: remove it) until the test ends."""
    from winq.train import loop

    monkeypatch.setattr(loop, "_fault_hook", Faults(spec) if spec else None)


if __name__ == "__main__":
    from winq.train.cli import main
    from winq.train.loop import set_fault_hook

    set_fault_hook(Faults(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))

"""What a run trains on: the model and tokenizer it starts from, and its batches.

Model sources, by mode:

* ``--bits 16`` (pre-training): a fresh preset model (:func:`winq.embedded.build_model`), or
  ``--init CKPT`` to continue pre-training a checkpoint;
* QAT: ``--init CKPT`` (default: the preset's cached FP checkpoint) loaded with
  :func:`winq.load`; an FP checkpoint is quantized here with the run's full
  :class:`~winq.QuantConfig` (bits, quantizer, group size, activation bits, noise) and the scale
  initialisation of :func:`winq.quantizers.init_scale` (ParetoQ's); a quantized checkpoint of
  the same bit width continues QAT;
* ``--resume``: the run's own checkpoint, exactly as saved.

Tokenizer: ``--tokenizer PATH`` if given, else the checkpoint's, else (fresh preset models) the
embedded one — so with ``--preset`` and a user's ``--data`` the preset model and embedded
tokenizer are used and checkpoints stay compatible.

Batches come from :mod:`winq.data` (files and dataset names, packing into ``--seq-len`` blocks,
a deterministic, resumable, rank-sharded order) — see :func:`build_data`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from winq.cli import UsageError
from winq.train.config import TrainConfig

__all__ = ["TrainData", "build_data", "build_model", "load_model"]


def _load_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        raise UsageError(f"--tokenizer {path}: cannot load a tokenizer ({first})") from None


def _configure(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Quantize an FP model with the run's QuantConfig, or check a quantized one matches it."""
    import winq
    from winq.checkpoint import is_quantized

    if config.pretrain:
        if is_quantized(model):
            raise UsageError("--init is a quantized checkpoint; --bits 16 pre-trains FP models")
        return model
    wanted = config.quant_config()
    if not is_quantized(model):
        try:
            winq.quantize_(model, wanted)
        except ValueError as e:  # e.g. a group size that does not divide a layer's width
            raise UsageError(f"--init {config.init}: {e}") from None
        return model
    layers = list(winq.quant_layers(model))
    have = layers[0][1].config
    if (have.bits, have.quantizer, have.granularity, have.group_size) != (
        wanted.bits,
        wanted.quantizer,
        wanted.granularity,
        wanted.group_size,
    ):
        raise UsageError(
            f"--init is a {have.bits}-bit {have.quantizer} ({have.granularity}) checkpoint; "
            f"this run asks for {wanted.bits}-bit {wanted.quantizer} ({wanted.granularity})"
        )
    for _, layer in layers:  # activation bits and noise are training settings: take the run's
        layer.config = wanted
        layer.clear_frozen_noise()
    return model


def build_model(config: TrainConfig) -> tuple[nn.Module, Any]:
    """The model a fresh run starts from, and its tokenizer (see the module docstring)."""
    import winq
    from winq import embedded

    if config.init is None:
        if not config.pretrain:
            raise UsageError("QAT needs --init (or the preset's cached FP checkpoint)")
        model = embedded.build_model(config.preset, seed=config.seed)
        tokenizer = embedded.tokenizer()
    else:
        model, tokenizer = winq.load(
            config.init,
            bits=None,
            trust_remote_code=config.trust_remote_code,
        )
        if tokenizer is None and config.tokenizer is None:
            tokenizer = embedded.tokenizer()
        _configure(model, config)
    if config.tokenizer is not None:
        tokenizer = _load_tokenizer(config.tokenizer, config.trust_remote_code)
    _check_vocab(model, tokenizer)
    return model, tokenizer


def load_model(config: TrainConfig, checkpoint: str) -> tuple[nn.Module, Any]:
    """The model and tokenizer of a run's own checkpoint (``--resume``)."""
    import winq

    model, tokenizer = winq.load(checkpoint, trust_remote_code=config.trust_remote_code)
    if config.tokenizer is not None:
        tokenizer = _load_tokenizer(config.tokenizer, config.trust_remote_code)
    return model, tokenizer


def _check_vocab(model: nn.Module, tokenizer: Any) -> None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is not None and tokenizer is not None and len(tokenizer) > size:
        raise UsageError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {size}"
        )


def _max_positions(model_config: Any) -> int | None:
    return getattr(model_config, "max_position_embeddings", None)


class TrainData:
    """The batches of one rank: a resumable training stream, held-out and probe batches.

    Args:
        train_blocks: ``(N, seq_len)`` token blocks of the training split.
        eval_blocks: ``(M, seq_len)`` held-out blocks (in :mod:`winq.data`'s fixed order).
        batch_size: sequences per update over all ranks and micro-batches.
        micro: sequences per forward on this rank.
        seed: the shuffling seed.
        rank, world_size: this process's place.
        eval_batches: held-out batches of ``batch_size`` sequences per evaluation.

    Training batches come from :class:`winq.data.BatchIterator`: update ``k`` uses global
    batch ``k`` of a seeded permutation of the blocks, rank ``r`` its contiguous share, cut
    here into micro-batches of ``micro`` for gradient accumulation. The union over ranks and
    micro-batches is the global batch, whatever the split (what the DDP equivalence test
    checks); the iterator's position is the whole state.
    """

    def __init__(
        self,
        train_blocks: torch.Tensor,
        eval_blocks: torch.Tensor,
        batch_size: int,
        micro: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        eval_batches: int = 8,
    ) -> None:
        if eval_blocks.shape[0] == 0:
            raise UsageError("the held-out split is empty")
        from winq.data import BatchIterator

        self.batches = BatchIterator(
            train_blocks, batch_size, seed, rank=rank, world_size=world_size
        )
        self.micro = micro
        self._pending: list[torch.Tensor] = []
        # held-out: the first eval_batches x batch_size blocks (the same set whatever the
        # number of ranks), in micro-batches dealt round-robin to the ranks
        held_out = eval_blocks[: eval_batches * batch_size]
        chunks = [held_out[i : i + micro] for i in range(0, held_out.shape[0], micro)]
        self.eval_batches = chunks[rank::world_size]
        self._eval_blocks = eval_blocks
        self.rank = rank
        self.world_size = world_size

    def next_batch(self) -> torch.Tensor:
        """This rank's next micro-batch ``(micro, seq_len)``."""
        if not self._pending:
            share = next(self.batches)["input_ids"]  # (batch_size / world_size, seq_len)
            self._pending = list(share.split(self.micro))
        return self._pending.pop(0)

    def probe_batches(self, sequences: int) -> list[dict[str, torch.Tensor]]:
        """The controller's fixed probe batch (the last held-out blocks), this rank's share.

        Split over ranks when it divides evenly (the Hessian operator all-reduces, so the result
        equals one process's); otherwise every rank passes the whole batch.
        """
        blocks = self._eval_blocks[-sequences:]
        if self.world_size > 1 and blocks.shape[0] % self.world_size == 0:
            share = blocks.shape[0] // self.world_size
            blocks = blocks[self.rank * share : (self.rank + 1) * share]
        return [{"input_ids": blocks}]

    def state_dict(self) -> dict[str, int]:
        if self._pending:
            raise RuntimeError("the data position is saved between updates only")
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches.load_state_dict(state)
        self._pending = []


def build_data(
    config: TrainConfig, tokenizer: Any, dist, micro: int, model: nn.Module | None = None
) -> TrainData:
    """Tokenize and pack the run's data (default: the embedded corpus) into a TrainData.

    Raises:
        winq.data.DataError: a missing or malformed source, too little text, ``--seq-len``
            beyond the model's context (exit code 2 at the command line).
    """
    from winq import data as wdata

    limit = _max_positions(getattr(model, "config", None)) if model is not None else None
    train_blocks, eval_blocks = wdata.train_and_heldout_blocks(
        config.data,
        tokenizer,
        config.seq_len,
        data_config=config.data_config,
        text_field=config.text_field,
        streaming=config.streaming or None,
        max_positions=limit,
    )
    return TrainData(
        train_blocks,
        eval_blocks,
        config.batch_size,
        micro,
        config.seed,
        dist.rank,
        dist.world_size,
        config.eval_batches,
    )

"""Where does the loss push the clipped latents? The direction of the held-out gradient at
every latent the straight-through estimator masks.

A latent weight outside its quantizer's range gets no gradient: the STE passes
:math:`\\partial L/\\partial Q(W)` only where :math:`W/s` lies in the range. The unmasked
gradient is still defined, :math:`G = \\partial L/\\partial Q(W) = \\sum_t g_t x_t^\\top` over the
tokens of a batch (``g_t`` the gradient at the layer's output, ``x_t`` its input). Gradient
descent on an unmasked latent above the range (:math:`W/s >` the top of the range) would move
it outward where :math:`G < 0`, and inward where :math:`G > 0`; below the range the other way
round. This reports, per checkpoint, the share of clipped latents the held-out gradient pushes
*outward*. Near 1 means the loss holds them outside (a reset that takes them back in is undone
by the gradient). Near 0 means they are trapped where the loss would move them back (what a
reset is meant to free). Near 1/2 means the gradient has no direction there (a reset to the
range edge is undone by noise: half of any random steps point outward, and once outside a
latent stays).

The gradient is summed over ``--batches`` held-out batches of ``--batch-size`` sequences of
``--seq-len`` tokens (the embedded corpus's held-out split, as the trainer's evaluation uses),
in float32, with the model in eval mode; beside it, the share for each batch's gradient alone,
as a mean with its 95% Student-t interval over the batches::

    python bench/clipped_gradient.py runs/issue13-tiny/tiny-w*-T300-s0-*/checkpoints/step_000300

BENCHMARKS.md ("Issue 13, second tiny grid") used a baseline run re-run with a checkpoint every
75 updates, to read the latents where the first reset comes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def outward_share(path: str, batches: int, batch_size: int, seq_len: int) -> dict[str, float]:
    """Clipped latents and the share of them the summed held-out gradient pushes outward,
    with the same share for each batch's own gradient (mean and 95% t-interval over batches:
    how much the direction depends on the batch)."""
    import torch

    import winq
    from winq.data import lm_blocks
    from winq.nn import quant_layers

    model, tokenizer = winq.load(path)
    model.eval()
    blocks = torch.as_tensor(lm_blocks(None, tokenizer, seq_len, "heldout"))
    need = batches * batch_size
    if blocks.shape[0] < need:
        raise SystemExit(f"{path}: {blocks.shape[0]} held-out blocks, {need} needed")
    layers = dict(quant_layers(model))
    inputs: dict[str, torch.Tensor] = {}
    sums = {name: torch.zeros(batches, *layer.weight.shape) for name, layer in layers.items()}
    current = [0]
    hooks = []
    for name, layer in layers.items():

        def keep_input(module, args, output, name=name):
            inputs[name] = args[0].detach()

        def add_gradient(module, grad_input, grad_output, name=name):
            gradient = torch.einsum("...o,...i->oi", grad_output[0].detach(), inputs[name])
            sums[name][current[0]] += gradient

        hooks += [layer.register_forward_hook(keep_input),
                  layer.register_full_backward_hook(add_gradient)]  # fmt: skip
    for index in range(batches):
        batch = blocks[index * batch_size : (index + 1) * batch_size]
        current[0] = index
        model.zero_grad(set_to_none=True)
        model(batch, labels=batch).loss.backward()
    for hook in hooks:
        hook.remove()
    from winq.quadrature import t_interval

    clipped = outward = 0
    per_batch = torch.zeros(batches, dtype=torch.float64)
    for name, layer in layers.items():
        position = layer.grid_position().reshape(layer.weight.shape)
        outside = ~layer.clip_mask()
        above, below = outside & (position > 0), outside & (position < 0)
        clipped += int(above.sum() + below.sum())
        total = sums[name].sum(0)
        outward += int((above & (total < 0)).sum() + (below & (total > 0)).sum())
        per_batch += ((above & (sums[name] < 0)) | (below & (sums[name] > 0))).sum((1, 2))
    estimate = t_interval((per_batch / max(clipped, 1)).numpy())
    return {"clipped": clipped, "outward": outward, "share": outward / clipped if clipped else 0.0,
            "per_batch": estimate}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="winq checkpoint folders")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    tokens = args.batches * args.batch_size * args.seq_len
    print(f"# held-out gradient over {args.batches} x {args.batch_size} x {args.seq_len} = "
          f"{tokens} tokens; share of clipped latents pushed outward")  # fmt: skip
    for path in args.checkpoints:
        result = outward_share(path, args.batches, args.batch_size, args.seq_len)
        folder = Path(path).resolve()
        run = f"{folder.parent.parent.name}/{folder.name}"
        low, high = result["per_batch"].ci
        print(f"{run:<36} clipped {result['clipped']:>7}  pushed outward {result['outward']:>7} "
              f"({result['share']:.3f}); one batch's gradient: {result['per_batch'].value:.3f} "
              f"[{low:.3f}, {high:.3f}]", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Per-block spectra: one SLQ density per transformer block and one per module kind.

The Hessian restricted to a group B of parameters is the diagonal block :math:`H_{BB}`; its
spectrum says how curved the loss is along that layer's (or that kind of module's) weights
alone. Each block's product :math:`H_{BB} v_B` is one backward through the shared first-order
graph of the whole selection (:meth:`~winq.analysis.hvp.HessianOperator.restrict`), so a
per-block run costs (1 + blocks) × probes × steps products but builds each batch's graph once.

Grouping by parameter name:

* ``"layer"`` — the transformer block index, from ``layers.<i>.`` (Llama, Qwen2, Mistral:
  ``model.layers.<i>.``; GPT-NeoX: ``gpt_neox.layers.<i>.``), ``h.<i>.`` (GPT-2/J style
  ``transformer.h.<i>.``), ``blocks.<i>.``, ``layer.<i>.`` or ``decoder.layers.<i>.``:
  block name ``layer.<i>``; parameters outside any block join no layer group.
* ``"kind"`` — the owning module's own name (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
  ``gate_proj``, ``up_proj``, ``down_proj``; GPT-NeoX ``query_key_value``, ``dense``,
  ``dense_h_to_4h``, ``dense_4h_to_h``): block name ``kind.<module>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from winq.analysis.slq import slq
from winq.analysis.spectrum import Spectrum

__all__ = ["GROUPINGS", "group_parameters", "per_block_slq"]

GROUPINGS = ("layer", "kind")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The transformer block index in a parameter name, or None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def kind_of(name: str) -> str:
    """The name of the module owning a parameter (``...self_attn.q_proj.weight`` -> q_proj)."""
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[-1]


def group_parameters(names: Sequence[str], group_by: Sequence[str] = GROUPINGS) -> dict[str, list]:
    """``{block name: [parameter names]}`` for the requested groupings, in a stable order
    (layers by index, then kinds by first appearance).

    Raises:
        ValueError: an unknown grouping.
    """
    if isinstance(group_by, str):
        group_by = (group_by,)
    unknown = [g for g in group_by if g not in GROUPINGS]
    if unknown:
        raise ValueError(f"group_by must be among {GROUPINGS}, got {unknown[0]!r}")
    groups: dict[str, list] = {}
    if "layer" in group_by:
        layers: dict[int, list] = {}
        for name in names:
            index = layer_of(name)
            if index is not None:
                layers.setdefault(index, []).append(name)
        for index in sorted(layers):
            groups[f"layer.{index}"] = layers[index]
    if "kind" in group_by:
        for name in names:
            groups.setdefault(f"kind.{kind_of(name)}", []).append(name)
    return groups


def per_block_slq(
    op,
    group_by: Sequence[str] = GROUPINGS,
    include_all: bool = True,
    probes: int = 8,
    steps: int = 60,
    progress: bool = True,
    **slq_kwargs,
) -> Spectrum:
    """SLQ of the whole selection and of every block, in one :class:`Spectrum`.

    Args:
        op: a :class:`~winq.analysis.hvp.HessianOperator` (anything with ``param_names``
            and ``restrict(names)``).
        group_by: groupings to use, ``("layer", "kind")`` by default.
        include_all: also compute the whole selection's spectrum (stored as the spectrum
            itself; otherwise it has no nodes and only ``blocks``).
        probes, steps, progress, **slq_kwargs: passed to :func:`~winq.analysis.slq.slq` for
            each block (with the same seed: each block's probes are drawn the same way).

    Returns:
        A spectrum whose ``blocks`` maps ``"layer.<i>"`` and ``"kind.<module>"`` to sub-spectra.

    Raises:
        TypeError: ``op`` cannot be restricted.
        ValueError: no block found.
    """
    if not hasattr(op, "restrict") or not hasattr(op, "param_names"):
        raise TypeError("per_block_slq needs an operator with param_names and restrict()")
    groups = group_parameters(op.param_names, group_by)
    if not groups:
        raise ValueError(f"no {'/'.join(group_by)} block found among the selected parameters")
    blocks = {}
    for name, names in groups.items():
        spectrum = slq(
            op.restrict(names), probes=probes, steps=steps, progress=progress, **slq_kwargs
        )
        spectrum.metadata["block"] = name
        blocks[name] = spectrum
    if include_all:
        whole = slq(op, probes=probes, steps=steps, progress=progress, **slq_kwargs)
    else:
        metadata = dict(op.metadata()) if hasattr(op, "metadata") else {}
        metadata.update({"probes": probes, "lanczos_steps": steps})
        whole = Spectrum(np.zeros((0, 0)), np.zeros((0, 0)), metadata=metadata)
    whole.blocks = blocks
    whole.metadata["per_block"] = list(groups)
    whole.metadata["group_by"] = list(group_by) if not isinstance(group_by, str) else [group_by]
    return whole

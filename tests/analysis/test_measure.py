"""measure_spectrum: the top-k eigenvalues against the dense Hessian, and the quantization facts
it records (clipped fraction of the whole selection and of each block)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import winq
from winq.analysis.measure import measure_spectrum
from winq.nn import clipped_fraction


def test_top_k_matches_dense_eigenvalues(exact_llama, llama_reference):
    model, batches, names = exact_llama
    _, eigenvalues = llama_reference
    spectrum = measure_spectrum(model, batches, params=names, probes=1, steps=10, top_k=3,
                                progress=False)  # fmt: skip
    expected = eigenvalues[np.argsort(-np.abs(eigenvalues))][:3]
    np.testing.assert_allclose(spectrum.top_eigenvalues, expected, rtol=1e-4)
    facts = spectrum.metadata["top_k"]
    assert facts["converged"]
    assert all(r <= 1e-4 for r in facts["relative_residuals"])
    assert spectrum.metadata["bits"] == 16 and spectrum.metadata["clipped_fraction"] is None


def test_clipped_fraction_of_selection_and_blocks():
    from tiny_models import build_tiny_model

    model = build_tiny_model("llama", layers=2)
    winq.quantize_(model, winq.QuantConfig(bits=2))
    with torch.no_grad():  # saturate part of one layer so the fractions differ
        layer = model.model.layers[1].mlp.up_proj
        layer.weight[:4] *= 50
    batches = [
        {"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))}
    ]
    selection = r"model\.layers\.1\..*"
    spectrum = measure_spectrum(model, batches, params=selection, probes=1, steps=4,
                                per_layer=True, progress=False)  # fmt: skip
    names = [n for n, _ in model.named_parameters() if n.startswith("model.layers.1.") and
             n.endswith("proj.weight")]  # fmt: skip
    assert spectrum.metadata["clipped_fraction"] == clipped_fraction(model, names)
    assert spectrum.metadata["clipped_fraction"] > 0
    up = spectrum.blocks["kind.up_proj"].metadata["clipped_fraction"]
    assert up == clipped_fraction(model, ["model.layers.1.mlp.up_proj.weight"])
    assert up > spectrum.blocks["kind.q_proj"].metadata["clipped_fraction"]
    assert spectrum.metadata["bits"] == 2 and spectrum.metadata["quantizer"] == "seq"


@pytest.mark.parametrize(("name", "value"), [("probes", 0), ("steps", 0), ("trace", 2),
                                             ("top_k", -1)])  # fmt: skip
def test_bad_settings_raise(name, value):
    from tiny_models import build_tiny_model

    model = build_tiny_model("llama", layers=1)
    batches = [{"input_ids": torch.zeros(1, 4, dtype=torch.long)}]
    with pytest.raises(ValueError, match=name):
        measure_spectrum(model, batches, progress=False, **{name: value})

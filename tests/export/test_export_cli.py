"""``winq-export``: success prints the type table; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import pytest
from export_cases import quantized_llama, tiny_llama
from tiny_models import build_tiny_model

import winq
from winq.export.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, embedded_tokenizer):
    """Saved checkpoints (vocabulary 2048, the embedded tokenizer's, where GGUF needs it)."""
    root = tmp_path_factory.mktemp("ckpts")
    small = {"hidden": 32, "intermediate": 64, "vocab": 2048}
    paths = {
        "w4": quantized_llama("lsq", 4, **small),
        "fp": tiny_llama(**small),
        # Rows of 48 and 80 weights: neither Q4_0/Q5_0 (32) nor TQ2_0/Q2_K (256) divides them.
        "rows48": quantized_llama("lsq", 4, hidden=48, intermediate=80, vocab=2048),
        "qwen": winq.quantize_(build_tiny_model("qwen2"), winq.QuantConfig(bits=4)),
    }
    for name, model in paths.items():
        tokenizer = embedded_tokenizer if name != "qwen" else None
        winq.save(model, root / name, tokenizer)
        paths[name] = root / name
    return paths


def test_cli_writes_gguf_and_refuses_to_overwrite(tmp_path, checkpoints, capsys):
    out = tmp_path / "w4.gguf"
    assert main([str(checkpoints["w4"]), "--format", "gguf", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in table and "Q4_0" in table and "token_embd.weight" in table
    written = out.read_bytes()

    assert main([str(checkpoints["w4"]), "--format", "hf", "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already exists (pass --overwrite" in error
    assert out.read_bytes() == written
    argv = [str(checkpoints["w4"]), "--format", "gguf", "--gguf-type", "Q5_0", "--out", str(out)]
    assert main([*argv, "--overwrite", "--quiet"]) == 0
    assert out.read_bytes() != written and sorted(tmp_path.iterdir()) == [out]


BAD = [
    ("qwen", ["--format", "gguf"], "supports the llama architecture; checkpoint"),
    ("fp", ["--format", "packed"], "has no quantized layers: nothing to pack"),
    ("fp", ["--format", "gguf"], "has no quantized layers"),
    ("rows48", ["--format", "gguf"], "Q4_0 needs rows of a multiple of 32"),
    ("w4", ["--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
    ("w4", ["--format", "hf", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ("w4", ["--format", "packed", "--dtype", "float32"], "--dtype applies to hf and gguf"),
    ("w4", ["--format", "hf", "--gguf-type", "Q4_0"], "--gguf-type applies to --format gguf"),
    (None, ["--format", "hf"], "does not exist"),
]


@pytest.mark.parametrize(("checkpoint", "flags", "message"), BAD,
                         ids=[f"{c}-{' '.join(f)}" for c, f, _ in BAD])  # fmt: skip
def test_cli_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path, checkpoints, capsys, checkpoint, flags, message
):
    source = checkpoints[checkpoint] if checkpoint else tmp_path / "missing"
    out = tmp_path / "export"
    assert main([str(source), *flags, "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("winq-export: error: ") and error.count("\n") == 1
    assert message in error
    assert list(tmp_path.iterdir()) == []

"""What an export wrote: one record per tensor, the files and their sizes, printable as a table.

Each record says how far the stored tensor may be from winq's ``Q(W)``: ``max_rel_error`` is the
largest relative deviation of a stored quantized weight from ``Q(W)`` (0 where the export is
bit-exact: packed codes, float32; the dtype's rounding for ``hf`` in bfloat16/float16; the
float16 rounding of the block scale for GGUF), and None for tensors that are not quantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExportError", "ExportReport", "TensorRecord"]


class ExportError(ValueError):
    """A model, option or destination the export cannot handle, with a one-line reason."""


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of an export.

    Attributes:
        name: the tensor's name in the exported file.
        source: the parameter (or module) it comes from in the model.
        shape: its logical shape (weights: (out, in)).
        type: how it is stored: a GGUF type (``Q4_0``, ``TQ2_0``, ``Q2_K``, ``F32``, ...), a
            torch dtype name, or ``codes:B`` for B-bit packed codes.
        nbytes: bytes of tensor data.
        max_rel_error: largest ``|stored - Q(W)| / |Q(W)|`` over the tensor's quantized
            weights; None for a tensor that is not a quantized weight.
    """

    name: str
    source: str
    shape: tuple[int, ...]
    type: str
    nbytes: int
    max_rel_error: float | None = None


@dataclass
class ExportReport:
    """The result of :func:`winq.export.export`.

    Attributes:
        format: ``"hf"``, ``"packed"`` or ``"gguf"``.
        path: the folder or file written.
        tensors: one record per stored tensor, in file order.
        files: size in bytes of every file written, by path relative to ``path`` (the file
            itself for GGUF: ``{"": size}``).
    """

    format: str
    path: Path
    tensors: list[TensorRecord] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def types(self) -> dict[str, str]:
        """Tensor name -> storage type."""
        return {record.name: record.type for record in self.tensors}

    def table(self) -> str:
        """A fixed-width table: tensor, shape, type, bytes, max relative error of Q(W)."""
        header = ("tensor", "shape", "type", "bytes", "max rel. error vs Q(W)")
        rows = [
            (
                r.name,
                "×".join(str(d) for d in r.shape),
                r.type,
                f"{r.nbytes:,}",
                "-" if r.max_rel_error is None else f"{r.max_rel_error:.1e}",
            )
            for r in self.tensors
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = []
        for row in [header, *rows]:
            cells = [
                cell.rjust(width) if i == 3 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines.append(f"total {self.total_bytes:,} bytes in {len(self.files)} file(s): {self.path}")
        return "\n".join(lines)

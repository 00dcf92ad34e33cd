"""What every winq command shares: one-line errors, exit codes, argument types.

Exit codes: 0 success, 1 a runtime failure (a corrupt file met mid-run, a non-finite loss),
2 a usage error (a bad flag value, a missing or wrong input), 130 interrupted (Ctrl-C).
Nothing reaches the user as a traceback unless ``WINQ_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence

__all__ = [
    "BITS_CHOICES",
    "ArgumentParser",
    "RuntimeFailure",
    "UsageError",
    "bits_value",
    "finite_float",
    "fraction",
    "guarded_main",
    "nonnegative_int",
    "positive_float",
    "positive_int",
]


class UsageError(Exception):
    """A bad input the user can fix: exit code 2."""


class RuntimeFailure(Exception):
    """A failure while doing the work: exit code 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``) and exit code 2, no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _number(kind: type, text: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


BITS_CHOICES = ("1", "1.58", "2", "3", "4", "16")  # --bits as the commands show it


def bits_value(text: str) -> float | int:
    """``--bits``: a bit width of :data:`winq.config.BITS` (``"ternary"`` too), canonical."""
    from winq.config import parse_bits

    try:
        return parse_bits(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(BITS_CHOICES)}, got {text}"
        ) from None


def nonnegative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    value = _number(float, text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def guarded_main(
    prog: str,
    run: Callable[[Sequence[str] | None], int | None],
    usage_errors: tuple[type[BaseException], ...]
    | Callable[[], tuple[type[BaseException], ...]] = (),
) -> Callable[[Sequence[str] | None], int]:
    """Wrap a command's ``run(argv)`` so every failure becomes one line on stderr.

    Args:
        prog: the command name used as the message prefix.
        run: the command; returns an exit code or None for 0.
        usage_errors: exception types reported as usage errors (exit 2) besides UsageError,
            or a function returning them, called only once an exception is raised (so that
            their modules, which may import torch, are not imported for ``--help`` or a bad
            flag).
    """

    def main(argv: Sequence[str] | None = None) -> int:
        try:
            try:
                code = run(argv)
            except Exception as e:
                types = usage_errors() if callable(usage_errors) else usage_errors
                if types and not isinstance(e, UsageError) and isinstance(e, types):
                    raise UsageError(str(e)) from e
                raise
            return 0 if code is None else int(code)
        except SystemExit as e:  # argparse's exits (0 for --help, 2 for errors)
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        except KeyboardInterrupt:
            sys.stderr.write(f"{prog}: interrupted\n")
            return 130
        except UsageError as e:
            _report(prog, e)
            return 2
        except BrokenPipeError:
            return 1
        except Exception as e:  # the one place that turns errors into exit codes
            _report(prog, e, unexpected=not isinstance(e, RuntimeFailure))
            return 1

    return main


def _report(prog: str, error: BaseException, unexpected: bool = False) -> None:
    if os.environ.get("WINQ_DEBUG"):
        traceback.print_exc()
    prefix = f"{type(error).__name__}: " if unexpected else ""
    sys.stderr.write(f"{prog}: error: {prefix}{one_line(error)}\n")

"""The ``hermes`` command: one entry point dispatching to per-layer subcommand modules."""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path
from typing import Callable

from ..errors import HermesError

#: Modules of ``hermes.cli`` that add subcommands; each has ``register(subparsers)``.
SUBCOMMAND_MODULES = ("engine", "device", "demo", "bench", "serve", "rtl")
#: Exit status of a run that failed on an error of Hermes itself (not of the user's input).
INTERNAL_ERROR_STATUS = 70


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``hermes exec: error: ...``)."""

    def error(self, message: str) -> "None":  # type: ignore[override]
        """Print ``message`` as one line and exit with status 2 (argparse's usage status)."""
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
        raise SystemExit(2)


def one_line(text: str) -> str:
    """``text`` with its lines joined by ``"; "`` (a CLI error is one line)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for integers (decimal or 0x hex) in ``lo..hi`` (either may be open)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"{lo if lo is not None else ''}..{hi if hi is not None else ''}"
            raise argparse.ArgumentTypeError(f"{value} is out of range {span}")
        return value
    parse.__name__ = "integer"
    return parse


def engine_arg(text: str) -> str:
    """An argparse ``type`` for an engine name (checked against the engines this build has)."""
    from ..errors import UsageError
    from ..lib.api import check_engine
    try:
        return check_engine(text) or text
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def budget_arg(text: str) -> int:
    """An argparse ``type`` for an instruction budget (the range every backend accepts)."""
    from ..lib.api import OPTION_RANGES
    return int_arg(*OPTION_RANGES["budget"])(text)


def load_program(path: str) -> "object":
    """``Program.from_file(path)``, with the path in front of any error's message."""
    from ..engine import Program
    try:
        return Program.from_file(path)
    except HermesError as exc:
        if Path(path).name in str(exc):  # the message already says which file
            raise
        raise HermesError(f"{path}: {exc}") from None


def write_output(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; an OSError names the path even when the write (not the
    open) failed."""
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        raise


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = Parser(prog="hermes", description="Hermes eBPF accelerator tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _fail(text: str, status: int = 1) -> int:
    print(f"hermes: {one_line(text)}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status. Every failure is one line on stderr: a HermesError
    or OSError says what was wrong, anything else is reported as an internal error with its
    type; no traceback reaches the user."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (one line already printed) or --help
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return guarded(lambda: args.func(args))


def guarded(command: Callable[[], "int | None"]) -> int:
    """Run ``command``; its status, or 1 line on stderr and a non-zero status for any failure."""
    try:
        return int(command() or 0)
    except HermesError as exc:
        return _fail(f"error: {str(exc) or type(exc).__name__}")
    except BrokenPipeError:
        os._exit(0)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "")
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"error: {exc.strerror or exc}{f' ({name})' if name else ''}{where}")
    except KeyboardInterrupt:
        return 130
    except MemoryError:
        return _fail("error: out of memory", INTERNAL_ERROR_STATUS)
    except Exception as exc:  # noqa: BLE001 - the last guard: one line, never a traceback
        return _fail(f"internal error ({type(exc).__name__}): {str(exc) or 'no message'}; please "
                     "report it", INTERNAL_ERROR_STATUS)


if __name__ == "__main__":
    sys.exit(main())

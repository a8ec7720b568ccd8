"""The ``hermes`` command: one entry point dispatching to per-layer subcommand modules."""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..engine.memory import MAX_ARGS
from ..engine.program import Program
from ..errors import HermesError

#: Modules of ``hermes.cli`` that add subcommands; each has ``register(subparsers)``.
SUBCOMMAND_MODULES = ("engine", "device", "toolchain", "demo", "bench", "serve", "rtl")
#: Exit status of a run that failed on an error of Hermes itself (not of the user's input).
INTERNAL_ERROR_STATUS = 70
#: Exit status after Ctrl-C (128 + SIGINT, what shells report for a command killed by it).
INTERRUPTED_STATUS = 130
#: Seconds a command interrupted by Ctrl-C has to stop its work before the process exits anyway
#: (``hermes run`` must be gone within 1 s of Ctrl-C; specs/run-contract.md section 6).
INTERRUPT_GRACE = 0.6
#: Run arguments ``--arg`` may give (r3, r4, r5 at entry).
MAX_RUN_ARGS = MAX_ARGS

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``hermes exec: error: ...``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
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


def executor_arg(text: str) -> str:
    """An argparse ``type`` for an executor name (``interp``, ``jit``)."""
    from ..engine import check_executor
    from ..errors import UsageError
    try:
        return check_executor(text) or text
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_executor_option(p: argparse.ArgumentParser, help: str) -> None:
    """``--executor NAME`` on ``p`` (``args.executor``), with ``--engine`` as its hidden
    deprecated spelling (``--engines`` counts the device's command processors)."""
    p.add_argument("--executor", type=executor_arg, metavar="NAME", help=help)
    p.add_argument("--engine", dest="executor", type=executor_arg, help=argparse.SUPPRESS)


def run_arg(text: str) -> int:
    """An argparse ``type`` for a run argument: a 64-bit value, decimal or 0x hex; a negative one
    is taken modulo 2^64 as the library does."""
    return int_arg(-(1 << 63), (1 << 64) - 1)(text) % (1 << 64)


def seconds_arg(text: str) -> float:
    """An argparse ``type`` for a positive number of seconds (``--timeout 0.5``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def budget_arg(text: str) -> int:
    """An argparse ``type`` for an instruction budget (the range every backend accepts)."""
    from ..lib.api import OPTION_RANGES
    return int_arg(*OPTION_RANGES["budget"])(text)


def load_program(path: str, function: str | None = None, section: str | None = None
                 ) -> Program:
    """``read_program(path)``, or with ``function``/``section`` the entry of that name of the
    ELF object ``path`` (``load_elf``); the path is in front of any error's message."""
    from ..engine.elf import load_elf
    from ..engine.frontends import read_program
    try:
        if function is None and section is None:
            return read_program(path)
        data = Path(path).read_bytes()
        if data[:4] != b"\x7fELF":
            option = "--function" if function is not None else "--section"
            raise HermesError(f"{path}: {option} needs an ELF object (.o), and this file is not "
                              "one")
        return load_elf(data, function=function, section=section)
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


def guarded(command: Callable[[], int | None]) -> int:
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
        return _fail("interrupted", INTERRUPTED_STATUS)
    except MemoryError:
        return _fail("error: out of memory", INTERNAL_ERROR_STATUS)
    except Exception as exc:  # noqa: BLE001 - the last guard: one line, never a traceback
        return _fail(f"internal error ({type(exc).__name__}): {str(exc) or 'no message'}; please "
                     "report it", INTERNAL_ERROR_STATUS)


def interruptible(work: Callable[[], T], stop: Callable[[], None]) -> T:
    """Run ``work`` in a worker thread while this (the main) thread waits for Ctrl-C.

    The main thread stays responsive whatever ``work`` is blocked in (native JIT code, a device
    wait). On Ctrl-C, ``stop()`` is called (e.g. setting the run's ``Cancel``) and ``work`` gets
    ``INTERRUPT_GRACE`` seconds to unwind (the device aborts the run and closes); then
    ``KeyboardInterrupt`` is raised, or, when ``work`` is still stuck, the process exits at once
    with ``INTERRUPTED_STATUS``. ``work``'s own exception is re-raised here.
    """
    results: list[T] = []
    errors: list[BaseException] = []
    # An Event, not Thread.join: a KeyboardInterrupt that cuts join() short can leave the
    # thread marked as stopped while it still runs (CPython's join releases the lock it was
    # waiting for), and the grace wait below would then not wait at all.
    done = threading.Event()

    def target() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="hermes-command", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        stop()
        if not done.wait(INTERRUPT_GRACE):
            _fail(f"interrupted (the work did not stop within {INTERRUPT_GRACE} s; exiting "
                  "without cleaning up)")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED_STATUS)
        raise
    if errors:
        raise errors[0]
    return results[0]


if __name__ == "__main__":
    sys.exit(main())

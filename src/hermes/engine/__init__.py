"""The eBPF engine: instruction set, programs, load-time checks and the engines that run them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import Cancelled, ExecutionError, ProgramError, UsageError
from .cancel import Cancel
from .helpers import CONFORMANCE_HELPERS, DEVICE_HELPERS, Helper, HelperRegistry
from .memory import DATA_BASE
from .program import Program

#: Instructions a run may execute unless the caller sets another budget.
DEFAULT_BUDGET = 1_000_000_000
#: Engine used when the caller names none (the interpreter stays the reference).
DEFAULT_ENGINE = "jit"


@dataclass
class RunResult:
    """Outcome of one run: r0, the data window after the run, instructions executed, and what
    the program's helpers recorded (declared output length, printed text) and its run time."""

    return_value: int
    memory: bytearray | memoryview
    instructions: int
    #: Length declared with ``hermes_set_output``; None when the program declared none.
    output_length: int | None = None
    #: Text printed with ``bpf_trace_printk``, at most ``helpers.TRACE_LIMIT`` bytes.
    trace: bytes = b""
    #: Printed bytes dropped past ``TRACE_LIMIT``.
    trace_dropped: int = 0
    #: Nanoseconds the run itself took (``time.perf_counter_ns``), without loading.
    elapsed_ns: int = 0


class Executable(Protocol):
    """A program prepared for one engine; ``run`` may be called many times, from many threads."""

    program: Program

    def run(self, memory: "bytearray | memoryview | bytes | None" = None,
            budget: int | None = None, *, cancel: Cancel | None = None,
            length: int | None = None, args: "tuple[int, ...]" = ()) -> RunResult:
        """Run once with ``memory`` as the data window (mutated in place when writable):
        r1 = ``DATA_BASE``, r2 = ``length`` (default the window's length), r3..r5 = ``args``.
        Raises ``Cancelled`` soon after ``cancel`` is set (before or during the run)."""


def check(program: Program, helpers: HelperRegistry | None = None) -> None:
    """The load contract: raise ``VerifierError`` (index, instruction, reason) when
    ``program`` may not run with ``helpers`` (default ``DEVICE_HELPERS``).

    Every engine runs exactly this check when it loads a program, so a program is accepted or
    refused, with the same error, whichever engine or backend runs it.
    """
    from .verifier import verify
    verify(program, helpers if helpers is not None else DEVICE_HELPERS)


def engine_names() -> list[str]:
    """Names accepted by ``engine=``."""
    return list(_engines())


def _engines() -> dict:
    from .interp import Interpreter
    engines = {"interp": Interpreter}
    try:
        from .jit import JitExecutable
    except ImportError:  # the JIT lands with its own issue; the interpreter is always there
        pass
    else:
        engines["jit"] = JitExecutable
    return engines


def load(program: Program, *, helpers: HelperRegistry | None = None, engine: str | None = None,
         budget: int | None = None) -> Executable:
    """Check ``program`` against ``helpers`` (``check``) and prepare it for ``engine``
    (default ``DEFAULT_ENGINE``).

    Raises ``VerifierError`` (a ``ProgramError``) when the program cannot be run.
    """
    name = engine or DEFAULT_ENGINE
    engines = _engines()
    if name not in engines:
        raise UsageError(f"unknown engine {name!r}; choose one of {', '.join(engines)}")
    return engines[name](program, helpers=helpers if helpers is not None else DEVICE_HELPERS,
                         budget=budget if budget is not None else DEFAULT_BUDGET)


def run(program: Program, memory: "bytearray | memoryview | bytes | None" = None, *,
        helpers: HelperRegistry | None = None, budget: int | None = None,
        engine: str | None = None, cancel: Cancel | None = None, length: int | None = None,
        args: "tuple[int, ...]" = ()) -> RunResult:
    """Load ``program`` and run it once with ``memory`` as its data window.

    r1 = ``DATA_BASE``, r2 = ``length`` (default ``len(memory)``), r3..r5 = ``args`` (at most
    three integers, modulo 2^64). A writable ``memory`` (bytearray, writable memoryview) is
    changed in place; ``bytes`` are copied first. ``RunResult.memory`` is the window after the
    run. Setting ``cancel`` from another thread stops the run with ``Cancelled``.
    """
    return load(program, helpers=helpers, engine=engine, budget=budget).run(
        memory, budget, cancel=cancel, length=length, args=args)


__all__ = [
    "CONFORMANCE_HELPERS", "Cancel", "Cancelled", "DATA_BASE", "DEFAULT_BUDGET", "DEVICE_HELPERS",
    "ExecutionError",
    "Executable", "Helper", "HelperRegistry", "Program", "ProgramError", "RunResult",
    "check", "engine_names", "load", "run",
]

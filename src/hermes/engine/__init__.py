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
    """Outcome of one run: r0, the input memory after the run, instructions executed."""

    return_value: int
    memory: bytearray | memoryview
    instructions: int


class Executable(Protocol):
    """A program prepared for one engine; ``run`` may be called many times, from many threads."""

    program: Program

    def run(self, memory: "bytearray | memoryview | bytes | None" = None,
            budget: int | None = None, *, cancel: Cancel | None = None) -> RunResult:
        """Run once against ``memory`` (mutated in place when writable); raises ``Cancelled``
        soon after ``cancel`` is set (before or during the run)."""


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
    """Check ``program`` against ``helpers`` and prepare it for ``engine`` (default interpreter).

    Raises ``ProgramError`` (or its subclass ``VerifierError``) when the program cannot be run.
    """
    name = engine or DEFAULT_ENGINE
    engines = _engines()
    if name not in engines:
        raise UsageError(f"unknown engine {name!r}; choose one of {', '.join(engines)}")
    return engines[name](program, helpers=helpers if helpers is not None else DEVICE_HELPERS,
                         budget=budget if budget is not None else DEFAULT_BUDGET)


def run(program: Program, memory: "bytearray | memoryview | bytes | None" = None, *,
        helpers: HelperRegistry | None = None, budget: int | None = None,
        engine: str | None = None, cancel: Cancel | None = None) -> RunResult:
    """Load ``program`` and run it once with ``memory`` as its input region (r1, r2).

    A writable ``memory`` (bytearray, writable memoryview) is changed in place; ``bytes`` are
    copied first. ``RunResult.memory`` is the region after the run. Setting ``cancel`` from
    another thread stops the run with ``Cancelled``.
    """
    return load(program, helpers=helpers, engine=engine, budget=budget).run(memory, budget,
                                                                            cancel=cancel)


__all__ = [
    "CONFORMANCE_HELPERS", "Cancel", "Cancelled", "DATA_BASE", "DEFAULT_BUDGET", "DEVICE_HELPERS",
    "ExecutionError",
    "Executable", "Helper", "HelperRegistry", "Program", "ProgramError", "RunResult",
    "engine_names", "load", "run",
]

"""The eBPF engine: instruction set, programs, load-time checks and the engines that run them."""
from __future__ import annotations

import warnings
from typing import Protocol, TypeVar, runtime_checkable

from ..errors import Cancelled, ExecutionError, ProgramError, UsageError
from .cancel import Cancel
from .frontends import read_program  # also gives Program its from_* spellings
from .helpers import CONFORMANCE_HELPERS, DEVICE_HELPERS, Helper, HelperRegistry
from .memory import DATA_BASE
from .program import Program
from .result import RunResult
from .verifier import VerifierInfo, verify

#: Instructions a run may execute unless the caller sets another budget.
DEFAULT_BUDGET = 1_000_000_000
#: Executor used when the caller names none (the fastest of them).
DEFAULT_EXECUTOR = "jit"


@runtime_checkable
class Executable(Protocol):
    """A program prepared for one engine; ``run`` may be called many times, from many threads."""

    program: Program

    def run(self, memory: bytearray | memoryview | bytes | None = None,
            budget: int | None = None, *, cancel: Cancel | None = None,
            length: int | None = None, args: tuple[int, ...] = ()) -> RunResult:
        """Run once with ``memory`` as the data window (mutated in place when writable):
        r1 = ``DATA_BASE``, r2 = ``length`` (default the window's length), r3..r5 = ``args``.
        Raises ``Cancelled`` soon after ``cancel`` is set (before or during the run)."""


def check(program: Program, helpers: HelperRegistry | None = None) -> VerifierInfo:
    """The load pipeline: ``program`` (already decoded and structurally validated by
    ``Program``) verified against ``helpers`` (default ``DEVICE_HELPERS``); returns what the
    verifier learnt (functions, call targets, depth), or raises ``VerifierError`` (index,
    instruction, reason).

    ``load`` runs it once and hands the result to the executor it builds, so a program is
    accepted or refused, with the same error, whichever executor or backend runs it.
    """
    return verify(program, helpers if helpers is not None else DEVICE_HELPERS)


def executor_names() -> list[str]:
    """Names accepted by ``executor=``."""
    return list(_executors())


def _executors() -> dict:
    from .interp import Interpreter
    from .jit import JitExecutable
    return {"interp": Interpreter, "jit": JitExecutable}


_Name = TypeVar("_Name")


def executor_option(executor: _Name, engine: _Name, stacklevel: int = 3) -> _Name:
    """The executor a caller named with ``executor=`` or with its deprecated spelling ``engine=``
    (which warns: ``engines=`` is the device's count of command processors, a different thing).

    ``stacklevel`` points the ``DeprecationWarning`` at the caller's caller (the user's line).
    """
    if engine is None:
        return executor
    warnings.warn("engine= is deprecated; use executor= (the execution back-end: "
                  f"{', '.join(executor_names())})", DeprecationWarning, stacklevel=stacklevel)
    if executor is not None and executor != engine:
        raise UsageError(f"executor={executor!r} and engine={engine!r} disagree; give executor= "
                         "only")
    return engine


def check_executor(name: object) -> str | None:
    """``name`` when it is None or an executor ``executor_names`` has, else ``UsageError``."""
    if name is None:
        return None
    if not isinstance(name, str) or name not in executor_names():
        raise UsageError(f"unknown executor {name!r}; choose one of "
                         f"{', '.join(executor_names())}")
    return name


def load(program: Program, *, helpers: HelperRegistry | None = None,
         executor: str | None = None, budget: int | None = None,
         engine: str | None = None) -> Executable:
    """Check ``program`` against ``helpers`` (``check``) and prepare it for ``executor``
    (default ``DEFAULT_EXECUTOR``, the JIT); ``engine=`` is the deprecated spelling.

    Raises ``VerifierError`` (a ``ProgramError``) when the program cannot be run.
    """
    name = check_executor(executor_option(executor, engine)) or DEFAULT_EXECUTOR
    helpers = helpers if helpers is not None else DEVICE_HELPERS
    return _executors()[name](program, helpers=helpers, checked=check(program, helpers),
                              budget=budget if budget is not None else DEFAULT_BUDGET)


def run(program: Program, memory: bytearray | memoryview | bytes | None = None, *,
        helpers: HelperRegistry | None = None, budget: int | None = None,
        executor: str | None = None, cancel: Cancel | None = None, length: int | None = None,
        args: tuple[int, ...] = (), engine: str | None = None) -> RunResult:
    """Load ``program`` and run it once with ``memory`` as its data window.

    r1 = ``DATA_BASE``, r2 = ``length`` (default ``len(memory)``), r3..r5 = ``args`` (at most
    three integers, modulo 2^64). A writable ``memory`` (bytearray, writable memoryview) is
    changed in place; ``bytes`` are copied first. ``RunResult.memory`` is the window after the
    run. Setting ``cancel`` from another thread stops the run with ``Cancelled``. ``executor``
    is as in ``load`` (``engine=`` its deprecated spelling).
    """
    executor = executor_option(executor, engine)
    return load(program, helpers=helpers, executor=executor, budget=budget).run(
        memory, budget, cancel=cancel, length=length, args=args)


__all__ = [
    "CONFORMANCE_HELPERS", "Cancel", "Cancelled", "DATA_BASE", "DEFAULT_BUDGET", "DEVICE_HELPERS",
    "ExecutionError",
    "Executable", "Helper", "HelperRegistry", "Program", "ProgramError", "RunResult",
    "read_program",
    "check", "check_executor", "executor_names", "executor_option", "load", "run",
]

#: Names spelt with "engine" for the execution back-end, kept one release with a warning.
_RENAMED = {"DEFAULT_ENGINE": "DEFAULT_EXECUTOR", "engine_names": "executor_names"}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        warnings.warn(f"hermes.engine.{name} is deprecated; use {_RENAMED[name]}",
                      DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

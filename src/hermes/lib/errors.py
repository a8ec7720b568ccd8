"""Turning driver OSErrors and engine errors into the one HermesError hierarchy of the library."""
from __future__ import annotations

import errno as _errno

from .. import regs
from ..engine.memory import MAX_CALL_DEPTH, Segment, out_of_bounds
from ..errors import (
    Cancelled,
    DeviceBusy,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    ExecutionError,
    ExecutionFailed,
    HermesError,
    ProgramRejected,
    RunTimeout,
    SlotsExhausted,
)


def run_timeout(timeout: float, pc: int | None = None) -> RunTimeout:
    """The error of a run stopped by its ``timeout`` (the same text on every backend)."""
    return RunTimeout(f"the run did not finish within its {timeout:g} s timeout and was "
                      "stopped", timeout, pc, errno=_errno.ETIMEDOUT)


def run_cancelled(pc: int | None = None, instructions: int | None = None) -> Cancelled:
    """The error of a run stopped by its Cancel, a cancelled task or a KeyboardInterrupt."""
    return Cancelled("cancelled", "the run was cancelled", pc, instructions=instructions)


def with_trace(exc: HermesError, source: object) -> HermesError:
    """``exc`` carrying the text the failed run printed: ``source`` is the engine's error (a
    ``str`` trace) or the driver's ``RunOutcome`` (bytes, decoded as a Result's trace is)."""
    if not isinstance(exc, ExecutionError):   # a load error: nothing ran, nothing printed
        return exc
    text = getattr(source, "trace", "")
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    exc.trace = text
    exc.trace_dropped = getattr(source, "trace_dropped", 0)
    return exc


def from_execution_error(exc: ExecutionError) -> ExecutionFailed:
    """An engine ``ExecutionError`` as the ``ExecutionFailed`` subclass of its kind
    (``BudgetExceeded``, ``Cancelled``...) with a device-style error code."""
    if isinstance(exc, ExecutionFailed) and exc.code is not None:
        return exc
    if exc.kind == "cancelled":
        return with_trace(run_cancelled(exc.pc, exc.instructions), exc)  # type: ignore
    return with_trace(ExecutionFailed.of_kind(  # type: ignore[return-value]
        exc.kind, exc.message, exc.pc, code=regs.ErrorKind.of(exc.kind).pack(exc.pc),
        address=exc.address, size=exc.size, regions=exc.regions, instructions=exc.instructions,
        write=exc.write, depth=exc.depth), exc)


def run_failure(code: int, *, outcome: object = None, window: int = 0, budget: int | None = None,
                segments: tuple[Segment, ...] = ()) -> HermesError:
    """The library error of a device's status-0x05 run error ``code``, worded as the CPU
    backend words it: out-of-bounds faults rebuilt from the run context's fault fields
    (``outcome``), the mapped regions from the run's ``window`` and the program's ``segments``,
    with the text the run printed (``outcome.trace``).
    """
    return with_trace(_run_failure(code, outcome, window, budget, segments), outcome)


def _run_failure(code: int, outcome: object, window: int, budget: int | None,
                 segments: tuple[Segment, ...]) -> HermesError:
    from ..driver import decode_error_code, describe_error_code
    kind, pc = decode_error_code(code)
    insns = getattr(outcome, "instructions", None)
    if kind is regs.ErrorKind.LOAD:
        return ProgramRejected(f"the device could not load the program: "
                               f"{describe_error_code(code)}", pc, code=code)
    if kind is regs.ErrorKind.OUT_OF_BOUNDS and getattr(outcome, "fault_size", None):
        return out_of_bounds(pc, outcome.fault_address, outcome.fault_size,  # type: ignore
                             bool(outcome.fault_write), window, segments,  # type: ignore
                             getattr(outcome, "fault_depth", None) or 0,
                             instructions=insns, cls=ExecutionFailed, code=code)
    if budget is None:
        budget = getattr(outcome, "budget", None)   # the device reports the budget it applied
    if kind is regs.ErrorKind.BUDGET and budget is not None:
        message = f"instruction budget of {budget} exhausted"
    elif kind is regs.ErrorKind.CALL_DEPTH:
        message = f"call depth limit of {MAX_CALL_DEPTH} frames exceeded"
    elif isinstance(kind, regs.ErrorKind):
        message = kind.text
    else:
        message = f"eBPF error of kind {code & 0xFF:#x}"
    # str(): the plain name, as every backend's ExecutionError.kind is.
    return ExecutionFailed.of_kind(str(kind), message, pc, code=code, instructions=insns)


def from_os_error(exc: OSError) -> HermesError:
    """The library exception for a driver ``OSError`` (keeps errno, status and error code)."""
    response = getattr(exc, "response", None)
    message = exc.strerror or str(exc)
    err = exc.errno
    status = response.status if response is not None else None
    if response is not None and response.status == regs.STATUS_EBPF_ERROR:
        return run_failure(response.value, outcome=getattr(exc, "outcome", None))
    if err == _errno.ECANCELED:
        return run_cancelled()
    cls = {_errno.ENOSPC: SlotsExhausted, _errno.ETIMEDOUT: DeviceTimeout,
           _errno.EBADE: DeviceProtocolError, _errno.EBUSY: DeviceBusy}.get(err or 0, DeviceError)
    if cls is DeviceError and err == _errno.EIO and "EHCMDDONE" in message:
        cls = DeviceProtocolError
    name = _errno.errorcode.get(err or 0)
    return cls(f"{message} ({name})" if name else message, err, status)

"""The device-independent library API: Device, Session, Result, and ``open`` with its backends."""
from __future__ import annotations

import abc
import errno
import functools
import importlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .. import regs
from ..engine import Cancel, Program, check_executor, executor_option, read_program
from ..engine.memory import run_args
from ..errors import DataTooLarge, DeviceError, ExecutionError, HermesError, UsageError
from .checks import check_buffer, check_int, check_size, writable_view
from .memory import (
    MAX_MEMORY,
    HostMemory,
    Memory,
    Range,
    RangeLike,
    read_window,
    window_of,
    window_spans,
)

#: What the library accepts as a program: a Program, its bytes (raw or ELF), or a file path.
ProgramLike = Program | bytes | bytearray | memoryview | str | os.PathLike
Buffer = bytes | bytearray | memoryview
T = TypeVar("T")

#: Ranges of the options every Hermes-like backend takes (``emu`` and ``cpu``), the Hermes
#: device's own: one MSI-X vector per engine besides the DMA channels' (``specs/device.md``),
#: slot sizes in 32-bit registers and multiples of 8, a 64-bit instruction budget.
OPTION_RANGES: dict[str, tuple[int, int]] = {
    "engines": (1, regs.MSIX_VECTORS - regs.XDMA_H2C_CHANNELS - regs.XDMA_C2H_CHANNELS),
    "program_slot_size": (8, 0xFFFF_FFF8),
    "data_slot_size": (8, 0xFFFF_FFF8),
    "budget": (1, 0xFFFF_FFFF_FFFF_FFFF),
}


def check_options(options: dict) -> None:
    """Check the options of ``OPTION_RANGES`` and ``executor`` (same rules and wording as the
    Hermes device model, so every backend refuses a bad value the same way)."""
    for name, value in options.items():
        if name == "executor":
            check_executor(value)
        elif name in OPTION_RANGES and not (name == "budget" and value is None):
            check_int(name, value, *OPTION_RANGES[name])
            if name.endswith("slot_size") and value % 8:
                raise UsageError(f"{name} must be a multiple of 8, got {value}")


def _elapsed_text(seconds: float) -> str:
    """``seconds`` in the unit that keeps it short (``3.1us``, ``12.0ms``, ``1.50s``)."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


@dataclass(frozen=True, init=False)
class Result:
    """Outcome of one run (``specs/run-contract.md`` section 4).

    ``return_value`` is r0 (any value; errors are exceptions, never r0), ``data`` the output
    bytes (a memoryview of the caller's buffer after ``out=``/``readinto``), ``instructions`` the
    instructions executed, ``elapsed`` the seconds the program ran on the engine, ``trace`` what
    it printed with ``bpf_trace_printk`` (``trace_dropped`` bytes past the limit were dropped),
    ``offset``/``index`` where a ``scan`` piece came from. The measurements (``instructions``,
    ``elapsed``) take no part in equality.
    """

    return_value: int
    data: bytes | memoryview
    instructions: int | None = field(default=None, compare=False)
    elapsed: float | None = field(default=None, compare=False)
    trace: str = ""
    offset: int | None = None
    index: int | None = None
    trace_dropped: int = 0

    def __init__(self, return_value: int, data: bytes | memoryview,
                 instructions: int | None = None, elapsed: float | None = None,
                 trace: str = "", offset: int | None = None, index: int | None = None,
                 trace_dropped: int = 0) -> None:
        # The dataclass's own __init__ of a frozen class sets each field through
        # object.__setattr__; stores into the instance dict cost a third of that, and every run
        # builds a Result.
        d = self.__dict__
        d["return_value"] = return_value
        d["data"] = data
        d["instructions"] = instructions
        d["elapsed"] = elapsed
        d["trace"] = trace
        d["offset"] = offset
        d["index"] = index
        d["trace_dropped"] = trace_dropped

    def __repr__(self) -> str:
        parts = [f"r0={self.return_value}", f"data={memoryview(self.data).nbytes} bytes"]
        if self.instructions is not None:
            parts.append(f"instructions={self.instructions}")
        if self.elapsed is not None:
            parts.append(f"elapsed={_elapsed_text(self.elapsed)}")
        if self.trace:
            parts.append(f"trace={len(self.trace)} chars")
        if self.trace_dropped:
            parts.append(f"trace_dropped={self.trace_dropped}")
        if self.index is not None:
            parts.append(f"index={self.index}")
        if self.offset is not None:
            parts.append(f"offset={self.offset}")
        return f"Result({', '.join(parts)})"


@dataclass(frozen=True, init=False)
class RunInfo:
    """What a backend reports of one run before the library reads the output."""

    return_value: int
    instructions: int | None
    output_length: int | None
    elapsed: float | None
    trace: str = ""
    trace_dropped: int = 0

    def __init__(self, return_value: int, instructions: int | None, output_length: int | None,
                 elapsed: float | None, trace: str = "", trace_dropped: int = 0) -> None:
        # Stores into the instance dict, as ``Result`` does (one per run).
        d = self.__dict__
        d["return_value"] = return_value
        d["instructions"] = instructions
        d["output_length"] = output_length
        d["elapsed"] = elapsed
        d["trace"] = trace
        d["trace_dropped"] = trace_dropped


class Deadline:
    """A run's ``timeout``: after ``timeout`` seconds (None: never) ``stop()`` is called once
    from a timer thread and ``expired`` becomes True; ``cancel()`` when the run is over."""

    def __init__(self, timeout: float | None, stop: Callable[[], object]):
        self.expired = False
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._fire, (stop,))
            self._timer.daemon = True
            self._timer.start()

    def _fire(self, stop: Callable[[], object]) -> None:
        self.expired = True
        stop()

    def cancel(self) -> None:
        """The run is over: the timer, if any, never fires after this returns."""
        if self._timer is not None:
            self._timer.cancel()


def check_limits(budget: object, timeout: object) -> None:
    """``UsageError`` unless ``budget`` is None or 1..2^64-1 and ``timeout`` None or > 0 s."""
    if budget is not None:
        check_int("budget", budget, *OPTION_RANGES["budget"])
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout > 0 or timeout != timeout:
            raise UsageError(f"timeout must be a number of seconds > 0, got {timeout!r}")


def check_cancel(cancel: object) -> Cancel | None:
    """``cancel`` when it is None or a ``hermes.Cancel``, else ``UsageError``."""
    if cancel is not None and not isinstance(cancel, Cancel):
        raise UsageError(f"cancel must be a hermes.Cancel, not {type(cancel).__name__}")
    return cancel


class Session(abc.ABC):
    """A user's hold on a device: at most one program and one data slot, like a driver file.

    ``load`` a program, ``write`` input into the data slot, ``run``, ``read`` output; repeat any
    step. Close (or use ``with``) to give the slots back. One session is used by one thread at a
    time; open one session per thread. The run rules (length, window, zeroing, output, limits,
    errors) are those of ``specs/run-contract.md``, identical on every backend: this class
    applies them, a backend supplies the transfers and the run itself.
    """

    def __init__(self) -> None:
        #: End of the furthest write since the previous run (None: nothing written since).
        self._written: int | None = None
        #: (length, size) of the previous run, reused when nothing was written since.
        self._last: tuple[int, int] | None = None
        self._loaded = False

    #: The device the session belongs to (set by the backend's constructor).
    _device: Device
    closed: bool = False

    @property
    def data_slot_size(self) -> int:
        """Bytes of this session's data slot (the device's ``data_slot_size``)."""
        return self._device.data_slot_size

    def _check_open(self) -> None:
        """``DeviceError`` when the device (``ENODEV``) or the session (``EBADF``) is closed."""
        self._device.check_open()
        if self.closed:
            raise DeviceError("the session is closed", errno.EBADF)

    # --- what a backend provides ------------------------------------------------------------------

    @abc.abstractmethod
    def _load(self, program: object) -> None:
        """Put ``program`` into the program slot (checked on the host before it is sent)."""

    @abc.abstractmethod
    def _write(self, view: memoryview, offset: int) -> None:
        """Copy all of ``view`` into the data slot at ``offset`` (bounds already checked)."""

    @abc.abstractmethod
    def _readinto(self, view: memoryview, offset: int) -> None:
        """Fill all of ``view`` from the data slot at ``offset`` (bounds already checked)."""

    def _read(self, size: int, offset: int) -> bytes:
        """``size`` bytes of the data slot at ``offset`` (bounds checked, ``size`` > 0). A
        backend that can produce ``bytes`` with one copy overrides this: through a bytearray
        it costs two, and fresh pages for both."""
        buf = bytearray(size)
        self._readinto(memoryview(buf), offset)
        return bytes(buf)

    @abc.abstractmethod
    def _execute(self, length: int, size: int, args: tuple[int, int, int], budget: int | None,
                 timeout: float | None, cancel: Cancel | None) -> RunInfo:
        """Run once on the window ``[0, size)`` of the data slot, input ``[0, length)``."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Stop this session's run in progress, from any thread (nothing when none runs)."""

    # --- the contract -----------------------------------------------------------------------------
    def load(self, program: ProgramLike) -> None:
        """Put ``program`` into this session's program slot (replacing the previous one).

        A program the load checks refuse raises ``ProgramError``/``VerifierError`` with the
        reason and instruction, the same on every backend.
        """
        self._check_open()
        self._load(program)
        self._loaded = True

    def _need_program(self, what: str) -> None:
        self._check_open()
        if not self._loaded:
            raise DeviceError(f"{what} before a program was loaded", errno.EBADFD)

    def _check_span(self, what: str, offset: int, n: int) -> None:
        limit = self.data_slot_size
        if offset + n > limit:
            raise DataTooLarge(f"{what} of {n} bytes at offset {offset} goes past the end of "
                               f"the data slot ({limit} bytes)", offset + n, limit)

    def write(self, data: Buffer, offset: int = 0) -> int:
        """Copy ``data`` into the data slot at ``offset``; returns the bytes written (all of
        them: a write past the slot is ``DataTooLarge``, nothing is truncated)."""
        view = check_buffer(data)
        check_size("offset", offset)
        self._need_program("write")
        self._check_span("write", offset, view.nbytes)
        self._write(view, offset)
        end = offset + view.nbytes
        self._written = end if self._written is None else max(self._written, end)
        return view.nbytes

    def read(self, size: int, offset: int = 0) -> bytes:
        """``size`` bytes of the data slot at ``offset`` (past the slot: ``DataTooLarge``)."""
        check_size("size", size)
        check_size("offset", offset)
        self._check_readable(offset, size)
        return self._read(size, offset) if size else b""

    def readinto(self, buffer: object, offset: int = 0) -> int:
        """Fill the writable ``buffer`` from the data slot at ``offset``; returns its length in
        bytes (past the slot: ``DataTooLarge``)."""
        view = writable_view(buffer, "buffer")
        check_size("offset", offset)
        self._check_readable(offset, view.nbytes)
        if view.nbytes:
            self._readinto(view, offset)
        return view.nbytes

    def _check_readable(self, offset: int, size: int) -> None:
        """The rules every read obeys: a program loaded, data written, within the slot."""
        self._need_program("read")
        if self._written is None and self._last is None:
            raise DeviceError("read before any data was written", errno.ENODATA)
        self._check_span("read", offset, size)

    def run(self, *, args: tuple | list = (), length: int | None = None,
            size: int | None = None, read: int | None = None, budget: int | None = None,
            timeout: float | None = None, cancel: Cancel | None = None,
            ranges: Sequence[RangeLike] | None = None) -> Result:
        """Run the program on the data window; returns the ``Result`` with the output.

        ``length`` (r2) defaults to the end of the furthest write since the previous run;
        when nothing was written since, the previous run's length and window are used again.
        ``size`` is the window (default ``length``; bytes ``length..size`` read as zero);
        ``read`` the output size (default: what the program declared, else ``length``).
        With ``ranges`` (``Device.memory`` regions, ``Range``s or (memory, offset, length)) the
        window is those ranges back to back instead of the data slot: ``size`` defaults to
        their total and ``length`` to ``size`` (rules: ``hermes.lib.memory``).
        Failures raise ``ExecutionFailed`` (``BudgetExceeded``, ``Cancelled``, ``RunTimeout``).
        """
        if ranges is not None:
            return self._run_ranges(ranges, args, length, size, read, budget, timeout, cancel)
        return self._run(args, length, size, read, budget, timeout, cancel, None)

    def _run_ranges(self, ranges: Sequence[RangeLike], args: tuple | list,
                    length: int | None, size: int | None, read: int | None,
                    budget: int | None, timeout: float | None,
                    cancel: Cancel | None) -> Result:
        """``run`` with a window made of device memory ranges."""
        regs3 = run_args(args)
        check_limits(budget, timeout)
        check_cancel(cancel)
        for name, value in (("length", length), ("size", size), ("read", read)):
            if value is not None:
                check_size(name, value)
        self._need_program("run")
        window = window_of(self._device, ranges)
        total = sum(r.length for r in window)
        for name, value in (("input", length), ("size", size)):
            if value is not None and value > total:
                raise DataTooLarge(f"{name} of {value} bytes is larger than the ranges' "
                                   f"window ({total} bytes)", value, total)
        size = total if size is None else size
        length = size if length is None else length
        if size < length:
            raise UsageError(f"size {size} is smaller than the input length {length}")
        if read is not None and read > size:
            raise DataTooLarge(f"read of {read} bytes is larger than the data window "
                               f"({size} bytes)", read, size)
        if cancel is not None and cancel.is_set():
            from .errors import run_cancelled
            raise run_cancelled()
        info = self._execute_ranges(window, length, size, regs3, budget, timeout, cancel)
        # The data slot took no part (or was only the staging copy): nothing in it to reuse.
        self._written = None
        self._last = None
        n = read if read is not None else (
            info.output_length if info.output_length is not None else length)
        out = bytearray(n)
        read_window(window, memoryview(out))
        return Result(info.return_value, bytes(out), info.instructions, info.elapsed,
                      info.trace, trace_dropped=info.trace_dropped)

    def _execute_ranges(self, window: list[Range], length: int, size: int,
                        args: tuple[int, int, int], budget: int | None,
                        timeout: float | None, cancel: Cancel | None) -> RunInfo:
        """Run on the checked ``window``. A backend whose device reads ranges itself overrides
        this; here the ranges are copied into the data slot, and the window back into them
        after the run (also a failed one: what the program stored stays)."""
        limit = self.data_slot_size
        if size > limit:
            raise DataTooLarge(f"a window of {size} bytes is larger than the data slot "
                               f"({limit} bytes) this backend runs ranges through", size, limit)
        # (an empty write still marks the slot written, which a driver file needs to run)
        self._write(memoryview(b""), 0)
        for r, at, n in window_spans(window, length):
            part = r.memory._host_view(r.offset, n)
            if part is None:
                part = memoryview(bytearray(n))
                r.memory._readinto(part, r.offset)
            self._write(part, at)
        try:
            info = self._execute(length, size, args, budget, timeout, cancel)
        except ExecutionError:
            self._copy_back(window, size)
            raise
        self._copy_back(window, size)
        return info

    def _copy_back(self, window: list[Range], size: int) -> None:
        for r, at, n in window_spans(window, size):
            part = r.memory._host_view(r.offset, n)
            if part is not None:
                self._readinto(part, at)   # straight into the region's bytes
                continue
            part = memoryview(bytearray(n))
            self._readinto(part, at)
            r.memory._write(part, r.offset)

    def _run(self, args: tuple | list, length: int | None, size: int | None,
             read: int | None, budget: int | None, timeout: float | None,
             cancel: Cancel | None, out: object) -> Result:
        regs3 = run_args(args)
        # Each check only for an argument given (this runs once per run).
        if budget is not None or timeout is not None:
            check_limits(budget, timeout)
        if cancel is not None:
            check_cancel(cancel)
        if length is not None:
            check_size("length", length)
        if size is not None:
            check_size("size", size)
        if read is not None:
            check_size("read", read)
        out_view = writable_view(out) if out is not None else None
        self._need_program("run")
        limit = self.data_slot_size
        if length is None:
            if self._written is not None:
                length = self._written
            elif self._last is not None:
                length, last_size = self._last
                size = last_size if size is None else size
            else:
                raise DeviceError("run before any data was written", errno.EBADFD)
        if length > limit:
            raise DataTooLarge(f"input of {length} bytes is larger than the data slot "
                               f"({limit} bytes)", length, limit)
        size = length if size is None else size
        if size < length:
            raise UsageError(f"size {size} is smaller than the input length {length}")
        if size > limit:
            raise DataTooLarge(f"size {size} is larger than the data slot ({limit} bytes)",
                               size, limit)
        if read is not None and read > size:
            raise DataTooLarge(f"read of {read} bytes is larger than the data window "
                               f"({size} bytes)", read, size)
        if cancel is not None and cancel.is_set():
            from .errors import run_cancelled
            raise run_cancelled()
        info = self._execute(length, size, regs3, budget, timeout, cancel)
        self._written = None
        self._last = (length, size)
        n = read if read is not None else (
            info.output_length if info.output_length is not None else length)
        if out_view is None:
            data: bytes | memoryview = self.read(n) if n else b""
        else:
            if n > out_view.nbytes:
                raise DataTooLarge(f"the output of {n} bytes does not fit the out buffer "
                                   f"({out_view.nbytes} bytes)", n, out_view.nbytes)
            data = out_view[:n]
            if n:
                self._readinto(data, 0)
        return Result(info.return_value, data, info.instructions, info.elapsed, info.trace,
                      None, None, info.trace_dropped)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the slots (idempotent)."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_guarded(session: Session, call: Callable[[], T]) -> T:
    """``call()``, aborting ``session``'s run when a KeyboardInterrupt cuts the wait short (the
    engine is freed before the interrupt propagates)."""
    try:
        return call()
    except KeyboardInterrupt:
        session.abort()
        raise


class Device(abc.ABC):
    """An eBPF-capable device (emulated Hermes device, CPU, ...): run programs on data.

    Thread-safe: ``run`` and ``session`` may be used from many threads at once. After
    ``close()`` every call raises ``DeviceError`` (errno ``ENODEV``) and runs in progress are
    aborted.
    """

    #: The spec the device was opened with (``"emu"``, ``"cpu"``, ``"vfio-user:/path"``...).
    spec: str = ""
    _closed: bool = False
    #: the threads of ``run_async``, made on its first call
    _async_pool: ThreadPoolExecutor | None = None

    @property
    @abc.abstractmethod
    def engines(self) -> int:
        """How many runs the device executes at the same time."""

    @property
    @abc.abstractmethod
    def data_slot_size(self) -> int:
        """Bytes of one data slot: the largest input, window and output of a run."""

    @abc.abstractmethod
    def info(self) -> dict:
        """Description of the device (geometry for a Hermes device; always ``data_slot_size``)."""

    @abc.abstractmethod
    def _session(self) -> Session:
        """A new backend session."""

    def check_open(self) -> None:
        """``DeviceError`` (``ENODEV``) once the device is closed."""
        if self._closed:
            raise DeviceError("device is closed", errno.ENODEV)

    def memory(self, size: int) -> Memory:
        """``size`` bytes of device memory, zeroed, that runs name in ``ranges=`` (closed with
        ``close()`` or the device; rules: ``hermes.lib.memory``)."""
        self.check_open()
        check_int("size", size, 1, MAX_MEMORY)
        return HostMemory(self, size)

    def session(self) -> Session:
        """A new session (owns no slot until it loads a program)."""
        self.check_open()
        s = self._session()
        with _SESSIONS_LOCK:
            self._live_sessions().add(s)
        return s

    def _live_sessions(self) -> weakref.WeakSet[Session]:
        live = self.__dict__.get("_sessions")
        if live is None:
            live = self.__dict__["_sessions"] = weakref.WeakSet()
        return live

    def close(self) -> None:
        """Release the device: runs in progress are aborted (subclasses extend this)."""
        self._closed = True
        with _SESSIONS_LOCK:
            live = list(self._live_sessions())
        for s in live:
            try:
                s.abort()
            except Exception:  # a session of a device that is going away: nothing to stop
                pass
        pool = getattr(self, "_async_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._async_pool = None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, program: ProgramLike) -> object:
        """``program`` in the form ``Session.load`` takes fastest (convert once, load many)."""
        self.check_open()
        return program

    def run(self, program: ProgramLike, data: Buffer = b"", *, args: tuple | list = (),
            size: int | None = None, read: int | None = None, out: object = None,
            budget: int | None = None, timeout: float | None = None,
            cancel: Cancel | None = None) -> Result:
        """Run ``program`` once on ``data`` (``specs/run-contract.md``).

        r2 = ``len(data)`` in bytes, r3..r5 = ``args``; the window is ``size`` bytes (default
        the input's; past the input it reads as zero). The output is ``read`` bytes, else the
        length the program declared with ``hermes_set_output``, else the input's length; with
        ``out=`` it lands in that writable buffer and ``Result.data`` is a view of it.
        """
        view = check_buffer(data)
        self.check_open()
        with self.session() as s:
            s.load(program)
            s.write(view)
            return s._run(args, view.nbytes, size, read, budget, timeout, cancel, out)

    def map(self, program: ProgramLike, buffers: Iterable[Buffer], *, args: tuple | list = (),
            size: int | None = None, read: int | None = None, budget: int | None = None,
            timeout: float | None = None, workers: int | None = None) -> Iterator[Result]:
        """Run ``program`` on every buffer, keeping all engines busy; results in input order.

        Each item is a run of its own with the options of ``run`` (its window zeroed past its
        input, so an item never sees another's bytes). ``workers`` threads (default: one per
        engine) each open one session; a worker that cannot get slots drops out, and the map
        fails only when none can. Lazy like ``map``: work starts when iteration does; a failed
        item raises when its result is reached.
        """
        run_args(args)
        check_limits(budget, timeout)
        if workers is not None:
            check_int("workers", workers, 1, 1024)
        prepared = self.prepare(program)
        nworkers = workers or self.engines
        options = {"args": args, "size": size, "read": read, "budget": budget,
                   "timeout": timeout}
        return self._map(prepared, iter(buffers), options, nworkers)

    def scan(self, program: ProgramLike, source: object, *, piece_size: int | None = None,
             record: int | None = None, delimiter: bytes | None = None,
             args: tuple | list = (), size: int | None = None, read: int | None = None,
             budget: int | None = None, timeout: float | None = None,
             workers: int | None = None, progress: Callable[[int, int | None], None] | None
             = None, reduce: Callable[[object, Result], object] | None = None,
             initial: object = None) -> object:
        """Run ``program`` over a source larger than a slot, piece by piece: ``Result``s in
        source order with ``offset``/``index``, or their ``reduce`` (section 8 of
        ``specs/run-contract.md``; ``hermes.lib.pieces.scan``)."""
        from . import pieces
        return pieces.scan(self, program, source, piece_size=piece_size, record=record,
                           delimiter=delimiter, args=args, size=size, read=read, budget=budget,
                           timeout=timeout, workers=workers, progress=progress, reduce=reduce,
                           initial=initial)


    def _map(self, prepared: object, items: Iterator[Buffer], options: dict,
             nworkers: int) -> Iterator[Result]:
        return _MapScheduler(self, prepared, items, options, nworkers).results()

    async def run_async(self, program: ProgramLike, data: Buffer = b"", *,
                        args: tuple | list = (), size: int | None = None,
                        read: int | None = None, budget: int | None = None,
                        timeout: float | None = None) -> Result:
        """``run`` without blocking the event loop (in the device's own thread pool).

        Cancelling the task aborts the run on the device; the task raises
        ``asyncio.CancelledError`` once the engine is free again (at most ``ABORT_WAIT`` s).
        """
        self.check_open()
        pool = getattr(self, "_async_pool", None)
        if pool is None:
            with _POOL_LOCK:
                pool = getattr(self, "_async_pool", None)
                if pool is None:
                    pool = ThreadPoolExecutor(self.engines, thread_name_prefix="hermes-async")
                    self._async_pool = pool
        import asyncio  # only async users pay for importing it
        cancel = Cancel()
        future = asyncio.wrap_future(pool.submit(functools.partial(
            self.run, program, data, args=args, size=size, read=read, budget=budget,
            timeout=timeout, cancel=cancel)))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            # The engine is free once the aborted run has returned: wait for it (bounded).
            await asyncio.wait({future}, timeout=ABORT_WAIT)
            if future.done() and not future.cancelled():
                future.exception()  # the run's Cancelled: retrieved, superseded by ours
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}>"


class _MapScheduler:
    """One ``Device.map``: worker threads run the items, the consumer yields results in order.

    Rules (every field below is read and written under ``cond``):

    - Each worker opens one session (one engine's worth of slots) and loads the program once,
      then keeps it for the whole map. A worker that cannot (e.g. no free slot) records its error
      in ``failures`` and drops out; the others carry on.
    - A worker takes the item with index ``taken`` (and increments it) only while fewer than
      ``ahead`` items are taken beyond ``consumed`` and neither ``stop`` nor ``exhausted`` is
      set. Items are drawn by the workers themselves: no per-item future.
    - A run's outcome goes to ``done[index]`` as ``(True, Result)`` or ``(False, exception)``;
      the consumer raises a failure when it reaches that index, so errors come in input order.
      The input iterator failing is the outcome of the index it was asked for, and exhausts
      the map.
    - The consumer waits for ``done[waiting]``. A worker wakes it only once that result is in
      and ``batch`` results are buffered (thread hand-offs, not the device, bound small-item
      rates); a worker leaving always wakes it. Workers block only with at least
      ``ahead - nworkers`` results buffered, which is at least ``batch``, so the consumer is
      always woken first. The consumer wakes the workers when it frees room below ``ahead``.
    - The map ends when ``exhausted`` is set and every taken index was yielded. When every
      worker is gone (``alive == 0``) before that, it raises the first of ``failures``.
    - Leaving the consumer (closing the iterator, or a failure raised to it) sets ``stop``:
      workers finish their current run, close their sessions and exit, and the consumer joins
      them before it returns.
    """

    def __init__(self, device: Device, prepared: object, items: Iterator[Buffer],
                 options: dict, nworkers: int):
        self.device = device
        self.prepared = prepared
        self.items = items
        self.options = options
        self.nworkers = nworkers
        self.cond = threading.Condition(threading.Lock())
        self.done: dict[int, tuple[bool, object]] = {}
        self.failures: list[BaseException] = []
        self.taken = 0
        self.consumed = 0
        self.exhausted = False
        self.stop = False
        self.waiting = -1
        self.alive = nworkers
        self.ahead = 8 * nworkers
        self.batch = 4 * nworkers

    def results(self) -> Iterator[Result]:
        """The results in input order; a generator, so no worker starts before iteration."""
        threads = [threading.Thread(target=self._worker, name=f"hermes-map-{n}", daemon=True)
                   for n in range(self.nworkers)]
        for t in threads:
            t.start()
        cond = self.cond
        k = 0
        try:
            while True:
                with cond:
                    while (k not in self.done and self.alive
                           and not (self.exhausted and k >= self.taken)):
                        self.waiting = k
                        cond.wait()
                    self.waiting = -1
                    if k not in self.done:
                        if self.exhausted and k >= self.taken:
                            return
                        # every worker is gone without finishing: none could open a session
                        raise (self.failures[0] if self.failures
                               else RuntimeError("map workers stopped"))
                    ok, value = self.done.pop(k)
                    self.consumed = k + 1
                    if self.taken - k >= self.ahead:
                        cond.notify_all()  # workers may be waiting for room
                if not ok:
                    raise value  # type: ignore[misc]
                yield value  # type: ignore[misc]
                k += 1
        finally:
            with cond:
                self.stop = True
                cond.notify_all()
            for t in threads:
                t.join()

    def _take(self) -> tuple[int, Buffer] | None:
        """The next item and its index, or None when this worker is to stop (under ``cond``)."""
        while (not self.stop and not self.exhausted
               and self.taken - self.consumed >= self.ahead):
            self.cond.wait()
        if self.stop or self.exhausted:
            return None
        i = self.taken
        try:
            buf = next(self.items)
        except StopIteration:
            self.exhausted = True
            return None
        except BaseException as exc:  # the input iterator failed: report it in its place
            self.exhausted = True
            self.taken = i + 1
            self.done[i] = (False, exc)
            return None
        self.taken = i + 1
        return i, buf

    def _worker(self) -> None:
        cond = self.cond
        session = None
        try:
            try:
                session = self.device.session()
                # what this device's prepare returned, which its sessions load as such
                session.load(self.prepared)  # type: ignore[arg-type]
            except BaseException as exc:  # e.g. no free slot: the other workers carry on
                with cond:
                    self.failures.append(exc)
                return
            while True:
                with cond:
                    taken = self._take()
                if taken is None:
                    return
                i, buf = taken
                try:
                    session.write(buf)
                    out: tuple[bool, object] = (True, session.run(**self.options))
                except BaseException as exc:  # handed to the consumer, raised in order
                    out = (False, exc)
                with cond:
                    self.done[i] = out
                    if self.waiting in self.done and len(self.done) >= self.batch:
                        cond.notify_all()
        finally:
            if session is not None:
                try:
                    session.close()
                except Exception:  # closing after a device failure must not mask the first
                    pass
            with cond:
                self.alive -= 1
                cond.notify_all()


#: Seconds a cancelled ``run_async`` waits for its aborted run to return before it re-raises.
ABORT_WAIT = 5.0
_SESSIONS_LOCK = threading.Lock()
_POOL_LOCK = threading.Lock()

#: A backend factory: (the part of the spec after ``prefix:``, **options) -> Device.
BackendFactory = Callable[..., Device]

#: Device spec prefix -> factory, or ``"module:function"`` imported on first use (so a backend
#: with heavy imports costs nothing until opened). ``"vfio-user:/path"`` looks up ``vfio-user``.
BACKENDS: dict[str, BackendFactory | str] = {
    "emu": "hermes.lib.driver_device:open_emu",
    "cpu": "hermes.lib.cpu:open_cpu",
    "vfio-user": "hermes.lib.vfio:open_vfio_user",  # a `hermes serve` process's socket
    "vfio": "hermes.lib.vfio:open_vfio",            # a device bound to vfio-pci
    "nvme-emu": "hermes.lib.nvme:open_nvme_emu",    # the NVMe CP/SLM controller in process
    "nvme": "hermes.lib.nvme:open_nvme",            # /dev/ngXnY through Linux's passthrough
}


def register_backend(prefix: str, factory: BackendFactory | str) -> None:
    """Make ``hermes.open("prefix[:address]")`` call ``factory(address, **options)``."""
    BACKENDS[prefix] = factory


def open_device(spec: str = "emu", **options: object) -> Device:
    """Open a device by spec: ``"emu"`` (in-process Hermes device model + driver), ``"cpu"``
    (the engine directly), or any prefix in ``BACKENDS`` (``"prefix:address"``).

    ``options`` go to the backend (for ``emu``: HermesDevice arguments such as ``engines`` (its
    command processors) or ``executor`` (what runs programs: ``interp``, ``jit``), plus driver
    ``timeout``; for ``cpu``: ``executor``, ``slot_size``, ``budget``). ``engine=`` is the
    deprecated spelling of ``executor=``.
    """
    if not isinstance(spec, str):
        raise UsageError(f"a device spec is a string such as 'emu', not {type(spec).__name__}")
    prefix, _, address = spec.partition(":")
    factory = BACKENDS.get(prefix)
    if factory is None:
        raise DeviceError(f"unknown device spec {spec!r}; known prefixes: "
                          f"{', '.join(sorted(BACKENDS))}", errno.ENODEV)
    if "engine" in options:
        options["executor"] = executor_option(options.get("executor"), options.pop("engine"))
    check_options(options)
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
    try:
        device = factory(address, **options)
    except HermesError:
        raise
    except (TypeError, ValueError) as exc:  # an option the backend refused (name or value)
        raise UsageError(f"cannot open device {spec!r}: {exc}") from None
    device.spec = str(spec)
    return device


def unreadable_program(path: str | os.PathLike, exc: OSError) -> UsageError:
    """The error for a program path that cannot be read: it names the path (cut short) and,
    when a str looks like program text rather than a path, says how to pass text."""
    text = str(path)
    hint = (" (a str is a program file's path; for assembly text pass Program.from_asm(text))"
            if isinstance(path, str) and ("\n" in text or " " in text.strip()) else "")
    what = text if len(text) <= 80 else f"{text[:38]}...{text[-39:]}"
    return UsageError(f"cannot read program file {what!r}: {exc.strerror or exc}{hint}")


def program_bytes(program: ProgramLike) -> bytes:
    """The bytes a device loads for ``program``: the ELF object when it came from one (the device
    loads ELF itself), else the raw instructions."""
    if isinstance(program, (bytes, bytearray, memoryview)):
        return bytes(program)
    if isinstance(program, (str, os.PathLike)):
        try:
            return Path(program).read_bytes()
        except OSError as exc:
            raise unreadable_program(program, exc) from None
    if isinstance(program, Program):
        elf = program.elf_bytes
        if elf:
            return bytes(elf)
        if program.segments:
            from ..errors import ProgramError
            raise ProgramError("the program has data segments (.rodata/.data) but no ELF object "
                               "to carry them to the device; load it with Program.from_elf")
        return program.to_bytes()
    raise UsageError(f"expected a Program, bytes or a path, not {type(program).__name__}")


def as_program(program: ProgramLike, *, max_size: int | None = None) -> Program:
    """``program`` as a ``Program`` (bytes starting with the ELF magic are loaded as ELF, with
    code + data bounded by ``max_size`` as in ``load_elf``)."""
    if isinstance(program, Program):
        return program
    if isinstance(program, (str, os.PathLike)):
        try:
            return read_program(program, max_size=max_size)
        except OSError as exc:
            raise unreadable_program(program, exc) from None
    if not isinstance(program, (bytes, bytearray, memoryview)):
        raise UsageError(f"expected a Program, bytes or a path, not {type(program).__name__}")
    data = bytes(program)
    if data[:4] == b"\x7fELF":
        # Imported here: pyelftools is paid for by ELF programs, not by ``import hermes``.
        from ..engine.elf import load_elf
        return load_elf(data, max_size=max_size)
    return Program.from_bytes(data)

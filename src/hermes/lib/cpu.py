"""The CPU backend: programs run on hermes.engine directly, with a Hermes device's memory view."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import threading

from .. import engine as _engine
from ..engine.cache import DEFAULT_CACHE_BYTES, LoadedCache
from ..errors import Cancelled, DeviceError, ExecutionError, ProgramTooLarge, UsageError
from .api import (
    Deadline,
    Device,
    ProgramLike,
    RunInfo,
    Session,
    as_program,
    check_options,
    program_bytes,
    run_guarded,
)
from .errors import from_execution_error, run_cancelled, run_timeout, with_trace

#: Default data slot (and program slot) size: the Hermes device's.
DEFAULT_SLOT_SIZE = 1 << 20
#: Prepared programs kept per CPU device (at most, and at most ``DEFAULT_CACHE_BYTES`` of them).
_CACHE_SIZE = 64


class _InterruptBridge:
    """Turns a SIGINT into the Cancel of the run the main thread is in.

    Native engine code (the JIT) holds the main thread without returning to the interpreter, so
    Python's KeyboardInterrupt would wait for the run to end. Python's C-level signal handler
    also writes the signal number to the wakeup fd at once: a watcher thread reading that fd
    sets the run's Cancel, the run stops, and the KeyboardInterrupt is raised as usual. Bytes
    for the previous wakeup fd (an asyncio loop's) are passed on.
    """

    def __init__(self) -> None:
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._wfd, False)
        #: (the armed run's Cancel or None, the wakeup fd to pass bytes on to or -1): one
        #: attribute, replaced whole, so the watcher reads a consistent pair without a lock.
        self._state: tuple[_engine.Cancel | None, int] = (None, -1)
        threading.Thread(target=self._watch, name="hermes-sigint", daemon=True).start()

    def _watch(self) -> None:
        while True:
            data = os.read(self._rfd, 64)
            cancel, forward = self._state
            if signal.SIGINT in data and cancel is not None:
                cancel.set()
            if forward >= 0:
                with contextlib.suppress(OSError):
                    os.write(forward, data)

    def arm(self, cancel: _engine.Cancel) -> bool:
        """From now on a SIGINT sets ``cancel``; False (nothing armed) outside the main thread
        or under a SIGINT handler of the program's own. ``disarm`` when the run is over."""
        if threading.current_thread() is not threading.main_thread() \
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return False
        self._state = (cancel, signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False))
        return True

    def disarm(self) -> None:
        """Give the wakeup fd back to whoever had it before ``arm``."""
        forward = self._state[1]
        self._state = (None, -1)
        signal.set_wakeup_fd(forward)


_BRIDGE: _InterruptBridge | None = None
_BRIDGE_LOCK = threading.Lock()


def _interrupt_bridge() -> _InterruptBridge:
    global _BRIDGE
    with _BRIDGE_LOCK:
        if _BRIDGE is None:
            _BRIDGE = _InterruptBridge()
        return _BRIDGE


#: Copies from this many bytes on go through ``ctypes.memmove``, which releases the GIL (a
#: memoryview slice assignment holds it for the whole copy); shorter ones are sliced, cheaper
#: than a ctypes call and with no wait for the GIL to come back.
GIL_FREE_COPY_MIN = 64 << 10


def _address(view: memoryview) -> int | None:
    """Address of the first byte of a writable, contiguous ``view`` of at least
    ``GIL_FREE_COPY_MIN`` bytes, else None (sliced instead: ctypes cannot point at a read-only
    buffer)."""
    if view.readonly or view.nbytes < GIL_FREE_COPY_MIN or not view.c_contiguous:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _slot_address(slot: bytearray) -> int:
    """Address of a data slot's first byte (a slot is never resized, so it stays valid)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(slot))


class CpuSession(Session):
    """A session on the CPU: a private zeroed data slot of ``data_slot_size`` bytes; each run
    sees the window ``[0, size)`` of it, with ``[length, size)`` zeroed first."""

    _device: CpuDevice

    def __init__(self, device: CpuDevice):
        super().__init__()
        self._device = device
        self._exe: _engine.Executable | None = None
        self._slot: bytearray | None = None
        #: The Cancel of the run in progress (set by ``abort`` from any thread).
        self._cancel: _engine.Cancel | None = None
        self.closed = False

    def _load(self, program: object) -> None:
        self._exe = self._device.prepare(program)  # type: ignore[arg-type]

    def _buffer(self) -> bytearray:
        if self._slot is None:
            self._slot = bytearray(self._device.data_slot_size)
        return self._slot

    def _write(self, view: memoryview, offset: int) -> None:
        slot = self._buffer()   # (held: the copy below runs without the GIL)
        src = _address(view)
        if src is None:
            # through a memoryview: a bytearray slice assignment copies a non-bytearray source
            # into a temporary first
            memoryview(slot)[offset:offset + view.nbytes] = view
        else:
            ctypes.memmove(_slot_address(slot) + offset, src, view.nbytes)

    def _readinto(self, view: memoryview, offset: int) -> None:
        slot = self._buffer()
        dst = _address(view)
        if dst is None:
            view[:] = memoryview(slot)[offset:offset + view.nbytes]
        else:
            ctypes.memmove(dst, _slot_address(slot) + offset, view.nbytes)

    def _read(self, size: int, offset: int) -> bytes:
        return bytes(memoryview(self._buffer())[offset:offset + size])

    def _execute(self, length: int, size: int, args: tuple[int, int, int], budget: int | None,
                 timeout: float | None, cancel: _engine.Cancel | None) -> RunInfo:
        exe = self._exe
        assert exe is not None  # the contract loads a program before any run
        slot = self._buffer()
        if size > length:   # one pass, no zero bytes object (and no GIL held)
            ctypes.memset(_slot_address(slot) + length, 0, size - length)
        mine = _engine.Cancel()
        self._cancel = mine
        watch = cancel.watch(mine.set) if cancel is not None else None
        deadline = Deadline(timeout, mine.set)
        window = memoryview(slot)[:size]
        bridge = _interrupt_bridge()
        armed = bridge.arm(mine)
        try:
            result = run_guarded(self, lambda: exe.run(
                window, budget if budget is not None else self._device.budget, cancel=mine,
                length=length, args=args))
        except Cancelled as exc:
            self._device.check_open()  # stopped by the device's close
            if deadline.expired and not (cancel is not None and cancel.is_set()):
                raise with_trace(run_timeout(timeout, exc.pc), exc) from None  # type: ignore
            raise with_trace(run_cancelled(exc.pc, exc.instructions), exc) from None
        except ExecutionError as exc:
            raise from_execution_error(exc) from None
        finally:
            if armed:
                bridge.disarm()
            window.release()
            self._cancel = None
            deadline.cancel()
            if watch is not None:
                cancel.unwatch(watch)  # type: ignore[union-attr]
        return RunInfo(result.return_value, result.instructions, result.output_length,
                       result.elapsed_ns / 1e9, result.trace.decode("utf-8", "replace"),
                       result.trace_dropped)

    def abort(self) -> None:
        """Set the Cancel of the run in progress (engines stop within a bounded amount of work)."""
        c = self._cancel
        if c is not None:
            c.set()

    def close(self) -> None:
        """Drop the data slot."""
        self.abort()
        self.closed = True
        self._exe = None
        self._slot = None


class CpuDevice(Device):
    """Runs programs in this process with ``hermes.engine`` (interpreter or JIT)."""

    def __init__(self, *, executor: str | None = None, data_slot_size: int = DEFAULT_SLOT_SIZE,
                 program_slot_size: int = DEFAULT_SLOT_SIZE, budget: int | None = None,
                 engines: int | None = None, engine: str | None = None):
        executor = _engine.executor_option(executor, engine)
        options = {"executor": executor, "data_slot_size": data_slot_size,
                   "program_slot_size": program_slot_size, "budget": budget}
        if engines is not None:
            options["engines"] = engines
        check_options(options)
        self.executor_name = executor or _engine.DEFAULT_EXECUTOR
        self._data_slot_size = data_slot_size
        self.program_slot_size = program_slot_size
        self.budget = budget if budget is not None else _engine.DEFAULT_BUDGET
        self._engines = engines or os.cpu_count() or 1
        self._cache: LoadedCache[_engine.Executable] = LoadedCache(_CACHE_SIZE,
                                                                    DEFAULT_CACHE_BYTES)

    @property
    def engines(self) -> int:
        """Worker threads ``map`` uses by default."""
        return self._engines

    @property
    def data_slot_size(self) -> int:
        """Bytes of a session's data slot."""
        return self._data_slot_size

    def info(self) -> dict:
        """Backend description (no BAR0 here; the slot geometry the programs see)."""
        self.check_open()
        return {"spec": self.spec, "backend": "cpu", "executor": self.executor_name,
                "engines": self._engines, "data_slot_size": self._data_slot_size,
                "program_slot_size": self.program_slot_size, "budget": self.budget}

    def prepare(self, program: ProgramLike | _engine.Executable) -> _engine.Executable:
        """An executable for ``program`` (cached by program digest; executables are reentrant)."""
        self.check_open()
        if isinstance(program, _engine.Executable):
            return program  # already prepared
        size = len(program_bytes(program)) if not isinstance(program, _engine.Program) else (
            len(program.elf_bytes or program.to_bytes()))
        if size > self.program_slot_size:
            raise ProgramTooLarge(size, self.program_slot_size)
        # Code + data must fit the program slot too, as on a device (checked before an object's
        # .bss is allocated; a Program built elsewhere is checked on what it holds).
        prog = as_program(program, max_size=self.program_slot_size)
        image = len(prog.code) + sum(len(seg.data) for seg in prog.segments)
        if image > self.program_slot_size:
            raise ProgramTooLarge(image, self.program_slot_size)
        key = prog.digest
        exe = self._cache.get(key)
        if exe is None:
            exe = _engine.load(prog, executor=self.executor_name, budget=self.budget)
            self._cache.put(key, exe, prog.host_bytes)
        return exe

    def close(self) -> None:
        """Stop the runs in progress, drop the prepared programs (and the async pool)."""
        super().close()
        self._cache.clear()

    def _session(self) -> CpuSession:
        return CpuSession(self)


def open_cpu(address: str = "", **options: object) -> CpuDevice:
    """``hermes.open("cpu", **options)``."""
    if address:
        raise DeviceError(f"the cpu device takes no address (got 'cpu:{address}')", errno.EINVAL)
    unknown = sorted(set(options) - set(CPU_OPTIONS))
    if unknown:
        raise UsageError(f"unknown cpu options: {', '.join(unknown)} (the cpu backend takes "
                         f"{', '.join(CPU_OPTIONS)})")
    return CpuDevice(**options)  # type: ignore[arg-type]


#: Options ``hermes.open("cpu", ...)`` takes (the same names as the emu backend's).
CPU_OPTIONS = ("executor", "data_slot_size", "program_slot_size", "budget", "engines")

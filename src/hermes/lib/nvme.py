"""Library backends on the NVMe CP/SLM controller: ``nvme-emu`` (in process), ``nvme:/dev/ngXnY``.

Both are the same Device/Session classes over a host object with the ``NvmeHost`` calls: the
in-process controller behind ``NvmeHost`` and an in-process transport, or a controller the Linux
nvme driver owns, reached with ``PassthroughHost`` (the passthrough ioctls on its generic char
devices). A session owns one program index and one window ("data slot") of the first memory
namespace; a run is one Execute Program with that window as its only range, so the program sees
the run contract of ``specs/run-contract.md`` (the mapping is in ``specs/nvme-cp.md``).

One library process uses a controller at a time: a device assumes every program index but the
device-defined one and the whole first memory namespace are its own.
"""
from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from .. import engine as _engine, nvme_regs as N
from ..driver.nvme import NvmeHost, NvmeStatusError
from ..engine.cache import DEFAULT_CACHE_BYTES, LoadedCache
from ..errors import DeviceError, SlotsExhausted, UsageError
from .api import Deadline, Device, ProgramLike, RunInfo, Session, check_int
from .driver_device import Prepared, check_program
from .errors import from_os_error, run_cancelled, run_failure, run_timeout, with_trace
from .memory import MAX_MEMORY, Memory, Range, window_spans

#: Default data slot (a session's window) and memory namespace sizes of ``nvme-emu``.
DEFAULT_SLOT_SIZE = 1 << 20
DEFAULT_MEMORY_SIZE = 16 << 20
#: Seconds an Execute Program without a run ``timeout`` may take before the host gives up on
#: the controller (the budget stops a runaway program well before on any executor).
EXECUTE_TIMEOUT = 3600.0
#: Largest program the controller downloads (its Limits.max_program_bytes; Identify has no field).
MAX_PROGRAM_BYTES = 1 << 20
_CACHE_SIZE = 64
#: Seconds between tries to abort a run whose Execute Program had not reached the controller.
ABORT_RETRY = 0.01
#: Options of ``hermes.open("nvme-emu", ...)`` and of ``hermes.open("nvme:/dev/ngXnY", ...)``.
EMU_OPTIONS = ("data_slot_size", "memory_size", "budget", "executor", "timeout")
PASSTHRU_OPTIONS = ("data_slot_size", "budget", "timeout")


T = TypeVar("T")


def _align(lo: int, hi: int) -> tuple[int, int]:
    """The dword-aligned span around byte offsets ``[lo, hi)`` (SLM transfers are dwords)."""
    return lo & ~3, (hi + 3) & ~3


def _host_call(device: NvmeDevice, fn: Callable[..., T], *args: object, **kw: object) -> T:
    """A host call with its OSErrors as library errors (status errors stay DeviceErrors);
    a call the device's close cut short is ``DeviceError`` ENODEV."""
    try:
        return fn(*args, **kw)
    except NvmeStatusError:
        raise
    except OSError as exc:
        device.check_open()
        raise from_os_error(exc) from None
    except ValueError:   # a queue or buffer the close freed under the call
        device.check_open()
        raise


class _SlmPort:
    """Byte-exact transfers at ``start..`` of memory namespace ``nsid`` through I/O queue
    ``qid`` (Memory Read/Write move dwords, at most ``max_transfer`` bytes a command)."""

    def __init__(self, device: NvmeDevice, nsid: int, start: int, qid: int):
        self.device, self.nsid, self.start, self.qid = device, nsid, start, qid

    def _read(self, offset: int, n: int) -> bytes:
        host = self.device.host
        step = host.max_transfer
        return b"".join(_host_call(self.device, host.mem_read, self.nsid,
                                   self.start + offset + pos, min(step, n - pos), qid=self.qid)
                        for pos in range(0, n, step))

    def write(self, view: memoryview, offset: int) -> None:
        """Copy ``view`` to ``offset`` (the dwords around it read and merged first)."""
        lo, hi = _align(offset, offset + view.nbytes)
        if (lo, hi) == (offset, offset + view.nbytes):
            data = view
        else:
            span = bytearray(self._read(lo, hi - lo))
            span[offset - lo:offset - lo + view.nbytes] = view
            data = memoryview(span)
        host = self.device.host
        step = host.max_transfer
        for pos in range(0, len(data), step):
            _host_call(self.device, host.mem_write, self.nsid, self.start + lo + pos,
                       bytes(data[pos:pos + step]), qid=self.qid)

    def readinto(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` from ``offset``."""
        lo, hi = _align(offset, offset + view.nbytes)
        view[:] = self._read(lo, hi - lo)[offset - lo:offset - lo + view.nbytes]

    def fill(self, value: int, offset: int, n: int) -> None:
        """Set ``n`` bytes from ``offset`` to the byte ``value`` (Memory Fill for the whole
        dwords, merged writes for the edges)."""
        lo, hi = (offset + 3) & ~3, (offset + n) & ~3
        if hi <= lo:
            self.write(memoryview(bytes([value]) * n), offset)
            return
        if lo > offset:
            self.write(memoryview(bytes([value]) * (lo - offset)), offset)
        _host_call(self.device, self.device.host.mem_fill, self.nsid, self.start + lo,
                   hi - lo, value * 0x0101_0101, qid=self.qid)
        if offset + n > hi:
            self.write(memoryview(bytes([value]) * (offset + n - hi)), hi)


class _Extents:
    """First-fit allocation of ``align``-aligned byte ranges of one memory namespace."""

    def __init__(self, size: int, align: int):
        self.size, self.align = size, align
        self._used: list[tuple[int, int]] = []   # (start, end), sorted

    def take(self, n: int) -> int | None:
        """The start of a free range of ``n`` bytes (rounded up to ``align``), or None."""
        n = -(-n // self.align) * self.align
        at = 0
        for i, (start, end) in enumerate(self._used):
            if start - at >= n:
                self._used.insert(i, (at, at + n))
                return at
            at = end
        if self.size - at >= n:
            self._used.append((at, at + n))
            return at
        return None

    def give(self, start: int) -> None:
        """Free the range that starts at ``start``."""
        self._used = [u for u in self._used if u[0] != start]

    @property
    def free(self) -> int:
        """Bytes not taken."""
        return self.size - sum(end - start for start, end in self._used)


class SlmMemory(Memory):
    """A region of a memory namespace (Subsystem Local Memory) of the controller."""

    def __init__(self, device: NvmeDevice, size: int, nsid: int, start: int):
        super().__init__(device, size)
        #: Memory namespace and first byte of the region in it.
        self.nsid, self.start = nsid, start
        # Transfers share I/O queue 1 with the first session (queue pairs are thread-safe).
        self._port = _SlmPort(device, nsid, start, 1)

    def _write(self, view: memoryview, offset: int) -> None:
        self._port.write(view, offset)

    def _readinto(self, view: memoryview, offset: int) -> None:
        self._port.readinto(view, offset)

    def _fill(self, value: int, offset: int, size: int) -> None:
        self._port.fill(value, offset, size)

    def _free(self) -> None:
        self._device._give(self.nsid, self.start)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return (f"<SlmMemory {self.size} bytes at {self.start:#x} of namespace "
                f"{self.nsid}{state}>")


class NvmeSession(Session):
    """One program index, one I/O queue and one window of the device's memory namespace."""

    _device: NvmeDevice

    def __init__(self, device: NvmeDevice, pind: int, start: int, qid: int):
        super().__init__()
        self._device = device
        self.pind, self.start, self.qid = pind, start, qid
        self._port = _SlmPort(device, device.nsid, start, qid)
        self._prepared: Prepared | None = None
        self._zeroed = False
        #: Number of the run in progress (0: none), so a late abort retry spares the next run.
        self._running = 0
        self._runs = 0
        self._lock = threading.Lock()
        self.closed = False

    @property
    def _host(self) -> NvmeHost:
        return self._device.host

    def _call(self, fn: Callable[..., T], *args: object, **kw: object) -> T:
        """``fn(*args, **kw)`` on the host, its errors as the library's (``_host_call``)."""
        return _host_call(self._device, fn, *args, **kw)

    def _unload(self) -> None:
        h = self._host
        for fn, args in ((h.activate, (self.pind, False)), (h.unload_program, (self.pind,))):
            try:
                self._call(fn, *args)
            except NvmeStatusError as exc:
                if exc.named is not N.NO_PROGRAM:
                    raise
        self._prepared = None

    def _load(self, program: object) -> None:
        prepared = self._device.prepare(program)  # type: ignore[arg-type]
        self._unload()
        if not self._zeroed:
            # A new session's window holds zeros, never what an earlier session left there.
            self._call(self._host.mem_fill, self._device.nsid, self.start,
                       self._device.data_slot_size, qid=self.qid)
            self._zeroed = True
        try:
            self._call(self._host.load_program, self.pind, prepared.code, entry=prepared.entry)
        except NvmeStatusError as exc:
            if exc.named is N.INVALID_PROGRAM_DATA and exc.completion.dw0:
                raise run_failure(exc.completion.dw0) from None
            raise
        self._call(self._host.activate, self.pind)
        self._prepared = prepared

    def _write(self, view: memoryview, offset: int) -> None:
        self._port.write(view, offset)

    def _readinto(self, view: memoryview, offset: int) -> None:
        self._port.readinto(view, offset)

    def _execute(self, length: int, size: int, args: tuple[int, int, int], budget: int | None,
                 timeout: float | None, cancel: _engine.Cancel | None) -> RunInfo:
        # One range covers the window (range lengths are multiples of 2^MRSG bytes); the window
        # length parameter cuts it to ``size`` exactly.
        g = self._device.granularity
        ranges = [N.MemoryRange(self._device.nsid, self.start, -(-size // g) * g)] if size else []
        return self._execute_on(ranges, length, size, args, budget, timeout, cancel)

    def _execute_ranges(self, window: list[Range], length: int, size: int,
                        args: tuple[int, int, int], budget: int | None, timeout: float | None,
                        cancel: _engine.Cancel | None) -> RunInfo:
        """The controller reads the ranges itself: one inline range per region the window
        reaches (rounded up to 2^MRSG; the window length cuts the last)."""
        g = self._device.granularity
        ranges = []
        for k, (r, _at, _n) in enumerate(window_spans(window, size)):
            mem = r.memory
            if not isinstance(mem, SlmMemory):
                raise UsageError(f"range {k} is not memory of this controller")
            start = mem.start + r.offset
            if start % g or (r.length % g and r is not window[-1]):
                raise UsageError(f"range {k} does not fit this controller's {g}-byte range "
                                 "granularity")
            ranges.append(N.MemoryRange(mem.nsid, start, -(-r.length // g) * g))
        return self._execute_on(ranges, length, size, args, budget, timeout, cancel)

    def _execute_on(self, ranges: list[N.MemoryRange], length: int, size: int,
                    args: tuple[int, int, int], budget: int | None, timeout: float | None,
                    cancel: _engine.Cancel | None) -> RunInfo:
        """One Execute Program over ``ranges`` with window ``size`` and input ``length``."""
        prepared = self._prepared
        assert prepared is not None
        dev = self._device
        # The device's budget option stands for a run that gives none (the controller's own
        # budget is the served process's: a passthrough host cannot set it otherwise).
        budget = budget or dev.budget
        params = N.exec_params(args[1], args[2], window=size, budget=budget or 0)
        # Running from here: an abort (a Cancel set already, the timer) is retried until the
        # Execute Program reaches the controller.
        self._runs += 1
        self._running = self._runs
        deadline = Deadline(timeout, self.abort)
        watch = cancel.watch(self.abort) if cancel is not None else None
        wait = (timeout + dev.host.timeout) if timeout is not None else EXECUTE_TIMEOUT
        try:
            result = self._call(self._host.execute, self.pind, qid=self.qid, ranges=ranges,
                                cparam1=length, cparam2=args[0], data=params, timeout=wait)
        except KeyboardInterrupt:
            # Stop the program and wait (bounded) for its completion before propagating, so
            # the index is idle and no late completion is left on the queue.
            self.abort()
            self._host.drain_queue(self.qid)
            raise
        except NvmeStatusError as exc:
            dev.check_open()  # stopped by the device's close
            if exc.named is N.ABORT_REQUESTED:
                record = self._record(trace=True)
                if timeout is not None and (deadline.expired or not (cancel and cancel.is_set())):
                    raise with_trace(run_timeout(timeout, record.pc), record) from None
                raise with_trace(run_cancelled(record.pc, record.instructions),
                                 record) from None
            if exc.named is N.PROGRAM_FAILED:
                raise run_failure(exc.completion.dw0, outcome=self._record(trace=True),
                                  window=size, budget=budget,
                                  segments=prepared.segments) from None
            raise
        finally:
            self._running = 0
            deadline.cancel()
            if watch is not None:
                cancel.unwatch(watch)  # type: ignore[union-attr]
        record = self._record(trace=True)
        return RunInfo(result, record.instructions, record.output_length,
                       record.elapsed_ns / 1e9, record.trace.decode("utf-8", "replace"),
                       record.trace_dropped)

    def _record(self, trace: bool = False) -> SimpleNamespace:
        """This index's Execution Record (log page C0h) with the field names ``run_failure``
        and ``with_trace`` read (``instructions``, ``fault_*``, ``trace``, ``trace_dropped``);
        the printed text is read only with ``trace``."""
        at = self.pind * N.EXEC_RECORD_SIZE
        raw = self._call(self._host.get_log_page, N.LOG_EXECUTION_RECORD, N.EXEC_RECORD_HEADER,
                         offset=at, nsid=self._host.compute_nsid)
        rec = N.EXEC_RECORD.unpack(raw)
        out = rec["output_length"]
        text = b""
        if trace and rec["trace_length"]:
            n = rec["trace_length"]
            text = self._call(self._host.get_log_page, N.LOG_EXECUTION_RECORD, (n + 3) & ~3,
                              offset=at + N.EXEC_RECORD_HEADER,
                              nsid=self._host.compute_nsid)[:n]
        rec["output_length"] = None if out == N.NO_OUTPUT_LENGTH else out
        return SimpleNamespace(**rec, trace=text)

    def abort(self) -> None:
        """Abort this session's Execute Program in progress (Abort naming its program index,
        which needs neither the queue nor the command identifier)."""
        self._abort_run(self._running)

    def _abort_run(self, run: int) -> None:
        """Abort run number ``run`` if it is still the one in progress."""
        if not run or run != self._running:
            return
        try:
            aborted = self._host.abort_program(self.pind)
        except (OSError, DeviceError):   # nothing to stop on a controller that went away
            return
        if not aborted and run == self._running:
            # The Execute Program has not reached the controller yet: try again shortly
            # (without blocking the thread that asked) until that run is over.
            retry = threading.Timer(ABORT_RETRY, self._abort_run, (run,))
            retry.daemon = True
            retry.start()

    def close(self) -> None:
        """Unload the program and give the index and window back (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            if self._prepared is not None and not self._device._closed:
                self._unload()
        finally:
            self._device._release(self)


class NvmeDevice(Device):
    """A CP/SLM controller driven through ``host`` (an enabled ``NvmeHost`` or a
    ``PassthroughHost``): sessions are (program index, window of the first memory namespace)."""

    def __init__(self, host: NvmeHost, *, backend: str, data_slot_size: int = DEFAULT_SLOT_SIZE,
                 budget: int | None = None, on_close: list | None = None):
        self.host = host
        #: Instruction budget of a run that names none (None: the controller's).
        self.budget = budget
        self.backend = backend
        self._on_close = list(on_close or [])
        self._checked: LoadedCache[Prepared] = LoadedCache(_CACHE_SIZE, DEFAULT_CACHE_BYTES)
        memory = host.memory_namespaces
        if not memory:
            raise DeviceError("the controller has no memory namespace", errno.ENODEV)
        self.nsid, self.memory_size = memory[0].nsid, memory[0].size
        lim = N.ID_NS_CP.unpack(host.identify(N.Cns.CSI_NAMESPACE, host.compute_nsid,
                                              csi=N.Csi.CP))
        self.granularity = 1 << lim["mrsg"]
        self.program_limit = min(MAX_PROGRAM_BYTES, lim["maxpb"] << 20)
        if data_slot_size % self.granularity or data_slot_size > self.memory_size:
            raise UsageError(f"data_slot_size {data_slot_size} must be a multiple of "
                             f"{self.granularity} and at most the memory namespace's "
                             f"{self.memory_size} bytes")
        self._data_slot_size = data_slot_size
        # The last index holds the device-defined program; each session also gets its own I/O
        # queue (the in-process host has 15; passthrough ignores it).
        count = min(lim["numpi"] - 1, self.memory_size // data_slot_size, 15)
        self._free = [(i, i + 1) for i in range(count)]
        self.sessions_max = count
        # Session windows and ``memory`` regions share the memory namespaces, first fit.
        self._extents = {ns.nsid: _Extents(ns.size, self.granularity) for ns in memory}
        self._lock = threading.Lock()

    @property
    def engines(self) -> int:
        """Execute Program runs one at a time on this controller."""
        return 1

    @property
    def data_slot_size(self) -> int:
        """Bytes of a session's window."""
        return self._data_slot_size

    def info(self) -> dict:
        """Backend, controller identity and the session geometry."""
        self.check_open()
        c = self.host.id_ctrl
        text = lambda v: bytes(v).decode("ascii", "replace").strip()  # noqa: E731
        return {"spec": self.spec, "backend": self.backend, "model": text(c["mn"]),
                "serial": text(c["sn"]), "compute_nsid": self.host.compute_nsid,
                "memory_nsid": self.nsid, "memory_size": self.memory_size,
                "data_slot_size": self._data_slot_size, "sessions": self.sessions_max,
                "program_slot_size": self.program_limit}

    def prepare(self, program: ProgramLike | Prepared) -> Prepared:
        """``program`` checked on the host (the load contract), cached by content."""
        self.check_open()
        return check_program(program, self.program_limit, self._checked)

    def _session(self) -> NvmeSession:
        with self._lock:
            if not self._free:
                raise SlotsExhausted(f"all {self.sessions_max} sessions of the controller are "
                                     "open", errno.ENOSPC)
            start = self._extents[self.nsid].take(self._data_slot_size)
            if start is None:
                raise SlotsExhausted(f"the memory namespace has no room for another "
                                     f"{self._data_slot_size}-byte session window (memory "
                                     "regions take the rest)", errno.ENOSPC)
            pind, qid = self._free.pop(0)
        return NvmeSession(self, pind, start, qid)

    def _release(self, s: NvmeSession) -> None:
        with self._lock:
            self._free.append((s.pind, s.qid))
            self._free.sort()
            self._extents[self.nsid].give(s.start)

    def memory(self, size: int, *, nsid: int | None = None) -> SlmMemory:
        """``size`` bytes of the memory namespace ``nsid`` (default: the first), zeroed,
        for runs' ``ranges=`` (rules: ``hermes.lib.memory``)."""
        self.check_open()
        check_int("size", size, 1, MAX_MEMORY)
        nsid = self.nsid if nsid is None else nsid
        if nsid not in self._extents:
            raise UsageError(f"namespace {nsid} is not a memory namespace of the controller "
                             f"(they are {', '.join(map(str, self._extents))})")
        with self._lock:
            start = self._extents[nsid].take(size)
            free = self._extents[nsid].free
        if start is None:
            raise SlotsExhausted(f"memory namespace {nsid} has no free {size}-byte region "
                                 f"({free} bytes free in pieces)", errno.ENOSPC)
        mem = SlmMemory(self, size, nsid, start)
        try:
            # A region never shows what an earlier session or region left in the namespace.
            mem._port.fill(0, 0, -(-size // self.granularity) * self.granularity)
        except BaseException:
            self._give(nsid, start)
            raise
        return mem

    def _give(self, nsid: int, start: int) -> None:
        with self._lock:
            self._extents[nsid].give(start)

    def close(self) -> None:
        """Abort runs in progress, then release the controller (and what the backend built)."""
        if self._closed and not self._on_close:
            return
        super().close()
        try:
            self.host.close()
        finally:
            for fn in self._on_close:
                fn()
            self._on_close.clear()


def _check_unknown(backend: str, options: dict, allowed: tuple) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UsageError(f"unknown {backend} options: {', '.join(unknown)} (it takes "
                         f"{', '.join(allowed)})")


def open_nvme_emu(address: str = "", **options: Any) -> NvmeDevice:
    """``hermes.open("nvme-emu", **options)``: a new in-process CP/SLM controller behind the
    host queue driver, with one memory namespace of ``memory_size`` bytes (a list of sizes:
    one namespace each; sessions use the first)."""
    from ..transport.inproc import InProcessTransport
    if address:
        raise DeviceError(f"the nvme-emu device takes no address (got 'nvme-emu:{address}')",
                          errno.EINVAL)
    _check_unknown("nvme-emu", options, EMU_OPTIONS)
    slot = options.get("data_slot_size", DEFAULT_SLOT_SIZE)
    sizes = options.get("memory_size", max(DEFAULT_MEMORY_SIZE, slot))
    sizes = list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]
    if not sizes:
        raise UsageError("memory_size needs at least one namespace size")
    memory = tuple(check_int("memory_size", n, 8, 1 << 40) for n in sizes)
    timeout = options.get("timeout", 10.0)
    transport = InProcessTransport.create_nvme(memory_sizes=memory,
                                               executor=options.get("executor"),
                                               budget=options.get("budget"))
    try:
        host = NvmeHost(transport, timeout=timeout)
        host.enable()
        return NvmeDevice(host, backend="nvme-emu", data_slot_size=slot,
                          budget=options.get("budget"),
                          on_close=[transport.close])
    except OSError as exc:
        transport.close()
        raise from_os_error(exc) from None
    except BaseException:
        transport.close()
        raise


def open_nvme(address: str = "", **options: object) -> NvmeDevice:
    """``hermes.open("nvme:/dev/ngXnY", **options)``: the CP namespace ``/dev/ngXnY`` of a
    controller bound to Linux's nvme driver, through its passthrough ioctls."""
    from ..driver.nvme import PassthroughHost
    if not address:
        raise DeviceError("the nvme backend needs the compute namespace's generic char device, "
                          "e.g. 'nvme:/dev/ng0n1'", errno.EINVAL)
    _check_unknown("nvme", options, PASSTHRU_OPTIONS)
    try:
        host = PassthroughHost(address, timeout=options.get("timeout", 10.0))  # type: ignore
    except OSError as exc:
        raise from_os_error(exc) from None
    try:
        return NvmeDevice(host, backend="nvme-passthru",
                          data_slot_size=options.get("data_slot_size",  # type: ignore[arg-type]
                                                     DEFAULT_SLOT_SIZE),
                          budget=options.get("budget"))  # type: ignore[arg-type]
    except BaseException:
        host.close()
        raise


__all__ = ["NvmeDevice", "NvmeSession", "SlmMemory", "open_nvme", "open_nvme_emu"]

"""The Hermes PCIe device model: BAR0 registers, command engines, slots, BAR4, and BAR2 via xdma."""
from __future__ import annotations

import struct
import threading
import time
import weakref
from collections.abc import Callable

from .. import engine as _engine, regs as R
from ..engine.elf import load_elf
from ..errors import Cancelled, ExecutionError, ProgramError
from .commands import ELF_MAGIC, MASK64, ProgramCache, error_code, out_fields, response
from .xdma import NUM_VECTORS, XdmaBlock

#: Most engines a device may have: every engine needs its own MSI-X vector (8 + n < 32) and its
#: own bit in the XDMA IRQ block's user interrupt mask.
MAX_ENGINES = NUM_VECTORS - R.XDMA_H2C_CHANNELS - R.XDMA_C2H_CHANNELS
#: Alignment of the data slot area in BAR4.
BAR4_ALIGN = 4096
#: Programs kept compiled per device.
DEFAULT_CACHE_SIZE = 64
#: Most work a Run Program may do to run in the thread of an ``exec_inline`` call (its host waits
#: for it anyway) instead of the engine's worker: instructions, plus per helper call
#: ``_HELPER_WORK`` and one per 64 bytes of the data window (what a memset of it costs). About
#: 1.5 ms on the interpreter, far less on the JIT: short enough that timeouts, aborts and Ctrl-C
#: keep the latency they have with the worker.
INLINE_WORK = 1 << 16
#: What a helper call costs in instructions of the interpreter (measured about 2.5 us).
_HELPER_WORK = 128

#: Zeros a slot is cleared with, one chunk at a time (memset speed, bounded memory).
_ZERO_CHUNK = memoryview(bytes(1 << 20))
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: MASK64}
#: Little-endian readers of each access size: ``struct`` decodes in place, where
#: ``int.from_bytes`` of a memoryview slice copies the bytes first (every register read).
_READERS = {size: struct.Struct("<" + code).unpack_from
            for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}
#: Run Program bytes 12..15: the program length.
_PROG_LEN = struct.Struct("<I")
_CTRL_RUNNING = b"\x01\x00\x00"   # EHCMDEXEC = 1, EHCMDDONE = 0, EHCMDABORT = 0
_CTRL_DONE = b"\x00\x01\x00"      # EHCMDEXEC = 0, EHCMDDONE = 1, EHCMDABORT = 0
#: Run context fields the host writes (RW); the rest of each EHCMDCTXn block is read-only.
_CTX_IN_END = R.CTX_OUT_FIELDS[0]
_OUT_SIZE = R.RunContextOut.SIZE
#: The IN fields as a flat tuple (what ``commands.context_in`` groups, without the regrouping).
_ctx_fields = R.RunContextIn.fields
#: Slot owners (section 4.3 of specs/device.md): not handed out, handed out by Request Slot, or
#: claimed by a Run Program of a driver that allocates slots on the host side.
FREE, DEVICE_OWNED, HOST_OWNED = 0, 1, 2
#: ``irq_compat`` values: engine completions interrupt while the driver has never written the
#: user interrupt mask since reset ("legacy"), or only as the mask allows ("xdma").
IRQ_COMPAT_MODES = ("legacy", "xdma")

#: Counters kept per engine (lock-free on the command path) and summed into ``stats``.
ENGINE_STAT_KEYS = ("commands", "runs", "run_errors", "interrupts", "interrupts_masked",
                    "legacy_interrupts", "aborted", "invalid_contexts")
STAT_KEYS = (
    "ro_writes", "unmapped_writes", "bad_size_accesses", "commands", "runs", "run_errors",
    "busy_exec_writes", "dma_runs", "dma_descriptors", "dma_bytes", "dma_errors",
    "busy_dma_starts", "interrupts", "interrupts_masked", "interrupts_unhandled",
    "irq_handler_errors", "internal_errors", "resets", "legacy_interrupts", "abort_requests",
    "idle_aborts", "aborted", "host_slot_claims", "invalid_contexts",
)


class _Engine:
    """Per-engine command state and the locks of the EHCMDEXEC handshake."""

    def __init__(self, n: int):
        self.index = n
        self.req = R.cmdreq(n)
        self.res = R.cmdres(n)
        self.ctrl = R.cmdctrl(n)
        self.vector = R.engine_vector(n)
        #: Held from the EXEC write that starts a command until the command completes.
        self.running = threading.Lock()
        #: Held by the completion path across "release running, raise the vector", so reset()
        #: can wait until no interrupt of a pre-reset command is still on its way. Re-entrant
        #: because an interrupt handler may start the next (inline) command on this engine.
        self.done = threading.RLock()
        #: Released by the EXEC write to hand a Run Program to the worker thread.
        self.go = threading.Lock()
        self.go.acquire()
        self.request = b""
        #: The running Run Program's executable when found at EXEC (None: the runner loads it).
        self.exe: object | None = None
        #: The running Run Program is a short one run in its host's thread (``_short_run``): it
        #: sees an abort only when one is pending at its start.
        self.short = False
        self.ctx = R.cmdctx(n)
        self.trace = R.trace_buffer(n)
        #: The run's parameters decoded from EHCMDCTXn at EXEC: (input length, window, args,
        #: budget, entry symbol), or None for a legacy run.
        self.run_ctx: tuple | None = None
        #: Bytes of EHTRACEn the last run filled (cleared before the next run's text goes in).
        self.trace_len = 0
        #: The running Run Program's cancellation flag (a fresh one per command; set by abort).
        self.cancel: object | None = None
        self.thread: threading.Thread | None = None
        #: Tells the worker to exit when it next wakes (close(), or the device was collected).
        self.stop = False
        # Counters of the command path, only changed by the holder of ``running`` (or ``done``),
        # so they need no lock; ``HermesDevice.stats`` sums them.
        self.counts = dict.fromkeys(ENGINE_STAT_KEYS, 0)


class HermesDevice:
    """Register-accurate behavioural model of one Hermes eBPF accelerator.

    Transports call ``bar_read``/``bar_write``/``bar_size``, use ``bar4`` (a writable memoryview
    of BAR4), attach host memory with ``set_host_memory`` and receive interrupts through
    ``set_irq_handler``. Call ``close()`` (or use ``with``) to stop the engine threads.
    """

    def __init__(self, engines: int = 4, program_slots: int = 16, data_slots: int = 16,
                 program_slot_size: int = 1 << 20, data_slot_size: int = 1 << 20,
                 build: str = "hermes-emu 0.1", executor: str | None = None,
                 budget: int | None = None, interface_version: int = 1,
                 bar4: object | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE,
                 irq_compat: str = "legacy", can_abort: bool = True, run_context: bool = True,
                 engine: str | None = None):
        _check_int("engines", engines, 1, MAX_ENGINES)
        _check_int("program_slots", program_slots, 1, 255)
        _check_int("data_slots", data_slots, 1, 255)
        for name, size in (("program_slot_size", program_slot_size),
                           ("data_slot_size", data_slot_size)):
            _check_int(name, size, 8, 0xFFFF_FFF8)
            if size % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {size}")
        if interface_version not in R.INTERFACE_VERSIONS:
            raise ValueError(f"interface_version must be one of {R.INTERFACE_VERSIONS}, "
                             f"got {interface_version!r}")
        build_bytes = build.encode("utf-8") if isinstance(build, str) else None
        if build_bytes is None or len(build_bytes) > R.EHBLD_LEN:
            raise ValueError(f"build must be a string of at most {R.EHBLD_LEN} UTF-8 bytes")
        executor = _engine.executor_option(executor, engine)
        if executor is not None and executor not in _engine.executor_names():
            raise ValueError(f"unknown executor {executor!r}; choose one of "
                             f"{', '.join(_engine.executor_names())}")
        if budget is not None:
            _check_int("budget", budget, 1, MASK64)
        _check_int("cache_size", cache_size, 0, 1 << 20)
        if irq_compat not in IRQ_COMPAT_MODES:
            raise ValueError(f"irq_compat must be one of {', '.join(IRQ_COMPAT_MODES)}, "
                             f"got {irq_compat!r}")

        self._engine_mod = _engine
        self.engines = engines
        self.program_slots = program_slots
        self.data_slots = data_slots
        self.program_slot_size = program_slot_size
        self.data_slot_size = data_slot_size
        self.program_slot_offset = 0
        self.data_slot_offset = _align(program_slots * program_slot_size, BAR4_ALIGN)
        self.build = build
        self.interface_version = interface_version
        self.executor_name = executor or _engine.DEFAULT_EXECUTOR
        self.budget = budget if budget is not None else _engine.DEFAULT_BUDGET
        self.num_vectors = NUM_VECTORS
        self.irq_compat = irq_compat
        #: False models a device without EHCAP_ABORT (EHCMDABORT is then a read-only byte).
        self.can_abort = bool(can_abort)
        #: False models a device without EHCAP_RUNCTX (no EHCMDCTX/EHTRACE, byte 10 reserved).
        self.run_context = bool(run_context)
        self._legacy_irq = irq_compat == "legacy"
        bar4_size = self.data_slot_offset + data_slots * data_slot_size
        if interface_version == 1 and self.data_slot_offset > 0xFFFF_FFFF:
            raise ValueError("the data slot offset does not fit interface version 1's 32-bit "
                             "EHDSOFF; use interface_version=2")

        # BAR4: program slots then data slots, in a caller's buffer (shared memory) or our own.
        self._own_bar4 = bar4 is None
        if bar4 is None:
            self._bar4_store: object = bytearray(bar4_size)
            view = memoryview(self._bar4_store)
        else:
            self._bar4_store = bar4
            view = memoryview(bar4)  # type: ignore[arg-type]
            if view.readonly:
                raise ValueError("bar4 buffer must be writable")
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            if view.nbytes < bar4_size:
                raise ValueError(f"bar4 buffer has {view.nbytes} bytes, the layout needs "
                                 f"{bar4_size}")
            view = view[:bar4_size]
        self._bar4 = view
        self._bar4_size = bar4_size

        # BAR0 as bytes: header, command requests/responses and control registers live here so
        # a register read is one slice; writes are routed by region in bar_write.
        self._ctrl_end = R.cmdctrl(engines)
        self._req_end = R.EHCMDREQ_BASE + R.EHCMD_STRIDE * engines
        # The run contexts and trace buffers exist only on a device with EHCAP_RUNCTX; the BAR0
        # bytes between blocks stay 0 because no write reaches them.
        self._ctx_end = R.cmdctx(engines) if self.run_context else R.EHCMDCTX_BASE
        self._trace_end = R.trace_buffer(engines) if self.run_context else R.EHTRACE_BASE
        self._bar0 = bytearray(self._trace_end if self.run_context else self._ctrl_end)
        # The command path stores and slices BAR0 through a view: storing bytes into a slice of
        # a bytearray copies them first, and a slice of a bytearray is itself a copy.
        self._bar0v = memoryview(self._bar0)
        self._bar0_len = len(self._bar0)
        #: What the BAR0 header says (the XDMA block has every channel), written from it once.
        self.geometry = R.Geometry(
            interface_version, build, engines, program_slots, data_slots,
            self.program_slot_offset, program_slot_size, self.data_slot_offset, data_slot_size,
            (R.EHCAP_ABORT if self.can_abort else 0) | (R.EHCAP_RUNCTX if self.run_context else 0))
        header = R.Header.pack(self.geometry)
        self._header_end = len(header)
        self._bar0[:self._header_end] = header

        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._stats_lock = threading.Lock()
        self._slots_lock = threading.Lock()
        #: Owner of every slot (FREE, DEVICE_OWNED, HOST_OWNED), program slots then data slots.
        self._owner = ([FREE] * program_slots, [FREE] * data_slots)
        #: Running commands using each slot: a busy slot is never handed out (deferred free).
        self._busy = ([0] * program_slots, [0] * data_slots)
        self._cache = ProgramCache(cache_size, self._load)
        self._host: object | None = None
        self._irq_handler: Callable[[int], None] | None = None
        #: Last failure per engine (load or run), for diagnostics; not visible through registers.
        self.last_errors: dict[int, BaseException] = {}
        self._closed = False
        self._xdma = XdmaBlock(self._bar4, self._raise_irq, self._count, self._user_request)
        self._engines = [_Engine(n) for n in range(engines)]
        # Workers hold the device only weakly while idle, so a device dropped without close()
        # is still collected and its threads end (the finalizer wakes them).
        me = weakref.ref(self)
        for eng in self._engines:
            eng.thread = threading.Thread(target=_engine_thread, args=(me, eng),
                                          name=f"hermes-engine-{eng.index}", daemon=True)
            eng.thread.start()
        weakref.finalize(self, _stop_engines, list(self._engines))

    # --- public surface used by transports -----------------------------------------------------
    @property
    def bar4(self) -> memoryview:
        """Writable view of BAR4 (program slots, then data slots)."""
        return self._bar4

    @property
    def stats(self) -> dict[str, int]:
        """Snapshot of the device's counters (ignored writes, commands, DMA, interrupts...)."""
        with self._stats_lock:
            out = dict(self._stats)
        for eng in self._engines:
            for key, n in eng.counts.items():
                out[key] += n
        out["cache_hits"] = self._cache.hits
        out["cache_misses"] = self._cache.misses
        return out

    def bar_size(self, bar: int) -> int:
        """Size in bytes of BAR ``bar`` (0, 2 or 4)."""
        if bar == R.BAR_REGS:
            return R.BAR0_SIZE
        if bar == R.BAR_DMA:
            return R.BAR2_SIZE
        if bar == R.BAR_MEM:
            return self._bar4_size
        raise ValueError(f"the Hermes device has no BAR {bar}")

    def set_host_memory(self, host: object | None) -> None:
        """Attach the host memory DMA reads descriptors and data from (``HostMemory``-like)."""
        self._host = host
        self._xdma.host = host

    def set_irq_handler(self, fn: Callable[[int], None] | None) -> None:
        """Call ``fn(vector)`` (from device threads) whenever an interrupt fires."""
        self._irq_handler = fn

    def bar_read_block(self, bar: int, offset: int, length: int) -> bytes:
        """``length`` bytes of BAR ``bar`` at ``offset``, as that many 4-byte reads would return
        them: BAR0 reads have no side effects, so an aligned block inside it is one copy."""
        if bar == 0 and offset >= 0 and not (offset | length) & 3 \
                and offset + length <= self._bar0_len:
            return self._bar0v[offset:offset + length].tobytes()
        return b"".join(self.bar_read(bar, offset + i, 4).to_bytes(4, "little")
                        for i in range(0, length, 4))

    def bar_write_block(self, bar: int, offset: int, data: bytes) -> None:
        """Write ``data`` (length a multiple of 4) to BAR ``bar`` at ``offset`` as that many
        4-byte writes would: one copy when it lands, 8-aligned, inside one engine's request or
        run context IN fields (plain storage, whatever the access size)."""
        n = len(data)
        if bar == 0 and n and not (offset | n) & 7:
            if R.EHCMDREQ_BASE <= offset < self._req_end:
                if (offset - R.EHCMDREQ_BASE) % R.EHCMD_STRIDE + n <= R.EHCMDREQ_LEN:
                    self._bar0v[offset:offset + n] = data
                    return
            elif R.EHCMDCTX_BASE <= offset < self._ctx_end:
                if (offset - R.EHCMDCTX_BASE) % R.EHCMDCTX_STRIDE + n <= _CTX_IN_END:
                    self._bar0v[offset:offset + n] = data
                    return
        for i in range(0, n, 4):
            self.bar_write(bar, offset + i, 4, int.from_bytes(data[i:i + 4], "little"))

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read ``size`` bytes of BAR ``bar`` at ``offset`` as a little-endian integer."""
        if bar == 0:
            reader = _READERS.get(size)
            if reader is not None and not offset & (size - 1):
                if offset + size <= self._bar0_len and offset >= 0:
                    return reader(self._bar0, offset)[0]
                self._check_range(0, offset, size)
                return 0
            self._check_range(0, offset, size)
            self._count("bad_size_accesses")
            return 0
        if bar == 2:
            self._check_range(2, offset, size)
            if size != 4 or offset & 3:
                self._count("bad_size_accesses")
                return 0
            return self._xdma.read(offset)
        if bar == 4:
            self._check_range(4, offset, size)
            if size not in _MASKS:
                self._count("bad_size_accesses")
                return 0
            return int.from_bytes(self._bar4[offset:offset + size], "little")
        raise ValueError(f"the Hermes device has no BAR {bar}")

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write ``value`` as ``size`` little-endian bytes to BAR ``bar`` at ``offset``."""
        if bar == 0:
            mask = _MASKS.get(size)
            if mask is None or offset & (size - 1):
                self._check_range(0, offset, size)
                self._count("bad_size_accesses")
                return
            if R.EHCMDREQ_BASE <= offset < self._req_end:
                if (offset - R.EHCMDREQ_BASE) % R.EHCMD_STRIDE < R.EHCMDREQ_LEN:
                    self._bar0[offset:offset + size] = (value & mask).to_bytes(size, "little")
                else:
                    self._count("ro_writes")   # EHCMDRES is read-only (Decision 3)
                return
            if R.EHCMDCTRL_BASE <= offset < self._ctrl_end:
                # Only bytes 0 (EXEC) and 2 (ABORT) are writable; DONE and reserved bytes of a
                # wider write are dropped silently. An abort in the same write as a start stops
                # the command that was running before it, never the one the write starts.
                eng = self._engines[(offset - R.EHCMDCTRL_BASE) >> 3]
                first = offset & 7
                if self.can_abort and first <= R.EHCMDABORT < first + size:
                    if (value >> (8 * (R.EHCMDABORT - first))) & 1:
                        self._abort(eng)
                elif first != R.EHCMDEXEC:
                    self._count("ro_writes")
                if first == R.EHCMDEXEC and value & 1:
                    self._exec(eng)
                return
            if R.EHCMDCTX_BASE <= offset < self._ctx_end:
                # IN fields are RW; OUT fields and the reserved tail are the device's. An aligned
                # access of at most 8 bytes never straddles the 16-aligned IN/OUT boundary.
                if (offset - R.EHCMDCTX_BASE) % R.EHCMDCTX_STRIDE < _CTX_IN_END:
                    self._bar0[offset:offset + size] = (value & mask).to_bytes(size, "little")
                else:
                    self._count("ro_writes")
                return
            if R.EHTRACE_BASE <= offset < self._trace_end:
                self._count("ro_writes")   # printed text is written by the device only
                return
            self._check_range(0, offset, size)
            self._count("ro_writes" if offset < self._header_end else "unmapped_writes")
            return
        if bar == 2:
            self._check_range(2, offset, size)
            if size != 4 or offset & 3:
                self._count("bad_size_accesses")
                return
            ignored = self._xdma.write(offset, value)
            if ignored:
                self._count(ignored)
            return
        if bar == 4:
            self._check_range(4, offset, size)
            mask = _MASKS.get(size)
            if mask is None:
                self._count("bad_size_accesses")
                return
            self._bar4[offset:offset + size] = (value & mask).to_bytes(size, "little")
            return
        raise ValueError(f"the Hermes device has no BAR {bar}")

    def abort(self) -> None:
        """Stop the running command of every engine, as an EHCMDABORT write to each would (also
        on a device built with ``can_abort=False``: this is the device's own reset path)."""
        for eng in self._engines:
            self._abort(eng, count_idle=False)

    def reset(self, *, abort: bool = True) -> None:
        """Device reset: stops running commands (``abort=False``: waits for them to finish) and
        DMA, frees every slot, clears registers.

        BAR4 contents are kept. Interrupt masks return to 0, so a driver re-enables them after a
        reset. No interrupt of a command that finished before the reset arrives after it returns.
        Must not be called from the interrupt handler.
        """
        if self._closed:
            raise RuntimeError("device is closed")
        if abort:
            self.abort()   # every engine at once; _take_engine stops what starts meanwhile
        for eng in self._engines:
            self._take_engine(eng, abort)
            eng.done.acquire()
        try:
            self._xdma.reset()
            with self._slots_lock:
                for owners in self._owner:
                    owners[:] = [FREE] * len(owners)
            self._bar0[R.EHCMDREQ_BASE:] = bytes(self._bar0_len - R.EHCMDREQ_BASE)
            self.last_errors.clear()
        finally:
            for eng in self._engines:
                eng.done.release()
                eng.running.release()
        self._count("resets")

    def close(self, *, abort: bool = False) -> None:
        """Stop the engine threads after their current commands, which ``abort=True`` stops
        first (a departing user's runaway programs). Idempotent.

        Registers stay readable; a caller-provided BAR4 buffer is let go (BAR4 accesses fail).
        """
        if self._closed:
            return
        self._closed = True
        if abort:
            self.abort()
        for eng in self._engines:
            self._take_engine(eng, abort)   # keeps new commands out for good
        _stop_engines(self._engines)
        for eng in self._engines:
            if eng.thread is not None:
                eng.thread.join()
        self._cache.clear()   # loaded programs and their data segments go with the device
        if not self._own_bar4:
            # A caller's buffer (e.g. an mmap shared with another process) must be closable once
            # the device is: drop our views of it. BAR4 is unreachable from then on.
            try:
                self._bar4.release()
            except BufferError:
                pass

    def __enter__(self) -> HermesDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def slots_in_use(self) -> tuple[list[int], list[int]]:
        """Owned (program slot ids, data slot ids): handed out by Request Slot or claimed by a
        host-allocated run. For diagnostics and tests."""
        with self._slots_lock:
            return tuple([i for i, o in enumerate(owners) if o != FREE]  # type: ignore[return-value]
                         for owners in self._owner)

    def slot_owners(self) -> tuple[list[int], list[int]]:
        """Owner of every (program slot, data slot): FREE, DEVICE_OWNED or HOST_OWNED."""
        with self._slots_lock:
            return list(self._owner[0]), list(self._owner[1])

    def busy_slots(self) -> tuple[list[int], list[int]]:
        """(program slot ids, data slot ids) that a running command uses right now."""
        with self._slots_lock:
            return tuple([i for i, n in enumerate(busy) if n]  # type: ignore[return-value]
                         for busy in self._busy)

    def program_slot(self, slot: int) -> memoryview:
        """Writable view of program slot ``slot`` in BAR4."""
        off = self.program_slot_offset + slot * self.program_slot_size
        return self._bar4[off:off + self.program_slot_size]

    def data_slot(self, slot: int) -> memoryview:
        """Writable view of data slot ``slot`` in BAR4."""
        off = self.data_slot_offset + slot * self.data_slot_size
        return self._bar4[off:off + self.data_slot_size]

    # --- internals ------------------------------------------------------------------------------
    def _take_engine(self, eng: _Engine, abort: bool) -> None:
        """Hold ``eng``'s running lock: wait for its command, which ``abort`` stops (again and
        again, so a command started by another thread meanwhile is stopped as well)."""
        if not abort:
            eng.running.acquire()
            return
        while not eng.running.acquire(blocking=False):
            self._abort(eng, count_idle=False)
            if eng.running.acquire(timeout=0.05):
                return

    def _check_range(self, bar: int, offset: int, size: int) -> None:
        if offset < 0 or size < 1 or offset + size > self.bar_size(bar):
            raise ValueError(f"access of {size} bytes at {offset:#x} is outside BAR{bar} "
                             f"({self.bar_size(bar):#x} bytes)")

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    @staticmethod
    def _zero(view: memoryview) -> None:
        for off in range(0, len(view), len(_ZERO_CHUNK)):
            n = min(len(_ZERO_CHUNK), len(view) - off)
            view[off:off + n] = _ZERO_CHUNK[:n]

    def _user_request(self) -> int:
        # User interrupt request n is engine n's EHCMDDONE (level: set at completion, cleared
        # when the next command starts).
        b = self._bar0
        bits = 0
        for eng in self._engines:
            if b[eng.ctrl + R.EHCMDDONE]:
                bits |= 1 << eng.index
        return bits

    def _raise_irq(self, vector: int) -> None:
        handler = self._irq_handler
        if handler is None:
            self._count("interrupts_unhandled")
            return
        try:
            handler(vector)
        except Exception:  # the handler belongs to the host side; never let it kill our thread
            self._count("irq_handler_errors")

    def exec_inline(self, engine: int, started: Callable[[int], None] | None = None,
                    watched: bool = False) -> bool:
        """Write 1 to engine ``engine``'s EHCMDEXEC for a host that waits for the command at
        once, then call ``started(engine)``: as the register write does, except that a Run
        Program whose work is bounded small (section 10 of specs/device.md: a cached program,
        at most ``INLINE_WORK`` units of work) runs and completes in the calling thread, with
        ``started`` called before it begins, rather than on the engine's worker thread.
        ``watched``: the host aborts the command itself at its deadline (an EHCMDABORT from
        another thread) and the calling thread takes no KeyboardInterrupt, so a run of any
        length on a cached program may run here. True when the command has completed by the
        return (a run here, or a command that completes inside the write anyway); False when
        the worker runs it or the engine was busy."""
        return self._exec(self._engines[engine], started, watched)

    def _exec(self, eng: _Engine, started: Callable[[int], None] | None = None,
              watched: bool = False) -> bool:
        """Handshake start (Decision 2): EXEC=1 and DONE=0 before the write returns.

        ``started``: given by ``exec_inline`` (a short run, or with ``watched`` any run of a
        cached program, may then complete here), None for a register write. Returns whether the
        command has completed already."""
        if not eng.running.acquire(False):
            self._count("busy_exec_writes")
            if started is not None:
                started(eng.index)
            return False
        b = self._bar0v
        ctrl = eng.ctrl
        req = bytes(b[eng.req:eng.req + R.EHCMDREQ_LEN])   # later REQ writes do not affect it
        is_run = req[0] == R.CMD_RUN_PROGRAM
        # The flag exists before EXEC reads 1, so an abort that sees the command running always
        # has this command's flag to set.
        eng.cancel = self._engine_mod.Cancel() if is_run else None
        b[ctrl:ctrl + 3] = _CTRL_RUNNING
        eng.counts["commands"] += 1
        # Slot commands take microseconds: finish them inside the write (no thread hand-off).
        # A Run Program marks its slots busy here, before the write returns, so that no Release
        # or Request Slot issued after it can miss that the slots are in use.
        try:
            res = self._claim_run_slots(eng, req) if is_run else self._slot_command(req)
        except Exception as exc:  # defensive: a model bug must still complete the handshake
            self._count("internal_errors")
            self.last_errors[eng.index] = exc
            res = response(_cid(req), R.STATUS_EBPF_ERROR, R.ErrorKind.INTERNAL.pack())
        if res is None:
            eng.request = req
            eng.exe = None
            eng.short = False
            if started is not None and self._short_run(eng, req, watched):
                self._serve(eng, started)
                return True
            eng.go.release()
            if started is not None:
                started(eng.index)
            return False
        if is_run:
            self._write_out(eng)   # refused before it ran: no result of an earlier run remains
        self._complete(eng, res)
        if started is not None:
            started(eng.index)
        return True

    def _short_run(self, eng: _Engine, req: bytes, watched: bool = False) -> bool:
        """Whether the Run Program ``req`` (slots claimed) may run in the caller's thread: its
        program is loaded already and a run of it is bounded small (``INLINE_WORK``), or its
        host stops it at a deadline of its own (``watched``). A cached
        program found is kept in ``eng.exe`` for whichever thread runs the command, so the
        cache counts one lookup either way."""
        try:
            length = _PROG_LEN.unpack_from(req, 12)[0]
            if length == 0 or length % 8 or length > self.program_slot_size:
                return True   # refused at once, without a load
            ctx = eng.run_ctx
            poff = self.program_slot_offset + req[8] * self.program_slot_size
            found = self._cache.lookup(bytes(self._bar4[poff:poff + length]),
                                       self.executor_name, 0 if ctx is None else ctx[4])
            if found is None:
                return False   # loading may take long: the worker loads it
            eng.exe, (slots, calls) = found
            if isinstance(eng.exe, int) or watched:
                # failed to load: refused at once; a watched run may take as long as it needs
                return True
            if ctx is None:
                steps, window = self.budget, self.data_slot_size
            else:
                steps, window = ctx[3] or self.budget, ctx[1]
            if slots is not None:
                if slots < steps:
                    steps = slots
            elif calls:
                calls = steps   # a loop may call a helper at every instruction
            eng.short = steps + calls * (_HELPER_WORK + (window >> 6)) <= INLINE_WORK
            return eng.short
        except Exception:   # defensive: the worker then runs it as any other
            eng.exe = None
            self._count("internal_errors")
            return False

    def _abort(self, eng: _Engine, count_idle: bool = True) -> None:
        """EHCMDABORT: set the running command's cancellation flag (an idle engine: counted as a
        driver's stray abort, unless the device itself is sweeping its engines)."""
        with eng.done:   # completion holds it while clearing EXEC: no abort lands after that
            cancel = eng.cancel if self._bar0[eng.ctrl + R.EHCMDEXEC] else None
            if cancel is not None:
                self._bar0[eng.ctrl + R.EHCMDABORT] = 1
        if cancel is None:
            if count_idle:
                self._count("idle_aborts")
            return
        self._count("abort_requests")
        cancel.set()  # type: ignore[attr-defined]

    def _complete(self, eng: _Engine, res: bytes) -> None:
        """Handshake end: response, then DONE=1 with EXEC=0 (one store), then the vector."""
        b = self._bar0v
        with eng.done:
            b[eng.res:eng.res + R.EHCMDRES_LEN] = res
            b[eng.ctrl:eng.ctrl + 3] = _CTRL_DONE
            eng.cancel = None
            # Free the engine before interrupting, so a driver woken by the vector can start the
            # next command at once.
            eng.running.release()
            xdma = self._xdma
            if (xdma.user_mask >> eng.index) & 1:
                eng.counts["interrupts"] += 1
                self._raise_irq(eng.vector)
            elif self._legacy_irq and not xdma.user_mask_written:
                # A driver that never programs the user mask (the published one with execution)
                # still gets its completions, as the older QEMU model delivered them.
                eng.counts["interrupts"] += 1
                eng.counts["legacy_interrupts"] += 1
                self._raise_irq(eng.vector)
            else:
                eng.counts["interrupts_masked"] += 1

    def _serve(self, eng: _Engine, started: Callable[[int], None] | None = None) -> None:
        """Run the Run Program command handed over by the EXEC write, then complete it.

        ``started``: the command runs in the thread of an ``exec_inline`` call, which is told
        before the run begins. An interruption of that thread (KeyboardInterrupt) during the
        run completes the command as aborted before it propagates."""
        req = eng.request
        try:
            if started is not None:
                try:
                    res = self._run_program(eng, req, started)
                except Exception:
                    raise
                except BaseException:
                    eng.counts["aborted"] += 1
                    try:
                        self._write_out(eng)
                    finally:
                        self._complete(eng, response(_cid(req), R.STATUS_ABORTED))
                    raise
            else:
                res = self._run_program(eng, req)
        except Exception as exc:  # never let an exception kill the engine thread
            self._count("internal_errors")
            self.last_errors[eng.index] = exc
            res = response(_cid(req), R.STATUS_EBPF_ERROR, R.ErrorKind.INTERNAL.pack())
            try:
                self._write_out(eng)
            except Exception:
                pass   # the response still goes out
        try:
            self._complete(eng, res)
        except Exception:
            self._count("internal_errors")

    def _slot_command(self, req: bytes) -> bytes:
        opcode, cid, kind = req[0], _cid(req), req[8]
        if opcode not in (R.CMD_REQUEST_SLOT, R.CMD_RELEASE_SLOT) or kind not in (
                R.SLOT_PROGRAM, R.SLOT_DATA):
            return response(cid, R.STATUS_INVALID_OPCODE)
        owners, busy = self._owner[kind], self._busy[kind]
        if opcode == R.CMD_REQUEST_SLOT:
            with self._slots_lock:
                # Neither a slot a host-allocating driver claimed nor one a running command
                # still uses (released early, e.g. after a driver timeout) is handed out.
                slot = next((i for i, o in enumerate(owners) if o == FREE and not busy[i]), None)
                if slot is None:
                    return response(cid, R.STATUS_NO_SPACE)
                owners[slot] = DEVICE_OWNED
            # A new owner never sees the previous owner's bytes (D7): zero the slot now.
            self._zero(self.program_slot(slot) if kind == R.SLOT_PROGRAM else self.data_slot(slot))
            return response(cid, R.STATUS_SUCCESS, slot)
        slot = req[9]
        with self._slots_lock:
            if slot < len(owners) and owners[slot] != FREE:
                # A busy slot becomes free now but is handed out only once idle (deferred free).
                owners[slot] = FREE
                return response(cid, R.STATUS_SUCCESS)
        return response(cid, R.STATUS_INVALID_PROG_SLOT if kind == R.SLOT_PROGRAM
                        else R.STATUS_INVALID_DATA_SLOT)

    def _claim_run_slots(self, eng: _Engine, req: bytes) -> bytes | None:
        """Check a Run Program's slot ids and run context and count its slots busy; the error
        response, or None when the run may go to the engine's worker."""
        pslot, dslot = req[8], req[9]
        if pslot >= self.program_slots:
            return response(_cid(req), R.STATUS_INVALID_PROG_SLOT)
        if dslot >= self.data_slots:
            return response(_cid(req), R.STATUS_INVALID_DATA_SLOT)
        eng.run_ctx = None
        if self.run_context and req[R.RUN_FLAGS_BYTE]:   # no flags: a legacy run
            problem = self._take_context(eng, req, pslot)
            if problem is not None:
                eng.counts["invalid_contexts"] += 1
                self.last_errors[eng.index] = ValueError(problem)
                return response(_cid(req), R.STATUS_INVALID_CONTEXT)
        claims = 0
        powner, downer = self._owner
        pbusy, dbusy = self._busy
        with self._slots_lock:
            # A slot the device did not hand out: a driver that allocates on the host side chose
            # it. It stays out of Request Slot until released or reset.
            if powner[pslot] == FREE:
                powner[pslot] = HOST_OWNED
                claims += 1
            if downer[dslot] == FREE:
                downer[dslot] = HOST_OWNED
                claims += 1
            pbusy[pslot] += 1
            dbusy[dslot] += 1
        if claims:
            self._count("host_slot_claims", claims)
        return None

    def _take_context(self, eng: _Engine, req: bytes, pslot: int) -> str | None:
        """Decode a Run Program's flags and, with RUN_FLAG_CTX, copy and check EHCMDCTXn into
        ``eng.run_ctx`` (at EXEC, as the request: later writes do not affect the run). Returns
        what is wrong with them, or None."""
        flags = req[R.RUN_FLAGS_BYTE]
        if flags & ~R.RUN_FLAG_CTX:
            return f"unknown Run Program flag bits {flags & ~R.RUN_FLAG_CTX:#04x}"
        if not flags & R.RUN_FLAG_CTX:
            return None
        if req[R.RUN_FLAGS_BYTE + 1]:
            return "reserved Run Program byte 11 is not 0"
        input_len, window, a0, a1, a2, budget, entry, reserved = _ctx_fields(self._bar0, eng.ctx)
        if reserved:
            return f"reserved run context field (offset {R.CTX_IN_RESERVED:#x}) is not 0"
        if window > self.data_slot_size:
            return f"window of {window} bytes is larger than a data slot ({self.data_slot_size})"
        if input_len > window:
            return f"input length {input_len} is larger than the window ({window})"
        if entry:
            poff = self.program_slot_offset + pslot * self.program_slot_size
            if bytes(self._bar4[poff:poff + 4]) != ELF_MAGIC:
                return f"entry symbol {entry} given for a program that is not an ELF object"
        eng.run_ctx = (input_len, window, (a0, a1, a2), budget, entry)
        return None

    def _write_out(self, eng: _Engine, instructions: int = 0, output_len: int | None = None,
                   trace: bytes = b"", run_ns: int = 0, fault: ExecutionError | None = None,
                   dropped: int = 0, budget: int = 0) -> None:
        """Fill engine ``eng``'s OUT fields and EHTRACEn after a Run Program (before DONE)."""
        if not self.run_context:
            return
        b = self._bar0v
        if fault is None and not trace and not eng.trace_len:   # most runs: no text, no fault
            at = eng.ctx + R.CTX_INSNS
            b[at:at + _OUT_SIZE] = out_fields(
                instructions, R.CTX_NO_OUTPUT if output_len is None else output_len, 0, run_ns,
                0, 0, 0, dropped, budget)
            return
        trace = trace[:R.TRACE_LIMIT]
        n = len(trace)
        if fault is not None and fault.kind == R.ErrorKind.OUT_OF_BOUNDS:
            address, size = fault.address or 0, fault.size or 0
            flags = R.RunContextOut.fault_flags_of(bool(fault.write), fault.depth)
        else:
            address = size = flags = 0
        at = eng.ctx + R.CTX_INSNS
        b[at:at + _OUT_SIZE] = out_fields(
            instructions, R.CTX_NO_OUTPUT if output_len is None else output_len, n, run_ns,
            address, size, flags, dropped, budget)
        if n:
            b[eng.trace:eng.trace + n] = trace
        if eng.trace_len > n:   # a shorter text than last time: no old text stays readable
            b[eng.trace + n:eng.trace + eng.trace_len] = bytes(eng.trace_len - n)
        eng.trace_len = n

    def _run_program(self, eng: _Engine, req: bytes,
                     started: Callable[[int], None] | None = None) -> bytes:
        """Run Program on slots ``_claim_run_slots`` counted busy; they are idle again after.
        ``started(engine)`` is called first (see ``_serve``)."""
        pslot, dslot = req[8], req[9]
        try:
            if started is not None:
                started(eng.index)
            return self._run_on_slots(eng, req, req[2] | req[3] << 8, pslot, dslot)
        finally:
            with self._slots_lock:
                self._busy[0][pslot] -= 1
                self._busy[1][dslot] -= 1

    def _run_on_slots(self, eng: _Engine, req: bytes, cid: int, pslot: int, dslot: int) -> bytes:
        """Load (cached), run, encode the result and fill the OUT fields."""
        cancel = eng.cancel
        if eng.short and not cancel.is_set():  # type: ignore[attr-defined]
            # Bounded small work (D26): an abort arriving during it finds the run as good as
            # done, so the engine need not watch the flag; one pending at its start still stops
            # it there. Watching costs more than such a run.
            cancel = None
        counts = eng.counts
        counts["runs"] += 1
        ctx = eng.run_ctx
        exe: object = eng.exe
        if exe is not None:
            eng.exe = None   # looked up at EXEC already (see _short_run)
        else:
            length = _PROG_LEN.unpack_from(req, 12)[0]
            if length == 0 or length % 8 or length > self.program_slot_size:
                exe = R.ErrorKind.LOAD.pack()
            else:
                poff = self.program_slot_offset + pslot * self.program_slot_size
                exe = self._cache.get(bytes(self._bar4[poff:poff + length]), self.executor_name,
                                      0 if ctx is None else ctx[4])
        if isinstance(exe, int):
            counts["run_errors"] += 1
            self._write_out(eng)   # it did not run: nothing of the previous run survives
            return response(cid, R.STATUS_EBPF_ERROR, exe)
        doff = self.data_slot_offset + dslot * self.data_slot_size
        if ctx is None:   # legacy: the whole slot, r2 = its size, no arguments
            memory = self._bar4[doff:doff + self.data_slot_size]
            budget = self.budget
        else:
            input_len, window, args, budget, _ = ctx
            memory = self._bar4[doff:doff + window]
            if input_len < window:
                # Nothing of a previous run is visible past the input (a memset, no DMA).
                self._zero(memory[input_len:])
            budget = budget or self.budget
        start = time.perf_counter_ns()
        try:
            # In place: the program edits BAR4. An abort during loading is seen by the engine:
            # the run stops before its first block.
            if ctx is None:
                result = exe.run(memory, budget, cancel=cancel)  # type: ignore[attr-defined]
            else:
                result = exe.run(memory, budget, cancel=cancel,  # type: ignore[attr-defined]
                                 length=input_len, args=args)
        except Cancelled as exc:
            counts["aborted"] += 1
            self._write_out(eng, exc.instructions or 0, run_ns=time.perf_counter_ns() - start,
                            budget=budget,
                            **_printed(exc))
            return response(cid, R.STATUS_ABORTED, exc.pc or 0)
        except (ExecutionError, ProgramError) as exc:
            run_ns = time.perf_counter_ns() - start
            counts["run_errors"] += 1
            self.last_errors[eng.index] = exc
            fault = exc if isinstance(exc, ExecutionError) else None
            self._write_out(eng, (fault.instructions or 0) if fault else 0, run_ns=run_ns,
                            budget=budget,
                            fault=fault, **_printed(exc))
            return response(cid, R.STATUS_EBPF_ERROR, error_code(exc))
        run_ns = time.perf_counter_ns() - start
        self._write_out(eng, result.instructions, result.output_length, result.trace, run_ns,
                        None, result.trace_dropped, budget)
        return response(cid, R.STATUS_SUCCESS, result.return_value)

    def _load(self, code: bytes, entry: int = 0) -> object:
        """Bytes of a program slot (entered at ELF symbol ``entry``, 0: the default) ->
        executable, or the status 0x05 error code on failure."""
        eng = self._engine_mod
        try:
            if code[:4] == ELF_MAGIC:
                program = load_elf(code, max_size=self.program_slot_size,
                                               entry_symbol=entry)
            else:
                program = eng.Program.from_bytes(code)
            return eng.load(program, helpers=eng.DEVICE_HELPERS, executor=self.executor_name,
                            budget=self.budget)
        except ProgramError as exc:
            return error_code(exc)
        except Exception:
            # e.g. a parser crash on a malformed ELF object: still the program's fault, so a
            # load error, but counted so model bugs do not hide.
            self._count("internal_errors")
            return R.ErrorKind.LOAD.pack()


def _engine_thread(device_ref: weakref.ref[HermesDevice], eng: _Engine) -> None:
    """Body of engine ``eng``'s worker thread: wait for a command, serve it, repeat."""
    while True:
        eng.go.acquire()
        if eng.stop:
            return
        device = device_ref()
        if device is None:
            return
        device._serve(eng)
        del device


def _stop_engines(engines: list[_Engine]) -> None:
    """Make idle workers exit (each is blocked on its ``go`` lock, which is held)."""
    for eng in engines:
        eng.stop = True
        try:
            eng.go.release()
        except RuntimeError:   # already released: the worker is about to wake anyway
            pass


def _cid(req: bytes) -> int:
    return req[2] | (req[3] << 8)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def _printed(exc: BaseException) -> dict:
    """The ``_write_out`` fields of the text a failed or aborted run printed before it stopped
    (the engines put it on their errors; a load error printed nothing)."""
    return {"trace": getattr(exc, "trace", "").encode("utf-8"),
            "dropped": getattr(exc, "trace_dropped", 0)}

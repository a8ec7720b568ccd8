"""The driver proper: probe, interrupt setup, engine pool, command submission and DMA transfers."""
from __future__ import annotations

import errno
import math
import threading
import time
from dataclasses import asdict, replace

from .. import regs
from ..transport.base import DmaBuffer, Transport
from .dma import C2H, H2C, Channel, ChannelPool
from .protocol import DriverError, Response, error, run_word, status_error

#: The probe's result (re-exported: ``hermes.driver.Geometry``).
Geometry = regs.Geometry

#: Seconds a command (a run included) may take before the driver gives up with ETIMEDOUT.
DEFAULT_TIMEOUT = 60.0
#: Seconds one DMA chain may take.
DEFAULT_DMA_TIMEOUT = 10.0
#: Bytes per descriptor (a chain has one descriptor per chunk). The bounce buffers are contiguous,
#: so page-sized descriptors are not needed; each descriptor costs the device a fixed overhead,
#: and 256 KiB keeps 1 MiB transfers a real chain (4 descriptors) at ~80% of one-descriptor speed.
DEFAULT_DMA_CHUNK = 256 << 10
#: Bytes of bounce buffer per channel (bigger transfers go in several chains).
DEFAULT_BOUNCE_SIZE = 1 << 20
#: Seconds to wait, after a command timed out and was aborted, for its engine to read idle.
DEFAULT_ABORT_TIMEOUT = 2.0
#: User interrupts whose vector numbers the XDMA IRQ block has registers for (four of four).
_MAX_USER_VECTOR_REGS = 16
#: Channel interrupt-enable bits: everything a chain can end with.
_CHANNEL_IRQ_BITS = 0x00FFFFFE
_BAR0 = regs.BAR_REGS
_BAR2 = regs.BAR_DMA
#: Longest single interrupt wait. A KeyboardInterrupt that another thread raises in the waiting
#: one (``_thread.interrupt_main``) wakes no blocking call, so waits are cut into slices after
#: which Python sees it; a slice is longer than the vfio-user transport's liveness probe interval
#: (0.1 s), so that transport still probes a silent server during a long wait.
_WAIT_SLICE = 0.25


class RunControl:
    """One run of a file as the driver and other threads see it.

    The driver records the engine on which the run's command started, so ``abort`` (from any
    thread) writes EHCMDABORT to exactly that engine, and only while the command is there. With a
    run context it carries the IN words to write (``ctx``) and receives the OUT bytes and the
    printed text; ``timeout`` is the run's own timeout (None: the driver's).
    """

    def __init__(self, driver: "Driver", ctx: "tuple[int, ...] | None" = None,
                 timeout: float | None = None):
        self._drv = driver
        self._lock = threading.Lock()
        self.ctx = ctx
        self.timeout = timeout
        self.engine: int | None = None
        #: The engine the command last started on (kept after it ended, for the quarantine).
        self.last_engine: int | None = None
        self.aborted = False
        self.done = False
        #: After an interruption (KeyboardInterrupt...) during the command: whether its engine
        #: was seen idle afterwards.
        self.stopped: bool | None = None
        self.out = b""
        self.trace = b""

    def abort(self) -> bool:
        """Stop the run: now if its command runs, at its start if it has not started yet. False
        when the run is over or the device cannot abort commands (no EHCAP_ABORT)."""
        if not self._drv.can_abort:
            return False
        with self._lock:
            if self.done:
                return False
            self.aborted = True
            if self.engine is not None:
                self._drv._abort_engine(self.engine)
            return True

    def started(self, engine: int) -> None:
        """The command was started on ``engine`` (EHCMDEXEC written)."""
        with self._lock:
            self.engine = self.last_engine = engine
            if self.aborted:
                self._drv._abort_engine(engine)

    def finished(self) -> None:
        """The command is over (its engine is about to serve others): aborts no longer apply."""
        with self._lock:
            self.engine = None
            self.done = True


class _EnginePool:
    """Engines handed out one command at a time; an engine whose command timed out is set aside
    until its EHCMDEXEC byte reads 0 again."""

    def __init__(self, driver: "Driver", count: int):
        self._drv = driver
        self._free = list(range(count - 1, -1, -1))
        self._stale: set[int] = set()
        self._cond = threading.Condition(threading.Lock())
        self.count = count

    def acquire(self, timeout: float) -> int:
        """A free engine's number. Waits as long as it takes while engines run live commands
        (each has its own timeout); when only engines with timed-out commands remain, polls them
        for up to ``timeout`` seconds, then fails with ETIMEDOUT."""
        deadline = None
        with self._cond:
            if self._stale:
                # Also when other engines are free: a reclaimed engine ends the quarantine of the
                # slots its timed-out command held.
                self._reclaim()
            while True:
                if self._free:
                    return self._free.pop()
                if self._drv.closed:
                    raise error(errno.ENODEV, "the driver was closed")
                if self._stale:
                    self._reclaim()
                    if self._free:
                        continue
                if len(self._stale) == self.count:
                    now = time.monotonic()
                    deadline = deadline or now + timeout
                    if now >= deadline:
                        raise error(errno.ETIMEDOUT, f"no engine became free within {timeout:g} s"
                                    ": every engine is still busy with a command that timed out")
                    self._cond.wait(min(0.005, deadline - now))
                else:
                    self._cond.wait(0.005 if self._stale else None)

    def _reclaim(self) -> None:
        for n in list(self._stale):
            if not self._drv._engine_busy(n):
                self._stale.discard(n)
                self._drv._clear_engine_irq(n)
                self._drv._end_quarantine(n)
                self._free.append(n)

    def release(self, n: int, healthy: bool = True) -> None:
        """Return engine ``n``; an unhealthy one (timed out) is set aside until it is idle."""
        with self._cond:
            if healthy:
                self._free.append(n)
            else:
                self._stale.add(n)
            self._cond.notify()

    def wake_all(self) -> None:
        """Wake every waiter (the driver is closing)."""
        with self._cond:
            self._cond.notify_all()


class Driver:
    """One attached Hermes device: geometry, engines, DMA channels, open files.

    Thread-safe: any number of files (and threads) share one driver. Commands go to the first free
    engine (a command waits for one); DMA goes through the first free channel of its direction.
    """

    def __init__(self, transport: Transport, *, timeout: float = DEFAULT_TIMEOUT,
                 dma_timeout: float = DEFAULT_DMA_TIMEOUT, dma_chunk: int = DEFAULT_DMA_CHUNK,
                 bounce_size: int = DEFAULT_BOUNCE_SIZE, owns_transport: bool = True,
                 abort_timeout: float = DEFAULT_ABORT_TIMEOUT):
        if dma_chunk <= 0 or dma_chunk % 8 or bounce_size < dma_chunk:
            raise ValueError("dma_chunk must be a positive multiple of 8, at most bounce_size")
        if not abort_timeout >= 0:
            raise ValueError(f"abort_timeout must be >= 0 seconds, got {abort_timeout!r}")
        self.transport = transport
        self.timeout = timeout
        self.dma_timeout = dma_timeout
        self.abort_timeout = abort_timeout
        self._owns_transport = owns_transport
        # A transport with its own read_block (one message for a vfio-user client) gets the
        # 16-byte response in one access; others in two 8-byte reads rather than four 4-byte.
        self._block_reads = type(transport).read_block is not Transport.read_block
        self._lock = threading.Lock()
        self._files: set = set()
        #: Slots whose owner closed while no engine answered: released on a later occasion.
        self._orphans: list[tuple[int, int]] = []
        #: Engine -> slots of a timed-out command on it that could not be stopped: kept allocated
        #: until that engine reads idle, then released like the orphans above.
        self._quarantine: dict[int, list[tuple[int, int]]] = {}
        self._next_id = 1
        self.closed = False
        self.geometry = self._probe()
        g = self.geometry
        nvec = getattr(transport, "num_vectors", regs.MSIX_VECTORS)
        nchan = g.h2c_channels + g.c2h_channels
        # Engine n's interrupt is vector h2c + c2h + n (user interrupt n of the IRQ block, whose
        # mask has 32 bits); engines past the vector table are polled instead.
        self._engine_vectors = [nchan + n if n < 32 and nchan + n < nvec else None
                                for n in range(g.engines)]
        self._engines = _EnginePool(self, g.engines)
        #: Request bytes 16..31 last written to each engine (0 after probe, see _execute).
        self._req_rest = [1] * g.engines  # unknown at attach: the first command writes them
        self._h2c = ChannelPool([Channel(transport, H2C, c, c if c < nvec else None, bounce_size,
                                         dma_chunk) for c in range(g.h2c_channels)])
        self._c2h = ChannelPool([Channel(transport, C2H, c, g.h2c_channels + c
                                         if g.h2c_channels + c < nvec else None,
                                         bounce_size, dma_chunk) for c in range(g.c2h_channels)])
        self._enable_interrupts()

    # --- probe ----------------------------------------------------------------------------------
    def _probe(self) -> Geometry:
        t = self.transport
        try:
            g = regs.Header.unpack(lambda offset, length: t.read_block(_BAR0, offset, length))
        except regs.InterfaceVersionError as exc:
            hint = " (no device answering?)" if exc.version in (0, 0xFFFFFFFF) else ""
            raise error(errno.ENODEV, f"unsupported Hermes interface version {exc.version:#x}"
                        f"{hint}; this driver supports versions "
                        f"{', '.join(map(str, regs.INTERFACE_VERSIONS))}") from None
        problems = []
        if g.engines == 0:
            problems.append("EHENG is 0 (no engines)")
        if g.program_slots == 0 or g.program_slot_size == 0:
            problems.append(f"no program slots (EHPSLOT {g.program_slots}, "
                            f"EHPSSZE {g.program_slot_size})")
        if g.data_slots == 0 or g.data_slot_size == 0:
            problems.append(f"no data slots (EHDSLOT {g.data_slots}, EHDSSZE {g.data_slot_size})")
        psoff, dsoff = g.program_slot_offset, g.data_slot_offset
        pend = psoff + g.program_slots * g.program_slot_size
        dend = dsoff + g.data_slots * g.data_slot_size
        if g.program_slots and g.data_slots and psoff < dend and dsoff < pend:
            problems.append(f"program slots [{psoff:#x}, {pend:#x}) overlap data slots "
                            f"[{dsoff:#x}, {dend:#x})")
        h2c = self._count_channels(regs.XDMA_TARGET_H2C)
        c2h = self._count_channels(regs.XDMA_TARGET_C2H)
        if not h2c or not c2h:
            problems.append(f"XDMA block has {h2c} H2C and {c2h} C2H channels (need one of each)")
        if problems:
            raise error(errno.ENODEV, "refusing the Hermes device: " + "; ".join(problems))
        return replace(g, h2c_channels=h2c, c2h_channels=c2h)

    def _count_channels(self, target: int) -> int:
        """Channels whose identifier register carries the XDMA magic and the right target."""
        n = 0
        limit = regs.XDMA_H2C_CHANNELS if target == regs.XDMA_TARGET_H2C else regs.XDMA_C2H_CHANNELS
        while n < limit:
            off = regs.xdma_offset(target, n, regs.XDMA_CH_IDENTIFIER)
            ident = self.transport.read(_BAR2, off, 4)
            if ident >> 20 != regs.XDMA_ID_MAGIC or (ident >> 16) & 0xF != target:
                break
            n += 1
        return n

    def _enable_interrupts(self) -> None:
        """Route and unmask channel and engine interrupts (left masked, the device stays mute)."""
        t = self.transport
        g = self.geometry
        irq = regs.XDMA_TARGET_IRQ
        vectors = [c for c in range(g.h2c_channels)] + [g.h2c_channels + c
                                                         for c in range(g.c2h_channels)]
        # Channel vector registers: four 5-bit vector numbers a register, H2C channels first.
        self._write_vectors(regs.XDMA_IRQ_CHANNEL_VECTOR, vectors, 2)
        user = self._engine_vectors[:_MAX_USER_VECTOR_REGS]
        self._write_vectors(regs.XDMA_IRQ_USER_VECTOR,
                            [v if v is not None else 0 for v in user], 4)
        for pool in (self._h2c, self._c2h):
            for ch in pool.channels:
                t.write(_BAR2, ch.r_irq_mask, 4, _CHANNEL_IRQ_BITS)
                t.read(_BAR2, ch.r_status_rc, 4)  # start from clean status bits
        t.write(_BAR2, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_CHANNEL_MASK_W1S), 4,
                (1 << len(vectors)) - 1)
        user_bits = sum(1 << n for n, v in enumerate(self._engine_vectors) if v is not None)
        t.write(_BAR2, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_USER_MASK_W1S), 4, user_bits)
        for n in range(g.engines):
            self._clear_engine_irq(n)

    def _write_vectors(self, base: int, vectors: list[int], registers: int) -> None:
        for r in range(registers):
            word = 0
            for k, v in enumerate(vectors[4 * r:4 * r + 4]):
                word |= (v & 0x1F) << (8 * k)
            self.transport.write(_BAR2, regs.xdma_offset(regs.XDMA_TARGET_IRQ, 0, base + 4 * r), 4,
                                 word)

    # --- public -----------------------------------------------------------------------------------
    def open(self) -> "HermesFile":
        """A new file on the device (owns no slot until it downloads a program / writes data)."""
        from .file import HermesFile
        with self._lock:
            self._check_open()
            f = HermesFile(self)
            self._files.add(f)
        return f

    def info(self) -> dict:
        """The device geometry (BAR0 registers and DMA channels) as a dict."""
        return asdict(self.geometry)

    def close(self) -> None:
        """Close every open file (releasing its slots), mask interrupts, release the transport."""
        with self._lock:
            if self.closed:
                return
            files = list(self._files)
        for f in files:
            try:
                f.close()
            except Exception:  # the device may already be gone; the file is closed regardless
                pass
        try:
            self._flush_orphans()
        except Exception:  # best effort, as above
            pass
        with self._lock:
            self.closed = True
        self._engines.wake_all()
        t = self.transport
        try:
            irq = regs.XDMA_TARGET_IRQ
            t.write(_BAR2, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_USER_MASK_W1C), 4, 0xFFFFFFFF)
            t.write(_BAR2, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_CHANNEL_MASK_W1C), 4, 0xFFFFFFFF)
        except (OSError, ValueError, RuntimeError):
            pass  # best effort: the device is being detached anyway
        for pool in (self._h2c, self._c2h):
            for ch in pool.channels:
                try:
                    ch.free()
                except (OSError, ValueError, RuntimeError):
                    pass
        if self._owns_transport:
            t.close()

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise error(errno.ENODEV, "the driver was closed")

    def _forget(self, f: object) -> None:
        with self._lock:
            self._files.discard(f)

    # --- commands -------------------------------------------------------------------------------
    def next_command_id(self) -> int:
        """A fresh u16 command id for commands issued on the driver's own behalf."""
        with self._lock:
            i = self._next_id
            self._next_id = (i + 1) & 0xFFFF
            return i

    def command(self, opcode: int, payload: bytes = b"", *, cmd_id: int | None = None,
                timeout: float | None = None) -> Response:
        """Run one raw command on a free engine and return its response (status not interpreted).

        ``payload`` is the command-specific part (request bytes 8..31). Raises ETIMEDOUT when the
        engine never completes, EBADE when the response carries another command id, EIO when the
        completion handshake is broken.
        """
        if len(payload) > regs.EHCMDREQ_LEN - 8:
            raise ValueError(f"command payload is {len(payload)} bytes; at most 24 fit")
        if cmd_id is None:
            cmd_id = self.next_command_id()
        body = bytes(payload).ljust(24, b"\0")
        return self._submit(opcode, cmd_id & 0xFFFF, int.from_bytes(body[:8], "little"),
                            int.from_bytes(body[8:], "little"),
                            self.timeout if timeout is None else timeout)

    def _submit(self, opcode: int, cmd_id: int, word1: int, rest: int,
                timeout: float, control: RunControl | None = None) -> Response:
        """Send request ``opcode | cmd_id``, ``word1`` (bytes 8..15), ``rest`` (16..31)."""
        if self.closed:
            raise error(errno.ENODEV, "the driver was closed")
        engine = self._engines.acquire(timeout)
        healthy = False
        try:
            response = self._execute(engine, opcode | cmd_id << 16, word1, rest, timeout,
                                     control)
            healthy = True
        except DriverError as exc:
            # An engine seen idle after its command timed out is as good as any other.
            healthy = exc.command_stopped is True
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt...) while the command may still run: stop it before
            # the engine, or the caller's slots, serve anyone else.
            healthy = self._stop_command(engine)[0]
            if control is not None:
                control.stopped = healthy
            raise
        finally:
            if control is not None:
                control.finished()
            self._engines.release(engine, healthy)
        if response.cmd_id != cmd_id:
            raise error(errno.EBADE, f"engine {engine} answered command id {response.cmd_id:#06x}"
                        f" to command {cmd_id:#06x} (opcode {opcode:#04x})", response)
        return response

    def _execute(self, engine: int, word0: int, word1: int, rest: int, timeout: float,
                 control: RunControl | None = None) -> Response:
        """The handshake on one engine (held exclusively by the caller)."""
        t = self.transport
        vector = self._engine_vectors[engine]
        if vector is not None:
            t.irq_clear(vector)  # an interrupt now can only be this command's
        ctx = control.ctx if control is not None else None
        if ctx is not None:
            at = regs.cmdctx(engine)
            for k, word in enumerate(ctx):
                t.write(_BAR0, at + 8 * k, 8, word)
        base = regs.cmdreq(engine)
        t.write(_BAR0, base, 8, word0)
        t.write(_BAR0, base + 8, 8, word1)
        # Bytes 16..31 are reserved for every command this driver sends: write them only when
        # they change (a raw command with a long payload), saving two accesses per command.
        if rest or self._req_rest[engine]:
            t.write(_BAR0, base + 16, 8, rest & 0xFFFFFFFFFFFFFFFF)
            t.write(_BAR0, base + 24, 8, rest >> 64)
            self._req_rest[engine] = rest
        ctrl = regs.cmdctrl(engine)
        t.write(_BAR0, ctrl, 1, 1)  # EHCMDEXEC
        if control is not None:
            control.started(engine)
        state = t.read(_BAR0, ctrl, 2)
        if state == 0x0101:
            # Running but DONE not cleared: a waiter could take the previous result for this
            # one (the upstream stale-DONE bug). Refuse rather than guess.
            raise error(errno.EIO, f"engine {engine}: EHCMDDONE still set after the start of "
                        f"command {word0 >> 16:#06x}; the device did not clear it")
        if vector is not None:
            fired = self._wait_irq(vector, timeout)
        else:
            fired = self._poll_done(engine, timeout)
        if not fired:
            stopped, how = self._stop_command(engine)
            if stopped and control is not None and control.timeout is not None:
                return self._timed_out_run(engine, control)
            what = (f"engine {engine}: command {word0 >> 16:#06x} (opcode {word0 & 0xFF:#04x}) "
                    f"did not complete within {timeout:g} s")
            raise DriverError(errno.ETIMEDOUT, f"{what}; {how}", engine=engine,
                              command_stopped=stopped)
        state = t.read(_BAR0, ctrl, 2)
        if state != 0x0100:
            raise error(errno.EIO, f"engine {engine}: interrupt without completion (EHCMDEXEC "
                        f"{state & 0xFF}, EHCMDDONE {state >> 8 & 0xFF})")
        return self._read_results(engine, control)

    def _read_results(self, engine: int, control: RunControl | None) -> Response:
        """The response of ``engine``'s completed command, and a run context's OUT fields and
        printed text into ``control``."""
        raw = self._read_bytes(regs.cmdres(engine), regs.EHCMDRES_LEN)
        response = Response.unpack(raw)
        if control is not None and control.ctx is not None:
            out = self._read_bytes(regs.cmdctx(engine) + regs.CTX_INSNS, regs.RunContextOut.SIZE)
            n = min(regs.RunContextOut.unpack(out).trace_len, regs.TRACE_LIMIT)
            control.out = out
            control.trace = self._read_bytes(regs.trace_buffer(engine), n) if n else b""
        return response

    def _read_bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes of BAR0 at the 8-aligned ``offset``: one block read where the
        transport has one (a single vfio-user message), else 8-byte reads."""
        t = self.transport
        if self._block_reads:
            return t.read_block(_BAR0, offset, (length + 3) & ~3)[:length]
        return b"".join(t.read(_BAR0, offset + i, 8).to_bytes(8, "little")
                        for i in range(0, length, 8))[:length]

    def _timed_out_run(self, engine: int, control: RunControl) -> Response:
        """A run past its own timeout that the abort stopped: its response (a run that finished
        as the abort arrived is simply returned), else ETIMEDOUT with the pc it stopped at."""
        response = self._read_results(engine, control)
        if response.status != regs.STATUS_ABORTED:
            return response
        raise DriverError(errno.ETIMEDOUT, f"the run exceeded its timeout of "
                          f"{control.timeout:g} s and was aborted at pc {response.value}",
                          response, engine=engine, command_stopped=True)

    def _wait_irq(self, vector: int, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for ``vector``, in slices."""
        t = self.transport
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if t.irq_wait(vector, max(0.0, min(left, _WAIT_SLICE))):
                return True
            if time.monotonic() >= deadline:
                return False

    @property
    def can_abort(self) -> bool:
        """Whether the device stops running commands on request (EHCAP_ABORT)."""
        return bool(self.geometry.capabilities & regs.EHCAP_ABORT)

    def _abort_engine(self, engine: int) -> None:
        """Write EHCMDABORT to ``engine`` (its running command completes with status 0x07)."""
        self.transport.write(_BAR0, regs.cmdctrl(engine) + regs.EHCMDABORT, 1, 1)

    def _poll_done(self, engine: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ctrl = regs.cmdctrl(engine)
        delay = 0.00002
        while True:
            state = self.transport.read(_BAR0, ctrl, 2)
            if not state & 0xFF and state >> 8 & 0xFF:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.002)

    def _stop_command(self, engine: int) -> tuple[bool, str]:
        """After a timeout: abort the engine's command if the device can (EHCAP_ABORT) and wait up
        to ``abort_timeout`` for the engine to read idle. Returns (idle, what happened)."""
        can_abort = self.can_abort
        try:
            if can_abort:
                self._abort_engine(engine)
            deadline = time.monotonic() + (self.abort_timeout if can_abort else 0)
            delay = 0.0002
            while self._engine_busy(engine):
                now = time.monotonic()
                if now >= deadline:
                    break
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.01)
            else:
                self._clear_engine_irq(engine)   # the aborted command's completion interrupt
                return True, ("the command was aborted; the engine is idle" if can_abort else
                              "the command has finished since; the engine is idle")
        except OSError as exc:
            return False, f"the engine could not be checked ({exc})"
        if can_abort:
            return False, (f"the engine was still busy {self.abort_timeout:g} s after an abort "
                           "request")
        return False, "the device cannot abort commands and the engine is still busy"

    def _engine_busy(self, engine: int) -> bool:
        return bool(self.transport.read(_BAR0, regs.cmdctrl(engine) + regs.EHCMDEXEC, 1))

    def _clear_engine_irq(self, engine: int) -> None:
        vector = self._engine_vectors[engine]
        if vector is not None:
            self.transport.irq_clear(vector)

    # --- slots ----------------------------------------------------------------------------------
    def quarantine(self, engine: int, slots: list[tuple[int, int]]) -> None:
        """Keep ``slots`` ((kind, slot) pairs) of a command that timed out on ``engine`` and could
        not be stopped: never released or reused while that engine may still be running it; they
        are released once the engine reads idle (checked whenever a caller waits for an engine)."""
        with self._lock:
            self._quarantine.setdefault(engine, []).extend(slots)

    def quarantined(self) -> list[tuple[int, int]]:
        """(kind, slot) pairs held back by ``quarantine``."""
        with self._lock:
            return [s for slots in self._quarantine.values() for s in slots]

    def _end_quarantine(self, engine: int) -> None:
        with self._lock:
            self._orphans.extend(self._quarantine.pop(engine, ()))

    def defer_release(self, kind: int, slot: int) -> None:
        """Remember to release a slot whose Release Slot timed out (retried before the next
        Request Slot and at close), so a wedged engine never leaks slots for good."""
        with self._lock:
            self._orphans.append((kind, slot))

    def _flush_orphans(self) -> None:
        with self._lock:
            orphans, self._orphans = self._orphans, []
        for i, (kind, slot) in enumerate(orphans):
            try:
                self.release_slot(kind, slot)
            except OSError as exc:
                if exc.errno == errno.ETIMEDOUT:
                    with self._lock:
                        self._orphans.extend(orphans[i:])
                    return
                # anything else (e.g. the slot is already free after a reset): nothing to keep

    def request_slot(self, kind: int, *, cmd_id: int | None = None) -> int:
        """Allocate a slot of ``kind`` (``SLOT_PROGRAM``/``SLOT_DATA`` of regs); ENOSPC if none."""
        what = "program" if kind == regs.SLOT_PROGRAM else "data"
        if self._orphans:
            self._flush_orphans()
        response = self.command(regs.CMD_REQUEST_SLOT, bytes((kind & 0xFF,)), cmd_id=cmd_id)
        if response.status == regs.STATUS_NO_SPACE:
            total = (self.geometry.program_slots if kind == regs.SLOT_PROGRAM
                     else self.geometry.data_slots)
            raise error(errno.ENOSPC, f"no free {what} slot (all {total} are in use)", response)
        if response.status != regs.STATUS_SUCCESS:
            raise status_error(f"Request Slot ({what})", response)
        count = (self.geometry.program_slots if kind == regs.SLOT_PROGRAM
                 else self.geometry.data_slots)
        if response.value >= count:
            raise error(errno.EIO, f"device allocated {what} slot {response.value}, but it has "
                        f"only {count}", response)
        return response.value

    def release_slot(self, kind: int, slot: int, *, cmd_id: int | None = None) -> None:
        """Free a slot; EBADFD when the device says it is not allocated (or does not exist)."""
        what = "program" if kind == regs.SLOT_PROGRAM else "data"
        response = self.command(regs.CMD_RELEASE_SLOT, bytes((kind & 0xFF, slot & 0xFF)),
                                cmd_id=cmd_id)
        if response.status != regs.STATUS_SUCCESS:
            raise status_error(f"Release Slot ({what} slot {slot})", response)

    def run_program(self, prog_slot: int, data_slot: int, length: int, *,
                    cmd_id: int | None = None, timeout: float | None = None,
                    control: RunControl | None = None) -> Response:
        """Run Program; returns the raw response (check ``status`` yourself).

        With a ``control`` whose ``ctx`` is set, the run takes its parameters from the engine's
        run context (RUN_FLAG_CTX) and its OUT fields and text land in ``control``.
        """
        if cmd_id is None:
            cmd_id = self.next_command_id()
        flags = regs.RUN_FLAG_CTX if control is not None and control.ctx is not None else 0
        return self._submit(regs.CMD_RUN_PROGRAM, cmd_id & 0xFFFF,
                            run_word(prog_slot, data_slot, length, flags), 0,
                            self.timeout if timeout is None else timeout, control)

    # --- DMA ------------------------------------------------------------------------------------
    def dma_alloc(self, size: int) -> DmaBuffer:
        """Host memory the device can DMA to and from (for zero-copy transfers)."""
        self._check_open()
        return self.transport.dma_alloc(size)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.geometry.bar4_size:
            raise error(errno.EINVAL, f"device memory range [{offset:#x}, {offset + length:#x}) "
                        f"is outside BAR4 (size {self.geometry.bar4_size:#x})")

    def dma_write(self, offset: int, data: "bytes | bytearray | memoryview | DmaBuffer") -> int:
        """Copy ``data`` to device memory (BAR4) at ``offset`` by H2C DMA; returns the byte count.

        A ``DmaBuffer`` (from ``dma_alloc``) is transferred in place; anything else goes through
        the channel's bounce buffer.
        """
        self._check_open()
        if isinstance(data, DmaBuffer):
            self._check_range(offset, data.size)
            self._direct(self._h2c, data.bus_addr, offset, data.size)
            return data.size
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        self._h2c_copy(offset, view)
        return len(view)

    def dma_read(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes of device memory at ``offset`` to the host by C2H DMA."""
        out = bytearray(size)
        self.dma_read_into(offset, out)
        return bytes(out)

    def dma_read_into(self, offset: int, buffer: "bytearray | memoryview | DmaBuffer") -> int:
        """Fill ``buffer`` from device memory at ``offset`` by C2H DMA; returns the byte count."""
        self._check_open()
        if isinstance(buffer, DmaBuffer):
            self._check_range(offset, buffer.size)
            self._direct(self._c2h, buffer.bus_addr, offset, buffer.size)
            return buffer.size
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise error(errno.EFAULT, "the read buffer is not writable")
        self._check_range(offset, len(view))
        self._c2h_copy(offset, view)
        return len(view)

    def _direct(self, pool: ChannelPool, host: int, offset: int, length: int) -> None:
        if not length:
            return
        ch = pool.acquire()
        try:
            ch.transfer(host, offset, length, self.dma_timeout)
        finally:
            pool.release(ch)

    def _h2c_copy(self, offset: int, view: memoryview) -> None:
        if not len(view):
            return
        ch = self._h2c.acquire()
        try:
            bounce = ch.bounce()
            size = ch.bounce_size
            for pos in range(0, len(view), size):
                piece = view[pos:pos + size]
                n = len(piece)
                bounce.view[:n] = piece
                ch.transfer(bounce.bus_addr, offset + pos, n, self.dma_timeout)
        finally:
            self._h2c.release(ch)

    def _c2h_copy(self, offset: int, view: memoryview) -> None:
        if not len(view):
            return
        ch = self._c2h.acquire()
        try:
            bounce = ch.bounce()
            size = ch.bounce_size
            for pos in range(0, len(view), size):
                n = min(size, len(view) - pos)
                ch.transfer(bounce.bus_addr, offset + pos, n, self.dma_timeout)
                view[pos:pos + n] = bounce.view[:n]
        finally:
            self._c2h.release(ch)

    def _c2h_bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes of BAR4 at ``offset`` as one new bytes object (a single copy out of
        the bounce buffer: reads are on the hot path of every run)."""
        if not length:
            return b""
        ch = self._c2h.acquire()
        try:
            bounce = ch.bounce()
            if length <= ch.bounce_size:
                ch.transfer(bounce.bus_addr, offset, length, self.dma_timeout)
                return bounce.view[:length].tobytes()
            out = bytearray(length)
            size = ch.bounce_size
            for pos in range(0, length, size):
                n = min(size, length - pos)
                ch.transfer(bounce.bus_addr, offset + pos, n, self.dma_timeout)
                out[pos:pos + n] = bounce.view[:n]
            return bytes(out)
        finally:
            self._c2h.release(ch)

"""In-process transport: the driver talks to a HermesDevice model living in this Python process."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable

from .. import regs
from ..device import HermesDevice, HostMemory
from .base import DmaBuffer, Transport

#: First bus address handed out for DMA buffers (well away from 0 so a NULL address faults).
DMA_BASE = 0x1_0000_0000
PAGE = 4096


class IrqCounter:
    """Counting interrupt latch with eventfd semantics: posts are counted, never lost.

    One token per interrupt in a ``queue.SimpleQueue``: its put and get are single C calls with
    no Python-level lock, and a blocking get wakes as fast as a plain lock (a Condition-based
    wake-up, as ``threading.Semaphore`` has, costs several times more). This sits on the path of
    every command round trip.
    """

    def __init__(self) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()

    def post(self) -> None:
        """Record one interrupt and wake a waiter."""
        self._tokens.put(None)

    def wait(self, timeout: float | None) -> bool:
        """Consume one interrupt, waiting up to ``timeout`` seconds (None: forever)."""
        try:
            if timeout is None:
                self._tokens.get()
            elif timeout <= 0:
                self._tokens.get(False)
            else:
                self._tokens.get(True, timeout)
        except queue.Empty:
            return False
        return True

    def clear(self) -> None:
        """Consume every interrupt posted so far."""
        tokens = self._tokens
        # The size first: a get from an empty queue raises, which costs more than the check
        # (this runs before every command).
        while tokens.qsize():
            try:
                tokens.get(False)
            except queue.Empty:
                return

    @property
    def pending(self) -> int:
        """Interrupts posted and not consumed yet."""
        return self._tokens.qsize()


class Watchdog:
    """Stops commands that run in their host's thread at the host's deadline, as the host itself
    would after a timeout: by writing the engine's EHCMDABORT, from one daemon thread.

    Rules:
    * an armed deadline fires at most once, at most ``TICK`` seconds late;
    * ``disarm`` returns only when no abort for its token can come any more (the abort is
      written under the lock ``disarm`` takes), so a later command on that engine is never hit;
    * the thread wakes every ``TICK`` while deadlines are armed, or were in the last ``IDLE``
      seconds, and else sleeps until an ``arm`` wakes it: back-to-back commands cost no
      thread wake-up each, an idle transport costs none at all.
    """

    TICK = 0.01
    IDLE = 1.0

    def __init__(self, abort: Callable[[int], None]) -> None:
        self._abort = abort
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int]] = {}
        self._tokens = itertools.count()
        self._last = 0.0
        self._sleeping = True   # the thread waits without a timeout, or is not started yet
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, engine: int, timeout: float) -> int:
        """Abort ``engine``'s command once ``timeout`` seconds have passed, unless disarmed
        first; returns the token for ``disarm``."""
        now = time.monotonic()
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (now + timeout, engine)
            self._last = now
            if self._sleeping and not self._closed:
                self._sleeping = False
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True,
                                                    name="hermes-inproc-watchdog")
                    self._thread.start()
                else:
                    self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        """Forget the deadline of ``token`` (one that has fired already: nothing to do)."""
        with self._cond:
            self._armed.pop(token, None)

    def close(self) -> None:
        """Stop the thread (deadlines still armed never fire). Idempotent."""
        with self._cond:
            self._closed = True
            self._armed.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for token, (deadline, engine) in list(self._armed.items()):
                    if now >= deadline:
                        del self._armed[token]
                        try:
                            self._abort(engine)
                        except Exception:   # noqa: S110 - a closed device has nothing to stop
                            pass
                if not self._armed and now - self._last > self.IDLE:
                    self._sleeping = True
                    self._cond.wait()
                else:
                    self._cond.wait(self.TICK)


class InProcDmaBuffer(DmaBuffer):
    """Host memory (a bytearray) registered in the device's HostMemory at ``bus_addr``."""

    def __init__(self, transport: InProcessTransport, bus_addr: int, size: int):
        self._transport = transport
        self.bus_addr = bus_addr
        self.size = size
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        transport.host.register(bus_addr, self._buf)

    def free(self) -> None:
        """Unregister from the device's view of host memory. Idempotent."""
        if self._view is None:
            return
        self._transport._forget(self)
        self._view = None

    def __repr__(self) -> str:
        state = "freed" if self._view is None else f"{self.size} bytes"
        return f"<{type(self).__name__} {self.bus_addr:#x} {state}>"


class InProcMappedBuffer(InProcDmaBuffer):
    """A caller's memory mapped for the device's DMA at ``bus_addr`` (what an IOMMU mapping of
    pinned user pages is): no copy; the device reads it, and writes it only when mapped
    writable. ``view`` is the caller's bytes; ``free`` unmaps them (idempotent)."""

    def __init__(self, transport: InProcessTransport, bus_addr: int, view: memoryview,
                 writable: bool):
        self._transport = transport
        self.bus_addr = bus_addr
        self.size = view.nbytes
        self._view = transport.host.register(bus_addr, view, writable=writable)


class InProcessTransport(Transport):
    """Transport to a ``HermesDevice`` in this process: direct calls, shared memory, no copies
    (``dma_map`` lets the device's DMA reach the caller's own buffers).

    Takes over the device's host memory and interrupt handler. ``owns_device=True`` closes the
    device with the transport.
    """

    def __init__(self, device: HermesDevice, *, owns_device: bool = False):
        self.device = device
        self.owns_device = owns_device
        self.num_vectors = device.num_vectors
        self.host = HostMemory()
        self._irqs = [IrqCounter() for _ in range(self.num_vectors)]
        # Each vector's ``IrqCounter.post`` without its Python frame (the device calls the
        # handler at every completion).
        self._posts = [irq._tokens.put for irq in self._irqs]
        self._buffers: dict[int, InProcDmaBuffer] = {}
        self._lock = threading.Lock()
        self._next_addr = DMA_BASE
        self._closed = False
        device.set_host_memory(self.host)
        device.set_irq_handler(self._on_irq)
        # Register access is on the hot path of every command: bind the device's methods as
        # instance attributes so a driver call costs one Python call, not two.
        self.read = device.bar_read  # type: ignore[method-assign]
        self.write = device.bar_write  # type: ignore[method-assign]
        # The Hermes model runs a short command in the thread that waits for it (no hand-off to
        # its engine thread and back); a model without ``exec_inline`` gets the plain write.
        self._execute = getattr(device, "exec_inline", None)
        self._watchdog = Watchdog(self._abort)
        self._main = threading.main_thread().ident
        block = getattr(device, "bar_read_block", None)
        if block is not None:
            self.read_block = block  # type: ignore[method-assign]
        block = getattr(device, "bar_write_block", None)
        if block is not None:
            self.write_block = block  # type: ignore[method-assign]
            self.cheap_block_writes = True

    @classmethod
    def create(cls, **device_args: object) -> InProcessTransport:
        """A transport over a new ``HermesDevice(**device_args)`` that it owns (and closes)."""
        return cls(HermesDevice(**device_args), owns_device=True)  # type: ignore[arg-type]

    @classmethod
    def create_nvme(cls, **controller_args: object) -> InProcessTransport:
        """A transport over a new NVMe CP/SLM ``NvmeController(**controller_args)`` it owns."""
        from ..device.nvme import NvmeController
        return cls(NvmeController(**controller_args), owns_device=True)  # type: ignore[arg-type]

    # The bound-method attributes above shadow these; they exist for the ABC and documentation.
    def read(self, bar: int, offset: int, size: int) -> int:
        """Read a BAR register (see ``HermesDevice.bar_read``)."""
        return self.device.bar_read(bar, offset, size)

    def read_block(self, bar: int, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of a BAR in one step where the model offers it (BAR0 of the
        Hermes device, whose reads have no side effects), else with 4-byte reads."""
        block = getattr(self.device, "bar_read_block", None)
        if block is not None:
            return block(bar, offset, length)
        return super().read_block(bar, offset, length)

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write a BAR register (see ``HermesDevice.bar_write``)."""
        self.device.bar_write(bar, offset, size, value)

    def execute(self, ctrl: int, engine: int, started: Callable[[int], None],
                timeout: float | None = None) -> bool:
        """Start engine ``engine``'s command; the device's ``exec_inline`` may run it to
        completion here, in the caller's thread (see ``Transport.execute``): a short one, or,
        with ``timeout`` from a thread other than the main one (which alone takes Ctrl-C), any
        run of a cached program, which the watchdog aborts once ``timeout`` has passed."""
        run = self._execute
        if run is None:
            return super().execute(ctrl, engine, started, timeout)
        if timeout is None or threading.get_ident() == self._main:
            return run(engine, started)
        token = self._watchdog.arm(engine, timeout)
        try:
            return run(engine, started, True)
        finally:
            self._watchdog.disarm(token)

    def _abort(self, engine: int) -> None:
        """The watchdog's EHCMDABORT write: what the driver writes after a timeout."""
        self.device.bar_write(regs.BAR_REGS, regs.cmdctrl(engine) + regs.EHCMDABORT, 1, 1)

    def map_bar(self, bar: int) -> memoryview | None:
        """BAR4 is directly mapped (the device's memoryview); other BARs are not."""
        return self.device.bar4 if bar == 4 else None

    def dma_alloc(self, size: int) -> InProcDmaBuffer:
        """A zeroed host buffer of ``size`` bytes at a fresh page-aligned bus address."""
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"DMA buffer size must be a positive integer, got {size!r}")
        with self._lock:
            addr = self._reserve(size)
            buf = InProcDmaBuffer(self, addr, size)
            self._buffers[addr] = buf
        return buf

    def _reserve(self, size: int) -> int:
        """A fresh bus address for ``size`` bytes (the caller holds ``_lock``)."""
        if self._closed:
            raise RuntimeError("transport is closed")
        addr = self._next_addr
        # Addresses are never reused, so a stale descriptor can never hit a newer buffer; one
        # guard page between buffers makes overruns fault instead of spilling over.
        self._next_addr += (size + PAGE - 1) // PAGE * PAGE + PAGE
        return addr

    def dma_map(self, view: memoryview, *, writable: bool = False) -> InProcMappedBuffer | None:
        """Map the caller's bytes ``view`` for DMA at a fresh bus address, without copying
        (``writable``: the device may write them too); None when they cannot be mapped (not
        contiguous, empty, or read-only where ``writable``), and the caller copies through a
        DMA buffer instead. ``free`` the mapping once the transfer is over."""
        if view.nbytes == 0 or not view.c_contiguous or (writable and view.readonly):
            return None
        with self._lock:
            addr = self._reserve(view.nbytes)
            buf = InProcMappedBuffer(self, addr, view, writable)
            self._buffers[addr] = buf
        return buf

    def _forget(self, buf: InProcDmaBuffer) -> None:
        with self._lock:
            if self._buffers.pop(buf.bus_addr, None) is not None:
                self.host.unregister(buf.bus_addr)

    def _on_irq(self, vector: int) -> None:
        if 0 <= vector < len(self._irqs):
            self._posts[vector](None)

    def irq_wait(self, vector: int, timeout: float | None) -> bool:
        """Wait for (and consume) one interrupt of ``vector``; False on timeout."""
        if not 0 <= vector < len(self._irqs):
            raise ValueError(f"vector {vector} out of range 0..{len(self._irqs) - 1}")
        return self._irqs[vector].wait(timeout)

    def irq_clear(self, vector: int) -> None:
        """Forget interrupts of ``vector`` that fired and were not waited for."""
        self._irqs[vector].clear()

    def irq_pending(self, vector: int) -> int:
        """Interrupts of ``vector`` that fired and were not waited for yet."""
        return self._irqs[vector].pending

    def reset(self) -> None:
        """Reset the device, then drop interrupts that fired before the reset."""
        self.device.reset()
        for v in range(len(self._irqs)):
            self.irq_clear(v)

    def close(self) -> None:
        """Free every DMA buffer, detach from the device (closing it if owned). Idempotent.

        An owned device is closed with abort: its only user is leaving, so programs still running
        for it (a runaway after a driver timeout) are stopped rather than waited for.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            buffers = list(self._buffers.values())
        self._watchdog.close()
        for buf in buffers:
            buf.free()
        self.device.set_irq_handler(None)
        self.device.set_host_memory(None)
        if self.owns_device:
            self.device.close(abort=True)

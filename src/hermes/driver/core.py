"""The driver of one Hermes device: composes the probe, interrupts, commands, slots and DMA, and
hands out files."""
from __future__ import annotations

import errno
import threading
from dataclasses import asdict

from ..transport.base import DmaBuffer, Transport
from .dma import (
    DEFAULT_BOUNCE_SIZE,
    DEFAULT_DMA_CHUNK,
    DEFAULT_DMA_TIMEOUT,
    DmaChannels,
    SlotDma,
    Source,
)
from .engines import DEFAULT_ABORT_TIMEOUT, DEFAULT_TIMEOUT, Commands, RunControl
from .file import HermesFile
from .irq import Interrupts
from .probe import probe
from .protocol import Response, error
from .slots import SlotAllocator


class Driver:
    """One attached Hermes device: geometry, engines, DMA channels, open files.

    Thread-safe: any number of files (and threads) share one driver. Commands go to the first free
    engine (a command waits for one); DMA goes through the first free channel of its direction.
    Its parts are public: ``irq`` (``Interrupts``), ``commands`` (``Commands``: the engines),
    ``slots`` (``SlotAllocator``), ``dma`` (``DmaChannels``) and ``slot_dma`` (``SlotDma``).
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
        self._owns_transport = owns_transport
        self._lock = threading.Lock()
        self._files: set[HermesFile] = set()
        self.closed = False
        self.geometry = g = probe(transport)
        self.irq = Interrupts(transport, g)
        self.commands = Commands(transport, g, self.irq, timeout=timeout,
                                 abort_timeout=abort_timeout, on_reclaimed=self._engine_reclaimed)
        self.slots = SlotAllocator(self.commands, g)
        self.dma = DmaChannels(transport, g, self.irq.h2c_vectors, self.irq.c2h_vectors,
                               bounce_size=bounce_size, chunk=dma_chunk, timeout=dma_timeout)
        self.slot_dma = SlotDma(self.dma, g)
        # Route and unmask channel and engine interrupts (left masked, the device stays mute).
        self.irq.route()
        for ch in self.dma.channels:
            ch.unmask_interrupts()
        self.irq.unmask()

    def _engine_reclaimed(self, engine: int) -> None:
        self.slots.end_quarantine(engine)

    # --- settings -------------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        """Seconds a command (a run included) may take before it fails with ETIMEDOUT."""
        return self.commands.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.commands.timeout = value

    @property
    def abort_timeout(self) -> float:
        """Seconds to wait, after a command timed out and was aborted, for its engine to read
        idle."""
        return self.commands.abort_timeout

    @abort_timeout.setter
    def abort_timeout(self, value: float) -> None:
        self.commands.abort_timeout = value

    @property
    def dma_timeout(self) -> float:
        """Seconds one DMA chain may take."""
        return self.dma.timeout

    @dma_timeout.setter
    def dma_timeout(self, value: float) -> None:
        self.dma.timeout = value

    # --- files ----------------------------------------------------------------------------------
    def open(self) -> HermesFile:
        """A new file on the device (owns no slot until it downloads a program / writes data)."""
        with self._lock:
            self._check_open()
            f = HermesFile(self.geometry, self.commands, self.slots, self.slot_dma,
                           on_close=self._forget)
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
            self.slots.release_deferred()
        except Exception:  # best effort, as above
            pass
        with self._lock:
            self.closed = True
        self.commands.close()
        try:
            self.irq.mask_all()
        except (OSError, ValueError, RuntimeError):
            pass  # best effort: the device is being detached anyway
        self.dma.free()
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise error(errno.ENODEV, "the driver was closed")

    def _forget(self, f: HermesFile) -> None:
        with self._lock:
            self._files.discard(f)

    # --- commands and slots (``commands`` and ``slots`` under the names of specs/driver.md) -----
    @property
    def can_abort(self) -> bool:
        """Whether the device stops running commands on request (EHCAP_ABORT)."""
        return self.commands.can_abort

    def next_command_id(self) -> int:
        """A fresh u16 command id for commands issued on the driver's own behalf."""
        return self.commands.next_command_id()

    def command(self, opcode: int, payload: bytes = b"", *, cmd_id: int | None = None,
                timeout: float | None = None) -> Response:
        """``Commands.command``: one raw command on a free engine, its response uninterpreted."""
        return self.commands.command(opcode, payload, cmd_id=cmd_id, timeout=timeout)

    def run_program(self, prog_slot: int, data_slot: int, length: int, *,
                    cmd_id: int | None = None, timeout: float | None = None,
                    control: RunControl | None = None) -> Response:
        """``Commands.run_program``: a raw Run Program (check ``status`` yourself)."""
        return self.commands.run_program(prog_slot, data_slot, length, cmd_id=cmd_id,
                                         timeout=timeout, control=control)

    def request_slot(self, kind: int, *, cmd_id: int | None = None) -> int:
        """``SlotAllocator.request``: a slot of ``kind``; ENOSPC if none is free."""
        return self.slots.request(kind, cmd_id=cmd_id)

    def release_slot(self, kind: int, slot: int, *, cmd_id: int | None = None) -> None:
        """``SlotAllocator.release``: free a slot."""
        self.slots.release(kind, slot, cmd_id=cmd_id)

    def defer_release(self, kind: int, slot: int) -> None:
        """``SlotAllocator.defer_release``: release later a slot whose release timed out."""
        self.slots.defer_release(kind, slot)

    def quarantine(self, engine: int, slots: list[tuple[int, int]]) -> None:
        """``SlotAllocator.quarantine``: hold ``slots`` until ``engine`` reads idle."""
        self.slots.quarantine(engine, slots)

    def quarantined(self) -> list[tuple[int, int]]:
        """(kind, slot) pairs held back by ``quarantine``."""
        return self.slots.quarantined()

    # --- DMA ------------------------------------------------------------------------------------
    def dma_alloc(self, size: int) -> DmaBuffer:
        """Host memory the device can DMA to and from (for zero-copy transfers)."""
        self._check_open()
        return self.transport.dma_alloc(size)

    def dma_write(self, offset: int, data: Source) -> int:
        """Copy ``data`` to device memory (BAR4) at ``offset`` by H2C DMA; returns the byte count.

        A ``DmaBuffer`` (from ``dma_alloc``) is transferred in place; anything else goes through
        the channel's bounce buffer.
        """
        self._check_open()
        return self.dma.write(offset, data)

    def dma_read(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes of device memory at ``offset`` to the host by C2H DMA."""
        out = bytearray(size)
        self.dma_read_into(offset, out)
        return bytes(out)

    def dma_read_into(self, offset: int, buffer: bytearray | memoryview | DmaBuffer) -> int:
        """Fill ``buffer`` from device memory at ``offset`` by C2H DMA; returns the byte count."""
        self._check_open()
        return self.dma.read_into(offset, buffer)

"""Interrupts of a Hermes device: which MSI-X vector serves each DMA channel and engine, routing
and unmasking them in the XDMA IRQ block, and waiting for one."""
from __future__ import annotations

import math
import time

from .. import regs
from ..transport.base import Transport

#: User interrupts whose vector numbers the XDMA IRQ block has registers for (four of four).
_MAX_USER_VECTOR_REGS = 16
#: The user interrupt mask of the IRQ block has 32 bits: engines past it are polled.
_USER_MASK_BITS = 32
#: Longest single interrupt wait. A KeyboardInterrupt that another thread raises in the waiting
#: one (``_thread.interrupt_main``) wakes no blocking call, so waits are cut into slices after
#: which Python sees it; a slice is longer than the vfio-user transport's liveness probe interval
#: (0.1 s), so that transport still probes a silent server during a long wait.
_WAIT_SLICE = 0.25


class Interrupts:
    """The vectors of one device and the IRQ block that routes them (``specs/driver.md`` section 3).

    H2C channel ``c`` uses vector ``c``, C2H channel ``c`` vector ``h2c + c`` and engine ``n``
    vector ``h2c + c2h + n`` (user interrupt ``n``). A channel or engine whose vector is past the
    transport's MSI-X table, or an engine past the user mask, has ``None``: it is polled.
    """

    def __init__(self, transport: Transport, geometry: regs.Geometry):
        self.transport = transport
        nvec = getattr(transport, "num_vectors", regs.MSIX_VECTORS)
        h2c, c2h = geometry.h2c_channels, geometry.c2h_channels
        #: The channels' vector numbers as routed, H2C channels first (whether or not the
        #: transport's table reaches them).
        self.channel_numbers = list(range(h2c + c2h))
        self.h2c_vectors: list[int | None] = [c if c < nvec else None for c in range(h2c)]
        self.c2h_vectors: list[int | None] = [h2c + c if h2c + c < nvec else None
                                              for c in range(c2h)]
        self.engine_vectors: list[int | None] = [
            h2c + c2h + n if n < _USER_MASK_BITS and h2c + c2h + n < nvec else None
            for n in range(geometry.engines)]

    def route(self) -> None:
        """Write the vector numbers into the IRQ block's channel and user vector registers (four
        5-bit fields a register), so a device that routes by them routes as the driver expects."""
        self._write_vectors(regs.XDMA_IRQ_CHANNEL_VECTOR, self.channel_numbers, 2)
        user = self.engine_vectors[:_MAX_USER_VECTOR_REGS]
        self._write_vectors(regs.XDMA_IRQ_USER_VECTOR,
                            [v if v is not None else 0 for v in user], 4)

    def unmask(self) -> None:
        """Unmask every channel's interrupt and every engine's that has a vector, and clear the
        engines' pending interrupts (run after the channels' own enable masks are set)."""
        t = self.transport
        irq = regs.XDMA_TARGET_IRQ
        t.write(regs.BAR_DMA, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_CHANNEL_MASK_W1S), 4,
                (1 << len(self.channel_numbers)) - 1)
        user_bits = sum(1 << n for n, v in enumerate(self.engine_vectors) if v is not None)
        t.write(regs.BAR_DMA, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_USER_MASK_W1S), 4, user_bits)
        for n in range(len(self.engine_vectors)):
            self.clear_engine(n)

    def mask_all(self) -> None:
        """Mask every user and channel interrupt (the device stays mute afterwards)."""
        t = self.transport
        irq = regs.XDMA_TARGET_IRQ
        t.write(regs.BAR_DMA, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_USER_MASK_W1C), 4, 0xFFFFFFFF)
        t.write(regs.BAR_DMA, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_CHANNEL_MASK_W1C), 4,
                0xFFFFFFFF)

    def _write_vectors(self, base: int, vectors: list[int], registers: int) -> None:
        for r in range(registers):
            word = 0
            for k, v in enumerate(vectors[4 * r:4 * r + 4]):
                word |= (v & 0x1F) << (8 * k)
            self.transport.write(regs.BAR_DMA,
                                 regs.xdma_offset(regs.XDMA_TARGET_IRQ, 0, base + 4 * r), 4, word)

    def clear_engine(self, engine: int) -> None:
        """Drop a pending interrupt of ``engine`` (none to drop when it is polled)."""
        vector = self.engine_vectors[engine]
        if vector is not None:
            self.transport.irq_clear(vector)

    def wait(self, vector: int, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for ``vector``, in slices; whether it
        fired."""
        t = self.transport
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if t.irq_wait(vector, max(0.0, min(left, _WAIT_SLICE))):
                return True
            if time.monotonic() >= deadline:
                return False

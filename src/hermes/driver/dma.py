"""DMA of the driver: XDMA channels (descriptor chains in host memory, bounce buffers), pools
handing them out, copies to and from BAR4, and ``SlotDma``, the copies a file makes to its slots."""
from __future__ import annotations

import errno
import struct
import threading
import time

from .. import regs
from ..transport.base import DmaBuffer, Transport
from .protocol import error

_DESC = struct.Struct("<IIQQQ")
assert _DESC.size == regs.DESC_SIZE
# The end-of-chain block read relies on this layout.
assert (regs.XDMA_CH_STATUS_RC, regs.XDMA_CH_COMPLETED) == (regs.XDMA_CH_STATUS + 4,
                                                             regs.XDMA_CH_STATUS + 8)

#: Seconds one DMA chain may take.
DEFAULT_DMA_TIMEOUT = 10.0
#: Bytes per descriptor of a transfer through a bounce buffer or a DMA buffer (a chain has one
#: descriptor per chunk). The buffers are contiguous, so page-sized descriptors are not needed;
#: each descriptor costs the device a fixed overhead, and 256 KiB keeps a full bounce buffer a
#: real chain (4 descriptors) at ~80% of one-descriptor speed.
DEFAULT_DMA_CHUNK = 256 << 10
#: Bytes of bounce buffer per channel (bigger transfers go in several chains).
DEFAULT_BOUNCE_SIZE = 1 << 20
#: Transfers from this many bytes on go straight between the caller's memory and BAR4 where the
#: transport can map it (``dma_map``): mapping and unmapping cost a few microseconds, more than
#: copying a smaller transfer through the bounce buffer.
DIRECT_DMA_MIN = 64 << 10
#: Bytes per descriptor of a transfer straight from or to a mapping of the caller's memory.
_MAPPED_CHUNK = regs.DESC_MAX_LEN & ~0xFFF
#: Channel interrupt-enable bits: everything a chain can end with.
_CHANNEL_IRQ_BITS = 0x00FFFFFE
_MAGIC_CONTROL = regs.DESC_MAGIC << 16
_LAST_CONTROL = _MAGIC_CONTROL | regs.DESC_STOP | regs.DESC_EOP | regs.DESC_COMPLETED
#: Status bits that mean the chain ended normally (everything else but busy is an error).
_DONE_BITS = regs.XDMA_STAT_DESC_STOPPED | regs.XDMA_STAT_DESC_COMPLETED
_STATUS_BIT_NAMES = {
    regs.XDMA_STAT_MAGIC_STOPPED: "bad descriptor magic",
    regs.XDMA_STAT_INVALID_LEN: "length past the end of BAR4 or host memory",
    regs.XDMA_STAT_READ_ERROR: "source not readable",
    regs.XDMA_STAT_WRITE_ERROR: "destination not writable",
    regs.XDMA_STAT_DESC_ERROR: "bad descriptor chain",
}
H2C, C2H = "H2C", "C2H"


def describe_status(status: int) -> str:
    """Names of the error bits in a channel status word."""
    names = [name for bit, name in _STATUS_BIT_NAMES.items() if status & bit]
    rest = status & ~(sum(_STATUS_BIT_NAMES) | _DONE_BITS | regs.XDMA_STAT_BUSY)
    if rest:
        names.append(f"other status bits {rest:#x}")
    return ", ".join(names) or "no error bits"


class Channel:
    """One XDMA channel (H2C or C2H): its registers, vector, descriptor ring and bounce buffer."""

    def __init__(self, transport: Transport, direction: str, index: int, vector: int | None,
                 bounce_size: int, chunk: int):
        self.t = transport
        self.direction = direction
        self.index = index
        self.vector = vector
        self.chunk = chunk
        self.bounce_size = bounce_size
        #: Descriptors a chain may have: enough for a full bounce buffer, at most MAX_DESC_CHAIN.
        self.max_descs = min(regs.MAX_DESC_CHAIN, -(-bounce_size // chunk))
        target = regs.XDMA_TARGET_H2C if direction == H2C else regs.XDMA_TARGET_C2H
        sg = regs.XDMA_TARGET_H2C_SGDMA if direction == H2C else regs.XDMA_TARGET_C2H_SGDMA
        self.r_control = regs.xdma_offset(target, index, regs.XDMA_CH_CONTROL)
        self.r_control_w1c = regs.xdma_offset(target, index, regs.XDMA_CH_CONTROL_W1C)
        self.r_status = regs.xdma_offset(target, index, regs.XDMA_CH_STATUS)
        self.r_status_rc = regs.xdma_offset(target, index, regs.XDMA_CH_STATUS_RC)
        self.r_completed = regs.xdma_offset(target, index, regs.XDMA_CH_COMPLETED)
        self.r_irq_mask = regs.xdma_offset(target, index, regs.XDMA_CH_IRQ_MASK)
        self.r_desc_lo = regs.xdma_offset(sg, index, regs.XDMA_SG_DESC_LO)
        self.r_desc_hi = regs.xdma_offset(sg, index, regs.XDMA_SG_DESC_HI)
        self.r_desc_adj = regs.xdma_offset(sg, index, regs.XDMA_SG_DESC_ADJ)
        self._descs: DmaBuffer | None = None
        self._bounce: DmaBuffer | None = None
        self._loaded_desc_addr: int | None = None
        self.dead = False
        #: The transport reads a block in one access (a single vfio-user message).
        self.block_reads = type(transport).read_block is not Transport.read_block

    @property
    def name(self) -> str:
        """``H2C0``, ``C2H3``...: for messages."""
        return f"{self.direction}{self.index}"

    def unmask_interrupts(self) -> None:
        """Enable every event and error interrupt of the channel and clear its status bits."""
        self.t.write(regs.BAR_DMA, self.r_irq_mask, 4, _CHANNEL_IRQ_BITS)
        self.t.read(regs.BAR_DMA, self.r_status_rc, 4)

    def bounce(self) -> DmaBuffer:
        """The channel's bounce buffer (allocated on first use; kept for the driver's lifetime)."""
        if self._bounce is None:
            self._bounce = self.t.dma_alloc(self.bounce_size)
        return self._bounce

    def _ring(self) -> DmaBuffer:
        if self._descs is None:
            self._descs = self.t.dma_alloc(self.max_descs * regs.DESC_SIZE)
        return self._descs

    def transfer(self, host_addr: int, bar4_off: int, length: int, timeout: float,
                 chunk: int | None = None) -> None:
        """Move ``length`` bytes between host bus address ``host_addr`` and BAR4 ``bar4_off``.

        Builds one chain of descriptors of at most ``chunk`` bytes each (default the channel's
        ``chunk``; splitting into several chains when it would be longer than the ring), starts
        the channel and waits for its interrupt. Raises EIO on an error status and ETIMEDOUT
        when the channel never finishes.
        """
        if chunk is None:
            chunk = self.chunk
        step = chunk * self.max_descs
        pos = 0
        while pos < length:
            n = min(step, length - pos)
            self._chain(host_addr + pos, bar4_off + pos, n, timeout, chunk)
            pos += n

    def _chain(self, host_addr: int, bar4_off: int, length: int, timeout: float,
               chunk: int) -> None:
        ring = self._ring()
        view = ring.view
        base = ring.bus_addr
        count = -(-length // chunk)
        h2c = self.direction == H2C
        pack = _DESC.pack_into
        for i in range(count):
            off = i * chunk
            n = min(chunk, length - off)
            last = i == count - 1
            host, dev = host_addr + off, bar4_off + off
            src, dst = (host, dev) if h2c else (dev, host)
            # Every descriptor points at the next one and says "0 adjacent": the device follows
            # `next` pointers, which is correct whatever its adjacent-block prefetch does.
            pack(view, i * regs.DESC_SIZE, _LAST_CONTROL if last else _MAGIC_CONTROL, n, src, dst,
                 0 if last else base + (i + 1) * regs.DESC_SIZE)
        t = self.t
        if self._loaded_desc_addr != base:
            t.write(regs.BAR_DMA, self.r_desc_lo, 4, base & 0xFFFFFFFF)
            t.write(regs.BAR_DMA, self.r_desc_hi, 4, base >> 32)
            t.write(regs.BAR_DMA, self.r_desc_adj, 4, 0)
            self._loaded_desc_addr = base
        # Status bits of the previous chain were cleared by its clear-on-read below.
        vector = self.vector
        if vector is not None:
            t.irq_clear(vector)
        t.write(regs.BAR_DMA, self.r_control, 4, regs.XDMA_CTRL_RUN)
        if vector is not None:
            fired = t.irq_wait(vector, timeout)
        else:
            fired = self._poll(timeout)
        if self.block_reads:
            # STATUS, STATUS_RC (clears the bits), COMPLETED are adjacent: one message for a
            # transport with block reads, read in that order.
            raw = t.read_block(regs.BAR_DMA, self.r_status, 12)
            status = int.from_bytes(raw[4:8], "little")
            done = int.from_bytes(raw[8:12], "little")
        else:
            status = t.read(regs.BAR_DMA, self.r_status_rc, 4)
            done = None
        t.write(regs.BAR_DMA, self.r_control_w1c, 4, regs.XDMA_CTRL_RUN)
        if not fired:
            if t.read(regs.BAR_DMA, self.r_status, 4) & regs.XDMA_STAT_BUSY:
                self.dead = True  # still walking descriptors after we stopped it: never reuse
            raise error(errno.ETIMEDOUT, f"DMA {self.name}: no completion interrupt within "
                        f"{timeout:g} s for {length} bytes ({count} descriptors)")
        if status & regs.XDMA_STAT_BUSY or status & ~(_DONE_BITS | regs.XDMA_STAT_BUSY):
            raise error(errno.EIO, f"DMA {self.name} failed for {length} bytes at BAR4 "
                        f"{bar4_off:#x}: status {status:#x} ({describe_status(status)})")
        if done is None:
            done = t.read(regs.BAR_DMA, self.r_completed, 4)
        if done != count:
            raise error(errno.EIO, f"DMA {self.name}: device completed {done} descriptors, "
                        f"the chain had {count}")

    def _poll(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.t.read(regs.BAR_DMA, self.r_status, 4) & regs.XDMA_STAT_BUSY:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0001)
        return True

    def free(self) -> None:
        """Release the channel's host memory."""
        for buf in (self._descs, self._bounce):
            if buf is not None:
                buf.free()
        self._descs = self._bounce = None


class ChannelPool:
    """Channels of one direction handed out to concurrent users (a user waits for a free one)."""

    def __init__(self, channels: list[Channel]):
        self.channels = channels
        self._free = list(reversed(channels))
        self._cond = threading.Condition(threading.Lock())

    def acquire(self) -> Channel:
        """A free channel; blocks until one is returned."""
        with self._cond:
            while not self._free:
                if all(ch.dead for ch in self.channels):
                    raise error(errno.EIO, "every DMA channel is stuck after a timeout")
                self._cond.wait(0.5)
            return self._free.pop()

    def release(self, ch: Channel) -> None:
        """Give ``ch`` back (a channel that got stuck is dropped instead)."""
        if ch.dead:
            return
        with self._cond:
            self._free.append(ch)
            self._cond.notify()


#: What a DMA write takes: host bytes (copied through a bounce buffer) or DMA memory (in place).
Source = bytes | bytearray | memoryview | DmaBuffer


class DmaChannels:
    """Both directions' channels of one device and the copies between host memory and BAR4
    through them: a ``DmaBuffer`` in place, other bytes in place too where the transport maps
    them (``dma_map``), else through a channel's bounce buffer."""

    def __init__(self, transport: Transport, geometry: regs.Geometry,
                 h2c_vectors: list[int | None], c2h_vectors: list[int | None], *,
                 bounce_size: int = DEFAULT_BOUNCE_SIZE, chunk: int = DEFAULT_DMA_CHUNK,
                 timeout: float = DEFAULT_DMA_TIMEOUT):
        self.transport = transport
        self._dma_map = getattr(transport, "dma_map", None)
        self.bar4_size = geometry.bar4_size
        #: Seconds one descriptor chain may take.
        self.timeout = timeout
        self.h2c = ChannelPool([Channel(transport, H2C, c, v, bounce_size, chunk)
                                for c, v in enumerate(h2c_vectors)])
        self.c2h = ChannelPool([Channel(transport, C2H, c, v, bounce_size, chunk)
                                for c, v in enumerate(c2h_vectors)])

    @property
    def channels(self) -> list[Channel]:
        """Every channel, H2C first."""
        return self.h2c.channels + self.c2h.channels

    def free(self) -> None:
        """Release every channel's host memory (best effort: the device is going away)."""
        for ch in self.channels:
            try:
                ch.free()
            except (OSError, ValueError, RuntimeError):
                pass

    def check_range(self, offset: int, length: int) -> None:
        """EINVAL unless ``[offset, offset + length)`` lies in BAR4."""
        if offset < 0 or length < 0 or offset + length > self.bar4_size:
            raise error(errno.EINVAL, f"device memory range [{offset:#x}, {offset + length:#x}) "
                        f"is outside BAR4 (size {self.bar4_size:#x})")

    def write(self, offset: int, data: Source) -> int:
        """Copy ``data`` to BAR4 at ``offset`` by H2C DMA; returns the byte count."""
        if isinstance(data, DmaBuffer):
            self.check_range(offset, data.size)
            self._direct(self.h2c, data.bus_addr, offset, data.size)
            return data.size
        view = memoryview(data).cast("B")
        self.check_range(offset, len(view))
        self.copy_in(offset, view)
        return len(view)

    def read_into(self, offset: int, buffer: bytearray | memoryview | DmaBuffer) -> int:
        """Fill ``buffer`` from BAR4 at ``offset`` by C2H DMA; returns the byte count."""
        if isinstance(buffer, DmaBuffer):
            self.check_range(offset, buffer.size)
            self._direct(self.c2h, buffer.bus_addr, offset, buffer.size)
            return buffer.size
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise error(errno.EFAULT, "the read buffer is not writable")
        self.check_range(offset, len(view))
        self.copy_out(offset, view)
        return len(view)

    def _direct(self, pool: ChannelPool, host: int, offset: int, length: int,
                chunk: int | None = None) -> None:
        if not length:
            return
        ch = pool.acquire()
        try:
            ch.transfer(host, offset, length, self.timeout, chunk)
        finally:
            pool.release(ch)

    def _direct_mapped(self, pool: ChannelPool, view: memoryview, offset: int,
                       writable: bool) -> bool:
        """Move ``view`` in place (between it and BAR4 ``offset``, on a channel of ``pool``)
        when the transport can reach the caller's memory (``dma_map``, an optional transport
        method: in process, the device's DMA engine reaches host pages as through an IOMMU
        mapping) and the transfer is worth it (``DIRECT_DMA_MIN``); False when it was not
        mapped. The mapping is undone whether the transfer succeeds or not."""
        dma_map = self._dma_map
        if dma_map is None or len(view) < DIRECT_DMA_MIN:
            return False
        mapped = dma_map(view, writable=writable)
        if mapped is None:
            return False
        try:
            # The mapping is one contiguous bus range: one descriptor covers it (each one
            # more costs the device a walk step and, in process, a copy that drops the GIL).
            self._direct(pool, mapped.bus_addr, offset, mapped.size, _MAPPED_CHUNK)
        finally:
            mapped.free()
        return True

    def copy_in(self, offset: int, view: memoryview) -> None:
        """Copy the bytes of ``view`` to BAR4 at ``offset``: straight from ``view`` where the
        transport maps it, else through an H2C bounce buffer."""
        if not len(view):
            return
        if self._direct_mapped(self.h2c, view, offset, False):
            return
        ch = self.h2c.acquire()
        try:
            bounce = ch.bounce()
            size = ch.bounce_size
            for pos in range(0, len(view), size):
                piece = view[pos:pos + size]
                n = len(piece)
                bounce.view[:n] = piece
                ch.transfer(bounce.bus_addr, offset + pos, n, self.timeout)
        finally:
            self.h2c.release(ch)

    def copy_out(self, offset: int, view: memoryview) -> None:
        """Fill the writable ``view`` from BAR4 at ``offset``: straight into ``view`` where the
        transport maps it, else through a C2H bounce buffer."""
        if not len(view):
            return
        if self._direct_mapped(self.c2h, view, offset, True):
            return
        ch = self.c2h.acquire()
        try:
            bounce = ch.bounce()
            size = ch.bounce_size
            for pos in range(0, len(view), size):
                n = min(size, len(view) - pos)
                ch.transfer(bounce.bus_addr, offset + pos, n, self.timeout)
                view[pos:pos + n] = bounce.view[:n]
        finally:
            self.c2h.release(ch)

    def read_bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes of BAR4 at ``offset`` as one new bytes object (a single copy out of
        the bounce buffer: reads are on the hot path of every run)."""
        if not length:
            return b""
        ch = self.c2h.acquire()
        try:
            bounce = ch.bounce()
            if length <= ch.bounce_size:
                ch.transfer(bounce.bus_addr, offset, length, self.timeout)
                return bounce.view[:length].tobytes()
            out = bytearray(length)
            into = memoryview(out)   # (a bytearray slice assignment would copy twice)
            size = ch.bounce_size
            for pos in range(0, length, size):
                n = min(size, length - pos)
                ch.transfer(bounce.bus_addr, offset + pos, n, self.timeout)
                into[pos:pos + n] = bounce.view[:n]
            into.release()
            return bytes(out)
        finally:
            self.c2h.release(ch)


class SlotDma:
    """The copies a file makes: into a program slot, and into and out of a data slot at an
    offset (the caller keeps the transfer inside the slot)."""

    def __init__(self, dma: DmaChannels, geometry: regs.Geometry):
        self._dma = dma
        self._geo = geometry

    def write_program(self, slot: int, view: memoryview) -> None:
        """Copy ``view`` to the start of program slot ``slot``."""
        self._dma.copy_in(self._geo.program_slot(slot), view)

    def write_data(self, slot: int, offset: int, view: memoryview) -> None:
        """Copy ``view`` into data slot ``slot`` at ``offset``."""
        self._dma.copy_in(self._geo.data_slot(slot) + offset, view)

    def read_data(self, slot: int, offset: int, length: int) -> bytes:
        """``length`` bytes of data slot ``slot`` at ``offset``."""
        return self._dma.read_bytes(self._geo.data_slot(slot) + offset, length)

    def read_data_into(self, slot: int, offset: int, view: memoryview) -> None:
        """Fill the writable ``view`` from data slot ``slot`` at ``offset``."""
        self._dma.copy_out(self._geo.data_slot(slot) + offset, view)

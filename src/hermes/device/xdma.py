"""BAR2 of the Hermes device: XDMA subset (H2C/C2H channels, SGDMA, IRQ block, MSI-X storage)."""
from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable

from .. import regs as R
from .hostmem import DmaFault, buffer_address

#: Status bits 23..1: events and errors, cleared by RW1C writes or the clear-on-read register.
STATUS_EVENT_MASK = 0x00FF_FFFE
#: Every error bit a chain can end with (the driver treats any of them as a failed transfer).
STATUS_ERROR_MASK = (R.XDMA_STAT_MAGIC_STOPPED | R.XDMA_STAT_INVALID_LEN | R.XDMA_STAT_READ_ERROR
                     | R.XDMA_STAT_WRITE_ERROR | R.XDMA_STAT_DESC_ERROR)
#: Alignments register: address alignment 1 (bits 23..16), length granularity 1 (15..8),
#: 64 address bits (7..0): the model moves any byte range.
ALIGNMENTS = (1 << 16) | (1 << 8) | 64
#: Number of interrupt vectors of a Hermes device (MSI-X table size).
NUM_VECTORS = R.MSIX_VECTORS
#: MSI-X storage: 16 bytes a table entry, then the pending-bit array at 0x8FE0 (32 bytes).
MSIX_TABLE_BYTES = 16 * NUM_VECTORS
MSIX_PBA_BYTES = 32

_DESC = struct.Struct("<IIQQQ")
_M32 = 0xFFFF_FFFF
#: A C memmove: ctypes releases the GIL for the call, so a 1 MiB copy does not stall other threads.
_memmove = ctypes.memmove
#: Descriptors from this many bytes on are copied by ``_memmove``; shorter ones by slicing, under
#: the GIL (a ctypes call costs more than it saves there, and giving the GIL away risks waiting
#: for it to come back).
GIL_FREE_COPY_MIN = 64 << 10


def identifier(target: int, channel: int = 0) -> int:
    """Value of the identifier register of a register group (RO)."""
    return (R.XDMA_ID_MAGIC << 20) | (target << 16) | (channel << 8) | R.XDMA_VERSION


class Channel:
    """One DMA channel: its channel registers, its SGDMA registers and the run state."""

    def __init__(self, c2h: bool, index: int):
        self.c2h = c2h
        self.index = index
        #: Bit of this channel in the IRQ block's channel masks (H2C first, then C2H).
        self.irq_bit = (R.XDMA_H2C_CHANNELS + index) if c2h else index
        self.vector = R.c2h_vector(index) if c2h else R.h2c_vector(index)
        #: Held while a chain is walked; a start that finds it taken is counted and dropped.
        self.lock = threading.Lock()
        self.busy = False
        self.reset()

    def reset(self) -> None:
        """Power-on register values."""
        self.control = 0
        self.status = 0
        self.completed = 0
        self.irq_mask = 0
        self.desc_lo = 0
        self.desc_hi = 0
        self.desc_adj = 0


class XdmaBlock:
    """Register file and descriptor engine of BAR2.

    ``raise_irq(vector)`` delivers an interrupt; ``count(key)`` bumps a device statistic;
    ``user_request()`` returns the user interrupt request bits (one per engine, its DONE flag).
    DMA runs synchronously inside the register write that sets a channel's run bit. Data moves
    with one ``memmove`` per descriptor when the host memory offers ``span`` (the GIL is
    released while the bytes move, so other threads run meanwhile), else through its
    ``view``/``read``/``write``.
    """

    def __init__(self, bar4: memoryview, raise_irq: Callable[[int], None],
                 count: Callable[[str, int], None], user_request: Callable[[], int]):
        self._bar4 = bar4
        self._bar4_addr = buffer_address(bar4)
        self._raise_irq = raise_irq
        self._count = count
        self._user_request = user_request
        self.host: object | None = None
        self.h2c = [Channel(False, i) for i in range(R.XDMA_H2C_CHANNELS)]
        self.c2h = [Channel(True, i) for i in range(R.XDMA_C2H_CHANNELS)]
        self.channels = self.h2c + self.c2h
        self.user_mask = 0
        #: Whether any user mask register was written since reset (the device's legacy
        #: interrupt rule keys on it; see HermesDevice ``irq_compat``).
        self.user_mask_written = False
        self.chan_mask = 0
        self.user_vectors = [0] * 4
        self.chan_vectors = [0] * 2
        self.msix_table = bytearray(MSIX_TABLE_BYTES)
        self.msix_pba = bytearray(MSIX_PBA_BYTES)
        self._reset_vectors()
        # offset -> handler; a reader without a writer is a read-only register.
        self.readers: dict[int, Callable[[], int]] = {}
        self.writers: dict[int, Callable[[int], None]] = {}
        self._build()

    # --- register map ---------------------------------------------------------------------------
    def _build(self) -> None:
        rd = self.readers
        for ch in self.channels:
            self._channel_registers(ch)
        irq = R.xdma_offset(R.XDMA_TARGET_IRQ, 0, 0)
        self._constant(irq + R.XDMA_CH_IDENTIFIER, identifier(R.XDMA_TARGET_IRQ))
        self._set_clear(irq + R.XDMA_IRQ_USER_MASK, self, "user_mask", _M32)
        for off in range(irq + R.XDMA_IRQ_USER_MASK, irq + R.XDMA_IRQ_USER_MASK_W1C + 1, 4):
            self.writers[off] = self._noting_user_mask(self.writers[off])
        self._set_clear(irq + R.XDMA_IRQ_CHANNEL_MASK, self, "chan_mask",
                        (1 << len(self.channels)) - 1)
        rd[irq + R.XDMA_IRQ_USER_REQUEST] = self._user_request
        rd[irq + R.XDMA_IRQ_CHANNEL_REQUEST] = self.channel_request
        rd[irq + R.XDMA_IRQ_USER_PENDING] = lambda: self._user_request() & self.user_mask
        rd[irq + R.XDMA_IRQ_CHANNEL_PENDING] = lambda: self.channel_request() & self.chan_mask
        self._vector_registers(irq + R.XDMA_IRQ_USER_VECTOR, "user_vectors")
        self._vector_registers(irq + R.XDMA_IRQ_CHANNEL_VECTOR, "chan_vectors")
        for t in (R.XDMA_TARGET_CONFIG, R.XDMA_TARGET_SGDMA_COMMON):
            self._constant(R.xdma_offset(t, 0, 0), identifier(t))

    def _constant(self, offset: int, value: int) -> None:
        """A read-only register at ``offset`` that always reads ``value``."""
        self.readers[offset] = lambda: value

    def _channel_registers(self, ch: Channel) -> None:
        """The registers of one channel's engine group and of its SGDMA group."""
        rd, wr = self.readers, self.writers
        t = R.XDMA_TARGET_C2H if ch.c2h else R.XDMA_TARGET_H2C
        sg = R.XDMA_TARGET_C2H_SGDMA if ch.c2h else R.XDMA_TARGET_H2C_SGDMA
        base = R.xdma_offset(t, ch.index, 0)
        self._constant(base + R.XDMA_CH_IDENTIFIER, identifier(t, ch.index))
        for reg in (R.XDMA_CH_CONTROL, R.XDMA_CH_CONTROL_W1S, R.XDMA_CH_CONTROL_W1C):
            rd[base + reg] = lambda: ch.control
        # Only a write that itself carries the run bit starts the channel.
        wr[base + R.XDMA_CH_CONTROL] = lambda v: self._control(ch, v, v)
        wr[base + R.XDMA_CH_CONTROL_W1S] = lambda v: self._control(ch, ch.control | v, v)
        wr[base + R.XDMA_CH_CONTROL_W1C] = lambda v: self._control(ch, ch.control & ~v, 0)
        rd[base + R.XDMA_CH_STATUS] = lambda: ch.status | ch.busy
        wr[base + R.XDMA_CH_STATUS] = lambda v: self._status_w1c(ch, v)
        rd[base + R.XDMA_CH_STATUS_RC] = lambda: self._status_rc(ch)
        rd[base + R.XDMA_CH_COMPLETED] = lambda: ch.completed
        self._constant(base + R.XDMA_CH_ALIGNMENTS, ALIGNMENTS)
        self._set_clear(base + R.XDMA_CH_IRQ_MASK, ch, "irq_mask", STATUS_EVENT_MASK)
        sbase = R.xdma_offset(sg, ch.index, 0)
        self._constant(sbase + R.XDMA_CH_IDENTIFIER, identifier(sg, ch.index))
        rd[sbase + R.XDMA_SG_DESC_LO] = lambda: ch.desc_lo
        wr[sbase + R.XDMA_SG_DESC_LO] = lambda v: setattr(ch, "desc_lo", v)
        rd[sbase + R.XDMA_SG_DESC_HI] = lambda: ch.desc_hi
        wr[sbase + R.XDMA_SG_DESC_HI] = lambda v: setattr(ch, "desc_hi", v)
        rd[sbase + R.XDMA_SG_DESC_ADJ] = lambda: ch.desc_adj
        wr[sbase + R.XDMA_SG_DESC_ADJ] = lambda v: setattr(ch, "desc_adj", v & 0x3F)

    def _vector_registers(self, base: int, attr: str) -> None:
        """One read/write register per entry of the list ``self.<attr>``, 4 bytes apart from
        ``base`` (looked up at each access: a reset replaces the list)."""
        for i in range(len(getattr(self, attr))):
            self._vector_register(base + 4 * i, attr, i)

    def _vector_register(self, offset: int, attr: str, i: int) -> None:
        self.readers[offset] = lambda: getattr(self, attr)[i]
        self.writers[offset] = lambda v: getattr(self, attr).__setitem__(i, v)

    def _set_clear(self, offset: int, obj: object, attr: str, bits: int) -> None:
        """A register at ``offset`` with W1S at +4 and W1C at +8 forms; all three read it."""
        def get() -> int:
            return getattr(obj, attr)

        self.readers[offset] = self.readers[offset + 4] = self.readers[offset + 8] = get
        self.writers[offset] = lambda v: setattr(obj, attr, v & bits)
        self.writers[offset + 4] = lambda v: setattr(obj, attr, (get() | v) & bits)
        self.writers[offset + 8] = lambda v: setattr(obj, attr, get() & ~v)

    def _noting_user_mask(self, write: Callable[[int], None]) -> Callable[[int], None]:
        def noted(value: int) -> None:
            self.user_mask_written = True
            write(value)
        return noted

    def _reset_vectors(self) -> None:
        # Power-on vector numbers: the fixed routing the device uses (user n -> 8 + n, channel c
        # -> c), four 5-bit fields a register as in XDMA. Routing never changes; see specs.
        uv = [R.engine_vector(n) for n in range(4 * len(self.user_vectors))]
        cv = list(range(4 * len(self.chan_vectors)))
        self.user_vectors = [sum((uv[4 * i + k] & 0x1F) << (8 * k) for k in range(4))
                             for i in range(len(self.user_vectors))]
        self.chan_vectors = [sum((cv[4 * i + k] & 0x1F) << (8 * k) for k in range(4))
                             for i in range(len(self.chan_vectors))]

    # --- register access (4-byte, aligned; the device checks size and alignment) ---------------
    def read(self, offset: int) -> int:
        """Value of the 32-bit register at ``offset`` (0 when unmapped)."""
        h = self.readers.get(offset)
        if h is not None:
            return h() & _M32
        rel = offset - R.MSIX_TABLE_OFFSET
        if 0 <= rel < MSIX_TABLE_BYTES:
            return int.from_bytes(self.msix_table[rel:rel + 4], "little")
        rel = offset - R.MSIX_PBA_OFFSET
        if 0 <= rel < MSIX_PBA_BYTES:
            return int.from_bytes(self.msix_pba[rel:rel + 4], "little")
        return 0

    def write(self, offset: int, value: int) -> str | None:
        """Write a 32-bit register; returns None, or the stats key of an ignored write."""
        h = self.writers.get(offset)
        if h is not None:
            h(value & _M32)
            return None
        if offset in self.readers:
            return "ro_writes"
        rel = offset - R.MSIX_TABLE_OFFSET
        if 0 <= rel < MSIX_TABLE_BYTES:
            self.msix_table[rel:rel + 4] = (value & _M32).to_bytes(4, "little")
            return None
        rel = offset - R.MSIX_PBA_OFFSET
        if 0 <= rel < MSIX_PBA_BYTES:
            self.msix_pba[rel:rel + 4] = (value & _M32).to_bytes(4, "little")
            return None
        return "unmapped_writes"

    def channel_request(self) -> int:
        """IRQ block channel request bits: channels whose status has an enabled event bit."""
        bits = 0
        for ch in self.channels:
            if ch.status & ch.irq_mask & STATUS_EVENT_MASK:
                bits |= 1 << ch.irq_bit
        return bits

    # --- channel control and status -------------------------------------------------------------
    def _status_w1c(self, ch: Channel, value: int) -> None:
        ch.status &= ~(value & STATUS_EVENT_MASK)

    def _status_rc(self, ch: Channel) -> int:
        value = ch.status | ch.busy
        ch.status &= ~STATUS_EVENT_MASK
        return value

    def _control(self, ch: Channel, value: int, written: int) -> None:
        ch.control = value & _M32
        if written & R.XDMA_CTRL_RUN:
            self.start(ch)

    def start(self, ch: Channel) -> None:
        """Walk ``ch``'s descriptor chain now; set status, raise the channel's vector if enabled."""
        if not ch.lock.acquire(False):
            # Another thread is walking this channel's chain: the start is dropped, but counted.
            self._count("busy_dma_starts", 1)
            return
        try:
            ch.busy = True
            ch.completed = 0
            try:
                events = self._walk(ch)
            except Exception:  # a bug in the model or a misbehaving host object; never escape
                self._count("internal_errors", 1)
                events = R.XDMA_STAT_DESC_ERROR
            ch.status |= events
            ch.control &= ~R.XDMA_CTRL_RUN  # the channel stops by itself when the chain ends
            ch.busy = False
        finally:
            ch.lock.release()
        self._count("dma_runs", 1)
        if events & STATUS_ERROR_MASK:
            self._count("dma_errors", 1)
        if events & ch.irq_mask:
            if (self.chan_mask >> ch.irq_bit) & 1:
                self._count("interrupts", 1)
                self._raise_irq(ch.vector)
            else:
                self._count("interrupts_masked", 1)

    def _walk(self, ch: Channel) -> int:
        host = self.host
        if host is None:
            return R.XDMA_STAT_DESC_ERROR
        read = host.read  # type: ignore[attr-defined]
        addr = (ch.desc_hi << 32) | ch.desc_lo
        block = 1 + (ch.desc_adj & 0x3F)   # descriptors left in the current adjacent block
        seen: set[int] = set()
        events = 0
        nbytes = 0
        try:
            while True:
                if len(seen) >= R.MAX_DESC_CHAIN or addr in seen:
                    return events | R.XDMA_STAT_DESC_ERROR
                seen.add(addr)
                try:
                    raw = read(addr, R.DESC_SIZE)
                except DmaFault:
                    return events | R.XDMA_STAT_DESC_ERROR
                control, length, src, dst, nxt = _DESC.unpack(raw)
                if control >> 16 != R.DESC_MAGIC:
                    return events | R.XDMA_STAT_MAGIC_STOPPED
                if length:
                    err = (self._c2h if ch.c2h else self._h2c)(host, src, dst, length)
                    if err:
                        return events | err
                    nbytes += length
                ch.completed += 1
                if control & R.DESC_COMPLETED:
                    events |= R.XDMA_STAT_DESC_COMPLETED
                if control & R.DESC_STOP:
                    return events | R.XDMA_STAT_DESC_STOPPED
                block -= 1
                if block:
                    addr += R.DESC_SIZE
                else:
                    if nxt == 0:
                        return events | R.XDMA_STAT_DESC_STOPPED
                    addr = nxt
                    block = 1 + ((control >> 8) & 0x3F)
        finally:
            self._count("dma_descriptors", ch.completed)
            self._count("dma_bytes", nbytes)

    def _move(self, span: Callable, host_addr: int, bar4_off: int, length: int,
              c2h: bool) -> None:
        """Copy ``length`` bytes between host memory (through its ``span``) and BAR4, into the
        host for ``c2h``; raises ``DmaFault``. Both sides are held by a view until the bytes
        have moved, so neither the host buffer nor a caller's BAR4 mapping can go away under
        a copy that runs without the GIL."""
        pin, addr = span(host_addr, length, c2h)
        window = self._bar4[bar4_off:bar4_off + length]
        if length < GIL_FREE_COPY_MIN:
            if c2h:
                pin[:] = window
            else:
                window[:] = pin
        elif c2h:
            _memmove(addr, self._bar4_addr + bar4_off, length)
        else:
            _memmove(self._bar4_addr + bar4_off, addr, length)
        del pin, window

    def _h2c(self, host: object, src: int, dst: int, length: int) -> int:
        bar4 = self._bar4
        if dst + length > len(bar4):
            return R.XDMA_STAT_INVALID_LEN
        span = getattr(host, "span", None)
        try:
            if span is not None:
                self._move(span, src, dst, length, False)
                return 0
            view = getattr(host, "view", None)
            data = view(src, length) if view is not None else None
            if data is None:
                data = host.read(src, length)  # type: ignore[attr-defined]
            if len(data) != length:
                return R.XDMA_STAT_READ_ERROR
        except DmaFault as f:
            return R.XDMA_STAT_INVALID_LEN if f.partial else R.XDMA_STAT_READ_ERROR
        bar4[dst:dst + length] = data
        return 0

    def _c2h(self, host: object, src: int, dst: int, length: int) -> int:
        bar4 = self._bar4
        if src + length > len(bar4):
            return R.XDMA_STAT_INVALID_LEN
        span = getattr(host, "span", None)
        try:
            if span is not None:
                self._move(span, dst, src, length, True)
                return 0
            view = getattr(host, "view", None)
            target = view(dst, length) if view is not None else None
            if target is None:
                host.write(dst, bar4[src:src + length])  # type: ignore[attr-defined]
            else:
                target[:] = bar4[src:src + length]
        except DmaFault as f:
            return R.XDMA_STAT_INVALID_LEN if f.partial else R.XDMA_STAT_WRITE_ERROR
        return 0

    # --- reset ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on state: waits for chains being walked, then clears every register."""
        for ch in self.channels:
            with ch.lock:
                ch.reset()
        self.user_mask = 0
        self.user_mask_written = False
        self.chan_mask = 0
        self._reset_vectors()
        self.msix_table[:] = bytes(MSIX_TABLE_BYTES)
        self.msix_pba[:] = bytes(MSIX_PBA_BYTES)

"""The device's BAR2 XDMA block: registers, descriptor chains, error stops, channel interrupts."""
from __future__ import annotations

import os
import struct
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from hermes import regs as R
from hermes.device import STATUS_ERROR_MASK, DmaFault, HermesDevice, HostMemory

IRQ = R.xdma_offset(R.XDMA_TARGET_IRQ, 0, 0)
HOST = 0x2_0000_0000          # bus address of the test's host memory region
HOST_SIZE = 4 << 20
DESCS = HOST + HOST_SIZE - (256 << 10)  # descriptors live in the last 256 KiB of it
DATA0 = 16 << 20              # BAR4 offset of data slot 0


class Dma:
    """Programs BAR2 like a driver: descriptors in host memory, SGDMA address, run bit."""

    def __init__(self, dev: HermesDevice, host: HostMemory):
        self.dev = dev
        self.host = host
        self.irqs: list[int] = []
        dev.set_irq_handler(self.irqs.append)

    def w(self, off: int, value: int) -> None:
        self.dev.bar_write(2, off, 4, value)

    def r(self, off: int) -> int:
        return self.dev.bar_read(2, off, 4)

    def put_desc(self, addr: int, length: int, src: int, dst: int, nxt: int = 0, *,
                 adjacent: int = 0, stop: bool = False, completed: bool = False,
                 magic: int = R.DESC_MAGIC) -> None:
        control = (R.desc_control(adjacent, stop=stop, eop=stop, completed=completed)
                   & 0xFFFF) | magic << 16
        self.host.write(addr, struct.pack("<IIQQQ", control, length, src, dst, nxt))

    def chain(self, pieces: list[tuple[int, int, int]], base: int = DESCS) -> int:
        """Linked descriptors for (length, src, dst) pieces; returns the first's address."""
        for i, (length, src, dst) in enumerate(pieces):
            last = i == len(pieces) - 1
            self.put_desc(base + 32 * i, length, src, dst, 0 if last else base + 32 * (i + 1),
                          stop=last)
        return base

    def run(self, c2h: bool, ch: int, desc: int, adjacent: int = 0) -> int:
        """Start channel ``ch`` on the chain at ``desc``; returns the status (clear-on-read)."""
        sg = R.XDMA_TARGET_C2H_SGDMA if c2h else R.XDMA_TARGET_H2C_SGDMA
        t = R.XDMA_TARGET_C2H if c2h else R.XDMA_TARGET_H2C
        self.w(R.xdma_offset(sg, ch, R.XDMA_SG_DESC_LO), desc & 0xFFFF_FFFF)
        self.w(R.xdma_offset(sg, ch, R.XDMA_SG_DESC_HI), desc >> 32)
        self.w(R.xdma_offset(sg, ch, R.XDMA_SG_DESC_ADJ), adjacent)
        self.w(R.xdma_offset(t, ch, R.XDMA_CH_CONTROL_W1S), R.XDMA_CTRL_RUN)
        return self.r(R.xdma_offset(t, ch, R.XDMA_CH_STATUS_RC))

    def completed(self, c2h: bool, ch: int) -> int:
        t = R.XDMA_TARGET_C2H if c2h else R.XDMA_TARGET_H2C
        return self.r(R.xdma_offset(t, ch, R.XDMA_CH_COMPLETED))

    def enable_irqs(self) -> None:
        for c2h in (False, True):
            t = R.XDMA_TARGET_C2H if c2h else R.XDMA_TARGET_H2C
            for ch in range(4):
                self.w(R.xdma_offset(t, ch, R.XDMA_CH_IRQ_MASK), 0x00FF_FFFE)
        self.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK, 0xFF)


@pytest.fixture
def dev():
    d = HermesDevice()
    yield d
    d.close()


@pytest.fixture
def host(dev):
    h = HostMemory()
    h.register(HOST, bytearray(HOST_SIZE))
    dev.set_host_memory(h)
    return h


@pytest.fixture
def dma(dev, host):
    return Dma(dev, host)


def test_identifiers_and_alignments(dev):
    def ident(target: int, ch: int) -> int:
        return 0x1FC << 20 | target << 16 | ch << 8 | 0x05

    for ch in range(4):
        for target in (0, 1, 4, 5):
            assert dev.bar_read(2, R.xdma_offset(target, ch, 0), 4) == ident(target, ch)
        assert dev.bar_read(2, R.xdma_offset(0, ch, R.XDMA_CH_ALIGNMENTS), 4) == 0x00010140
    assert dev.bar_read(2, R.xdma_offset(0, 4, 0), 4) == 0      # no fifth channel
    for target in (2, 3, 6):
        assert dev.bar_read(2, R.xdma_offset(target, 0, 0), 4) == ident(target, 0)
    dev.bar_write(2, 0, 4, 0)
    dev.bar_write(2, R.xdma_offset(0, 0, R.XDMA_CH_COMPLETED), 4, 5)
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_PENDING, 4, 5)
    assert dev.stats["ro_writes"] == 3
    dev.bar_write(2, 0x7000, 4, 1)
    assert dev.stats["unmapped_writes"] == 1
    assert dev.bar_read(2, 0x7000, 4) == 0


def test_control_and_mask_set_clear(dma):
    ctl = R.xdma_offset(R.XDMA_TARGET_C2H, 2, R.XDMA_CH_CONTROL)
    dma.w(ctl, 0x0000_0F00)
    dma.w(ctl + 4, 0x0000_00F0)      # W1S
    dma.w(ctl + 8, 0x0000_0300)      # W1C
    assert dma.r(ctl) == 0x0000_0CF0
    mask = R.xdma_offset(R.XDMA_TARGET_H2C, 1, R.XDMA_CH_IRQ_MASK)
    dma.w(mask, 0x6)
    dma.w(mask + 4, 0x10)
    dma.w(mask + 8, 0x2)
    assert dma.r(mask) == 0x14
    dma.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK_W1S, 0x3)
    dma.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK_W1C, 0x1)
    assert dma.r(IRQ + R.XDMA_IRQ_CHANNEL_MASK) == 0x2
    assert dma.r(R.xdma_offset(R.XDMA_TARGET_H2C_SGDMA, 0, R.XDMA_SG_DESC_ADJ)) == 0
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C_SGDMA, 0, R.XDMA_SG_DESC_ADJ), 0xFFFF)
    assert dma.r(R.xdma_offset(R.XDMA_TARGET_H2C_SGDMA, 0, R.XDMA_SG_DESC_ADJ)) == 0x3F


def test_msix_table_and_pba_are_storage(dev):
    dev.bar_write(2, R.MSIX_TABLE_OFFSET + 16 * 31 + 12, 4, 1)
    dev.bar_write(2, R.MSIX_PBA_OFFSET + 28, 4, 0xABCD)
    assert dev.bar_read(2, R.MSIX_TABLE_OFFSET + 16 * 31 + 12, 4) == 1
    assert dev.bar_read(2, R.MSIX_PBA_OFFSET + 28, 4) == 0xABCD
    assert dev.bar_read(2, R.MSIX_TABLE_OFFSET + 16 * 32, 4) == 0   # past the 32-entry table


@pytest.mark.parametrize("size,host_off,bar_off", [
    (256, 0, DATA0),                  # one small descriptor
    (16 << 10, 0, DATA0 + 4096),      # 16 KiB inside 4 KiB-aligned pages
    (1 << 20, 0x123, DATA0),          # 1 MiB crossing every 4 KiB boundary, odd host address
    (5000, 4000, 4090),               # program-slot area, both ends unaligned
])
def test_h2c_then_c2h_round_trip(dma, dev, host, size, host_off, bar_off):
    payload = os.urandom(size)
    host.write(HOST + host_off, payload)
    status = dma.run(False, 0, dma.chain([(size, HOST + host_off, bar_off)]))
    assert status == R.XDMA_STAT_DESC_STOPPED
    assert dev.bar4[bar_off:bar_off + size].tobytes() == payload
    assert dma.completed(False, 0) == 1
    back = HOST + (2 << 20) + host_off
    status = dma.run(True, 3, dma.chain([(size, bar_off, back)]))
    assert status == R.XDMA_STAT_DESC_STOPPED
    assert host.read(back, size) == payload
    ctl = R.xdma_offset(R.XDMA_TARGET_C2H, 3, R.XDMA_CH_CONTROL)
    assert dma.r(ctl) & R.XDMA_CTRL_RUN == 0     # the channel stopped by itself
    assert dev.stats["dma_bytes"] == 2 * size and dev.stats["dma_descriptors"] == 2


def test_one_mib_at_memcpy_speed(dma, dev, host):
    size = 1 << 20
    host.write(HOST, os.urandom(size))
    desc = dma.chain([(size, HOST, DATA0)])
    best = min(_timed(lambda: dma.run(False, 0, desc)) for _ in range(5))
    assert best < 0.01   # one memcpy of 1 MiB, not a Python loop over bytes


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_multi_descriptor_chain_scatter_gather(dma, dev, host):
    pieces = []
    for i in range(10):  # scatter host chunks to BAR4 in reverse order
        host.write(HOST + 1000 * i, bytes([i]) * 1000)
        pieces.append((1000, HOST + 1000 * i, DATA0 + 1000 * (9 - i)))
    assert dma.run(False, 2, dma.chain(pieces)) == R.XDMA_STAT_DESC_STOPPED
    assert dma.completed(False, 2) == 10
    assert dev.bar4[DATA0:DATA0 + 10000].tobytes() == b"".join(bytes([9 - i]) * 1000
                                                               for i in range(10))


def test_adjacent_descriptors(dma, dev, host):
    host.write(HOST, bytes(range(256)) * 4)
    # first block: 3 adjacent descriptors (SGDMA adjacent register = 2); their `next` fields are
    # ignored inside the block (set to junk); the block's last descriptor links to a second
    # block of 2 (its adjacent field = 1) far away.
    second = DESCS + 0x1000
    dma.put_desc(DESCS, 100, HOST, DATA0, nxt=0xDEAD_0000)
    dma.put_desc(DESCS + 32, 100, HOST + 100, DATA0 + 100, nxt=0)
    dma.put_desc(DESCS + 64, 100, HOST + 200, DATA0 + 200, nxt=second, adjacent=1)
    dma.put_desc(second, 100, HOST + 300, DATA0 + 300, nxt=0xBAD)
    dma.put_desc(second + 32, 100, HOST + 400, DATA0 + 400, stop=True)
    assert dma.run(False, 1, DESCS, adjacent=2) == R.XDMA_STAT_DESC_STOPPED
    assert dma.completed(False, 1) == 5
    assert dev.bar4[DATA0:DATA0 + 500].tobytes() == (bytes(range(256)) * 2)[:500]


def test_block_ends_with_zero_next(dma, dev, host):
    dma.put_desc(DESCS, 8, HOST, DATA0, nxt=0)
    dma.put_desc(DESCS + 32, 8, HOST, DATA0 + 8)   # not reached: adjacent register is 0
    assert dma.run(False, 0, DESCS) == R.XDMA_STAT_DESC_STOPPED
    assert dma.completed(False, 0) == 1


def test_stop_bit_ends_chain_early(dma, dev, host):
    host.write(HOST, b"A" * 64)
    dma.put_desc(DESCS, 32, HOST, DATA0, stop=True)
    dma.put_desc(DESCS + 32, 32, HOST + 32, DATA0 + 32, stop=True)
    assert dma.run(False, 0, DESCS, adjacent=1) == R.XDMA_STAT_DESC_STOPPED
    assert dma.completed(False, 0) == 1
    assert dev.bar4[DATA0 + 32:DATA0 + 64].tobytes() == bytes(32)


def test_completed_flag_and_zero_length(dma, host):
    dma.put_desc(DESCS, 0, 0xDEAD_BEEF_0000, 1 << 40, nxt=DESCS + 32, completed=True)
    dma.put_desc(DESCS + 32, 0, 0, 0, stop=True)
    status = dma.run(False, 0, DESCS)
    assert status == R.XDMA_STAT_DESC_STOPPED | R.XDMA_STAT_DESC_COMPLETED
    assert dma.completed(False, 0) == 2


def _error_case(dma, dev, host, c2h: bool, bad: tuple[int, int, int], bit: int) -> None:
    """Chain: a good descriptor, the bad one, a good one: only the first transfers."""
    host.write(HOST, b"G" * 64)
    dev.bar4[DATA0:DATA0 + 64] = b"g" * 64
    good1 = (64, DATA0, HOST + 0x1000) if c2h else (64, HOST, DATA0 + 0x1000)
    good2 = (64, DATA0, HOST + 0x2000) if c2h else (64, HOST, DATA0 + 0x2000)
    dma.enable_irqs()
    status = dma.run(c2h, 1, dma.chain([good1, bad, good2]))
    assert status == bit
    assert status & STATUS_ERROR_MASK
    assert dma.completed(c2h, 1) == 1
    if c2h:
        assert host.read(HOST + 0x1000, 64) == b"g" * 64
        assert host.read(HOST + 0x2000, 64) == bytes(64)
    else:
        assert dev.bar4[DATA0 + 0x1000:DATA0 + 0x1040].tobytes() == b"G" * 64
        assert dev.bar4[DATA0 + 0x2000:DATA0 + 0x2040].tobytes() == bytes(64)
    assert dma.irqs == [R.c2h_vector(1) if c2h else R.h2c_vector(1)]
    assert dev.stats["dma_errors"] == 1


def test_length_past_bar4_end(dma, dev, host):
    end = dev.bar_size(4)
    _error_case(dma, dev, host, False, (64, HOST, end - 32), R.XDMA_STAT_INVALID_LEN)
    assert dev.bar4[end - 32:].tobytes() == bytes(32)


def test_c2h_source_past_bar4_end(dma, dev, host):
    _error_case(dma, dev, host, True, (8, dev.bar_size(4), HOST), R.XDMA_STAT_INVALID_LEN)


def test_host_range_crossing_region_end(dma, dev, host):
    _error_case(dma, dev, host, False, (64, HOST + HOST_SIZE - 32, DATA0 + 0x3000),
                R.XDMA_STAT_INVALID_LEN)


def test_unmapped_host_source(dma, dev, host):
    _error_case(dma, dev, host, False, (64, 0x1000, DATA0 + 0x3000), R.XDMA_STAT_READ_ERROR)


def test_unmapped_host_destination(dma, dev, host):
    _error_case(dma, dev, host, True, (64, DATA0, 0x9_0000_0000), R.XDMA_STAT_WRITE_ERROR)


def test_bad_magic(dma, dev, host):
    host.write(HOST, b"M" * 64)
    dma.enable_irqs()
    dma.put_desc(DESCS, 64, HOST, DATA0, nxt=DESCS + 32)
    dma.put_desc(DESCS + 32, 64, HOST, DATA0 + 64, nxt=DESCS + 64, magic=0xAD4C)
    dma.put_desc(DESCS + 64, 64, HOST, DATA0 + 128, stop=True)
    assert dma.run(False, 0, DESCS) == R.XDMA_STAT_MAGIC_STOPPED
    assert dma.completed(False, 0) == 1
    assert dev.bar4[DATA0:DATA0 + 64].tobytes() == b"M" * 64
    assert dev.bar4[DATA0 + 64:DATA0 + 192].tobytes() == bytes(128)
    assert dma.irqs == [0]


def test_unreadable_descriptor(dma, dev):
    assert dma.run(False, 0, 0x40) == R.XDMA_STAT_DESC_ERROR
    assert dma.completed(False, 0) == 0


def test_looping_chain(dma, dev, host):
    dma.put_desc(DESCS, 8, HOST, DATA0, nxt=DESCS + 32)
    dma.put_desc(DESCS + 32, 8, HOST, DATA0, nxt=DESCS)
    assert dma.run(False, 0, DESCS) == R.XDMA_STAT_DESC_ERROR
    assert dma.completed(False, 0) == 2


def test_self_loop(dma, host):
    dma.put_desc(DESCS, 8, DATA0, HOST, nxt=DESCS, adjacent=0)
    assert dma.run(True, 0, DESCS) == R.XDMA_STAT_DESC_ERROR
    assert dma.completed(True, 0) == 1


@pytest.mark.parametrize("count,ok", [(4096, True), (4097, False)])
def test_chain_length_limit(dma, host, count, ok):
    # one block of up to 64 adjacent descriptors at a time, linked by `next`
    for i in range(count):
        addr = HOST + 32 * i
        last = i == count - 1
        in_block = i % 64
        nxt = 0 if last else addr + 32
        adjacent = min(63, count - i - 2) if in_block == 63 and not last else 0
        dma.put_desc(addr, 4, HOST, DATA0, nxt=nxt, adjacent=adjacent, stop=last)
    status = dma.run(False, 3, HOST, adjacent=min(63, count - 1))
    if ok:
        assert status == R.XDMA_STAT_DESC_STOPPED
        assert dma.completed(False, 3) == 4096
    else:
        assert status == R.XDMA_STAT_DESC_ERROR
        assert dma.completed(False, 3) == 4096


def test_status_rw1c_and_clear_on_read(dma, dev, host):
    st = R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_STATUS)
    dma.put_desc(DESCS, 8, HOST, DATA0, stop=True, completed=True)
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C_SGDMA, 0, R.XDMA_SG_DESC_LO), DESCS & 0xFFFF_FFFF)
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C_SGDMA, 0, R.XDMA_SG_DESC_HI), DESCS >> 32)
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_CONTROL), R.XDMA_CTRL_RUN)
    both = R.XDMA_STAT_DESC_STOPPED | R.XDMA_STAT_DESC_COMPLETED
    assert dma.r(st) == both
    dma.w(st, R.XDMA_STAT_DESC_COMPLETED | R.XDMA_STAT_BUSY)   # RW1C; busy is not writable
    assert dma.r(st) == R.XDMA_STAT_DESC_STOPPED
    assert dma.r(st + 4) == R.XDMA_STAT_DESC_STOPPED          # clear on read...
    assert dma.r(st) == 0                                       # ...cleared
    assert dev.stats["ro_writes"] == 0
    dma.w(st + 4, 1)
    assert dev.stats["ro_writes"] == 1


def test_channel_interrupts_need_both_masks(dma, dev, host):
    desc = dma.chain([(8, HOST, DATA0)])
    dma.run(False, 2, desc)
    assert dma.irqs == [] and dev.stats["interrupts_masked"] == 0   # channel mask 0: no event
    mask = R.xdma_offset(R.XDMA_TARGET_H2C, 2, R.XDMA_CH_IRQ_MASK)
    dma.w(mask, R.XDMA_STAT_DESC_STOPPED)
    dma.run(False, 2, desc)
    assert dma.irqs == [] and dev.stats["interrupts_masked"] == 1   # block mask still 0
    dma.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK_W1S, 1 << 2)
    dma.run(False, 2, desc)
    assert dma.irqs == [2]
    # C2H channel 1 is bit 5 of the block's channel mask and vector 5
    dma.w(R.xdma_offset(R.XDMA_TARGET_C2H, 1, R.XDMA_CH_IRQ_MASK), 0x00FF_FFFE)
    back = dma.chain([(8, DATA0, HOST + 64)], base=DESCS + 0x100)
    dma.run(True, 1, back)
    assert dma.irqs == [2]
    dma.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK_W1S, 1 << 5)
    dma.run(True, 1, back)
    assert dma.irqs == [2, 5]
    # request/pending follow status & channel mask (status was cleared on read by run())
    ctl = R.xdma_offset(R.XDMA_TARGET_H2C, 2, R.XDMA_CH_CONTROL)
    dma.w(ctl, R.XDMA_CTRL_RUN)
    assert dma.r(IRQ + R.XDMA_IRQ_CHANNEL_REQUEST) == 1 << 2
    assert dma.r(IRQ + R.XDMA_IRQ_CHANNEL_PENDING) == 1 << 2
    dma.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK_W1C, 1 << 2)
    assert dma.r(IRQ + R.XDMA_IRQ_CHANNEL_PENDING) == 0


def test_error_interrupt_only_if_error_bit_enabled(dma, dev, host):
    dma.w(IRQ + R.XDMA_IRQ_CHANNEL_MASK, 0xFF)
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_IRQ_MASK), R.XDMA_STAT_DESC_STOPPED)
    dma.put_desc(DESCS, 8, HOST, DATA0, magic=0)
    dma.run(False, 0, DESCS)
    assert dma.irqs == []
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_IRQ_MASK_W1S), R.XDMA_STAT_MAGIC_STOPPED)
    dma.run(False, 0, DESCS)
    assert dma.irqs == [0]


def test_no_host_memory_attached():
    with HermesDevice() as d:
        dma = Dma(d, HostMemory())
        d.set_host_memory(None)
        assert dma.run(False, 0, 0x1000) == R.XDMA_STAT_DESC_ERROR


def test_host_without_view_method(dev):
    class CopyingHost:
        """A host-memory object offering only read/write (like a socket-backed one)."""

        def __init__(self) -> None:
            self.mem = HostMemory()
            self.mem.register(HOST, bytearray(1 << 16))

        def read(self, addr: int, n: int) -> bytes:
            return self.mem.read(addr, n)

        def write(self, addr: int, data: bytes) -> None:
            self.mem.write(addr, data)

    h = CopyingHost()
    dev.set_host_memory(h)
    dma = Dma(dev, h.mem)
    h.write(HOST, b"xyz" * 100)
    assert dma.run(False, 0, dma.chain([(300, HOST, DATA0)], base=HOST + 0x8000)) == 2
    assert dma.run(True, 0, dma.chain([(300, DATA0, HOST + 0x1000)], base=HOST + 0x8000)) == 2
    assert h.read(HOST + 0x1000, 300) == b"xyz" * 100
    assert dma.run(True, 0, dma.chain([(8, DATA0, 0x10)], base=HOST + 0x8000)) == \
        R.XDMA_STAT_WRITE_ERROR


def test_reset_clears_dma_registers(dma, dev, host):
    dma.enable_irqs()
    dma.run(False, 0, dma.chain([(8, HOST, DATA0)]))
    dma.w(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_CONTROL), 0xF0)
    dev.reset()
    assert dma.r(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_CONTROL)) == 0
    assert dma.r(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_COMPLETED)) == 0
    assert dma.r(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_IRQ_MASK)) == 0
    assert dma.r(R.xdma_offset(R.XDMA_TARGET_H2C_SGDMA, 0, R.XDMA_SG_DESC_LO)) == 0
    assert dma.r(IRQ + R.XDMA_IRQ_CHANNEL_MASK) == 0


# --- HostMemory ---------------------------------------------------------------------------------
def test_host_memory_regions():
    h = HostMemory()
    a = bytearray(4096)
    h.register(0x1000, a)
    h.register(0x3000, bytearray(100))
    with pytest.raises(ValueError):
        h.register(0x1800, bytearray(16))        # inside the first
    with pytest.raises(ValueError):
        h.register(0x0F00, bytearray(0x200))     # runs into the first
    with pytest.raises(ValueError):
        h.register(0x5000, b"readonly")
    h.write(0x1010, b"hello")
    assert a[0x10:0x15] == b"hello"
    assert h.read(0x1010, 5) == b"hello"
    v = h.view(0x1000, 16)
    v[0] = 7
    assert a[0] == 7
    assert h.regions() == [(0x1000, 4096), (0x3000, 100)]
    with pytest.raises(DmaFault) as e:
        h.read(0x1FF0, 32)
    assert e.value.partial
    with pytest.raises(DmaFault) as e:
        h.read(0x2000, 1)
    assert not e.value.partial
    with pytest.raises(DmaFault):
        h.read(0x0FFF, 2)
    h.unregister(0x1000)
    with pytest.raises(DmaFault):
        h.read(0x1010, 1)
    h.register(0x1000, bytearray(8))            # the range is free again


# --- property: any scatter-gather chain moves exactly what a plain copy would --------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 60000), st.integers(0, 60000)),
                min_size=1, max_size=12),
       st.integers(0, 11), st.booleans())
def test_chain_matches_plain_copy(pieces, adjacent, c2h):
    with HermesDevice(program_slots=1, data_slots=1, program_slot_size=65536,
                      data_slot_size=65536) as dev:
        host = HostMemory()
        host_buf = bytearray(os.urandom(70000))
        host.register(HOST, host_buf)
        desc_buf = bytearray(32 * len(pieces))
        host.register(DESCS, desc_buf)
        dev.set_host_memory(host)
        dev.bar4[:] = os.urandom(len(dev.bar4))
        bar4 = bytearray(dev.bar4)
        expect_host = bytearray(host_buf)
        d = Dma(dev, host)
        chain = []
        for length, a, b in pieces:
            length = min(length, 65536 * 2 - b, 70000 - a)
            chain.append((length, b, HOST + a) if c2h else (length, HOST + a, b))
            if c2h:
                expect_host[a:a + length] = bar4[b:b + length]
            else:
                bar4[b:b + length] = expect_host[a:a + length]
        # adjacent blocks: the first `adjacent + 1` descriptors are read contiguously anyway
        d.chain(chain)
        assert d.run(c2h, 0, DESCS, adjacent=min(adjacent, len(chain) - 1)) == \
            R.XDMA_STAT_DESC_STOPPED
        assert d.completed(c2h, 0) == len(chain)
        assert bytes(dev.bar4) == bytes(bar4)
        assert host_buf == expect_host


def test_concurrent_start_of_busy_channel_is_counted(dev):
    """A run-bit write while another thread walks the same channel's chain is dropped, counted."""
    entered, release = threading.Event(), threading.Event()
    mem = HostMemory()
    mem.register(HOST, bytearray(1 << 16))

    class SlowHost:
        def read(self, addr: int, n: int) -> bytes:
            entered.set()
            release.wait(5)
            return mem.read(addr, n)

        def write(self, addr: int, data: bytes) -> None:
            mem.write(addr, data)

    dev.set_host_memory(SlowHost())
    d = Dma(dev, mem)
    d.put_desc(HOST, 8, HOST + 64, DATA0, stop=True)
    th = threading.Thread(target=d.run, args=(False, 0, HOST))
    th.start()
    assert entered.wait(5)
    status = R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_STATUS)
    assert d.r(status) & R.XDMA_STAT_BUSY
    d.w(R.xdma_offset(R.XDMA_TARGET_H2C, 0, R.XDMA_CH_CONTROL), R.XDMA_CTRL_RUN)
    assert dev.stats["busy_dma_starts"] == 1
    release.set()
    th.join(5)
    assert d.r(status) & R.XDMA_STAT_BUSY == 0
    assert d.completed(False, 0) == 1

"""The in-process transport: Transport ABC over a HermesDevice, DMA buffers, interrupt waits."""
from __future__ import annotations

import struct
import threading
import time

import pytest

from hermes import regs as R
from hermes.device import HermesDevice
from hermes.engine.asm import assemble_program
from hermes.transport import DmaBuffer, Transport
from hermes.transport.inproc import DMA_BASE, InProcessTransport, IrqCounter

IRQ = R.xdma_offset(R.XDMA_TARGET_IRQ, 0, 0)


@pytest.fixture
def tp():
    t = InProcessTransport.create(budget=1_000_000)
    yield t
    t.close()


def enable_all_irqs(t: Transport) -> None:
    """What a driver does at probe: enable every channel and engine interrupt."""
    for target in (R.XDMA_TARGET_H2C, R.XDMA_TARGET_C2H):
        for ch in range(4):
            t.write(2, R.xdma_offset(target, ch, R.XDMA_CH_IRQ_MASK), 4, 0x00FF_FFFE)
    t.write(2, IRQ + R.XDMA_IRQ_CHANNEL_MASK, 4, 0xFF)
    engines = t.read(0, R.EHENG, 1)
    t.write(2, IRQ + R.XDMA_IRQ_USER_MASK, 4, (1 << engines) - 1)


def command(t: Transport, n: int, req: bytes) -> tuple[int, int]:
    t.write_block(0, R.cmdreq(n), req.ljust(32, b"\0"))
    t.write(0, R.cmdctrl(n), 1, 1)
    assert t.irq_wait(R.engine_vector(n), 5)
    res = t.read_block(0, R.cmdres(n), 16)
    return res[2], int.from_bytes(res[8:], "little")


def dma(t: Transport, c2h: bool, ch: int, descs: DmaBuffer, length: int, src: int, dst: int) -> int:
    control = R.desc_control(stop=True, eop=True)
    descs.view[:32] = struct.pack("<IIQQQ", control, length, src, dst, 0)
    sg = R.XDMA_TARGET_C2H_SGDMA if c2h else R.XDMA_TARGET_H2C_SGDMA
    target = R.XDMA_TARGET_C2H if c2h else R.XDMA_TARGET_H2C
    t.write(2, R.xdma_offset(sg, ch, R.XDMA_SG_DESC_LO), 4, descs.bus_addr & 0xFFFF_FFFF)
    t.write(2, R.xdma_offset(sg, ch, R.XDMA_SG_DESC_HI), 4, descs.bus_addr >> 32)
    t.write(2, R.xdma_offset(target, ch, R.XDMA_CH_CONTROL), 4, R.XDMA_CTRL_RUN)
    assert t.irq_wait(R.c2h_vector(ch) if c2h else R.h2c_vector(ch), 5)
    return t.read(2, R.xdma_offset(target, ch, R.XDMA_CH_STATUS_RC), 4)


def test_is_a_transport(tp):
    assert isinstance(tp, Transport)
    assert tp.num_vectors == 32
    assert tp.read(0, R.EHVER, 4) == 1
    tp.write(0, R.cmdreq(0), 4, 0x01020304)
    assert tp.read(0, R.cmdreq(0), 4) == 0x01020304
    assert tp.map_bar(4) is tp.device.bar4
    assert tp.map_bar(0) is None and tp.map_bar(2) is None
    assert tp.read_block(0, R.EHBLD, 16) == b"hermes-emu 0.1\0\0"


def test_dma_alloc_addresses(tp):
    a = tp.dma_alloc(100)
    b = tp.dma_alloc(8192)
    c = tp.dma_alloc(1)
    assert a.bus_addr == DMA_BASE
    for buf in (a, b, c):
        assert buf.bus_addr % 4096 == 0
        assert len(buf.view) == buf.size and bytes(buf.view) == bytes(buf.size)
    assert a.bus_addr + 4096 < b.bus_addr and b.bus_addr + 8192 < c.bus_addr   # guard pages
    b.view[:4] = b"abcd"
    assert tp.host.read(b.bus_addr, 4) == b"abcd"
    b.free()
    b.free()
    with pytest.raises(ValueError):
        _ = b.view
    d = tp.dma_alloc(8192)
    assert d.bus_addr > c.bus_addr      # addresses are never reused
    with pytest.raises(ValueError):
        tp.dma_alloc(0)


def test_full_driver_flow(tp):
    """Slots, program and data in by H2C DMA, Run Program, data out by C2H DMA."""
    enable_all_irqs(tp)
    request = bytes([R.CMD_REQUEST_SLOT, 0, 1, 0, 0, 0, 0, 0])
    assert command(tp, 0, request + bytes([R.SLOT_PROGRAM])) == (0, 0)
    assert command(tp, 0, request + bytes([R.SLOT_DATA])) == (0, 0)
    code = assemble_program("ldxw r3, [r1]\nadd r3, 1\nstxw [r1], r3\nmov r0, r3\nexit").code
    descs = tp.dma_alloc(4096)
    buf = tp.dma_alloc(1 << 20)
    buf.view[:len(code)] = code
    psoff = tp.read(0, R.EHPSOFF, 4)
    dsoff = tp.read(0, R.EHDSOFF, 4)
    assert dma(tp, False, 0, descs, len(code), buf.bus_addr, psoff) == R.XDMA_STAT_DESC_STOPPED
    buf.view[:4] = struct.pack("<I", 41)
    assert dma(tp, False, 1, descs, 1 << 20, buf.bus_addr, dsoff) == R.XDMA_STAT_DESC_STOPPED
    run = bytes([R.CMD_RUN_PROGRAM, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]) + struct.pack("<I", len(code))
    assert command(tp, 2, run) == (0, 42)
    buf.view[:4] = bytes(4)
    assert dma(tp, True, 0, descs, 4, dsoff, buf.bus_addr) == R.XDMA_STAT_DESC_STOPPED
    assert struct.unpack_from("<I", buf.view)[0] == 42
    # a freed buffer is no longer visible to the device
    addr = buf.bus_addr
    buf.free()
    assert dma(tp, True, 0, descs, 4, dsoff, addr) == R.XDMA_STAT_WRITE_ERROR


def test_irq_wait_counts_and_never_loses(tp):
    enable_all_irqs(tp)
    for _ in range(3):
        tp.write(0, R.cmdctrl(1), 1, 1)   # all-zero request: Request Slot (program)
    assert tp.irq_pending(R.engine_vector(1)) == 3
    assert all(tp.irq_wait(R.engine_vector(1), 0) for _ in range(3))
    assert not tp.irq_wait(R.engine_vector(1), 0)
    t0 = time.monotonic()
    assert not tp.irq_wait(R.engine_vector(1), 0.05)
    assert time.monotonic() - t0 >= 0.04
    tp.write(0, R.cmdctrl(1), 1, 1)
    tp.write(0, R.cmdctrl(1), 1, 1)
    tp.irq_clear(R.engine_vector(1))
    assert tp.irq_pending(R.engine_vector(1)) == 0
    with pytest.raises(ValueError):
        tp.irq_wait(32, 0)


def test_bar0_reads_of_every_size_are_little_endian_and_aligned():
    with HermesDevice(engines=1) as dev:
        raw = bytes(dev._bar0[:64])
        for size in (1, 2, 4, 8):
            for off in range(0, 64, size):
                assert dev.bar_read(0, off, size) == int.from_bytes(raw[off:off + size], "little")
        before = dev.stats["bad_size_accesses"]
        assert dev.bar_read(0, 2, 4) == 0 and dev.bar_read(0, 0, 3) == 0   # misaligned, odd
        assert dev.stats["bad_size_accesses"] == before + 2
        with pytest.raises(ValueError):
            dev.bar_read(0, R.BAR0_SIZE, 4)


def test_irq_counter_clear():
    c = IrqCounter()
    c.clear()   # nothing posted: nothing to do
    for _ in range(3):
        c.post()
    c.clear()
    assert c.pending == 0 and not c.wait(0)
    c.post()
    assert c.wait(0)


def test_irq_counter_across_threads():
    c = IrqCounter()
    got = []

    def waiter() -> None:
        for _ in range(2000):
            assert c.wait(5)
            got.append(1)

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for th in threads:
        th.start()
    for _ in range(4000):
        c.post()
    for th in threads:
        th.join()
    assert len(got) == 4000 and c.pending == 0 and not c.wait(0)


def test_wait_with_no_timeout_wakes_on_interrupt(tp):
    enable_all_irqs(tp)
    threading.Timer(0.05, lambda: tp.write(0, R.cmdctrl(3), 1, 1)).start()
    assert tp.irq_wait(R.engine_vector(3), None)


def test_transport_reset_drops_pending_interrupts(tp):
    enable_all_irqs(tp)
    tp.write(0, R.cmdctrl(0), 1, 1)
    assert tp.device.slots_in_use() == ([0], [])
    tp.reset()
    assert tp.irq_pending(R.engine_vector(0)) == 0
    assert tp.device.slots_in_use() == ([], [])
    assert tp.read(2, IRQ + R.XDMA_IRQ_USER_MASK, 4) == 0


def test_close_frees_buffers_and_owned_device():
    t = InProcessTransport.create()
    dev = t.device
    buf = t.dma_alloc(64)
    t.close()
    t.close()
    assert t.host.regions() == []
    with pytest.raises(ValueError):
        _ = buf.view
    assert not any(e.thread.is_alive() for e in dev._engines)
    with pytest.raises(RuntimeError):
        t.dma_alloc(64)


def test_close_keeps_a_device_it_does_not_own():
    with HermesDevice() as dev:
        t = InProcessTransport(dev)
        t.close()
        assert all(e.thread.is_alive() for e in dev._engines)
        t2 = InProcessTransport(dev)   # a new transport can attach
        enable_all_irqs(t2)
        assert command(t2, 0, bytes([R.CMD_REQUEST_SLOT])) == (0, 0)
        t2.close()


def test_round_trip_latency_is_small(tp):
    """Run Program of a 2-instruction program, as a driver does it (generous bound for CI)."""
    enable_all_irqs(tp)
    command(tp, 0, bytes([R.CMD_REQUEST_SLOT, 0, 1, 0, 0, 0, 0, 0, R.SLOT_PROGRAM]))
    command(tp, 0, bytes([R.CMD_REQUEST_SLOT, 0, 1, 0, 0, 0, 0, 0, R.SLOT_DATA]))
    code = assemble_program("mov r0, 7\nexit").code
    tp.map_bar(4)[:16] = code
    run = bytes([R.CMD_RUN_PROGRAM, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16])
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        assert command(tp, 0, run) == (0, 7)
        times.append(time.perf_counter() - t0)
    times.sort()
    assert times[len(times) // 2] < 0.002

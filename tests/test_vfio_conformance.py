"""One Transport contract, three transports: in-process, vfio-user (server subprocess) and VFIO
(fake kernel) must behave the same at the driver's boundary."""
from __future__ import annotations

import shutil
import struct
import tempfile

import pytest

from hermes import regs as R
from hermes.engine import Program
from hermes.transport import DmaBuffer, Transport

from tests.vfio_devices import ServerProcess

IRQ = R.xdma_offset(R.XDMA_TARGET_IRQ, 0, 0)


@pytest.fixture(scope="module")
def serve_process():
    tmp = tempfile.mkdtemp(prefix="hermes-conf-")
    s = ServerProcess(f"{tmp}/s.sock", "--engines", "2", "--budget", "1000000")
    yield s
    s.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["inproc", "vfio-user", "vfio"])
def transport(request, tmp_path):
    if request.param == "inproc":
        from hermes.transport.inproc import InProcessTransport
        t = InProcessTransport.create(engines=2, budget=1_000_000)
        yield t
        t.close()
    elif request.param == "vfio-user":
        from hermes.transport.vfio_user import VfioUserTransport
        t = VfioUserTransport(request.getfixturevalue("serve_process").path)
        yield t
        t.close()
    else:
        from hermes.transport.vfio import VfioTransport
        from hermes.vfio.fake_kernel import FakeVfioKernel
        k = FakeVfioKernel(tmp_path, engines=2, budget=1_000_000)
        t = VfioTransport(k.bdf, sysfs_root=k.sysfs_root, dev_root=k.dev_root, ioctl=k.ioctl,
                          pread=k.pread, pwrite=k.pwrite)
        yield t
        t.close()
        k.close()


def enable_irqs(t: Transport) -> None:
    for target in (R.XDMA_TARGET_H2C, R.XDMA_TARGET_C2H):
        for ch in range(4):
            t.write(2, R.xdma_offset(target, ch, R.XDMA_CH_IRQ_MASK), 4, 0x00FF_FFFE)
    t.write(2, IRQ + R.XDMA_IRQ_CHANNEL_MASK, 4, 0xFF)
    t.write(2, IRQ + R.XDMA_IRQ_USER_MASK, 4, (1 << t.read(0, R.EHENG, 1)) - 1)


def command(t: Transport, engine: int, req: bytes) -> bytes:
    t.write_block(0, R.cmdreq(engine), req.ljust(32, b"\0"))
    t.write(0, R.cmdctrl(engine), 1, 1)
    assert t.irq_wait(R.engine_vector(engine), 5)
    return t.read_block(0, R.cmdres(engine), 16)


def test_identity_registers(transport):
    t = transport
    assert t.num_vectors == 32
    assert t.read(0, R.EHVER, 4) == 1
    assert t.read(0, R.EHENG, 1) == 2
    assert t.read(0, R.EHPSLOT, 1) == 16 and t.read(0, R.EHDSSZE, 4) == 1 << 20
    assert t.read(2, R.xdma_offset(R.XDMA_TARGET_C2H, 1, 0), 4) == 0x1FC1_0105
    assert t.read_block(0, R.EHBLD, 8)[:6] == b"hermes"


def test_register_widths_and_read_only(transport):
    t = transport
    base = R.cmdreq(1)
    t.write(0, base, 8, 0x1122_3344_5566_7788)
    assert t.read(0, base, 8) == 0x1122_3344_5566_7788
    assert t.read(0, base + 2, 2) == 0x5566 and t.read(0, base + 7, 1) == 0x11
    t.write(0, base + 4, 4, 0xFFFF_FFFF_AAAA)                  # truncated to the width
    assert t.read(0, base, 8) == 0xFFFF_AAAA_5566_7788
    assert t.read(0, base + 4, 4) == 0xFFFF_AAAA
    t.write(0, R.EHVER, 4, 7)
    assert t.read(0, R.EHVER, 4) == 1
    with pytest.raises(ValueError):
        t.read(0, R.BAR0_SIZE - 2, 4)


def test_commands_and_counted_interrupts(transport):
    t = transport
    enable_irqs(t)
    res = command(t, 0, bytes([R.CMD_REQUEST_SLOT, 0, 5, 0, 0, 0, 0, 0, R.SLOT_PROGRAM]))
    assert res[:3] == bytes([5, 0, R.STATUS_SUCCESS])
    res = command(t, 1, bytes([R.CMD_REQUEST_SLOT, 0, 6, 0, 0, 0, 0, 0, 9]))
    assert res[2] == R.STATUS_INVALID_OPCODE
    assert not t.irq_wait(R.engine_vector(0), 0)              # consumed exactly once
    t.irq_clear(R.engine_vector(0))


def test_dma_buffers(transport):
    t = transport
    bufs = [t.dma_alloc(n) for n in (1, 4096, 5000)]
    try:
        assert all(isinstance(b, DmaBuffer) and b.bus_addr % 4096 == 0 for b in bufs)
        spans = sorted((b.bus_addr, b.bus_addr + b.size) for b in bufs)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))   # disjoint
        assert [len(b.view) for b in bufs] == [1, 4096, 5000]
        bufs[2].view[:] = bytes(5000)
        bufs[2].view[4999] = 7
        assert bufs[2].view[4999] == 7
    finally:
        for b in bufs:
            b.free()
            b.free()
    with pytest.raises(ValueError):
        bufs[0].view


def test_dma_through_the_device(transport):
    """H2C then C2H of a 64 KiB pattern through XDMA descriptors the test writes itself."""
    t = transport
    enable_irqs(t)
    data = bytes((i * 7) & 0xFF for i in range(1 << 16))
    src, dst, desc = t.dma_alloc(len(data)), t.dma_alloc(len(data)), t.dma_alloc(32)
    src.view[:] = data
    bar4_off = 16 << 20   # data slot 0
    for target, sg, s, d in ((R.XDMA_TARGET_H2C, R.XDMA_TARGET_H2C_SGDMA, src.bus_addr, bar4_off),
                             (R.XDMA_TARGET_C2H, R.XDMA_TARGET_C2H_SGDMA, bar4_off, dst.bus_addr)):
        struct.pack_into("<IIQQQ", desc.view, 0, R.desc_control(stop=True, eop=True, completed=True),
                         len(data), s, d, 0)
        t.write(2, R.xdma_offset(sg, 0, R.XDMA_SG_DESC_LO), 4, desc.bus_addr & 0xFFFFFFFF)
        t.write(2, R.xdma_offset(sg, 0, R.XDMA_SG_DESC_HI), 4, desc.bus_addr >> 32)
        t.write(2, R.xdma_offset(sg, 0, R.XDMA_SG_DESC_ADJ), 4, 0)
        vector = R.h2c_vector(0) if target == R.XDMA_TARGET_H2C else R.c2h_vector(0)
        t.irq_clear(vector)
        t.write(2, R.xdma_offset(target, 0, R.XDMA_CH_CONTROL), 4, R.XDMA_CTRL_RUN)
        assert t.irq_wait(vector, 5)
        status = t.read(2, R.xdma_offset(target, 0, R.XDMA_CH_STATUS_RC), 4)
        assert status & R.XDMA_STAT_DESC_COMPLETED and not status & 0xFFFE00
        assert t.read(2, R.xdma_offset(target, 0, R.XDMA_CH_STATUS_RC), 4) == 0   # cleared on read
        t.write(2, R.xdma_offset(target, 0, R.XDMA_CH_CONTROL_W1C), 4, R.XDMA_CTRL_RUN)
    assert bytes(dst.view) == data
    bar4 = t.map_bar(4)
    if bar4 is not None:
        assert bytes(bar4[bar4_off:bar4_off + 16]) == data[:16]
    assert t.read(4, bar4_off + 8, 8) == int.from_bytes(data[8:16], "little")
    for b in (src, dst, desc):
        b.free()


def test_run_program_and_reset(transport):
    t = transport
    enable_irqs(t)
    prog = Program.from_asm("mov r0, 42\nexit").to_bytes()
    slot = command(t, 0, bytes([R.CMD_REQUEST_SLOT, 0, 1, 0, 0, 0, 0, 0, R.SLOT_PROGRAM]))[8]
    data = command(t, 0, bytes([R.CMD_REQUEST_SLOT, 0, 2, 0, 0, 0, 0, 0, R.SLOT_DATA]))[8]
    t.write_block(4, slot * (1 << 20), prog)      # BAR4 writes (the model allows it)
    res = command(t, 1, bytes([R.CMD_RUN_PROGRAM, 0, 3, 0, 0, 0, 0, 0, slot, data, 0, 0])
                  + struct.pack("<I", len(prog)))
    assert res[2] == R.STATUS_SUCCESS and int.from_bytes(res[8:16], "little") == 42
    t.reset()
    enable_irqs(t)
    res = command(t, 0, bytes([R.CMD_RUN_PROGRAM, 0, 4, 0, 0, 0, 0, 0, slot, data, 0, 0])
                  + struct.pack("<I", len(prog)))
    assert res[2] == R.STATUS_INVALID_PROG_SLOT      # the reset freed the slots


# --- the transports agree on any register access sequence --------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_ops = st.lists(st.tuples(st.booleans(), st.sampled_from([1, 2, 4, 8]), st.integers(0, 95),
                          st.integers(0, (1 << 64) - 1)), min_size=1, max_size=30)


@pytest.fixture(scope="module")
def three_transports(serve_process, tmp_path_factory):
    from hermes.transport.inproc import InProcessTransport
    from hermes.transport.vfio import VfioTransport
    from hermes.transport.vfio_user import VfioUserTransport
    from hermes.vfio.fake_kernel import FakeVfioKernel
    k = FakeVfioKernel(tmp_path_factory.mktemp("fake"), engines=2, budget=1_000_000)
    ts = [InProcessTransport.create(engines=2, budget=1_000_000),
          VfioUserTransport(serve_process.path),
          VfioTransport(k.bdf, sysfs_root=k.sysfs_root, dev_root=k.dev_root, ioctl=k.ioctl,
                        pread=k.pread, pwrite=k.pwrite)]
    yield ts
    for t in ts:
        t.close()
    k.close()


@settings(max_examples=60)
@given(_ops)
def test_register_sequences_agree(three_transports, ops):
    """Random 1/2/4/8-byte reads and writes over the command request/response area of engine 0
    and 1 (writable and read-only parts) give the same values on every transport."""
    results = []
    for t in three_transports:
        seen = []
        for is_write, size, slot, value in ops:
            off = R.EHCMDREQ_BASE + (slot * size) % 96 // size * size   # aligned, inside 2 engines
            if is_write:
                t.write(0, off, size, value)
            else:
                seen.append(t.read(0, off, size))
        seen.append(t.read_block(0, R.EHCMDREQ_BASE, 96))
        results.append(seen)
    assert results[0] == results[1] == results[2]

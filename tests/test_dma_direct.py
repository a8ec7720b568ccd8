"""DMA straight between the caller's buffers and BAR4 in process (``dma_map``), host memory
regions mapped read-only, GIL-free copies in the device model and the cpu backend."""
from __future__ import annotations

import ctypes
import os
import struct

import numpy as np
import pytest

import hermes
from hermes import regs as R
from hermes.device import DmaFault, HermesDevice, HostMemory
from hermes.device.hostmem import buffer_address
from hermes.driver import attach
from hermes.engine.asm import assemble_program
from hermes.transport.inproc import InProcessTransport

PROG = assemble_program("mov r0, 7\nexit")


@pytest.fixture
def tp():
    t = InProcessTransport.create(engines=1, program_slots=2, data_slots=2)
    yield t
    t.close()


# --- host memory ------------------------------------------------------------------------------
def test_read_only_regions_only_with_writable_false():
    host = HostMemory()
    with pytest.raises(ValueError, match="writable"):
        host.register(0x1000, b"abcd")
    data = b"abcd"
    host.register(0x1000, data, writable=False)
    view, addr = host.span(0x1001, 2, False)
    assert bytes(view) == b"bc" and addr == buffer_address(memoryview(data)) + 1
    assert host.read(0x1000, 4) == b"abcd"
    with pytest.raises(DmaFault) as info:
        host.write(0x1000, b"x")
    assert not info.value.partial
    with pytest.raises(DmaFault):
        host.span(0x1000, 1, True)
    with pytest.raises(DmaFault) as info:
        host.span(0x1002, 4, False)
    assert info.value.partial


def test_writable_buffer_mapped_read_only_refuses_device_writes():
    host = HostMemory()
    buf = bytearray(b"abcd")
    host.register(0x1000, buf, writable=False)
    with pytest.raises(DmaFault):
        host.write(0x1000, b"x")
    assert buf == b"abcd"


def test_span_address_is_the_buffers():
    host = HostMemory()
    buf = bytearray(64)
    host.register(0x2000, buf)
    view, addr = host.span(0x2008, 8, True)
    ctypes.memmove(addr, b"12345678", 8)
    assert buf[8:16] == b"12345678"
    assert bytes(view) == b"12345678"


def test_non_contiguous_buffers_are_refused():
    host = HostMemory()
    with pytest.raises(ValueError, match="contiguous"):
        host.register(0x1000, memoryview(bytearray(64))[::2])


def test_buffer_address_of_a_read_only_view():
    data = bytes(range(16))
    assert ctypes.string_at(buffer_address(memoryview(data)[4:]), 4) == data[4:8]


# --- the model's DMA engine -------------------------------------------------------------------
class ReadWriteOnly:
    """Host memory with only ``read``/``write`` (like the vfio-user server's DMA table)."""

    def __init__(self) -> None:
        self.mem = HostMemory()

    def read(self, bus_addr: int, n: int) -> bytes:
        return self.mem.read(bus_addr, n)

    def write(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        self.mem.write(bus_addr, data)


def _run_chain(dev: HermesDevice, host: object, c2h: bool, src: int, dst: int, n: int,
               desc: int) -> int:
    control = (R.DESC_MAGIC << 16) | R.DESC_STOP | R.DESC_EOP | R.DESC_COMPLETED
    host.write(desc, struct.pack("<IIQQQ", control, n, src, dst, 0))  # type: ignore[attr-defined]
    sg = R.XDMA_TARGET_C2H_SGDMA if c2h else R.XDMA_TARGET_H2C_SGDMA
    t = R.XDMA_TARGET_C2H if c2h else R.XDMA_TARGET_H2C
    dev.bar_write(2, R.xdma_offset(sg, 0, R.XDMA_SG_DESC_LO), 4, desc & 0xFFFF_FFFF)
    dev.bar_write(2, R.xdma_offset(sg, 0, R.XDMA_SG_DESC_HI), 4, desc >> 32)
    dev.bar_write(2, R.xdma_offset(t, 0, R.XDMA_CH_CONTROL_W1S), 4, R.XDMA_CTRL_RUN)
    return dev.bar_read(2, R.xdma_offset(t, 0, R.XDMA_CH_STATUS_RC), 4)


@pytest.mark.parametrize("kind", ["span", "read-write only"])
def test_model_moves_bytes_both_ways(kind):
    with HermesDevice(engines=1) as dev:
        host: object = HostMemory() if kind == "span" else ReadWriteOnly()
        mem = host if kind == "span" else host.mem  # type: ignore[attr-defined]
        data = bytearray(os.urandom(4096))
        mem.register(0x10000, data)  # type: ignore[attr-defined]
        ring = bytearray(64)
        mem.register(0x40000, ring)  # type: ignore[attr-defined]
        dev.set_host_memory(host)
        status = _run_chain(dev, host, False, 0x10000, 100, 4096, 0x40000)
        assert status & R.XDMA_STAT_DESC_STOPPED and not status & ~(
            R.XDMA_STAT_DESC_STOPPED | R.XDMA_STAT_DESC_COMPLETED)
        assert bytes(dev.bar4[100:4196]) == data
        out = bytearray(4096)
        mem.register(0x20000, out)  # type: ignore[attr-defined]
        status = _run_chain(dev, host, True, 100, 0x20000, 4096, 0x40000)
        assert not status & R.XDMA_STAT_WRITE_ERROR and out == data


def test_c2h_into_a_read_only_mapping_is_a_write_error_and_leaves_it_intact():
    with HermesDevice(engines=1) as dev:
        host = HostMemory()
        target = bytearray(b"k" * 4096)
        host.register(0x10000, target, writable=False)
        host.register(0x40000, bytearray(64))
        dev.set_host_memory(host)
        dev.bar4[0:4096] = os.urandom(4096)
        status = _run_chain(dev, host, True, 0, 0x10000, 4096, 0x40000)
        assert status & R.XDMA_STAT_WRITE_ERROR
        assert target == b"k" * 4096


# --- the in-process transport and the driver --------------------------------------------------
def test_dma_map_registers_and_frees(tp):
    before = tp.host.regions()
    data = b"x" * 5000
    m = tp.dma_map(memoryview(data))
    assert m is not None and m.size == 5000
    assert (m.bus_addr, 5000) in tp.host.regions()
    assert bytes(m.view) == data
    m.free()
    m.free()
    assert tp.host.regions() == before


def test_dma_map_declines_what_it_cannot_map(tp):
    assert tp.dma_map(memoryview(b"")) is None
    assert tp.dma_map(memoryview(bytearray(64))[::2]) is None
    assert tp.dma_map(memoryview(b"read only"), writable=True) is None


def test_file_data_goes_straight_from_and_into_the_callers_buffers(tp):
    drv = attach(tp)
    mapped: list[tuple[int, bool]] = []
    dma_map = tp.dma_map

    def counting(view: memoryview, *, writable: bool = False) -> object:
        mapped.append((view.nbytes, writable))
        return dma_map(view, writable=writable)

    drv.dma._dma_map = counting
    try:
        f = drv.open()
        f.download_program(PROG.to_bytes())                     # small: bounce buffer
        data = os.urandom(3 << 18)
        before = tp.device.stats["dma_descriptors"]
        assert f.pwrite(memoryview(data), 0) == len(data)      # read-only bytes
        # a mapping is one contiguous bus range: one descriptor, where the bounce buffer's
        # copies go in chunks
        assert tp.device.stats["dma_descriptors"] == before + 1
        arr = np.frombuffer(bytearray(os.urandom(1 << 16)), dtype=np.uint64)
        assert f.pwrite(memoryview(arr), 3 << 18) == 1 << 16   # a numpy array
        out = bytearray(len(data) + (1 << 16))
        before = tp.device.stats["dma_descriptors"]
        assert f.preadv([out], 0) == len(out)
        assert tp.device.stats["dma_descriptors"] == before + 1
        assert out == data + arr.tobytes()
        a, b = bytearray(10), np.zeros(20, dtype=np.uint8)
        assert f.preadv([a, b], 5) == 30                       # small: bounce buffer
        assert bytes(a) + b.tobytes() == data[5:35]
        assert f.pread(16, 0) == data[:16]
        assert mapped == [(3 << 18, False), (1 << 16, False), (len(out), True)]
        # every mapping is gone: what stays is the channels' rings and bounce buffers
        ring = R.DESC_SIZE * drv.dma.h2c.channels[0].max_descs
        assert sorted(n for _, n in tp.host.regions()) == [ring, ring, 1 << 20, 1 << 20]
        f.close()
    finally:
        drv.close()


def test_failed_direct_transfer_leaves_the_callers_memory_and_the_slot(tp):
    drv = attach(tp, dma_timeout=5.0)
    try:
        f = drv.open()
        f.download_program(PROG.to_bytes())
        data = os.urandom(4096)
        f.pwrite(data, 0)
        out = bytearray(b"z" * (1 << 16))
        tp.device.set_host_memory(None)   # every descriptor fetch now fails
        try:
            with pytest.raises(OSError):
                f.preadv([out], 0)
            with pytest.raises(OSError):
                f.pwrite(os.urandom(1 << 16), 0)
        finally:
            tp.device.set_host_memory(tp.host)
        assert out == b"z" * (1 << 16)
        assert f.pread(4096, 0) == data
        f.close()
    finally:
        drv.close()


def test_emu_session_round_trip_through_the_callers_buffers():
    with hermes.open("emu", engines=1) as dev, dev.session() as s:
        s.load(PROG)
        data = os.urandom(1 << 20)
        s.write(data)
        got = np.zeros(1 << 20, dtype=np.uint8)
        assert s.readinto(got) == 1 << 20
        assert got.tobytes() == data
        assert s.read(100, 7) == data[7:107]


# --- cpu backend ------------------------------------------------------------------------------
def test_cpu_session_copies_any_buffer():
    with hermes.open("cpu") as dev, dev.session() as s:
        s.load(PROG)
        data = os.urandom(1 << 18)
        s.write(data)                                   # read-only: sliced
        arr = np.frombuffer(bytearray(data), dtype=np.uint32)[::-1].copy()
        s.write(arr, 8)                                 # writable: memmove
        s.write(arr[:4], 4)                             # small: sliced
        want = data[:4] + arr[:4].tobytes() + arr.tobytes()[12:]
        out = np.zeros(len(want), dtype=np.uint8)
        assert s.readinto(out) == len(want)
        assert out.tobytes() == want
        assert s.readinto(bytearray()) == 0
        assert s.read(8, 20) == arr.tobytes()[12:20]


"""The vfio-user server: negotiation, regions, DMA, interrupts, robustness against bad clients,
disconnects, several clients, and the real ``hermes serve`` process (signals, socket removal)."""
from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

import hermes.driver
from hermes import regs
from hermes.engine.asm import assemble_program
from hermes.server.function import VfioFunction
from hermes.transport.vfio_user import VfioUserTransport
from hermes.vfio import pci, protocol as P, uapi
from tests.vfio_devices import ServerProcess, ThreadServer, wait_for_socket

RETURN0 = assemble_program("mov r0, 0\nexit").to_bytes()
INC_U64 = assemble_program("ldxdw r2, [r1]\nadd r2, 1\nstxdw [r1], r2\nmov r0, 0\nexit").to_bytes()
LOOP = assemble_program("ja -1\nexit").to_bytes()


class Raw:
    """A hand-driven vfio-user client for sending well- and ill-formed messages."""

    def __init__(self, path: str, negotiate: bool = True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.ids = iter(range(1, 1 << 16))
        if negotiate:
            reply = self.call(P.VERSION, P.encode_version(0, 2, {"max_msg_fds": 8}))
            assert not reply.is_error

    def send(self, cmd: int, payload: bytes = b"", fds=(), flags: int = 0) -> int:
        msg_id = next(self.ids)
        P.send_message(self.sock, P.Message(msg_id, cmd, flags, 0, payload, list(fds)))
        return msg_id

    def recv(self) -> P.Message:
        msg = P.recv_message(self.sock)
        assert msg is not None, "server closed the connection"
        return msg

    def call(self, cmd: int, payload: bytes = b"", fds=()) -> P.Message:
        msg_id = self.send(cmd, payload, fds)
        reply = self.recv()
        assert reply.is_reply and reply.msg_id == msg_id and reply.cmd == cmd
        return reply

    def expect_error(self, cmd: int, payload: bytes = b"", fds=(), err: int | None = None) -> int:
        reply = self.call(cmd, payload, fds)
        assert reply.is_error, f"{P.COMMAND_NAMES.get(cmd)} should have failed"
        assert reply.payload == b""
        if err is not None:
            assert reply.error_no == err, errno.errorcode.get(reply.error_no)
        return reply.error_no

    def read(self, region: int, offset: int, count: int) -> bytes:
        reply = self.call(P.REGION_READ, P.encode_region_access(offset, region, count))
        assert not reply.is_error, errno.errorcode.get(reply.error_no)
        return reply.payload[16:]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path):
    s = ThreadServer(str(tmp_path / "hermes.sock"), engines=2, budget=20_000_000)
    yield s
    s.stop()


def alive(server) -> None:
    """The server still answers a fresh, well-behaved client."""
    c = Raw(server.path)
    assert int.from_bytes(c.read(0, regs.EHVER, 4), "little") == 1
    c.close()


# --- negotiation and info ----------------------------------------------------------------------

def test_version_negotiation(server):
    c = Raw(server.path, negotiate=False)
    reply = c.call(P.VERSION, P.encode_version(0, 7, {"max_msg_fds": 4, "max_data_xfer_size": 4096,
                                                       "unknown_cap": 1}))
    major, minor, caps = P.decode_version(reply.payload)
    assert (major, minor) == (0, 2)                       # min(client's, ours)
    assert set(caps) <= {"max_msg_fds", "max_data_xfer_size", "unknown_cap"}   # a subset
    assert caps["max_msg_fds"] >= 1
    c.expect_error(P.VERSION, P.encode_version(0, 0, None), err=errno.EINVAL)  # only once
    c.close()


def test_qemu_style_version_0_0_without_caps(server):
    c = Raw(server.path, negotiate=False)
    major, minor, caps = P.decode_version(c.call(P.VERSION, P.encode_version(0, 0, None)).payload)
    assert (major, minor, caps) == (0, 0, {})
    c.close()


@pytest.mark.parametrize("payload", [P.encode_version(1, 0, {}), b"\0\0",
                                     struct.pack("<HH", 0, 1) + b"{bad json\0",
                                     P.encode_version(0, 2, {"max_msg_fds": 5000})])
def test_bad_version_is_refused_and_connection_closed(server, payload):
    c = Raw(server.path, negotiate=False)
    c.expect_error(P.VERSION, payload)
    assert P.recv_message(c.sock) is None   # the server hung up
    c.close()
    alive(server)


def test_commands_before_version_are_refused(server):
    c = Raw(server.path, negotiate=False)
    c.expect_error(P.REGION_READ, P.encode_region_access(0, 0, 4), err=errno.EINVAL)
    c.call(P.VERSION, P.encode_version(0, 2, {}))
    assert c.read(0, 0, 4) == b"\1\0\0\0"
    c.close()


def test_device_region_and_irq_info(server):
    c = Raw(server.path)
    info = c.call(P.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)).payload
    assert struct.unpack_from("<I", info)[0] == 16 and len(info) == 16
    flags, nreg, nirq = struct.unpack("<III", info[4:16])
    assert flags & uapi.VFIO_DEVICE_FLAGS_PCI and flags & uapi.VFIO_DEVICE_FLAGS_RESET
    assert (nreg, nirq) == (9, 5)
    sizes = {}
    for index in range(9):
        query = bytes(uapi.vfio_region_info(256, 0, index, 0, 0, 0))
        reply = c.call(P.DEVICE_GET_REGION_INFO, query)
        info = uapi.vfio_region_info.decode(reply.payload)
        sizes[index] = info.size
        if index == 4:
            assert info.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP and len(reply.fds) == 1
            caps = uapi.parse_caps(reply.payload, info.cap_offset)
            sparse = caps[uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP][1]
            assert uapi.parse_sparse_mmap(sparse) == [(0, info.size)]
            # the fd really is BAR4: bytes written by the device side show through it
            server.function.device.bar4[100:104] = b"abcd"
            assert os.pread(reply.fds[0], 4, info.offset + 100) == b"abcd"
        else:
            assert not info.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP and not reply.fds
        reply.close_fds()
    assert sizes == {0: 32 << 20, 1: 0, 2: 64 << 10, 3: 0, 4: 32 << 20, 5: 0, 6: 0, 7: 256, 8: 0}
    # a small argsz gets the fixed part and the size it needs: no CAPS flag, no fd
    reply = c.call(P.DEVICE_GET_REGION_INFO, bytes(uapi.vfio_region_info(32, 0, 4, 0, 0, 0)))
    info = uapi.vfio_region_info.decode(reply.payload)
    assert info.argsz > 32 and info.cap_offset == 0 and len(reply.payload) == 32
    assert not info.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS and reply.fds == []
    irq = uapi.vfio_irq_info.decode(c.call(P.DEVICE_GET_IRQ_INFO,
                                           bytes(uapi.vfio_irq_info(16, 0, 2, 0))).payload)
    assert irq.count == 32 and irq.flags & uapi.VFIO_IRQ_INFO_EVENTFD
    reply = c.call(P.DEVICE_GET_IRQ_INFO, bytes(uapi.vfio_irq_info(16, 0, 0, 0)))
    assert uapi.vfio_irq_info.decode(reply.payload).count == 0
    c.close()


def test_config_space_through_region_7(server):
    c = Raw(server.path)
    assert struct.unpack("<HH", c.read(7, 0, 4)) == (0x1DE5, 0x3000)
    bar0 = pci.PCI_BASE_ADDRESS_0
    c.call(P.REGION_WRITE, P.encode_region_access(bar0, 7, 4, b"\xff" * 4))
    assert struct.unpack("<I", c.read(7, bar0, 4))[0] == (~(regs.BAR0_SIZE - 1)) & 0xFFFFFFFF
    c.close()


# --- register access semantics -----------------------------------------------------------------

def test_register_reads_are_single_accesses(server):
    fn = server.function
    assert list(fn._pieces(2, 0x44, 4)) == [(0x44, 4)]            # status_rc: one access
    assert list(fn._pieces(2, 0x40, 8)) == [(0x40, 4), (0x44, 4)]  # BAR2 is 4-byte only
    assert list(fn._pieces(0, 0x1020, 8)) == [(0x1020, 8)]
    assert list(fn._pieces(0, 0x1000, 32)) == [(0x1000 + 4 * i, 4) for i in range(8)]
    assert list(fn._pieces(0, 0x05, 3)) == [(5, 1), (6, 2)]


def test_clear_on_read_status_via_messages(server):
    """A failed DMA leaves error bits in status_rc: a 4-byte REGION_READ returns and clears them."""
    c = Raw(server.path)
    ch = regs.xdma_offset

    def wr(off: int, val: int) -> P.Message:
        return c.call(P.REGION_WRITE, P.encode_region_access(off, 2, 4, struct.pack("<I", val)))

    wr(ch(regs.XDMA_TARGET_H2C_SGDMA, 0, regs.XDMA_SG_DESC_LO), 0x1234_0000)  # unmapped host memory
    wr(ch(regs.XDMA_TARGET_H2C_SGDMA, 0, regs.XDMA_SG_DESC_HI), 0)
    wr(ch(regs.XDMA_TARGET_H2C, 0, regs.XDMA_CH_CONTROL), regs.XDMA_CTRL_RUN)
    status = 0
    for _ in range(1000):
        raw = c.read(2, ch(regs.XDMA_TARGET_H2C, 0, regs.XDMA_CH_STATUS), 4)
        status = struct.unpack("<I", raw)[0]
        if not status & regs.XDMA_STAT_BUSY:
            break
        time.sleep(0.001)
    assert status & regs.XDMA_STAT_DESC_ERROR
    rc = ch(regs.XDMA_TARGET_H2C, 0, regs.XDMA_CH_STATUS_RC)
    assert struct.unpack("<I", c.read(2, rc, 4))[0] & regs.XDMA_STAT_DESC_ERROR
    assert struct.unpack("<I", c.read(2, rc, 4))[0] & regs.XDMA_STAT_DESC_ERROR == 0
    c.close()


# --- malformed input: error replies, the server survives ---------------------------------------

def test_malformed_messages_get_error_replies(server):
    c = Raw(server.path)
    acc = P.encode_region_access
    c.expect_error(99, b"", err=errno.ENOSYS)                                   # unknown command
    c.expect_error(P.REGION_READ, acc(0, 0, 4)[:10], err=errno.EINVAL)            # short payload
    c.expect_error(P.REGION_READ, acc(regs.BAR0_SIZE - 2, 0, 4), err=errno.EINVAL)  # past the end
    c.expect_error(P.REGION_READ, acc(0, 7, 300), err=errno.EINVAL)              # past config space
    c.expect_error(P.REGION_READ, acc(0, 9, 4), err=errno.EINVAL)                 # no region 9
    c.expect_error(P.REGION_READ, acc(0, 1, 4), err=errno.EINVAL)               # BAR1 unimplemented
    c.expect_error(P.REGION_READ, acc(0, 4, 2 << 20), err=errno.EINVAL)           # > max_data_xfer
    c.expect_error(P.REGION_READ, acc(0, 0, 4) + b"junk", err=errno.EINVAL)       # trailing bytes
    c.expect_error(P.REGION_WRITE, acc(0x1000, 0, 8, b"1234"), err=errno.EINVAL)  # count mismatch
    c.expect_error(P.DEVICE_GET_REGION_INFO, bytes(uapi.vfio_region_info(32, 0, 42, 0, 0, 0)),
                   err=errno.EINVAL)
    c.expect_error(P.DEVICE_GET_IRQ_INFO, bytes(uapi.vfio_irq_info(16, 0, 9, 0)), err=errno.EINVAL)
    c.expect_error(P.DEVICE_GET_INFO, bytes(8), err=errno.EINVAL)
    c.expect_error(P.DMA_UNMAP, bytes(uapi.vfio_iommu_type1_dma_unmap(24, 1, 0, 0)),
                   err=errno.ENOTSUP)                                               # dirty bitmap
    c.expect_error(P.DMA_READ, P.encode_dma_access(0, 4), err=errno.EINVAL)       # wrong direction
    c.expect_error(P.REGION_WRITE_MULTI, b"", err=errno.ENOTSUP)
    # SET_IRQS: masking MSI-X, vectors past the table, two data types, bool data too short

    def irq(flags: int, index: int, start: int, count: int) -> bytes:
        return bytes(uapi.vfio_irq_set(20, flags, index, start, count))

    T, NONE, BOOL = (uapi.VFIO_IRQ_SET_ACTION_TRIGGER, uapi.VFIO_IRQ_SET_DATA_NONE,
                     uapi.VFIO_IRQ_SET_DATA_BOOL)
    c.expect_error(P.DEVICE_SET_IRQS, irq(uapi.VFIO_IRQ_SET_ACTION_MASK | NONE, 2, 0, 1),
                   err=errno.EINVAL)
    c.expect_error(P.DEVICE_SET_IRQS, irq(T | NONE, 2, 30, 5), err=errno.EINVAL)
    c.expect_error(P.DEVICE_SET_IRQS, irq(T | NONE | BOOL, 2, 0, 1), err=errno.EINVAL)
    c.expect_error(P.DEVICE_SET_IRQS, irq(T | BOOL, 2, 0, 4) + b"\1", err=errno.EINVAL)
    c.expect_error(P.DEVICE_SET_IRQS, irq(T | NONE, 0, 0, 1), err=errno.EINVAL)   # INTx has none
    assert c.read(0, regs.EHVER, 4) == b"\1\0\0\0"   # the same connection still works
    c.close()
    alive(server)
    assert "error" in server.log()


def test_bad_fds_are_refused_and_closed(server):
    c = Raw(server.path)
    r, w = os.pipe()
    try:
        # DMA_MAP with a pipe (cannot be mmapped), two fds, an fd too short for the range

        def dma(addr: int, size: int, off: int = 0) -> bytes:
            return bytes(P.DmaMap(32, 3, off, addr, size))

        c.expect_error(P.DMA_MAP, dma(0x10000, 4096), fds=[r])
        c.expect_error(P.DMA_MAP, dma(0x10000, 4096), fds=[r, w], err=errno.EINVAL)
        memfd = os.memfd_create("short")
        os.ftruncate(memfd, 4096)
        c.expect_error(P.DMA_MAP, dma(0x10000, 4096, off=1), fds=[memfd], err=errno.EINVAL)
        c.expect_error(P.DMA_MAP, dma(0x10000, 0), fds=[memfd], err=errno.EINVAL)
        # SET_IRQS with something that is not an eventfd
        eventfd_trigger = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
        hdr = bytes(uapi.vfio_irq_set(20, eventfd_trigger, 2, 0, 1))
        c.expect_error(P.DEVICE_SET_IRQS, hdr, fds=[r], err=errno.EINVAL)
        # fds on a command that takes none
        c.expect_error(P.REGION_READ, P.encode_region_access(0, 0, 4), fds=[w], err=errno.EINVAL)
        # overlapping mappings: EEXIST
        os.ftruncate(memfd, 8192)
        assert not c.call(P.DMA_MAP, dma(0x20000, 8192), fds=[memfd]).is_error
        c.expect_error(P.DMA_MAP, dma(0x21000, 4096), fds=[memfd], err=errno.EEXIST)
        unmap = bytes(uapi.vfio_iommu_type1_dma_unmap(24, 0, 0x20000, 8192))
        assert not c.call(P.DMA_UNMAP, unmap).is_error
        os.close(memfd)
    finally:
        os.close(r)
        os.close(w)
    # The server closed every fd it received: its fd table is back to what it was.
    c.close()
    alive(server)


def test_too_many_fds_is_an_error_not_a_crash(server):
    c = Raw(server.path)
    fds = [os.eventfd(0) for _ in range(P.MAX_FDS_ACCEPTED + 8)]
    try:
        eventfd_trigger = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
        hdr = bytes(uapi.vfio_irq_set(20, eventfd_trigger, 2, 0, len(fds)))
        c.expect_error(P.DEVICE_SET_IRQS, hdr, fds=fds, err=errno.EINVAL)
    finally:
        for fd in fds:
            os.close(fd)
    c.close()
    alive(server)


def test_oversized_message_closes_the_connection(server):
    c = Raw(server.path)
    size = P.MAX_MESSAGE_SIZE + 100
    c.sock.sendall(P.encode_header(77, P.REGION_WRITE, size) + bytes(64))
    reply = c.recv()
    assert reply.is_error and reply.msg_id == 77 and reply.error_no == errno.E2BIG
    assert P.recv_message(c.sock) is None    # nothing of it was read: the server hung up
    c.close()
    alive(server)
    assert "exceeds the limit" in server.log()


@pytest.mark.parametrize("junk", [P.encode_header(1, P.VERSION, 3),          # size < header
                                  b"\x01\x02\x03",                          # half a header, EOF
                                  P.encode_header(1, P.REGION_READ, 64) + b"x"])   # half a body
def test_broken_framing_drops_the_client_only(server, junk):
    c = Raw(server.path)
    c.sock.sendall(junk)
    c.sock.shutdown(socket.SHUT_WR)
    assert P.recv_message(c.sock) is None
    c.close()
    alive(server)


def test_no_reply_flag(server):
    c = Raw(server.path)
    c.send(P.REGION_WRITE, P.encode_region_access(regs.cmdreq(0), 0, 4, b"\xaa\xbb\xcc\xdd"),
           flags=P.FLAG_NO_REPLY)
    c.send(99, b"", flags=P.FLAG_NO_REPLY)   # an error without a reply
    assert c.read(0, regs.cmdreq(0), 4) == b"\xaa\xbb\xcc\xdd"
    c.close()


def test_a_burst_of_requests_is_answered_in_order(server):
    """Requests sent in one go (as the client pipelines them) get every reply, in order, from the
    register fast path and the full path alike; BAR0 block reads read the registers."""
    c = Raw(server.path)
    base = regs.cmdreq(0)
    acc = P.encode_region_access
    burst = [(P.REGION_WRITE, acc(base, 0, 8, bytes(range(8))), P.FLAG_NO_REPLY),
             (P.REGION_READ, acc(base, 0, 2), 0),
             (P.REGION_READ, acc(base, 0, 16), 0),                      # block read, fast path
             (P.REGION_READ, acc(base + 1, 0, 6), 0),                   # unaligned: full path
             (P.DEVICE_GET_INFO, bytes(uapi.vfio_device_info(16, 0, 0, 0, 0))[:16], 0),
             (P.REGION_READ, acc(regs.BAR0_SIZE - 8, 0, 16), 0),        # out of range: EINVAL
             (P.REGION_READ, acc(regs.EHVER, 0, 4), 0)]
    ids = list(range(100, 100 + len(burst)))
    c.sock.sendall(b"".join(P.Message(i, cmd, flags, 0, payload).encode()
                            for i, (cmd, payload, flags) in zip(ids, burst, strict=True)))
    replies = [c.recv() for _ in range(len(burst) - 1)]
    assert [r.msg_id for r in replies] == ids[1:]
    assert replies[0].payload[16:] == bytes(range(2))
    assert replies[1].payload[16:] == bytes(range(8)) + bytes(8)
    assert replies[1].payload[16:] == server.function.region_read(0, base, 16)
    assert replies[2].payload[16:] == bytes(range(1, 7))
    assert not replies[3].is_error
    assert replies[4].is_error and replies[4].error_no == errno.EINVAL
    assert replies[5].payload[16:] == (1).to_bytes(4, "little")
    c.close()


# --- DMA, interrupts, end to end ---------------------------------------------------------------

def test_set_irqs_eventfds_and_loopback_trigger(server):
    c = Raw(server.path)
    efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(4)]
    T = uapi.VFIO_IRQ_SET_ACTION_TRIGGER
    try:
        eventfds = bytes(uapi.vfio_irq_set(20, T | uapi.VFIO_IRQ_SET_DATA_EVENTFD, 2, 4, 4))
        assert not c.call(P.DEVICE_SET_IRQS, eventfds, fds=efds).is_error
        assert server.function.msix.assigned() == [4, 5, 6, 7]
        assert server.function.config.msix_control & pci.PCI_MSIX_FLAGS_ENABLE
        c.call(P.DEVICE_SET_IRQS,
               bytes(uapi.vfio_irq_set(21, T | uapi.VFIO_IRQ_SET_DATA_BOOL, 2, 4, 2)) + b"\0\1")
        c.call(P.DEVICE_SET_IRQS,
               bytes(uapi.vfio_irq_set(20, T | uapi.VFIO_IRQ_SET_DATA_NONE, 2, 6, 1)))
        assert os.eventfd_read(efds[1]) == 1 and os.eventfd_read(efds[2]) == 1
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efds[0])
        # count 0 + DATA_NONE disables the index
        c.call(P.DEVICE_SET_IRQS,
               bytes(uapi.vfio_irq_set(20, T | uapi.VFIO_IRQ_SET_DATA_NONE, 2, 0, 0)))
        assert server.function.msix.assigned() == []
    finally:
        for fd in efds:
            os.close(fd)
    c.close()


def run_file(t, program=INC_U64, data=b"\x29" + bytes(7)):
    drv = hermes.driver.attach(t)
    try:
        f = drv.open()
        f.download_program(program)
        f.pwrite(data, 0)
        f.fsync()
        return f.pread(len(data), 0)
    finally:
        drv.close()


def test_driver_end_to_end_in_thread_server(server):
    with VfioUserTransport(server.path) as t:
        assert t.map_bar(4) is not None and t.map_bar(0) is None
        assert run_file(t) == b"\x2a" + bytes(7)


def test_dma_without_fds_uses_dma_read_write_messages(server):
    with VfioUserTransport(server.path, dma_fds=False) as t:
        data = bytes(range(256)) * 1024      # 256 KiB: several DMA_READ/WRITE messages each way
        drv = hermes.driver.attach(t)
        f = drv.open()
        f.download_program(RETURN0)
        assert f.pwrite(data, 0) == len(data)
        assert f.pread(len(data), 0) == data
        drv.close()
    assert "DMA" not in server.log() or "error" not in server.log()


def test_dma_space_views_only_whole_read_write_fd_mappings():
    """The device copies in place only inside one fd-backed read/write mapping; everything else
    goes through read/write, which check the flags and span adjacent mappings."""
    import mmap as _mmap

    from hermes.device import DmaFault
    from hermes.server.function import CallbackBackend, DmaSpace, MmapBackend
    rw = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
    space = DmaSpace()
    a, b, ro = _mmap.mmap(-1, 4096), _mmap.mmap(-1, 4096), _mmap.mmap(-1, 4096)
    space.map(0x10000, 4096, rw, MmapBackend(a))
    space.map(0x11000, 4096, rw, MmapBackend(b))            # adjacent to the first
    space.map(0x20000, 4096, uapi.VFIO_DMA_MAP_FLAG_READ, MmapBackend(ro))
    space.map(0x30000, 4096, rw, CallbackBackend(0x30000, lambda addr, n: bytes(n),
                                                 lambda addr, data: None))
    view = space.view(0x10010, 16)
    assert view is not None
    view[:] = bytes(range(16))
    assert a[0x10:0x20] == bytes(range(16)) == space.read(0x10010, 16)
    for addr, n in ((0x10ff0, 32), (0x20000, 16), (0x30000, 16), (0x40000, 16), (0x10000, 0)):
        assert space.view(addr, n) is None
    assert space.read(0x10ff0, 32) == bytes(32)              # across the two mappings
    with pytest.raises(DmaFault):
        space.write(0x20000, b"x")                           # read-only stays refused
    space.unmap(0x10000, 4096)                               # while the view is held
    assert view[0] == 0
    view.release()
    with pytest.raises(DmaFault):
        space.read(0x10000, 4)


def used_slots(fn: VfioFunction) -> int:
    progs, datas = fn.device.slots_in_use()
    return len(progs) + len(datas)


def test_reset_command(server):
    with VfioUserTransport(server.path) as t:
        drv = hermes.driver.attach(t)
        files = [drv.open() for _ in range(3)]
        for f in files:
            f.download_program(RETURN0)
        assert used_slots(server.function) == 3
        t.reset()
        assert used_slots(server.function) == 0


def test_disconnect_mid_command_leaves_a_clean_device(server):
    """A client holding slots disconnects while a long program runs and with half a message sent:
    the next client gets a device with every slot free and working engines."""
    t = VfioUserTransport(server.path)
    drv = hermes.driver.attach(t)
    files = [drv.open() for _ in range(4)]
    for f in files:
        f.download_program(RETURN0)
    looping = drv.open()
    looping.download_program(LOOP)
    looping.pwrite(b"x", 0)
    errors: list = []

    def run_forever() -> None:
        try:
            looping.fsync()
        except OSError as exc:
            errors.append(exc)

    runner = threading.Thread(target=run_forever, daemon=True)
    runner.start()
    time.sleep(0.05)
    assert used_slots(server.function) == 6
    old = server.function
    with t._lock:   # half a header, then the client is gone
        t.sock.sendall(P.encode_header(9, P.REGION_WRITE, 64)[:8])
        t.sock.shutdown(socket.SHUT_RDWR)
    runner.join(10)
    assert errors and isinstance(errors[0], OSError)   # the run failed, it did not hang
    t2 = VfioUserTransport(server.path)   # served once the server is done with the first client
    assert server.function is not old and used_slots(server.function) == 0
    assert old.dma.mappings() == [] and old.msix.assigned() == []   # client memory dropped at once
    server.server.wait_retired(10)
    assert used_slots(old) == 0           # the old device was reset, not just dropped
    drv2 = hermes.driver.attach(t2)
    fs = [drv2.open() for _ in range(16)]
    for f in fs:
        f.download_program(RETURN0)      # all 16 program slots are free
    fs[0].pwrite(b"\x01" + bytes(7), 0)
    fs[0].fsync()
    drv2.close()
    t.close()
    assert server.log().count("disconnected") >= 1


def test_second_client_is_answered_busy(server):
    first = VfioUserTransport(server.path)
    c = Raw(server.path, negotiate=False)
    t0 = time.monotonic()
    c.expect_error(P.VERSION, P.encode_version(0, 2, {}), err=errno.EBUSY)
    waited = time.monotonic() - t0
    assert P.recv_message(c.sock) is None          # and disconnected
    assert 1.0 < waited < 5.0                       # after the grace period, well within 10 s
    c.close()
    assert first.read(0, regs.EHVER, 4) == 1        # the holder is not disturbed
    first.close()
    alive(server)                                   # the device is free again
    assert "busy" in server.log()


def test_a_client_arriving_as_the_last_one_leaves_is_served(server):
    first = VfioUserTransport(server.path)
    c = Raw(server.path, negotiate=False)
    c.send(P.VERSION, P.encode_version(0, 2, {}))
    time.sleep(0.3)
    first.close()                                   # within the grace period
    reply = c.recv()
    assert reply.is_reply and not reply.is_error
    assert c.read(0, regs.EHVER, 4) == b"\1\0\0\0"
    c.close()


def test_fresh_device_for_each_client(server):
    with VfioUserTransport(server.path) as t:
        t.map_bar(4)[:4] = b"left"
    with VfioUserTransport(server.path) as t:
        assert bytes(t.map_bar(4)[:4]) == bytes(4)


# --- the real `hermes serve` process -----------------------------------------------------------

@pytest.fixture
def proc(tmp_path):
    s = ServerProcess(str(tmp_path / "serve.sock"), "--engines", "2", "--slots", "4")
    yield s
    s.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_server_and_removes_socket(proc, sig):
    with VfioUserTransport(proc.path) as t:
        assert run_file(t) == b"\x2a" + bytes(7)
        assert proc.stop(sig) == 0        # stops even with a client connected
    assert not os.path.exists(proc.path)
    log = proc.log()
    assert "client 1 connected" in log and "stopped" in log


def test_subprocess_end_to_end_and_library(proc):
    import hermes.lib
    with hermes.lib.open(f"vfio-user:{proc.path}") as dev:
        assert dev.info()["engines"] == 2 and dev.info()["program_slots"] == 4
        assert dev.run(INC_U64, struct.pack("<Q", 41)).data == struct.pack("<Q", 42)
    with VfioUserTransport(proc.path) as t:
        assert run_file(t) == b"\x2a" + bytes(7)
    assert proc.proc.poll() is None
    # the server logs a disconnection once it has seen the client go: wait for it, bounded
    deadline = time.monotonic() + 10
    while True:
        log = proc.log().splitlines()
        opened = [line for line in log if line.endswith(" connected")]
        closed = [line for line in log if " disconnected after " in line]
        if len(closed) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(opened) == len(closed) >= 3     # the start-up probe + our two clients
    assert all("0 errors" in line for line in closed)


def test_subprocess_survives_garbage(proc):
    for junk in (b"\xff" * 64, P.encode_header(1, P.VERSION, 2), os.urandom(300)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(proc.path)
        s.sendall(junk)
        s.close()
    with VfioUserTransport(proc.path) as t:
        assert t.read(0, regs.EHVER, 4) == 1


def test_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()                         # a socket file nobody listens on
    server = ServerProcess(path)
    try:
        with VfioUserTransport(path) as t:
            assert t.read(0, regs.EHVER, 4) == 1
    finally:
        assert server.stop() == 0


def test_refuses_a_path_that_is_not_a_socket(tmp_path, capsys):
    from hermes.cli import main
    path = tmp_path / "file"
    path.write_text("keep me")
    assert main(["serve", "--socket", str(path)]) == 1
    assert path.read_text() == "keep me"
    assert "not a socket" in capsys.readouterr().err


def test_wait_for_socket_reports_a_dead_server(tmp_path):
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "hermes.cli", "serve",
                          "--socket", str(tmp_path / "x"), "--engines", "0"],
                         stderr=subprocess.PIPE, text=True)
    with pytest.raises(RuntimeError):
        wait_for_socket(str(tmp_path / "x"), p)
    p.wait()


def test_sigterm_with_a_runaway_program_running(tmp_path):
    """A program that only its (huge) budget would stop neither delays the next client nor the
    shutdown."""
    s = ServerProcess(str(tmp_path / "r.sock"), "--engines", "1", "--budget", str(1 << 62))
    try:
        t = VfioUserTransport(s.path)
        drv = hermes.driver.attach(t, timeout=0.2)
        f = drv.open()
        f.download_program(LOOP)
        f.pwrite(b"x", 0)
        with pytest.raises(OSError):
            f.fsync()                      # times out; the engine keeps looping
        t.close()
        t0 = time.monotonic()
        with VfioUserTransport(s.path) as t2:   # a fresh device, served at once
            assert run_file(t2) == b"\x2a" + bytes(7)
        assert time.monotonic() - t0 < 5
    finally:
        t0 = time.monotonic()
        assert s.stop() == 0
        assert time.monotonic() - t0 < 8
    assert not os.path.exists(s.path)


# --- who may connect ---------------------------------------------------------------------------

#: A VERSION exchange in plain Python (the peer runs as another user, who may not be able to
#: read this checkout or its venv).
_PEER = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
doc = b'{"capabilities": {}}\\0'
try:
    s.sendall(struct.pack("<HHIIIHH", 1, 1, 20 + len(doc), 0, 0, 0, 2) + doc)
    hdr = s.recv(16)
except (BrokenPipeError, ConnectionResetError):
    hdr = b""
print("refused" if not hdr else "error" if struct.unpack("<HHIII", hdr)[3] & 0x20 else "served")
"""


def _as_other_user(path: str, uid: int = 65534, gid: int = 65534) -> str:
    """Connect from a process running as ``uid``/``gid``; what the server did."""
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    import shutil
    import subprocess
    import sys
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    out = subprocess.run([python, "-c", _PEER, path], capture_output=True, text=True,
                         preexec_fn=drop, timeout=30, cwd="/")
    return out.stdout.strip() or out.stderr


def test_socket_is_owner_only_whatever_the_umask(tmp_path):
    path = str(tmp_path / "perm.sock")
    old = os.umask(0)
    try:
        server = ServerProcess(path)
    finally:
        os.umask(old)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_peer_check_refuses_other_users_and_admits_the_group():
    import tempfile
    tmp_path = Path(tempfile.mkdtemp(prefix="hermes-peer-", dir="/tmp"))
    os.chmod(tmp_path, 0o755)           # other users must reach the socket file
    path = str(tmp_path / "peer.sock")
    server = ServerProcess(path)
    try:
        os.chmod(path, 0o666)            # even if the mode is widened, the peer check holds
        assert _as_other_user(path) == "refused"
        assert "refused: pid" in server.log() and "uid 65534" in server.log()
        alive_path = Raw(path)           # root / the server's user still gets in
        alive_path.close()
    finally:
        assert server.stop() == 0
    group_path = str(tmp_path / "group.sock")
    server = ServerProcess(group_path, "--socket-group", "4242")
    try:
        st = os.stat(group_path)
        assert st.st_mode & 0o777 == 0o660 and st.st_gid == 4242
        assert _as_other_user(group_path, gid=4242) == "served"
        assert _as_other_user(group_path, gid=4343) != "served"   # 0660: the kernel says no
    finally:
        assert server.stop() == 0
        import shutil
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("args,names", [
    (["--executor", "bogus"], "unknown executor 'bogus'"),
    (["--engines", "200"], "engines must be"),
    (["--slot-size", "16G"], "slot_size must be"),
    (["--slots", "0"], "--slots"),
    (["--socket-group", "no-such-group-here"], "no such group"),
    (["--stall-timeout", "-1"], "--stall-timeout"),
    (["--spin-us", "-5"], "--spin-us"),
])
def test_serve_cli_errors_are_one_line(tmp_path, args, names):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "hermes.cli", "serve", "--socket",
                          str(tmp_path / "x.sock"), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert names in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.sock").exists()


def test_a_server_that_never_spins_serves_the_same(tmp_path):
    from hermes.engine.asm import assemble_program
    from hermes.transport.vfio_user import VfioUserTransport
    server = ServerProcess(str(tmp_path / "nospin.sock"), "--spin-us", "0", "--engines", "1")
    try:
        t = VfioUserTransport(server.path)
        t.reply_spin = 0.0
        drv = hermes.driver.attach(t)
        try:
            with drv.open() as f:
                f.download_program(assemble_program("mov r0, 0\nexit").to_bytes())
                f.pwrite(bytes(8), 0)
                for _ in range(3):
                    f.fsync()
        finally:
            drv.close()
    finally:
        assert server.stop() == 0

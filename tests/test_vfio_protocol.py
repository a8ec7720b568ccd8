"""vfio-user / VFIO codecs: header, VERSION, UAPI structs and caps, framing with fds, PCI config."""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import given, strategies as st

from hermes import regs
from hermes.vfio import mmio, pci, protocol as P, uapi

# --- UAPI numbers and layouts ------------------------------------------------------------------

def test_ioctl_numbers_match_linux_headers():
    assert uapi.VFIO_GET_API_VERSION == 0x3B64
    assert uapi.VFIO_CHECK_EXTENSION == 0x3B65
    assert uapi.VFIO_SET_IOMMU == 0x3B66
    assert uapi.VFIO_GROUP_GET_STATUS == 0x3B67
    assert uapi.VFIO_GROUP_SET_CONTAINER == 0x3B68
    assert uapi.VFIO_GROUP_GET_DEVICE_FD == 0x3B6A
    assert [uapi.VFIO_DEVICE_GET_INFO, uapi.VFIO_DEVICE_GET_REGION_INFO,
            uapi.VFIO_DEVICE_GET_IRQ_INFO, uapi.VFIO_DEVICE_SET_IRQS,
            uapi.VFIO_DEVICE_RESET] == list(range(0x3B6B, 0x3B70))
    assert [uapi.VFIO_IOMMU_GET_INFO, uapi.VFIO_IOMMU_MAP_DMA,
            uapi.VFIO_IOMMU_UNMAP_DMA] == [0x3B70, 0x3B71, 0x3B72]


@pytest.mark.parametrize("cls,size", list(uapi.STRUCT_SIZES.items()),
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_struct_sizes_match_kernel_abi(cls, size):
    assert ctypes.sizeof(cls) == size


def test_vfio_user_payload_sizes():
    assert ctypes.sizeof(P.DmaMap) == 32
    assert ctypes.sizeof(P.DmaUnmap) == 24
    assert P.REGION_ACCESS.size == 16 and P.DMA_ACCESS.size == 16 and P.HEADER_SIZE == 16


def test_region_info_field_offsets():
    info = uapi.vfio_region_info(32, 0xF, 4, 32, 0x1234_5678_9A, 0x4 << 40)
    raw = bytes(info)
    assert struct.unpack("<IIIIQQ", raw) == (32, 0xF, 4, 32, 0x1234_5678_9A, 0x4 << 40)
    assert uapi.vfio_region_info.decode(raw) == info
    with pytest.raises(ValueError):
        uapi.vfio_region_info.decode(raw[:31])


u64 = st.integers(0, (1 << 64) - 1)


@given(st.lists(st.tuples(u64, u64), max_size=8))
def test_sparse_mmap_cap_round_trip(areas):
    info = bytes(uapi.vfio_region_info(0, 0, 2, 32, 0, 0))
    blob = info + uapi.encode_sparse_mmap_cap(areas)
    caps = uapi.parse_caps(blob, 32)
    version, cap = caps[uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP]
    assert version == 1
    assert uapi.parse_sparse_mmap(cap) == areas


@given(st.lists(st.tuples(u64, u64), max_size=4))
def test_iova_range_cap_round_trip(ranges):
    blob = bytes(24) + uapi.encode_iova_range_cap(ranges)
    _, cap = uapi.parse_caps(blob, 24)[uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE]
    assert uapi.parse_iova_ranges(cap) == ranges


def test_cap_chain_errors():
    looped = bytes(32) + bytes(uapi.vfio_info_cap_header(1, 1, 32))
    with pytest.raises(ValueError):
        uapi.parse_caps(looped, 32)
    with pytest.raises(ValueError):
        uapi.parse_caps(bytes(32), 30)          # header runs past the end
    truncated = bytes(32) + bytes(uapi.vfio_region_info_cap_sparse_mmap(
        uapi.vfio_info_cap_header(1, 1, 0), 5, 0))
    _, cap = uapi.parse_caps(truncated, 32)[1]
    with pytest.raises(ValueError):
        uapi.parse_sparse_mmap(cap)


def test_irq_set_fds_layout():
    raw = uapi.irq_set_fds(2, 3, [7, -1])
    assert struct.unpack("<IIIII2i", raw) == (28, 0x24, 2, 3, 2, 7, -1)


# --- vfio-user header and VERSION --------------------------------------------------------------

@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_header_round_trip(msg_id, cmd, size, flags, err):
    raw = P.encode_header(msg_id, cmd, size, flags, err)
    assert len(raw) == 16
    assert P.decode_header(raw) == (msg_id, cmd, size, flags, err)


def test_header_too_short():
    with pytest.raises(P.ProtocolError):
        P.decode_header(b"\0" * 15)


json_scalars = st.one_of(st.integers(-2**53, 2**53), st.booleans(), st.text(max_size=8))
caps_strategy = st.dictionaries(st.text(min_size=1, max_size=12),
                                st.one_of(json_scalars, st.dictionaries(st.text(max_size=6),
                                                                        json_scalars, max_size=3)),
                                max_size=5)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), caps_strategy)
def test_version_round_trip(major, minor, caps):
    assert P.decode_version(P.encode_version(major, minor, caps)) == (major, minor, caps)


def test_version_without_caps_and_malformed():
    assert P.decode_version(struct.pack("<HH", 0, 2)) == (0, 2, {})
    for bad in (b"\0\0", struct.pack("<HH", 0, 0) + b'{"capabilities": {}}',  # no NUL
                struct.pack("<HH", 0, 0) + b"not json\0",
                struct.pack("<HH", 0, 0) + b"[1, 2]\0",
                struct.pack("<HH", 0, 0) + b'{"capabilities": 3}\0'):
        with pytest.raises(ValueError):
            P.decode_version(bad)


def test_message_flags_and_describe():
    cmd = P.Message(7, P.REGION_READ, payload=P.encode_region_access(0x44, 2, 4))
    assert not cmd.is_reply and not cmd.is_error
    err = P.error_reply(cmd, errno.EINVAL)
    assert err.is_reply and err.is_error and err.encode() == P.encode_header(7, 9, 16, 0x21, 22)
    assert "REGION_READ" in P.describe(cmd) and "offset=0x44" in P.describe(cmd)
    assert "EINVAL" in P.describe(err)


# --- framing over a real socket ----------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_message_with_fds_round_trip(pair):
    a, b = pair
    fd = os.memfd_create("t")
    os.write(fd, b"shared bytes")
    try:
        P.send_message(a, P.Message(3, P.DMA_MAP, payload=b"x" * 32, fds=[fd]))
        P.send_message(a, P.Message(4, P.REGION_READ, payload=b"y" * 16))
        got = P.recv_message(b)
        assert (got.msg_id, got.cmd, got.payload, len(got.fds)) == (3, P.DMA_MAP, b"x" * 32, 1)
        assert os.pread(got.fds[0], 12, 0) == b"shared bytes"
        got.close_fds()
        nxt = P.recv_message(b)
        assert (nxt.msg_id, nxt.fds) == (4, [])
    finally:
        os.close(fd)


def test_large_message_is_received_whole(pair):
    a, b = pair
    payload = bytes(range(256)) * 4096   # 1 MiB: many socket buffers' worth
    message = P.Message(1, P.DMA_WRITE, payload=payload)
    t = threading.Thread(target=P.send_message, args=(a, message))
    t.start()
    got = P.recv_message(b)
    t.join()
    assert got.payload == payload


def test_too_big_message_is_refused_without_reading_it(pair):
    a, b = pair
    a.sendall(P.encode_header(1, P.REGION_WRITE, 16 + 5000) + bytes(5000))
    with pytest.raises(P.MessageTooBig) as info:
        P.recv_message(b, max_size=4096)
    assert info.value.header.msg_id == 1 and isinstance(info.value, P.ProtocolError)
    assert len(b.recv(8192)) == 5000          # the body was left unread


def test_impossible_size_and_eof(pair):
    a, b = pair
    a.sendall(P.encode_header(1, P.VERSION, 8))
    with pytest.raises(P.ProtocolError):
        P.recv_message(b)
    a.sendall(P.encode_header(1, P.VERSION, 40)[:10])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionResetError):
        P.recv_message(b)


def test_clean_eof_is_none(pair):
    a, b = pair
    a.close()
    assert P.recv_message(b) is None


# --- PCI config space --------------------------------------------------------------------------

@pytest.fixture
def config():
    return pci.ConfigSpace(pci.hermes_bars(32 << 20))


def u32(cfg, off):
    return struct.unpack("<I", cfg.read(off, 4))[0]


def test_config_identity(config):
    vendor, device = struct.unpack("<HH", config.read(0, 4))
    assert (vendor, device) == (0x1DE5, 0x3000)
    assert config.read(pci.PCI_REVISION_ID, 1)[0] == regs.PCI_REVISION
    assert int.from_bytes(config.read(pci.PCI_CLASS_PROG, 3), "little") == regs.PCI_CLASS_OTHER
    assert config.read(pci.PCI_HEADER_TYPE, 1) == b"\0"


def test_bar_sizing(config):
    flags64 = pci.PCI_BASE_ADDRESS_MEM_TYPE_64 | pci.PCI_BASE_ADDRESS_MEM_PREFETCH
    expected = {0: (regs.BAR0_SIZE, 0), 2: (regs.BAR2_SIZE, flags64), 4: (32 << 20, flags64)}
    for index, (size, flags) in expected.items():
        off = pci.PCI_BASE_ADDRESS_0 + 4 * index
        assert u32(config, off) & 0xF == flags
        config.write(off, b"\xff" * 4)
        assert u32(config, off) == ((~(size - 1)) & 0xFFFFFFF0) | flags
        if flags & pci.PCI_BASE_ADDRESS_MEM_TYPE_64:
            config.write(off + 4, b"\xff" * 4)
            assert u32(config, off + 4) == 0xFFFFFFFF   # sizes < 4 GiB: whole upper half writable
            config.write(off + 4, struct.pack("<I", 0x12))
            config.write(off, struct.pack("<I", 0xFE00_0000))
            assert config.bar_address(index) == 0x12_FE00_0000 & ~(size - 1)
    # unimplemented BARs (1, 3, 5 are upper halves; ROM) read 0 after all-ones
    config.write(pci.PCI_ROM_ADDRESS, b"\xff" * 4)
    assert u32(config, pci.PCI_ROM_ADDRESS) == 0


def test_msix_capability(config):
    cap = pci.find_capability(config.read, pci.PCI_CAP_ID_MSIX)
    assert cap is not None
    ctrl, table, pba = struct.unpack("<HII", config.read(cap + 2, 10))
    assert (ctrl & pci.PCI_MSIX_FLAGS_QSIZE) + 1 == regs.MSIX_VECTORS
    assert (table & 7, table & ~7) == (regs.BAR_DMA, regs.MSIX_TABLE_OFFSET)
    assert (pba & 7, pba & ~7) == (regs.BAR_DMA, regs.MSIX_PBA_OFFSET)
    # enable/mask bits are writable, the table size is not
    config.write(cap + 2, struct.pack("<H", 0xFFFF))
    assert config.msix_control == (pci.PCI_MSIX_FLAGS_ENABLE | pci.PCI_MSIX_FLAGS_MASKALL
                                   | (regs.MSIX_VECTORS - 1))


def test_read_only_fields_and_command(config):
    config.write(0, b"\0\0\0\0")
    assert struct.unpack("<HH", config.read(0, 4)) == (0x1DE5, 0x3000)
    config.write(pci.PCI_COMMAND, struct.pack("<H", 0xFFFF))
    cmd = config.command
    assert cmd & pci.PCI_COMMAND_MEMORY and cmd & pci.PCI_COMMAND_MASTER
    assert not cmd & pci.PCI_COMMAND_IO   # no I/O BARs
    config.reset()
    assert config.command == 0 and config.msix_control & pci.PCI_MSIX_FLAGS_ENABLE == 0
    with pytest.raises(ValueError):
        config.read(250, 8)


@given(st.integers(0, 255), st.integers(1, 8))
def test_config_unaligned_reads_agree_with_dwords(offset, count):
    cfg = pci.ConfigSpace(pci.hermes_bars(32 << 20))
    count = min(count, 256 - offset)
    whole = b"".join(cfg.read(d, 4) for d in range(0, 256, 4))
    assert cfg.read(offset, count) == whole[offset:offset + count]


# --- fixed-width MMIO helpers ------------------------------------------------------------------

def test_mmio_widths():
    buf = bytearray(16)
    mmio.store(buf, 4, 4, 0x1_2345_6789)     # truncated to 32 bits
    assert buf[4:8] == bytes.fromhex("89674523") and buf[8] == 0
    assert mmio.load(buf, 4, 2) == 0x6789
    mmio.store(buf, 8, 8, (1 << 64) - 1)
    assert mmio.load(buf, 8, 8) == (1 << 64) - 1
    for bad in ((0, 3), (14, 4), (-1, 1)):
        with pytest.raises(ValueError):
            mmio.load(buf, *bad)


# --- the server's buffered receiver ------------------------------------------------------------

@given(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 3)), min_size=1, max_size=25))
def test_receiver_splits_bursts_and_attributes_fds(plan):
    """A burst of messages, some with fds, read with few system calls: every message comes out
    whole and in order, each with exactly its own fds."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent_fds: list[int] = []
    try:
        for i, (size, nfds) in enumerate(plan):
            fds = []
            for k in range(nfds):
                fd = os.memfd_create(f"m{i}")
                os.write(fd, f"{i}:{k}".encode())
                fds.append(fd)
            sent_fds += fds
            P.send_message(a, P.Message(i, P.DMA_MAP, payload=bytes([i & 0xFF]) * size, fds=fds))
        a.shutdown(socket.SHUT_WR)
        rx = P.Receiver(b)
        for i, (size, nfds) in enumerate(plan):
            msg = rx.recv()
            assert (msg.msg_id, msg.payload) == (i, bytes([i & 0xFF]) * size)
            got = [os.pread(fd, 16, 0).decode() for fd in msg.fds]
            assert got == [f"{i}:{k}" for k in range(nfds)]
            msg.close_fds()
        assert rx.recv() is None
    finally:
        for fd in sent_fds:
            os.close(fd)
        a.close()
        b.close()


def test_receiver_refuses_oversized_and_reports_stalls(pair):
    a, b = pair
    rx = P.Receiver(b, max_size=1024, stall_timeout=0.3)
    P.send_message(a, P.Message(2, P.DEVICE_RESET))
    assert rx.recv().msg_id == 2
    a.sendall(P.encode_header(1, P.REGION_WRITE, 0xFFFFFFF0))
    with pytest.raises(P.MessageTooBig):
        rx.recv()                      # at once, with no body sent
    rx = P.Receiver(b, stall_timeout=0.3)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
    with pytest.raises(BlockingIOError):
        rx.recv()                      # idle: nothing of a next message yet
    a.sendall(P.encode_header(3, P.VERSION, 40)[:6])
    t0 = time.monotonic()
    with pytest.raises(P.ProtocolError, match="stalled"):
        rx.recv()                      # a peer stuck inside a message
    assert 0.3 <= time.monotonic() - t0 < 2


def test_receiver_stall_counts_from_the_first_byte(pair):
    """A peer trickling bytes cannot keep a message open past the stall timeout."""
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
    rx = P.Receiver(b, stall_timeout=0.5)
    msg = P.encode_header(1, P.REGION_WRITE, 16 + 1000) + bytes(1000)

    def trickle() -> None:
        try:
            for i in range(0, 60):
                a.send(msg[i:i + 1])
                time.sleep(0.05)
        except OSError:
            pass

    th = threading.Thread(target=trickle)
    th.start()
    t0 = time.monotonic()
    with pytest.raises(P.ProtocolError, match="stalled"):
        rx.recv()
    assert time.monotonic() - t0 < 1.5
    th.join()


def test_receiver_stop_ends_a_wait_inside_a_message(pair):
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20_000))
    stop = threading.Event()
    rx = P.Receiver(b, stall_timeout=60, stop=stop.is_set)
    a.sendall(P.encode_header(1, P.REGION_WRITE, 64)[:10])
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(P.ProtocolError, match="stopping"):
        rx.recv()
    assert time.monotonic() - t0 < 2


def test_spinning_receive_returns_what_comes_and_is_bounded_when_nothing_does(pair):
    a, b = pair
    t0 = time.perf_counter()
    assert P.recv_spinning(b, 8, 0.01) is None   # nothing comes: back after about the spin
    assert 0.01 <= time.perf_counter() - t0 < 1.0
    threading.Timer(0.002, a.send, args=(b"xy",)).start()
    t0 = time.perf_counter()
    assert P.recv_spinning(b, 8, 5.0, socket.MSG_PEEK) == b"xy"   # after 2 ms, not 5 s
    assert time.perf_counter() - t0 < 2.5
    assert P.recv_spinning(b, 1, 5.0) == b"x"    # peeked only: still there for the read
    assert b.recv(1) == b"y"
    a.close()
    t0 = time.perf_counter()
    assert P.recv_spinning(b, 8, 5.0) == b""     # the end of the stream ends it too
    assert time.perf_counter() - t0 < 2.5


def test_a_spinning_receiver_reads_the_same_messages(pair):
    a, b = pair
    rx = P.Receiver(b, spin=0.001)
    threading.Timer(0.01, P.send_message,
                    args=(a, P.Message(5, P.REGION_READ, payload=b"y" * 16))).start()
    got = rx.recv()                       # spins, then blocks until it comes
    assert (got.msg_id, got.payload) == (5, b"y" * 16)
    P.send_message(a, P.Message(6, P.REGION_READ, payload=b"z" * 16))
    assert rx.recv().msg_id == 6          # arrives during the spin
    a.close()
    assert rx.recv() is None

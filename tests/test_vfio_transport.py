"""The VFIO transport against the fake VFIO kernel (real HermesDevice behind fake ioctls), and the
vfio-user transport's own behaviour (posted writes, range checks, interrupts, lost servers)."""
from __future__ import annotations

import errno
import signal
import socket
import struct
import threading
import time

import pytest

import hermes.driver
from hermes import regs
from hermes.engine.asm import assemble_program
from hermes.transport.base import Transport
from hermes.transport.vfio import VfioError, VfioTransport
from hermes.transport.vfio_user import VfioUserTransport
from hermes.vfio import protocol as P, uapi
from tests.vfio_devices import ServerProcess, ThreadServer

from .support.fake_kernel import FakeVfioKernel

INC_U64 = assemble_program("ldxdw r2, [r1]\nadd r2, 1\nstxdw [r1], r2\nmov r0, 0\nexit").to_bytes()


@pytest.fixture
def kernel(tmp_path):
    k = FakeVfioKernel(tmp_path, engines=2)
    yield k
    k.close()


def open_vfio(k: FakeVfioKernel, **kw) -> VfioTransport:
    return VfioTransport(k.bdf, sysfs_root=k.sysfs_root, dev_root=k.dev_root, ioctl=k.ioctl,
                         pread=k.pread, pwrite=k.pwrite, **kw)


def test_setup_sequence_follows_the_vfio_flow(kernel):
    t = open_vfio(kernel)
    try:
        calls = kernel.calls
        order = [uapi.VFIO_GET_API_VERSION, uapi.VFIO_CHECK_EXTENSION, uapi.VFIO_GROUP_GET_STATUS,
                 uapi.VFIO_GROUP_SET_CONTAINER, uapi.VFIO_SET_IOMMU, uapi.VFIO_GROUP_GET_DEVICE_FD,
                 uapi.VFIO_DEVICE_GET_INFO, uapi.VFIO_DEVICE_GET_REGION_INFO,
                 uapi.VFIO_DEVICE_GET_IRQ_INFO, uapi.VFIO_DEVICE_SET_IRQS]
        positions = [calls.index(c) for c in order]
        assert positions == sorted(positions)
        assert kernel.container_iommu == uapi.VFIO_TYPE1v2_IOMMU
        assert t.num_vectors == 32 and kernel.function.msix.assigned() == list(range(32))
        assert t.map_bar(4) is not None and t.map_bar(0) is None and t.map_bar(2) is None
        assert kernel.function.config.command & 0x6 == 0x6      # memory + bus master enabled
        assert t.read(0, regs.EHVER, 4) == 1 and t.read(0, regs.EHENG, 1) == 2
    finally:
        t.close()
    assert kernel.dma_maps == {}                                 # every buffer unmapped
    assert kernel.function.msix.assigned() == []                 # MSI-X disabled at close


def test_driver_over_vfio(kernel):
    t = open_vfio(kernel)
    drv = hermes.driver.attach(t)
    try:
        f = drv.open()
        f.download_program(INC_U64)
        data = bytes(range(256)) * 4096
        assert f.pwrite(data, 0) == len(data)
        assert f.pread(len(data), 0) == data
        f.pwrite(struct.pack("<Q", 41), 0)
        f.fsync()
        assert f.pread(8, 0) == struct.pack("<Q", 42)
        assert kernel.dma_maps                      # bounce buffers and rings are IOMMU-mapped
        assert all(iova >= 0x1_0000_0000 for iova in kernel.dma_maps)
    finally:
        drv.close()


def test_dma_buffers_are_pinned_anonymous_memory(kernel):
    t = open_vfio(kernel)
    try:
        buf = t.dma_alloc(5000)
        assert buf.size == 5000 and kernel.dma_maps[buf.bus_addr] == 8192
        buf.view[:5] = b"hello"
        assert kernel.function.dma.read(buf.bus_addr, 5) == b"hello"   # the "IOMMU" sees it
        kernel.function.dma.write(buf.bus_addr + 10, b"world")
        assert bytes(buf.view[10:15]) == b"world"
        buf.free()
        buf.free()
        assert buf.bus_addr not in kernel.dma_maps
    finally:
        t.close()


def test_iova_base_honours_the_iommu_ranges(tmp_path):
    k = FakeVfioKernel(tmp_path, iova_ranges=[(0x8000_0000_0000, 0xFFFF_FFFF_FFFF)])
    try:
        t = open_vfio(k)
        buf = t.dma_alloc(4096)
        assert buf.bus_addr >= 0x8000_0000_0000
        t.close()
    finally:
        k.close()


def test_sparse_bar2_routes_msix_page_through_pread(tmp_path):
    """vfio-pci keeps the MSI-X table page of BAR2 out of the mmap: accesses there must use
    pread/pwrite, the rest of BAR2 the mapping."""
    k = FakeVfioKernel(tmp_path, sparse_bar2=True)
    try:
        t = open_vfio(k)
        region = t._regions[regs.BAR_DMA]
        assert [(a, s) for a, s, _ in region.areas] == [(0, 0x8000), (0x9000, 0x7000)]
        # mapped part: plain memory of the fake (not the XDMA identifier the device would give)
        assert t.read(2, 0x0, 4) == 0
        # the MSI-X page reaches the device
        t.write(2, regs.MSIX_TABLE_OFFSET + 8, 4, 0xCAFE)
        assert k.function.device.bar_read(2, regs.MSIX_TABLE_OFFSET + 8, 4) == 0xCAFE
        assert t.read(2, regs.MSIX_TABLE_OFFSET + 8, 4) == 0xCAFE
        t.close()
    finally:
        k.close()


def test_not_viable_group_and_missing_group(tmp_path):
    k = FakeVfioKernel(tmp_path / "a", viable=False)
    try:
        with pytest.raises(VfioError) as info:
            open_vfio(k)
        assert info.value.errno == errno.EBUSY and "vfio-pci" in str(info.value)
    finally:
        k.close()
    with pytest.raises(VfioError) as info:
        VfioTransport("0000:00:00.0", sysfs_root=str(tmp_path / "nosys"), dev_root=str(tmp_path))
    assert "IOMMU group" in str(info.value)


def test_wrong_device_is_refused(tmp_path):
    k = FakeVfioKernel(tmp_path)
    k.function.config._cfg[0:2] = b"\x86\x80"   # an Intel function in the same group
    try:
        with pytest.raises(VfioError) as info:
            open_vfio(k)
        assert "not a Hermes device" in str(info.value)
        assert k.dma_maps == {}
    finally:
        k.close()


def test_access_checks_and_reset(kernel):
    t = open_vfio(kernel)
    try:
        for bad in ((0, regs.BAR0_SIZE, 4), (0, 0, 3), (1, 0, 4), (7, 0, 4)):
            with pytest.raises(ValueError):
                t.read(*bad)
        drv = hermes.driver.attach(t, owns_transport=False)
        f = drv.open()
        f.download_program(INC_U64)
        assert kernel.function.device.slots_in_use()[0]
        t.reset()
        assert kernel.function.device.slots_in_use() == ([], [])
    finally:
        t.close()


def test_interrupts_are_eventfds(kernel):
    t = open_vfio(kernel)
    try:
        assert not t.irq_wait(9, 0)
        kernel.function.msix.fire(9)
        kernel.function.msix.fire(9)
        assert t.irq_wait(9, 1) and t.irq_wait(9, 0)   # counted: two fires, two waits
        assert not t.irq_wait(9, 0.01)
        kernel.function.msix.fire(3)
        t.irq_clear(3)
        assert not t.irq_wait(3, 0)
    finally:
        t.close()


def test_library_open_vfio(kernel):
    import hermes.lib
    opts = dict(sysfs_root=kernel.sysfs_root, dev_root=kernel.dev_root, ioctl=kernel.ioctl,
                pread=kernel.pread, pwrite=kernel.pwrite)
    with hermes.lib.open(f"vfio:{kernel.bdf}", **opts) as dev:
        assert dev.run(INC_U64, struct.pack("<Q", 1)).data == struct.pack("<Q", 2)
        assert dev.info()["engines"] == 2
    with pytest.raises(hermes.HermesError):
        hermes.lib.open("vfio:")


# --- vfio-user transport details ---------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    s = ThreadServer(str(tmp_path / "s.sock"))
    yield s
    s.stop()


def test_posted_writes_are_ordered_before_reads(server):
    with VfioUserTransport(server.path) as t:
        base = regs.cmdreq(0)
        for i in range(40):                      # more than one batch
            t.write(0, base + (i % 4) * 8, 8, i)
        assert t.read(0, base + 24, 8) == 39
        t.write_block(0, base, bytes(range(32)))
        assert t.read_block(0, base, 32) == bytes(range(32))
        with pytest.raises(ValueError):
            t.write(0, regs.BAR0_SIZE, 4, 0)     # range-checked locally: posted writes get no reply
        with pytest.raises(ValueError):
            t.write(3, 0, 4, 0)
        assert t.config_read(0, 4) == 0x3000_1DE5


def test_read_many_sends_the_reads_together(server):
    with VfioUserTransport(server.path) as t:
        base = regs.cmdreq(0)
        t.write_block(0, base, bytes(range(32)))       # posted: they go first, in the same send
        sends = []
        send = t._send
        t._send = lambda data, *a, **k: (sends.append(bytes(data)), send(data, *a, **k))[1]
        reads = [(base, 2), (base + 8, 16), (base + 4, 4), (regs.EHVER, 4)]
        got = t.read_many(0, reads)
        assert len(sends) == 1
        assert got == [bytes(range(32))[o - base:o - base + n] if o >= base
                       else t.read(0, o, n).to_bytes(n, "little") for o, n in reads]
        assert got == Transport.read_many(t, 0, reads)   # the same bytes as one read at a time
        with pytest.raises(ValueError):
            t.read_many(0, [(base, 2), (regs.BAR0_SIZE, 4)])
        with pytest.raises(OSError) as info:   # the server answers an error, as to read_block
            t.read_many(0, [(base, 2), (regs.BAR0_SIZE, 16)])
        assert info.value.errno == errno.EINVAL
        assert t.read_many(0, [(base, 2)]) == [bytes([0, 1])]   # the connection still works


def test_irq_wait_counts_and_flushes(server):
    with VfioUserTransport(server.path) as t:
        fn = server.function
        fn.msix.fire(12)
        fn.msix.fire(12)
        assert t.irq_wait(12, 1) and t.irq_wait(12, 0) and not t.irq_wait(12, 0)
        with pytest.raises(ValueError):
            t.irq_wait(32, 0)


def test_server_gone_is_enotconn(server):
    t = VfioUserTransport(server.path)
    server.stop()
    with pytest.raises(OSError) as info:
        for _ in range(3):
            t.read(0, 0, 4)
    assert info.value.errno == errno.ENOTCONN
    t.close()
    t.close()


def test_connect_to_nothing(tmp_path):
    with pytest.raises(OSError):
        VfioUserTransport(str(tmp_path / "none.sock"))


def test_library_errors_for_bad_specs(tmp_path):
    import hermes.lib
    with pytest.raises(hermes.HermesError):
        hermes.lib.open("vfio-user:")
    with pytest.raises(hermes.HermesError):
        hermes.lib.open(f"vfio-user:{tmp_path / 'none.sock'}")
    with pytest.raises(hermes.HermesError):
        hermes.lib.open(f"vfio-user:{tmp_path / 'none.sock'}", engines=3)


def test_irq_wait_notices_a_dead_server(server):
    t = VfioUserTransport(server.path)
    import threading
    threading.Timer(0.1, server.stop).start()
    with pytest.raises(OSError) as info:
        t.irq_wait(8, 10)
    assert info.value.errno == errno.ENOTCONN
    t.close()


# --- bounded waits -----------------------------------------------------------------------------

def elapsed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def test_silent_server_fails_version_within_the_connect_timeout(tmp_path):
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)      # the kernel completes connections; nobody ever answers
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            VfioUserTransport(path, connect_timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 0.5
        assert info.value.errno == errno.ETIMEDOUT
        assert path in str(info.value) and "VERSION" in str(info.value)
        with pytest.raises(hermes.DeviceTimeout, match="VERSION"):
            hermes.open(f"vfio-user:{path}", timeout=0.3)   # ``timeout`` caps the connect timeout
    finally:
        listener.close()


def test_busy_reply_to_version_is_device_busy(tmp_path):
    """A server that serves someone else answers VERSION with EBUSY and hangs up."""
    path = str(tmp_path / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def refuse() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                msg = P.recv_message(conn)
                P.send_message(conn, P.error_reply(msg, errno.EBUSY))

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        with pytest.raises(OSError) as info:
            VfioUserTransport(path, connect_timeout=5)
        assert info.value.errno == errno.EBUSY and path in str(info.value)
        with pytest.raises(hermes.DeviceBusy, match="busy"):
            hermes.open(f"vfio-user:{path}")
    finally:
        thread.join(5)
        listener.close()


def answer_version_with(tmp_path, reply: bytes) -> tuple[str, threading.Thread, socket.socket]:
    """A listener whose one connection gets ``reply`` to its first message and is kept open."""
    path = str(tmp_path / "odd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        msg = P.recv_message(conn)
        conn.sendall(reply.replace(b"ID", msg.msg_id.to_bytes(2, "little")))
        conn.recv(1)   # until the client hangs up
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return path, thread, listener


@pytest.mark.parametrize("reply", [
    b"ID" + struct.pack("<HIII", P.VERSION, 0xFFFFFFF0, P.TYPE_REPLY, 0),   # absurd size
    b"ID" + struct.pack("<HIII", P.VERSION, 8, P.TYPE_REPLY, 0),            # smaller than a header
    b"ID" + struct.pack("<HIII", P.VERSION, 40, P.TYPE_REPLY, 0) + struct.pack("<HH", 0, 2)
    + b'{"capabilities": 5}\0',                                             # bad capabilities
    b"ID" + struct.pack("<HIII", P.VERSION, 20, P.TYPE_REPLY, 0) + struct.pack("<HH", 1, 0),
], ids=["huge", "tiny", "json", "major"])
def test_malformed_version_reply_is_a_protocol_error(tmp_path, reply):
    path, thread, listener = answer_version_with(tmp_path, reply)
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            VfioUserTransport(path, connect_timeout=2)
        assert time.monotonic() - t0 < 1
        assert info.value.errno == errno.EPROTO and path in str(info.value)
    finally:
        thread.join(5)
        listener.close()


def test_healthy_server_lets_an_interrupt_wait_time_out(server):
    """The liveness probes of a long wait are answered: the wait just returns False."""
    with VfioUserTransport(server.path, timeout=0.5) as t:
        assert elapsed(lambda: t.irq_wait(9, 0.6)) >= 0.6
        assert t.read(0, regs.EHVER, 4) in regs.INTERFACE_VERSIONS
        assert t.irq_wait(9, 0) is False


def test_stopped_server_fails_a_long_interrupt_wait_within_the_reply_timeout(tmp_path):
    s = ServerProcess(str(tmp_path / "stop.sock"))
    try:
        t = VfioUserTransport(s.path, timeout=0.5)
        s.proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            t.irq_wait(9, 30)
        assert time.monotonic() - t0 < 0.5 + 1.0
        assert info.value.errno == errno.ETIMEDOUT and s.path in str(info.value)
        for call in (lambda: t.read(0, regs.EHVER, 4), lambda: t.write(0, 0, 4, 0),
                     lambda: t.irq_wait(9, 1), t.flush, lambda: t.dma_alloc(4096), t.reset):
            t0 = time.monotonic()
            with pytest.raises(OSError) as later:
                call()
            assert time.monotonic() - t0 < 0.1
            assert later.value.errno == errno.ETIMEDOUT
        assert elapsed(t.close) < 0.1
    finally:
        s.proc.send_signal(signal.SIGCONT)
        s.stop()


def test_bad_timeouts_are_refused(server):
    for bad in (0, -1, "1", None, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            VfioUserTransport(server.path, timeout=bad)
        with pytest.raises(hermes.HermesError, match="timeout"):
            hermes.open(f"vfio-user:{server.path}", reply_timeout=bad)
    with pytest.raises(hermes.HermesError, match="connect_timeout"):
        hermes.open(f"vfio-user:{server.path}", connect_timeout=0)


def test_missing_socket_is_named(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(hermes.DeviceError, match=path):
        hermes.open(f"vfio-user:{path}")


def test_full_connection_queue_fails_at_once(tmp_path):
    path = str(tmp_path / "full.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)        # never accepted: the queue fills up
    pending = []
    try:
        while True:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            pending.append(c)
            try:
                c.connect(path)
            except BlockingIOError:
                break
        t0 = time.monotonic()
        with pytest.raises(hermes.DeviceError, match="queue of pending connections is full"):
            hermes.open(f"vfio-user:{path}", timeout=5)
        assert time.monotonic() - t0 < 1
    finally:
        for c in pending:
            c.close()
        listener.close()

"""One Transport contract, three transports: in-process, vfio-user (server subprocess) and VFIO
(fake kernel) must behave the same at the driver's boundary."""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from hermes import regs as R
from hermes.engine.asm import assemble_program
from hermes.transport import DmaBuffer, Transport
from hermes.vfio import protocol as P, uapi
from tests.test_vfio_server import Raw
from tests.vfio_devices import ServerProcess, ThreadServer

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

        from .support.fake_kernel import FakeVfioKernel
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
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))   # disjoint
        assert [len(b.view) for b in bufs] == [1, 4096, 5000]
        bufs[2].view[:] = bytes(5000)
        bufs[2].view[4999] = 7
        assert bufs[2].view[4999] == 7
    finally:
        for b in bufs:
            b.free()
            b.free()
    with pytest.raises(ValueError):
        _ = bufs[0].view


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
        control = R.desc_control(stop=True, eop=True, completed=True)
        struct.pack_into("<IIQQQ", desc.view, 0, control, len(data), s, d, 0)
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
    prog = assemble_program("mov r0, 42\nexit").to_bytes()
    slot = command(t, 0, bytes([R.CMD_REQUEST_SLOT, 0, 1, 0, 0, 0, 0, 0, R.SLOT_PROGRAM]))[8]
    data = command(t, 0, bytes([R.CMD_REQUEST_SLOT, 0, 2, 0, 0, 0, 0, 0, R.SLOT_DATA]))[8]
    t.write_block(4, slot * (1 << 20), prog)      # BAR4 writes (the model allows it)
    res = command(t, 1, bytes([R.CMD_RUN_PROGRAM, 0, 3, 0, 0, 0, 0, 0, slot, data, 0, 0])
                  + struct.pack("<I", len(prog)))
    assert res[2] == R.STATUS_SUCCESS and int.from_bytes(res[8:16], "little") == 42
    t.reset()
    enable_irqs(t)
    res = command(t, 0, bytes([R.CMD_RELEASE_SLOT, 0, 4, 0, 0, 0, 0, 0, R.SLOT_PROGRAM, slot]))
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

    from .support.fake_kernel import FakeVfioKernel
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


# --- the real peers: QEMU's client (request shapes from hw/vfio-user/) and libvfio-user's ------

DATA = Path(__file__).parent / "data" / "vfio"
#: QEMU 10.1+ (hw/vfio-user/proxy.c caps_json): the VERSION document its client sends, major 0
#: minor 0.
QEMU_CAPS = {"migration": {"pgsize": 4096, "max_bitmap_size": 256 << 20}, "max_msg_fds": 16,
             "max_data_xfer_size": 1 << 20, "pgsizes": 4096, "max_dma_maps": 65535,
             "write_multiple": True}


@pytest.fixture
def thread_server(tmp_path):
    s = ThreadServer(str(tmp_path / "peer.sock"), engines=2)
    yield s
    s.stop()


def qemu_call(c: Raw, cmd: int, payload: bytes, *, rsize: int | None = None, fds=(),
              recv_fds: int = 0) -> P.Message:
    """One exchange checked the way QEMU's proxy receives it: the reply fits the buffer QEMU
    gives it (``rsize``, default the request's own size) and carries at most ``recv_fds`` fds."""
    reply = c.call(cmd, payload, fds)
    size = P.HEADER_SIZE + len(reply.payload)
    assert size <= (rsize or P.HEADER_SIZE + len(payload)), "reply larger than recv buffer"
    assert len(reply.fds) <= recv_fds, "unexpected FDs"
    return reply


def test_qemu_client_request_shapes(thread_server):
    """Every message QEMU's vfio-user-pci sends while realizing the device and running a guest,
    with the checks its client applies to each reply."""
    c = Raw(thread_server.path, negotiate=False)
    # VERSION: the reply must fit QEMU's request buffer, keep major 0, minor <= 0, be
    # NUL-terminated, and pass check_max_fds/check_max_xfer/check_pgsizes/check_max_dma.
    req = P.encode_version(0, 0, QEMU_CAPS)
    reply = qemu_call(c, P.VERSION, req)
    assert not reply.is_error and reply.payload.endswith(b"\0")
    major, minor, caps = P.decode_version(reply.payload)
    assert (major, minor) == (0, 0) and set(caps) <= set(QEMU_CAPS)
    assert isinstance(caps["max_msg_fds"], int) and 0 <= caps["max_msg_fds"] <= 16
    assert caps["max_data_xfer_size"] <= 64 << 20
    assert caps["pgsizes"] % 4096 == 0 and caps["max_dma_maps"] <= 65535
    max_send_fds = caps["max_msg_fds"]
    # DEVICE_GET_INFO: argsz 16 in a 32-byte message, reply read into 32 bytes.
    info = qemu_call(c, P.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)).payload
    argsz, flags, nregions, nirqs = struct.unpack("<IIII", info)
    assert nregions <= 100 and nirqs <= 50 and flags & uapi.VFIO_DEVICE_FLAGS_RESET
    # DEVICE_GET_REGION_INFO: argsz 32 first, retried with the argsz of the reply; reply buffer
    # argsz + 16 bytes, room for one fd; CAPS needs 32 <= cap_offset <= argsz.
    for index in range(nregions):
        argsz = 32
        while True:
            reply = qemu_call(c, P.DEVICE_GET_REGION_INFO,
                              bytes(uapi.vfio_region_info(argsz, 0, index, 0, 0, 0)),
                              rsize=argsz + 16, recv_fds=1)
            assert not reply.is_error, f"failed to get region {index} info"
            ri = uapi.vfio_region_info.decode(reply.payload)
            if ri.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS:
                assert 32 <= ri.cap_offset <= ri.argsz
            nfds = len(reply.fds)
            reply.close_fds()
            if ri.argsz <= argsz:
                break
            argsz = ri.argsz                       # QEMU closes any fd and asks again
        if index == 4:
            assert ri.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP and nfds == 1
    # DEVICE_GET_IRQ_INFO: argsz 16, reply into 32 bytes.
    for index in range(nirqs):
        reply = qemu_call(c, P.DEVICE_GET_IRQ_INFO, bytes(uapi.vfio_irq_info(16, 0, index, 0)))
        assert not reply.is_error
    # DMA_MAP of guest RAM from a memfd (argsz 32, flags R|W, fd offset), DMA_UNMAP (argsz 24).
    ram = os.memfd_create("guest-ram")
    os.ftruncate(ram, 1 << 20)
    try:
        reply = qemu_call(c, P.DMA_MAP, bytes(P.DmaMap(32, 3, 0x10000, 0x1_0000_0000, 0x10000)),
                          fds=[ram])
        assert not reply.is_error
        unmap = bytes(uapi.vfio_iommu_type1_dma_unmap(24, 0, 0x1_0000_0000, 0x10000))
        reply = qemu_call(c, P.DMA_UNMAP, unmap)
        assert not reply.is_error
        assert not qemu_call(c, P.DMA_MAP, bytes(P.DmaMap(32, 3, 0, 0x2_0000_0000, 1 << 20)),
                             fds=[ram]).is_error
        # the listener's unmap of the whole address space: flag ALL, iova 0, size 0
        assert not qemu_call(c, P.DMA_UNMAP, bytes(uapi.vfio_iommu_type1_dma_unmap(
            24, uapi.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))).is_error
    finally:
        os.close(ram)
    # DEVICE_SET_IRQS for MSI-X eventfds: a 36-byte message with argsz 20, count = the chunk,
    # the fds in SCM_RIGHTS, chunks of max_msg_fds; then disable (DATA_NONE, count 0).
    efds = [os.eventfd(0) for _ in range(32)]
    try:
        T = uapi.VFIO_IRQ_SET_ACTION_TRIGGER
        for start in range(0, 32, max_send_fds):
            chunk = efds[start:start + max_send_fds]
            reply = qemu_call(c, P.DEVICE_SET_IRQS, bytes(uapi.vfio_irq_set(
                20, T | uapi.VFIO_IRQ_SET_DATA_EVENTFD, 2, start, len(chunk))), fds=chunk)
            assert not reply.is_error
        assert thread_server.function.msix.assigned() == list(range(32))
        assert not qemu_call(c, P.DEVICE_SET_IRQS, bytes(uapi.vfio_irq_set(
            20, T | uapi.VFIO_IRQ_SET_DATA_NONE, 2, 0, 0))).is_error
    finally:
        for fd in efds:
            os.close(fd)
    # REGION_READ: a 32-byte request, reply buffer 32 + count, returned count <= count.
    reply = qemu_call(c, P.REGION_READ, P.encode_region_access(R.EHVER, 0, 4), rsize=32 + 4)
    assert struct.unpack_from("<QII", reply.payload)[2] == 4 and reply.payload[16:] == b"\1\0\0\0"
    # REGION_WRITE: posted (NO_REPLY) and waited for.
    c.send(P.REGION_WRITE, P.encode_region_access(R.cmdreq(0), 0, 4, b"\xaa\xbb\xcc\xdd"),
           flags=P.FLAG_NO_REPLY)
    access = P.encode_region_access(R.cmdreq(0) + 4, 0, 4, b"1234")
    assert not qemu_call(c, P.REGION_WRITE, access).is_error
    assert qemu_call(c, P.REGION_READ, P.encode_region_access(R.cmdreq(0), 0, 8),
                     rsize=40).payload[16:] == b"\xaa\xbb\xcc\xdd1234"
    # DEVICE_RESET: the header alone.
    assert not qemu_call(c, P.DEVICE_RESET, b"").is_error
    c.close()


@pytest.mark.parametrize("cmd,payload", [
    (P.DEVICE_GET_INFO, struct.pack("<IIII", 8, 0, 0, 0)),
    (P.DEVICE_GET_REGION_INFO, bytes(uapi.vfio_region_info(16, 0, 0, 0, 0, 0))),
    (P.DEVICE_GET_IRQ_INFO, bytes(uapi.vfio_irq_info(8, 0, 2, 0))),
    (P.DMA_UNMAP, bytes(uapi.vfio_iommu_type1_dma_unmap(16, uapi.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0))),
    (P.DMA_MAP, bytes(P.DmaMap(16, 3, 0, 0x10000, 0x1000))),
    (P.DEVICE_SET_IRQS, bytes(uapi.vfio_irq_set(8, uapi.VFIO_IRQ_SET_ACTION_TRIGGER
                                                 | uapi.VFIO_IRQ_SET_DATA_NONE, 2, 0, 0))),
])
def test_argsz_below_the_fixed_reply_is_einval(thread_server, cmd, payload):
    """As the kernel and libvfio-user answer: no reply is cut to fit, none overflows argsz."""
    c = Raw(thread_server.path)
    c.expect_error(cmd, payload, err=errno.EINVAL)
    assert "argsz" in thread_server.log()
    c.close()


def test_replay_libvfio_user_sample_client(thread_server):
    """libvfio-user's samples/client.c against ``hermes serve --engines 2``, recorded through
    tests/vfio_recorder.py: every request replayed gets the recorded reply (header, payload, fd
    count). The client runs until its own sample-server check (it requires its server's BAR1 to
    be the sparse-mmap region) after receiving BAR4's info in two steps: the 32-byte reply with
    no CAPS and no fd, then the 64-byte one with the capability and the fd."""
    log = json.loads((DATA / "libvfio-user-client.json").read_text())
    c = Raw(thread_server.path, negotiate=False)
    pending: list[dict] = []
    for entry in log:
        if entry.get("end"):
            continue
        if entry["dir"] == "c2s":
            assert entry["fds"] == 0    # the recorded part sends none
            P.send_message(c.sock, P.Message(entry["msg_id"], entry["cmd"], entry["flags"],
                                             entry["error_no"], bytes.fromhex(entry["payload"])))
            pending.append(entry)
        else:
            got = c.recv()
            want = (entry["msg_id"], entry["cmd"], entry["flags"], entry["error_no"],
                    entry["payload"], entry["fds"])
            assert (got.msg_id, got.cmd, got.flags, got.error_no, got.payload.hex(),
                    len(got.fds)) == want
            got.close_fds()
    region4 = [e for e in log if e["dir"] == "s2c" and e["cmd"] == P.DEVICE_GET_REGION_INFO
               and uapi.vfio_region_info.decode(bytes.fromhex(e["payload"])).index == 4]
    assert [(len(e["payload"]) // 2, e["fds"]) for e in region4] == [(32, 0), (64, 1)]
    c.close()

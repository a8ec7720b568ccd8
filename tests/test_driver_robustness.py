"""Driver behaviour past the upstream cases: raw commands, faults, timeouts, probe, concurrency."""
from __future__ import annotations

import errno
import struct
import threading
import time

import pytest

import hermes.driver as hd
from hermes import regs
from hermes.engine.asm import assemble_program
from hermes.transport.base import DmaBuffer, Transport

from .test_driver import INC_U64, PROG_4096, expect_errno, pattern

MiB = 1 << 20


# --- raw commands and slot bookkeeping ------------------------------------------------------------
def test_probe_geometry(hermes_device):
    info = hermes_device.info()
    assert info["version"] == 1
    assert info["engines"] == 4
    assert (info["program_slots"], info["data_slots"]) == (16, 16)
    assert info["program_slot_size"] == info["data_slot_size"] == MiB
    assert info["data_slot_offset"] >= info["program_slot_offset"] + 16 * MiB
    assert info["bar4_size"] == info["data_slot_offset"] + 16 * MiB
    assert (info["h2c_channels"], info["c2h_channels"]) == (4, 4)
    assert info["build"]


def test_probe_enables_interrupts(hermes_device):
    t = hermes_device.transport
    irq = regs.XDMA_TARGET_IRQ
    assert t.read(2, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_USER_MASK), 4) & 0xF == 0xF
    assert t.read(2, regs.xdma_offset(irq, 0, regs.XDMA_IRQ_CHANNEL_MASK), 4) & 0xFF == 0xFF
    for target in (regs.XDMA_TARGET_H2C, regs.XDMA_TARGET_C2H):
        for c in range(4):
            mask = t.read(2, regs.xdma_offset(target, c, regs.XDMA_CH_IRQ_MASK), 4)
            assert mask & regs.XDMA_STAT_DESC_STOPPED


def test_all_engines_interrupt(make_driver):
    drv = make_driver(engines=24, program_slots=24, data_slots=24)
    assert all(v is not None for v in drv.irq.engine_vectors)
    user_mask = drv.transport.read(2, regs.xdma_offset(regs.XDMA_TARGET_IRQ, 0,
                                                       regs.XDMA_IRQ_USER_MASK), 4)
    assert user_mask == (1 << 24) - 1
    files = [drv.open() for _ in range(24)]
    for i, f in enumerate(files):
        f.download_program(INC_U64)
        f.pwrite(i.to_bytes(8, "little"), 0)
    _run_threads(24, lambda i: [files[i].fsync() for _ in range(20)])  # every engine gets work
    for i, f in enumerate(files):
        assert f.pread(8, 0) == (i + 20).to_bytes(8, "little")
        f.close()


def test_engines_without_vectors_are_polled():
    # A transport whose MSI-X table has only the 8 DMA vectors plus one: engine 0 interrupts,
    # engines 1..3 are polled through EHCMDCTRL.
    from hermes.device import HermesDevice
    from hermes.transport.inproc import InProcessTransport

    class NineVectors(InProcessTransport):
        def __init__(self, device: HermesDevice):
            super().__init__(device, owns_device=True)
            self.num_vectors = 9

    drv = hd.attach(NineVectors(HermesDevice(engines=4)))
    try:
        assert drv.irq.engine_vectors == [8, None, None, None]
        files = [drv.open() for _ in range(4)]
        for f in files:
            f.download_program(INC_U64)
            f.pwrite(bytes(8), 0)
        _run_threads(4, lambda i: [files[i].fsync() for _ in range(25)])
        assert all(f.pread(8, 0) == (25).to_bytes(8, "little") for f in files)
    finally:
        drv.close()


def test_interface_version_2(make_driver):
    drv = make_driver(interface_version=2, data_slots=4)
    assert drv.geometry.version == 2
    assert drv.geometry.data_slot_offset == 16 * MiB
    with drv.open() as f:
        f.download_program(INC_U64)
        f.pwrite(bytes(8), 0)
        f.fsync()
        assert f.pread(8, 0) == (1).to_bytes(8, "little")


class _NoDevice(Transport):
    """What a host sees where no Hermes device answers: every register reads the same value.

    Not a stand-in for our device: the probe must refuse exactly this situation.
    """

    def __init__(self, value: int):
        self.value = value
        self.closed = False

    def read(self, bar: int, offset: int, size: int) -> int:
        return self.value & ((1 << (8 * size)) - 1)

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        pass

    def dma_alloc(self, size: int) -> DmaBuffer:
        raise OSError(errno.ENOMEM, "no DMA here")

    def irq_wait(self, vector: int, timeout: float | None) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def test_attach_rejects_other_objects():
    with pytest.raises(TypeError, match="Transport or a HermesDevice"):
        hd.attach(object())


@pytest.mark.parametrize("value", [0, 3, 0xFFFFFFFF])
def test_probe_refuses_unknown_interface_versions(value):
    t = _NoDevice(value)
    exc = expect_errno(errno.ENODEV, hd.attach, t)
    assert "interface version" in exc.strerror


def test_invalid_slot_ids(hermes_device):
    r = hermes_device.run_program(200, 0, 8)
    assert r.status == regs.STATUS_INVALID_PROG_SLOT
    with hermes_device.open() as f:
        f.download_program(INC_U64)
        r = hermes_device.run_program(f.program_slot, 16, len(INC_U64))
        assert r.status == regs.STATUS_INVALID_DATA_SLOT
        r = hermes_device.run_program(f.program_slot, 255, len(INC_U64))
        assert r.status == regs.STATUS_INVALID_DATA_SLOT
    expect_errno(errno.EBADFD, hermes_device.release_slot, regs.SLOT_PROGRAM, 16)
    expect_errno(errno.EBADFD, hermes_device.release_slot, regs.SLOT_DATA, 200)


def test_run_on_host_allocated_slots(hermes_device):
    """The published Linux driver's style: it picks slot ids itself, DMAs into them and sends
    only Run Program (never Request Slot)."""
    g = hermes_device.geometry
    hermes_device.dma_write(g.program_slot(7), INC_U64)
    hermes_device.dma_write(g.data_slot(9), (41).to_bytes(8, "little"))
    r = hermes_device.run_program(7, 9, len(INC_U64))
    assert (r.status, r.value) == (regs.STATUS_SUCCESS, 0)
    assert hermes_device.dma_read(g.data_slot(9), 8) == (42).to_bytes(8, "little")
    # The project's files, allocating through the device, are never given those slots.
    files = [hermes_device.open() for _ in range(15)]
    try:
        for f in files:
            f.download_program(INC_U64)
            f.pwrite(bytes(8), 0)
        assert 7 not in {f.program_slot for f in files} and 9 not in {f.data_slot for f in files}
        extra = hermes_device.open()
        expect_errno(errno.ENOSPC, extra.download_program, INC_U64)
        extra.close()
    finally:
        for f in files:
            f.close()
    hermes_device.release_slot(regs.SLOT_PROGRAM, 7)   # a host-owned slot may be given back
    hermes_device.release_slot(regs.SLOT_DATA, 9)
    expect_errno(errno.EBADFD, hermes_device.release_slot, regs.SLOT_DATA, 9)


def test_release_of_free_slot(hermes_device):
    slot = hermes_device.request_slot(regs.SLOT_DATA)
    hermes_device.release_slot(regs.SLOT_DATA, slot)
    exc = expect_errno(errno.EBADFD, hermes_device.release_slot, regs.SLOT_DATA, slot)
    assert exc.response.status == regs.STATUS_INVALID_DATA_SLOT
    exc = expect_errno(errno.EBADFD, hermes_device.release_slot, regs.SLOT_PROGRAM, 3)
    assert exc.response.status == regs.STATUS_INVALID_PROG_SLOT


def test_invalid_slot_type_and_opcode(hermes_device):
    r = hermes_device.command(regs.CMD_REQUEST_SLOT, bytes([7]))
    assert r.status == regs.STATUS_INVALID_OPCODE
    expect_errno(errno.EINVAL, hermes_device.request_slot, 7)
    r = hermes_device.command(0x42)
    assert r.status == regs.STATUS_INVALID_OPCODE


def test_command_ids_are_echoed(hermes_device):
    for cid in (0, 1, 0x1234, 0xFFFF):
        r = hermes_device.command(regs.CMD_REQUEST_SLOT, bytes([regs.SLOT_DATA]), cmd_id=cid)
        assert r.cmd_id == cid and r.status == 0
        hermes_device.release_slot(regs.SLOT_DATA, r.value)


def test_slots_exhausted_for_data(make_driver):
    drv = make_driver(data_slots=2)
    files = [drv.open() for _ in range(3)]
    for f in files:
        f.download_program(INC_U64)
    files[0].pwrite(b"a", 0)
    files[1].pwrite(b"b", 0)
    exc = expect_errno(errno.ENOSPC, files[2].pwrite, b"c", 0)
    assert "data slot" in exc.strerror
    files[0].close()
    assert files[2].pwrite(b"c", 0) == 1


def test_close_releases_slots(hermes_device):
    for _ in range(3):  # three rounds of all 16 slots: nothing leaks
        files = [hermes_device.open() for _ in range(16)]
        for f in files:
            f.download_program(INC_U64)
            f.pwrite(b"x", 0)
        for f in files:
            f.close()
    expect_errno(errno.EBADF, files[0].pread, 1, 0)
    files[0].close()  # idempotent


def test_driver_close_closes_files(make_driver):
    drv = make_driver()
    f = drv.open()
    f.download_program(INC_U64)
    drv.close()
    assert f.closed
    expect_errno(errno.ENODEV, drv.open)


def test_new_owner_does_not_see_old_data(hermes_device):
    # The device zeroes a slot when it allocates it, so nothing leaks between files.
    with hermes_device.open() as a:
        a.download_program(INC_U64)
        a.pwrite(b"SECRET" * 100, 0)
    with hermes_device.open() as b:
        b.download_program(INC_U64)
        b.pwrite(b"x", 0)
        assert b.pread(600, 0) == b"x" + bytes(599)


def test_program_longer_than_slot(make_driver):
    drv = make_driver(program_slot_size=4096)
    with drv.open() as f:
        expect_errno(errno.EINVAL, f.download_program, PROG_4096 + bytes(8))
        assert f.program_slot is None  # nothing was allocated for a refused program
        assert f.download_program(PROG_4096) == 0  # exactly one slot is fine
        f.pwrite(bytes(8), 0)
        f.fsync()


def test_empty_program_refused(hermes_file):
    expect_errno(errno.EINVAL, hermes_file.download_program, b"")


def test_program_can_be_replaced(hermes_file):
    hermes_file.download_program(PROG_4096)
    slot = hermes_file.program_slot
    hermes_file.download_program(INC_U64)  # shorter: the run must use the new length
    assert hermes_file.program_slot == slot
    hermes_file.pwrite(bytes(8), 0)
    hermes_file.fsync()
    assert hermes_file.pread(8, 0) == (1).to_bytes(8, "little")


def test_dma_error_status_is_eio(hermes_device):
    # A chain whose host address is not DMA memory: the device stops it with an error bit, and
    # the driver reports EIO naming it; the channel stays usable.
    pool = hermes_device.dma.h2c
    ch = pool.acquire()
    try:
        exc = expect_errno(errno.EIO, ch.transfer, 0xDEAD_0000_0000, 0, 64, 5.0)
        assert "source not readable" in exc.strerror
        c2h = hermes_device.dma.c2h.acquire()
        try:
            exc = expect_errno(errno.EIO, c2h.transfer, 0xDEAD_0000_0000, 0, 64, 5.0)
            assert "destination not writable" in exc.strerror
        finally:
            hermes_device.dma.c2h.release(c2h)
    finally:
        pool.release(ch)
    assert hermes_device.dma_write(0, b"still works") == 11
    assert hermes_device.dma_read(0, 11) == b"still works"


# --- faults ---------------------------------------------------------------------------------------
#: Stores 0xAA at data[0], then stores past the end of the data slot (r1 + r2).
FAULTING = assemble_program("""
    stb [r1], 0xaa
    add r1, r2
    stb [r1], 1
    mov r0, 0
    exit
""").to_bytes()


def test_faulting_program_leaves_state_intact(hermes_device):
    with hermes_device.open() as bystander:
        bystander.download_program(INC_U64)
        bystander.pwrite((10).to_bytes(8, "little"), 0)
        with hermes_device.open() as f:
            f.download_program(FAULTING)
            f.pwrite(pattern(64), 0)
            slots = (f.program_slot, f.data_slot)
            exc = expect_errno(errno.ENOEXEC, f.fsync)
            assert exc.response.status == regs.STATUS_EBPF_ERROR
            assert exc.response.error_kind == "out_of_bounds"
            assert exc.response.error_detail == 2  # the pc of the faulting store
            assert "out of bounds" in exc.strerror and "pc 2" in exc.strerror
            assert (f.program_slot, f.data_slot) == slots
            # Stores before the fault stay (the device has no rollback); the rest is untouched.
            assert f.pread(64, 0) == b"\xaa" + pattern(64)[1:]
            f.download_program(INC_U64)  # the file keeps working
            f.pwrite(bytes(8), 0)
            f.fsync()
            assert f.pread(8, 0) == (1).to_bytes(8, "little")
        bystander.fsync()
        assert bystander.pread(8, 0) == (11).to_bytes(8, "little")


def test_looping_program_times_out_and_engine_recovers(make_driver):
    # One engine, an interpreter budget of ~1 s of looping (at 50 M instructions/s), a driver
    # timeout of 50 ms.
    drv = make_driver(engines=1, executor="interp", budget=50_000_000, timeout=0.05)
    loop = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").to_bytes()
    with drv.open() as f:
        f.download_program(loop)
        f.pwrite(b"x", 0)
        t0 = time.monotonic()
        exc = expect_errno(errno.ETIMEDOUT, f.fsync)
        assert time.monotonic() - t0 < 1.0  # a timeout, not a hang until the budget ends
        assert "did not complete" in exc.strerror
    drv.timeout = 30.0
    with drv.open() as g:  # waits until the engine finished the runaway run, then works
        g.download_program(INC_U64)
        g.pwrite((5).to_bytes(8, "little"), 0)
        g.fsync()  # the late completion of the old run is never taken for this one
        assert g.pread(8, 0) == (6).to_bytes(8, "little")
    # The first file closed while its engine was wedged: its slots were released later, not lost.
    files = [drv.open() for _ in range(16)]
    for f in files:
        f.download_program(INC_U64)
        f.pwrite(b"x", 0)
    for f in files:
        f.close()


def test_budget_exhausted_is_enoexec(make_driver):
    drv = make_driver(budget=1000)
    loop = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").to_bytes()
    with drv.open() as f:
        f.download_program(loop)
        f.pwrite(b"x", 0)
        exc = expect_errno(errno.ENOEXEC, f.fsync)
        assert exc.response.error_kind == "budget"


# --- concurrency ----------------------------------------------------------------------------------
#: data[8..16] = data[0..8] * 3 + 1 ; returns 0.
AFFINE = assemble_program("""
    ldxdw r2, [r1]
    mul r2, 3
    add r2, 1
    stxdw [r1+8], r2
    mov r0, 0
    exit
""").to_bytes()


def _run_threads(n: int, target) -> None:
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _sixteen_sessions(hermes_device, cycles: int) -> None:
    def session(i: int) -> None:
        with hermes_device.open() as f:
            f.download_program(AFFINE)
            for k in range(cycles):
                x = (i << 32) | k
                assert f.pwrite(struct.pack("<QQ", x, 0), 0) == 16
                f.fsync()
                got = struct.unpack("<QQ", f.pread(16, 0))
                assert got == (x, (x * 3 + 1) & (2**64 - 1)), (i, k, got)

    _run_threads(16, session)


@pytest.mark.slow
def test_sixteen_sessions_no_cross_talk(hermes_device):
    """16 threads, 250 runs each, interleaved on the device's engines."""
    _sixteen_sessions(hermes_device, 250)


@pytest.mark.volume
def test_sixteen_sessions_no_cross_talk_long(hermes_device):
    """The same with 1000 runs a thread (``./dev volume``)."""
    _sixteen_sessions(hermes_device, 1000)


def test_concurrent_open_close_churn(make_driver):
    drv = make_driver(program_slots=4, data_slots=4)

    def churn(i: int) -> None:
        for k in range(40):
            while True:
                try:
                    f = drv.open()
                    f.download_program(AFFINE)
                    f.pwrite(struct.pack("<Q", i * 1000 + k), 0)
                    break
                except OSError as exc:  # 8 threads share 4 slots: ENOSPC means try again
                    assert exc.errno == errno.ENOSPC
                    f.close()
                    time.sleep(0.001)
            with f:
                f.fsync()
                assert f.pread(8, 8) == struct.pack("<Q", (i * 1000 + k) * 3 + 1)

    _run_threads(8, churn)
    files = [drv.open() for _ in range(4)]  # every slot came back
    for f in files:
        f.download_program(INC_U64)
        f.pwrite(b"z", 0)
        f.close()


def test_concurrent_dma(make_driver):
    drv = make_driver(dma_chunk=4096)
    base = drv.geometry.data_slot_offset

    def mover(i: int) -> None:
        data = pattern(256 << 10, i)
        off = base + i * MiB
        for _ in range(5):
            drv.dma_write(off, data)
            assert drv.dma_read(off, len(data)) == data

    _run_threads(8, mover)

"""The upstream Hermes driver test cases, ported to hermes.driver (slot size 1 MiB, 16 slots)."""
from __future__ import annotations

import errno
import os
import struct

import pytest

import hermes.driver as hd
from hermes.driver import HERMES_DOWNLOAD_PROG_IOCTL, RWF_DSYNC, RWF_NOWAIT, RWF_SYNC, DownloadProg
from hermes.engine.asm import assemble_program

MiB = 1 << 20
#: The upstream tests' 4096-byte program: here a valid one (511 x "mov r0, 0", exit).
PROG_4096 = assemble_program("mov r0, 0\n" * 511 + "exit").to_bytes()
#: Adds 1 to the u64 at the start of the data slot and returns 0 (proves a run happened).
INC_U64 = assemble_program("ldxdw r2, [r1]\nadd r2, 1\nstxdw [r1], r2\nmov r0, 0\nexit").to_bytes()
INVALID_PROG = bytes.fromhex("ffffffffffffffff")


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic non-repeating-ish bytes, so misplaced copies are caught."""
    return bytes((i * 31 + seed + (i >> 8)) & 0xFF for i in range(n))


def expect_errno(code: int, fn, *args, **kwargs) -> OSError:
    """Call ``fn`` and check it fails with ``OSError(code)``; returns the exception."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, (errno.errorcode.get(info.value.errno), info.value)
    assert info.value.strerror  # every failure names what was wrong
    return info.value


# --- download -----------------------------------------------------------------------------------
def test_ioctl_number_matches_the_c_definition():
    # _IOW('H', 0x50, struct {u32 len; u64 prog; u32 flags}) with the struct's 24 bytes.
    size = struct.calcsize("=I4xQI4x")
    assert size == 24
    assert HERMES_DOWNLOAD_PROG_IOCTL == (1 << 30) | (size << 16) | (ord("H") << 8) | 0x50


def test_send_program(hermes_file):
    assert hermes_file.ioctl(HERMES_DOWNLOAD_PROG_IOCTL, DownloadProg(PROG_4096)) == 0


def test_large_program(hermes_file):
    expect_errno(errno.EINVAL, hermes_file.ioctl, HERMES_DOWNLOAD_PROG_IOCTL,
                 DownloadProg(bytes(2 * MiB)))


def test_too_many_programs(hermes_device):
    files = [hermes_device.open() for _ in range(17)]
    for f in files[:16]:
        assert f.download_program(PROG_4096) == 0
    exc = expect_errno(errno.ENOSPC, files[16].download_program, PROG_4096)
    assert "program slot" in exc.strerror
    files[0].close()  # closing gives the slot back
    assert files[16].download_program(PROG_4096) == 0


def test_invalid_flags(hermes_file):
    expect_errno(errno.EINVAL, hermes_file.ioctl, HERMES_DOWNLOAD_PROG_IOCTL,
                 DownloadProg(PROG_4096, flags=1))


def test_invalid_ioctl_num(hermes_file):
    expect_errno(errno.EINVAL, hermes_file.ioctl, 0, DownloadProg(PROG_4096))


def test_ioctl_wrong_argument_type(hermes_file):
    expect_errno(errno.EINVAL, hermes_file.ioctl, HERMES_DOWNLOAD_PROG_IOCTL, PROG_4096)


# --- write / read -------------------------------------------------------------------------------
@pytest.fixture
def prog_file(hermes_file):
    """A file with the 4096-byte program downloaded."""
    hermes_file.download_program(PROG_4096)
    return hermes_file


def test_write_read_zero(prog_file):
    assert prog_file.pwrite(b"", 0) == 0
    assert prog_file.pread(0, 0) == b""


@pytest.mark.parametrize("size", [256, 4096, MiB], ids=["small", "medium", "large"])
def test_write_read(prog_file, size):
    data = pattern(size)
    assert prog_file.pwrite(data, 0) == size
    assert prog_file.pread(size, 0) == data


def test_write_offset(prog_file):
    data = pattern(256, 7)
    assert prog_file.pwrite(data, 1024) == 256
    assert prog_file.pread(256, 1024) == data


def test_read_offset(prog_file):
    data = pattern(2048, 3)
    assert prog_file.pwrite(data, 0) == 2048
    assert prog_file.pread(256, 1024) == data[1024:1280]


def test_write_too_large(prog_file):
    data = pattern(2 * MiB)
    assert prog_file.pwrite(data, 0) == MiB
    assert prog_file.pread(MiB, 0) == data[:MiB]


def test_read_too_large(prog_file):
    prog_file.pwrite(pattern(256), 0)
    out = prog_file.pread(2 * MiB, 0)
    assert len(out) == MiB
    assert out[:256] == pattern(256)


def test_write_before_prog(hermes_file):
    exc = expect_errno(errno.EBADFD, hermes_file.pwrite, pattern(256), 0)
    assert "program" in exc.strerror


def test_read_before_prog(hermes_file):
    expect_errno(errno.EBADFD, hermes_file.pread, 256, 0)


def test_read_before_write(prog_file):
    expect_errno(errno.ENODATA, prog_file.pread, 256, 0)


def test_write_large_offset(prog_file):
    assert prog_file.pwrite(pattern(256), MiB) == 0


def test_read_large_offset(prog_file):
    prog_file.pwrite(pattern(256), 0)
    assert prog_file.pread(256, MiB) == b""


def test_negative_offsets(prog_file):
    prog_file.pwrite(b"x", 0)
    expect_errno(errno.EINVAL, prog_file.pwrite, b"x", -5)
    expect_errno(errno.EINVAL, prog_file.pread, 1, -5)
    expect_errno(errno.EINVAL, prog_file.pread, -1, 0)


def test_write_truncated_at_slot_end(prog_file):
    assert prog_file.pwrite(pattern(300), MiB - 100) == 100
    assert prog_file.pread(300, MiB - 100) == pattern(100)


def test_file_position(prog_file):
    assert prog_file.write(b"abc") == 3
    assert prog_file.write(b"def") == 3
    assert prog_file.tell() == 6
    assert prog_file.pread(6, 0) == b"abcdef"
    prog_file.seek(0)
    assert prog_file.read(2) == b"ab"
    assert prog_file.read(4) == b"cdef"
    assert prog_file.seek(-1, os.SEEK_END) == MiB - 1
    assert prog_file.read(10) == b"\0"
    assert prog_file.read(10) == b""  # at the slot's end
    expect_errno(errno.EINVAL, prog_file.seek, -1)


# --- running ------------------------------------------------------------------------------------
@pytest.fixture
def inc_file(hermes_file):
    hermes_file.download_program(INC_U64)
    return hermes_file


def test_pwritev_sync_then_preadv(inc_file):
    data = bytearray(pattern(256))
    data[:8] = (41).to_bytes(8, "little")
    assert inc_file.pwritev([data], 0, RWF_SYNC) == 256
    out = bytearray(256)
    assert inc_file.preadv([out], 0) == 256
    assert int.from_bytes(out[:8], "little") == 42  # the program ran, with r0 = 0
    assert out[8:] == data[8:]
    assert inc_file.last_response.status == 0 and inc_file.last_response.value == 0


def test_write_read_then_fsync(inc_file):
    assert inc_file.pwrite(bytes(256), 0) == 256
    assert inc_file.pread(256, 0) == bytes(256)
    assert inc_file.fsync() is None
    assert inc_file.pread(8, 0) == (1).to_bytes(8, "little")


def test_fsync_fresh_file(hermes_file):
    expect_errno(errno.EBADFD, hermes_file.fsync)


def test_fsync_program_only(inc_file):
    expect_errno(errno.EBADFD, inc_file.fsync)


def test_rwf_sync_before_program(hermes_file):
    expect_errno(errno.EBADFD, hermes_file.pwritev, [b"x"], 0, RWF_SYNC)


def test_invalid_program(hermes_file):
    hermes_file.download_program(INVALID_PROG)
    hermes_file.pwrite(pattern(256), 0)
    exc = expect_errno(errno.ENOEXEC, hermes_file.fsync)
    assert exc.response.status == 0x05
    assert exc.response.error_kind == "load"
    assert "load" in exc.strerror


def test_nonzero_r0_fails_fsync_but_not_run(hermes_file):
    hermes_file.download_program(assemble_program("mov r0, 7\nexit").to_bytes())
    hermes_file.pwrite(b"x", 0)
    assert hermes_file.run() == 7  # the library's view: r0 is a result
    exc = expect_errno(errno.ENOEXEC, hermes_file.fsync)  # the file interface's: a failure
    assert "r0" in exc.strerror
    expect_errno(errno.ENOEXEC, hermes_file.pwritev, [b"y"], 0, RWF_SYNC)
    assert hermes_file.pread(1, 0) == b"y"  # RWF_SYNC wrote before running


def test_clang_increment_program(hermes_file, tmp_path):
    from hermes.engine import clang
    if clang.find_clang() is None:
        pytest.skip(f"clang is not installed; {clang.INSTALL_HINT}")
    obj = clang.compile_c(os.path.join(os.path.dirname(__file__), "data", "increment.c"),
                          tmp_path / "increment.o")
    elf = obj.read_bytes()
    assert elf[:4] == b"\x7fELF"
    assert hermes_file.download_program(elf) == 0  # the whole object is the program
    assert hermes_file.pwrite(struct.pack("<3I", 0, 1, 2), 0) == 12
    hermes_file.fsync()
    assert struct.unpack("<3I", hermes_file.pread(12, 0)) == (1, 2, 3)


# --- vectored I/O -------------------------------------------------------------------------------
def test_pwritev_preadv_matching_buffers(prog_file):
    a, b = pattern(256, 1), pattern(4096, 2)
    assert prog_file.pwritev([a, b], 0) == 256 + 4096
    ra, rb = bytearray(256), bytearray(4096)
    assert prog_file.preadv([ra, rb], 0) == 256 + 4096
    assert (ra, rb) == (a, b)


def test_one_write_buffer_into_four_read_buffers(prog_file):
    data = pattern(4096, 5)
    assert prog_file.pwritev([data], 0) == 4096
    bufs = [bytearray(1024) for _ in range(4)]
    assert prog_file.preadv(bufs, 0) == 4096
    assert b"".join(bufs) == data


def test_two_write_buffers_into_one_read_buffer(prog_file):
    a, b = pattern(1000, 1), pattern(3000, 9)
    assert prog_file.pwritev([a, memoryview(b)], 512) == 4000
    out = bytearray(4000)
    assert prog_file.preadv([out], 512) == 4000
    assert out == a + b


def test_preadv_short_at_slot_end(prog_file):
    prog_file.pwrite(pattern(256), MiB - 256)
    bufs = [bytearray(200), bytearray(200)]
    assert prog_file.preadv(bufs, MiB - 256) == 256
    assert bufs[0] + bufs[1][:56] == pattern(256)


def test_rwf_dsync_rejected(prog_file):
    expect_errno(errno.EOPNOTSUPP, prog_file.pwritev, [pattern(256)], 0, RWF_DSYNC)


def test_rwf_nowait_rejected(prog_file):
    prog_file.pwrite(pattern(256), 0)
    expect_errno(errno.EOPNOTSUPP, prog_file.preadv, [bytearray(256)], 0, RWF_NOWAIT)


@pytest.mark.parametrize("flag", [hd.RWF_HIPRI, hd.RWF_APPEND, 0x100])
def test_other_rwf_flags_rejected(prog_file, flag):
    expect_errno(errno.EOPNOTSUPP, prog_file.pwritev, [b"x"], 0, flag)
    expect_errno(errno.EOPNOTSUPP, prog_file.preadv, [bytearray(1)], 0, flag)


def test_vectored_offsets(prog_file):
    prog_file.pwrite(b"x", 0)
    expect_errno(errno.EOPNOTSUPP, prog_file.pwritev, [b"x"], -1)
    expect_errno(errno.EOPNOTSUPP, prog_file.preadv, [bytearray(1)], -1)
    expect_errno(errno.EINVAL, prog_file.pwritev, [b"x"], -2)
    expect_errno(errno.EINVAL, prog_file.preadv, [bytearray(1)], -2)


def test_preadv_needs_writable_buffers(prog_file):
    prog_file.pwrite(b"x", 0)
    expect_errno(errno.EFAULT, prog_file.preadv, [b"immutable"], 0)


# --- raw DMA ------------------------------------------------------------------------------------
DEVICE_MEMORY = 0x10000000


@pytest.fixture
def big_device(make_driver):
    """A device whose BAR4 reaches past 0x10000000 (16 program slots of 16 MiB: the data slots
    start exactly there), as the upstream raw DMA tests assume."""
    drv = make_driver(program_slot_size=16 * MiB, data_slots=2)
    assert drv.geometry.data_slot_offset == DEVICE_MEMORY
    return drv


@pytest.mark.parametrize("size", [256, 16 << 10, MiB], ids=["256B", "16KiB", "1MiB"])
def test_raw_dma(big_device, size):
    data = pattern(size, size & 0xFF)
    assert big_device.dma_write(DEVICE_MEMORY, data) == size
    assert big_device.dma_read(DEVICE_MEMORY, size) == data


@pytest.mark.parametrize("chunk", [4096, 512])
def test_raw_dma_page_descriptors(make_driver, chunk):
    # One descriptor per page (or smaller), so a 1 MiB transfer is a chain of hundreds or
    # thousands of descriptors that cross page boundaries, split over several chains.
    drv = make_driver(dma_chunk=chunk, data_slots=1, program_slots=1)
    data = pattern(MiB, 11)
    off = drv.geometry.data_slot_offset
    assert drv.dma_write(off, data) == MiB
    assert drv.dma_read(off, MiB) == data
    assert drv.dma_read(off + 100, 5000) == data[100:5100]  # unaligned start and length


def test_raw_dma_zero_copy(hermes_device):
    src = hermes_device.dma_alloc(64 << 10)
    dst = hermes_device.dma_alloc(64 << 10)
    try:
        src.view[:] = pattern(64 << 10, 4)
        off = hermes_device.geometry.data_slot_offset + 4096
        assert hermes_device.dma_write(off, src) == 64 << 10
        assert hermes_device.dma_read_into(off, dst) == 64 << 10
        assert dst.view.tobytes() == src.view.tobytes()
    finally:
        src.free()
        dst.free()


def test_raw_dma_bounds(hermes_device):
    end = hermes_device.geometry.bar4_size
    expect_errno(errno.EINVAL, hermes_device.dma_write, end - 4, b"12345678")
    expect_errno(errno.EINVAL, hermes_device.dma_read, -1, 4)
    assert hermes_device.dma_write(end - 8, b"12345678") == 8
    assert hermes_device.dma_read(end - 8, 8) == b"12345678"

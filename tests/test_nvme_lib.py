"""The library on the NVMe CP/SLM controller: the nvme-emu backend, and the passthrough backend's
ioctl layout (its behaviour is checked in the VM guest, where a kernel owns the controller)."""
from __future__ import annotations

import ctypes
import errno

import pytest

import hermes
from hermes.driver.nvme import passthru
from hermes.engine import Program
from hermes.engine.asm import assemble_program
from tests.test_nvme_cp import INC_RANGE

INC = Program.from_bytes(INC_RANGE)
#: r0 = the window's first 8 bytes (the input's bytes and zeros past it).
FIRST8 = assemble_program("ldxdw r0, [r1+0]\nexit")


@pytest.fixture
def dev():
    d = hermes.open("nvme-emu", data_slot_size=64 << 10)
    yield d
    d.close()


def test_results_match_the_cpu_backend(dev):
    cpu = hermes.open("cpu")
    try:
        for data, kw in ((b"hello", {}), (b"abc", {"size": 16, "read": 16}), (b"", {})):
            got, want = dev.run(INC, data, **kw), cpu.run(INC, data, **kw)
            assert (got.return_value, bytes(got.data), got.instructions) == (
                want.return_value, bytes(want.data), want.instructions)
    finally:
        cpu.close()


def test_a_new_session_never_sees_an_earlier_sessions_bytes(dev):
    with dev.session() as s:
        s.load(INC)
        s.write(b"\xff" * 64)
        s.run()
    with dev.session() as s:
        s.load(FIRST8)
        s.write(b"\x01", offset=0)
        assert s.run(size=8).return_value == 1


def test_unaligned_writes_and_reads_keep_the_bytes_around_them(dev):
    with dev.session() as s:
        s.load(INC)
        s.write(b"0123456789")
        s.write(b"ab", offset=3)
        assert s.read(10) == b"012ab56789"
        assert s.read(3, offset=5) == b"567"


def test_sessions_are_bounded_by_program_indexes_and_windows():
    with hermes.open("nvme-emu", data_slot_size=4 << 20, memory_size=8 << 20) as d:
        assert d.info()["sessions"] == 2
        a, b = d.session(), d.session()
        with pytest.raises(hermes.SlotsExhausted):
            d.session()
        a.close()
        d.session().close()
        b.close()


def test_bad_options_and_addresses():
    with pytest.raises(hermes.UsageError, match="unknown nvme-emu options: engines"):
        hermes.open("nvme-emu", engines=2)
    with pytest.raises(hermes.UsageError, match="data_slot_size"):
        hermes.open("nvme-emu", data_slot_size=32 << 20, memory_size=16 << 20)
    with pytest.raises(hermes.DeviceError) as info:
        hermes.open("nvme")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(hermes.DeviceError) as info:
        hermes.open("nvme:/dev/sda")
    assert info.value.errno == errno.EINVAL and "/dev/ngXnY" in str(info.value)
    with pytest.raises(hermes.DeviceError) as info:
        hermes.open("nvme:/dev/ng97n1")
    assert info.value.errno == errno.ENOENT and "/dev/ng97n1" in str(info.value)
    assert passthru.controller_device("/dev/ng12n3") == "/dev/nvme12"


def test_passthrough_ioctl_layout_is_linux_nvme_ioctl_h():
    S = passthru.nvme_passthru_cmd64
    assert ctypes.sizeof(S) == 80
    offsets = {name: getattr(S, name).offset for name, _ in S._fields_}
    assert offsets == {"opcode": 0, "flags": 1, "rsvd1": 2, "nsid": 4, "cdw2": 8, "cdw3": 12,
                       "metadata": 16, "addr": 24, "metadata_len": 32, "data_len": 36,
                       "cdw10": 40, "cdw11": 44, "cdw12": 48, "cdw13": 52, "cdw14": 56,
                       "cdw15": 60, "timeout_ms": 64, "rsvd2": 68, "result": 72}
    assert passthru.NVME_IOCTL_ID == 0x4E40
    assert passthru.NVME_IOCTL_ADMIN64_CMD == 0xC0504E47
    assert passthru.NVME_IOCTL_IO64_CMD == 0xC0504E48


def test_memory_regions_share_the_namespace_with_session_windows():
    with hermes.open("nvme-emu", data_slot_size=1 << 20, memory_size=4 << 20) as d:
        s = d.session()                                  # 1 MiB window
        big = d.memory(3 << 20)                          # the rest
        with pytest.raises(hermes.SlotsExhausted, match="no free 8-byte region"):
            d.memory(8)
        with pytest.raises(hermes.SlotsExhausted, match="no room for another"):
            d.session()
        big.close()
        small = d.memory(100)                            # rounded up to 8, first fit
        assert small.start == 1 << 20
        d.session().close()
        s.close()
        small.close()


def test_memory_in_a_second_namespace_and_ranges_across_namespaces():
    with hermes.open("nvme-emu", memory_size=[2 << 20, 1 << 16]) as d:
        first = d.info()["memory_nsid"]
        with pytest.raises(hermes.UsageError, match="not a memory namespace"):
            d.memory(8, nsid=99)
        a, b = d.memory(8), d.memory(8, nsid=first + 1)
        assert (a.nsid, b.nsid) == (first, first + 1)
        a.write(struct_u64(40))
        b.write(struct_u64(2))
        add = assemble_program("ldxdw r0, [r1]\nldxdw r3, [r1+8]\nadd r0, r3\nexit")
        with d.session() as s:
            s.load(add)
            assert s.run(ranges=[a, b]).return_value == 42


def test_the_controller_reads_ranges_itself(dev):
    """The session's window takes no part in a run over ranges (no copy through it)."""
    m = dev.memory(16)
    m.write(b"B" * 16)
    with dev.session() as s:
        s.load(FIRST8)
        s.write(b"A" * 16)
        s.run()
        assert s.run(ranges=[m]).return_value == int.from_bytes(b"B" * 8, "little")
        s.write(b"C")
        assert s.read(16) == b"C" + b"A" * 15


def struct_u64(value: int) -> bytes:
    return value.to_bytes(8, "little")

"""The Hermes device model driven through its registers: BAR0 map, commands, handshake, engines."""
from __future__ import annotations

import mmap
import struct
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from hermes import regs as R
from hermes.device import HermesDevice
from hermes.engine.asm import assemble_program

IRQ = R.xdma_offset(R.XDMA_TARGET_IRQ, 0, 0)
RET7 = assemble_program("mov r0, 7\nexit").code
#: Stores 0x1122 at data[8] then faults reading 2 MiB past r1 (pc 4).
FAULTS = assemble_program("mov r3, 0x1122\nstxdw [r1+8], r3\nlddw r3, 0x200000\nadd r1, r3\n"
                          "ldxdw r0, [r1]\nexit").code


def spin(n: int) -> bytes:
    """A program looping ``n`` times (about 2n instructions), returning n."""
    return assemble_program(f"mov r0, 0\nloop:\nadd r0, 1\njlt r0, {n}, loop\nexit").code


# --- a register-level mini driver (the real one lives in hermes.driver; tests must not use it) ---
class Regs:
    """Issues commands through BAR0 exactly as a driver would, waiting on engine interrupts."""

    def __init__(self, dev: HermesDevice, *, enable_irqs: bool = True):
        self.dev = dev
        self.cid = 0
        self.irqs: list[int] = []
        self.events = [threading.Semaphore(0) for _ in range(R.MSIX_VECTORS)]
        dev.set_irq_handler(self._irq)
        if enable_irqs:
            self.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK, 4, 0xFFFF_FFFF)

    def _irq(self, vector: int) -> None:
        self.irqs.append(vector)
        self.events[vector].release()

    def bar_read(self, bar: int, off: int, size: int) -> int:
        return self.dev.bar_read(bar, off, size)

    def bar_write(self, bar: int, off: int, size: int, value: int) -> None:
        self.dev.bar_write(bar, off, size, value)

    def ctrl(self, n: int) -> tuple[int, int]:
        v = self.bar_read(0, R.cmdctrl(n), 2)
        return v & 0xFF, v >> 8

    def start(self, n: int, opcode: int, payload: bytes = b"", cid: int | None = None) -> int:
        """Write the request and EXEC; returns the command id."""
        if cid is None:
            self.cid = (self.cid + 1) & 0xFFFF
            cid = self.cid
        req = (bytes([opcode, 0]) + cid.to_bytes(2, "little") + bytes(4) + payload).ljust(32, b"\0")
        for i in range(0, 32, 8):
            self.bar_write(0, R.cmdreq(n) + i, 8, int.from_bytes(req[i:i + 8], "little"))
        self.bar_write(0, R.cmdctrl(n) + R.EHCMDEXEC, 1, 1)
        return cid

    def finish(self, n: int, timeout: float = 10) -> tuple[int, int, int]:
        """Wait for engine n's vector; returns (command id, status, value)."""
        assert self.events[R.engine_vector(n)].acquire(timeout=timeout), "no completion interrupt"
        assert self.ctrl(n) == (0, 1)
        lo = self.bar_read(0, R.cmdres(n), 8)
        return lo & 0xFFFF, (lo >> 16) & 0xFF, self.bar_read(0, R.cmdres(n) + 8, 8)

    def command(self, opcode: int, payload: bytes = b"", n: int = 0) -> tuple[int, int]:
        cid = self.start(n, opcode, payload)
        rcid, status, value = self.finish(n)
        assert rcid == cid
        return status, value

    def request(self, kind: int) -> tuple[int, int]:
        return self.command(R.CMD_REQUEST_SLOT, bytes([kind]))

    def release(self, kind: int, slot: int) -> int:
        return self.command(R.CMD_RELEASE_SLOT, bytes([kind, slot]))[0]

    def run_payload(self, pslot: int, dslot: int, length: int) -> bytes:
        return bytes([pslot, dslot, 0, 0]) + struct.pack("<I", length)

    def run(self, pslot: int, dslot: int, length: int, n: int = 0) -> tuple[int, int]:
        return self.command(R.CMD_RUN_PROGRAM, self.run_payload(pslot, dslot, length), n)

    def load(self, code: bytes, data: bytes = b"") -> tuple[int, int]:
        """Allocate a program and a data slot and fill them (BAR4 writes stand in for DMA)."""
        st, p = self.request(R.SLOT_PROGRAM)
        assert st == 0
        st, d = self.request(R.SLOT_DATA)
        assert st == 0
        self.dev.program_slot(p)[:len(code)] = code
        self.dev.data_slot(d)[:len(data)] = data
        return p, d


@pytest.fixture
def dev():
    d = HermesDevice(budget=5_000_000)
    yield d
    d.close()


@pytest.fixture
def regs(dev):
    return Regs(dev)


# --- BAR0 map -------------------------------------------------------------------------------------
def test_capability_registers(dev):
    assert dev.bar_read(0, R.EHVER, 4) == 1
    assert dev.bar_read(0, R.EHENG, 1) == 4
    assert dev.bar_read(0, R.EHPSLOT, 1) == 16
    assert dev.bar_read(0, R.EHDSLOT, 1) == 16
    assert dev.bar_read(0, R.EHCAP, 1) == R.EHCAP_ABORT | R.EHCAP_RUNCTX
    assert dev.bar_read(0, R.EHPSOFF, 4) == 0
    assert dev.bar_read(0, R.EHPSSZE, 4) == 1 << 20
    assert dev.bar_read(0, R.EHDSOFF, 4) == 16 << 20
    assert dev.bar_read(0, R.EHDSSZE, 4) == 1 << 20
    build = b"".join(dev.bar_read(0, R.EHBLD + i, 4).to_bytes(4, "little") for i in range(0, 48, 4))
    assert build == b"hermes-emu 0.1".ljust(48, b"\0")
    # the same bytes through every access width
    word = dev.bar_read(0, 0x34, 4)
    assert word == 4 | 16 << 8 | 16 << 16 | (R.EHCAP_ABORT | R.EHCAP_RUNCTX) << 24
    assert dev.bar_read(0, 0x34, 2) == 4 | 16 << 8
    assert dev.bar_read(0, 0x38, 8) == (1 << 20) << 32
    assert dev.bar_size(0) == 32 << 20
    assert dev.bar_size(2) == 64 << 10
    assert dev.bar_size(4) == 32 << 20 == len(dev.bar4)


def test_custom_configuration():
    with HermesDevice(engines=24, program_slots=3, data_slots=5, program_slot_size=8192,
                      data_slot_size=4096, build="x" * 48, interface_version=1) as d:
        assert d.bar_read(0, R.EHENG, 1) == 24
        assert d.bar_read(0, R.EHPSLOT, 1) == 3
        assert d.bar_read(0, R.EHDSLOT, 1) == 5
        assert d.bar_read(0, R.EHDSOFF, 4) == 3 * 8192
        assert d.bar_size(4) == 3 * 8192 + 5 * 4096
        assert d.bar_read(0, R.EHBLD + 44, 4) == int.from_bytes(b"xxxx", "little")
        # the last engine's registers exist and work
        r = Regs(d)
        assert r.command(R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]), n=23) == (0, 0)


def test_interface_version_2_layout():
    with HermesDevice(interface_version=2, program_slots=2, program_slot_size=12288) as d:
        assert d.bar_read(0, R.EHVER, 4) == 2
        assert d.bar_read(0, R.EHPSOFF_V2, 8) == 0
        assert d.bar_read(0, R.EHPSSZE_V2, 4) == 12288
        # EHDSOFF_V2 (0x44) is 8 bytes but only 4-byte aligned: read as two 32-bit halves
        lo, hi = d.bar_read(0, R.EHDSOFF_V2, 4), d.bar_read(0, R.EHDSOFF_V2 + 4, 4)
        assert lo | hi << 32 == 24576
        assert d.bar_read(0, R.EHDSSZE_V2, 4) == 1 << 20


@pytest.mark.parametrize("kwargs", [
    {"engines": 0}, {"engines": 25}, {"engines": 2.0}, {"program_slots": 0},
    {"data_slots": 256}, {"program_slot_size": 12}, {"data_slot_size": 0},
    {"data_slot_size": 1 << 32}, {"build": "y" * 49}, {"executor": "nope"}, {"budget": 0},
    {"interface_version": 3}, {"bar4": bytearray(100)}, {"bar4": bytes(32 << 20)},
])
def test_bad_configuration_rejected(kwargs):
    with pytest.raises(ValueError):
        HermesDevice(**kwargs)


def test_caller_buffer_backs_bar4():
    size = 2 * 4096 + 2 * 4096
    with mmap.mmap(-1, size) as m:
        with HermesDevice(program_slots=2, data_slots=2, program_slot_size=4096,
                          data_slot_size=4096, bar4=m) as d:
            m[8192:8196] = b"abcd"
            assert d.bar_read(4, 8192, 4) == int.from_bytes(b"abcd", "little")
            d.bar_write(4, 100, 2, 0xBEEF)
            assert m[100:102] == b"\xef\xbe"
            d.bar4[0] = 1
            assert m[0] == 1
        # once closed, the model holds no view of a caller's buffer, so the mmap can close


def test_ro_registers_ignored_and_counted(dev):
    before = dev.bar_read(0, R.EHVER, 4)
    dev.bar_write(0, R.EHVER, 4, 99)
    dev.bar_write(0, R.EHENG, 1, 9)
    dev.bar_write(0, R.EHDSSZE, 4, 9)
    dev.bar_write(0, R.cmdres(1), 8, 0x55)          # EHCMDRES is read-only
    dev.bar_write(0, R.cmdctrl(0) + R.EHCMDDONE, 1, 1)  # so is EHCMDDONE
    assert dev.bar_read(0, R.EHVER, 4) == before
    assert dev.bar_read(0, R.EHENG, 1) == 4
    assert dev.bar_read(0, R.cmdres(1), 8) == 0
    assert dev.bar_read(0, R.cmdctrl(0), 2) == 0
    assert dev.stats["ro_writes"] == 5


def test_request_registers_read_back(dev):
    dev.bar_write(0, R.cmdreq(2) + 8, 8, 0x0102030405060708)
    dev.bar_write(0, R.cmdreq(2) + 4, 2, 0xAABB)
    dev.bar_write(0, R.cmdreq(2) + 31, 1, 0x7F)
    assert dev.bar_read(0, R.cmdreq(2) + 8, 4) == 0x05060708
    assert dev.bar_read(0, R.cmdreq(2), 8) == 0xAABB << 32
    assert dev.bar_read(0, R.cmdreq(2) + 8, 8) == 0x0102030405060708
    assert dev.bar_read(0, R.cmdreq(2) + 28, 4) == 0x7F << 24
    assert dev.stats["ro_writes"] == 0


def test_unmapped_and_bad_accesses(dev):
    assert dev.bar_read(0, 0x100, 4) == 0
    assert dev.bar_read(0, 0x10000, 8) == 0
    dev.bar_write(0, 0x100, 4, 1)
    dev.bar_write(0, 0x1F_FFF8, 8, 1)
    dev.bar_write(0, 0x48, 8, 1)       # past EHDSSZE in interface version 1
    assert dev.stats["unmapped_writes"] == 3
    assert dev.bar_read(0, 0x100, 4) == 0
    # misaligned or odd sizes on BAR0, anything but 4 bytes on BAR2: ignored and counted
    assert dev.bar_read(0, R.EHDSSZE + 1, 4) == 0
    assert dev.bar_read(0, 0, 3) == 0
    dev.bar_write(0, R.cmdreq(0) + 2, 4, 0xFFFF_FFFF)
    assert dev.bar_read(0, R.cmdreq(0), 8) == 0
    assert dev.bar_read(2, 0, 8) == 0
    assert dev.bar_read(2, 2, 4) == 0
    dev.bar_write(2, R.xdma_offset(R.XDMA_TARGET_IRQ, 0, R.XDMA_IRQ_USER_MASK), 2, 1)
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_MASK, 4) == 0
    assert dev.stats["bad_size_accesses"] == 6
    for bar, off in ((0, 32 << 20), (2, 64 << 10), (4, dev.bar_size(4) - 2), (1, 0), (0, -4)):
        with pytest.raises(ValueError):
            dev.bar_read(bar, off, 4)
        with pytest.raises(ValueError):
            dev.bar_write(bar, off, 4, 0)


def test_bar4_register_access(dev):
    dev.bar_write(4, 3, 8, 0x1122334455667788)
    assert dev.bar4[3:11].tobytes() == bytes.fromhex("8877665544332211")
    assert dev.bar_read(4, 5, 2) == 0x5566
    assert dev.bar_read(4, 3, 3) == 0
    assert dev.stats["bad_size_accesses"] == 1


# --- slot commands -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,full_status", [(R.SLOT_PROGRAM, R.STATUS_INVALID_PROG_SLOT),
                                              (R.SLOT_DATA, R.STATUS_INVALID_DATA_SLOT)])
def test_request_and_release_slots(regs, dev, kind, full_status):
    got = [regs.request(kind) for _ in range(16)]
    assert got == [(R.STATUS_SUCCESS, i) for i in range(16)]
    assert regs.request(kind) == (R.STATUS_NO_SPACE, 0)
    assert regs.release(kind, 5) == R.STATUS_SUCCESS
    assert regs.release(kind, 5) == full_status        # already free
    assert regs.release(kind, 16) == full_status       # does not exist
    assert regs.release(kind, 255) == full_status
    assert regs.request(kind) == (R.STATUS_SUCCESS, 5)  # lowest free id is reused
    other = R.SLOT_DATA if kind == R.SLOT_PROGRAM else R.SLOT_PROGRAM
    assert regs.request(other) == (R.STATUS_SUCCESS, 0)  # the other kind is independent
    in_use = dev.slots_in_use()
    assert in_use[kind] == list(range(16))


def test_request_slot_hands_out_zeroed_slots(regs, dev):
    p, d = regs.load(RET7, b"SECRET" * 1000)
    dev.data_slot(d)[-6:] = b"SECRET"
    assert regs.release(R.SLOT_PROGRAM, p) == 0 and regs.release(R.SLOT_DATA, d) == 0
    assert dev.data_slot(d)[:6].tobytes() == b"SECRET"       # release leaves BAR4 alone
    assert regs.request(R.SLOT_PROGRAM) == (0, p) and regs.request(R.SLOT_DATA) == (0, d)
    assert not any(dev.data_slot(d)) and not any(dev.program_slot(p))
    assert dev.data_slot(d + 1)[:1].tobytes() == b"\0"


def test_bad_slot_type_and_unknown_opcode(regs):
    assert regs.command(R.CMD_REQUEST_SLOT, bytes([2]))[0] == R.STATUS_INVALID_OPCODE
    assert regs.command(R.CMD_RELEASE_SLOT, bytes([0xFF, 0]))[0] == R.STATUS_INVALID_OPCODE
    for opcode in (0x02, 0x42, 0x7F, 0x81, 0xFF):
        assert regs.command(opcode)[0] == R.STATUS_INVALID_OPCODE
    assert regs.request(R.SLOT_PROGRAM) == (0, 0)   # nothing was allocated by the bad ones


def test_command_id_and_reserved_bytes_of_response(regs, dev):
    regs.start(1, R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]), cid=0xBEEF)
    cid, status, value = regs.finish(1)
    assert (cid, status, value) == (0xBEEF, 0, 0)
    assert dev.bar_read(0, R.cmdres(1) + 3, 1) == 0
    assert dev.bar_read(0, R.cmdres(1) + 4, 4) == 0
    regs.start(1, 0x33, cid=0x1234)
    assert regs.finish(1)[:2] == (0x1234, R.STATUS_INVALID_OPCODE)


# --- Run Program ---------------------------------------------------------------------------------
def test_run_program_returns_r0(regs, dev):
    p, d = regs.load(RET7)
    assert regs.run(p, d, len(RET7)) == (R.STATUS_SUCCESS, 7)
    stats = dev.stats
    assert stats["runs"] == 1 and stats["cache_misses"] == 1
    assert regs.run(p, d, len(RET7), n=3) == (R.STATUS_SUCCESS, 7)
    assert dev.stats["cache_hits"] == 1   # compiled once, reused by another engine


def test_run_program_edits_data_slot_in_place(regs, dev):
    # r1 = data slot, r2 = its size: store r2 at data[0], increment the u32 at data[8]
    code = assemble_program("stxdw [r1], r2\nldxw r3, [r1+8]\nadd r3, 1\nstxw [r1+8], r3\n"
                            "mov r0, 0\nsub r0, 1\nexit").code
    p, d = regs.load(code, bytes(8) + struct.pack("<I", 41))
    assert regs.run(p, d, len(code)) == (R.STATUS_SUCCESS, 0xFFFF_FFFF_FFFF_FFFF)
    slot = dev.data_slot(d)
    assert struct.unpack_from("<QI", slot) == (1 << 20, 42)


def test_run_checks_both_slots(regs):
    p, d = regs.load(RET7)
    assert regs.run(200, d, 16)[0] == R.STATUS_INVALID_PROG_SLOT     # does not exist
    assert regs.run(16, d, 16)[0] == R.STATUS_INVALID_PROG_SLOT
    assert regs.run(p, 16, 16)[0] == R.STATUS_INVALID_DATA_SLOT
    assert regs.run(p, 99, 16)[0] == R.STATUS_INVALID_DATA_SLOT
    assert regs.run(200, 99, 16)[0] == R.STATUS_INVALID_PROG_SLOT    # program checked first


@pytest.mark.parametrize("length", [0, 12, 15, (1 << 20) + 8])
def test_run_bad_length_is_load_error(regs, length):
    p, d = regs.load(RET7)
    assert regs.run(p, d, length) == (R.STATUS_EBPF_ERROR, R.EBPF_ERR_LOAD)


def test_run_whole_slot_length(regs, dev):
    # a program exactly the slot size: 131072 slots is over the engine's limit, so a load error,
    # but it must be read and rejected by the engine, not by the length check
    p, d = regs.load(b"")
    status, code = regs.run(p, d, 1 << 20)
    assert status == R.STATUS_EBPF_ERROR and code & 0xFF == R.EBPF_ERR_LOAD


def test_invalid_program_is_load_error_with_index(regs):
    p, d = regs.load(b"\xff" * 8)
    assert regs.run(p, d, 8) == (R.STATUS_EBPF_ERROR, R.ErrorKind.LOAD.pack(0))
    bad_second = RET7[:8] + b"\xff" * 8 + RET7[8:]
    p2, d2 = regs.load(bad_second)
    status, code = regs.run(p2, d2, len(bad_second))
    assert status == R.STATUS_EBPF_ERROR
    assert R.ErrorKind.unpack(code) == (R.ErrorKind.LOAD, 1)
    # a program that only fails the device's helper check (unknown helper id) is a load error too
    unknown = assemble_program("call 99\nexit").code
    regs.dev.program_slot(p)[:16] = unknown
    assert regs.run(p, d, 16)[0] == R.STATUS_EBPF_ERROR


def test_runtime_faults_map_to_error_codes(regs, dev):
    p, d = regs.load(FAULTS)
    status, code = regs.run(p, d, len(FAULTS))
    assert status == R.STATUS_EBPF_ERROR
    assert R.ErrorKind.unpack(code) == (R.ErrorKind.OUT_OF_BOUNDS, 5)
    # the fault leaves both slots allocated and keeps what the program stored before it
    assert dev.slots_in_use() == ([p], [d])
    assert int.from_bytes(dev.data_slot(d)[8:16], "little") == 0x1122
    assert regs.run(p, d, len(FAULTS))[0] == R.STATUS_EBPF_ERROR   # and it can run again
    dev.program_slot(p)[:16] = RET7
    assert regs.run(p, d, 16) == (0, 7)
    assert dev.stats["run_errors"] == 2


def test_budget_and_call_depth_errors():
    with HermesDevice(budget=1000) as d:
        r = Regs(d)
        code = spin(10_000)
        p, ds = r.load(code)
        status, err = r.run(p, ds, len(code))
        assert status == R.STATUS_EBPF_ERROR and err & 0xFF == R.EBPF_ERR_BUDGET
        assert err >> 8 in (1, 2)   # pc inside the loop
        deep = assemble_program("call local f\nexit\nf:\ncall local f\nexit").code
        d.program_slot(p)[:len(deep)] = deep
        status, err = r.run(p, ds, len(deep))
        assert status == R.STATUS_EBPF_ERROR and err & 0xFF == R.EBPF_ERR_CALL_DEPTH


def test_device_helpers_available(regs, dev):
    # hermes_memset(r1, 0xAB, 4) on the data slot
    code = assemble_program("mov r2, 0xab\nmov r3, 4\ncall 0x1000\nmov r0, 0\nexit").code
    p, d = regs.load(code)
    assert regs.run(p, d, len(code)) == (0, 0)
    assert dev.data_slot(d)[:5].tobytes() == b"\xab" * 4 + b"\0"


def test_elf_program_runs(regs, dev, tmp_path):
    from hermes.engine.clang import compile_c, find_clang
    if find_clang() is None:
        pytest.skip("clang not installed")
    src = tmp_path / "inc.c"
    src.write_text("typedef unsigned int u32;\n"
                   "__attribute__((section(\"sx\"), used)) int inc(u32 *d) {\n"
                   "  for (int i = 0; i < 3; i++) d[i]++;\n  return 0;\n}\n")
    obj = compile_c(src, tmp_path / "inc.o").read_bytes()
    padded = obj + bytes(-len(obj) % 8)
    p, d = regs.load(padded, struct.pack("<3I", 0, 1, 2))
    assert regs.run(p, d, len(padded)) == (0, 0)
    assert struct.unpack_from("<3I", dev.data_slot(d)) == (1, 2, 3)


# --- handshake and engines -----------------------------------------------------------------------
def test_handshake_clears_done_before_exec_write_returns(regs, dev):
    code = spin(100_000)   # tens of milliseconds in the interpreter
    p, d = regs.load(code)
    assert regs.run(p, d, len(code)) == (0, 100_000)
    assert regs.ctrl(0) == (0, 1)               # a stale DONE from the previous command...
    regs.start(0, R.CMD_RUN_PROGRAM, regs.run_payload(p, d, len(code)))
    assert regs.ctrl(0) == (1, 0)               # ...is cleared before the EXEC write returns
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_REQUEST, 4) & 1 == 0
    # EXEC while busy: ignored and counted, the running command is unaffected
    dev.bar_write(0, R.cmdreq(0), 1, R.CMD_REQUEST_SLOT)
    dev.bar_write(0, R.cmdctrl(0), 1, 1)
    assert dev.stats["busy_exec_writes"] == 1
    assert regs.ctrl(0)[0] == 1
    cid, status, value = regs.finish(0)
    assert (status, value) == (0, 100_000) and cid == regs.cid
    assert dev.stats["commands"] == 4
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_REQUEST, 4) & 1 == 1
    assert regs.irqs.count(R.engine_vector(0)) == 4


def test_exec_write_of_zero_does_nothing(regs, dev):
    dev.bar_write(0, R.cmdctrl(0), 1, 0)
    dev.bar_write(0, R.cmdctrl(0), 8, 0x100)   # only DONE's byte set: EXEC stays 0
    assert dev.stats["commands"] == 0
    assert regs.irqs == []
    dev.bar_write(0, R.cmdctrl(0), 8, 0xFFFF_FFFF_FFFF_FF01)  # 8-byte write: EXEC=1 starts
    assert regs.finish(0)[1] == R.STATUS_SUCCESS   # request of all zeros = Request program slot


def test_engines_run_concurrently(regs, dev):
    code = spin(60_000)
    p, d = regs.load(code)
    for n in range(4):
        regs.start(n, R.CMD_RUN_PROGRAM, regs.run_payload(p, d, len(code)))
    # all four are busy at once: each engine has its own worker
    assert [regs.ctrl(n) for n in range(4)] == [(1, 0)] * 4
    results = [regs.finish(n)[1:] for n in range(4)]
    assert results == [(0, 60_000)] * 4
    assert sorted(regs.irqs) == [8, 8, 8, 9, 10, 11]   # two slot requests, then four runs


def test_engine_interrupts_follow_user_mask(regs, dev):
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK, 4, 0)
    regs.start(2, R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]))
    assert regs.ctrl(2) == (0, 1)            # slot commands complete inside the EXEC write
    assert regs.irqs == [] and dev.stats["interrupts_masked"] == 1
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_REQUEST, 4) == 0b100
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_PENDING, 4) == 0
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK_W1S, 4, 0b100)
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_PENDING, 4) == 0b100
    regs.start(2, R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]))
    assert regs.irqs == [10]
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK_W1C, 4, 0b100)
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_MASK, 4) == 0
    # vector-number registers show the fixed routing: user n -> 8 + n
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_VECTOR, 4) == 8 | 9 << 8 | 10 << 16 | 11 << 24
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_CHANNEL_VECTOR + 4, 4) == 4 | 5 << 8 | 6 << 16 | 7 << 24


def test_irq_handler_errors_do_not_kill_engines(dev):
    r = Regs(dev)

    def broken(vector: int) -> None:
        raise RuntimeError("host side bug")

    p, d = r.load(RET7)
    dev.set_irq_handler(broken)
    r.start(0, R.CMD_RUN_PROGRAM, r.run_payload(p, d, 16))
    deadline = time.monotonic() + 5
    while dev.stats["irq_handler_errors"] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert dev.stats["irq_handler_errors"] == 1
    dev.set_irq_handler(r._irq)
    assert r.run(p, d, 16) == (0, 7)   # the engine thread survived


def test_handler_may_start_next_command(dev):
    """An event-driven host issuing the next command from the interrupt handler must not hang."""
    r = Regs(dev)
    p, d = r.load(RET7)
    chain = [R.CMD_REQUEST_SLOT, R.CMD_RUN_PROGRAM, R.CMD_REQUEST_SLOT]
    seen = []
    finished = threading.Event()

    def handler(vector: int) -> None:
        seen.append(dev.bar_read(0, R.cmdres(0), 8) >> 16 & 0xFF)
        if chain:
            op = chain.pop(0)
            payload = r.run_payload(p, d, 16) if op == R.CMD_RUN_PROGRAM else bytes([1])
            r.start(0, op, payload)
        else:
            finished.set()

    dev.set_irq_handler(handler)
    r.start(0, R.CMD_REQUEST_SLOT, bytes([1]))
    assert finished.wait(5)
    assert seen == [0, 0, 0, 0]
    assert dev.slots_in_use()[1] == [0, 1, 2, 3]


def test_no_handler_counts_unhandled(dev):
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK, 4, 1)
    dev.bar_write(0, R.cmdctrl(0), 1, 1)
    assert dev.stats["interrupts_unhandled"] == 1


def test_reset_frees_slots_and_clears_state(regs, dev):
    for _ in range(16):
        regs.request(R.SLOT_PROGRAM)
        regs.request(R.SLOT_DATA)
    assert regs.request(R.SLOT_DATA)[0] == R.STATUS_NO_SPACE
    dev.bar4[0:8] = b"keepthis"
    dev.reset()
    assert dev.slots_in_use() == ([], [])
    assert regs.ctrl(0) == (0, 0)
    assert dev.bar_read(0, R.cmdres(0), 8) == 0
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_MASK, 4) == 0   # masks back to power-on
    assert dev.bar4[0:8].tobytes() == b"keepthis"                  # BAR4 contents are kept
    assert dev.bar_read(0, R.EHENG, 1) == 4
    regs.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK, 4, 0xF)
    assert regs.request(R.SLOT_DATA) == (0, 0)
    assert dev.stats["resets"] == 1


def test_reset_without_abort_waits_for_running_engine(regs, dev):
    code = spin(100_000)
    p, d = regs.load(code)
    regs.start(1, R.CMD_RUN_PROGRAM, regs.run_payload(p, d, len(code)))
    assert regs.ctrl(1) == (1, 0)
    dev.reset(abort=False)
    # the command finished (its interrupt arrived before reset returned), then state was cleared
    assert regs.irqs[-1] == R.engine_vector(1)
    assert dev.stats["aborted"] == 0
    assert regs.ctrl(1) == (0, 0)
    assert dev.slots_in_use() == ([], [])


def test_close_stops_workers():
    d = HermesDevice()
    threads = [e.thread for e in d._engines]
    assert all(t.is_alive() for t in threads)
    d.close()
    d.close()
    assert not any(t.is_alive() for t in threads)
    assert d.bar_read(0, R.EHVER, 4) == 1   # registers still readable
    d.bar_write(0, R.cmdctrl(0), 1, 1)       # but no command starts any more
    assert d.stats["busy_exec_writes"] == 1
    with pytest.raises(RuntimeError):
        d.reset()


def test_interp_and_jit_engines_agree_when_jit_present():
    from hermes.engine import executor_names
    if "jit" not in executor_names():
        pytest.skip("JIT engine not available")
    with HermesDevice(executor="jit") as d:
        r = Regs(d)
        p, ds = r.load(RET7)
        assert r.run(p, ds, 16) == (0, 7)


# --- property: the device's slot bookkeeping agrees with a plain model ---------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([R.CMD_REQUEST_SLOT, R.CMD_RELEASE_SLOT]),
                          st.integers(0, 2), st.integers(0, 5)), max_size=40))
def test_slot_commands_match_model(ops):
    with HermesDevice(program_slots=4, data_slots=3) as d:
        r = Regs(d)
        model = ({*()}, {*()})
        sizes = (4, 3)
        for opcode, kind, slot in ops:
            payload = bytes([kind, slot])
            status, value = r.command(opcode, payload, n=slot % 4)
            if kind > 1:
                assert status == R.STATUS_INVALID_OPCODE
            elif opcode == R.CMD_REQUEST_SLOT:
                free = [i for i in range(sizes[kind]) if i not in model[kind]]
                if free:
                    assert (status, value) == (R.STATUS_SUCCESS, free[0])
                    model[kind].add(free[0])
                else:
                    assert status == R.STATUS_NO_SPACE
            elif slot in model[kind]:
                assert status == R.STATUS_SUCCESS
                model[kind].remove(slot)
            else:
                assert status == (R.STATUS_INVALID_PROG_SLOT if kind == 0
                                  else R.STATUS_INVALID_DATA_SLOT)
        assert d.slots_in_use() == (sorted(model[0]), sorted(model[1]))


def test_dropped_device_stops_its_threads():
    import gc
    d = HermesDevice(engines=2)
    threads = [e.thread for e in d._engines]
    Regs(d)                     # an irq handler that refers back to the device (a cycle)
    del d
    gc.collect()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)


def test_block_reads_return_what_four_byte_reads_do():
    dev = HermesDevice()
    try:
        for bar, offset, length in ((0, 0, 0x50), (0, R.cmdctx(1), R.EHCMDCTX_LEN),
                                    (0, 0x3FFC, 8), (2, 0, 16)):
            want = b"".join(dev.bar_read(bar, offset + i, 4).to_bytes(4, "little")
                            for i in range(0, length, 4))
            assert dev.bar_read_block(bar, offset, length) == want
    finally:
        dev.close()

"""The device's run context (EHCMDCTXn, EHTRACEn, RUN_FLAG_CTX) driven through its registers."""
from __future__ import annotations

import struct

import pytest

from hermes import regs as R
from hermes.device import HermesDevice
from hermes.engine import DATA_BASE
from hermes.engine.asm import assemble_program
from hermes.engine.elf import load_elf
from hermes.engine.helpers import TRACE_LIMIT
from tests import test_engine_contract as _engine_contract
from tests.test_device import Regs

#: r0 = r2 + (r3 << 8) + (r4 << 16) + (r5 << 24): which length and arguments the program got.
ENTRY_REGS = assemble_program("mov r0, r5\nlsh r0, 8\nadd r0, r4\nlsh r0, 8\nadd r0, r3\n"
                              "lsh r0, 8\nadd r0, r2\nexit").code
#: r0 = the sum of the window's first 64 bytes.
SUM_64 = assemble_program("mov r0, 0\nmov r3, 0\nloop:\nmov r4, r1\nadd r4, r3\nldxb r5, [r4]\n"
                          "add r0, r5\nadd r3, 1\njlt r3, 64, loop\nexit").code
#: Loads 8 bytes at r1 + r2 (just past the input: inside a window larger than the input).
LOAD_AT_LEN = assemble_program("add r1, r2\nldxdw r0, [r1]\nexit").code
#: Stores 4 bytes at r1 + r2.
STORE_AT_LEN = assemble_program("add r1, r2\nmov r0, 0\nstxw [r1], r0\nexit").code
#: Declares an output length of r3 bytes.
SET_OUTPUT = assemble_program("mov r1, r3\ncall 0x1002\nmov r0, 0\nexit").code


def printk(text: bytes, value: int, times: int = 1) -> bytes:
    """A program printing ``text`` (a format with one conversion, < 8 bytes) ``times`` times."""
    word = int.from_bytes(text.ljust(8, b"\0"), "little")
    return assemble_program(f"lddw r6, {word:#x}\nstxdw [r10-8], r6\nmov r7, 0\nloop:\n"
                            f"mov r1, r10\nadd r1, -8\nmov r2, {len(text) + 1}\nmov r3, {value}\n"
                            f"call 6\nadd r7, 1\njlt r7, {times}, loop\nmov r0, 0\nexit").code


#: Prints "v=7\n", then calls a function that stores 4 bytes at data + 16 (one call deep).
PRINT_THEN_FAULT_DEEP = _engine_contract.PRINT_THEN_FAULT_DEEP.code


def spin(n: int) -> bytes:
    """A program looping ``n`` times."""
    return assemble_program(f"mov r0, 0\nloop:\nadd r0, 1\njlt r0, {n}, loop\nexit").code


@pytest.fixture
def dev():
    d = HermesDevice(budget=5_000_000, data_slot_size=64 << 10)
    yield d
    d.close()


@pytest.fixture
def regs(dev):
    return Regs(dev)


def put_ctx(dev: HermesDevice, n: int, input_len: int, window: int, args=(), budget: int = 0,
            entry: int = 0, reserved: int = 0) -> None:
    """Write engine ``n``'s IN fields as a driver would (8-byte writes)."""
    full = list(args) + [0] * (3 - len(args))
    words = [input_len | window << 32, *full, budget, entry | reserved << 32]
    for k, w in enumerate(words):
        dev.bar_write(0, R.cmdctx(n) + 8 * k, 8, w)


def out(dev: HermesDevice, n: int = 0) -> dict:
    """Engine ``n``'s OUT fields and printed text."""
    def f(off: int, size: int) -> int:
        return dev.bar_read(0, R.cmdctx(n) + off, size)
    trace_len = f(R.CTX_TRACE_LEN, 4)
    text = b"".join(dev.bar_read(0, R.trace_buffer(n) + i, 8).to_bytes(8, "little")
                    for i in range(0, TRACE_LIMIT, 8))
    return {"insns": f(R.CTX_INSNS, 8), "output_len": f(R.CTX_OUTPUT_LEN, 4),
            "trace_len": trace_len, "run_ns": f(R.CTX_RUN_NS, 8),
            "fault_addr": f(R.CTX_FAULT_ADDR, 8), "fault_size": f(R.CTX_FAULT_SIZE, 4),
            "fault_flags": f(R.CTX_FAULT_FLAGS, 4), "dropped": f(R.CTX_TRACE_DROPPED, 4),
            "trace": text[:trace_len], "trace_rest": text[trace_len:]}


def run_ctx(r: Regs, p: int, d: int, code: bytes, n: int = 0, flags: int = R.RUN_FLAG_CTX,
            byte11: int = 0) -> tuple[int, int]:
    """Run Program with request byte 10 = ``flags``; (status, value)."""
    payload = bytes([p, d, flags, byte11]) + struct.pack("<I", len(code))
    return r.command(R.CMD_RUN_PROGRAM, payload, n)


# --- the register map -------------------------------------------------------------------------
def test_trace_limit_is_the_engines():
    assert TRACE_LIMIT == R.TRACE_LIMIT


def test_context_registers_in_rw_out_ro(dev):
    assert dev.bar_read(0, R.EHCAP, 1) & R.EHCAP_RUNCTX
    for n in (0, dev.engines - 1):
        base = R.cmdctx(n)
        dev.bar_write(0, base + R.CTX_ARG1, 8, 0x1122334455667788)
        dev.bar_write(0, base + R.CTX_ENTRY, 4, 7)
        assert dev.bar_read(0, base + R.CTX_ARG1, 8) == 0x1122334455667788
        assert dev.bar_read(0, base + R.CTX_ARG1 + 4, 4) == 0x11223344
        assert dev.bar_read(0, base + R.CTX_ENTRY, 4) == 7
        for off in (R.CTX_INSNS, R.CTX_TRACE_DROPPED, R.EHCMDCTX_LEN - 8):
            dev.bar_write(0, base + off, 4, 0xFFFF_FFFF)
            assert dev.bar_read(0, base + off, 4) == 0
        dev.bar_write(0, R.trace_buffer(n) + 64, 8, 0x41)
        assert dev.bar_read(0, R.trace_buffer(n) + 64, 8) == 0
    assert dev.stats["ro_writes"] == 8 and dev.stats["unmapped_writes"] == 0
    # past the last engine's blocks nothing is mapped
    dev.bar_write(0, R.cmdctx(dev.engines), 8, 1)
    dev.bar_write(0, R.trace_buffer(dev.engines), 8, 1)
    assert dev.bar_read(0, R.cmdctx(dev.engines), 8) == 0
    assert dev.stats["unmapped_writes"] == 2


def test_device_without_run_context():
    with HermesDevice(run_context=False) as dev:
        r = Regs(dev)
        assert dev.bar_read(0, R.EHCAP, 1) == R.EHCAP_ABORT
        dev.bar_write(0, R.cmdctx(0), 8, 5)
        dev.bar_write(0, R.trace_buffer(0), 8, 5)
        assert dev.bar_read(0, R.cmdctx(0), 8) == 0
        assert dev.stats["unmapped_writes"] == 2
        # byte 10 is the reserved byte it was: a legacy run, r2 = the slot size, args 0
        p, d = r.load(ENTRY_REGS)
        assert run_ctx(r, p, d, ENTRY_REGS, flags=0xFF) == (0, dev.data_slot_size)
        assert dev.bar_read(0, R.cmdctx(0) + R.CTX_INSNS, 8) == 0


# --- runs with a context ------------------------------------------------------------------------
def test_length_and_arguments_reach_the_program(regs, dev):
    p, d = regs.load(ENTRY_REGS)
    put_ctx(dev, 0, 100, 200, (1, 2, 3))
    assert run_ctx(regs, p, d, ENTRY_REGS) == (0, 100 | 1 << 8 | 2 << 16 | 3 << 24)
    o = out(dev)
    assert o["insns"] == 8 and o["output_len"] == R.CTX_NO_OUTPUT and o["run_ns"] > 0
    assert o["trace_len"] == o["fault_size"] == o["dropped"] == 0


def test_legacy_run_unchanged_and_fills_out(regs, dev):
    p, d = regs.load(ENTRY_REGS)
    put_ctx(dev, 0, 100, 200, (1, 2, 3))   # ignored without RUN_FLAG_CTX
    assert regs.run(p, d, len(ENTRY_REGS)) == (0, dev.data_slot_size)
    assert out(dev)["insns"] == 8
    # a run refused at load (a length that is not a multiple of 8) leaves no stale result
    assert regs.run(p, d, len(ENTRY_REGS) - 1)[0] == R.STATUS_EBPF_ERROR
    assert out(dev)["insns"] == 0 and out(dev)["output_len"] == R.CTX_NO_OUTPUT


def test_window_past_the_input_is_zeroed(regs, dev):
    p, d = regs.load(SUM_64)
    dev.data_slot(d)[:128] = b"\xff" * 128   # a previous run's bytes
    dev.data_slot(d)[:4] = b"\x01\x02\x03\x04"
    put_ctx(dev, 0, 4, 64)
    assert run_ctx(regs, p, d, SUM_64) == (0, 10)
    assert bytes(dev.data_slot(d)[4:64]) == bytes(60)
    assert bytes(dev.data_slot(d)[64:128]) == b"\xff" * 64   # outside the window: untouched


def test_access_past_the_window_faults_with_its_address(regs, dev):
    for code, write, size in ((LOAD_AT_LEN, False, 8), (STORE_AT_LEN, True, 4)):
        p, d = regs.load(code)
        put_ctx(dev, 0, 16, 16)   # inside the slot, outside the window
        status, value = run_ctx(regs, p, d, code)
        assert status == R.STATUS_EBPF_ERROR
        assert R.ErrorKind.of_code(value) is R.ErrorKind.OUT_OF_BOUNDS
        o = out(dev)
        assert (o["fault_addr"], o["fault_size"]) == (DATA_BASE + 16, size)
        assert o["fault_flags"] == (R.FAULT_WRITE if write else 0)
        assert o["insns"] >= 2
        # the same access inside a larger window succeeds, and clears the fault fields
        put_ctx(dev, 0, 16, 32)
        assert run_ctx(regs, p, d, code)[0] == 0
        assert out(dev)["fault_size"] == out(dev)["fault_addr"] == 0
        regs.release(R.SLOT_PROGRAM, p)
        regs.release(R.SLOT_DATA, d)


def test_fault_reports_its_call_depth_and_the_text_printed_before(regs, dev):
    code = PRINT_THEN_FAULT_DEEP
    p, d = regs.load(code)
    put_ctx(dev, 0, 16, 16)
    status, value = run_ctx(regs, p, d, code)
    assert status == R.STATUS_EBPF_ERROR
    assert R.ErrorKind.of_code(value) is R.ErrorKind.OUT_OF_BOUNDS
    o = out(dev)
    assert o["fault_flags"] == R.FAULT_WRITE | 1 << R.CTX_FAULT_DEPTH_SHIFT
    assert o["trace"] == b"v=7\n" and o["trace_len"] == 4
    # a budget overrun keeps what was printed before it too
    loop = printk(b"v=%d\n", 7, times=1000)
    regs.dev.program_slot(p)[:len(loop)] = loop
    put_ctx(dev, 0, 0, 0, budget=50)
    status, value = run_ctx(regs, p, d, loop)
    assert R.ErrorKind.of_code(value) is R.ErrorKind.BUDGET
    o = out(dev)
    assert o["trace"].startswith(b"v=7\n") and o["trace"] == b"v=7\n" * (len(o["trace"]) // 4)
    assert o["fault_flags"] == o["fault_size"] == 0


def test_budget_from_the_context(regs, dev):
    code = spin(1000)
    p, d = regs.load(code)
    put_ctx(dev, 0, 0, 0, budget=100)
    status, value = run_ctx(regs, p, d, code)
    assert status == R.STATUS_EBPF_ERROR and R.ErrorKind.of_code(value) is R.ErrorKind.BUDGET
    put_ctx(dev, 0, 0, 0, budget=0)   # 0: the device's budget
    assert run_ctx(regs, p, d, code) == (0, 1000)


def test_output_length_and_printed_text(regs, dev):
    p, d = regs.load(SET_OUTPUT)
    put_ctx(dev, 0, 8, 64, (40,))
    assert run_ctx(regs, p, d, SET_OUTPUT) == (0, 0)
    assert out(dev)["output_len"] == 40
    code = printk(b"v=%d\n", 42, times=3)
    regs.dev.program_slot(p)[:len(code)] = code
    put_ctx(dev, 0, 0, 0)
    assert run_ctx(regs, p, d, code) == (0, 0)
    o = out(dev)
    assert o["trace"] == b"v=42\n" * 3 and o["output_len"] == R.CTX_NO_OUTPUT
    # a shorter text next time: nothing of the longer one stays readable
    short = printk(b"%d", 7)
    regs.dev.program_slot(p)[:len(short)] = short
    assert run_ctx(regs, p, d, short) == (0, 0)
    o = out(dev)
    assert o["trace"] == b"7" and o["trace_rest"] == bytes(TRACE_LIMIT - 1)


def test_printed_text_past_the_limit_is_counted(regs, dev):
    code = printk(b"abcd%d", 1, times=1000)   # 5000 bytes
    p, d = regs.load(code)
    put_ctx(dev, 0, 0, 0)
    assert run_ctx(regs, p, d, code) == (0, 0)
    o = out(dev)
    assert o["trace_len"] == TRACE_LIMIT and o["dropped"] == 5000 - TRACE_LIMIT
    assert o["trace"] == (b"abcd1" * 1000)[:TRACE_LIMIT]


@pytest.mark.parametrize("case", ["input_past_window", "window_past_slot", "reserved_field",
                                  "flag_bit", "byte11", "entry_of_raw_program"])
def test_invalid_context(regs, dev, case):
    p, d = regs.load(ENTRY_REGS)
    flags, byte11 = R.RUN_FLAG_CTX, 0
    ctx = {"input_len": 8, "window": 8}
    if case == "input_past_window":
        ctx["input_len"] = 9
    elif case == "window_past_slot":
        ctx["window"] = dev.data_slot_size + 8
    elif case == "reserved_field":
        ctx["reserved"] = 1
    elif case == "flag_bit":
        flags = 0x02   # unknown flag bits are refused with or without RUN_FLAG_CTX
    elif case == "byte11":
        byte11 = 1
    else:
        ctx["entry"] = 3
    put_ctx(dev, 0, **ctx)
    regs.run(p, d, len(ENTRY_REGS))   # a legacy run first: its OUT fields would show if stale
    assert out(dev)["insns"] == 8
    status, _ = run_ctx(regs, p, d, ENTRY_REGS, flags=flags, byte11=byte11)
    assert status == R.STATUS_INVALID_CONTEXT
    assert out(dev)["insns"] == 0   # refused before it ran: no stale result
    assert dev.stats["invalid_contexts"] == 1
    assert isinstance(dev.last_errors[0], ValueError)
    assert dev.busy_slots() == ([], [])


def test_context_is_copied_at_exec(regs, dev):
    # r0 = (r3 << 32) + r2, taken before a long loop
    code = assemble_program("mov r6, r2\nmov r7, r3\nmov r0, 0\nloop:\nadd r0, 1\n"
                            "jlt r0, 200000, loop\nmov r0, r7\nlsh r0, 32\nadd r0, r6\nexit").code
    p, d = regs.load(code)
    put_ctx(dev, 0, 5, 10, (9,))
    payload = bytes([p, d, R.RUN_FLAG_CTX, 0]) + struct.pack("<I", len(code))
    cid = regs.start(0, R.CMD_RUN_PROGRAM, payload)
    put_ctx(dev, 0, 1, 1, (1,))   # while it runs: must not affect it
    assert regs.finish(0) == (cid, 0, 9 << 32 | 5)


def test_cache_key_includes_the_entry_symbol(regs, dev, tmp_path):
    from hermes.engine.clang import compile_c, find_clang
    if find_clang() is None:
        pytest.skip("clang not installed")
    src = tmp_path / "two.c"
    src.write_text("unsigned long first(void *d) { return 1; }\n"
                   "unsigned long second(void *d) { return 2; }\n")
    obj = compile_c(src, tmp_path / "two.o").read_bytes()
    first, second = (load_elf(obj, function=f).entry_symbol for f in ("first", "second"))
    obj += bytes(-len(obj) % 8)
    p, d = regs.load(obj)
    for entry, r0 in ((first, 1), (second, 2), (first, 1), (second, 2)):
        put_ctx(dev, 0, 0, 0, entry=entry)
        assert run_ctx(regs, p, d, obj) == (0, r0)
    # entry 0 is the default rule, which refuses an object with two candidate functions
    put_ctx(dev, 0, 0, 0)
    status, value = run_ctx(regs, p, d, obj)
    assert status == R.STATUS_EBPF_ERROR and R.ErrorKind.of_code(value) is R.ErrorKind.LOAD
    assert dev.stats["cache_misses"] == 3

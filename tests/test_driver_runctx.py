"""Driver: runs with a run context (run_ex, HERMES_RUN_IOCTL), per-run timeouts, abort() from other
threads, KeyboardInterrupt during a run, odd-length ELF objects; over every transport."""
from __future__ import annotations

import _thread
import errno
import struct
import threading
import time

import pytest

import hermes.driver as hd
from hermes import regs
from hermes.device import HermesDevice
from hermes.driver import HERMES_RUN_IOCTL, RunArgs, RunOutcome
from hermes.engine import DATA_BASE, DEFAULT_BUDGET
from hermes.engine.asm import assemble_program
from tests.test_device_runctx import PRINT_THEN_FAULT_DEEP
from tests.test_driver import expect_errno

#: r0 = r2 + (r3 << 8) + (r4 << 16) + (r5 << 24).
ENTRY_REGS = assemble_program("mov r0, r5\nlsh r0, 8\nadd r0, r4\nlsh r0, 8\nadd r0, r3\n"
                              "lsh r0, 8\nadd r0, r2\nexit").to_bytes()
#: r0 = the sum of the window's first 64 bytes.
SUM_64 = assemble_program("mov r0, 0\nmov r3, 0\nloop:\nmov r4, r1\nadd r4, r3\nldxb r5, [r4]\n"
                          "add r0, r5\nadd r3, 1\njlt r3, 64, loop\nexit").to_bytes()
#: Stores 4 bytes at r1 + r2 (just past the input).
STORE_AT_LEN = assemble_program("add r1, r2\nmov r0, 0\nstxw [r1], r0\nexit").to_bytes()
#: Declares an output length of r3 bytes, prints "n=<r3>\n", returns 0.
OUTPUT_AND_PRINT = assemble_program(
    f"lddw r6, {int.from_bytes(b'n=%d' + bytes([10, 0, 0, 0]), 'little'):#x}\n"
    "stxdw [r10-8], r6\nmov r6, r3\nmov r1, r3\ncall 0x1002\nmov r1, r10\nadd r1, -8\n"
    "mov r2, 6\nmov r3, r6\ncall 6\nmov r0, 0\nexit").to_bytes()
ENDLESS = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").to_bytes()
RET5 = assemble_program("mov r0, 5\nexit").to_bytes()
ENDLESS_BUDGET = 1 << 62
#: How soon a stopped run must free its engine (the run contract's bound for a cancel).
FREE_BOUND = 1.0


def ready(f: hd.HermesFile, prog: bytes, data: bytes = bytes(8)) -> hd.HermesFile:
    """``f`` with ``prog`` downloaded and ``data`` written at 0."""
    f.download_program(prog)
    f.pwrite(data, 0)
    return f


def next_run_is_prompt(drv: hd.Driver) -> float:
    """Seconds a new file takes to run a 2-instruction program (the engine must be free)."""
    t0 = time.monotonic()
    with drv.open() as g:
        ready(g, RET5)
        assert g.run_ex(RunArgs(0, 0)).r0 == 5
    return time.monotonic() - t0


# --- the interface ----------------------------------------------------------------------------
def test_run_ioctl_number_matches_the_c_definition():
    # _IOWR('H', 0x51, struct hermes_run) with the struct's 112 bytes (specs/driver.md 6.1).
    assert hd.HERMES_RUN_STRUCT.size == 112 == struct.calcsize("=II3QQIIQ4Q6I")
    assert HERMES_RUN_IOCTL == (3 << 30) | (112 << 16) | (ord("H") << 8) | 0x51 == 0xC0704851


def test_length_and_arguments(hermes_file):
    ready(hermes_file, ENTRY_REGS)
    out = hermes_file.run_ex(RunArgs(100, 200, (1, 2, 3)))
    assert isinstance(out, RunOutcome)
    assert out.r0 == 100 | 1 << 8 | 2 << 16 | 3 << 24
    assert out.instructions == 8 and out.output_len is None and out.run_ns > 0
    assert out.trace == b"" and out.trace_dropped == 0
    assert out.fault_address is None and out.fault_size is None and out.fault_write is None
    assert out.response.status == regs.STATUS_SUCCESS
    # negative arguments are taken modulo 2^64; missing ones are 0
    assert hermes_file.run_ex(RunArgs(0, 0, (-1,))).r0 == (1 << 64) - 256   # r3 << 8, wrapped


def test_ioctl_form(hermes_file):
    ready(hermes_file, ENTRY_REGS)
    out = hermes_file.ioctl(HERMES_RUN_IOCTL, RunArgs(7, 8, (1,)))
    assert isinstance(out, RunOutcome) and out.r0 == 7 | 1 << 8
    expect_errno(errno.EINVAL, hermes_file.ioctl, HERMES_RUN_IOCTL, b"not RunArgs")


def test_legacy_run_unchanged(hermes_device, hermes_file):
    ready(hermes_file, ENTRY_REGS)
    assert hermes_file.run() == hermes_device.geometry.data_slot_size


def test_window_is_zeroed_past_the_input_on_every_run(hermes_file):
    ready(hermes_file, SUM_64, b"\xff" * 64)
    assert hermes_file.run_ex(RunArgs(64, 64)).r0 == 64 * 255
    hermes_file.pwrite(b"\x01\x02\x03", 0)
    assert hermes_file.run_ex(RunArgs(3, 64)).r0 == 6
    assert hermes_file.pread(64, 0) == b"\x01\x02\x03" + bytes(61)


def test_output_length_and_printed_text(hermes_file):
    ready(hermes_file, OUTPUT_AND_PRINT)
    out = hermes_file.run_ex(RunArgs(8, 64, (40,)))
    assert out.output_len == 40 and out.trace == b"n=40\n"
    out = hermes_file.run_ex(RunArgs(8, 64, (3,)))
    assert out.output_len == 3 and out.trace == b"n=3\n"


def test_fault_outcome(hermes_file):
    ready(hermes_file, STORE_AT_LEN)
    exc = expect_errno(errno.ENOEXEC, hermes_file.run_ex, RunArgs(16, 16))
    out = exc.outcome
    assert (out.fault_address, out.fault_size, out.fault_write) == (DATA_BASE + 16, 4, True)
    assert out.instructions >= 2 and exc.response.status == regs.STATUS_EBPF_ERROR
    assert exc.response.error_kind == "out_of_bounds"
    assert hermes_file.run_ex(RunArgs(16, 20)).fault_size is None   # inside a larger window


def test_fault_outcome_has_the_call_depth_and_the_printed_text(hermes_file):
    ready(hermes_file, PRINT_THEN_FAULT_DEEP, bytes(16))
    out = expect_errno(errno.ENOEXEC, hermes_file.run_ex, RunArgs(16, 16)).outcome
    assert (out.fault_address, out.fault_write, out.fault_depth) == (DATA_BASE + 16, True, 1)
    assert out.trace == b"v=7\n"
    assert hermes_file.run_ex(RunArgs(16, 20)).fault_depth is None   # inside a larger window


def test_budget_per_run(hermes_file):
    ready(hermes_file, assemble_program("mov r0, 0\nloop:\nadd r0, 1\njlt r0, 1000, loop\n"
                                        "exit").to_bytes())
    exc = expect_errno(errno.ENOEXEC, hermes_file.run_ex, RunArgs(0, 0, budget=100))
    assert exc.response.error_kind == "budget" and exc.outcome is not None
    assert exc.outcome.budget == 100
    done = hermes_file.run_ex(RunArgs(0, 0))
    # without a budget of its own the run had the device's (the default one: no option given)
    assert done.r0 == 1000 and done.budget == DEFAULT_BUDGET


@pytest.mark.parametrize("run, what", [
    (RunArgs(0, (1 << 20) + 8), "window"), (RunArgs(9, 8), "input length"),
    (RunArgs(0, 8, (1, 2, 3, 4)), "args"), (RunArgs(0, 8, (1 << 64,)), "args"),
    (RunArgs(0, 8, ("1",)), "args"), (RunArgs(0, 8, budget=-1), "budget"),
    (RunArgs(0, 8, entry=1 << 32), "entry"), (RunArgs(0, 8, timeout=0), "timeout"),
    (RunArgs(-1, 8), "input length"), (RunArgs(True, 8), "input length"),
])
def test_bad_run_args_are_einval_before_anything_is_sent(hermes_device, hermes_file, run, what):
    ready(hermes_file, ENTRY_REGS)
    device = getattr(hermes_device.transport, "device", None)
    if not isinstance(device, HermesDevice):   # only the in-process model counts commands here
        device = None
    before = device.stats["commands"] if device is not None else None
    exc = expect_errno(errno.EINVAL, hermes_file.run_ex, run)
    assert what in exc.strerror
    if device is not None:
        assert device.stats["commands"] == before
    assert hermes_file.run_ex(RunArgs(1, 8)).r0 == 1


def test_state_errors(hermes_file):
    expect_errno(errno.EBADFD, hermes_file.run_ex, RunArgs(0, 0))
    hermes_file.download_program(ENTRY_REGS)
    expect_errno(errno.EBADFD, hermes_file.run_ex, RunArgs(0, 0))
    hermes_file.close()
    expect_errno(errno.EBADF, hermes_file.run_ex, RunArgs(0, 0))


def test_device_without_run_context_is_eopnotsupp(make_driver):
    drv = make_driver(run_context=False)
    assert not drv.geometry.capabilities & regs.EHCAP_RUNCTX
    with drv.open() as f:
        ready(f, ENTRY_REGS)
        exc = expect_errno(errno.EOPNOTSUPP, f.run_ex, RunArgs(0, 8))
        assert "EHCAP_RUNCTX" in exc.strerror
        assert f.run() == drv.geometry.data_slot_size   # the legacy run still works


# --- stopping runs ------------------------------------------------------------------------------
def test_timeout_aborts_the_run_and_frees_the_engine(make_driver):
    drv = make_driver(engines=1, budget=ENDLESS_BUDGET, timeout=30)
    with drv.open() as f:
        ready(f, ENDLESS)
        t0 = time.monotonic()
        exc = expect_errno(errno.ETIMEDOUT, f.run_ex, RunArgs(0, 8, timeout=0.3))
        took = time.monotonic() - t0
        assert "exceeded its timeout of 0.3 s" in exc.strerror and "at pc " in exc.strerror
        assert exc.response.status == regs.STATUS_ABORTED and exc.command_stopped is True
        assert exc.outcome is not None
        assert 0.3 <= took < 0.3 + FREE_BOUND
        assert next_run_is_prompt(drv) < FREE_BOUND
        ready(f, RET5)   # the file keeps its slots
        assert f.run_ex(RunArgs(0, 8, timeout=5)).r0 == 5


def test_abort_from_another_thread(make_driver):
    drv = make_driver(engines=1, budget=ENDLESS_BUDGET, timeout=30)
    with drv.open() as f:
        ready(f, ENDLESS)
        assert f.abort() is False   # nothing running
        results: list = []
        timer = threading.Timer(0.2, lambda: results.append((f.abort(), time.monotonic())))
        timer.start()
        exc = expect_errno(errno.ECANCELED, f.run_ex, RunArgs(0, 8))
        ended = time.monotonic()
        timer.join()
        assert results[0][0] is True and ended - results[0][1] < FREE_BOUND
        assert "aborted" in exc.strerror and exc.response.status == regs.STATUS_ABORTED
        assert f.abort() is False
        assert next_run_is_prompt(drv) < FREE_BOUND
        # the legacy run is abortable the same way
        threading.Timer(0.2, f.abort).start()
        expect_errno(errno.ECANCELED, f.run)


def test_keyboard_interrupt_aborts_the_run_and_frees_the_engine(make_driver):
    drv = make_driver(engines=1, budget=ENDLESS_BUDGET, timeout=30)
    with drv.open() as f:
        ready(f, ENDLESS)
        timer = threading.Timer(0.3, _thread.interrupt_main)
        t0 = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            f.run_ex(RunArgs(0, 8))
        timer.join()
        assert time.monotonic() - t0 < 0.3 + FREE_BOUND
        assert next_run_is_prompt(drv) < FREE_BOUND
        ready(f, RET5)   # stopped: the file keeps its slots and works
        assert f.run_ex(RunArgs(0, 8)).r0 == 5


# --- programs -----------------------------------------------------------------------------------
def test_odd_length_elf_is_padded(hermes_file, tmp_path):
    from hermes.engine.clang import compile_c, find_clang
    if find_clang() is None:
        pytest.skip("clang not installed")
    src = tmp_path / "inc.c"
    src.write_text("unsigned long f(unsigned char *d, unsigned long n) { return n + 1; }\n")
    obj = compile_c(src, tmp_path / "inc.o").read_bytes()
    obj += b"\0" * (3 if len(obj) % 8 == 0 else 0)   # an object whose size is not 8k
    assert len(obj) % 8
    ready(hermes_file, obj)
    assert hermes_file.run_ex(RunArgs(5, 8)).r0 == 6


def test_cancel_flag_aborts_even_before_the_run_starts(make_driver):
    from hermes.engine import Cancel
    drv = make_driver(engines=1, budget=ENDLESS_BUDGET, timeout=30)
    with drv.open() as f:
        ready(f, ENDLESS)
        already = Cancel()
        already.set()
        expect_errno(errno.ECANCELED, f.run_ex, RunArgs(0, 8), cancel=already)
        later = Cancel()
        threading.Timer(0.2, later.set).start()
        expect_errno(errno.ECANCELED, f.run_ex, RunArgs(0, 8), cancel=later)
        assert next_run_is_prompt(drv) < FREE_BOUND

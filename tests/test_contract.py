"""The library-behaviour suite: specs/run-contract.md checked unchanged on every library backend.

Parametrised over ``tests.devices.LIB_BACKENDS`` (cpu, emu, vfio-user served by a real
``hermes serve`` process, vfio over the fake kernel; ``vfio-guest`` in the VM). Error texts are
compared with the cpu backend's for the same call.
"""
from __future__ import annotations

import _thread
import asyncio
import errno
import os
import struct
import threading
import time
from pathlib import Path

import pytest

import hermes
from hermes.engine import Program, clang
from hermes.engine.asm import assemble_program
from hermes.engine.elf import load_elf
from hermes.engine.memory import STACK_SIZE, STACK_TOP

MiB = 1 << 20
#: Instructions no test program reaches: endless loops run until they are stopped.
FOREVER = 1 << 40
#: The largest budget (and loop count): a run that goes on until it is stopped, whatever its speed.
ENDLESS = (1 << 64) - 1
RET7 = assemble_program("mov r0, 7\nexit")
LEN = assemble_program("mov r0, r2\nexit")
#: Stores r3, r4, r5 at data[0..24); returns r2.
ARGS = assemble_program("stxdw [r1], r3\nstxdw [r1+8], r4\nstxdw [r1+16], r5\nmov r0, r2\nexit")
LOOP = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop")
#: r0 = data[arg0] (a load at any offset of the window, or past it).
LOAD_AT = assemble_program("mov r4, r1\nadd r4, r3\nldxb r0, [r4]\nexit")
STORE_PAST = assemble_program("mov r3, r1\nadd r3, r2\nstxb [r3], r2\nmov r0, 0\nexit")

#: The C programs of the suite (clang -target bpf; the VM guest has no clang and gets them
#: compiled by the host in $HERMES_CONTRACT_OBJECTS).
SOURCES = Path(__file__).parent / "data" / "contract"


@pytest.fixture(scope="module")
def progs(tmp_path_factory) -> dict[str, Program | Path]:
    """The programs of ``SOURCES`` by name (``two`` as its object file: it has two entries)."""
    objects = os.environ.get("HERMES_CONTRACT_OBJECTS")
    if clang.find_clang() is not None:
        root = tmp_path_factory.mktemp("contract")
        paths = {src.stem: clang.compile_c(src, root / f"{src.stem}.o")
                 for src in sorted(SOURCES.glob("*.c"))}
    elif objects:
        paths = {obj.stem: obj for obj in sorted(Path(objects).glob("*.o"))}
    else:
        pytest.skip(f"clang is not installed; {clang.INSTALL_HINT}")
    return {name: path if name == "two" else load_elf(path)
            for name, path in paths.items()}


@pytest.fixture
def dev(make_backend):
    """A default device of the current backend."""
    return make_backend()


@pytest.fixture
def one_engine(make_backend):
    """A one-engine device (so a stuck engine would block the next run), or the served device
    as it is where the geometry is fixed (the VM guest)."""
    try:
        return make_backend(engines=1)
    except pytest.skip.Exception:
        return make_backend()


def cpu_outcome(call):
    """What ``call(cpu_device)`` raises (or returns) on the reference backend."""
    with hermes.open("cpu") as cpu:
        try:
            return call(cpu)
        except hermes.HermesError as exc:
            return exc


def same_error(dev, call, cls):
    """``call(dev)`` raises ``cls`` with the text and fields the cpu backend gives."""
    with pytest.raises(cls) as info:
        call(dev)
    ref = cpu_outcome(call)
    assert type(info.value) is type(ref)
    assert str(info.value) == str(ref)
    for name in ("index", "pc", "kind", "address", "size", "regions", "write", "errno", "depth",
                 "trace", "trace_dropped"):
        assert getattr(info.value, name, None) == getattr(ref, name, None), name
    return info.value


# --- 1. inputs, lengths, arguments, the window ----------------------------------------------------
def test_r2_is_the_input_length(dev):
    for data in (b"", b"x", bytes(1000), bytes(range(256)) * 3):
        assert dev.run(LEN, data).return_value == len(data)
    assert dev.run(LEN, b"abc", size=4096).return_value == 3


def test_lengths_are_bytes_whatever_the_item_size(dev):
    np = pytest.importorskip("numpy")
    wide = memoryview(bytearray(range(16))).cast("I")
    assert dev.run(LEN, wide).return_value == 16
    arr = np.arange(10, dtype=np.uint64)
    r = dev.run(LEN, arr)
    assert r.return_value == 80 and r.data == arr.tobytes()
    strided = arr[::2]  # not contiguous: copied
    assert dev.run(LEN, strided).data == strided.tobytes()
    fortran = np.arange(12, dtype=np.uint16).reshape(3, 4).T  # Fortran order: copied
    assert dev.run(LEN, fortran).data == fortran.tobytes()
    with pytest.raises(hermes.UsageError, match="C-contiguous"):
        dev.run(LEN, bytes(8), out=np.zeros((4, 4), dtype=np.uint8).T)


def test_args_reach_r3_to_r5(dev):
    r = dev.run(ARGS, b"", args=(1, 2**64 - 1, -1), size=24, read=24)
    assert struct.unpack("<3Q", r.data) == (1, 2**64 - 1, 2**64 - 1)
    r = dev.run(ARGS, b"", args=(5,), size=24, read=24)
    assert struct.unpack("<3Q", r.data) == (5, 0, 0)


@pytest.mark.parametrize("args, text", [((1, 2, 3, 4), "at most 3 arguments"),
                                        (("7",), "argument 0 must be an integer"),
                                        ((1.5,), "argument 0 must be an integer"),
                                        (5, "args must be a tuple")])
def test_bad_args(dev, args, text):
    err = same_error(dev, lambda d: d.run(RET7, b"", args=args), hermes.UsageError)
    assert text in str(err)


def test_window_past_the_input_reads_zero_on_every_path(dev, progs):
    tail = progs["tail"]
    assert dev.run(tail, b"\xff" * 64, args=(64,)).return_value == 64 * 255
    assert dev.run(tail, b"\xff", args=(64, 1), size=64).return_value == 0
    with dev.session() as s:
        s.load(tail)
        s.write(b"\xff" * 64)
        assert s.run(args=(64,)).return_value == 64 * 255
        s.write(b"\xff")
        assert s.run(args=(64, 1), size=64).return_value == 0  # no previous run's bytes
        assert s.run(args=(64, 0)).return_value == 255  # the same length and window again
    items = [b"\xff" * (64 - k) for k in range(8)]
    assert [r.return_value for r in dev.map(tail, items, args=(64, 56), size=64)] == [
        255 * max(0, 64 - k - 56) for k in range(8)]
    assert asyncio.run(dev.run_async(tail, b"\xff", args=(64, 1), size=64)).return_value == 0


def test_access_outside_the_window_faults(dev):
    assert dev.run(LOAD_AT, b"abcd", args=(7,), size=8).return_value == 0
    err = same_error(dev, lambda d: d.run(LOAD_AT, b"abcd", args=(8,), size=8),
                     hermes.ExecutionFailed)
    assert err.kind == "out_of_bounds" and err.address == hermes.engine.DATA_BASE + 8
    assert "data [0x100000000, 0x100000008) rw" in err.regions
    err = same_error(dev, lambda d: d.run(LOAD_AT, b"abcd", args=(-1,)), hermes.ExecutionFailed)
    assert err.address == hermes.engine.DATA_BASE - 1 and not err.write
    err = same_error(dev, lambda d: d.run(STORE_PAST, b"abcd"), hermes.ExecutionFailed)
    assert err.write and "store" in str(err)


# --- 2. results ----------------------------------------------------------------------------------
def test_output_precedence(dev, progs):
    declare = progs["declare"]
    assert dev.run(declare, bytes(16), args=(4,)).data == bytes([1, 2, 3, 4])  # declared
    assert dev.run(declare, bytes(16), args=(4,), read=6).data == bytes([1, 2, 3, 4, 0, 0])
    assert dev.run(declare, bytes(8), args=(4, 1)).data == bytes([1, 2, 3, 4, 0, 0, 0, 0])
    assert dev.run(declare, b"", args=(32,), size=32).data == bytes(range(1, 33))


SET_OUTPUT_9 = assemble_program("mov r1, 9\ncall 0x1002\nmov r0, 0\nexit")


def test_declared_output_past_the_window_is_a_helper_fault(dev):
    with pytest.raises(hermes.ExecutionFailed) as info:
        dev.run(SET_OUTPUT_9, bytes(8))
    ref = cpu_outcome(lambda d: d.run(SET_OUTPUT_9, bytes(8)))
    assert info.value.kind == ref.kind == "helper" and info.value.pc == ref.pc == 1
    assert dev.run(SET_OUTPUT_9, bytes(8), size=9).data == bytes(9)


def test_result_fields(dev, progs):
    r = dev.run(progs["newlines"], b"a\nb\n")
    ref = cpu_outcome(lambda d: d.run(progs["newlines"], b"a\nb\n"))
    assert r == ref and r.return_value == 2 and r.data == b"a\nb\n"
    assert r.instructions == ref.instructions and r.instructions > 4
    assert r.elapsed is not None and 0 < r.elapsed < 10
    assert r.offset is None and r.index is None and r.trace == ""
    text = repr(r)
    assert text.startswith("Result(r0=2, data=4 bytes, instructions=") and len(text) < 100
    assert len(repr(dev.run(RET7, bytes(MiB)))) < 100


def test_trace(dev, progs):
    r = dev.run(progs["printk"], b"abc", args=(0xBEEF,))
    assert r.trace == "len=3 arg=beef\n" and r.trace_dropped == 0


def test_out_buffer(dev, progs):
    np = pytest.importorskip("numpy")
    out = bytearray(8)
    r = dev.run(progs["xor"], b"abcd", args=(0x20,), out=out)
    assert out[:4] == b"ABCD" and bytes(r.data) == b"ABCD" and isinstance(r.data, memoryview)
    arr = np.zeros(4, dtype=np.uint32)
    dev.run(LEN, np.arange(4, dtype=np.uint32), out=arr)
    assert list(arr) == [0, 1, 2, 3]
    err = same_error(dev, lambda d: d.run(RET7, bytes(16), out=bytearray(8)), hermes.DataTooLarge)
    assert err.size == 16 and err.limit == 8
    same_error(dev, lambda d: d.run(RET7, b"x", out=b"immutable"), hermes.UsageError)


def test_entry_function(dev, progs):
    obj = progs["two"]
    assert dev.run(load_elf(obj, function="second"), b"abc").return_value == 5
    assert dev.run(load_elf(obj, function="first"), b"abc").return_value == 1


# --- 3. errors, identical on every backend --------------------------------------------------------
BAD_PROGRAMS = {"uninitialised register": assemble_program("mov r0, r6\nexit"),
                "unknown helper": assemble_program("call 99\nmov r0, 0\nexit"),
                "r0 not set": assemble_program("exit"),
                "falls through": assemble_program("mov r0, 0"),
                "unknown opcode": bytes(8), "truncated": b"\xb7\0\0\0"}


@pytest.mark.parametrize("name", BAD_PROGRAMS)
def test_load_errors_are_the_hosts(dev, name):
    prog = BAD_PROGRAMS[name]
    err = same_error(dev, lambda d: d.run(prog, b"x"), hermes.ProgramError)
    assert not isinstance(err, hermes.ProgramRejected)


def test_budget(dev):
    err = same_error(dev, lambda d: d.run(LOOP, b"", budget=1000), hermes.BudgetExceeded)
    assert err.kind == "budget" and "1000" in str(err)
    assert dev.run(RET7, b"", budget=2).instructions == 2
    for bad in (0, -1, 1 << 64, "many"):
        same_error(dev, lambda d, bad=bad: d.run(RET7, b"", budget=bad), hermes.UsageError)


def test_fault_in_a_called_function_names_its_stack(dev, progs):
    # faults.c loads data[arg0] two calls deep: the mapped stack is that frame's.
    err = same_error(dev, lambda d: d.run(progs["faults"], b"abcd", args=(100, 0)),
                     hermes.ExecutionFailed)
    assert err.kind == "out_of_bounds" and err.depth == 2
    assert f"stack [{STACK_TOP - 3 * STACK_SIZE:#x}, {STACK_TOP:#x}) rw" in err.regions


def test_printed_text_survives_a_failure(one_engine, progs):
    faults = progs["faults"]
    with pytest.raises(hermes.ExecutionFailed) as info:
        one_engine.run(faults, b"abcd", args=(100, 0))
    assert info.value.trace == "start\nload at 100\n" and info.value.trace_dropped == 0
    err = same_error(one_engine, lambda d: d.run(faults, b"", args=(FOREVER, 1), budget=1000),
                     hermes.BudgetExceeded)
    assert err.trace == "start\n"
    with pytest.raises(hermes.RunTimeout) as info:
        one_engine.run(faults, b"", args=(ENDLESS, 1), budget=ENDLESS, timeout=1.0)
    assert info.value.trace == "start\n"
    cancel = hermes.Cancel()
    # long enough for the run to have printed on a loaded machine before it is stopped
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(hermes.Cancelled) as info:
        one_engine.run(faults, b"", args=(ENDLESS, 1), budget=ENDLESS, cancel=cancel)
    assert info.value.trace == "start\n"
    assert one_engine.run(RET7, b"").trace == ""  # the next run starts with no text


def test_the_devices_own_budget(make_backend):
    dev = make_backend(budget=5000)
    with pytest.raises(hermes.BudgetExceeded) as info:
        dev.run(LOOP, b"")
    with hermes.open("cpu", budget=5000) as cpu, pytest.raises(hermes.BudgetExceeded) as ref:
        cpu.run(LOOP, b"")
    assert str(info.value) == str(ref.value) and info.value.instructions == ref.value.instructions


def test_data_too_large(dev):
    size = dev.data_slot_size
    assert size == dev.info()["data_slot_size"]
    cases = [lambda d: d.run(RET7, bytes(size + 1)),
             lambda d: d.run(RET7, b"x", size=size + 8),
             lambda d: d.run(RET7, b"xy", read=3),
             lambda d: d.run(RET7, b"xy", size=8, read=9)]
    for call in cases:
        err = same_error(dev, call, hermes.DataTooLarge)
        assert isinstance(err, hermes.UsageError) and err.size > err.limit
    same_error(dev, lambda d: d.run(RET7, b"xyz", size=2), hermes.UsageError)
    with dev.session() as s:
        s.load(RET7)
        with pytest.raises(hermes.DataTooLarge):
            s.write(b"abc", offset=size - 2)
        s.write(b"ab", offset=size - 2)
        with pytest.raises(hermes.DataTooLarge):
            s.read(3, offset=size - 2)
        assert s.read(2, offset=size - 2) == b"ab"


def test_closed_device(make_backend):
    dev = make_backend()
    s = dev.session()
    s.load(RET7)
    dev.close()
    calls = [lambda: dev.run(RET7, b"x"), dev.session, lambda: list(dev.map(RET7, [b"x"])),
             lambda: asyncio.run(dev.run_async(RET7, b"x")), lambda: s.write(b"x"),
             lambda: s.run(), dev.info]
    for call in calls:
        with pytest.raises(hermes.DeviceError) as info:
            call()
        assert info.value.errno == errno.ENODEV and str(info.value) == "device is closed"
    dev.close()  # idempotent


# --- 4. cancellation and timeouts ----------------------------------------------------------------
def assert_free_within(dev, seconds: float) -> None:
    """A run on ``dev`` completes within ``seconds`` (its engine is free)."""
    t0 = time.monotonic()
    assert dev.run(RET7, b"x").return_value == 7
    assert time.monotonic() - t0 < seconds


def test_timeout(one_engine):
    dev = one_engine
    t0 = time.monotonic()
    with pytest.raises(hermes.RunTimeout) as info:
        dev.run(LOOP, b"", budget=FOREVER, timeout=0.3)
    took = time.monotonic() - t0
    err = info.value
    ref = cpu_outcome(lambda d: d.run(LOOP, b"", budget=FOREVER, timeout=0.3))
    # where the loop was stopped depends on timing: the text up to the pc is the same
    assert type(err) is type(ref) and err.message == ref.message and err.pc in (0, 1, 2)
    assert isinstance(err, hermes.DeviceTimeout) and isinstance(err, hermes.Cancelled)
    assert err.timeout == 0.3 and err.errno == errno.ETIMEDOUT and took < 10
    assert_free_within(dev, 1)
    for bad in (0, -1, "1"):
        same_error(dev, lambda d, bad=bad: d.run(RET7, b"", timeout=bad), hermes.UsageError)


def test_cancel(one_engine):
    dev = one_engine
    cancel = hermes.Cancel()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(hermes.Cancelled) as info:
        dev.run(LOOP, b"", budget=FOREVER, cancel=cancel)
    assert not isinstance(info.value, hermes.RunTimeout) and info.value.kind == "cancelled"
    assert time.monotonic() - t0 < 5
    assert_free_within(dev, 1)
    already = hermes.Cancel()
    already.set()
    with pytest.raises(hermes.Cancelled):
        dev.run(RET7, b"", cancel=already)
    same_error(dev, lambda d: d.run(RET7, b"", cancel=True), hermes.UsageError)


def test_cancel_as_the_run_starts(one_engine):
    # A Cancel set while the run is still on its way to the device is not lost.
    for delay in (0.0, 0.0005, 0.001, 0.002, 0.005):
        cancel = hermes.Cancel()
        threading.Timer(delay, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(hermes.Cancelled) as info:
            one_engine.run(LOOP, b"", budget=FOREVER, cancel=cancel, timeout=30)
        assert not isinstance(info.value, hermes.RunTimeout) and time.monotonic() - t0 < 5


def test_cancelled_run_async_frees_the_engine(one_engine):
    dev = one_engine

    async def main() -> float:
        task = asyncio.ensure_future(dev.run_async(LOOP, b"", budget=FOREVER))
        await asyncio.sleep(0.3)
        at = time.monotonic()   # the engine must be free within 1 s of the cancel itself
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return at

    cancelled = asyncio.run(main())
    assert dev.run(RET7, b"x").return_value == 7
    assert time.monotonic() - cancelled < 1


def test_keyboard_interrupt_aborts_the_run(one_engine):
    dev = one_engine
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            dev.run(LOOP, b"", budget=FOREVER)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 5
    assert_free_within(dev, 1)


def test_close_aborts_a_run_in_another_thread(one_engine):
    dev = one_engine
    seen: list = []

    def runner() -> None:
        try:
            dev.run(LOOP, b"", budget=FOREVER)
        except BaseException as exc:  # reported to the test thread
            seen.append(exc)

    t = threading.Thread(target=runner)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    dev.close()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 5
    assert isinstance(seen[0], hermes.DeviceError) and seen[0].errno == errno.ENODEV


# --- 5. sessions ---------------------------------------------------------------------------------
def test_session_lengths(dev, progs):
    with dev.session() as s:
        s.load(LEN)
        s.write(b"abcdef")
        assert s.run().return_value == 6
        assert s.run().return_value == 6  # nothing written since: the same input again
        s.write(b"xy", offset=10)
        s.write(b"z")
        assert s.run().return_value == 12  # the end of the furthest write
        assert s.run(length=3).return_value == 3
        s.write(b"q")
        r = s.run(size=16, read=16)
        assert r.return_value == 1 and r.data == b"q" + bytes(15)


def test_session_runs_in_place_again(dev, progs):
    with dev.session() as s:
        s.load(progs["xor"])
        s.write(b"secret")
        assert s.run(args=(0x55,)).data == bytes(c ^ 0x55 for c in b"secret")
        assert s.run(args=(0x55,)).data == b"secret"
        buf = bytearray(6)
        assert s.readinto(buf) == 6 and buf == b"secret"
        assert s.readinto(memoryview(buf)[2:], offset=2) == 4
        with pytest.raises(hermes.UsageError):
            s.readinto(b"read-only")


def test_session_rules_same_everywhere(dev):
    def before_load(d):
        with d.session() as s:
            s.write(b"x")

    def read_before_write(d):
        with d.session() as s:
            s.load(RET7)
            s.read(1)

    def run_before_write(d):
        with d.session() as s:
            s.load(RET7)
            s.run()

    for call, code in ((before_load, errno.EBADFD), (read_before_write, errno.ENODATA),
                       (run_before_write, errno.EBADFD)):
        assert same_error(dev, call, hermes.DeviceError).errno == code


# --- a newline count on every path (run, map, a reused session, run_async) ------------------------
NEWLINE_ITEMS = [b"line\n" * (8 - k) for k in range(8)]
EXPECTED = [8, 7, 6, 5, 4, 3, 2, 1]


def test_newlines_run_map_session_async(dev, progs):
    nl = progs["newlines"]
    assert [dev.run(nl, b).return_value for b in NEWLINE_ITEMS] == EXPECTED
    assert [r.return_value for r in dev.map(nl, NEWLINE_ITEMS)] == EXPECTED
    assert [r.return_value for r in dev.map(nl, NEWLINE_ITEMS, workers=1)] == EXPECTED
    with dev.session() as s:
        s.load(nl)
        got = []
        for b in NEWLINE_ITEMS:
            s.write(b)
            got.append(s.run().return_value)
    assert got == EXPECTED

    async def main() -> list:
        return list(await asyncio.gather(*(dev.run_async(nl, b) for b in NEWLINE_ITEMS)))

    assert [r.return_value for r in asyncio.run(main())] == EXPECTED


# --- 8. scan --------------------------------------------------------------------------------------
def test_scan(dev, progs):
    pieces = pytest.importorskip("hermes.lib.pieces")
    assert pieces is not None
    data = b"".join(NEWLINE_ITEMS) * 50
    results = list(dev.scan(progs["newlines"], data, piece_size=256, delimiter=b"\n"))
    assert sum(r.return_value for r in results) == data.count(b"\n")
    assert [r.index for r in results] == list(range(len(results)))
    assert results[0].offset == 0 and all(len(r.data) <= 256 for r in results)
    total = dev.scan(progs["newlines"], data, piece_size=256, delimiter=b"\n",
                     reduce=lambda acc, r: acc + r.return_value, initial=0)
    assert total == data.count(b"\n")

"""The hermes library API (open, Device, Session, map, run_async, errors) over device and CPU."""
from __future__ import annotations

import asyncio
import errno
import os
import struct
import threading

import pytest
from hypothesis import given, settings, strategies as st

import hermes
from hermes import regs
from hermes.engine import Program
from hermes.engine.asm import assemble_program
from hermes.engine.elf import load_elf
from hermes.engine.frontends import read_program
from hermes.lib import CpuDevice, Result

MiB = 1 << 20
RET7 = assemble_program("mov r0, 7\nexit")
#: Sum of the first data byte count given in data[0..8] over the bytes after it; r0 = the sum.
SUM = assemble_program("""
    ldxdw r3, [r1]
    mov r0, 0
    mov r4, r1
    add r4, 8
loop:
    jeq r3, 0, done
    ldxb r5, [r4]
    add r0, r5
    add r4, 1
    sub r3, 1
    ja loop
done:
    stxdw [r1], r0
    exit
""")
#: Reverses the bytes of data[8 .. 8 + n) in place, n = data[0..8]; returns n.
REVERSE = assemble_program("""
    ldxdw r0, [r1]
    mov r3, r1
    add r3, 8
    mov r4, r3
    add r4, r0
    sub r4, 1
loop:
    jge r3, r4, done
    ldxb r5, [r3]
    ldxb r6, [r4]
    stxb [r3], r6
    stxb [r4], r5
    add r3, 1
    sub r4, 1
    ja loop
done:
    exit
""")
OOB = assemble_program("mov r3, r1\nadd r3, r2\nldxb r0, [r3]\nexit")  # reads 1 past the slot


@pytest.fixture(params=["hermes", "cpu"])
def device(request, make_lib_device):
    """A library device: the Hermes device of the current spec, or the CPU backend."""
    if request.param == "cpu":
        dev = hermes.open("cpu")
        yield dev
        dev.close()
    else:
        yield make_lib_device()


# --- open and info --------------------------------------------------------------------------------
def test_open_emu_and_info():
    with hermes.open("emu", engines=2) as dev:
        info = dev.info()
        assert info["spec"] == "emu"
        assert info["engines"] == 2 and dev.engines == 2
        assert info["data_slot_size"] == MiB and info["program_slots"] == 16
        assert dev.run(RET7, b"abc") == Result(7, b"abc")


def test_open_cpu_and_info():
    with hermes.open("cpu", data_slot_size=4096) as dev:
        info = dev.info()
        assert info["backend"] == "cpu" and info["data_slot_size"] == 4096
        assert dev.data_slot_size == 4096
        # r2 = the input length, as on the device
        r = dev.run(assemble_program("mov r0, r2\nexit"), b"abc")
        assert r.return_value == 3


def test_one_name_for_the_data_slot_size():
    with pytest.raises(hermes.UsageError, match="unknown cpu options: slot_size"):
        hermes.open("cpu", slot_size=4096)
    with hermes.open("emu", data_slot_size=8192) as dev:
        assert dev.data_slot_size == dev.info()["data_slot_size"] == 8192


def test_unknown_spec():
    with pytest.raises(hermes.DeviceError, match="unknown device spec"):
        hermes.open("nonsense:x")


def test_register_backend():
    made = []

    def factory(address: str, **options: object) -> CpuDevice:
        made.append((address, options))
        return CpuDevice(data_slot_size=64)

    hermes.register_backend("test-backend", factory)
    try:
        with hermes.open("test-backend:somewhere", flag=1) as dev:
            assert dev.spec == "test-backend:somewhere"
            assert dev.run(RET7).return_value == 7
        assert made == [("somewhere", {"flag": 1})]
    finally:
        del hermes.lib.BACKENDS["test-backend"]


# --- run ------------------------------------------------------------------------------------------
def test_run_forms_of_program(device, tmp_path):
    assert device.run(RET7, b"x").return_value == 7
    assert device.run(RET7.to_bytes(), b"x").return_value == 7
    path = tmp_path / "ret7.bin"
    path.write_bytes(RET7.to_bytes())
    assert device.run(str(path), b"x").return_value == 7
    assert device.run(path, b"x").return_value == 7


def test_run_result_data(device):
    data = struct.pack("<Q", 5) + b"hello"
    r = device.run(REVERSE, data)
    assert r.return_value == 5
    assert r.data == struct.pack("<Q", 5) + b"olleh"
    assert device.run(REVERSE, data, read=10).data == r.data[:10]
    big = device.run(REVERSE, data, size=64, read=64).data
    assert big[:13] == r.data and big[13:] == bytes(51)  # the window reads zero past the input
    with pytest.raises(hermes.DataTooLarge):
        device.run(REVERSE, data, read=64)  # past the window


def test_new_slot_is_zeroed_on_both_backends(device):
    device.run(RET7, b"Z" * 64)
    assert device.run(RET7, b"", size=64, read=64).data == bytes(64)


def test_nonzero_r0_is_a_result(device):
    r = device.run(assemble_program("lddw r0, 0xffffffffffffffff\nexit"), b"")
    assert r.return_value == 2**64 - 1


def test_execution_failed(device):
    with pytest.raises(hermes.ExecutionFailed) as info:
        device.run(OOB, b"x")
    exc = info.value
    assert exc.kind == "out_of_bounds" and exc.pc == 2
    assert exc.code == regs.EBPF_ERR_OUT_OF_BOUNDS | (2 << 8)
    assert isinstance(exc, hermes.ExecutionError)


def test_budget_failure_kind():
    loop = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop")
    for dev in (hermes.open("emu", budget=500), hermes.open("cpu", budget=500)):
        with dev, pytest.raises(hermes.BudgetExceeded) as info:
            dev.run(loop, b"")
        assert info.value.kind == "budget" and isinstance(info.value, hermes.ExecutionFailed)


def test_invalid_program_rejected_on_the_host():
    texts = []
    for spec in ("emu", "cpu"):
        with hermes.open(spec) as dev, pytest.raises(hermes.ProgramError) as info:
            dev.run(b"\xff" * 8, b"x")
        assert info.value.index == 0 and not isinstance(info.value, hermes.ProgramRejected)
        texts.append(str(info.value))
    assert texts[0] == texts[1]


def test_program_too_large(device):
    with pytest.raises(hermes.ProgramTooLarge) as info:
        device.run(b"\0" * (MiB + 8), b"")
    assert info.value.limit == MiB
    assert isinstance(info.value, hermes.ProgramError)


def test_program_with_segments_needs_elf(lib_device):
    from hermes.engine.memory import RODATA_BASE, Segment
    prog = Program(RET7.to_bytes(), segments=(Segment(".rodata", RODATA_BASE, b"abc", False),))
    with pytest.raises(hermes.ProgramError, match="ELF"):
        lib_device.run(prog, b"")


def test_elf_program_on_both_backends(device, tmp_path):
    from hermes.engine import clang
    if clang.find_clang() is None:
        pytest.skip(f"clang is not installed; {clang.INSTALL_HINT}")
    obj = clang.compile_c(os.path.join(os.path.dirname(__file__), "data", "increment.c"),
                          tmp_path / "increment.o")
    prog = load_elf(obj)
    r = device.run(prog, struct.pack("<3I", 10, 20, 30))
    assert r == Result(0, struct.pack("<3I", 11, 21, 31))
    assert device.run(obj.read_bytes(), struct.pack("<3I", 0, 1, 2)).data == struct.pack(
        "<3I", 1, 2, 3)


def test_timeout():
    loop = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop")
    # a budget of about 1 s of interpretation, far beyond the 50 ms timeout
    with hermes.open("emu", engines=1, executor="interp", budget=50_000_000, timeout=0.05) as dev:
        with pytest.raises(hermes.DeviceTimeout) as info:
            dev.run(loop, b"")
        assert info.value.errno == errno.ETIMEDOUT


# --- sessions -------------------------------------------------------------------------------------
def test_session_cycle(device):
    with device.session() as s:
        s.load(SUM)
        for n in (1, 5, 100):
            payload = bytes(range(n))
            s.write(struct.pack("<Q", n) + payload)
            assert s.run().return_value == sum(payload)
            assert s.read(8) == struct.pack("<Q", sum(payload))
        s.load(RET7)  # a session can swap its program
        assert s.run().return_value == 7
        assert s.write(b"ab", offset=100) == 2
        assert s.read(2, offset=100) == b"ab"


def test_session_rules(device):
    with device.session() as s:
        with pytest.raises(hermes.DeviceError) as info:
            s.write(b"x")
        assert info.value.errno == errno.EBADFD
        s.load(RET7)
        with pytest.raises(hermes.DeviceError) as info:
            s.read(1)
        assert info.value.errno == errno.ENODATA
        with pytest.raises(hermes.DeviceError) as info:
            s.run()
        assert info.value.errno == errno.EBADFD
        with pytest.raises(hermes.DataTooLarge):
            s.write(b"x" * 10, offset=MiB - 4)  # nothing is truncated
        assert s.write(b"x" * 4, offset=MiB - 4) == 4


def test_sessions_own_slots(lib_device):
    sessions = [lib_device.session() for _ in range(17)]
    try:
        for s in sessions[:16]:
            s.load(RET7)
        with pytest.raises(hermes.SlotsExhausted):
            sessions[16].load(RET7)
        sessions[0].close()
        sessions[16].load(RET7)
    finally:
        for s in sessions:
            s.close()


# --- map and async --------------------------------------------------------------------------------
def test_map_in_order(device):
    items = [struct.pack("<Q", n) + bytes(range(n)) for n in range(40)]
    results = list(device.map(SUM, items))
    assert [r.return_value for r in results] == [sum(range(n)) for n in range(40)]
    assert [r.data[:8] for r in results] == [struct.pack("<Q", sum(range(n))) for n in range(40)]


def test_map_uses_every_engine(make_lib_device):
    dev = make_lib_device(engines=3)
    seen = set()
    lock = threading.Lock()
    orig = dev.session

    def session():
        with lock:
            seen.add(threading.get_ident())
        return orig()

    dev.session = session
    assert len(list(dev.map(RET7, [b"x"] * 30))) == 30
    assert len(seen) == 3  # one session per worker, one worker per engine


def test_map_error_propagates(device):
    with pytest.raises(hermes.ExecutionFailed):
        list(device.map(OOB, [b"a", b"b"]))
    assert list(device.map(RET7, [])) == []


def test_map_with_fewer_slots_than_workers(make_lib_device):
    dev = make_lib_device(program_slots=2)
    results = list(dev.map(SUM, [struct.pack("<Q", 1) + bytes([n]) for n in range(50)], workers=4))
    assert [r.return_value for r in results] == list(range(50))
    holders = [dev.session() for _ in range(2)]
    for s in holders:
        s.load(RET7)
    with pytest.raises(hermes.SlotsExhausted):  # no worker can get a slot at all
        list(dev.map(RET7, [b"x"] * 5))
    for s in holders:
        s.close()


def test_map_stops_early(lib_device):
    it = lib_device.map(RET7, (b"x" for _ in range(10_000)))
    assert next(it).return_value == 7
    it.close()  # workers stop, sessions are released
    sessions = [lib_device.session() for _ in range(16)]
    for s in sessions:
        s.load(RET7)
        s.close()


def test_map_releases_sessions(lib_device):
    for _ in range(3):
        list(lib_device.map(RET7, [b"x"] * 10, workers=8))
    sessions = [lib_device.session() for _ in range(16)]
    for s in sessions:
        s.load(RET7)
        s.close()


def test_run_async(device):
    async def main():
        return await asyncio.gather(*(device.run_async(SUM, struct.pack("<Q", 3) + bytes([i, 1, 1]))
                                      for i in range(10)))

    results = asyncio.run(main())
    assert [r.return_value for r in results] == [i + 2 for i in range(10)]


# --- the device and the CPU agree -----------------------------------------------------------------
@pytest.fixture(scope="module")
def both():
    emu, cpu = hermes.open("emu"), hermes.open("cpu")
    yield emu, cpu
    emu.close()
    cpu.close()


@settings(max_examples=25, deadline=None)
@given(payload=st.binary(max_size=300), prog=st.sampled_from(["sum", "reverse"]))
def test_device_and_cpu_agree(both, payload, prog):
    program = {"sum": SUM, "reverse": REVERSE}[prog]
    data = struct.pack("<Q", len(payload)) + payload
    emu, cpu = both
    assert emu.run(program, data) == cpu.run(program, data)


# --- misuse: every wrong argument is a UsageError (a HermesError and a ValueError) -----------
BAD_OPTIONS = [
    ({"executor": "bogus"}, "unknown executor 'bogus'; choose one of"),
    ({"budget": 0}, "budget must be an integer in 1..18446744073709551615, got 0"),
    ({"budget": -1}, "budget must be an integer in 1..18446744073709551615, got -1"),
    ({"budget": 1 << 64}, f"budget must be an integer in 1..18446744073709551615, got {1 << 64}"),
    ({"budget": "many"}, "budget must be an integer in 1..18446744073709551615, got 'many'"),
    ({"engines": 0}, "engines must be an integer in 1..24, got 0"),
    ({"engines": 25}, "engines must be an integer in 1..24, got 25"),
    ({"data_slot_size": 12}, "data_slot_size must be a multiple of 8, got 12"),
    ({"data_slot_size": -8}, "data_slot_size must be an integer in 8..4294967288, got -8"),
    ({"program_slot_size": 1 << 32}, "program_slot_size must be an integer in 8..4294967288"),
    ({"program_slot_size": 8.0}, "program_slot_size must be an integer in 8..4294967288, got 8.0"),
]


@pytest.mark.parametrize("spec", ["emu", "cpu"])
@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_same_on_emu_and_cpu(spec, options, message):
    with pytest.raises(hermes.UsageError) as info:
        hermes.open(spec, **options)
    assert message in str(info.value)
    assert isinstance(info.value, hermes.HermesError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("options", [o for o, _ in BAD_OPTIONS])
def test_device_model_refuses_what_the_library_refuses(options):
    from hermes.device import HermesDevice
    with pytest.raises(ValueError):
        HermesDevice(**options)


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_limits_of_the_option_ranges_are_accepted(spec):
    with hermes.open(spec, engines=24, budget=(1 << 64) - 1, data_slot_size=8,
                     program_slot_size=64) as dev:
        assert dev.run(RET7).return_value == 7


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_unknown_option(spec):
    with pytest.raises(hermes.UsageError, match="frobnicate"):
        hermes.open(spec, frobnicate=1)


def test_bad_specs():
    for spec in (None, 5, b"emu"):
        with pytest.raises(hermes.UsageError, match="device spec is a string"):
            hermes.open(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["text", 5, None, 1.5, [1, 2]])
def test_bad_data(device, bad):
    with pytest.raises(hermes.UsageError, match="data must be bytes"):
        device.run(RET7, bad)
    with device.session() as s:
        s.load(RET7)
        with pytest.raises(hermes.UsageError, match="data must be bytes"):
            s.write(bad)


@pytest.mark.parametrize("bad", [5, None, 1.5, object()])
def test_bad_programs(device, bad):
    with pytest.raises(hermes.UsageError, match="expected a Program, bytes or a path"):
        device.run(bad, b"")


def test_a_program_path_that_cannot_be_read_is_a_usage_error(device, tmp_path):
    missing = tmp_path / "missing.asm"
    with pytest.raises(hermes.UsageError, match="cannot read program file .*missing.asm"):
        device.run(str(missing), b"")
    with pytest.raises(hermes.UsageError, match="cannot read program file") as info:
        device.run(missing, b"")
    assert "from_asm" not in str(info.value)
    # assembly text given where a path goes: the message says how to pass text
    with pytest.raises(hermes.UsageError, match=r"Program\.from_asm\(text\)"):
        device.run("mov r0, 7\nexit", b"")
    assert device.run(hermes.Program.from_asm("mov r0, 7\nexit"), b"").return_value == 7


def test_bad_sizes_and_offsets(device):
    with device.session() as s:
        s.load(RET7)
        s.write(b"x")
        for call, name in ((lambda: s.write(b"x", offset=-1), "offset"),
                           (lambda: s.read(-1), "size"), (lambda: s.read(1, offset=-5), "offset"),
                           (lambda: s.read("8"), "size")):
            with pytest.raises(hermes.UsageError, match=f"{name} must be a non-negative integer"):
                call()
    with pytest.raises(hermes.UsageError, match="read must be a non-negative integer"):
        device.run(RET7, b"", read=-1)


def test_engine_layer_misuse():
    from hermes import engine
    from hermes.engine.elf import load_elf
    from hermes.engine.helpers import DEVICE_HELPERS, HelperRegistry
    cases = [
        (lambda: engine.load(RET7, executor="bogus"), "unknown executor 'bogus'"),
        (lambda: Program(5), "program code must be bytes"),  # type: ignore[arg-type]
        (lambda: assemble_program(5), "assembly source must be str or bytes"),  # type: ignore
        (lambda: load_elf(42), "an ELF object is a path or bytes"),  # type: ignore[arg-type]
        (lambda: load_elf(b"\x7fELF", max_size=-1), "max_size must be a non-negative"),
        (lambda: read_program(7), "a program file is a path"),  # type: ignore[arg-type]
        (lambda: HelperRegistry(list(DEVICE_HELPERS.values()) * 2), "already registered"),
    ]
    for call, message in cases:
        with pytest.raises(hermes.UsageError, match=message):
            call()
    assert assemble_program(b"mov r0, 1\nexit").code == assemble_program("mov r0, 1\nexit").code


def test_non_contiguous_and_wide_data(device):
    strided = memoryview(bytes(range(16)))[::2]
    assert device.run(RET7, strided).data == bytes(range(0, 16, 2))  # copied
    wide = memoryview(bytearray(range(16))).cast("I")  # 4 items of 4 bytes: 16 bytes
    assert device.run(assemble_program("mov r0, r2\nexit"), wide).return_value == 16
    assert device.run(RET7, wide).data == bytes(range(16))

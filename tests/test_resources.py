"""Resource bounds: what a program or object file can make Hermes allocate is bounded and refused early."""
from __future__ import annotations

import gc
import tracemalloc

import pytest

from hermes import engine
from hermes.engine import DEVICE_HELPERS, Program
from hermes.engine.memory import DATA_BASE, RODATA_BASE
from hermes.errors import ExecutionError

ENGINES = ["interp", "jit"]
MiB = 1 << 20


def _peak(fn) -> tuple[object, int]:
    """(result or exception, peak bytes traced by tracemalloc while ``fn`` ran)."""
    gc.collect()
    tracemalloc.start()
    try:
        try:
            out: object = fn()
        except Exception as exc:  # the caller asserts on it
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _call(helper: int, r1: str, r2: str, r3: str) -> Program:
    return Program.from_asm(f"lddw r6, {r1}\nlddw r7, {r2}\nlddw r8, {r3}\n"
                            "mov r1, r6\nmov r2, r7\nmov r3, r8\n"
                            f"call {helper:#x}\nmov r0, 0\nexit")


MEMSET, MEMCPY = (DEVICE_HELPERS.by_name(n).id for n in ("hermes_memset", "hermes_memcpy"))


@pytest.mark.parametrize("eng", ENGINES)
@pytest.mark.parametrize("length", [64 * MiB, (1 << 63) - 1, (1 << 64) - 1])
def test_memset_refuses_before_allocating(eng, length):
    exe = engine.load(_call(MEMSET, hex(DATA_BASE), "7", hex(length)), engine=eng)
    _peak(lambda: exe.run(bytearray(64)))  # warm up: first-run allocations are not the helper's
    err, peak = _peak(lambda: exe.run(bytearray(64)))
    assert isinstance(err, ExecutionError) and err.kind == "out_of_bounds", err
    assert "hermes_memset destination out of bounds" in str(err)
    assert err.address == DATA_BASE and err.size == length and "data [" in err.regions
    assert peak < MiB, f"memset of {length} bytes traced {peak} bytes before failing"


@pytest.mark.parametrize("eng", ENGINES)
def test_memset_fills_large_region_in_bounded_memory(eng):
    size = 8 * MiB
    exe = engine.load(_call(MEMSET, hex(DATA_BASE + 3), "0x1a5", hex(size - 5)), engine=eng)
    mem = bytearray(size)
    exe.run(bytearray(size))
    _, peak = _peak(lambda: exe.run(mem))
    assert mem[:3] == bytes(3) and mem[-2:] == bytes(2)
    assert mem[3:-2] == b"\xa5" * (size - 5)
    assert peak < MiB


@pytest.mark.parametrize("eng", ENGINES)
def test_memcpy_checks_both_operands_first(eng):
    mem = bytearray(range(64))
    # destination valid, source runs past the data slot: nothing is copied
    exe = engine.load(_call(MEMCPY, hex(DATA_BASE), hex(DATA_BASE + 32), "33"), engine=eng)
    with pytest.raises(ExecutionError, match="hermes_memcpy source out of bounds") as info:
        exe.run(mem)
    assert info.value.address == DATA_BASE + 32 and info.value.size == 33
    assert mem == bytearray(range(64))
    exe = engine.load(_call(MEMCPY, hex(RODATA_BASE), hex(DATA_BASE), "4"), engine=eng)
    with pytest.raises(ExecutionError, match="hermes_memcpy destination out of bounds"):
        exe.run(mem)
    err, peak = _peak(lambda: engine.load(
        _call(MEMCPY, hex(DATA_BASE), hex(DATA_BASE), hex(1 << 40)), engine=eng).run(mem))
    assert isinstance(err, ExecutionError) and peak < 4 * MiB


@pytest.mark.parametrize("eng", ENGINES)
def test_memcpy_overlapping_is_memmove(eng):
    mem = bytearray(range(16))
    engine.load(_call(MEMCPY, hex(DATA_BASE + 2), hex(DATA_BASE), "8"), engine=eng).run(mem)
    assert mem == bytearray([0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15])

"""Resource bounds: what a program or object file makes Hermes allocate is capped, refused early."""
from __future__ import annotations

import gc
import tracemalloc

import pytest

from hermes import engine
from hermes.engine import DEVICE_HELPERS, Program
from hermes.engine.asm import assemble_program
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
    return assemble_program(f"lddw r6, {r1}\nlddw r7, {r2}\nlddw r8, {r3}\n"
                            "mov r1, r6\nmov r2, r7\nmov r3, r8\n"
                            f"call {helper:#x}\nmov r0, 0\nexit")


MEMSET, MEMCPY = (DEVICE_HELPERS.by_name(n).id for n in ("hermes_memset", "hermes_memcpy"))


@pytest.mark.parametrize("eng", ENGINES)
@pytest.mark.parametrize("length", [64 * MiB, (1 << 63) - 1, (1 << 64) - 1])
def test_memset_refuses_before_allocating(eng, length):
    exe = engine.load(_call(MEMSET, hex(DATA_BASE), "7", hex(length)), executor=eng)
    _peak(lambda: exe.run(bytearray(64)))  # warm up: first-run allocations are not the helper's
    err, peak = _peak(lambda: exe.run(bytearray(64)))
    assert isinstance(err, ExecutionError) and err.kind == "out_of_bounds", err
    assert "hermes_memset destination out of bounds" in str(err)
    assert err.address == DATA_BASE and err.size == length and "data [" in err.regions
    assert peak < MiB, f"memset of {length} bytes traced {peak} bytes before failing"


@pytest.mark.parametrize("eng", ENGINES)
def test_memset_fills_large_region_in_bounded_memory(eng):
    size = 8 * MiB
    exe = engine.load(_call(MEMSET, hex(DATA_BASE + 3), "0x1a5", hex(size - 5)), executor=eng)
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
    exe = engine.load(_call(MEMCPY, hex(DATA_BASE), hex(DATA_BASE + 32), "33"), executor=eng)
    with pytest.raises(ExecutionError, match="hermes_memcpy source out of bounds") as info:
        exe.run(mem)
    assert info.value.address == DATA_BASE + 32 and info.value.size == 33
    assert mem == bytearray(range(64))
    exe = engine.load(_call(MEMCPY, hex(RODATA_BASE), hex(DATA_BASE), "4"), executor=eng)
    with pytest.raises(ExecutionError, match="hermes_memcpy destination out of bounds"):
        exe.run(mem)
    err, peak = _peak(lambda: engine.load(
        _call(MEMCPY, hex(DATA_BASE), hex(DATA_BASE), hex(1 << 40)), executor=eng).run(mem))
    assert isinstance(err, ExecutionError) and peak < 4 * MiB


@pytest.mark.parametrize("eng", ENGINES)
def test_memcpy_overlapping_is_memmove(eng):
    mem = bytearray(range(16))
    engine.load(_call(MEMCPY, hex(DATA_BASE + 2), hex(DATA_BASE), "8"), executor=eng).run(mem)
    assert mem == bytearray([0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15])


# --- ELF objects: data segments are bounded before they are allocated -----------------------
from hermes.engine.clang import compile_c, find_clang  # noqa: E402
from hermes.engine.elf import DEFAULT_MAX_SIZE, load_elf  # noqa: E402
from hermes.errors import ElfError, ProgramError  # noqa: E402

needs_clang = pytest.mark.skipif(find_clang() is None,
                                 reason="clang not found: apt-get install clang")


def _bss_object(tmp_path, size: int, name: str = "bss") -> bytes:
    """A tiny object whose .bss is ``size`` bytes (about 800 bytes of file)."""
    src = tmp_path / f"{name}.c"
    src.write_text(f"char big[{size}ULL];\n"
                   "int f(char *p) { big[p[0]] = 1; return big[p[1]]; }\n")
    return compile_c(src, tmp_path / f"{name}.o").read_bytes()


@needs_clang
@pytest.mark.parametrize("bss, limit", [(64 * MiB, MiB), (1 << 40, None), (DEFAULT_MAX_SIZE, None)])
def test_elf_data_refused_before_allocation(tmp_path, bss, limit):
    obj = _bss_object(tmp_path, bss)
    assert len(obj) < 2048
    err, peak = _peak(lambda: load_elf(obj, max_size=limit))
    assert isinstance(err, ElfError), err
    bound = DEFAULT_MAX_SIZE if limit is None else limit
    assert f"section .bss (SHT_NOBITS, {bss} bytes)" in str(err)
    assert f"more than the limit of {bound} bytes" in str(err)
    assert peak < MiB, f"refusing a {bss}-byte .bss traced {peak} bytes"


@needs_clang
def test_elf_data_within_the_limit_loads(tmp_path):
    obj = _bss_object(tmp_path, MiB - 4096)
    prog, peak = _peak(lambda: load_elf(obj, max_size=MiB))
    assert [len(s.data) for s in prog.segments] == [MiB - 4096]
    assert peak < 3 * MiB  # the segment, and one copy while it is frozen


@needs_clang
@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_backends_bound_program_data_by_the_program_slot(tmp_path, spec):
    import hermes
    obj = _bss_object(tmp_path, 64 * MiB)
    with hermes.open(spec, executor="interp") as dev:
        assert dev.run(_bss_object(tmp_path, 4096, "small"), b"\0\0").return_value == 1
        err, peak = _peak(lambda: dev.run(obj, b"\0\0"))
        assert isinstance(err, ProgramError), err
        assert peak < 4 * MiB, f"{spec}: refusing the object traced {peak} bytes"
    if spec == "cpu":
        assert "section .bss" in str(err) and "limit of 1048576 bytes" in str(err)


# --- caches of loaded programs: bounded by entries and bytes, emptied on close ----------------
@needs_clang
def test_program_cache_is_bounded_by_bytes(tmp_path):
    from hermes.device.commands import ProgramCache
    obj = _bss_object(tmp_path, 900 << 10)
    cost = load_elf(obj).host_bytes
    cache = ProgramCache(64, lambda code, entry: engine.load(load_elf(code), executor="interp"),
                         max_bytes=4 * MiB)
    for i in range(12):
        cache.get(obj + bytes(8 * i), "interp")  # 12 distinct objects of one program
        assert cache.bytes <= 4 * MiB
    assert len(cache) == (4 * MiB) // (cost + 32)
    big = ProgramCache(64, cache._loader, max_bytes=cost - 1)
    big.get(obj, "interp")
    assert len(big) == 0 and big.bytes == 0  # larger than the whole bound: not kept


@needs_clang
def test_device_frees_its_programs_on_close(tmp_path):
    from hermes.lib import DriverDevice
    from hermes.transport.inproc import InProcessTransport
    obj = _bss_object(tmp_path, 900 << 10)
    transport = InProcessTransport.create(executor="interp")
    model = transport.device
    dev = DriverDevice.from_transport(transport)
    for i in range(12):
        assert dev.run(obj + bytes(8 * i), b"\0\0").return_value == 1
    assert len(model._cache) == 12 and model._cache.bytes >= 12 * (900 << 10)
    dev.close()
    assert len(model._cache) == 0 and model._cache.bytes == 0


def test_cpu_backend_cache_is_bounded_and_freed():
    import hermes
    from hermes.engine.cache import DEFAULT_CACHE_BYTES
    dev = hermes.open("cpu", executor="interp")
    for i in range(70):
        dev.run(assemble_program(f"mov r0, {i}\nexit"))
    assert len(dev._cache) == 64 and dev._cache.bytes <= DEFAULT_CACHE_BYTES
    dev.close()
    assert len(dev._cache) == 0

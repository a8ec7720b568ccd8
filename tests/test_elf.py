"""ELF loader: linking clang objects (data, strings, calls) and one clear error per bad input."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hermes.engine import CONFORMANCE_HELPERS, run
from hermes.engine.clang import compile_c, find_clang
from hermes.engine.elf import describe_elf, load_elf
from hermes.engine.frontends import read_program
from hermes.engine.memory import DATA_BASE, RODATA_BASE, RWDATA_BASE
from hermes.errors import ElfError, ExecutionError, HermesError

needs_clang = pytest.mark.skipif(find_clang() is None,
                                 reason="clang not found: apt-get install clang")

PRELUDE = "typedef unsigned long long u64; typedef unsigned char u8;\n"

# Globals, string literals, a pointer table in .data, a .rodata table, a helper called by name,
# a static noinline callee and a global function in another section (entry not at offset 0).
LINK_C = PRELUDE + r"""
extern u64 sqrti(u64 x);
static const u8 table[4] = {1, 2, 3, 4};
u64 counter;
u64 init = 5;
const char *names[] = {"abc", "def"};
static __attribute__((noinline)) u64 helper(u64 x) { return x * table[x & 3] + counter; }
static __attribute__((section("sec2"), noinline)) u64 other(u64 x) { return x ^ 7; }
u64 entry(u8 *data, u64 size)
{
    counter += init;
    const char *s = names[data[0] & 1];
    return helper(size) + sqrti(data[1]) + s[1] + other(size);
}
"""


def _compile(tmp_path: Path, source: str, name: str = "t", flags: tuple[str, ...] = ()) -> bytes:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    return compile_c(src, tmp_path / f"{name}.o", extra_flags=flags).read_bytes()


@pytest.fixture(scope="module")
def link_obj(tmp_path_factory) -> bytes:
    """The LINK_C object (compiled once per module)."""
    if find_clang() is None:
        pytest.skip("clang not found: apt-get install clang")
    return _compile(tmp_path_factory.mktemp("elf"), LINK_C)


def _expected_link(data0: int, data1: int, size: int) -> int:
    helper = size * (1, 2, 3, 4)[size & 3] + 5
    s1 = b"abc"[1] if data0 % 2 == 0 else b"def"[1]
    return helper + int(data1 ** 0.5) + s1 + (size ^ 7)


@needs_clang
@pytest.mark.parametrize("flags", [(), ("-g",), ("-mcpu=v3",)], ids=["plain", "debug-btf", "v3"])
def test_links_data_strings_helpers_and_calls(link_obj: bytes, flags: tuple[str, ...],
                                              tmp_path: Path) -> None:
    # -g adds BTF and DWARF sections with their own relocations, which the loader must skip
    if flags:
        link_obj = _compile(tmp_path, LINK_C, flags=flags)
    prog = load_elf(link_obj)
    assert prog.name == "entry"
    assert prog.symbols[0] == "entry"
    assert {"helper", "other"} <= set(prog.symbols.values())
    assert prog.elf_bytes == link_obj
    ro = [s for s in prog.segments if not s.writable]
    rw = [s for s in prog.segments if s.writable]
    assert ro[0].vaddr == RODATA_BASE and b"abc\0def\0" in ro[0].data
    assert rw[0].vaddr == RWDATA_BASE
    for mem in (bytes([1, 16]) + bytes(30), bytes([0, 81]) + bytes(62)):
        res = run(prog, bytearray(mem), helpers=CONFORMANCE_HELPERS)
        assert res.return_value == _expected_link(mem[0], mem[1], len(mem))


@needs_clang
def test_writable_data_is_fresh_for_every_run(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + "u64 n; u64 k = 40;\n"
                   "u64 f(u8 *d, u64 s) { n += 1; k += 1; return n + k; }\n")
    prog = load_elf(obj)
    exe_results = [run(prog, bytearray(8)).return_value for _ in range(3)]
    assert exe_results == [42, 42, 42]


@needs_clang
def test_store_to_rodata_faults(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + "static const u64 t[2] = {1, 2};\n"
                   "u64 f(u8 *d, u64 s) { u64 *p = (u64 *)&t[d[0] & 1]; "
                   "*(volatile u64 *)p = 5; return *p; }\n")
    with pytest.raises(ExecutionError) as info:
        run(load_elf(obj), bytearray(8))
    assert info.value.address is not None and info.value.address >= RODATA_BASE


@needs_clang
def test_void_noinline_callee(tmp_path: Path) -> None:
    # clang leaves r0 unwritten in void functions; loading must accept it (the caller never
    # reads it)
    obj = _compile(tmp_path, PRELUDE
                   + "static __attribute__((noinline)) void bump(u64 *p) { *p += 2; }\n"
                   "u64 f(u8 *d, u64 s) { u64 x = s; bump(&x); return x; }\n")
    assert run(load_elf(obj), bytearray(40)).return_value == 42


@needs_clang
def test_entry_selection(link_obj: bytes, tmp_path: Path) -> None:
    assert load_elf(link_obj, section="sec2").name == "other"
    assert load_elf(link_obj, function="other").name == "other"
    # run as the entry, other's argument is r1, the data address
    assert run(load_elf(link_obj, function="other"), bytearray(40)).return_value == DATA_BASE ^ 7
    two = _compile(tmp_path, PRELUDE + "u64 a(u8 *d, u64 s) { return 1; }\n"
                   "u64 b(u8 *d, u64 s) { return 2; }\n")
    with pytest.raises(ElfError, match=r"several functions.*a \(in \.text\).*b \(in \.text\)"):
        load_elf(two)
    assert run(load_elf(two, function="b"), bytearray(1)).return_value == 2
    with pytest.raises(ElfError, match=r"function 'c' not found; functions: a .*, b "):
        load_elf(two, function="c")


@needs_clang
def test_from_file_and_describe(link_obj: bytes, tmp_path: Path) -> None:
    path = tmp_path / "link.o"
    path.write_bytes(link_obj)
    assert read_program(path).name == "entry"
    text = describe_elf(path)
    for needle in ("Sections:", ".rodata.str1.1", "Symbols:", "Relocations:", "R_BPF_64_32",
                   "sqrti = helper 3", "call local", "entry:", "helper:", "other:"):
        assert needle in text, needle


# --- one clear error per bad input -----------------------------------------------------------

def test_not_an_elf() -> None:
    with pytest.raises(ElfError, match="not an ELF object"):
        load_elf(b"hello, world, this is not an object file")
    with pytest.raises(ElfError, match="not an ELF object.*empty input"):
        load_elf(b"")


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ElfError, match="cannot read ELF object"):
        load_elf(tmp_path / "missing.o")


@needs_clang
def test_32_bit_object(tmp_path: Path) -> None:
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    subprocess.run([find_clang(), "-target", "i386-linux-gnu", "-c", str(src), "-o",
                    str(tmp_path / "x.o")], check=True)
    with pytest.raises(ElfError, match=r"wrong ELF class: 32-bit"):
        load_elf(tmp_path / "x.o")


@needs_clang
def test_big_endian_object(tmp_path: Path) -> None:
    obj = _compile(tmp_path, "int f(int x) { return x + 1; }\n", flags=("-target", "bpfeb"))
    with pytest.raises(ElfError, match=r"wrong byte order: big-endian"):
        load_elf(obj)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: apt-get install gcc")
def test_x86_64_object(tmp_path: Path) -> None:
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    subprocess.run(["gcc", "-c", str(src), "-o", str(tmp_path / "x.o")], check=True)
    with pytest.raises(ElfError, match=r"wrong machine EM_X86_64 \(62\): expected EM_BPF"):
        load_elf(tmp_path / "x.o")


@needs_clang
def test_truncated_object(link_obj: bytes) -> None:
    with pytest.raises(ElfError, match="truncated ELF object: 40 bytes"):
        load_elf(link_obj[:40])
    with pytest.raises(ElfError, match="bad section header offset or count"):
        load_elf(link_obj[:len(link_obj) // 2])


@needs_clang
def test_nonexistent_section(link_obj: bytes) -> None:
    with pytest.raises(ElfError, match=r"section 'xdp' does not exist; executable sections: "
                                       r"\.text, sec2"):
        load_elf(link_obj, section="xdp")
    with pytest.raises(ElfError, match=r"section '\.data' is not executable"):
        load_elf(link_obj, section=".data")


@needs_clang
def test_call_to_unknown_function(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + "extern u64 frobnicate(u64);\n"
                   "u64 f(u8 *d, u64 s) { return frobnicate(s); }\n")
    with pytest.raises(ElfError, match=r"function 'frobnicate' not found.*no helper"):
        load_elf(obj)
    # the same name resolves once a registry provides it
    from hermes.engine.helpers import Helper, HelperRegistry
    reg = HelperRegistry([Helper(77, "frobnicate", lambda ctx, a, b, c, d, e: a + 1)])
    prog = load_elf(obj, helpers=reg)
    assert run(prog, bytearray(41), helpers=reg).return_value == 42


@needs_clang
def test_relocation_against_bad_symbol_index(link_obj: bytes) -> None:
    data = bytearray(link_obj)
    shoff, = struct.unpack_from("<Q", data, 40)
    shnum, = struct.unpack_from("<H", data, 60)
    for i in range(shnum):
        sh_type, = struct.unpack_from("<I", data, shoff + i * 64 + 4)
        if sh_type == 9:  # SHT_REL: point its first entry at symbol 9999
            off, = struct.unpack_from("<Q", data, shoff + i * 64 + 24)
            struct.pack_into("<Q", data, off + 8, (9999 << 32) | 1)
            break
    with pytest.raises(ElfError, match="bad symbol index 9999"):
        load_elf(bytes(data), function="entry")


@needs_clang
def test_extern_variable(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + "extern u64 ext;\nu64 f(u8 *d, u64 s) { return ext; }\n")
    with pytest.raises(ElfError, match="undefined symbol 'ext'"):
        load_elf(obj)


@needs_clang
def test_object_over_the_slot_size(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + "static const u8 big[2 << 20] = {1, [(2 << 20) - 1] = 2};\n"
                   "u64 f(u8 *d, u64 s) { return big[s & ((2 << 20) - 1)]; }\n")
    prog = load_elf(obj)
    assert run(prog, bytearray((2 << 20) - 1)).return_value == 2
    with pytest.raises(ElfError, match=r"program too large: .* more than the limit of 1048576"):
        load_elf(obj, max_size=1 << 20)


@needs_clang
def test_btf_map_relocation(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + r"""
struct { int (*type)[2]; int (*max_entries)[1]; } counts __attribute__((section(".maps")));
u64 f(u8 *d, u64 s) { return (u64)&counts; }
""")
    with pytest.raises(ElfError, match=r"map 'counts' \(section \.maps\).*not supported"):
        load_elf(obj)


@needs_clang
def test_legacy_map_relocation(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + r"""
struct bpf_map_def { unsigned type, key_size, value_size, max_entries; };
struct bpf_map_def hits __attribute__((section("maps"))) = {2, 4, 8, 1};
u64 f(u8 *d, u64 s) { return (u64)&hits; }
""")
    with pytest.raises(ElfError, match=r"map 'hits' \(section maps\)"):
        load_elf(obj)


@needs_clang
@settings(max_examples=int(os.environ.get("HERMES_ELF_FUZZ", "300")))
@given(st.data())
def test_corrupted_objects_raise_only_elf_errors(link_obj: bytes, data) -> None:
    """Any byte corruption loads, or fails with ElfError: pyelftools' exceptions never leak."""
    buf = bytearray(link_obj)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(buf))))
    blob = bytes(buf if cut is None else buf[:cut])
    try:
        load_elf(blob, function="entry")
    except ElfError as exc:
        assert str(exc)
    try:
        describe_elf(blob)
    except ElfError:
        pass


def test_clang_missing_message(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HERMES_CLANG", str(tmp_path / "no-such-clang"))
    with pytest.raises(HermesError, match=r"apt-get install clang"):
        compile_c(tmp_path / "x.c", tmp_path / "x.o")


@needs_clang
def test_device_helper_by_name_and_helper_by_id(tmp_path: Path) -> None:
    obj = _compile(tmp_path, PRELUDE + r"""
extern void *hermes_memcpy(void *dst, const void *src, u64 n);
static u64 (*sqrti_by_id)(u64) = (void *)3;
u64 f(u8 *d, u64 s) { hermes_memcpy(d + 8, d, 8); return sqrti_by_id(*(u64 *)(d + 8)); }
""")
    from hermes.engine.helpers import DEVICE_HELPERS, merged
    prog = load_elf(obj)
    memcpy_id = DEVICE_HELPERS.by_name("hermes_memcpy").id
    assert any(i is not None and i.op.form == "call" and i.imm == memcpy_id for i in prog.insns)
    mem = bytearray((1764).to_bytes(8, "little") + bytes(8))
    res = run(prog, mem, helpers=merged(CONFORMANCE_HELPERS, DEVICE_HELPERS))
    assert res.return_value == 42 and mem[8:] == mem[:8]


@needs_clang
def test_cli_disasm_of_an_object(link_obj: bytes, tmp_path: Path, capsys) -> None:
    from hermes.cli import main
    path = tmp_path / "link.o"
    path.write_bytes(link_obj)
    assert main(["disasm", "--elf", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Relocations:" in out and "sqrti = helper 3" in out and "Program entry:" in out

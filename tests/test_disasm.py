"""The disassembler's listing: labels for jump targets, function headers, C lines from DWARF."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings

from hermes.engine import Program
from hermes.engine.asm import assemble, assemble_program
from hermes.engine.clang import compile_c, find_clang
from hermes.engine.disasm import SourceLine, annotated, labels, source_lines
from hermes.engine.elf import load_elf
from tests.test_asm import valid_programs

needs_clang = pytest.mark.skipif(find_clang() is None, reason="clang is not installed "
                                 "(./dev setup installs clang-19)")


def hermes(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hermes", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


LOOP = """\
mov r0, 0
mov r2, 4
top:
add r0, r2
jeq r0, 99, done
sub r2, 1
jne r2, 0, top
call local helper
done:
exit
helper:
mov r0, 5
ja +0
exit
"""


def test_jump_targets_get_labels_and_local_calls_name_the_function():
    program = assemble_program(LOOP)
    text = annotated(program)
    assert text == ("    mov r0, 0\n    mov r2, 4\nL1:\n    add r0, r2\n    jeq r0, 99, L2\n"
                    "    sub r2, 1\n    jne r2, 0, L1\n    call local F1\nL2:\n    exit\n\n"
                    "F1:\n    mov r0, 5\n    ja L3\nL3:\n    exit\n")
    assert assemble(text) == program.code


def test_symbols_name_functions_and_labels_avoid_them():
    program = Program(assemble_program(LOOP).code, symbols={0: "main", 8: "L1"})
    names = labels(program.insns, program.symbols)
    assert names == {0: "main", 2: "L2", 7: "L3", 8: "L1", 10: "L4"}
    text = annotated(program)
    assert text.startswith("main:\n    mov r0, 0\n") and "\n\nL1:\n    mov r0, 5\n" in text
    assert "call local L1" in text and assemble(text) == program.code


def test_verbose_listing_has_slots_and_bytes():
    program = assemble_program("lddw r1, 0x100000000\nja +0\nmov r0, 0\nexit")
    lines = annotated(program, verbose=True).splitlines()
    assert lines[0] == "     0:  18 01 00 00 00 00 00 00  lddw r1, 0x100000000"
    assert lines[1] == "     2:  05 00 00 00 00 00 00 00  ja L1"
    assert lines[2] == "L1:"


@settings(max_examples=200)
@given(valid_programs())
def test_labelled_listing_assembles_to_the_same_code(code: bytes):
    program = Program.from_bytes(code)
    assert assemble(annotated(program)) == code


SOURCE = """\
#include "hermes.h"

static __attribute__((noinline)) u64 weigh(u8 *p, u64 n)
{
    u64 w = 0;
    for (u64 i = 0; i < n; i++)
        w += p[i] * (i + 1);
    return w;
}

HERMES_ENTRY(entry)
{
    u64 total = weigh(data, len);
    if (total > arg0)
        total -= arg0;
    return total;
}

__attribute__((section("other"))) HERMES_ENTRY(second)
{
    return len + 1;
}
"""


@pytest.fixture(scope="module")
def debug_object(tmp_path_factory) -> Path:
    if find_clang() is None:
        pytest.skip("clang is not installed (./dev setup installs clang-19)")
    folder = tmp_path_factory.mktemp("dwarf")
    (folder / "weigh.c").write_text(SOURCE)
    return compile_c(folder / "weigh.c", folder / "weigh.o", extra_flags=["-g"])


def _line_of(text: str) -> int:
    return SOURCE.splitlines().index(text) + 1


def test_source_lines_come_before_the_code_they_produced(debug_object: Path):
    program = load_elf(debug_object, function="entry")
    lines = source_lines(program)
    assert lines, "no line table"
    assert all(isinstance(v, SourceLine) and v.file == "weigh.c" for v in lines.values())
    # every line named is a real line of the source, with its text
    for v in lines.values():
        assert v.text == SOURCE.splitlines()[v.line - 1].strip()
    assert lines[0] == SourceLine("weigh.c", _line_of("HERMES_ENTRY(entry)") + 1, "{")
    text = annotated(program)
    assert "; weigh.c:" in text and "entry:" in text and "weigh:" in text
    # the helper's loop line sits inside the helper's listing, after its header
    loop = f"; weigh.c:{_line_of('        w += p[i] * (i + 1);')}: w += p[i] * (i + 1);"
    assert text.index("weigh:") < text.index(loop)
    assert "call local weigh" in text
    assert assemble(text) == program.code


def test_another_section_maps_to_its_own_lines(debug_object: Path):
    program = load_elf(debug_object, function="second")
    lines = source_lines(program)
    body = _line_of("    return len + 1;")
    assert {v.line for v in lines.values()} <= {body - 1, body}  # its "{" and its return
    assert body in {v.line for v in lines.values()}


def test_without_the_source_file_the_line_is_still_named(debug_object: Path, tmp_path: Path):
    moved = tmp_path / "weigh.o"
    shutil.copy(debug_object, moved)
    blob = moved.read_bytes()
    # the same object, its source gone: the compilation directory no longer has weigh.c
    source = debug_object.parent / "weigh.c"
    kept = source.read_text()
    source.unlink()
    try:
        lines = source_lines(load_elf(blob, function="entry"))
        assert lines and all(v.text is None for v in lines.values())
        assert next(iter(lines.values())).comment().startswith("; weigh.c:")
    finally:
        source.write_text(kept)


@needs_clang
def test_object_without_debug_info_has_no_source_lines(tmp_path: Path):
    (tmp_path / "p.c").write_text(SOURCE)
    obj = compile_c(tmp_path / "p.c", tmp_path / "p.o")
    program = load_elf(obj, function="entry")
    assert source_lines(program) == {}
    assert ";" not in annotated(program)


def test_cli_disasm_of_a_debug_object(debug_object: Path):
    out = hermes("disasm", str(debug_object), "--function", "entry")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("entry:\n") and "; weigh.c:" in out.stdout
    verbose = hermes("disasm", str(debug_object), "--function", "entry", "-v")
    assert "     0:  " in verbose.stdout and "; weigh.c:" in verbose.stdout
    report = hermes("disasm", str(debug_object), "--elf")
    assert report.returncode == 0 and "Relocations:" in report.stdout
    several = hermes("disasm", str(debug_object))
    assert several.returncode == 1 and "several functions" in several.stderr


def test_cli_disasm_options_need_an_object(tmp_path: Path):
    (tmp_path / "p.s").write_text(LOOP)
    out = hermes("disasm", "p.s", "--elf", cwd=tmp_path)
    assert out.returncode == 1 and "--elf needs an ELF object" in out.stderr
    out = hermes("disasm", "p.s", cwd=tmp_path)
    assert out.returncode == 0 and "jne r2, 0, L1" in out.stdout


def test_trace_of_a_debug_object_shows_the_source_lines_it_runs(debug_object: Path):
    out = hermes("exec", str(debug_object), "--function", "entry", "--mem", "0102", "--arg", "1",
                 "--trace")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == hex(1 * 1 + 2 * 2 - 1)
    loop = f"; weigh.c:{_line_of('        w += p[i] * (i + 1);')}: w += p[i] * (i + 1);"
    assert lines.count(loop) == 2  # once per trip of the loop
    assert lines[0].startswith("; weigh.c:") and lines[1].split()[0] == "0:"

"""The Program value, its front ends (assembly, ELF, files) and the ``Program.from_*`` spellings."""
from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import pytest

import hermes
from hermes.conformance_pyelf import build_pyelf_object
from hermes.engine import CONFORMANCE_HELPERS, read_program, run
from hermes.engine.asm import assemble, assemble_program
from hermes.engine.disasm import disassemble_insns
from hermes.engine.elf import load_elf
from hermes.engine.memory import RODATA_BASE, Segment
from hermes.engine.program import Program
from hermes.errors import AssemblerError, ElfError, ProgramError, UsageError

RET7 = "mov r0, 7\nexit\n"
#: The pyelftools template object: ``mov r1, 1764; call sqrti; exit`` (returns 42).
TEMPLATE_OBJECT = build_pyelf_object("")


def test_program_is_a_frozen_value_with_declared_fields() -> None:
    names = [f.name for f in dataclasses.fields(Program)]
    assert names == ["code", "segments", "name", "symbols", "entry_symbol", "elf_bytes", "insns"]
    program = Program(assemble(RET7), name="ret7", symbols={0: "main"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.name = "other"  # type: ignore[misc]
    assert (program.name, program.symbols, program.entry_symbol, program.elf_bytes) == (
        "ret7", {0: "main"}, 0, None)
    assert program.to_bytes() == program.code == assemble(RET7)
    assert len(program) == 2 and repr(program) == "<Program 'ret7' 2 slots>"


def test_fields_are_normalised_and_validated_on_construction() -> None:
    seg = Segment(".rodata", RODATA_BASE, b"abc", False)
    program = Program(bytearray(assemble(RET7)), segments=[seg], symbols=None)  # type: ignore[arg-type]
    assert type(program.code) is bytes and program.segments == (seg,) and program.symbols == {}
    with pytest.raises(UsageError, match="program code must be bytes"):
        Program("mov r0, 7")  # type: ignore[arg-type]
    with pytest.raises(ProgramError, match="more than the limit of 1"):
        Program(assemble(RET7), max_slots=1)
    with pytest.raises(ProgramError, match="out of bounds"):
        assemble_program("ja +5\nexit")


def test_programs_compare_by_identity_and_pickle_whole() -> None:
    a, b = Program(assemble(RET7)), Program(assemble(RET7))
    assert a != b and a.digest == b.digest and len({a, b}) == 2
    elf = load_elf(TEMPLATE_OBJECT, helpers=CONFORMANCE_HELPERS)
    copy = pickle.loads(pickle.dumps(elf))
    assert (copy.code, copy.elf_bytes, copy.symbols, copy.digest) == (
        elf.code, elf.elf_bytes, elf.symbols, elf.digest)


def test_program_module_knows_no_front_end() -> None:
    """program.py imports the ISA (its decoder) and memory (segments), never asm/elf/disasm."""
    tree = ast.parse(Path(hermes.engine.program.__file__).read_text())
    relative = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert relative == {"isa", "memory"}


def test_assemble_program() -> None:
    program = assemble_program(RET7, name="ret7")
    assert program.name == "ret7" and run(program).return_value == 7
    assert assemble_program(RET7.encode()).code == assemble(RET7)
    with pytest.raises(AssemblerError):
        assemble_program("bogus r0")


def test_load_elf_keeps_the_object() -> None:
    program = load_elf(TEMPLATE_OBJECT, helpers=CONFORMANCE_HELPERS)
    assert program.elf_bytes == TEMPLATE_OBJECT
    assert run(program, helpers=CONFORMANCE_HELPERS).return_value == 42


def test_read_program_tells_files_apart(tmp_path: Path) -> None:
    (tmp_path / "ret7.s").write_text(RET7)
    (tmp_path / "ret7.bin").write_bytes(assemble(RET7))
    (tmp_path / "prog.o").write_bytes(TEMPLATE_OBJECT)
    for name in ("ret7.s", "ret7.bin"):
        program = read_program(tmp_path / name)
        assert (program.name, program.code, program.elf_bytes) == (name, assemble(RET7), None)
    assert read_program(str(tmp_path / "prog.o")).elf_bytes == TEMPLATE_OBJECT
    (tmp_path / "bad.o").write_bytes(b"\x7fELF" + bytes(8))
    with pytest.raises(ElfError):
        read_program(tmp_path / "bad.o")
    with pytest.raises(UsageError, match="a program file is a path"):
        read_program(b"mov r0, 0")  # type: ignore[arg-type]


def test_the_documented_spellings_are_the_front_ends(tmp_path: Path) -> None:
    """``Program.from_asm``/``from_elf``/``from_file``/``disasm()`` (README, specs/library.md)
    give what the front-end functions give."""
    assert hermes.Program is Program
    assert Program.from_asm(RET7, name="x").code == assemble_program(RET7).code
    assert Program.from_asm(RET7, name="x").name == "x"
    via_method = Program.from_elf(TEMPLATE_OBJECT, max_size=1 << 20)
    assert via_method.code == load_elf(TEMPLATE_OBJECT).code
    assert via_method.elf_bytes == TEMPLATE_OBJECT
    with pytest.raises(ElfError, match="program too large"):
        Program.from_elf(TEMPLATE_OBJECT, max_size=8)
    (tmp_path / "ret7.asm").write_text(RET7)
    assert Program.from_file(tmp_path / "ret7.asm").code == assemble(RET7)
    program = assemble_program(RET7)
    assert program.disasm() == disassemble_insns(program.insns) == "mov r0, 7\nexit\n"

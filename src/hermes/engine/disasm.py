"""Disassembler: instructions back to the assembler's syntax, with labels and C source lines.

``disassemble`` gives one instruction a line with relative jump offsets (``asm(disasm(b)) ==
b``). ``annotated`` is the listing of ``hermes disasm``: function headers, ``L1:`` labels for jump
targets (jumps print ``ja L1``, local calls ``call local name``), and for an ELF object compiled
with ``-g`` the C source line before the instructions it produced (``; prog.c:12: total += x;``),
read from the object's DWARF line table with pyelftools. It still assembles to the same bytes.
"""
from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, NamedTuple

from . import cfg
from .isa import Insn, decode, encode, jump_target
from .program import Program

if TYPE_CHECKING:  # pyelftools is imported when a listing asks for source lines
    from elftools.dwarf.lineprogram import LineProgram
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection


def fmt_imm(value: int) -> str:
    """An immediate as text: small values in decimal, large ones in hex (sign kept)."""
    if -4096 < value < 4096:
        return str(value)
    return hex(value) if value >= 0 else "-" + hex(-value)


def _off(value: int) -> str:
    return f"+{value}" if value >= 0 else str(value)


def _mem(reg: int, off: int) -> str:
    return f"[r{reg}{_off(off)}]" if off else f"[r{reg}]"


def format_insn(insn: Insn, target: str | None = None) -> str:
    """One instruction in assembly syntax; a jump's or local call's target is ``target`` (a
    label) when given, else its relative offset."""
    op, d, s, off, imm = insn
    m, form = op.mnemonic, op.form
    if form == "alu_k":
        return f"{m} r{d}, {fmt_imm(imm)}"
    if form == "alu_x":
        return f"{m} r{d}, r{s}"
    if form in ("unary", "end", "callx"):
        return f"{m} r{d}"
    if form == "ja":
        return f"{m} {target or _off(off)}"
    if form == "gotol":
        return f"{m} {target or _off(imm)}"
    if form == "jcond_k":
        return f"{m} r{d}, {fmt_imm(imm)}, {target or _off(off)}"
    if form == "jcond_x":
        return f"{m} r{d}, r{s}, {target or _off(off)}"
    if form == "call":
        return f"call {imm}"
    if form == "call_local":
        return f"call local {target or _off(imm)}"
    if form == "exit":
        return "exit"
    if form == "lddw":
        return f"lddw r{d}, {hex(imm)}"
    if form == "ldx":
        return f"{m} r{d}, {_mem(s, off)}"
    if form == "st":
        return f"{m} {_mem(d, off)}, {fmt_imm(imm)}"
    return f"{m} {_mem(d, off)}, r{s}"  # stx, atomic


def disassemble_insns(insns: list[Insn | None]) -> str:
    """Disassemble a decoded program (``None`` entries are lddw second halves and are skipped)."""
    return "\n".join(format_insn(i) for i in insns if i is not None) + "\n"


def disassemble(code: bytes) -> str:
    """Decode and disassemble raw instruction bytes."""
    return disassemble_insns(decode(code))


# -- labelled listings ----------------------------------------------------------------------------
def labels(insns: list[Insn | None], symbols: dict[int, str] | None = None) -> dict[int, str]:
    """A name for every slot a jump or local call goes to (and every known function start):
    the function's symbol where there is one, else ``F1``, ``F2``... for local-call targets and
    ``L1``, ``L2``... for jump targets, numbered in slot order and never clashing with a
    symbol."""
    names = dict(symbols or {})
    taken = set(names.values())
    called: set[int] = set()
    jumped: set[int] = set()
    for pc, insn in enumerate(insns):
        if insn is None:
            continue
        target = jump_target(insn, pc)
        if target is not None:
            (called if insn.op.is_local_call else jumped).add(target)
    counters = {"F": 0, "L": 0}
    for slot in sorted(called | jumped):
        if slot in names:
            continue
        prefix = "F" if slot in called else "L"
        while True:
            counters[prefix] += 1
            name = f"{prefix}{counters[prefix]}"
            if name not in taken:
                break
        names[slot] = name
        taken.add(name)
    return names


def insn_texts(insns: list[Insn | None], names: dict[int, str]) -> dict[int, str]:
    """Each instruction's text by slot, with targets by their name in ``names``."""
    out = {}
    for pc, insn in enumerate(insns):
        if insn is None:
            continue
        target = jump_target(insn, pc)
        out[pc] = format_insn(insn, names.get(target) if target is not None else None)
    return out


class SourceLine(NamedTuple):
    """Where an instruction came from: the source file's name, the line, its text (None when
    the source file cannot be read here)."""

    file: str
    line: int
    text: str | None

    def comment(self) -> str:
        """The listing's comment line: ``; prog.c:12: total += x;``."""
        text = f": {self.text}" if self.text else ""
        return f"; {self.file}:{self.line}{text}"


def annotated(program: Program, *, verbose: bool = False,
              source: dict[int, SourceLine] | None = None) -> str:
    """The listing ``hermes disasm`` prints for ``program``: function headers,
    labels, targets by name, and source lines (``source``, default ``source_lines(program)``);
    ``verbose`` adds each instruction's slot and raw bytes. Without ``verbose`` the text
    assembles back to the program's code."""
    insns = program.insns
    names = labels(insns, program.symbols)
    texts = insn_texts(insns, names)
    lines = source_lines(program) if source is None else source
    functions = set(program.symbols) | cfg.local_call_targets(insns)
    out: list[str] = []
    previous: SourceLine | None = None
    for pc, insn in enumerate(insns):
        if insn is None:
            continue
        if pc in names:
            if pc in functions and out:
                out.append("")
            out.append(f"{names[pc]}:")
        here = lines.get(pc)
        if here is not None and here[:2] != (previous[:2] if previous else None):
            out.append(here.comment())
            previous = here
        if verbose:
            out.append(f"{pc:6d}:  {encode(insn).hex(' ')[:23]:23s}  {texts[pc]}")
        else:
            out.append(f"    {texts[pc]}")
    return "\n".join(out) + "\n"


# -- source lines from DWARF -----------------------------------------------------------------------
def source_lines(program: Program, search: list[str] | None = None) -> dict[int, SourceLine]:
    """The C source line of each slot of ``program`` that starts one in the DWARF line table
    of the ELF object it was linked from (``program.elf_bytes``; compiled with ``-g``).

    Empty when the program has no object or the object no line table. A line's text is read
    from the source file (its directory as recorded by the compiler, else the folders of
    ``search``); when the file is not there, only the file and line are known. Never raises
    for an object the loader accepted: what cannot be mapped is left out.
    """
    blob = program.elf_bytes
    if not blob:
        return {}
    from elftools.common.exceptions import ELFError
    try:
        rows, functions = _dwarf_rows(bytes(blob))
    except (ELFError, ValueError, KeyError, IndexError, AttributeError, TypeError,
            UnicodeDecodeError):
        return {}  # debug information is an extra: the listing without it is still right
    starts = {name: slot for slot, name in program.symbols.items()}
    out: dict[int, SourceLine] = {}
    texts = _SourceFiles(search or [])
    for section, address, path, name, line in rows:
        slot = _slot_of(section, address, starts, functions)
        if slot is None or line == 0:
            continue
        out[slot] = SourceLine(name, line, texts.line(path, line))
    return out


#: A row of a line table: (code section index, byte offset in it, path, file name, line).
_Row = tuple[int, int, str, str, int]
#: A function symbol: (code section index, byte offset, size, name).
_Function = tuple[int, int, int, str]


def _dwarf_rows(blob: bytes) -> tuple[list[_Row], list[_Function]]:
    """The line-table rows and the function symbols of an object."""
    # (the constants module builds its names at import time; its inline types list none)
    from elftools.dwarf.constants import DW_LNE_set_address  # type: ignore[attr-defined]
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection
    elf = ELFFile(io.BytesIO(blob))
    rows: list[_Row] = []
    if not elf.has_dwarf_info():
        return rows, []
    code = {k for k, sec in enumerate(elf.iter_sections())
            if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_size"]}
    symtab = next((s for s in elf.iter_sections() if isinstance(s, SymbolTableSection)), None)
    functions = [] if symtab is None else [
        (y["st_shndx"], y["st_value"], y["st_size"], y.name) for y in symtab.iter_symbols()
        if y["st_info"]["type"] == "STT_FUNC" and y["st_shndx"] in code]
    # In a relocatable object every DW_LNE_set_address holds an offset into some code
    # section; which one only its relocation says. They appear in the same order.
    sections = _set_address_sections(elf, symtab, code)
    dwarf = elf.get_dwarf_info(relocate_dwarf_sections=True)
    found = [dwarf.line_program_for_CU(cu) for cu in dwarf.iter_CUs()]
    programs = sorted([lp for lp in found if lp is not None],
                      key=lambda lp: lp.program_start_offset)
    entries = [(lp, e) for lp in programs for e in lp.get_entries()]
    count = sum(1 for _, e in entries if e.is_extended and e.command == DW_LNE_set_address)
    if len(sections) != count:
        if len(code) != 1:
            return rows, functions  # cannot tell which section a sequence is in
        sections = [next(iter(code))] * count
    k = -1
    for lp, e in entries:
        if e.is_extended and e.command == DW_LNE_set_address:
            k += 1
        if e.state is None or e.state.end_sequence or k < 0:
            continue
        path, name = _file_of(lp, e.state.file)
        rows.append((sections[k], e.state.address, path, name, e.state.line))
    return rows, functions


def _set_address_sections(elf: ELFFile, symtab: SymbolTableSection | None,
                          code: set[int]) -> list[int]:
    """The code section of each address relocation of the line table, in order."""
    from elftools.elf.relocation import RelocationSection
    rel = elf.get_section_by_name(".rel.debug_line") or elf.get_section_by_name(".rela.debug_line")
    if not isinstance(rel, RelocationSection) or symtab is None:
        return []
    found = []
    for r in sorted(rel.iter_relocations(), key=lambda r: r["r_offset"]):
        shndx = symtab.get_symbol(r["r_info_sym"])["st_shndx"]
        if shndx in code:
            found.append(shndx)
    return found


def _file_of(lp: LineProgram, index: int) -> tuple[str, str]:
    """(path to read, name to print) of file ``index`` of a line program; the name is the
    file's own name, without the folders a build gave it."""
    header = lp.header
    files = header["file_entry"]
    dirs = header["include_directory"]
    # DWARF 5 numbers files and directories from 0 (0 = the compilation's own); earlier
    # versions from 1, with directory 0 meaning the compilation directory.
    entry = files[index] if header["version"] >= 5 else files[index - 1]
    name = entry.name.decode("utf-8", "replace")
    d = entry.dir_index if header["version"] >= 5 else entry.dir_index - 1
    folder = dirs[d].decode("utf-8", "replace") if 0 <= d < len(dirs) else ""
    return os.path.join(folder, name), os.path.basename(name)


def _slot_of(section: int, address: int, starts: dict[str, int],
             functions: list[_Function]) -> int | None:
    """The linked slot of byte ``address`` of code section ``section``: functions keep their
    instructions together when linked, so the offset inside the enclosing function symbol
    carries over to where the linker put that function."""
    best = None
    for shndx, value, size, name in functions:
        if shndx == section and value <= address and (address < value + size or not size) \
                and (best is None or value > best[0]) and name in starts:
            best = (value, name)
    if best is None or address % 8:
        return None
    return starts[best[1]] + (address - best[0]) // 8


class _SourceFiles:
    """Source files read once each, for the text of their lines."""

    def __init__(self, search: list[str]):
        self.search = search
        self.cache: dict[str, list[str] | None] = {}

    def line(self, path: str, line: int) -> str | None:
        """The stripped text of ``line`` of ``path``, or None."""
        if path not in self.cache:
            self.cache[path] = self._read(path)
        lines = self.cache[path]
        if lines is None or not 0 < line <= len(lines):
            return None
        return lines[line - 1].strip() or None

    def _read(self, path: str) -> list[str] | None:
        for candidate in [path] + [os.path.join(d, os.path.basename(path)) for d in self.search]:
            try:
                with open(candidate, "rb") as f:
                    return f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
        return None

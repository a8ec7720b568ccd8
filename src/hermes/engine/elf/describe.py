"""ELF description: a readable report of an object (sections, symbols, relocations, linked code)."""
from __future__ import annotations

from pathlib import Path

from ...errors import ElfError, ProgramError
from .. import isa
from ..disasm import format_insn
from ..helpers import HelperRegistry
from ..isa import MAX_PROGRAM_SLOTS
from ..program import Program
from .link import Linker, LinkInfo, default_helpers
from .parse import (
    MACHINE_NAMES,
    MALFORMED,
    RELOC_NAMES,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    SHT_REL,
    SHT_RELA,
    STB_LOCAL,
    ElfObject,
    malformed,
    read_source,
)


def describe_elf(source: str | Path | bytes, *, helpers: HelperRegistry | None = None) -> str:
    """A readable report of an object: sections, symbols, relocations and the linked code.

    Every candidate entry function is linked and listed; link errors are reported inline.
    """
    data, label = read_source(source)
    try:
        obj = ElfObject(data)
    except ElfError:
        raise
    except MALFORMED as exc:
        raise malformed(exc) from None
    machine = obj.machine
    lines = [f"ELF object{f' {label}' if label else ''}: {len(data)} bytes, ELF64 little-endian "
             f"relocatable, machine {MACHINE_NAMES.get(machine, machine)}", "", "Sections:"]
    lines.append(f"  {'#':>3} {'name':24} {'type':14} {'flags':5} {'offset':>8} {'size':>8}")
    for s in obj.sections:
        flags = "".join(c for c, bit in (("W", SHF_WRITE), ("A", SHF_ALLOC), ("X", SHF_EXECINSTR))
                        if s.flags & bit)
        lines.append(f"  {s.index:>3} {s.name[:24]:24} {s.type_name[:14]:14} {flags:5} "
                     f"{s.offset:>8} {s.size:>8}")
    st = obj.symtab_index()
    syms = obj.symbols(st) if st is not None else []
    lines += ["", "Symbols:"]
    for y in syms[1:]:
        where = {SHN_UNDEF: "UND", SHN_ABS: "ABS", SHN_COMMON: "COM"}.get(
            y.shndx, obj.sections[y.shndx].name if y.shndx < len(obj.sections) else str(y.shndx))
        lines.append(f"  {y.index:>3} {y.value:#10x} {y.size:>6} {y.type_name[4:]:8} "
                     f"{y.bind_name[4:]:7} {where[:16]:16} {obj.symbol_name(y)}")
    lines += ["", "Relocations:"]
    for rel in obj.sections:
        if rel.type not in (SHT_REL, SHT_RELA):
            continue
        target = obj.sections[rel.info].name if rel.info < len(obj.sections) else f"#{rel.info}"
        try:
            rsyms, entries = obj.relocations(rel)
        except ElfError as exc:
            lines.append(f"  {rel.name}: {exc}")
            continue
        for r in entries:
            lines.append(f"  {target}+{r.offset:#x} {RELOC_NAMES.get(r.type, str(r.type)):18} "
                         f"{obj.symbol_name(rsyms[r.sym])}")
    linker = Linker(obj, helpers if helpers is not None else default_helpers())
    candidates: list[str | None] = [y.name for y in linker.functions() if y.bind != STB_LOCAL]
    for name in candidates or [None]:
        lines += ["", f"Program {name or '(default entry)'}:"]
        try:
            program, info = Linker(obj, linker.helpers).link(None, name, None, MAX_PROGRAM_SLOTS)
        except ProgramError as exc:
            lines.append(f"  cannot link: {exc}")
            continue
        for seg in program.segments:
            lines.append(f"  segment {seg.name} at {seg.vaddr:#x}, {len(seg.data)} bytes, "
                         f"{'writable' if seg.writable else 'read-only'}")
        for sname, addr in info.data.items():
            lines.append(f"    {sname} at {addr:#x}")
        lines.append("  code: " + ", ".join(f"{n} at slot {s}" for n, s in info.sections))
        lines.append(_listing(program, info))
    return "\n".join(lines).rstrip() + "\n"


def _listing(program: Program, info: LinkInfo) -> str:
    out = []
    for i, insn in enumerate(program.insns):
        if insn is None:
            continue
        if i in program.symbols:
            out.append(f"{program.symbols[i]}:")
        note = "".join(f"  ; {n}" for n in info.notes.get(i, []))
        out.append(f"  {i:6d}:  {isa.encode(insn).hex(' ')[:23]:23s}  {format_insn(insn)}{note}")
    return "\n".join(out)

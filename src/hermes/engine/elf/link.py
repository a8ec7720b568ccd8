"""ELF linking: an object's entry function and its callees laid out and relocated into a Program."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ElfError, ProgramError, UsageError
from .. import isa
from ..helpers import CONFORMANCE_HELPERS, DEVICE_HELPERS, HelperRegistry, merged
from ..isa import MAX_PROGRAM_SLOTS
from ..memory import RODATA_BASE, RWDATA_BASE, Segment
from ..program import Program
from .parse import (
    MALFORMED,
    MAX_SEGMENT_SPAN,
    R_BPF_64_32,
    R_BPF_64_64,
    R_BPF_64_ABS32,
    R_BPF_64_ABS64,
    R_BPF_NONE,
    RELOC_NAMES,
    SHF_ALLOC,
    SHF_WRITE,
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    STB_LOCAL,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    Relocation,
    Section,
    Symbol,
    malformed,
    read_source,
)

#: Section name prefixes mapped as program data; everything else non-executable is not loaded.
RODATA_PREFIXES = (".rodata",)
RWDATA_PREFIXES = (".data", ".bss")
#: Sections that hold BPF map definitions (BTF-style ``.maps`` and legacy ``maps``).
MAP_SECTION_PREFIXES = (".maps", "maps")

#: Code + data bytes a linked program may have when the caller sets no ``max_size``: what a
#: loaded program (and each run's copy of its writable data) may cost in host memory.
DEFAULT_MAX_SIZE = 64 << 20

_OPCODE_CALL = isa.CLS_JMP | isa.JMP_CALL | isa.SRC_K
_PSEUDO_CALL = 1  #: src field of a bpf-to-bpf call

_DEFAULT_HELPERS: HelperRegistry | None = None


def default_helpers() -> HelperRegistry:
    """Helpers calls to undefined functions resolve against by default (corpus + device sets)."""
    global _DEFAULT_HELPERS
    if _DEFAULT_HELPERS is None:
        _DEFAULT_HELPERS = merged(CONFORMANCE_HELPERS, DEVICE_HELPERS)
    return _DEFAULT_HELPERS


@dataclass
class LinkInfo:
    """What the linker did, for ``describe_elf``: the layout and every applied relocation."""

    entry: str
    sections: list[tuple[str, int]] = field(default_factory=list)  # (code section, first slot)
    data: dict[str, int] = field(default_factory=dict)              # data section -> address
    notes: dict[int, list[str]] = field(default_factory=dict)       # slot -> relocation notes


def load_elf(source: str | Path | bytes, section: str | None = None,
             function: str | None = None, *, helpers: HelperRegistry | None = None,
             max_size: int | None = None, max_slots: int = MAX_PROGRAM_SLOTS,
             entry_symbol: int = 0) -> Program:
    """Link a BPF relocatable object (path or bytes) into a ``Program``.

    The entry point is the function ``function``, else the only global function of ``section``,
    else the only global function of the object (see specs/elf.md for the exact rule); or the
    function whose symbol table index is ``entry_symbol`` (0: that rule). The program's
    ``entry_symbol`` names the chosen function that way (0 when the default rule chose). Calls to
    undefined functions resolve by name against ``helpers`` (default: conformance + device
    helpers); ``.rodata*`` becomes a read-only segment at ``RODATA_BASE`` and ``.data*``/``.bss*``
    a writable one at ``RWDATA_BASE``. ``max_size`` bounds code + data bytes (the device passes
    its program slot size; default ``DEFAULT_MAX_SIZE``), checked on the section headers before
    any segment is allocated. The returned program keeps the object bytes as ``program.elf_bytes``.
    Raises ``ElfError`` for every malformed or unsupported input.
    """
    if max_size is not None and (not isinstance(max_size, int) or max_size < 0):
        raise UsageError(f"max_size must be a non-negative integer or None, got {max_size!r}")
    if isinstance(entry_symbol, bool) or not isinstance(entry_symbol, int) or entry_symbol < 0:
        raise UsageError(f"entry_symbol must be a non-negative integer, got {entry_symbol!r}")
    if entry_symbol and (section is not None or function is not None):
        raise UsageError("choose the entry with entry_symbol or with function/section, not both")
    program, _ = _link_source(source, section, function, helpers, max_size, max_slots,
                              entry_symbol)
    return program


def _link_source(source: str | Path | bytes, section: str | None, function: str | None,
                 helpers: HelperRegistry | None, max_size: int | None,
                 max_slots: int, entry_symbol: int = 0) -> tuple[Program, LinkInfo]:
    data, _ = read_source(source)
    try:
        obj = ElfObject(data)
        return Linker(obj, helpers if helpers is not None else default_helpers()).link(
            section, function, max_size, max_slots, entry_symbol)
    except ElfError:
        raise
    except ProgramError as exc:  # the linked code failed validation
        raise ElfError(f"linked code is invalid: {exc.reason}", exc.index, exc.insn_text) from None
    except MALFORMED as exc:
        raise malformed(exc) from None


class Linker:
    """Lays out the entry function's code and everything it calls, then applies relocations."""

    def __init__(self, obj: ElfObject, helpers: HelperRegistry):
        self.obj = obj
        self.helpers = helpers
        self.secs = obj.sections
        self.code_secs = [s for s in self.secs if s.executable and s.size > 0]
        st = obj.symtab_index()
        self.syms = obj.symbols(st) if st is not None else []
        self.rels_for: dict[int, list[Section]] = {}
        for s in self.secs:
            if s.type in (SHT_REL, SHT_RELA):
                self.rels_for.setdefault(s.info, []).append(s)

    # --- entry selection ----------------------------------------------------------------------
    def functions(self, sec: Section | None = None) -> list[Symbol]:
        """The function symbols of the code sections (of ``sec`` alone when given)."""
        code = {s.index for s in self.code_secs}
        return [y for y in self.syms if y.type == STT_FUNC and y.shndx in code
                and (sec is None or y.shndx == sec.index)]

    def _label(self, y: Symbol) -> str:
        return f"{y.name} (in {self.secs[y.shndx].name})"

    def pick_entry(self, section: str | None, function: str | None,
                   entry_symbol: int = 0) -> tuple[Section, int, str, int]:
        """(code section, slot in it, name, symbol table index) of the entry point; the index
        is 0 when the default rule chose it (or no symbol names the chosen place)."""
        if not self.code_secs:
            raise ElfError("no code: the object has no executable section (text section not found)")
        if entry_symbol:
            return self._by_index(entry_symbol)
        if function is not None:
            found = [y for y in self.functions() if y.name == function
                     and (section is None or self.secs[y.shndx].name == section)]
            if not found:
                names = ", ".join(self._label(y) for y in self.functions()) or "none"
                where = f" in section {section!r}" if section else ""
                raise ElfError(f"function {function!r} not found{where}; functions: {names}")
            if len(found) > 1:
                raise ElfError(f"function name {function!r} is ambiguous: "
                               f"{', '.join(self._label(y) for y in found)}; pass section= too")
            return self._entry_of(found[0])
        if section is not None:
            matches = [s for s in self.code_secs if s.name == section]
            if not matches:
                other = [s for s in self.secs if s.name == section]
                code = ", ".join(s.name for s in self.code_secs)
                why = "is not executable" if other else "does not exist"
                raise ElfError(f"section {section!r} {why}; executable sections: {code}")
            return self._only_function(matches[0])
        # the default rule: index 0 tells a device to apply the same rule
        globals_ = [y for y in self.functions() if y.bind != STB_LOCAL]
        if len(globals_) == 1:
            return self._entry_of(globals_[0])[:3] + (0,)
        if len(globals_) > 1:
            raise ElfError("several functions could be the entry point: "
                           f"{', '.join(self._label(y) for y in globals_)}; "
                           "choose one with function= (or section=)")
        return self._only_function(self.code_secs[0])[:3] + (0,)

    def _by_index(self, index: int) -> tuple[Section, int, str, int]:
        """The entry named by its symbol table index: a function of a code section, or a code
        section's own symbol (that section's entry, as for ``section=``)."""
        if index >= len(self.syms):
            raise ElfError(f"entry symbol {index} does not exist: the symbol table has "
                           f"{len(self.syms)} entries")
        y = self.syms[index]
        code = {s.index for s in self.code_secs}
        if y.type == STT_FUNC and y.shndx in code:
            return self._entry_of(y)
        if y.type == STT_SECTION and y.shndx in code:
            return self._only_function(self.secs[y.shndx])[:3] + (index,)
        raise ElfError(f"entry symbol {index} ({self.obj.symbol_name(y)!r}, {y.type_name}) is "
                       "not a function of an executable section")

    def _only_function(self, sec: Section) -> tuple[Section, int, str, int]:
        funcs = self.functions(sec)
        globals_ = [y for y in funcs if y.bind != STB_LOCAL]
        cands = globals_ or funcs
        if len(cands) == 1:
            return self._entry_of(cands[0])
        if not cands:
            own = next((y.index for y in self.syms
                        if y.type == STT_SECTION and y.shndx == sec.index), 0)
            return sec, 0, sec.name, own
        raise ElfError(f"several functions in section {sec.name!r} could be the entry point: "
                       f"{', '.join(y.name for y in cands)}; choose one with function=")

    def _entry_of(self, y: Symbol) -> tuple[Section, int, str, int]:
        sec = self.secs[y.shndx]
        if y.value % 8 or y.value >= sec.size:
            raise ElfError(f"function {y.name!r} has a bad address {y.value:#x} in {sec.name} "
                           f"({sec.size} bytes)")
        return sec, y.value // 8, y.name, y.index

    # --- linking ------------------------------------------------------------------------------
    def link(self, section: str | None, function: str | None, max_size: int | None,
             max_slots: int, entry_symbol: int = 0) -> tuple[Program, LinkInfo]:
        """Build the program; see ``load_elf``."""
        entry_sec, entry_slot, entry_name, entry_index = self.pick_entry(section, function,
                                                                         entry_symbol)
        info = LinkInfo(entry_name)
        for s in self.code_secs:
            if s.size % 8:
                raise ElfError(f"code section {s.name} is {s.size} bytes, not a multiple of 8")
        limit = DEFAULT_MAX_SIZE if max_size is None else max_size
        plan = self._plan_data(info, limit)

        # Relocations of each needed code section: patches by slot; discover called sections.
        order = [entry_sec]
        patches: dict[int, dict[int, tuple]] = {}
        i = 0
        while i < len(order):
            sec = order[i]
            patches[sec.index] = p = self._code_relocations(sec)
            for kind, *rest in p.values():
                if kind == "local" and rest[0] not in order:
                    order.append(rest[0])
            i += 1

        if entry_slot not in self._insn_starts(entry_sec):
            raise ElfError(f"entry {entry_name!r} starts inside an lddw at "
                           f"{self.obj.where(entry_sec, entry_slot * 8)}")
        # Pieces: the entry section from the entry function on, its head, then callees' sections.
        pieces = [(entry_sec, entry_slot, entry_sec.size // 8)]
        if entry_slot:
            pieces.append((entry_sec, 0, entry_slot))
        pieces += [(s, 0, s.size // 8) for s in order[1:]]
        base: dict[tuple[int, int], int] = {}
        pos = 0
        for sec, lo, hi in pieces:
            base[(sec.index, lo)] = pos
            pos += hi - lo
        data_size = sum(size for size, _ in plan)
        if pos * 8 + data_size > limit:
            biggest = max((s for _, items in plan for s, _ in items), key=lambda s: s.size,
                          default=None)
            what = (f"; largest data section {biggest.name} ({biggest.type_name}, "
                    f"{biggest.size} bytes)") if biggest else ""
            raise ElfError(f"program too large: {pos * 8} bytes of code + {data_size} bytes of "
                           f"data = {pos * 8 + data_size} bytes, more than the limit of {limit} "
                           f"bytes{what}")
        segs = self._build_data(plan)
        starts = {sec.index: sorted(lo for (si, lo) in base if si == sec.index)
                  for sec, _, _ in pieces}

        def final(sec: Section, slot: int) -> int:
            lo = max(x for x in starts[sec.index] if x <= slot)
            return base[(sec.index, lo)] + slot - lo

        code = bytearray()
        for sec, lo, hi in pieces:
            body = self.obj.section_data(sec)
            label = sec.name if lo == 0 else f"{sec.name}+{lo * 8:#x}"
            info.sections.append((label, len(code) // 8))
            for slot in self._insn_starts(sec):
                if lo <= slot < hi:
                    code += self._emit(sec, body, slot, patches[sec.index], final, info)
        symbols = {final(self.secs[y.shndx], y.value // 8): y.name for y in self.functions()
                   if y.shndx in starts and y.value % 8 == 0 and y.value < self.secs[y.shndx].size}
        symbols[0] = entry_name
        program = Program(bytes(code), segments=tuple(segs), name=entry_name, symbols=symbols,
                          max_slots=max_slots, entry_symbol=entry_index, elf_bytes=self.obj.data)
        return program, info

    def _insn_starts(self, sec: Section) -> list[int]:
        body = self.obj.section_data(sec)
        out, slot, n = [], 0, sec.size // 8
        while slot < n:
            out.append(slot)
            slot += 2 if body[slot * 8] == isa.OPCODE_LDDW else 1
        return out

    def _emit(self, sec: Section, body: bytes, slot: int, patches: dict, final,
              info: LinkInfo) -> bytes:
        opcode, dst, src, off, imm = isa.decode_slot(body, slot)
        raw = body[slot * 8:slot * 8 + (16 if opcode == isa.OPCODE_LDDW else 8)]
        here = final(sec, slot)
        nslots = sec.size // 8

        def remap(target: int, what: str) -> int:
            if not 0 <= target < nslots:
                raise ElfError(f"{what} at {self.obj.where(sec, slot * 8)} targets slot {target}, "
                               f"outside its section ({nslots} instructions)")
            return final(sec, target) - (here + 1)

        patch = patches.get(slot)
        if patch is not None:
            kind = patch[0]
            if kind == "lddw":
                value = patch[1]
                info.notes.setdefault(here, []).append(patch[2])
                return (isa.encode_slot(opcode, dst, src, off, value & 0xFFFFFFFF)
                        + isa.encode_slot(0, 0, 0, 0, (value >> 32) & 0xFFFFFFFF))
            if kind == "helper":
                info.notes.setdefault(here, []).append(patch[2])
                return isa.encode_slot(opcode, dst, 0, off, patch[1])
            target_sec, target_slot, note = patch[1], patch[2], patch[3]
            if not 0 <= target_slot < target_sec.size // 8:
                raise ElfError(f"call at {self.obj.where(sec, slot * 8)} targets slot "
                               f"{target_slot} outside {target_sec.name}")
            info.notes.setdefault(here, []).append(note)
            return isa.encode_slot(opcode, dst, _PSEUDO_CALL,
                                   off, final(target_sec, target_slot) - (here + 1))
        cls, op = opcode & 0x07, opcode & 0xF0
        if (cls == isa.CLS_JMP and op == isa.JMP_CALL and not opcode & isa.SRC_X
                and src == _PSEUDO_CALL):
            return isa.encode_slot(opcode, dst, src, off, remap(slot + 1 + imm, "call"))
        if cls in (isa.CLS_JMP, isa.CLS_JMP32) and op not in (isa.JMP_CALL, isa.JMP_EXIT):
            if cls == isa.CLS_JMP32 and op == isa.JMP_JA:  # gotol: 32-bit offset in imm
                return isa.encode_slot(opcode, dst, src, off, remap(slot + 1 + imm, "jump"))
            new = remap(slot + 1 + off, "jump")
            if not -0x8000 <= new < 0x8000:
                raise ElfError(f"jump at {self.obj.where(sec, slot * 8)} is too far after "
                               "laying out the code")
            return isa.encode_slot(opcode, dst, src, new, imm)
        return raw

    def _sym_label(self, y: Symbol) -> str:
        return self.obj.symbol_name(y) or f"symbol {y.index}"

    def _relocations_of(self, sec: Section) -> Iterator[tuple[Section, list[Symbol],
                                                                 Relocation, str]]:
        """Each relocation applied to ``sec`` (``R_BPF_NONE`` skipped): its relocation section,
        the symbol table it indexes, the entry, and where it applies (for messages)."""
        for rel in self.rels_for.get(sec.index, []):
            syms, entries = self.obj.relocations(rel)
            for r in entries:
                if r.type != R_BPF_NONE:
                    yield rel, syms, r, self.obj.where(sec, r.offset)

    def _code_relocations(self, sec: Section) -> dict[int, tuple]:
        """Relocations of code section ``sec`` as patches by slot."""
        body = self.obj.section_data(sec)
        out: dict[int, tuple] = {}
        for rel, syms, r, where in self._relocations_of(sec):
            if r.offset % 8 or r.offset + 8 > sec.size:
                raise ElfError(f"bad relocation offset {r.offset:#x} in {rel.name}: outside "
                               f"{sec.name} ({sec.size} bytes) or not at an instruction")
            y = syms[r.sym]
            name = self._sym_label(y)
            slot = r.offset // 8
            opcode, _, _, _, imm = isa.decode_slot(body, slot)
            if r.type == R_BPF_64_64 and opcode == isa.OPCODE_LDDW:
                if r.offset + 16 > sec.size:
                    raise ElfError(f"bad relocation offset {r.offset:#x}: lddw at {where} "
                                   "is truncated")
                lo = int.from_bytes(body[r.offset + 4:r.offset + 8], "little")
                hi = int.from_bytes(body[r.offset + 12:r.offset + 16], "little")
                addend = r.addend if r.addend is not None else lo | (hi << 32)
                value = self._address(y, addend, f"lddw at {where}")
                out[slot] = ("lddw", value, f"{RELOC_NAMES[r.type]} {name} = {value:#x}")
            elif r.type in (R_BPF_64_32, R_BPF_64_ABS64) and opcode == _OPCODE_CALL:
                out[slot] = self._call_target(y, name, imm, where, r.type)
            else:
                rname = RELOC_NAMES.get(r.type, "unknown")
                raise ElfError(f"bad relocation type {r.type} ({rname}) at {where} against "
                               f"{name!r} (opcode {opcode:#04x}); code supports R_BPF_64_64 "
                               "on lddw and R_BPF_64_32 (or 2, older toolchains) on call")
        return out

    def _call_target(self, y: Symbol, name: str, imm: int, where: str, rtype: int) -> tuple:
        if y.shndx == SHN_UNDEF:
            helper = self.helpers.by_name(y.name)
            if helper is None:
                known = ", ".join(sorted(h.name for h in self.helpers.values())) or "none"
                raise ElfError(f"call at {where} to function {y.name!r} not found: it is not "
                               "defined in the object and no helper has that name "
                               f"(helpers: {known})")
            return ("helper", helper.id, f"{RELOC_NAMES[rtype]} {y.name} = helper {helper.id}")
        if y.shndx >= SHN_LORESERVE or not self.secs[y.shndx].executable:
            raise ElfError(f"call at {where} to {name!r}, which is not a function of an "
                           "executable section")
        target = self.secs[y.shndx]
        if y.value % 8:
            raise ElfError(f"call at {where} to {name!r} at a misaligned address {y.value:#x}")
        slot = y.value // 8 + imm + 1
        return ("local", target, slot, f"{RELOC_NAMES[rtype]} {name}")

    def _address(self, y: Symbol, addend: int, what: str) -> int:
        name = self._sym_label(y)
        if y.shndx == SHN_UNDEF:
            raise ElfError(f"{what} refers to undefined symbol {name!r}: extern variables and "
                           "kernel symbols are not supported")
        if y.shndx == SHN_ABS:
            return (y.value + addend) & 0xFFFFFFFFFFFFFFFF
        if y.shndx == SHN_COMMON:
            raise ElfError(f"{what} refers to common symbol {name!r}; compile with -fno-common")
        if y.shndx >= SHN_LORESERVE:
            raise ElfError(f"{what} refers to symbol {name!r} in reserved section {y.shndx:#x}")
        if y.shndx in self.addr_of_sec:
            return (self.addr_of_sec[y.shndx] + y.value + addend) & 0xFFFFFFFFFFFFFFFF
        sec = self.secs[y.shndx]
        if sec.name.startswith(MAP_SECTION_PREFIXES):
            raise ElfError(f"{what} refers to map {name!r} (section {sec.name}): BPF maps are not "
                           "supported by Hermes; pass data through the data slot instead")
        if sec.executable:
            raise ElfError(f"{what} takes the address of function {name!r}: function pointers "
                           "are not supported")
        raise ElfError(f"{what} refers to {name!r} in section {sec.name!r}, which is not loaded "
                       "(only .rodata*, .data* and .bss* sections are program data)")

    def _plan_data(self, info: LinkInfo, limit: int) -> list[tuple[int, list[tuple[Section, int]]]]:
        """Addresses of the data sections, per segment (size, [(section, offset)]), computed from
        the headers alone; a section that takes the data past ``limit`` is refused here,
        before any segment is allocated."""
        ro, rw = [], []
        for s in self.secs:
            if s.executable or not s.flags & SHF_ALLOC or s.type not in (SHT_PROGBITS, SHT_NOBITS):
                continue
            if s.name.startswith(RODATA_PREFIXES) and not s.flags & SHF_WRITE:
                ro.append(s)
            elif s.name.startswith(RODATA_PREFIXES + RWDATA_PREFIXES):
                rw.append(s)
        addr: dict[int, int] = {}
        plan: list[tuple[int, list[tuple[Section, int]]]] = []
        total = 0
        for base, group in ((RODATA_BASE, ro), (RWDATA_BASE, rw)):
            pos, items = 0, []
            for s in group:
                align = min(max(s.addralign, 1), 4096)
                pos = (pos + align - 1) // align * align
                addr[s.index] = base + pos
                info.data[s.name] = base + pos
                items.append((s, pos))
                pos += s.size
                if total + pos > limit or pos > MAX_SEGMENT_SPAN:
                    bound = limit if total + pos > limit else MAX_SEGMENT_SPAN
                    raise ElfError(f"program too large: section {s.name} "
                                   f"({s.type_name}, {s.size} bytes) takes the program's data to "
                                   f"{total + pos} bytes, more than the limit of {bound} bytes")
            total += pos
            plan.append((pos, items))
        self.addr_of_sec = addr  # data relocations may point into any data section
        return plan

    def _build_data(self, plan: list[tuple[int, list[tuple[Section, int]]]]) -> list[Segment]:
        """The segments of a checked plan: sections copied in (relocated), gaps and .bss zero."""
        segs = []
        for (size, items), base, name, writable in zip(plan, (RODATA_BASE, RWDATA_BASE),
                                                      (".rodata", ".data"), (False, True),
                                                      strict=True):
            if not items:
                continue
            buf = bytearray(size)
            for s, pos in items:
                if s.type != SHT_NOBITS or self.rels_for.get(s.index):
                    buf[pos:pos + s.size] = self._relocated_data(s)
            segs.append(Segment(name, base, bytes(buf), writable))
        return segs

    def _relocated_data(self, s: Section) -> bytes:
        buf = bytearray(self.obj.section_data(s))
        for rel, syms, r, where in self._relocations_of(s):
            width = {R_BPF_64_ABS64: 8, R_BPF_64_ABS32: 4}.get(r.type)
            if width is None:
                raise ElfError(f"bad relocation type {r.type} "
                               f"({RELOC_NAMES.get(r.type, 'unknown')}) in data at {where}; "
                               "data supports R_BPF_64_ABS64 and R_BPF_64_ABS32")
            if s.type == SHT_NOBITS or r.offset + width > s.size:
                raise ElfError(f"bad relocation offset {r.offset:#x} in {rel.name}: outside "
                               f"{s.name} ({s.size} bytes)")
            addend = r.addend if r.addend is not None else \
                int.from_bytes(buf[r.offset:r.offset + width], "little")
            value = self._address(syms[r.sym], addend, f"pointer at {where}")
            if value >> (8 * width):
                raise ElfError(f"pointer at {where}: address {value:#x} does not fit the "
                               f"{8 * width}-bit relocation {RELOC_NAMES[r.type]}")
            buf[r.offset:r.offset + width] = value.to_bytes(width, "little")
        return bytes(buf)

"""ELF reading: the structs of a BPF relocatable object, decoded and bounds-checked (no linking)."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.construct.core import ConstructError
from elftools.elf import enums as _enums
from elftools.elf.structs import ELFStructs

from ...errors import ElfError, UsageError
from ..memory import RODATA_BASE, RWDATA_BASE

# --- ELF constants the loader checks (numbers from the ELF and BPF psABI specifications) ---------
EM_NONE = 0
EM_BPF = 247
ET_REL = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_SYSV = 0
EHDR_SIZE = 64
SHDR_SIZE = 64
SYM_SIZE = 24
REL_SIZE = 16
RELA_SIZE = 24

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

#: BPF relocation types (LLVM's numbering).
R_BPF_NONE = 0
R_BPF_64_64 = 1        #: lddw of an address (code)
R_BPF_64_ABS64 = 2     #: 64-bit absolute address (data); older toolchains/uBPF: call (code)
R_BPF_64_ABS32 = 3     #: 32-bit absolute address (data)
R_BPF_64_NODYLD32 = 4  #: debug info only
R_BPF_64_32 = 10       #: bpf-to-bpf or helper call (code)
RELOC_NAMES = {R_BPF_NONE: "R_BPF_NONE", R_BPF_64_64: "R_BPF_64_64",
               R_BPF_64_ABS64: "R_BPF_64_ABS64",
               R_BPF_64_ABS32: "R_BPF_64_ABS32", R_BPF_64_NODYLD32: "R_BPF_64_NODYLD32",
               R_BPF_64_32: "R_BPF_64_32"}

_STRUCTS = ELFStructs(little_endian=True, elfclass=64)
_STRUCTS.create_basic_structs()
_STRUCTS.create_advanced_structs(e_type="ET_REL", e_machine="EM_BPF", e_ident_osabi="ELFOSABI_SYSV")

MACHINE_NAMES = {v: k for k, v in _enums.ENUM_E_MACHINE.items() if isinstance(v, int)}
_SHT = {k: v for k, v in _enums.ENUM_SH_TYPE_BASE.items() if isinstance(v, int)}
_SHT_NAMES = {v: k for k, v in _SHT.items()}
_SHN = {k: v for k, v in _enums.ENUM_ST_SHNDX.items() if isinstance(v, int)}
_STB = {k: v for k, v in _enums.ENUM_ST_INFO_BIND.items() if isinstance(v, int)}
_STT = {k: v for k, v in _enums.ENUM_ST_INFO_TYPE.items() if isinstance(v, int)}
_STB_NAMES = {v: k for k, v in _STB.items()}
_STT_NAMES = {v: k for k, v in _STT.items()}

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 0, 1, 2, 3
SHT_RELA, SHT_NOBITS, SHT_REL = 4, 8, 9
STB_LOCAL = 0
STT_FUNC, STT_SECTION = 2, 3
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
SHN_LORESERVE = 0xFF00

#: Largest data segment the address map has room for (the distance between two region bases).
MAX_SEGMENT_SPAN = RWDATA_BASE - RODATA_BASE

#: What pyelftools, ``struct`` and ``construct`` raise on a malformed object; the loader and
#: the describer turn each into an ``ElfError``.
MALFORMED = (ConstructError, _PyElfError, struct.error, ValueError, IndexError, KeyError,
             UnicodeDecodeError, OverflowError)


def _num(value: int | str, table: dict[str, int]) -> int:
    """pyelftools decodes enum fields to names when it knows them; the loader wants numbers."""
    return value if isinstance(value, int) else table[value]


@dataclass
class Section:
    """One section header of the object, decoded and bounds-checked."""

    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def type_name(self) -> str:
        """``SHT_*`` name of the section type (or its number)."""
        return _SHT_NAMES.get(self.type, str(self.type))

    @property
    def executable(self) -> bool:
        """True for sections holding code."""
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)


@dataclass
class Symbol:
    """One symbol table entry with its resolved name."""

    index: int
    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int

    @property
    def bind_name(self) -> str:
        """``STB_*`` name of the binding."""
        return _STB_NAMES.get(self.bind, str(self.bind))

    @property
    def type_name(self) -> str:
        """``STT_*`` name of the symbol type."""
        return _STT_NAMES.get(self.type, str(self.type))


@dataclass
class Relocation:
    """One REL/RELA entry of a relocation section."""

    offset: int
    type: int
    sym: int
    addend: int | None  # None for REL (the addend is in the relocated field)


class ElfObject:
    """A parsed, bounds-checked ELF64 little-endian relocatable object (no linking yet).

    Every malformed field raises ``ElfError`` with a message naming the field and the problem.
    """

    def __init__(self, data: bytes):
        self.data = data
        self._check_header()
        self.sections = self._read_sections()
        self._symtabs: dict[int, list[Symbol]] = {}

    # --- header -------------------------------------------------------------------------------
    def _check_header(self) -> None:
        d = self.data
        if d[:4] != b"\x7fELF":
            what = d[:4].hex(" ") if d else "empty input"
            raise ElfError(f"not an ELF object (first bytes {what}, expected 7f 45 4c 46)")
        if len(d) < EHDR_SIZE:
            raise ElfError(f"truncated ELF object: {len(d)} bytes, the ELF header alone needs "
                           f"{EHDR_SIZE}")
        if d[4] != ELFCLASS64:
            cls = {1: "32-bit (ELFCLASS32)"}.get(d[4], f"class {d[4]}")
            raise ElfError(f"wrong ELF class: {cls}; eBPF objects are 64-bit "
                           "(compile with clang -target bpf)")
        if d[5] != ELFDATA2LSB:
            order = {2: "big-endian (ELFDATA2MSB)"}.get(d[5], f"data encoding {d[5]}")
            raise ElfError(f"wrong byte order: {order}; Hermes runs little-endian eBPF "
                           "(compile with -target bpf or bpfel, not bpfeb)")
        if d[6] != EV_CURRENT:
            raise ElfError(f"wrong ELF version {d[6]} in e_ident (expected {EV_CURRENT})")
        if d[7] != ELFOSABI_SYSV:
            raise ElfError(f"wrong OS ABI {d[7]} in e_ident (expected 0, System V, as clang "
                           "emits for BPF)")
        try:
            self.ehdr = _STRUCTS.Elf_Ehdr.parse(d[:EHDR_SIZE])
        # 64 bytes always parse: what can go wrong here was checked above
        except (ConstructError, _PyElfError, ValueError) as exc:  # pragma: no cover
            raise ElfError(f"malformed ELF header: {exc}") from None
        e_type, machine = struct.unpack_from("<HH", d, 16)
        #: ``e_machine`` as a number (pyelftools gives names for the ones it knows).
        self.machine = machine
        if e_type != ET_REL:
            raise ElfError(f"wrong ELF type {e_type}: expected a relocatable object (ET_REL, "
                           "1; compile with -c)")
        if machine not in (EM_NONE, EM_BPF):
            name = MACHINE_NAMES.get(machine, "unknown")
            raise ElfError(f"wrong machine {name} ({machine}): expected EM_BPF (247) or EM_NONE "
                           "(0); compile with clang -target bpf")
        shoff, shentsize, shnum, shstrndx = (self.ehdr.e_shoff, self.ehdr.e_shentsize,
                                             self.ehdr.e_shnum, self.ehdr.e_shstrndx)
        if shnum == 0 or shnum >= SHN_LORESERVE:
            raise ElfError(f"unsupported section count e_shnum={shnum} (the object must have "
                           "a section header table of at most 65279 entries)")
        if shentsize != SHDR_SIZE:
            raise ElfError(f"bad section header size e_shentsize={shentsize} "
                           f"(ELF64 uses {SHDR_SIZE})")
        end = shoff + shnum * shentsize
        if shoff < EHDR_SIZE or end > len(d):
            raise ElfError(f"bad section header offset or count: the table of {shnum} entries "
                           f"at {shoff} ends at {end}, beyond the {len(d)}-byte file")
        if shstrndx == 0 or shstrndx >= shnum:
            raise ElfError(f"bad section name table index e_shstrndx={shstrndx} "
                           f"(object has {shnum} sections)")

    # --- sections -----------------------------------------------------------------------------
    def _read_sections(self) -> list[Section]:
        d = self.data
        shoff, shnum = self.ehdr.e_shoff, self.ehdr.e_shnum
        raw, name_offsets = [], []
        for i in range(shnum):
            h = _STRUCTS.Elf_Shdr.parse(d[shoff + i * SHDR_SIZE:shoff + (i + 1) * SHDR_SIZE])
            raw.append(Section(i, "", _num(h.sh_type, _SHT), h.sh_flags, h.sh_offset, h.sh_size,
                               h.sh_link, h.sh_info, h.sh_addralign, h.sh_entsize))
            name_offsets.append(h.sh_name)
        for s in raw:
            if s.type not in (SHT_NULL, SHT_NOBITS) and s.offset + s.size > len(d):
                raise ElfError(f"bad section offset or size: section {s.index} spans "
                               f"[{s.offset}, {s.offset + s.size}) beyond the {len(d)}-byte file")
        shstr = raw[self.ehdr.e_shstrndx]
        if shstr.type != SHT_STRTAB:
            raise ElfError(f"section name table (section {shstr.index}) is not a string table")
        names = d[shstr.offset:shstr.offset + shstr.size]
        for s, offset in zip(raw, name_offsets, strict=True):
            s.name = self._string(names, offset, f"name of section {s.index}",
                                  "section name table")
        return raw

    @staticmethod
    def _string(table: bytes, offset: int, what: str, table_name: str) -> str:
        if offset >= len(table) or (offset and b"\0" not in table[offset:]):
            raise ElfError(f"bad {what}: offset {offset} is outside the {table_name} "
                           f"({len(table)} bytes)")
        end = table.find(b"\0", offset)
        return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")

    def section_data(self, s: Section) -> bytes:
        """The bytes of section ``s`` (zeros for ``.bss``-like NOBITS sections)."""
        if s.type == SHT_NOBITS:
            if s.size > MAX_SEGMENT_SPAN:
                raise ElfError(f"section {s.name} is {s.size} bytes, more than a data segment "
                               f"can hold ({MAX_SEGMENT_SPAN} bytes)")
            return bytes(s.size)
        return self.data[s.offset:s.offset + s.size]

    def where(self, s: Section, offset: int) -> str:
        """``section+0xoffset``, for messages."""
        return f"{s.name}+{offset:#x}"

    # --- symbols and relocations --------------------------------------------------------------
    def symtab_index(self) -> int | None:
        """Index of the (single) symbol table, or None when the object has none."""
        for s in self.sections:
            if s.type == SHT_SYMTAB:
                return s.index
        return None

    def symbols(self, index: int) -> list[Symbol]:
        """The symbols of symbol table section ``index`` (checked: names, section indexes)."""
        if index in self._symtabs:
            return self._symtabs[index]
        st = self.sections[index]
        if (st.link == 0 or st.link >= len(self.sections)
                or self.sections[st.link].type != SHT_STRTAB):
            raise ElfError(f"bad string table section index: symbol table {st.name} links to "
                           f"section {st.link}, which is not a string table")
        entsize = st.entsize or SYM_SIZE
        if entsize != SYM_SIZE or st.size % SYM_SIZE:
            raise ElfError(f"bad symbol table {st.name}: entry size {entsize} / size {st.size} "
                           f"(ELF64 symbols are {SYM_SIZE} bytes)")
        strings = self.section_data(self.sections[st.link])
        body = self.section_data(st)
        out = []
        for i in range(st.size // SYM_SIZE):
            e = _STRUCTS.Elf_Sym.parse(body[i * SYM_SIZE:(i + 1) * SYM_SIZE])
            name = self._string(strings, e.st_name, f"symbol name (symbol {i} of {st.name})",
                                f"string table {self.sections[st.link].name}")
            shndx = _num(e.st_shndx, _SHN)
            if 0 < shndx < SHN_LORESERVE and shndx >= len(self.sections):
                raise ElfError(f"bad section index {shndx} of symbol {i} ({name!r})")
            out.append(Symbol(i, name, e.st_value, e.st_size, _num(e.st_info.bind, _STB),
                              _num(e.st_info.type, _STT), shndx))
        self._symtabs[index] = out
        return out

    def symbol_name(self, sym: Symbol) -> str:
        """A symbol's name; section symbols are named after their section."""
        if sym.type == STT_SECTION and not sym.name and 0 < sym.shndx < len(self.sections):
            return self.sections[sym.shndx].name
        return sym.name

    def relocations(self, rel: Section) -> tuple[list[Symbol], list[Relocation]]:
        """The entries of relocation section ``rel`` and the symbol table they index."""
        if (rel.link == 0 or rel.link >= len(self.sections)
                or self.sections[rel.link].type != SHT_SYMTAB):
            raise ElfError(f"bad symbol table section index: relocation section {rel.name} links "
                           f"to section {rel.link}, which is not a symbol table")
        syms = self.symbols(rel.link)
        size = REL_SIZE if rel.type == SHT_REL else RELA_SIZE
        if rel.size % size:
            raise ElfError(f"bad relocation section {rel.name}: size {rel.size} is not a "
                           f"multiple of {size}")
        body = self.section_data(rel)
        parser = _STRUCTS.Elf_Rel if rel.type == SHT_REL else _STRUCTS.Elf_Rela
        out = []
        for i in range(rel.size // size):
            e = parser.parse(body[i * size:(i + 1) * size])
            sym, typ = e.r_info >> 32, e.r_info & 0xFFFFFFFF
            if sym >= len(syms):
                raise ElfError(f"bad symbol index {sym} in relocation {i} of {rel.name} "
                               f"(symbol table has {len(syms)} entries)")
            addend = e.r_addend if rel.type == SHT_RELA else None
            out.append(Relocation(e.r_offset, typ, sym, addend))
        return syms, out


def read_source(source: str | Path | bytes | bytearray | memoryview) -> tuple[bytes, str | None]:
    """The bytes of an object given as bytes or a path, and the file's name (None for bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"an ELF object is a path or bytes, not {type(source).__name__}")
    path = Path(source)
    try:
        return path.read_bytes(), path.name
    except OSError as exc:
        raise ElfError(f"cannot read ELF object {str(path)!r}: {exc.strerror or exc}") from None


def malformed(exc: BaseException) -> ElfError:
    """The ``ElfError`` for one of ``MALFORMED`` raised while reading an object."""
    return ElfError(f"malformed ELF object ({type(exc).__name__}: {exc})")

"""Programs: validated eBPF code (plus optional program data) built from bytes, assembly or ELF."""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

from ..errors import ProgramError, UsageError
from . import isa
from .isa import Insn, OPCODE_LDDW
from .memory import Segment

#: Largest program the bare engine accepts, in 64-bit slots.
MAX_PROGRAM_SLOTS = 65536
#: Host bytes a loaded program holds per instruction slot beyond its code bytes (decoded
#: instructions, translated blocks, analysis results): measured 0.2-0.9 KiB for the
#: interpreter and the JIT's Python side on straight-line and jump-dense programs.
LOADED_BYTES_PER_SLOT = 1024


def _field(fields: dict[str, int], name: str) -> int:
    return fields[name]


def decode(code: bytes, max_slots: int = MAX_PROGRAM_SLOTS) -> list[Insn | None]:
    """Decode and structurally validate ``code``; returns one entry per slot (None for lddw halves).

    Raises ``ProgramError`` naming the instruction index for: a length that is not a multiple of 8,
    an empty or oversized program, an unknown opcode, non-zero reserved fields, an invalid register,
    a truncated or malformed lddw, a legacy packet load, and jump targets outside the program or
    into the second half of an lddw.
    """
    if len(code) % 8:
        raise ProgramError(f"program length {len(code)} bytes is not a multiple of 8")
    nslots = len(code) // 8
    if nslots == 0:
        raise ProgramError("program is empty (0 instructions)")
    if nslots > max_slots:
        raise ProgramError(f"program has {nslots} instructions, more than the limit of {max_slots}")
    out: list[Insn | None] = [None] * nslots
    i = 0
    while i < nslots:
        opcode, dst, src, off, imm = isa.decode_slot(code, i)
        out[i] = _decode_one(code, i, nslots, opcode, dst, src, off, imm)
        i += out[i].slots
    _check_jumps(out)
    return out


def _decode_one(code: bytes, i: int, nslots: int, opcode: int, dst: int, src: int, off: int,
                imm: int) -> Insn:
    rows = isa.BY_OPCODE.get(opcode)
    if rows is None:
        cls = opcode & 7
        mode = opcode & 0xE0
        if cls in (isa.CLS_LD, isa.CLS_LDX) and mode in (isa.MODE_ABS, isa.MODE_IND):
            raise ProgramError(f"legacy packet load (opcode {opcode:#04x}, LD_ABS/LD_IND) is "
                               "deprecated by RFC 9669 and not supported", i)
        raise ProgramError(f"unknown opcode {opcode:#04x}", i)
    fields = {"dst": dst, "src": src, "off": off, "imm": imm}
    op = None
    for row in rows:
        if all(fields[name] == value for name, value in row.match):
            op = row
            break
    if op is None:
        if opcode == OPCODE_LDDW:
            what = isa.LDDW_SRC.get(src)
            if what is None:
                raise ProgramError(f"invalid source register {src} for lddw", i)
            raise ProgramError(f"lddw with src={src} ({what}) needs maps, BTF or code "
                               "addresses, which a Hermes device does not have", i)
        name, _ = rows[0].match[0]
        if rows[0].form == "end":
            raise ProgramError(f"invalid endian immediate {imm} (must be 16, 32 or 64)", i)
        raise ProgramError(f"invalid {name} field {fields[name]} for opcode {opcode:#04x}", i)
    if dst > isa.MAX_REG:
        raise ProgramError(f"invalid destination register r{dst}", i)
    if src > isa.MAX_REG:
        raise ProgramError(f"invalid source register r{src}", i)
    _, zero = isa.FORMS[op.form]
    matched = {name for name, _ in op.match}
    for name in zero:
        if name not in matched and fields[name] != 0:
            raise ProgramError(f"reserved field {name} must be 0 for {op.mnemonic}, "
                               f"found {fields[name]}", i)
    if opcode == OPCODE_LDDW:
        if i + 1 >= nslots:
            raise ProgramError("incomplete lddw: the second slot is missing", i)
        op2, dst2, src2, off2, imm2 = isa.decode_slot(code, i + 1)
        if op2:
            raise ProgramError(f"incomplete lddw: slot {i + 1} holds another instruction "
                               f"(opcode {op2:#04x}) instead of the upper 32 bits", i)
        if dst2 or src2 or off2:
            raise ProgramError("invalid lddw second half: opcode, registers and offset must be 0",
                               i + 1)
        imm = (imm & 0xFFFFFFFF) | ((imm2 & 0xFFFFFFFF) << 32)
    return Insn(op, dst, src, off, imm)


def jump_target(insn: Insn, index: int) -> int | None:
    """The slot a jump or local call at ``index`` goes to, or None for other instructions."""
    form = insn.op.form
    if form in ("ja", "jcond_k", "jcond_x"):
        return index + 1 + insn.off
    if form in ("gotol", "call_local"):
        return index + 1 + insn.imm
    return None


def _check_jumps(insns: list[Insn | None]) -> None:
    n = len(insns)
    for i, insn in enumerate(insns):
        if insn is None:
            continue
        target = jump_target(insn, i)
        if target is None:
            continue
        what = "call" if insn.op.form == "call_local" else "jump"
        if not 0 <= target < n:
            raise ProgramError(f"{what} out of bounds: target {target} is outside the program "
                               f"(0..{n - 1})", i)
        if insns[target] is None:
            raise ProgramError(f"{what} to the middle of lddw at instruction {target}", i)


class Program:
    """An eBPF program: code (validated on construction) plus optional program data segments.

    ``len(program)`` is the number of 64-bit instruction slots (an ``lddw`` counts two), the unit
    jump offsets are measured in.
    """

    def __init__(self, code: bytes, *, segments: tuple[Segment, ...] = (), name: str | None = None,
                 max_slots: int = MAX_PROGRAM_SLOTS, symbols: dict[int, str] | None = None,
                 entry_symbol: int = 0):
        if not isinstance(code, (bytes, bytearray, memoryview)):
            raise UsageError(f"program code must be bytes, not {type(code).__name__}")
        self._code = bytes(code)
        self.segments = tuple(segments)
        self.name = name
        #: Function names by entry slot, when known (ELF symbols or assembly labels).
        self.symbols = dict(symbols or {})
        #: ELF symbol table index of the entry function (what a device is told to run, with
        #: the object); 0 for programs not from ELF and for the default rule of specs/elf.md.
        self.entry_symbol = entry_symbol
        self.insns = decode(self._code, max_slots)

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str | None = None) -> "Program":
        """Build a program from raw little-endian instruction bytes."""
        return cls(bytes(data), name=name)

    @classmethod
    def from_asm(cls, text: str, *, name: str | None = None) -> "Program":
        """Assemble ``text`` (the corpus dialect, with labels) into a program."""
        from .asm import assemble
        return cls(assemble(text), name=name)

    @classmethod
    def from_elf(cls, source: "str | Path | bytes", section: str | None = None,
                 function: str | None = None, *, max_size: int | None = None,
                 entry_symbol: int = 0) -> "Program":
        """Load a program from a clang-compiled BPF ELF object (path or bytes); ``max_size``
        bounds its code + data bytes (default ``hermes.engine.elf.DEFAULT_MAX_SIZE``). The
        entry is ``function``, or the one of ``section``, or the function whose ELF symbol
        table index is ``entry_symbol``, else the default rule (specs/elf.md)."""
        from .elf import load_elf
        return load_elf(source, section=section, function=function, max_size=max_size,
                        entry_symbol=entry_symbol)

    @classmethod
    def from_file(cls, path: "str | Path", *, max_size: int | None = None) -> "Program":
        """Load a program from a file: ELF object, assembly (``.s``/``.asm``) or raw bytes;
        ``max_size`` as for ``from_elf``."""
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"a program file is a path, not {type(path).__name__}")
        p = Path(path)
        data = p.read_bytes()
        if data[:4] == b"\x7fELF":
            return cls.from_elf(data, max_size=max_size)
        if p.suffix in (".s", ".asm", ".S"):
            from .asm import source_text
            return cls.from_asm(source_text(data, p.name), name=p.name)
        return cls.from_bytes(data, name=p.name)

    def to_bytes(self) -> bytes:
        """The instruction bytes (without program data segments)."""
        return self._code

    @property
    def code(self) -> bytes:
        """The instruction bytes."""
        return self._code

    def __len__(self) -> int:
        return len(self.insns)

    @cached_property
    def digest(self) -> str:
        """SHA-256 over code and segments: the key compiled forms are cached under."""
        h = hashlib.sha256(self._code)
        for seg in self.segments:
            h.update(f"{seg.name}:{seg.vaddr}:{int(seg.writable)}:{len(seg.data)}".encode())
            h.update(seg.data)
        return h.hexdigest()

    @property
    def host_bytes(self) -> int:
        """Estimated host memory the program holds once loaded on an engine: code, data
        segments twice (an engine may keep its own copy of read-only data) and
        ``LOADED_BYTES_PER_SLOT`` per slot. What caches of loaded programs are bounded by."""
        data = sum(len(seg.data) for seg in self.segments)
        return len(self._code) + 2 * data + LOADED_BYTES_PER_SLOT * len(self.insns)

    def disasm(self) -> str:
        """Disassembly, one instruction a line, in the assembler's syntax (round-trips)."""
        from .disasm import disassemble_insns
        return disassemble_insns(self.insns)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Program{label} {len(self)} slots>"

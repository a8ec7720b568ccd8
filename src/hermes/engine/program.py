"""Programs: validated eBPF code (plus optional program data) built from bytes, assembly or ELF."""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

from ..errors import ProgramError, UsageError
from .isa import MAX_PROGRAM_SLOTS, decode
from .memory import Segment

#: Host bytes a loaded program holds per instruction slot beyond its code bytes (decoded
#: instructions, translated blocks, analysis results): measured 0.2-0.9 KiB for the
#: interpreter and the JIT's Python side on straight-line and jump-dense programs.
LOADED_BYTES_PER_SLOT = 1024


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

"""The Program value: validated eBPF code, its data segments and what it is known by."""
from __future__ import annotations

import hashlib
from dataclasses import InitVar, dataclass, field
from functools import cached_property

from ..errors import UsageError
from .isa import MAX_PROGRAM_SLOTS, Insn, decode
from .memory import Segment

#: Host bytes a loaded program holds per instruction slot beyond its code bytes (decoded
#: instructions, translated blocks, analysis results): measured 0.2-0.9 KiB for the
#: interpreter and the JIT's Python side on straight-line and jump-dense programs.
LOADED_BYTES_PER_SLOT = 1024


@dataclass(frozen=True, eq=False)
class Program:
    """An eBPF program: code (decoded and validated on construction) plus optional program data.

    A plain value: it knows nothing of where it came from beyond the fields below. Front ends
    build it: ``asm.assemble_program`` (assembly), ``elf.load_elf`` (an ELF object),
    ``frontends.read_program`` (a file of any of these kinds). ``len(program)`` is the number of
    64-bit instruction slots (an ``lddw`` counts two), the unit jump offsets are measured in.
    Programs compare by identity: two loads of the same code are two programs (``digest`` tells
    equal contents).
    """

    #: The instruction bytes, little-endian.
    code: bytes
    #: Program data: a read-only and a writable segment at the addresses of specs/elf.md.
    segments: tuple[Segment, ...] = field(default=(), kw_only=True)
    #: What the program is called in messages (entry function, file name), when known.
    name: str | None = field(default=None, kw_only=True)
    #: Function names by entry slot, when known (ELF symbols or assembly labels).
    symbols: dict[int, str] = field(default_factory=dict, kw_only=True)
    #: ELF symbol table index of the entry function (what a device is told to run, with the
    #: object); 0 for programs not from ELF and for the default rule of specs/elf.md.
    entry_symbol: int = field(default=0, kw_only=True)
    #: The ELF object the program was linked from, exactly as given (what a device receives and
    #: DWARF line tables are read from); None for programs not from ELF.
    elf_bytes: bytes | None = field(default=None, kw_only=True)
    #: Largest program accepted, in slots (only checked, not kept).
    max_slots: InitVar[int] = field(default=MAX_PROGRAM_SLOTS, kw_only=True)
    #: One decoded instruction per slot (None for the second half of an ``lddw``).
    insns: list[Insn | None] = field(init=False)

    def __post_init__(self, max_slots: int) -> None:
        code = self.code
        if not isinstance(code, (bytes, bytearray, memoryview)):
            raise UsageError(f"program code must be bytes, not {type(code).__name__}")
        # Frozen: the normalised fields are set once, here, the way dataclasses document.
        set_field = object.__setattr__
        set_field(self, "code", bytes(code))
        set_field(self, "segments", tuple(self.segments))
        set_field(self, "symbols", dict(self.symbols or {}))
        if self.elf_bytes is not None:
            set_field(self, "elf_bytes", bytes(self.elf_bytes))
        set_field(self, "insns", decode(self.code, max_slots))

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str | None = None) -> Program:
        """Build a program from raw little-endian instruction bytes."""
        return cls(bytes(data), name=name)

    def to_bytes(self) -> bytes:
        """The instruction bytes (without program data segments)."""
        return self.code

    def __len__(self) -> int:
        return len(self.insns)

    @cached_property
    def digest(self) -> str:
        """SHA-256 over code and segments: the key compiled forms are cached under."""
        h = hashlib.sha256(self.code)
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
        return len(self.code) + 2 * data + LOADED_BYTES_PER_SLOT * len(self.insns)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Program{label} {len(self)} slots>"

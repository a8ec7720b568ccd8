"""The program's virtual address space: where the data slot, stack and program data live."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

#: Virtual address of byte 0 of the input memory / data slot (r1 at entry).
DATA_BASE = 0x0000_0001_0000_0000
#: Virtual address of the read-only program data (ELF .rodata and string literals).
RODATA_BASE = 0x0000_0002_0000_0000
#: Virtual address of the per-run writable program data (ELF .data and .bss).
RWDATA_BASE = 0x0000_0003_0000_0000
#: One past the highest stack byte; frame d (0 = entry function) has r10 = STACK_TOP - d*STACK_SIZE.
STACK_TOP = 0x0000_0004_0000_0000
#: Bytes of stack per call frame.
STACK_SIZE = 512
#: Deepest call nesting (frames including the entry function).
MAX_CALL_DEPTH = 8
#: Lowest stack address that can ever be valid.
STACK_BASE = STACK_TOP - STACK_SIZE * MAX_CALL_DEPTH

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
#: Largest input region: it must end below the program data (and so below the stack), which
#: keeps every address at or above STACK_TOP unmapped (the load-time fault analysis relies on it).
MAX_DATA = RODATA_BASE - DATA_BASE


@dataclass(frozen=True)
class Segment:
    """Program data mapped next to the code: ``name`` (e.g. ``.rodata``), virtual address, bytes."""

    name: str
    vaddr: int
    data: bytes
    writable: bool

    @property
    def end(self) -> int:
        """One past the last virtual address of the segment."""
        return self.vaddr + len(self.data)


def describe_regions(data_len: int, depth: int, segments: tuple[Segment, ...] = ()) -> str:
    """Human-readable list of the regions a run can address (for error messages)."""
    parts = []
    if data_len:
        parts.append(f"data [{DATA_BASE:#x}, {DATA_BASE + data_len:#x}) rw")
    lo = STACK_TOP - STACK_SIZE * (depth + 1)
    parts.append(f"stack [{lo:#x}, {STACK_TOP:#x}) rw")
    for seg in segments:
        if seg.data:
            parts.append(f"{seg.name} [{seg.vaddr:#x}, {seg.end:#x}) {'rw' if seg.writable else 'ro'}")
    return ", ".join(parts)


def input_region(memory: "bytearray | memoryview | bytes | None") -> "tuple[bytearray | memoryview, int, int]":
    """The run's input region and its r1, r2: writable buffers are used in place, read-only ones
    are copied; ``None`` gives an empty region with r1 = r2 = 0 (the corpus's no-memory case)."""
    if memory is None:
        return bytearray(), 0, 0
    size = memory.nbytes if isinstance(memory, memoryview) else len(memory)
    if size > MAX_DATA:
        raise UsageError(f"input memory of {size} bytes is larger than the data region "
                         f"({MAX_DATA} bytes)")
    if isinstance(memory, bytes) or (isinstance(memory, memoryview) and memory.readonly):
        data: bytearray | memoryview = bytearray(memory)
    else:
        data = memory
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")
    return data, DATA_BASE, len(data)

"""The program's virtual address space: where the data slot, stack and program data live."""
from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DataTooLarge, ExecutionError, UsageError

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


def describe_regions(window: int, depth: int = 0, segments: tuple[Segment, ...] = ()) -> str:
    """Human-readable list of the regions a run can address (the ``regions`` of a fault).

    Needs only what a device reports with a fault: the data window's length, the call depth
    (0 = the entry function) and the program's segments, so every backend words it the same.
    """
    parts = []
    if window:
        parts.append(f"data [{DATA_BASE:#x}, {DATA_BASE + window:#x}) rw")
    lo = STACK_TOP - STACK_SIZE * (depth + 1)
    parts.append(f"stack [{lo:#x}, {STACK_TOP:#x}) rw")
    for seg in segments:
        if seg.data:
            access = "rw" if seg.writable else "ro"
            parts.append(f"{seg.name} [{seg.vaddr:#x}, {seg.end:#x}) {access}")
    return ", ".join(parts)


def fault_message(address: int, size: int, write: bool, segments: tuple[Segment, ...] = ()) -> str:
    """What a faulting access is called: a store wholly inside a read-only segment is "store to
    read-only NAME", anything else "out-of-bounds memory load" or "... store"."""
    if write:
        for seg in segments:
            if seg.data and not seg.writable and seg.vaddr <= address \
                    and address + size <= seg.end:
                return f"store to read-only {seg.name}"
    return f"out-of-bounds memory {'store' if write else 'load'}"


def out_of_bounds(pc: int | None, address: int, size: int, write: bool, window: int,
                  segments: tuple[Segment, ...] = (), depth: int = 0, *,
                  instructions: int | None = None,
                  cls: Callable[..., ExecutionError] = ExecutionError,
                  **extra: object) -> ExecutionError:
    """The out-of-bounds fault of an access, as every engine and backend reports it.

    ``cls`` builds it (``ExecutionError``, or ``ExecutionFailed`` with ``code=`` in ``extra``
    for a device's fault): kind ``out_of_bounds``, ``fault_message`` as message, the mapped
    regions from ``describe_regions(window, depth, segments)`` and ``depth`` itself.
    """
    return cls("out_of_bounds", fault_message(address, size, write, segments), pc,
               address=address, size=size, regions=describe_regions(window, depth, segments),
               instructions=instructions, write=write, depth=depth, **extra)


#: Arguments a run takes (r3, r4, r5).
MAX_ARGS = 3


def run_args(args: tuple | list = ()) -> tuple[int, int, int]:
    """r3..r5 of a run from its ``args``: at most ``MAX_ARGS`` integers, taken modulo 2^64,
    missing ones 0; anything else is ``UsageError``."""
    if args == ():
        return 0, 0, 0
    if type(args) is tuple and len(args) == MAX_ARGS:
        # the device's case (three u64 words of a run context), which the loop below accepts
        a, b, c = args
        if type(a) is int and type(b) is int and type(c) is int \
                and 0 <= a <= MASK64 and 0 <= b <= MASK64 and 0 <= c <= MASK64:
            return a, b, c
    if not isinstance(args, (tuple, list)):
        raise UsageError(f"args must be a tuple of at most {MAX_ARGS} integers, "
                         f"not {type(args).__name__}")
    if len(args) > MAX_ARGS:
        raise UsageError(f"a run takes at most {MAX_ARGS} arguments, got {len(args)}")
    out = [0] * MAX_ARGS
    for k, value in enumerate(args):
        if isinstance(value, bool):
            raise UsageError(f"argument {k} must be an integer, not bool")
        try:
            out[k] = operator.index(value) & MASK64
        except TypeError:
            raise UsageError(f"argument {k} must be an integer, not {type(value).__name__}") \
                from None
    return out[0], out[1], out[2]


def input_region(memory: bytearray | memoryview | bytes | None, length: int | None = None
                 ) -> tuple[bytearray | memoryview, int, int]:
    """The run's data window and its r1, r2: writable buffers are used in place, read-only ones
    are copied; ``None`` gives an empty window with r1 = r2 = 0 (the corpus's no-memory case).

    r2 is ``length``, the input length (default: the whole window); it may not exceed the
    window (``DataTooLarge``).
    """
    if type(memory) is memoryview and memory.c_contiguous and memory.format == "B" \
            and memory.ndim == 1 and not memory.readonly and memory.nbytes <= MAX_DATA:
        # the devices' case (a window of a slot), which everything below would also accept
        data: bytearray | memoryview = memory
    elif memory is None:
        data = bytearray()
    else:
        size = memory.nbytes if isinstance(memory, memoryview) else len(memory)
        if size > MAX_DATA:
            raise DataTooLarge(f"input memory of {size} bytes is larger than the data region "
                               f"({MAX_DATA} bytes)", size, MAX_DATA)
        if isinstance(memory, bytes) or (isinstance(memory, memoryview) and memory.readonly):
            data = bytearray(memory)
        else:
            data = memory
            if isinstance(data, memoryview) and not data.contiguous:
                raise UsageError("input memory must be a contiguous buffer")
            if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
                data = data.cast("B")
    window = len(data)
    if length is None:
        return data, (DATA_BASE if memory is not None else 0), window
    if isinstance(length, bool) or not isinstance(length, int):
        raise UsageError(f"length must be an integer, not {type(length).__name__}")
    if not 0 <= length <= window:
        if length < 0:
            raise UsageError(f"length must be >= 0, got {length}")
        raise DataTooLarge(f"input length {length} is larger than the data window "
                           f"({window} bytes)", length, window)
    return data, (DATA_BASE if memory is not None else 0), length

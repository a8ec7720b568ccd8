"""Device memory a run can name as its ranges: ``Memory``, ``Range`` and the window they make.

The rules, the same on every backend (``specs/library.md``, "Device memory and ranges"):

- ``Device.memory(size)`` gives ``size`` bytes of memory that stay on the device until closed,
  zeroed when given. ``write``/``read``/``readinto``/``fill`` move bytes in and out, bounded by
  ``size`` (``DataTooLarge`` past it). On the NVMe CP backends it is Subsystem Local Memory of a
  memory namespace; on the Hermes device and ``cpu`` (which have one data slot per run) it is
  host memory that a run copies through the session's data slot.
- ``Session.run(ranges=[...])`` runs the loaded program on a window made of the ranges back to
  back, in order: range k starts at the sum of the lengths before it. At most ``MAX_RANGES``
  ranges; each starts at a multiple of ``RANGE_ALIGN`` bytes of its memory, every range but the
  last is a multiple of ``RANGE_ALIGN`` long (so each one starts aligned in the window); two
  ranges of one memory may not overlap. These are the CP controller's own rules (MAXMEMR,
  2^MRSG, "Overlapping Memory Ranges"), kept on every backend so code moves unchanged.
- The run contract holds with the window in place of the data slot: r2 = ``length`` (default the
  whole window), bytes ``length..size`` are zero when the program starts (also in the memory),
  and an access outside the window faults. What the program stored is in the memories after
  the run, also when it fails. The output (``read=``, the declared length, else ``length``)
  is read from the window.
"""
from __future__ import annotations

import abc
import errno
from collections.abc import Sequence
from typing import NamedTuple, Union

from ..errors import DataTooLarge, DeviceError, UsageError
from .checks import check_buffer, check_int, check_size, writable_view

#: Most ranges one run may name (the CP controller's MAXMEMR).
MAX_RANGES = 16
#: Alignment of a range's start and of every range's length but the last (2^MRSG bytes).
RANGE_ALIGN = 8
#: Largest memory region ``Device.memory`` gives (the library's input memory bound).
MAX_MEMORY = 1 << 32


class Range(NamedTuple):
    """``length`` bytes of ``memory`` from ``offset``: one piece of a run's window."""

    memory: Memory
    offset: int
    length: int


class Memory(abc.ABC):
    """``size`` bytes of device memory that runs can use as ranges of their window.

    Made by ``Device.memory``; closed with ``close()`` (or ``with``), and with its device.
    Thread-safe for transfers that do not overlap; a run over it and a transfer into it at the
    same time leave the bytes of either.
    """

    def __init__(self, device: object, size: int):
        self._device = device
        #: Bytes of the region.
        self.size = size
        self.closed = False

    # --- what a backend provides ------------------------------------------------------------
    @abc.abstractmethod
    def _write(self, view: memoryview, offset: int) -> None:
        """Copy all of ``view`` into the region at ``offset`` (bounds already checked)."""

    @abc.abstractmethod
    def _readinto(self, view: memoryview, offset: int) -> None:
        """Fill all of ``view`` from the region at ``offset`` (bounds already checked)."""

    def _fill(self, value: int, offset: int, size: int) -> None:
        """Set ``size`` bytes from ``offset`` to ``value`` (a backend with a fill command
        overrides this)."""
        self._write(memoryview(bytes([value]) * size), offset)

    def _host_view(self, offset: int, size: int) -> memoryview | None:
        """A writable view of ``size`` bytes from ``offset`` when the region is host bytes (runs
        then copy between it and the data slot directly), else None (bounds already
        checked)."""
        return None

    @abc.abstractmethod
    def _free(self) -> None:
        """Give the region back to the device (once, from ``close``)."""

    # --- the rules ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        self._device.check_open()  # type: ignore[attr-defined]
        if self.closed:
            raise DeviceError("the memory is closed", errno.EBADF)

    def _check_span(self, what: str, offset: int, n: int) -> None:
        check_size("offset", offset)
        self._check_open()
        if offset + n > self.size:
            raise DataTooLarge(f"{what} of {n} bytes at offset {offset} goes past the end of "
                               f"the memory ({self.size} bytes)", offset + n, self.size)

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy ``data`` into the memory at ``offset``; returns the bytes written (all of them:
        past the end is ``DataTooLarge``)."""
        view = check_buffer(data)
        self._check_span("write", offset, view.nbytes)
        if view.nbytes:
            self._write(view, offset)
        return view.nbytes

    def read(self, size: int, offset: int = 0) -> bytes:
        """``size`` bytes of the memory at ``offset``."""
        check_size("size", size)
        self._check_span("read", offset, size)
        buf = bytearray(size)
        if size:
            self._readinto(memoryview(buf), offset)
        return bytes(buf)

    def readinto(self, buffer: object, offset: int = 0) -> int:
        """Fill the writable ``buffer`` from the memory at ``offset``; returns its length."""
        view = writable_view(buffer, "buffer")
        self._check_span("read", offset, view.nbytes)
        if view.nbytes:
            self._readinto(view, offset)
        return view.nbytes

    def fill(self, value: int = 0, offset: int = 0, size: int | None = None) -> None:
        """Set ``size`` bytes from ``offset`` (default: to the end) to the byte ``value``."""
        check_int("value", value, 0, 255)
        check_size("offset", offset)
        n = self.size - offset if size is None else check_size("size", size)
        self._check_span("fill", offset, max(n, 0))
        if n > 0:
            self._fill(value, offset, n)

    def range(self, offset: int = 0, length: int | None = None) -> Range:
        """The part ``[offset, offset + length)`` (default: to the end) as a run's range."""
        check_size("offset", offset)
        n = self.size - offset if length is None else check_size("length", length)
        return Range(self, offset, n)

    def close(self) -> None:
        """Give the memory back to the device (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._free()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<{type(self).__name__} {self.size} bytes{state}>"


class HostMemory(Memory):
    """Memory of a backend whose device has none beyond its data slots (``cpu``, the Hermes
    device): host bytes that a run copies into the session's data slot and back."""

    def __init__(self, device: object, size: int):
        super().__init__(device, size)
        self._bytes: bytearray | None = bytearray(size)

    def _buf(self) -> bytearray:
        assert self._bytes is not None
        return self._bytes

    def _write(self, view: memoryview, offset: int) -> None:
        # (a memoryview copies once; a bytearray slice assignment first copies the source)
        memoryview(self._buf())[offset:offset + view.nbytes] = view

    def _readinto(self, view: memoryview, offset: int) -> None:
        view[:] = memoryview(self._buf())[offset:offset + view.nbytes]

    def _host_view(self, offset: int, size: int) -> memoryview:
        return memoryview(self._buf())[offset:offset + size]

    def _free(self) -> None:
        self._bytes = None


#: What ``ranges=`` takes: a whole memory, a ``Range``, or a (memory, offset, length) tuple.
RangeLike = Union[Memory, Range, "tuple[Memory, int, int]"]


def window_of(device: object, ranges: Sequence[RangeLike]) -> list[Range]:
    """``ranges`` checked against the rules above, as ``Range`` values; ``UsageError`` naming
    the range at fault."""
    if isinstance(ranges, (Memory, Range)) or not isinstance(ranges, (list, tuple)):
        raise UsageError("ranges must be a list of Memory, Range or (memory, offset, length)")
    if not ranges:
        raise UsageError("ranges is empty: name at least one memory range")
    if len(ranges) > MAX_RANGES:
        raise UsageError(f"{len(ranges)} ranges; a run takes at most {MAX_RANGES}")
    out: list[Range] = []
    for k, item in enumerate(ranges):
        if isinstance(item, Memory):
            item = item.range()
        elif isinstance(item, tuple) and len(item) == 3 and not isinstance(item, Range):
            item = Range(*item)
        if not isinstance(item, Range) or not isinstance(item.memory, Memory):
            raise UsageError(f"range {k} must be a Memory, a Range or (memory, offset, "
                             f"length), not {type(item).__name__}")
        mem, offset, length = item
        if mem._device is not device:
            raise UsageError(f"range {k} is memory of another device")
        mem._check_open()
        check_size(f"range {k} offset", offset)
        check_size(f"range {k} length", length)
        if length == 0:
            raise UsageError(f"range {k} is empty")
        if offset % RANGE_ALIGN:
            raise UsageError(f"range {k} starts at offset {offset}, not a multiple of "
                             f"{RANGE_ALIGN}")
        if length % RANGE_ALIGN and k != len(ranges) - 1:
            raise UsageError(f"range {k} is {length} bytes long: every range but the last is "
                             f"a multiple of {RANGE_ALIGN} bytes")
        if offset + length > mem.size:
            raise DataTooLarge(f"range {k} ({length} bytes at offset {offset}) goes past the "
                               f"end of its memory ({mem.size} bytes)", offset + length,
                               mem.size)
        for j, other in enumerate(out):
            if other.memory is mem and offset < other.offset + other.length \
                    and other.offset < offset + length:
                raise UsageError(f"ranges {j} and {k} overlap in the same memory")
        out.append(Range(mem, offset, length))
    return out


def window_spans(window: Sequence[Range], size: int) -> list[tuple[Range, int, int]]:
    """(range, start in the window, bytes of it inside the first ``size`` window bytes) of each
    range that the window's first ``size`` bytes reach."""
    spans = []
    at = 0
    for r in window:
        n = min(r.length, size - at)
        if n <= 0:
            break
        spans.append((r, at, n))
        at += r.length
    return spans


def read_window(window: Sequence[Range], view: memoryview) -> None:
    """Fill ``view`` with the window's first ``view.nbytes`` bytes, range by range."""
    for r, at, n in window_spans(window, view.nbytes):
        r.memory._readinto(view[at:at + n], r.offset)


__all__ = ["MAX_RANGES", "RANGE_ALIGN", "HostMemory", "Memory", "Range", "RangeLike",
           "read_window", "window_of", "window_spans"]

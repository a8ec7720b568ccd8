"""Host memory as the device's DMA engine sees it: buffers registered at bus addresses."""
from __future__ import annotations

import bisect
import threading
from typing import Protocol, runtime_checkable


class DmaFault(Exception):
    """A DMA access touched host memory that is not (entirely) registered.

    ``partial`` is True when the access starts inside a registered region but runs past its
    end (the device reports that as an invalid length rather than an unreadable address).
    """

    def __init__(self, bus_addr: int, length: int, partial: bool = False):
        self.bus_addr = bus_addr
        self.length = length
        self.partial = partial
        what = "crosses the end of a host memory region" if partial else "is not mapped"
        super().__init__(f"host range [{bus_addr:#x}, {bus_addr + length:#x}) {what}")


@runtime_checkable
class HostMemoryLike(Protocol):
    """What the device needs from host memory; ``view`` (zero-copy) is optional."""

    def read(self, bus_addr: int, n: int) -> bytes | memoryview:
        """``n`` bytes at ``bus_addr``; raises ``DmaFault`` when not mapped."""

    def write(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``bus_addr``; raises ``DmaFault`` when not mapped."""


class HostMemory:
    """Thread-safe map of bus address -> host buffer (bytearray, mmap, writable memoryview).

    A DMA access must fall inside one registered region; regions never overlap. ``view`` hands out
    zero-copy memoryviews so the device can copy 1 MiB with one memcpy.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []                       # sorted region start addresses
        self._regions: dict[int, memoryview] = {}          # start -> byte view

    def register(self, bus_addr: int, buffer: object) -> memoryview:
        """Make ``buffer`` visible at ``bus_addr``; returns the byte view the device uses.

        Raises ``ValueError`` for an empty or read-only buffer, a negative address, or an
        overlap with a region already registered.
        """
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly:
            raise ValueError("host memory for DMA must be writable")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        if n == 0:
            raise ValueError("cannot register an empty buffer")
        if bus_addr < 0 or bus_addr + n > 1 << 64:
            raise ValueError(f"bus address range [{bus_addr:#x}, +{n:#x}) is not 64-bit")
        with self._lock:
            i = bisect.bisect_right(self._starts, bus_addr)
            if i and self._starts[i - 1] + self._regions[self._starts[i - 1]].nbytes > bus_addr:
                raise ValueError(f"bus address {bus_addr:#x} overlaps a registered region")
            if i < len(self._starts) and self._starts[i] < bus_addr + n:
                raise ValueError(f"range at {bus_addr:#x} overlaps the region at "
                                 f"{self._starts[i]:#x}")
            self._starts.insert(i, bus_addr)
            self._regions[bus_addr] = view
        return view

    def unregister(self, bus_addr: int) -> None:
        """Forget the region starting at ``bus_addr`` (KeyError if there is none)."""
        with self._lock:
            view = self._regions.pop(bus_addr)
            self._starts.remove(bus_addr)
        view.release()

    def regions(self) -> list[tuple[int, int]]:
        """(bus address, size) of every registered region, in address order."""
        with self._lock:
            return [(a, self._regions[a].nbytes) for a in self._starts]

    def view(self, bus_addr: int, n: int) -> memoryview:
        """Zero-copy writable view of ``n`` bytes at ``bus_addr``; raises ``DmaFault``."""
        with self._lock:
            i = bisect.bisect_right(self._starts, bus_addr) - 1
            if i >= 0:
                start = self._starts[i]
                region = self._regions[start]
                off = bus_addr - start
                if off < region.nbytes:
                    if off + n <= region.nbytes and n >= 0:
                        return region[off:off + n]
                    raise DmaFault(bus_addr, n, partial=True)
        raise DmaFault(bus_addr, n)

    def read(self, bus_addr: int, n: int) -> bytes:
        """Copy of ``n`` bytes at ``bus_addr``; raises ``DmaFault``."""
        return bytes(self.view(bus_addr, n))

    def write(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``bus_addr``; raises ``DmaFault``."""
        src = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        self.view(bus_addr, len(src))[:] = src

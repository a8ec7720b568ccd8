"""Host memory as the device's DMA engine sees it: buffers registered at bus addresses."""
from __future__ import annotations

import bisect
import ctypes
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


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (the buffer protocol's view struct)."""

    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def buffer_address(view: memoryview) -> int:
    """Address of the first byte of the C-contiguous ``view``, read-only views included.

    The address stays valid while ``view`` (which holds its exporter's buffer) is not released;
    ctypes' ``from_buffer`` would refuse a read-only view and keep an export open.
    """
    raw = _PyBuffer()
    _get_buffer(view, ctypes.byref(raw), 0)   # PyBUF_SIMPLE: contiguous bytes, any access
    try:
        return raw.buf or 0
    finally:
        _release_buffer(ctypes.byref(raw))


@runtime_checkable
class HostMemoryLike(Protocol):
    """What the device needs from host memory; ``span`` and ``view`` (zero-copy) are
    optional."""

    def read(self, bus_addr: int, n: int) -> bytes | memoryview:
        """``n`` bytes at ``bus_addr``; raises ``DmaFault`` when not mapped."""

    def write(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``bus_addr``; raises ``DmaFault`` when not mapped."""


class HostMemory:
    """Thread-safe map of bus address -> host buffer (bytearray, mmap, writable memoryview).

    A DMA access must fall inside one registered region; regions never overlap. ``span`` hands
    out a region's address so the device copies with one ``memmove`` that releases the GIL;
    ``view`` hands out zero-copy memoryviews.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []                       # sorted region start addresses
        self._regions: dict[int, memoryview] = {}          # start -> byte view
        #: start -> (address of its first byte, whether the device may write it)
        self._addresses: dict[int, tuple[int, bool]] = {}

    def register(self, bus_addr: int, buffer: object, *, writable: bool = True) -> memoryview:
        """Make ``buffer`` visible at ``bus_addr``; returns the byte view the device uses.

        ``writable=False`` maps the buffer for device reads only (a read-only buffer is then
        accepted, and a device write to it faults), as a to-device IOMMU mapping does.
        Raises ``ValueError`` for an empty buffer, a read-only one unless ``writable=False``,
        a buffer that is not contiguous, a negative address, or an overlap with a region
        already registered.
        """
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly and writable:
            raise ValueError("host memory for DMA must be writable")
        if not view.c_contiguous:
            raise ValueError("host memory for DMA must be contiguous")
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
            self._addresses[bus_addr] = (buffer_address(view), writable)
        return view

    def unregister(self, bus_addr: int) -> None:
        """Forget the region starting at ``bus_addr`` (KeyError if there is none)."""
        with self._lock:
            view = self._regions.pop(bus_addr)
            del self._addresses[bus_addr]
            self._starts.remove(bus_addr)
        view.release()

    def regions(self) -> list[tuple[int, int]]:
        """(bus address, size) of every registered region, in address order."""
        with self._lock:
            return [(a, self._regions[a].nbytes) for a in self._starts]

    def span(self, bus_addr: int, n: int, write: bool) -> tuple[memoryview, int]:
        """(view, address) of the ``n`` bytes at ``bus_addr``, for a device read or (``write``)
        a device write; raises ``DmaFault`` (a write to a read-only region: not mapped).

        The caller copies at the address (``ctypes.memmove``, which releases the GIL) and keeps
        the view until it has: the view holds the memory, even if the region is unregistered
        meanwhile.
        """
        with self._lock:
            i = bisect.bisect_right(self._starts, bus_addr) - 1
            if i >= 0:
                start = self._starts[i]
                region = self._regions[start]
                off = bus_addr - start
                if off < region.nbytes:
                    if off + n <= region.nbytes and n >= 0:
                        address, writable = self._addresses[start]
                        if write and not writable:
                            raise DmaFault(bus_addr, n)
                        return region[off:off + n], address + off
                    raise DmaFault(bus_addr, n, partial=True)
        raise DmaFault(bus_addr, n)

    def view(self, bus_addr: int, n: int) -> memoryview:
        """Zero-copy view of ``n`` bytes at ``bus_addr`` (writable when its buffer is; device
        writes go through ``span`` or ``write``, which honour ``writable=False``); raises
        ``DmaFault``."""
        return self.span(bus_addr, n, False)[0]

    def read(self, bus_addr: int, n: int) -> bytes:
        """Copy of ``n`` bytes at ``bus_addr``; raises ``DmaFault``."""
        return bytes(self.view(bus_addr, n))

    def write(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``bus_addr``; raises ``DmaFault``."""
        src = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        target, _ = self.span(bus_addr, len(src), True)
        target[:] = src

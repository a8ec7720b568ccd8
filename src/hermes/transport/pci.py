"""What the VFIO and vfio-user client transports share: the PCI function seen from its driver.

Both reach a PCI function through VFIO's region and IRQ model; only the carrier differs (ioctls
and pread/pwrite on a device fd, or socket messages). ``PciTransport`` holds what follows from
the model itself: config-space access, the identity check and the enable step (memory decode,
bus mastering), BAR access checks and mappings, MSI-X vectors as semaphore eventfds, bus
addresses for DMA buffers, and releasing all of it. A subclass supplies the carrier through
``_config_bytes``, ``_config_put`` and ``_bar_size``.
"""
from __future__ import annotations

import abc
import mmap
import os
import select
import struct
import threading

from ..vfio import pci, uapi
from .base import Transport, close_mapping

#: First bus address (IOVA) handed out for DMA buffers: above 4 GiB, clear of the x86 MSI window
#: at 0xFEE00000; buffers follow with a guard page between.
DMA_BASE = 0x1_0000_0000
PAGE = mmap.PAGESIZE


def page_round(n: int) -> int:
    """``n`` bytes rounded up to whole pages (at least one)."""
    return max(PAGE, -(-n // PAGE) * PAGE)


def mappable_areas(info: uapi.vfio_region_info, raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the parts of a region that may be mmapped, from its info reply ``raw``.

    The whole region unless a sparse-mmap capability lists the parts (vfio-pci keeps BAR2's MSI-X
    page out of the mapping); empty when the region is not mappable at all.
    """
    if not info.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP or not info.size:
        return []
    if info.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS and info.cap_offset:
        sparse = uapi.parse_caps(raw, info.cap_offset).get(uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP)
        if sparse is not None:
            return uapi.parse_sparse_mmap(sparse[1])
    return [(0, info.size)]


def map_region(fd: int, offset: int, size: int) -> mmap.mmap:
    """A shared read-write mapping of ``size`` bytes of ``fd`` at ``offset``."""
    return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)


def take_one(fd: int) -> bool:
    """Consume one count of the semaphore eventfd ``fd``; False when none is pending."""
    try:
        os.eventfd_read(fd)
        return True
    except BlockingIOError:
        return False


class PciTransport(Transport):
    """A transport to a PCI function behind VFIO's region and IRQ model (see the module)."""

    def __init__(self) -> None:
        self._eventfds: list[int] = []
        self._pending_polls: list[select.poll] = []
        self._bus_lock = threading.Lock()
        self._next_bus = DMA_BASE

    # --- the carrier ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _config_bytes(self, offset: int, size: int) -> bytes:
        """``size`` bytes of config space at ``offset``."""

    @abc.abstractmethod
    def _config_put(self, offset: int, data: bytes) -> None:
        """Write ``data`` to config space at ``offset``."""

    @abc.abstractmethod
    def _bar_size(self, bar: int) -> int:
        """Size of BAR ``bar`` in bytes; 0 when the function has no such BAR."""

    # --- config space --------------------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes of PCI config space (region 7) as a little-endian int."""
        return int.from_bytes(self._config_bytes(offset, size), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``value`` as ``size`` little-endian bytes to PCI config space."""
        self._config_put(offset, value.to_bytes(size, "little"))

    def _identity(self) -> tuple[int, int]:
        """(vendor ID, device ID) of the function."""
        vendor, device = struct.unpack("<HH", self._config_bytes(pci.PCI_VENDOR_ID, 4))
        return vendor, device

    def _enable(self) -> None:
        """Memory decode and bus mastering on, as a PCI driver's enable step does (DMA needs bus
        mastering, and vfio-pci may leave it off); the register is written only to change it."""
        cmd = struct.unpack("<H", self._config_bytes(pci.PCI_COMMAND, 2))[0]
        want = cmd | pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER
        if want != cmd:
            self._config_put(pci.PCI_COMMAND, struct.pack("<H", want))

    # --- BARs ----------------------------------------------------------------------------------
    def _check(self, bar: int, offset: int, size: int) -> None:
        """ValueError for an access outside the BAR or of an unsupported width (as the in-process
        model raises), checked here so that an access the carrier would not answer fails alike."""
        length = self._bar_size(bar) if 0 <= bar <= uapi.VFIO_PCI_BAR5_REGION_INDEX else 0
        if not length:
            raise ValueError(f"the Hermes device has no BAR {bar}")
        if size not in (1, 2, 4, 8):
            raise ValueError(f"access size must be 1, 2, 4 or 8, not {size}")
        if offset < 0 or offset + size > length:
            raise ValueError(f"access of {size} bytes at {offset:#x} is outside BAR{bar} "
                             f"({length:#x} bytes)")

    # --- MSI-X vectors -------------------------------------------------------------------------
    def _open_eventfds(self, count: int) -> list[int]:
        """One semaphore eventfd per MSI-X vector (each interrupt counted, each wait takes one)."""
        self._eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC | os.EFD_SEMAPHORE)
                          for _ in range(count)]
        # Whether a vector is pending, asked without the exception of a read that finds none
        # (the usual case on a command's hot path, where raising costs more than the call).
        self._pending_polls = []
        for fd in self._eventfds:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            self._pending_polls.append(poller)
        return self._eventfds

    def _eventfd(self, vector: int) -> int:
        """The eventfd of ``vector`` (ValueError when the function has no such vector)."""
        if not 0 <= vector < len(self._eventfds):
            raise ValueError(f"vector {vector} out of range 0..{len(self._eventfds) - 1}")
        return self._eventfds[vector]

    def irq_clear(self, vector: int) -> None:
        """Drop pending interrupts of ``vector``."""
        fd = self._eventfds[vector]
        if self._pending_polls[vector].poll(0):
            while take_one(fd):
                pass

    # --- DMA -----------------------------------------------------------------------------------
    def _bus_range(self, size: int) -> tuple[int, int]:
        """(bus address, mapped length) for a buffer of ``size`` bytes: whole pages, then a guard
        page before the next buffer, so an overrun faults on the device side."""
        if size <= 0:
            raise ValueError("DMA buffer size must be positive")
        mapped = page_round(size)
        with self._bus_lock:
            bus = self._next_bus
            self._next_bus += mapped + PAGE
        return bus, mapped

    # --- release -------------------------------------------------------------------------------
    def _release(self, mappings: list[mmap.mmap]) -> None:
        """Unmap the BAR ``mappings`` and close the vectors' eventfds."""
        for mm in mappings:
            close_mapping(mm)
        for fd in self._eventfds:
            os.close(fd)
        self._eventfds = []
        self._pending_polls = []


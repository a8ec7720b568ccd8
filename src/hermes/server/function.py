"""A HermesDevice as a VFIO PCI function: regions, config space, MSI-X eventfds, DMA space.

This is the device side shared by the vfio-user server and the fake VFIO kernel used in tests:
both translate their wire format (socket messages, ioctls) into calls on a ``VfioFunction``.
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .. import regs
from ..device import DmaFault, HermesDevice
from ..device.model import BAR4_ALIGN
from ..device.nvme import PCI_IDENTITY, NvmeController
from ..vfio import pci, uapi
from ..vfio.protocol import close_fds


def _not_told(engine: int) -> None:
    """``started`` of a command started by a register write: nobody follows it here."""


def vfio_error(err: int, what: str) -> OSError:
    """An OSError carrying ``err`` (the errno the peer or ioctl caller will see)."""
    return OSError(err, f"{what}: {os.strerror(err)}")


# --- host memory as the device sees it -------------------------------------------------------

class DmaBackend:
    """How the bytes of one DMA mapping are reached."""

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` into the mapping."""
        raise NotImplementedError

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``offset`` into the mapping."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the backing (after the mapping is removed)."""


class MmapBackend(DmaBackend):
    """Memory shared with the client through an fd (memfd) mapped into this process."""

    def __init__(self, mm: mmap.mmap):
        self.mm = mm

    def read(self, offset: int, n: int) -> bytes:
        """Copy out of the shared mapping."""
        return self.mm[offset:offset + n]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy into the shared mapping."""
        self.mm[offset:offset + len(data)] = data

    def close(self) -> None:
        """Unmap (deferred to the GC while views exist)."""
        try:
            self.mm.close()
        except BufferError:   # someone still holds a view; the GC unmaps it later
            pass


class PointerBackend(DmaBackend):
    """Memory at a virtual address of this process (the fake kernel's 'IOMMU' for VFIO tests)."""

    def __init__(self, vaddr: int):
        self.vaddr = vaddr

    def read(self, offset: int, n: int) -> bytes:
        """Copy from the process address ``vaddr + offset``."""
        return ctypes.string_at(self.vaddr + offset, n)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy to the process address ``vaddr + offset``."""
        data = bytes(data)
        ctypes.memmove(self.vaddr + offset, data, len(data))


class CallbackBackend(DmaBackend):
    """Memory only the peer can reach: every access is a DMA_READ/DMA_WRITE message."""

    def __init__(self, base: int, read: Callable[[int, int], bytes],
                 write: Callable[[int, bytes], None]):
        self.base = base
        self._read = read
        self._write = write

    def read(self, offset: int, n: int) -> bytes:
        """DMA_READ messages to the peer."""
        return self._read(self.base + offset, n)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """DMA_WRITE messages to the peer."""
        self._write(self.base + offset, bytes(data))


@dataclass
class _Mapping:
    addr: int
    size: int
    flags: int
    backend: DmaBackend
    busy: int = 0           # accesses in progress outside the lock (callback backends)
    removed: bool = False


_READ_WRITE = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE


class DmaSpace:
    """Bus address -> backend map the device DMAs through (the device's host-memory object).

    An access may span mappings that are adjacent in bus addresses, as behind an IOMMU that
    maps a buffer page by page (QEMU's vIOMMU reports each IOTLB entry as its own DMA_MAP);
    callback-backed accesses must fall inside one mapping. Memory-backed copies happen under the
    lock, so an unmap never races a copy; callback-backed accesses run outside it (they wait for
    the peer) and an unmap does not wait for them.
    """

    def __init__(self, max_maps: int = 65535):
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._maps: dict[int, _Mapping] = {}
        self.max_maps = max_maps

    def map(self, addr: int, size: int, flags: int, backend: DmaBackend) -> None:
        """Add a mapping; OSError EINVAL (bad range), EEXIST (overlap), ENOSPC (too many)."""
        if size <= 0 or addr < 0 or addr + size > 1 << 64:
            raise vfio_error(errno.EINVAL, f"DMA range {addr:#x}+{size:#x}")
        with self._lock:
            if len(self._starts) >= self.max_maps:
                raise vfio_error(errno.ENOSPC, "too many DMA mappings")
            i = bisect.bisect_right(self._starts, addr)
            if i and self._starts[i - 1] + self._maps[self._starts[i - 1]].size > addr:
                raise vfio_error(errno.EEXIST, f"DMA range at {addr:#x} overlaps a mapping")
            if i < len(self._starts) and self._starts[i] < addr + size:
                raise vfio_error(errno.EEXIST, f"DMA range at {addr:#x} overlaps a mapping")
            self._starts.insert(i, addr)
            self._maps[addr] = _Mapping(addr, size, flags, backend)

    def unmap(self, addr: int, size: int) -> int:
        """Remove every mapping inside ``[addr, addr+size)`` (none, one or many, as the kernel's
        type-1 IOMMU does for a vIOMMU's range invalidations); returns the bytes unmapped.
        OSError EINVAL when the range cuts a mapping, and then nothing is removed."""
        end = addr + size
        with self._lock:
            i = bisect.bisect_left(self._starts, addr)
            if i and self._starts[i - 1] + self._maps[self._starts[i - 1]].size > addr:
                raise vfio_error(errno.EINVAL, f"DMA_UNMAP {addr:#x}+{size:#x} cuts the mapping "
                                 f"at {self._starts[i - 1]:#x}")
            inside = []
            while i < len(self._starts) and self._starts[i] < end:
                m = self._maps[self._starts[i]]
                if m.addr + m.size > end:
                    raise vfio_error(errno.EINVAL, f"DMA_UNMAP {addr:#x}+{size:#x} cuts the "
                                     f"mapping at {m.addr:#x}+{m.size:#x}")
                inside.append(m)
                i += 1
            for m in inside:
                self._remove(m)
            return sum(m.size for m in inside)

    def unmap_all(self) -> None:
        """Remove every mapping."""
        with self._lock:
            for m in list(self._maps.values()):
                self._remove(m)

    def _remove(self, m: _Mapping) -> None:
        del self._maps[m.addr]
        self._starts.remove(m.addr)
        m.removed = True
        m.backend.close()

    def mappings(self) -> list[tuple[int, int]]:
        """(address, size) of every mapping, in address order."""
        with self._lock:
            return [(a, self._maps[a].size) for a in self._starts]

    def _find(self, addr: int, n: int) -> _Mapping:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            m = self._maps[self._starts[i]]
            if addr < m.addr + m.size:
                if n >= 0 and addr + n <= m.addr + m.size:
                    return m
                raise DmaFault(addr, n, partial=True)
        raise DmaFault(addr, n)

    def _pieces(self, addr: int, n: int, flag: int) -> list[tuple[_Mapping, int, int]]:
        """(mapping, offset in it, length) covering ``[addr, addr+n)`` with adjacent
        memory-backed mappings that all allow ``flag``; DmaFault at the first gap."""
        pieces = []
        pos, end = addr, addr + n
        while pos < end:
            try:
                m = self._find(pos, 0)
            except DmaFault:
                raise DmaFault(addr, n, partial=pos > addr) from None
            if not m.flags & flag or isinstance(m.backend, CallbackBackend):
                raise DmaFault(addr, n, partial=pos > addr)
            length = min(end, m.addr + m.size) - pos
            pieces.append((m, pos - m.addr, length))
            pos += length
        return pieces

    def view(self, bus_addr: int, n: int) -> memoryview | None:
        """The ``n`` bytes at ``bus_addr`` in place, for the device to copy from or to (one copy
        instead of two), or None where ``read``/``write`` must do it: a range not inside one
        fd-backed mapping that allows both directions. The view holds the mapping's memory, so
        an unmap while it is used only defers the munmap to its release."""
        with self._lock:
            try:
                m = self._find(bus_addr, n)
            except DmaFault:
                return None
            backend = m.backend
            if (m.flags & _READ_WRITE != _READ_WRITE or type(backend) is not MmapBackend
                    or n <= 0):
                return None
            off = bus_addr - m.addr
            return memoryview(backend.mm)[off:off + n]

    def read(self, bus_addr: int, n: int) -> bytes:
        """Copy of ``n`` bytes at ``bus_addr``; raises DmaFault."""
        with self._lock:
            try:
                m = self._find(bus_addr, n)
            except DmaFault as fault:
                if not fault.partial or n < 0:
                    raise
                return b"".join(p.backend.read(off, length) for p, off, length
                                in self._pieces(bus_addr, n, uapi.VFIO_DMA_MAP_FLAG_READ))
            if not m.flags & uapi.VFIO_DMA_MAP_FLAG_READ:
                raise DmaFault(bus_addr, n)
            if not isinstance(m.backend, CallbackBackend):
                return m.backend.read(bus_addr - m.addr, n)
            m.busy += 1
        try:
            return m.backend.read(bus_addr - m.addr, n)
        finally:
            with self._lock:
                m.busy -= 1

    def write(self, bus_addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``bus_addr``; raises DmaFault."""
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        with self._lock:
            try:
                m = self._find(bus_addr, n)
            except DmaFault as fault:
                if not fault.partial:
                    raise
                view = memoryview(data).cast("B")
                pos = 0
                for p, off, length in self._pieces(bus_addr, n, uapi.VFIO_DMA_MAP_FLAG_WRITE):
                    p.backend.write(off, view[pos:pos + length])
                    pos += length
                return
            if not m.flags & uapi.VFIO_DMA_MAP_FLAG_WRITE:
                raise DmaFault(bus_addr, n)
            if not isinstance(m.backend, CallbackBackend):
                m.backend.write(bus_addr - m.addr, data)
                return
            m.busy += 1
        try:
            m.backend.write(bus_addr - m.addr, data)
        finally:
            with self._lock:
                m.busy -= 1


# --- interrupts --------------------------------------------------------------------------------

def is_eventfd(fd: int) -> bool:
    """True when ``fd`` is an open eventfd."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


_ONE = struct.pack("=Q", 1)


class MsixEventfds:
    """Per-vector eventfds for MSI-X; ``fire(vector)`` adds 1 to the vector's counter."""

    def __init__(self, count: int = regs.MSIX_VECTORS):
        self.count = count
        self._lock = threading.Lock()
        self._fds: list[int | None] = [None] * count
        self.fired = [0] * count
        self.dropped = 0     # interrupts raised while no eventfd was assigned

    def fire(self, vector: int) -> None:
        """Signal ``vector`` (called from device threads)."""
        with self._lock:
            fd = self._fds[vector] if 0 <= vector < self.count else None
            if fd is None:
                self.dropped += 1
                return
            self.fired[vector] += 1
            try:
                os.write(fd, _ONE)
            except OSError:
                self.dropped += 1

    def assign(self, start: int, fds: list[int]) -> None:
        """Take ownership of ``fds`` for vectors ``start..``; -1 unassigns (the fd is closed)."""
        with self._lock:
            for i, fd in enumerate(fds):
                old = self._fds[start + i]
                self._fds[start + i] = None if fd < 0 else fd
                if old is not None:
                    os.close(old)

    def clear(self, start: int = 0, count: int | None = None) -> None:
        """Unassign (and close) the eventfds of ``count`` vectors from ``start`` (default all)."""
        n = self.count - start if count is None else count
        self.assign(start, [-1] * n)

    def assigned(self) -> list[int]:
        """Vectors that have an eventfd."""
        with self._lock:
            return [v for v, fd in enumerate(self._fds) if fd is not None]


# --- the function --------------------------------------------------------------------------------

@dataclass
class RegionInfo:
    """What DEVICE_GET_REGION_INFO reports for one region."""

    index: int
    size: int = 0
    flags: int = 0
    offset: int = 0                 #: mmap offset into ``fd`` (vfio-user) / device fd (VFIO)
    fd: int | None = None           #: file to mmap when FLAG_MMAP
    sparse: list[tuple[int, int]] = field(default_factory=list)

    def encode(self, argsz: int, *, kernel: bool = False) -> tuple[bytes, list[int]]:
        """The vfio_region_info reply for a request with ``argsz`` and the fds that go with it.

        ``argsz`` of the reply is always the size of the complete answer. When the request has
        room for it, the reply carries the capability chain (flag CAPS, cap_offset 32) and, for
        a mappable region, its fd. When it has not, the reply is the fixed 32 bytes without
        CAPS (cap_offset 0) and without the fd: the fd belongs to the complete reply, which the
        client asks for next with the argsz it learnt (as libvfio-user answers; QEMU rejects
        CAPS with cap_offset 0, libvfio-user's client has no room for an fd there). OSError
        EINVAL when ``argsz`` is below the fixed 32 bytes, as the kernel and libvfio-user do.
        ``kernel=True`` gives the Linux ioctl's answer instead: a short reply sets CAPS with
        cap_offset 0 (the fake kernel presents that).
        """
        base = ctypes.sizeof(uapi.vfio_region_info)
        if argsz < base:
            raise vfio_error(errno.EINVAL, f"REGION_INFO argsz {argsz} is below the {base} bytes "
                                           f"of the reply")
        caps = uapi.encode_sparse_mmap_cap(self.sparse) if self.sparse else b""
        needed = base + len(caps)
        complete = argsz >= needed
        with_caps = caps and (complete or kernel)
        flags = self.flags | (uapi.VFIO_REGION_INFO_FLAG_CAPS if with_caps else 0)
        info = uapi.vfio_region_info(needed, flags, self.index, base if caps and complete else 0,
                                     self.size, self.offset)
        fds = [self.fd] if complete and self.fd is not None else []
        return bytes(info) + (caps if complete else b""), fds


def bar4_size_for(program_slots: int, data_slots: int, program_slot_size: int,
                  data_slot_size: int) -> int:
    """BAR4 bytes of a device with this geometry (program slots from 0, then data slots at the
    next BAR4_ALIGN boundary), so the backing memfd can exist before the device does."""
    data_off = -(-(program_slots * program_slot_size) // BAR4_ALIGN) * BAR4_ALIGN
    return data_off + data_slots * data_slot_size


class VfioFunction:
    """One device model behind VFIO regions 0..8, IRQ indices 0..4 and a DMA space.

    By default the device is a HermesDevice with the Hermes BARs and identity. ``bars`` and
    ``identity`` (``pci.ConfigSpace`` arguments) present another model with the same interface
    (``bar_read``/``bar_write``, ``set_host_memory``, ``set_irq_handler``, ``reset``, ``close``,
    ``abort``), such as the NVMe controller (``create_nvme``).
    ``bar4_fd``/``bar4_fd_offset`` name the file that backs BAR4 (shared memory the client can
    mmap); the device is constructed with ``bar4=`` a mapping of it.
    """

    def __init__(self, device: HermesDevice | NvmeController, *, bar4_fd: int | None = None,
                 bar4_fd_offset: int = 0, bar4_map: mmap.mmap | None = None,
                 region_offsets: dict[int, int] | None = None,
                 bars: list[pci.BarSpec] | None = None, identity: dict | None = None):
        self.device = device
        self.bar4_fd = bar4_fd
        self._bar4_map = bar4_map
        if bars is None:
            bars = pci.hermes_bars(device.bar_size(regs.BAR_MEM))
        self.bars = {b.index: b for b in bars}
        identity = identity or {}
        self.config = pci.ConfigSpace(list(self.bars.values()), **identity)
        self.msix = MsixEventfds(identity.get("msix_vectors", regs.MSIX_VECTORS))
        #: Trapped BARs a server may access with plain register accesses: index -> size.
        self.register_bars = {i: b.size for i, b in self.bars.items() if i != regs.BAR_MEM}
        self.dma = DmaSpace()
        device.set_host_memory(self.dma)
        device.set_irq_handler(self.msix.fire)
        offs = region_offsets or {}
        self.regions: list[RegionInfo] = []
        for index in range(uapi.VFIO_PCI_NUM_REGIONS):
            info = RegionInfo(index, offset=offs.get(index, 0))
            rw = uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE
            if index in self.bars:
                info.size = self.bars[index].size
                info.flags = rw
            elif index == uapi.VFIO_PCI_CONFIG_REGION_INDEX:
                info.size = pci.CONFIG_SIZE
                info.flags = rw
            self.regions.append(info)
        bar4 = self.regions[regs.BAR_MEM]
        if bar4_fd is not None:
            # BAR4 is plain memory: the client maps it and accesses never trap. BAR0/BAR2 stay
            # trapped because their registers have side effects (doorbells, clear-on-read).
            bar4.flags |= uapi.VFIO_REGION_INFO_FLAG_MMAP
            bar4.fd = bar4_fd
            bar4.offset = bar4_fd_offset
            bar4.sparse = [(0, bar4.size)]
        # (a device without BAR4 has an empty one: its region is 0 bytes, never accessed)
        self._bar4: memoryview = device.bar4 if device.bar4 is not None else memoryview(b"")
        # The model's start of a command for a host that waits for it (HermesDevice.exec_inline);
        # none on other models.
        exec_inline = getattr(device, "exec_inline", None)
        #: BAR0 offset of each engine's EHCMDEXEC byte -> that engine, on a model with
        #: ``exec_inline`` (empty on others): an odd byte written there may go to
        #: ``start_inline`` rather than to ``bar_write``.
        self.exec_bytes: dict[int, int] = (
            {regs.cmdctrl(e) + regs.EHCMDEXEC: e for e in range(getattr(device, "engines", 0))}
            if exec_inline is not None else {})
        #: ``start_inline(engine)`` starts the engine's command as its EXEC write does, except
        #: that a short Run Program on a cached program (specs/device.md section 10) runs to
        #: completion, and raises its interrupt, before it returns rather than on the engine's
        #: worker thread (a C-level partial: no Python frame on the hot path). None on models
        #: without ``exec_inline``.
        self.start_inline: Callable[[int], object] | None = (
            partial(exec_inline, started=_not_told) if exec_inline is not None else None)

    @classmethod
    def create(cls, *, memfd_name: str = "hermes-bar4", **device_kwargs: Any) -> VfioFunction:
        """A new HermesDevice whose BAR4 lives in a fresh memfd (shareable with a client)."""
        size = bar4_size_for(device_kwargs.get("program_slots", 16),
                             device_kwargs.get("data_slots", 16),
                             device_kwargs.get("program_slot_size", 1 << 20),
                             device_kwargs.get("data_slot_size", 1 << 20))
        mapped = pci.pow2_at_least(size)
        fd = os.memfd_create(memfd_name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, mapped)
            mm = mmap.mmap(fd, mapped)
            device = HermesDevice(bar4=memoryview(mm)[:size], **device_kwargs)
        except BaseException:
            os.close(fd)
            raise
        return cls(device, bar4_fd=fd, bar4_map=mm)

    @classmethod
    def create_nvme(cls, **controller_kwargs: Any) -> VfioFunction:
        """A new NVMe CP/SLM controller (``NvmeController`` arguments) as a PCI function: BAR0
        only (registers, doorbells, MSI-X table), class 010802h."""
        device = NvmeController(**controller_kwargs)
        return cls(device, bars=[pci.BarSpec(0, pci.pow2_at_least(device.bar_size(0)), False,
                                             False)],
                   identity=PCI_IDENTITY)

    # --- info ----------------------------------------------------------------------------------
    def device_info(self) -> tuple[int, int, int]:
        """(flags, num_regions, num_irqs)."""
        return (uapi.VFIO_DEVICE_FLAGS_RESET | uapi.VFIO_DEVICE_FLAGS_PCI,
                uapi.VFIO_PCI_NUM_REGIONS, uapi.VFIO_PCI_NUM_IRQS)

    def region_info(self, index: int) -> RegionInfo:
        """The region's info; OSError EINVAL for an index past the last region."""
        if not 0 <= index < len(self.regions):
            raise vfio_error(errno.EINVAL, f"region index {index}")
        return self.regions[index]

    def irq_info(self, index: int) -> tuple[int, int]:
        """(flags, count) of IRQ index ``index``: only MSI-X has vectors."""
        if not 0 <= index < uapi.VFIO_PCI_NUM_IRQS:
            raise vfio_error(errno.EINVAL, f"IRQ index {index}")
        if index == uapi.VFIO_PCI_MSIX_IRQ_INDEX:
            return uapi.VFIO_IRQ_INFO_EVENTFD | uapi.VFIO_IRQ_INFO_NORESIZE, self.msix.count
        return uapi.VFIO_IRQ_INFO_EVENTFD, 0

    # --- region access -------------------------------------------------------------------------
    def _check(self, index: int, offset: int, count: int) -> RegionInfo:
        info = self.region_info(index)
        if info.size == 0:
            raise vfio_error(errno.EINVAL, f"region {index} is not implemented")
        if count < 0 or offset < 0 or offset + count > info.size:
            raise vfio_error(errno.EINVAL, f"access of {count} bytes at {offset:#x} is outside "
                                           f"region {index} ({info.size:#x} bytes)")
        return info

    @staticmethod
    def _pieces(bar: int, offset: int, count: int):
        """Split an access into register accesses: an aligned 1/2/4/8-byte access stays one
        access (8 on BAR0 only); anything longer becomes aligned 4-byte (or smaller) accesses."""
        if count in (1, 2, 4) or (count == 8 and bar != regs.BAR_DMA):
            if offset % count == 0:
                yield offset, count
                return
        widest = 4
        pos, end = offset, offset + count
        while pos < end:
            size = widest
            while size > 1 and (pos % size or pos + size > end):
                size >>= 1
            yield pos, size
            pos += size

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        """``count`` bytes of region ``index`` at ``offset``.

        An aligned 1/2/4/8-byte read of BAR0/BAR2 is exactly one device access (clear-on-read
        registers depend on it); longer reads are split into aligned register accesses.
        """
        self._check(index, offset, count)
        if index == uapi.VFIO_PCI_CONFIG_REGION_INDEX:
            return self.config.read(offset, count)
        if index == regs.BAR_MEM:
            end = min(offset + count, len(self._bar4))
            data = bytes(self._bar4[offset:end]) if offset < end else b""
            return data + bytes(count - len(data))
        return b"".join(self.device.bar_read(index, pos, size).to_bytes(size, "little")
                        for pos, size in self._pieces(index, offset, count))

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """Write ``data`` to region ``index`` at ``offset`` (split like ``region_read``)."""
        self._check(index, offset, len(data))
        if index == uapi.VFIO_PCI_CONFIG_REGION_INDEX:
            self.config.write(offset, data)
            return
        if index == regs.BAR_MEM:
            end = min(offset + len(data), len(self._bar4))
            if offset < end:
                self._bar4[offset:end] = data[:end - offset]
            return
        for pos, size in self._pieces(index, offset, len(data)):
            rel = pos - offset
            self.device.bar_write(index, pos, size, int.from_bytes(data[rel:rel + size], "little"))

    # --- interrupts ----------------------------------------------------------------------------
    def set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes = b"",
                 fds: list[int] | None = None) -> None:
        """VFIO_DEVICE_SET_IRQS semantics; takes ownership of ``fds`` (closed on error).

        MSI-X supports ACTION_TRIGGER with DATA_NONE (count 0: disable; else fire), DATA_BOOL
        (fire where true) and DATA_EVENTFD (assign; no fds: unassign). Other indices have no
        vectors, so only the disable form is accepted. Eventfds are checked to be eventfds.
        """
        fds = list(fds or [])
        try:
            self._set_irqs(flags, index, start, count, data, fds)
        except BaseException:
            close_fds(fds)
            raise

    def _set_irqs(self, flags: int, index: int, start: int, count: int, data: bytes,
                  fds: list[int]) -> None:
        dtype = flags & uapi.VFIO_IRQ_SET_DATA_TYPE_MASK
        action = flags & uapi.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if flags & ~(uapi.VFIO_IRQ_SET_DATA_TYPE_MASK | uapi.VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise vfio_error(errno.EINVAL, f"unknown SET_IRQS flags {flags:#x}")
        if bin(dtype).count("1") != 1 or bin(action).count("1") != 1:
            raise vfio_error(errno.EINVAL,
                             f"SET_IRQS flags {flags:#x} need one data type and one action")
        _, nvec = self.irq_info(index)
        if start + count > nvec or start < 0 or count < 0:
            if not (count == 0 and dtype == uapi.VFIO_IRQ_SET_DATA_NONE):
                raise vfio_error(errno.EINVAL, f"vectors {start}..{start + count} of IRQ index "
                                               f"{index} (it has {nvec})")
        if action != uapi.VFIO_IRQ_SET_ACTION_TRIGGER:
            raise vfio_error(errno.EINVAL, "MSI-X vectors cannot be masked through SET_IRQS")
        if dtype != uapi.VFIO_IRQ_SET_DATA_EVENTFD and fds:
            raise vfio_error(errno.EINVAL, "fds sent with a SET_IRQS that takes none")
        if index != uapi.VFIO_PCI_MSIX_IRQ_INDEX:
            return   # count == 0 disable of an index with no vectors: nothing to do
        if dtype == uapi.VFIO_IRQ_SET_DATA_NONE:
            if count == 0:
                self.msix.clear()
                self._set_msix_enable(False)
            else:
                for v in range(start, start + count):
                    self.msix.fire(v)
        elif dtype == uapi.VFIO_IRQ_SET_DATA_BOOL:
            if len(data) < count:
                raise vfio_error(errno.EINVAL, f"SET_IRQS DATA_BOOL needs {count} bytes")
            for i in range(count):
                if data[i]:
                    self.msix.fire(start + i)
        else:
            if fds and len(fds) != count:
                raise vfio_error(errno.EINVAL,
                                 f"SET_IRQS carries {len(fds)} fds for {count} vectors")
            for fd in fds:
                if fd >= 0 and not is_eventfd(fd):
                    raise vfio_error(errno.EINVAL, f"fd {fd} is not an eventfd")
            if fds:
                self.msix.assign(start, fds)
                fds.clear()   # owned by the table now
                self._set_msix_enable(True)
            else:
                self.msix.clear(start, count)

    def _set_msix_enable(self, on: bool) -> None:
        ctrl = self.config.msix_control
        ctrl = (ctrl | pci.PCI_MSIX_FLAGS_ENABLE) if on else (ctrl & ~pci.PCI_MSIX_FLAGS_ENABLE)
        self.config.write(pci.MSIX_CAP_OFFSET + 2, struct.pack("<H", ctrl))

    # --- lifecycle -----------------------------------------------------------------------------
    def reset(self) -> None:
        """DEVICE_RESET: the device forgets slots, commands and DMA; config space is kept."""
        self.device.reset()

    def detach_client(self) -> None:
        """Forget the user's memory and eventfds (quick; the device is left as it is)."""
        self.msix.clear()
        self.dma.unmap_all()

    def disconnect(self) -> None:
        """The user went away: unmap all DMA, drop eventfds, reset device and config space.

        The device reset waits for commands in flight (a runaway program until its budget)."""
        self.detach_client()
        self.device.reset()
        self.config.reset()

    def close(self) -> None:
        """Close the device (stopping programs still running: nobody is left to wait for them)
        and the files backing it."""
        self.msix.clear()
        self.device.close(abort=True)
        self.dma.unmap_all()
        self._bar4 = memoryview(b"")
        if self._bar4_map is not None:
            try:
                self._bar4_map.close()
            except BufferError:
                pass
        if self.bar4_fd is not None:
            os.close(self.bar4_fd)
            self.bar4_fd = None

"""VFIO transport: a real Hermes device bound to vfio-pci, driven from user space.

Legacy container/group API: the group comes from the device's sysfs ``iommu_group`` link; the
container gets a type-1 IOMMU; BARs are mmapped where VFIO allows it and reached with exact-width
pread/pwrite on the device fd elsewhere (the MSI-X page of BAR2, non-mappable BARs, config space);
DMA buffers are anonymous mmaps pinned with IOMMU_MAP_DMA; MSI-X vectors are eventfds. The
kernel boundary (``ioctl``, ``pread``, ``pwrite``, and the sysfs/dev roots) is injectable so the
whole path runs against ``tests/support/fake_kernel.py`` on machines without /dev/vfio.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select
import struct
import threading
from collections.abc import Callable

from .. import regs
from ..vfio import mmio, uapi
from .base import DmaBuffer, MappedDmaBuffer
from .pci import DMA_BASE, PAGE, PciTransport, map_region, mappable_areas, take_one


class VfioError(OSError):
    """A VFIO set-up step failed (message says which and what to check)."""


def _ioctl_int(ioctl: Callable, fd: int, request: int, arg: int = 0) -> int:
    return ioctl(fd, request, arg)


def _ioctl_buf(ioctl: Callable, fd: int, request: int, buf: bytearray) -> int:
    return ioctl(fd, request, buf, True)


class VfioDmaBuffer(MappedDmaBuffer):
    """Anonymous memory pinned and mapped at ``bus_addr`` (an IOVA) by IOMMU_MAP_DMA."""


class _Region:
    """One region of the device fd: info plus the mmapped areas of it."""

    def __init__(self, info: uapi.vfio_region_info):
        self.info = info
        self.areas: list[tuple[int, int, mmap.mmap]] = []   # (offset in region, size, mapping)

    def area(self, offset: int, size: int) -> tuple[mmap.mmap, int] | None:
        """(mapping, offset in it) when the access lies inside one mapped area, else None."""
        for start, length, mm in self.areas:
            if start <= offset and offset + size <= start + length:
                return mm, offset - start
        return None


class VfioTransport(PciTransport):
    """Transport to a Hermes function at PCI address ``bdf`` bound to vfio-pci."""

    def __init__(self, bdf: str, *, sysfs_root: str = "/sys", dev_root: str = "/dev/vfio",
                 ioctl: Callable = fcntl.ioctl, pread: Callable = os.pread,
                 pwrite: Callable = os.pwrite, iommu_type: int | None = None):
        super().__init__()
        self.bdf = bdf
        self._ioctl = ioctl
        self._pread = pread
        self._pwrite = pwrite
        self._lock = threading.Lock()
        self._closed = False
        self.container = self.group = self.device = -1
        self._regions: dict[int, _Region] = {}
        self._buffers: dict[int, VfioDmaBuffer] = {}
        try:
            self._open(sysfs_root, dev_root, iommu_type)
        except BaseException:
            self.close()
            raise

    # --- set-up --------------------------------------------------------------------------------
    def _open(self, sysfs_root: str, dev_root: str, iommu_type: int | None) -> None:
        link = os.path.join(sysfs_root, "bus", "pci", "devices", self.bdf, "iommu_group")
        try:
            group = os.path.basename(os.readlink(link))
        except OSError as exc:
            raise VfioError(exc.errno or errno.ENODEV,
                            f"{self.bdf}: no IOMMU group ({link}); is the IOMMU on and the "
                            f"device present?") from None
        io = self._ioctl
        try:
            self.container = os.open(os.path.join(dev_root, "vfio"), os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise VfioError(exc.errno or errno.ENODEV, f"cannot open {dev_root}/vfio: "
                            f"{exc.strerror} (is the vfio module loaded?)") from None
        version = _ioctl_int(io, self.container, uapi.VFIO_GET_API_VERSION)
        if version != uapi.VFIO_API_VERSION:
            raise VfioError(errno.EINVAL, f"unknown VFIO API version {version}")
        if iommu_type is None:
            for candidate in (uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_TYPE1_IOMMU):
                if _ioctl_int(io, self.container, uapi.VFIO_CHECK_EXTENSION, candidate) > 0:
                    iommu_type = candidate
                    break
            else:
                raise VfioError(errno.ENOTSUP, "the VFIO container supports no type-1 IOMMU")
        try:
            self.group = os.open(os.path.join(dev_root, group), os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise VfioError(exc.errno or errno.ENODEV, f"cannot open {dev_root}/{group}: "
                            f"{exc.strerror} (is {self.bdf} bound to vfio-pci?)") from None
        status = bytearray(uapi.vfio_group_status(8, 0))
        _ioctl_buf(io, self.group, uapi.VFIO_GROUP_GET_STATUS, status)
        if not uapi.vfio_group_status.decode(status).flags & uapi.VFIO_GROUP_FLAGS_VIABLE:
            raise VfioError(errno.EBUSY, f"IOMMU group {group} is not viable: bind every device "
                            f"in it to vfio-pci (or leave it without a driver)")
        _ioctl_buf(io, self.group, uapi.VFIO_GROUP_SET_CONTAINER,
                   bytearray(struct.pack("i", self.container)))
        _ioctl_int(io, self.container, uapi.VFIO_SET_IOMMU, iommu_type)
        self.iommu_type = iommu_type
        self._choose_iova_base()
        self.device = _ioctl_buf(io, self.group, uapi.VFIO_GROUP_GET_DEVICE_FD,
                                 bytearray(self.bdf.encode() + b"\0"))

        info = bytearray(uapi.vfio_device_info(ctypes.sizeof(uapi.vfio_device_info), 0, 0, 0, 0))
        _ioctl_buf(io, self.device, uapi.VFIO_DEVICE_GET_INFO, info)
        dinfo = uapi.vfio_device_info.decode(info)
        self.device_flags = dinfo.flags
        if (not dinfo.flags & uapi.VFIO_DEVICE_FLAGS_PCI
                or dinfo.num_regions <= uapi.VFIO_PCI_CONFIG_REGION_INDEX):
            raise VfioError(errno.ENODEV, f"{self.bdf} is not a PCI device")
        for index in (regs.BAR_REGS, regs.BAR_DMA, regs.BAR_MEM, uapi.VFIO_PCI_CONFIG_REGION_INDEX):
            self._regions[index] = self._region(index)
        vendor, device = self._identity()
        if (vendor, device) != (regs.PCI_VENDOR_ID, regs.PCI_DEVICE_ID):
            raise VfioError(errno.ENODEV,
                            f"{self.bdf} is {vendor:04x}:{device:04x}, not a Hermes device")
        self._enable()

        irq = bytearray(uapi.vfio_irq_info(16, 0, uapi.VFIO_PCI_MSIX_IRQ_INDEX, 0))
        _ioctl_buf(io, self.device, uapi.VFIO_DEVICE_GET_IRQ_INFO, irq)
        self.num_vectors = uapi.vfio_irq_info.decode(irq).count
        if self.num_vectors:
            self._open_eventfds(self.num_vectors)
            _ioctl_buf(io, self.device, uapi.VFIO_DEVICE_SET_IRQS,
                       bytearray(uapi.irq_set_fds(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 0, self._eventfds)))
        self._pollers = []
        for fd in self._eventfds:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            self._pollers.append(poller)

    def _choose_iova_base(self) -> None:
        """Start IOVAs inside the IOMMU's usable range when it reports one."""
        buf = bytearray(256)
        struct.pack_into("<I", buf, 0, len(buf))
        try:
            _ioctl_buf(self._ioctl, self.container, uapi.VFIO_IOMMU_GET_INFO, buf)
        except OSError:
            return
        info = uapi.vfio_iommu_type1_info.decode(buf)
        if not info.flags & uapi.VFIO_IOMMU_INFO_CAPS or not info.cap_offset:
            return
        caps = uapi.parse_caps(bytes(buf[:max(info.argsz, 24)]), info.cap_offset)
        cap = caps.get(uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)
        if cap is None:
            return
        ranges = uapi.parse_iova_ranges(cap[1])
        if any(lo <= DMA_BASE <= hi for lo, hi in ranges):
            return
        for lo, hi in ranges:
            start = max(-(-lo // PAGE) * PAGE, PAGE)
            if hi - start >= 1 << 30:
                self._next_bus = start
                return

    def _region(self, index: int) -> _Region:
        argsz = 32 + 256
        while True:
            buf = bytearray(argsz)
            struct.pack_into("<II I", buf, 0, argsz, 0, index)
            _ioctl_buf(self._ioctl, self.device, uapi.VFIO_DEVICE_GET_REGION_INFO, buf)
            info = uapi.vfio_region_info.decode(buf)
            if info.argsz <= argsz or info.argsz > 1 << 16:
                break
            argsz = info.argsz
        region = _Region(info)
        for off, size in mappable_areas(info, bytes(buf[:info.argsz])):
            if size and off % PAGE == 0:
                region.areas.append((off, size, map_region(self.device, info.offset + off, size)))
        return region

    def _bar_size(self, bar: int) -> int:
        region = self._regions.get(bar)
        return region.info.size if region is not None else 0

    def _config_bytes(self, offset: int, size: int) -> bytes:
        info = self._regions[uapi.VFIO_PCI_CONFIG_REGION_INDEX].info
        data = self._pread(self.device, size, info.offset + offset)
        if len(data) != size:
            raise VfioError(errno.EIO, f"short config read at {offset:#x}")
        return data

    def _config_put(self, offset: int, data: bytes) -> None:
        info = self._regions[uapi.VFIO_PCI_CONFIG_REGION_INDEX].info
        if self._pwrite(self.device, data, info.offset + offset) != len(data):
            raise VfioError(errno.EIO, f"short config write at {offset:#x}")

    # --- Transport -----------------------------------------------------------------------------
    def _locate(self, bar: int, offset: int, size: int) -> tuple[_Region, tuple | None]:
        self._check(bar, offset, size)
        region = self._regions[bar]
        return region, region.area(offset, size)

    def read(self, bar: int, offset: int, size: int) -> int:
        """One ``size``-byte read: a load from the mapping, or a pread of exactly ``size`` bytes."""
        region, hit = self._locate(bar, offset, size)
        if hit is not None:
            return mmio.load(hit[0], hit[1], size)
        data = self._pread(self.device, size, region.info.offset + offset)
        if len(data) != size:
            raise OSError(errno.EIO, f"short read of BAR{bar} at {offset:#x}")
        return int.from_bytes(data, "little")

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        """One ``size``-byte write: a store into the mapping, or a pwrite of exactly ``size``."""
        region, hit = self._locate(bar, offset, size)
        value &= (1 << (8 * size)) - 1
        if hit is not None:
            mmio.store(hit[0], hit[1], size, value)
            return
        raw = value.to_bytes(size, "little")
        if self._pwrite(self.device, raw, region.info.offset + offset) != size:
            raise OSError(errno.EIO, f"short write of BAR{bar} at {offset:#x}")

    def map_bar(self, bar: int) -> memoryview | None:
        """A BAR's mapping when the whole BAR is mmappable (BAR4 on real hardware), else None."""
        region = self._regions.get(bar)
        if region is None or len(region.areas) != 1:
            return None
        start, size, mm = region.areas[0]
        if start != 0 or size != region.info.size:
            return None
        return memoryview(mm)

    def dma_alloc(self, size: int) -> DmaBuffer:
        """Page-aligned anonymous memory, pinned and mapped for the device by IOMMU_MAP_DMA."""
        if size <= 0:
            raise ValueError("DMA buffer size must be positive")
        with self._lock:
            if self._closed:
                raise RuntimeError("transport is closed")
        iova, mapped = self._bus_range(size)
        mm = mmap.mmap(-1, mapped, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       mmap.PROT_READ | mmap.PROT_WRITE)
        anchor = ctypes.c_char.from_buffer(mm)
        vaddr = ctypes.addressof(anchor)
        del anchor
        read_write = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE
        req = uapi.vfio_iommu_type1_dma_map(32, read_write, vaddr, iova, mapped)
        try:
            _ioctl_buf(self._ioctl, self.container, uapi.VFIO_IOMMU_MAP_DMA, bytearray(req))
        except OSError as exc:
            mm.close()
            if exc.errno in (errno.ENOMEM, errno.EPERM):
                raise VfioError(exc.errno, f"IOMMU_MAP_DMA of {mapped} bytes failed: "
                                f"{exc.strerror} (raise `ulimit -l` or run as root)") from None
            raise
        buf = VfioDmaBuffer(self, iova, size, mapped, mm)
        with self._lock:
            self._buffers[iova] = buf
        return buf

    def _unmap(self, buf: VfioDmaBuffer) -> None:
        with self._lock:
            if self._buffers.pop(buf.bus_addr, None) is None or self.container < 0:
                return
        req = uapi.vfio_iommu_type1_dma_unmap(24, 0, buf.bus_addr, buf.mapped)
        _ioctl_buf(self._ioctl, self.container, uapi.VFIO_IOMMU_UNMAP_DMA, bytearray(req))

    def irq_wait(self, vector: int, timeout: float | None) -> bool:
        """Wait for and consume one interrupt of ``vector`` (semaphore eventfd)."""
        fd = self._eventfd(vector)
        if take_one(fd):
            return True
        if timeout is not None and timeout <= 0:
            return False
        if not self._pollers[vector].poll(None if timeout is None else timeout * 1000):
            return False
        return take_one(fd)

    def reset(self) -> None:
        """VFIO_DEVICE_RESET (function-level reset), when the device supports it."""
        if not self.device_flags & uapi.VFIO_DEVICE_FLAGS_RESET:
            raise NotImplementedError(f"{self.bdf} does not support reset")
        _ioctl_int(self._ioctl, self.device, uapi.VFIO_DEVICE_RESET)
        for v in range(len(self._eventfds)):
            self.irq_clear(v)

    def close(self) -> None:
        """Unmap DMA, disable MSI-X, unmap BARs and close the fds. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bufs = list(self._buffers.values())
        for buf in bufs:
            try:
                buf.free()
            except OSError:
                pass
        if self.device >= 0 and self._eventfds:
            try:
                none_trigger = uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
                off = bytes(uapi.vfio_irq_set(20, none_trigger, uapi.VFIO_PCI_MSIX_IRQ_INDEX, 0, 0))
                _ioctl_buf(self._ioctl, self.device, uapi.VFIO_DEVICE_SET_IRQS, bytearray(off))
            except OSError:
                pass
        self._release([mm for region in self._regions.values() for _, _, mm in region.areas])
        self._regions.clear()
        for name in ("device", "group", "container"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)

    def __repr__(self) -> str:
        return f"VfioTransport({self.bdf!r})"

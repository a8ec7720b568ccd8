"""A fake Linux VFIO kernel interface over a real HermesDevice, for testing the VFIO transport.

It implements the ioctls (same numbers and struct layouts as ``hermes.vfio.uapi``), pread/pwrite
of the device fd and the sysfs/dev files the transport looks at, so ``VfioTransport`` runs
unchanged on machines without /dev/vfio. The "device fd" is a dup of a sparse memfd whose BAR4
window backs the device's BAR4 (so mmap of it behaves as on vfio-pci); every other region access
goes through the VfioFunction (BAR0/BAR2 registers trap, config space is emulated). The "IOMMU"
maps IOVAs to this process's virtual addresses, which is what MAP_DMA pins on real hardware.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import threading
from pathlib import Path

from hermes import regs
from hermes.device import HermesDevice
from hermes.server.function import PointerBackend, VfioFunction, bar4_size_for, vfio_error
from hermes.vfio import pci, uapi

#: Region ``i`` of the device fd starts at ``i << REGION_SHIFT`` (vfio-pci uses 40; the memfd
#: is sparse so the exact value only matters for the transport, which must not assume it).
REGION_SHIFT = 32


class FakeVfioKernel:
    """Files under ``root`` (sys/..., dev/vfio/...) plus ``ioctl``/``pread``/``pwrite`` callables.

    Pass ``sysfs_root=kernel.sysfs_root, dev_root=kernel.dev_root, ioctl=kernel.ioctl,
    pread=kernel.pread, pwrite=kernel.pwrite`` to ``VfioTransport``. ``viable=False`` makes the
    group non-viable; ``msix_mappable_bar2=True`` reports BAR2 as mmappable except its MSI-X page
    (the sparse-mmap layout vfio-pci uses), with the mapped part plain memory (for routing tests).
    """

    def __init__(self, root: str | os.PathLike, bdf: str = "0000:3b:00.0", group: int = 42, *,
                 viable: bool = True, sparse_bar2: bool = False,
                 iova_ranges: list[tuple[int, int]] | None = None, **device_kwargs):
        self.root = Path(root)
        self.bdf = bdf
        self.group_id = group
        self.viable = viable
        self.iova_ranges = iova_ranges or [(0, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 48) - 1)]
        self.sysfs_root = str(self.root / "sys")
        self.dev_root = str(self.root / "dev" / "vfio")
        self._make_files()
        size = bar4_size_for(device_kwargs.get("program_slots", 16),
                             device_kwargs.get("data_slots", 16),
                             device_kwargs.get("program_slot_size", 1 << 20),
                             device_kwargs.get("data_slot_size", 1 << 20))
        self._memfd = os.memfd_create("fake-vfio-device", os.MFD_CLOEXEC)
        bar4_off = regs.BAR_MEM << REGION_SHIFT
        bar4_len = pci.pow2_at_least(size)   # a BAR's size is a power of two
        os.ftruncate(self._memfd, (uapi.VFIO_PCI_NUM_REGIONS + 1) << REGION_SHIFT)
        self._bar4_map = mmap.mmap(self._memfd, bar4_len, offset=bar4_off)
        device = HermesDevice(bar4=memoryview(self._bar4_map)[:size], **device_kwargs)
        self.function = VfioFunction(device, bar4_fd=self._memfd, bar4_fd_offset=bar4_off,
                                     bar4_map=self._bar4_map,
                                     region_offsets={i: i << REGION_SHIFT
                                                     for i in range(uapi.VFIO_PCI_NUM_REGIONS)})
        self.function.regions[regs.BAR_MEM].sparse = []   # vfio-pci: whole BAR, no sparse cap
        if sparse_bar2:
            bar2 = self.function.regions[regs.BAR_DMA]
            bar2.flags |= uapi.VFIO_REGION_INFO_FLAG_MMAP
            page = regs.MSIX_TABLE_OFFSET & ~(mmap.PAGESIZE - 1)
            bar2.sparse = [(0, page), (page + mmap.PAGESIZE, bar2.size - page - mmap.PAGESIZE)]
        self._ino = {}
        self._lock = threading.Lock()
        self.container_iommu: int | None = None
        self.group_container = False
        self.calls: list[int] = []      # every ioctl request number, in order (for tests)
        self.dma_maps: dict[int, int] = {}

    def _make_files(self) -> None:
        dev = Path(self.dev_root)
        dev.mkdir(parents=True, exist_ok=True)
        (dev / "vfio").touch()
        (dev / str(self.group_id)).touch()
        groups = Path(self.sysfs_root) / "kernel" / "iommu_groups" / str(self.group_id)
        groups.mkdir(parents=True, exist_ok=True)
        devdir = Path(self.sysfs_root) / "bus" / "pci" / "devices" / self.bdf
        devdir.mkdir(parents=True, exist_ok=True)
        link = devdir / "iommu_group"
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(groups, devdir))

    # --- fd classification ---------------------------------------------------------------------
    def _kind(self, fd: int) -> str:
        st = os.fstat(fd)
        if st.st_ino == os.fstat(self._memfd).st_ino and st.st_dev == os.fstat(self._memfd).st_dev:
            return "device"
        dev = Path(self.dev_root)
        for name, kind in (("vfio", "container"), (str(self.group_id), "group")):
            ref = os.stat(dev / name)
            if (st.st_ino, st.st_dev) == (ref.st_ino, ref.st_dev):
                return kind
        raise OSError(errno.ENOTTY, "not a VFIO fd")

    # --- the kernel boundary -------------------------------------------------------------------
    def ioctl(self, fd: int, request: int, arg: int | bytes | bytearray = 0,
              mutate_flag: bool = True) -> int | bytes:
        """``fcntl.ioctl`` look-alike: int args return an int; a bytearray is updated in place
        (return value = the ioctl's result); bytes return the updated copy."""
        with self._lock:
            self.calls.append(request)
            kind = self._kind(fd)
            if isinstance(arg, int):
                return getattr(self, f"_{kind}_ioctl")(request, arg, None)
            buf = bytearray(arg)
            result = getattr(self, f"_{kind}_ioctl")(request, 0, buf)
            if isinstance(arg, bytearray) and mutate_flag:
                arg[:] = buf
                return result
            return bytes(buf)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        """Read of the device fd: region ``offset >> REGION_SHIFT``."""
        if self._kind(fd) != "device":
            return os.pread(fd, n, offset)
        index, off = offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1)
        return self.function.region_read(index, off, n)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Write of the device fd."""
        if self._kind(fd) != "device":
            return os.pwrite(fd, data, offset)
        index, off = offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1)
        self.function.region_write(index, off, bytes(data))
        return len(data)

    # --- container -----------------------------------------------------------------------------
    def _container_ioctl(self, request: int, arg: int, buf: bytearray | None) -> int:
        if request == uapi.VFIO_GET_API_VERSION:
            return uapi.VFIO_API_VERSION
        if request == uapi.VFIO_CHECK_EXTENSION:
            return 1 if arg in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU) else 0
        if request == uapi.VFIO_SET_IOMMU:
            if not self.group_container:
                raise vfio_error(errno.EINVAL, "SET_IOMMU before a group joined the container")
            if arg not in (uapi.VFIO_TYPE1_IOMMU, uapi.VFIO_TYPE1v2_IOMMU):
                raise vfio_error(errno.EINVAL, f"IOMMU type {arg}")
            self.container_iommu = arg
            return 0
        if self.container_iommu is None:
            raise vfio_error(errno.EINVAL, "IOMMU ioctl before SET_IOMMU")
        if request == uapi.VFIO_IOMMU_GET_INFO:
            assert buf is not None
            argsz = struct.unpack_from("<I", buf)[0]
            base = ctypes.sizeof(uapi.vfio_iommu_type1_info)
            cap = uapi.encode_iova_range_cap(self.iova_ranges)
            needed = base + len(cap)
            fits = argsz >= needed
            info = uapi.vfio_iommu_type1_info(needed, uapi.VFIO_IOMMU_INFO_PGSIZES
                                              | (uapi.VFIO_IOMMU_INFO_CAPS if fits else 0),
                                              mmap.PAGESIZE, base if fits else 0, 0)
            out = bytes(info) + (cap if fits else b"")
            buf[:min(len(buf), len(out))] = out[:len(buf)]
            return 0
        if request == uapi.VFIO_IOMMU_MAP_DMA:
            assert buf is not None
            req = uapi.vfio_iommu_type1_dma_map.decode(buf)
            if (req.argsz < 32 or req.size == 0 or req.size % mmap.PAGESIZE
                    or req.iova % mmap.PAGESIZE or req.vaddr % mmap.PAGESIZE):
                raise vfio_error(errno.EINVAL, "MAP_DMA arguments")
            last = req.iova + req.size - 1
            if not any(lo <= req.iova and last <= hi for lo, hi in self.iova_ranges):
                raise vfio_error(errno.EINVAL, f"IOVA {req.iova:#x} outside the usable ranges")
            self.function.dma.map(req.iova, req.size, req.flags & 3, PointerBackend(req.vaddr))
            self.dma_maps[req.iova] = req.size
            return 0
        if request == uapi.VFIO_IOMMU_UNMAP_DMA:
            assert buf is not None
            req = uapi.vfio_iommu_type1_dma_unmap.decode(buf)
            self.function.dma.unmap(req.iova, req.size)
            del self.dma_maps[req.iova]
            return 0
        raise vfio_error(errno.ENOTTY, f"container ioctl {request:#x}")

    # --- group ---------------------------------------------------------------------------------
    def _group_ioctl(self, request: int, arg: int, buf: bytearray | None) -> int:
        if request == uapi.VFIO_GROUP_GET_STATUS:
            assert buf is not None
            flags = (uapi.VFIO_GROUP_FLAGS_VIABLE if self.viable else 0) | \
                    (uapi.VFIO_GROUP_FLAGS_CONTAINER_SET if self.group_container else 0)
            buf[:8] = bytes(uapi.vfio_group_status(8, flags))
            return 0
        if request == uapi.VFIO_GROUP_SET_CONTAINER:
            assert buf is not None
            cfd = struct.unpack_from("i", buf)[0]
            if self._kind(cfd) != "container":
                raise vfio_error(errno.EBADF, "SET_CONTAINER needs a container fd")
            if not self.viable:
                raise vfio_error(errno.EPERM, "group not viable")
            self.group_container = True
            return 0
        if request == uapi.VFIO_GROUP_GET_DEVICE_FD:
            assert buf is not None
            name = bytes(buf).split(b"\0")[0].decode()
            if self.container_iommu is None:
                raise vfio_error(errno.EINVAL, "GET_DEVICE_FD before SET_IOMMU")
            if name != self.bdf:
                raise vfio_error(errno.ENODEV, f"no device {name} in the group")
            return os.dup(self._memfd)
        raise vfio_error(errno.ENOTTY, f"group ioctl {request:#x}")

    # --- device --------------------------------------------------------------------------------
    def _device_ioctl(self, request: int, arg: int, buf: bytearray | None) -> int:
        fn = self.function
        if request == uapi.VFIO_DEVICE_RESET:
            fn.reset()
            return 0
        assert buf is not None
        if request == uapi.VFIO_DEVICE_GET_INFO:
            flags, nreg, nirq = fn.device_info()
            buf[:20] = bytes(uapi.vfio_device_info(20, flags, nreg, nirq, 0))
            return 0
        if request == uapi.VFIO_DEVICE_GET_REGION_INFO:
            req = uapi.vfio_region_info.decode(buf)
            out, _ = fn.region_info(req.index).encode(req.argsz, kernel=True)
            buf[:len(out)] = out
            return 0
        if request == uapi.VFIO_DEVICE_GET_IRQ_INFO:
            req = uapi.vfio_irq_info.decode(buf)
            flags, count = fn.irq_info(req.index)
            buf[:16] = bytes(uapi.vfio_irq_info(16, flags, req.index, count))
            return 0
        if request == uapi.VFIO_DEVICE_SET_IRQS:
            req = uapi.vfio_irq_set.decode(buf)
            data = bytes(buf[20:req.argsz])
            fds = None
            if req.flags & uapi.VFIO_IRQ_SET_DATA_EVENTFD:
                if len(data) < 4 * req.count:
                    raise vfio_error(errno.EINVAL, "SET_IRQS argsz too small for its fds")
                # The kernel takes its own reference to each eventfd: dup them.
                fds = [os.dup(fd) if fd >= 0 else -1
                       for fd in struct.unpack_from(f"<{req.count}i", data)]
            fn.set_irqs(req.flags, req.index, req.start, req.count, data, fds)
            return 0
        raise vfio_error(errno.ENOTTY, f"device ioctl {request:#x}")

    def close(self) -> None:
        """Close the device and its backing memory."""
        self.function.close()
        try:
            os.close(self._memfd)
        except OSError:
            pass

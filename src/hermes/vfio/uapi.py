"""Linux VFIO UAPI numbers and struct layouts, shared by the vfio-user protocol and VFIO transport.

vfio-user reuses the kernel's region/IRQ indices, flag values and most struct layouts, so both
transports (and the server and the fake kernel used in tests) take them from here. Values are those
of linux/vfio.h (6.1); the structs are ``ctypes.Structure`` with native alignment, which is the
kernel ABI on the little-endian 64-bit hosts this project supports.
"""
from __future__ import annotations

import ctypes
import struct
from typing import TypeVar

# --- ioctl numbers: _IO(VFIO_TYPE, VFIO_BASE + n); _IO encodes neither size nor direction -------
VFIO_TYPE = ord(";")
VFIO_BASE = 100


def _io(n: int) -> int:
    return (VFIO_TYPE << 8) | (VFIO_BASE + n)


VFIO_GET_API_VERSION = _io(0)          #: 0x3B64, returns VFIO_API_VERSION
VFIO_CHECK_EXTENSION = _io(1)          #: 0x3B65
VFIO_SET_IOMMU = _io(2)                #: 0x3B66
VFIO_GROUP_GET_STATUS = _io(3)         #: 0x3B67
VFIO_GROUP_SET_CONTAINER = _io(4)      #: 0x3B68
VFIO_GROUP_UNSET_CONTAINER = _io(5)    #: 0x3B69
VFIO_GROUP_GET_DEVICE_FD = _io(6)      #: 0x3B6A
VFIO_DEVICE_GET_INFO = _io(7)          #: 0x3B6B
VFIO_DEVICE_GET_REGION_INFO = _io(8)   #: 0x3B6C
VFIO_DEVICE_GET_IRQ_INFO = _io(9)      #: 0x3B6D
VFIO_DEVICE_SET_IRQS = _io(10)         #: 0x3B6E
VFIO_DEVICE_RESET = _io(11)            #: 0x3B6F
VFIO_IOMMU_GET_INFO = _io(12)          #: 0x3B70
VFIO_IOMMU_MAP_DMA = _io(13)           #: 0x3B71
VFIO_IOMMU_UNMAP_DMA = _io(14)         #: 0x3B72

VFIO_API_VERSION = 0
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_NOIOMMU_IOMMU = 8

# group status flags
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

# device info flags
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

# region info flags and capability ids
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3

# PCI region indices
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

# PCI IRQ indices
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

# irq info flags
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

# irq set flags
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = 0x7
VFIO_IRQ_SET_ACTION_TYPE_MASK = 0x38

# DMA map / unmap flags
VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1

# IOMMU info capability
VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1


#: A subclass of ``_Struct``: what its ``decode`` returns.
S = TypeVar("S", bound="_Struct")


class _Struct(ctypes.Structure):
    """A kernel struct: encodes with ``bytes(s)``, decodes with ``cls.decode(buf)``."""

    @classmethod
    def decode(cls: type[S], buf: bytes | bytearray | memoryview, offset: int = 0) -> S:
        """Decode from ``buf`` at ``offset``; ValueError if too short."""
        size = ctypes.sizeof(cls)
        if len(buf) - offset < size:
            raise ValueError(f"{cls.__name__} needs {size} bytes, got {len(buf) - offset}")
        return cls.from_buffer_copy(bytes(buf[offset:offset + size]))

    def encode(self) -> bytes:
        """The struct's bytes."""
        return bytes(self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name):#x}" for name, *_ in self._fields_)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and bytes(self) == bytes(other)


_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_u16 = ctypes.c_uint16


class vfio_group_status(_Struct):
    """VFIO_GROUP_GET_STATUS argument (8 bytes)."""

    _fields_ = [("argsz", _u32), ("flags", _u32)]


class vfio_device_info(_Struct):
    """VFIO_DEVICE_GET_INFO argument (20 bytes; vfio-user's is the first 16)."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("num_regions", _u32), ("num_irqs", _u32),
                ("cap_offset", _u32)]


class vfio_region_info(_Struct):
    """VFIO_DEVICE_GET_REGION_INFO argument (32 bytes, capabilities follow when FLAG_CAPS)."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("cap_offset", _u32),
                ("size", _u64), ("offset", _u64)]


class vfio_info_cap_header(_Struct):
    """Header of every capability in an info chain (8 bytes); ``next`` is from the info start."""

    _fields_ = [("id", _u16), ("version", _u16), ("next", _u32)]


class vfio_region_sparse_mmap_area(_Struct):
    """One mmappable area of a region (16 bytes)."""

    _fields_ = [("offset", _u64), ("size", _u64)]


class vfio_region_info_cap_sparse_mmap(_Struct):
    """Sparse mmap capability header (16 bytes); ``nr_areas`` areas follow."""

    _fields_ = [("header", vfio_info_cap_header), ("nr_areas", _u32), ("reserved", _u32)]

    def __repr__(self) -> str:
        return f"vfio_region_info_cap_sparse_mmap({self.header!r}, nr_areas={self.nr_areas})"


class vfio_irq_info(_Struct):
    """VFIO_DEVICE_GET_IRQ_INFO argument (16 bytes)."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("count", _u32)]


class vfio_irq_set(_Struct):
    """VFIO_DEVICE_SET_IRQS header (20 bytes); data (bools or s32 fds) follows."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("start", _u32),
                ("count", _u32)]


class vfio_iommu_type1_info(_Struct):
    """VFIO_IOMMU_GET_INFO argument (24 bytes)."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("iova_pgsizes", _u64), ("cap_offset", _u32),
                ("pad", _u32)]


class vfio_iova_range(_Struct):
    """One usable IOVA range (16 bytes, inclusive end)."""

    _fields_ = [("start", _u64), ("end", _u64)]


class vfio_iommu_type1_info_cap_iova_range(_Struct):
    """IOVA range capability header (16 bytes); ``nr_iovas`` ranges follow."""

    _fields_ = [("header", vfio_info_cap_header), ("nr_iovas", _u32), ("reserved", _u32)]

    def __repr__(self) -> str:
        return f"vfio_iommu_type1_info_cap_iova_range({self.header!r}, nr_iovas={self.nr_iovas})"


class vfio_iommu_type1_dma_map(_Struct):
    """VFIO_IOMMU_MAP_DMA argument (32 bytes)."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("vaddr", _u64), ("iova", _u64),
                ("size", _u64)]


class vfio_iommu_type1_dma_unmap(_Struct):
    """VFIO_IOMMU_UNMAP_DMA argument (24 bytes); vfio-user's DMA_UNMAP payload has this layout."""

    _fields_ = [("argsz", _u32), ("flags", _u32), ("iova", _u64), ("size", _u64)]


#: Sizes the kernel ABI fixes; tests check the structs against them.
STRUCT_SIZES = {
    vfio_group_status: 8, vfio_device_info: 20, vfio_region_info: 32, vfio_info_cap_header: 8,
    vfio_region_sparse_mmap_area: 16, vfio_region_info_cap_sparse_mmap: 16, vfio_irq_info: 16,
    vfio_irq_set: 20, vfio_iommu_type1_info: 24, vfio_iova_range: 16,
    vfio_iommu_type1_info_cap_iova_range: 16, vfio_iommu_type1_dma_map: 32,
    vfio_iommu_type1_dma_unmap: 24,
}


# --- capability chains -------------------------------------------------------------------------

def encode_sparse_mmap_cap(areas: list[tuple[int, int]], next_offset: int = 0) -> bytes:
    """A SPARSE_MMAP capability (header + areas) listing ``(offset, size)`` areas."""
    cap = vfio_region_info_cap_sparse_mmap(
        vfio_info_cap_header(VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, next_offset), len(areas), 0)
    return bytes(cap) + b"".join(bytes(vfio_region_sparse_mmap_area(o, s)) for o, s in areas)


def parse_caps(info: bytes | bytearray | memoryview, cap_offset: int
               ) -> dict[int, tuple[int, bytes]]:
    """Walk an info struct's capability chain: ``{cap id: (version, bytes from its header on)}``.

    Offsets are from the start of ``info``; a chain that loops, runs past the buffer or points
    into the fixed part raises ValueError.
    """
    caps: dict[int, tuple[int, bytes]] = {}
    seen: set[int] = set()
    off = cap_offset
    hdr_size = ctypes.sizeof(vfio_info_cap_header)
    while off:
        if off in seen or off + hdr_size > len(info) or off < hdr_size:
            raise ValueError(f"bad capability chain at offset {off}")
        seen.add(off)
        hdr = vfio_info_cap_header.decode(info, off)
        end = hdr.next if hdr.next > off else len(info)
        caps.setdefault(hdr.id, (hdr.version, bytes(info[off:end])))
        off = hdr.next
    return caps


def parse_sparse_mmap(cap: bytes) -> list[tuple[int, int]]:
    """The ``(offset, size)`` areas of a SPARSE_MMAP capability (as returned by parse_caps)."""
    head = vfio_region_info_cap_sparse_mmap.decode(cap)
    base = ctypes.sizeof(vfio_region_info_cap_sparse_mmap)
    area = ctypes.sizeof(vfio_region_sparse_mmap_area)
    if base + head.nr_areas * area > len(cap):
        raise ValueError(f"sparse mmap cap claims {head.nr_areas} areas, has room for "
                         f"{(len(cap) - base) // area}")
    areas = (vfio_region_sparse_mmap_area.decode(cap, base + i * area)
             for i in range(head.nr_areas))
    return [(a.offset, a.size) for a in areas]


def parse_iova_ranges(cap: bytes) -> list[tuple[int, int]]:
    """The ``(start, end inclusive)`` ranges of an IOVA_RANGE capability."""
    head = vfio_iommu_type1_info_cap_iova_range.decode(cap)
    base = ctypes.sizeof(vfio_iommu_type1_info_cap_iova_range)
    rng = ctypes.sizeof(vfio_iova_range)
    if base + head.nr_iovas * rng > len(cap):
        raise ValueError("IOVA range capability is truncated")
    return [(r.start, r.end) for r in
            (vfio_iova_range.decode(cap, base + i * rng) for i in range(head.nr_iovas))]


def encode_iova_range_cap(ranges: list[tuple[int, int]], next_offset: int = 0) -> bytes:
    """An IOVA_RANGE capability listing ``(start, end inclusive)`` ranges."""
    head = vfio_iommu_type1_info_cap_iova_range(
        vfio_info_cap_header(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, next_offset), len(ranges), 0)
    return bytes(head) + b"".join(bytes(vfio_iova_range(s, e)) for s, e in ranges)


def irq_set_fds(index: int, start: int, fds: list[int], *,
                flags: int = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER) -> bytes:
    """A VFIO_DEVICE_SET_IRQS argument assigning eventfds (s32, -1 = unassign) to vectors."""
    hdr = vfio_irq_set(ctypes.sizeof(vfio_irq_set) + 4 * len(fds), flags, index, start, len(fds))
    return bytes(hdr) + struct.pack(f"<{len(fds)}i", *fds)

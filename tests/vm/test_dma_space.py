"""The device's DMA address space as QEMU's vIOMMU fills it: page-sized mappings, range unmaps."""
from __future__ import annotations

import errno
import mmap

import pytest

from hermes.device.hostmem import DmaFault
from hermes.vfio import uapi
from hermes.vfio.function import DmaSpace, MmapBackend

PAGE = 4096
RW = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE


def paged_space(base: int, pages: int, flags: int = RW) -> tuple[DmaSpace, list[mmap.mmap]]:
    """A space with ``pages`` adjacent one-page mappings from ``base`` (each its own memory)."""
    space = DmaSpace()
    mms = []
    for i in range(pages):
        mm = mmap.mmap(-1, PAGE)
        space.map(base + i * PAGE, PAGE, flags, MmapBackend(mm))
        mms.append(mm)
    return space, mms


def test_access_spans_adjacent_page_mappings():
    space, mms = paged_space(0x10000, 4)
    data = bytes(range(256)) * 40   # 10240 bytes: from mid page 0 to mid page 3
    space.write(0x10000 + 100, data)
    assert mms[0][100:] == data[:PAGE - 100]
    assert mms[1][:] == data[PAGE - 100:2 * PAGE - 100]
    assert space.read(0x10000 + 100, len(data)) == data


def test_span_stops_at_a_gap_or_a_missing_permission():
    space, _ = paged_space(0x10000, 2)
    space.map(0x13000, PAGE, RW, MmapBackend(mmap.mmap(-1, PAGE)))   # 0x12000 is a hole
    with pytest.raises(DmaFault) as info:
        space.read(0x11000 + 8, 2 * PAGE)
    assert info.value.partial
    space.map(0x12000, PAGE, uapi.VFIO_DMA_MAP_FLAG_READ, MmapBackend(mmap.mmap(-1, PAGE)))
    assert len(space.read(0x11000, 3 * PAGE)) == 3 * PAGE
    with pytest.raises(DmaFault):
        space.write(0x11000, bytes(3 * PAGE))   # the read-only page refuses the write


def test_unmap_of_a_range_removes_every_mapping_inside():
    space, _ = paged_space(0x10000, 8)
    assert space.unmap(0x10000, 4 * PAGE) == 4 * PAGE
    assert space.mappings() == [(0x10000 + i * PAGE, PAGE) for i in range(4, 8)]
    assert space.unmap(0, 1 << 40) == 4 * PAGE     # a vIOMMU's whole-domain invalidation
    assert space.mappings() == []


def test_unmap_that_cuts_a_mapping_or_finds_none_is_refused_whole():
    space = DmaSpace()
    space.map(0x10000, 4 * PAGE, RW, MmapBackend(mmap.mmap(-1, 4 * PAGE)))
    space.map(0x20000, PAGE, RW, MmapBackend(mmap.mmap(-1, PAGE)))
    for addr, size in ((0x10000, PAGE), (0x11000, 8 * PAGE), (0x0, 0x12000), (0x30000, PAGE)):
        with pytest.raises(OSError) as info:
            space.unmap(addr, size)
        assert info.value.errno == errno.EINVAL
    assert space.mappings() == [(0x10000, 4 * PAGE), (0x20000, PAGE)]
    assert space.unmap(0x10000, 4 * PAGE) == 4 * PAGE

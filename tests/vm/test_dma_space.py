"""The device's DMA address space as QEMU's vIOMMU fills it: page-sized mappings, range unmaps."""
from __future__ import annotations

import errno
import mmap
import os

import pytest

from hermes.device.hostmem import DmaFault
from hermes.server.function import DmaSpace, MmapBackend
from hermes.vfio import uapi

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


def test_unmap_that_cuts_a_mapping_is_refused_whole():
    space = DmaSpace()
    space.map(0x10000, 4 * PAGE, RW, MmapBackend(mmap.mmap(-1, 4 * PAGE)))
    space.map(0x20000, PAGE, RW, MmapBackend(mmap.mmap(-1, PAGE)))
    assert space.unmap(0x30000, PAGE) == 0     # nothing there: nothing to do, as in the kernel
    for addr, size in ((0x10000, PAGE), (0x11000, 8 * PAGE), (0x0, 0x12000)):
        with pytest.raises(OSError) as info:
            space.unmap(addr, size)
        assert info.value.errno == errno.EINVAL
    assert space.mappings() == [(0x10000, 4 * PAGE), (0x20000, PAGE)]
    assert space.unmap(0x10000, 4 * PAGE) == 4 * PAGE


def test_server_unmaps_a_vIOMMU_range_and_reports_the_size(tmp_path):
    # The messages QEMU sends behind intel-iommu: one DMA_MAP per 4 KiB page of a buffer, then
    # an unmap of the whole invalidated range, and unmaps of ranges that hold nothing.
    from hermes.vfio import protocol as P
    from tests.test_vfio_server import Raw
    from tests.vfio_devices import ThreadServer
    server = ThreadServer(str(tmp_path / "hermes.sock"))
    c = Raw(server.path)
    memfd = os.memfd_create("guest-ram")
    try:
        os.ftruncate(memfd, 16 * PAGE)
        for i in range(4):
            reply = c.call(P.DMA_MAP, bytes(P.DmaMap(32, RW, i * PAGE, 0x40000 + i * PAGE, PAGE)),
                           fds=[memfd])
            assert not reply.is_error
        assert server.function.dma.mappings() == [(0x40000 + i * PAGE, PAGE) for i in range(4)]
        for addr, size, removed in ((0x50000, 0x10000, 0), (0x40000, 0x10000, 4 * PAGE)):
            reply = c.call(P.DMA_UNMAP, bytes(P.DmaUnmap(24, 0, addr, size)))
            assert not reply.is_error
            assert P.DmaUnmap.decode(reply.payload).size == removed
        assert server.function.dma.mappings() == []
    finally:
        os.close(memfd)
        c.close()
        server.stop()

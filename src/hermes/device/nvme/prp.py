"""Data transfer of the NVMe controller model: PRP entries and lists walked into host memory."""
from __future__ import annotations

import struct

from ... import nvme_regs as N
from ..hostmem import DmaFault


class TransferError(Exception):
    """A data pointer the controller cannot follow; the command completes with ``status``."""

    def __init__(self, status: N.Status, why: str):
        super().__init__(why)
        self.status = status


def prp_runs(host: object, prp1: int, prp2: int, length: int, page: int) -> list[tuple[int, int]]:
    """The host memory runs ``[(bus address, bytes)]`` that PRP1/PRP2 describe for ``length`` bytes.

    Adjacent pages are merged, so a transfer into one contiguous buffer is one run. Raises
    ``TransferError`` with PRP Offset Invalid for a misaligned entry and Data Transfer Error when
    a PRP list cannot be read.
    """
    if length <= 0:
        return []
    if prp1 & 3:
        raise TransferError(N.INVALID_PRP_OFFSET, f"PRP1 {prp1:#x} is not dword aligned")
    first = min(length, page - (prp1 % page))
    runs = [(prp1, first)]
    left = length - first
    if left == 0:
        return runs
    if left <= page:
        if prp2 % page:
            raise TransferError(N.INVALID_PRP_OFFSET,
                                f"PRP2 {prp2:#x} must be page aligned for a two-page transfer")
        _add(runs, prp2, left)
        return runs
    # PRP2 points to a list; its last entry chains to the next list page while more remain.
    if prp2 & 7:
        raise TransferError(N.INVALID_PRP_OFFSET, f"PRP list pointer {prp2:#x} is not "
                            "qword aligned")
    list_addr = prp2
    pages_left = (left + page - 1) // page
    lists_read = 0
    while pages_left:
        slots = (page - (list_addr % page)) // 8
        take = pages_left if pages_left <= slots else slots - 1
        raw = _read(host, list_addr, 8 * (take + (0 if pages_left <= slots else 1)))
        entries = struct.unpack(f"<{len(raw) // 8}Q", raw)
        for addr in entries[:take]:
            if addr % page:
                raise TransferError(N.INVALID_PRP_OFFSET, f"PRP list entry {addr:#x} is not "
                                    "page aligned")
            n = min(page, left)
            _add(runs, addr, n)
            left -= n
        pages_left -= take
        if pages_left:
            list_addr = entries[-1]
            lists_read += 1
            if list_addr % page or lists_read > 1 << 16:
                raise TransferError(N.INVALID_PRP_OFFSET, f"chained PRP list pointer "
                                    f"{list_addr:#x} is not page aligned")
    return runs


def _add(runs: list[tuple[int, int]], addr: int, n: int) -> None:
    last_addr, last_n = runs[-1]
    if last_addr + last_n == addr:
        runs[-1] = (last_addr, last_n + n)
    else:
        runs.append((addr, n))


def _read(host: object, addr: int, n: int) -> bytes:
    try:
        return bytes(host.read(addr, n))  # type: ignore[attr-defined]
    except DmaFault as exc:
        raise TransferError(N.DATA_TRANSFER_ERROR, str(exc)) from None


def _in_place(host: object, addr: int, n: int) -> memoryview | None:
    """The host bytes in place, or None where the host must copy them (it has no ``view``, or
    its ``view`` declines a range, as a vfio-user DMA space does outside one shared mapping)."""
    view = getattr(host, "view", None)
    return None if view is None else view(addr, n)


def _view(host: object, addr: int, n: int) -> memoryview:
    try:
        got = _in_place(host, addr, n)
        if got is not None:
            return got
        return memoryview(bytearray(host.read(addr, n)))  # type: ignore[attr-defined]
    except DmaFault as exc:
        raise TransferError(N.DATA_TRANSFER_ERROR, str(exc)) from None


def gather(host: object, runs: list[tuple[int, int]]) -> bytes:
    """Copy of the bytes of ``runs`` (host -> controller)."""
    if len(runs) == 1:
        return bytes(_view(host, *runs[0]))
    return b"".join(bytes(_view(host, a, n)) for a, n in runs)


def gather_into(host: object, runs: list[tuple[int, int]], dest: memoryview) -> None:
    """Copy the bytes of ``runs`` into ``dest`` (exactly their total length)."""
    pos = 0
    for addr, n in runs:
        dest[pos:pos + n] = _view(host, addr, n)
        pos += n


def scatter(host: object, runs: list[tuple[int, int]], data: bytes | memoryview) -> None:
    """Store ``data`` (at most the runs' total length) into ``runs`` (controller -> host)."""
    src = memoryview(data)
    pos = 0
    for addr, n in runs:
        if pos >= len(src):
            return
        n = min(n, len(src) - pos)
        try:
            place = _in_place(host, addr, n)
            if place is not None:
                place[:] = src[pos:pos + n]
            else:
                host.write(addr, src[pos:pos + n])  # type: ignore[attr-defined]
        except DmaFault as exc:
            raise TransferError(N.DATA_TRANSFER_ERROR, str(exc)) from None
        pos += n

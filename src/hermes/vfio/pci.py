"""Emulated PCI configuration space of a Hermes function: identity, BAR sizing, MSI-X capability.

Served as VFIO region 7 by the vfio-user server and by the fake VFIO kernel used in tests. BARs
follow PCI sizing semantics: writing all-ones to a BAR register and reading it back yields the
size mask plus the BAR's type flags.
"""
from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .. import regs

CONFIG_SIZE = 256

# standard header offsets
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS_CAP_LIST = 0x10

PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8

PCI_CAP_ID_MSIX = 0x11
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_QSIZE = 0x07FF

#: Where the MSI-X capability lives in config space.
MSIX_CAP_OFFSET = 0x40


@dataclass(frozen=True)
class BarSpec:
    """One memory BAR: its index, decoded size (a power of two) and type."""

    index: int
    size: int
    is64: bool
    prefetchable: bool

    @property
    def flags(self) -> int:
        """The low type bits of the BAR register."""
        return ((PCI_BASE_ADDRESS_MEM_TYPE_64 if self.is64 else 0)
                | (PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetchable else 0))


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= ``n`` (and >= 4096, the smallest BAR VFIO maps)."""
    size = 4096
    while size < n:
        size <<= 1
    return size


def hermes_bars(bar4_size: int) -> list[BarSpec]:
    """The Hermes BAR layout: BAR0 32-bit registers, BAR2 and BAR4 64-bit prefetchable."""
    return [BarSpec(0, pow2_at_least(regs.BAR0_SIZE), False, False),
            BarSpec(2, pow2_at_least(regs.BAR2_SIZE), True, True),
            BarSpec(4, pow2_at_least(bar4_size), True, True)]


class ConfigSpace:
    """256 bytes of type-0 config header plus an MSI-X capability; thread-safe."""

    def __init__(self, bars: list[BarSpec], *, vendor: int = regs.PCI_VENDOR_ID,
                 device: int = regs.PCI_DEVICE_ID, revision: int = regs.PCI_REVISION,
                 class_code: int = regs.PCI_CLASS_OTHER, msix_vectors: int = regs.MSIX_VECTORS,
                 msix_bar: int = regs.BAR_DMA, msix_table: int = regs.MSIX_TABLE_OFFSET,
                 msix_pba: int = regs.MSIX_PBA_OFFSET):
        self._lock = threading.Lock()
        self.bars = {b.index: b for b in bars}
        self._bar_regs = [0] * 6   # address bits as written (type bits are added on read)
        cfg = bytearray(CONFIG_SIZE)
        struct.pack_into("<HH", cfg, PCI_VENDOR_ID, vendor, device)
        struct.pack_into("<H", cfg, PCI_STATUS, PCI_STATUS_CAP_LIST)
        cfg[PCI_REVISION_ID] = revision
        cfg[PCI_CLASS_PROG:PCI_CLASS_PROG + 3] = class_code.to_bytes(3, "little")
        struct.pack_into("<HH", cfg, PCI_SUBSYSTEM_VENDOR_ID, vendor, device)
        cfg[PCI_CAPABILITY_LIST] = MSIX_CAP_OFFSET
        cfg[PCI_INTERRUPT_PIN] = 0   # no INTx: MSI-X only
        struct.pack_into("<BBHII", cfg, MSIX_CAP_OFFSET, PCI_CAP_ID_MSIX, 0,
                         (msix_vectors - 1) & PCI_MSIX_FLAGS_QSIZE,
                         msix_table | msix_bar, msix_pba | msix_bar)
        self._cfg = cfg
        # Per-byte writable masks; BARs are handled separately (dword semantics).
        mask = bytearray(CONFIG_SIZE)
        struct.pack_into("<H", mask, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                         | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE)
        mask[PCI_CACHE_LINE_SIZE] = 0xFF
        mask[PCI_LATENCY_TIMER] = 0xFF
        mask[PCI_INTERRUPT_LINE] = 0xFF
        struct.pack_into("<H", mask, MSIX_CAP_OFFSET + 2,
                         PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
        self._mask = mask

    # --- BAR registers -------------------------------------------------------------------------
    def _bar_dword(self, slot: int) -> int:
        """The value the BAR register ``slot`` (0..5) reads as."""
        bar = self.bars.get(slot)
        if bar is not None:
            return (self._bar_regs[slot] & ~(bar.size - 1) & 0xFFFFFFF0) | bar.flags
        lower = self.bars.get(slot - 1)
        if lower is not None and lower.is64:   # upper half of a 64-bit BAR
            return self._bar_regs[slot] & ~((lower.size - 1) >> 32) & 0xFFFFFFFF
        return 0   # unimplemented BAR: hard-wired to zero

    def bar_address(self, index: int) -> int:
        """The bus address currently programmed into BAR ``index``."""
        with self._lock:
            lo = self._bar_dword(index) & ~0xF
            bar = self.bars[index]
            hi = self._bar_dword(index + 1) if bar.is64 else 0
            return (hi << 32) | lo

    def _read_dword(self, off: int) -> int:
        if PCI_BASE_ADDRESS_0 <= off < PCI_BASE_ADDRESS_0 + 24:
            return self._bar_dword((off - PCI_BASE_ADDRESS_0) // 4)
        return int.from_bytes(self._cfg[off:off + 4], "little")

    # --- access --------------------------------------------------------------------------------
    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset`` (ValueError outside the 256 bytes)."""
        if offset < 0 or count < 0 or offset + count > CONFIG_SIZE:
            raise ValueError(f"config read of {count} bytes at {offset:#x} is outside config space")
        with self._lock:
            first = offset & ~3
            buf = b"".join(self._read_dword(d).to_bytes(4, "little")
                           for d in range(first, offset + count, 4))
            return buf[offset - first:offset - first + count]

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``: read-only bits keep their value, BARs take their mask."""
        if offset < 0 or offset + len(data) > CONFIG_SIZE:
            raise ValueError(f"config write of {len(data)} bytes at {offset:#x} is outside "
                             "config space")
        with self._lock:
            for i, byte in enumerate(data):
                off = offset + i
                if PCI_BASE_ADDRESS_0 <= off < PCI_BASE_ADDRESS_0 + 24:
                    slot = (off - PCI_BASE_ADDRESS_0) // 4
                    shift = 8 * (off & 3)
                    self._bar_regs[slot] = ((self._bar_regs[slot] & ~(0xFF << shift))
                                            | (byte << shift)) & 0xFFFFFFFF
                else:
                    m = self._mask[off]
                    self._cfg[off] = (self._cfg[off] & ~m) | (byte & m)

    def reset(self) -> None:
        """Function-level reset: command, BARs and MSI-X control back to their power-on values."""
        with self._lock:
            for off in range(CONFIG_SIZE):
                if self._mask[off]:
                    self._cfg[off] &= ~self._mask[off] & 0xFF
            self._bar_regs = [0] * 6

    @property
    def command(self) -> int:
        """The PCI command register."""
        return struct.unpack_from("<H", self.read(PCI_COMMAND, 2))[0]

    @property
    def msix_control(self) -> int:
        """The MSI-X message control word."""
        return struct.unpack_from("<H", self.read(MSIX_CAP_OFFSET + 2, 2))[0]


def find_capability(read: Callable[[int, int], bytes], cap_id: int) -> int | None:
    """Walk a config space's capability list (``read(offset, count) -> bytes``); offset or None."""
    status = struct.unpack("<H", read(PCI_STATUS, 2))[0]
    if not status & PCI_STATUS_CAP_LIST:
        return None
    ptr = read(PCI_CAPABILITY_LIST, 1)[0] & ~3
    seen = set()
    while ptr and ptr not in seen and ptr < CONFIG_SIZE:
        seen.add(ptr)
        cid, nxt = read(ptr, 2)
        if cid == cap_id:
            return ptr
        ptr = nxt & ~3
    return None

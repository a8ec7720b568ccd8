"""Guest smoke check: the Hermes PCI function as Linux sees it matches the host's ``hermes info``.

``python -m tests.vm.smoke BDF HOST-INFO.JSON`` in the guest: the function has BARs 0, 2 and 4 and
an MSI-X capability, and BAR0 read through sysfs (``resource0``, one 4-byte load per register)
equals the BAR0 bytes the host read over vfio-user before QEMU attached.
"""
from __future__ import annotations

import json
import mmap
import os
import sys

from hermes import regs
from hermes.vfio import mmio, pci

#: BAR0 bytes compared: the identification and geometry registers (read-only, no side effects).
GEOMETRY_BYTES = 0x50


def bars(bdf: str) -> dict[int, int]:
    """BAR index -> size of every populated BAR (from sysfs ``resource``)."""
    out = {}
    with open(f"/sys/bus/pci/devices/{bdf}/resource") as f:
        for index, line in enumerate(f):
            if index > 5:
                break
            start, end, _flags = (int(x, 16) for x in line.split())
            if end:
                out[index] = end - start + 1
    return out


def msix_vectors(bdf: str) -> int | None:
    """The MSI-X table size from config space, or None without the capability."""
    with open(f"/sys/bus/pci/devices/{bdf}/config", "rb") as f:
        cfg = f.read(256)
    pos = cfg[pci.PCI_CAPABILITY_LIST]
    for _ in range(48):   # a capability list cannot be longer; a loop in it must not hang us
        if not pos:
            return None
        if cfg[pos] == pci.PCI_CAP_ID_MSIX:
            flags = int.from_bytes(cfg[pos + 2:pos + 4], "little")
            return (flags & pci.PCI_MSIX_FLAGS_QSIZE) + 1
        pos = cfg[pos + 1]
    return None


def bar0_bytes(bdf: str, length: int = GEOMETRY_BYTES) -> bytes:
    """The first ``length`` bytes of BAR0, one 4-byte load per register, through sysfs."""
    fd = os.open(f"/sys/bus/pci/devices/{bdf}/resource0", os.O_RDWR | os.O_SYNC)
    try:
        mm = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        return b"".join(mmio.load(mm, off, 4).to_bytes(4, "little") for off in range(0, length, 4))
    finally:
        mm.close()


def check(bdf: str, host_info: dict, host_bar0: bytes) -> list[str]:
    """Problems found (empty when the guest's view matches the host's)."""
    problems = []
    with open(f"/sys/bus/pci/devices/{bdf}/vendor") as f, \
            open(f"/sys/bus/pci/devices/{bdf}/device") as g:
        ids = (int(f.read(), 16), int(g.read(), 16))
    if ids != (regs.PCI_VENDOR_ID, regs.PCI_DEVICE_ID):
        problems.append(f"{bdf} is {ids[0]:04x}:{ids[1]:04x}")
    found = bars(bdf)
    if sorted(found) != [regs.BAR_REGS, regs.BAR_DMA, regs.BAR_MEM]:
        problems.append(f"BARs {sorted(found)}, expected 0, 2 and 4")
    vectors = msix_vectors(bdf)
    if vectors != regs.MSIX_VECTORS:
        problems.append(f"MSI-X table size {vectors}, expected {regs.MSIX_VECTORS}")
    if found.get(regs.BAR_MEM) != host_info.get("bar4_size") and host_info.get("bar4_size"):
        # BAR4's size is a power of two at least the slots' extent.
        if found.get(regs.BAR_MEM, 0) < host_info["bar4_size"]:
            problems.append(f"BAR4 is {found.get(regs.BAR_MEM)} bytes, the slots need "
                            f"{host_info['bar4_size']}")
    raw = bar0_bytes(bdf, len(host_bar0))
    if raw != host_bar0:
        problems.append(f"BAR0 through sysfs {raw.hex()} != host {host_bar0.hex()}")
    version = int.from_bytes(raw[regs.EHVER:regs.EHVER + 4], "little")
    for key, value in (("version", version), ("engines", raw[regs.EHENG]),
                       ("program_slots", raw[regs.EHPSLOT]), ("data_slots", raw[regs.EHDSLOT])):
        if host_info.get(key) != value:
            problems.append(f"{key}: BAR0 says {value}, hermes info {host_info.get(key)}")
    print(f"smoke: {bdf} {ids[0]:04x}:{ids[1]:04x}, BARs "
          + ", ".join(f"{i}: {s:#x}" for i, s in sorted(found.items()))
          + f", MSI-X {vectors} vectors, BAR0 interface v{version}, {raw[regs.EHENG]} engines, "
          f"{raw[regs.EHPSLOT]}+{raw[regs.EHDSLOT]} slots")
    return problems


def main(argv: list[str]) -> int:
    """Entry point: exit 0 when everything matches."""
    if len(argv) != 2 or not argv[0]:
        print("usage: python -m tests.vm.smoke BDF HOST-INFO.JSON (no Hermes device found?)")
        return 2
    with open(argv[1]) as f:
        info = json.load(f)
    problems = check(argv[0], info, bytes.fromhex(info["bar0"]))
    for p in problems:
        print(f"smoke: MISMATCH {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

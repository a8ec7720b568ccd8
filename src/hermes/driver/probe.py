"""The probe: a Hermes device's ``Geometry`` from its BAR0 header and its XDMA block, and the
checks a device must pass before the driver drives it."""
from __future__ import annotations

import errno
from dataclasses import replace

from .. import regs
from ..transport.base import Transport
from .protocol import error

#: The probe's result (``hermes.driver.Geometry``).
Geometry = regs.Geometry


def probe(transport: Transport) -> Geometry:
    """Read the BAR0 header and count the DMA channels; ENODEV for an interface version this
    driver does not know or a device it cannot drive (every problem named)."""
    t = transport
    try:
        g = regs.Header.unpack(lambda offset, length: t.read_block(regs.BAR_REGS, offset, length))
    except regs.InterfaceVersionError as exc:
        hint = " (no device answering?)" if exc.version in (0, 0xFFFFFFFF) else ""
        raise error(errno.ENODEV, f"unsupported Hermes interface version {exc.version:#x}"
                    f"{hint}; this driver supports versions "
                    f"{', '.join(map(str, regs.INTERFACE_VERSIONS))}") from None
    problems = []
    if g.engines == 0:
        problems.append("EHENG is 0 (no engines)")
    if g.program_slots == 0 or g.program_slot_size == 0:
        problems.append(f"no program slots (EHPSLOT {g.program_slots}, "
                        f"EHPSSZE {g.program_slot_size})")
    if g.data_slots == 0 or g.data_slot_size == 0:
        problems.append(f"no data slots (EHDSLOT {g.data_slots}, EHDSSZE {g.data_slot_size})")
    psoff, dsoff = g.program_slot_offset, g.data_slot_offset
    pend = psoff + g.program_slots * g.program_slot_size
    dend = dsoff + g.data_slots * g.data_slot_size
    if g.program_slots and g.data_slots and psoff < dend and dsoff < pend:
        problems.append(f"program slots [{psoff:#x}, {pend:#x}) overlap data slots "
                        f"[{dsoff:#x}, {dend:#x})")
    h2c = _count_channels(t, regs.XDMA_TARGET_H2C)
    c2h = _count_channels(t, regs.XDMA_TARGET_C2H)
    if not h2c or not c2h:
        problems.append(f"XDMA block has {h2c} H2C and {c2h} C2H channels (need one of each)")
    if problems:
        raise error(errno.ENODEV, "refusing the Hermes device: " + "; ".join(problems))
    return replace(g, h2c_channels=h2c, c2h_channels=c2h)


def _count_channels(transport: Transport, target: int) -> int:
    """Channels whose identifier register carries the XDMA magic and the right target."""
    n = 0
    limit = regs.XDMA_H2C_CHANNELS if target == regs.XDMA_TARGET_H2C else regs.XDMA_C2H_CHANNELS
    while n < limit:
        off = regs.xdma_offset(target, n, regs.XDMA_CH_IDENTIFIER)
        ident = transport.read(regs.BAR_DMA, off, 4)
        if ident >> 20 != regs.XDMA_ID_MAGIC or (ident >> 16) & 0xF != target:
            break
        n += 1
    return n

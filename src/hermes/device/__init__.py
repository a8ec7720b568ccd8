"""The Hermes device model: registers, command engines, slots, DMA and interrupts of one device."""
from __future__ import annotations

from .commands import error_code
from .hostmem import DmaFault, HostMemory, HostMemoryLike
from .model import MAX_ENGINES, STAT_KEYS, HermesDevice
from .xdma import NUM_VECTORS, STATUS_ERROR_MASK, STATUS_EVENT_MASK

__all__ = [
    "DmaFault", "HermesDevice", "HostMemory", "HostMemoryLike", "MAX_ENGINES", "NUM_VECTORS",
    "STATUS_ERROR_MASK", "STATUS_EVENT_MASK", "STAT_KEYS", "error_code",
]

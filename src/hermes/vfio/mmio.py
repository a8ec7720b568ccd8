"""Fixed-width access to mapped device memory (one load or store of exactly 1, 2, 4 or 8 bytes).

``struct.unpack_from`` on an mmap reads byte by byte and slicing is a memcpy of unspecified width;
clear-on-read registers need exactly one access of the register's width, so every mapped register
access in the transports goes through these two functions.
"""
from __future__ import annotations

import ctypes
from typing import Any

_TYPES = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


def load(buf: Any, offset: int, size: int) -> int:
    """One ``size``-byte little-endian load from writable ``buf`` at ``offset``."""
    try:
        ctype = _TYPES[size]
    except KeyError:
        raise ValueError(f"access size must be 1, 2, 4 or 8, not {size}") from None
    if offset < 0 or offset + size > len(buf):
        raise ValueError(f"access of {size} bytes at {offset:#x} is outside the mapping")
    return ctype.from_buffer(buf, offset).value


def store(buf: Any, offset: int, size: int, value: int) -> None:
    """One ``size``-byte little-endian store of ``value`` into ``buf`` at ``offset``."""
    try:
        ctype = _TYPES[size]
    except KeyError:
        raise ValueError(f"access size must be 1, 2, 4 or 8, not {size}") from None
    if offset < 0 or offset + size > len(buf):
        raise ValueError(f"access of {size} bytes at {offset:#x} is outside the mapping")
    ctype.from_buffer(buf, offset).value = value & ((1 << (8 * size)) - 1)

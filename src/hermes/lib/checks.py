"""Argument checks shared by the library's layers: integers, sizes and byte buffers, each refused
with a ``UsageError`` naming the argument."""
from __future__ import annotations

from ..errors import UsageError


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` when it is an int in ``lo..hi``, else ``UsageError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise UsageError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def check_buffer(data: object, what: str = "data") -> memoryview:
    """``data`` as a flat byte view (lengths in bytes whatever its item size; a non-contiguous
    buffer is copied), or ``UsageError`` for anything that is not bytes-like."""
    if isinstance(data, (str, int, float)) or data is None:
        raise UsageError(f"{what} must be bytes, bytearray or memoryview, not "
                         f"{type(data).__name__}")
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise UsageError(f"{what} must be bytes, bytearray or memoryview, not "
                         f"{type(data).__name__}") from None
    if not view.c_contiguous:
        # A strided or Fortran-ordered view (a numpy slice with a step, a column, a transpose)
        # is copied, its items in C order.
        return memoryview(view.tobytes())
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B")


def check_size(name: str, value: object) -> int:
    """``value`` when it is a non-negative int, else ``UsageError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def writable_view(buffer: object, what: str = "out") -> memoryview:
    """``buffer`` as a flat writable byte view (bytearray, writable memoryview, numpy array)."""
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise UsageError(f"{what} must be a writable buffer (bytearray, memoryview, numpy "
                         f"array), not {type(buffer).__name__}") from None
    if view.readonly:
        raise UsageError(f"{what} must be a writable buffer, not a read-only "
                         f"{type(buffer).__name__}")
    if not view.c_contiguous:
        raise UsageError(f"{what} must be a C-contiguous buffer")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")

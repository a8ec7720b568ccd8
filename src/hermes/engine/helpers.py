"""Helper functions a program may call by id: the registry, its context object and built-in sets."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from ..errors import ExecutionError, UsageError
from .memory import MASK64

#: Bytes ``HelperContext.fill`` writes per step: its only host memory besides the destination.
_FILL_CHUNK = 64 << 10


class StopRun(Exception):
    """Raised by a helper to end the run at once with ``value`` as r0."""

    def __init__(self, value: int = 0):
        super().__init__(value)
        self.value = value


class HelperContext:
    """What a helper may touch: the program's own memory, through bounds-checked accessors.

    Every accessor raises ``ExecutionError`` exactly like a faulting load or store would, before
    any byte is copied. ``view`` is the engine's zero-copy accessor ``(addr, size, write) ->
    memoryview`` of a checked range; with it ``check``/``fill``/``copy`` spend no host memory
    proportional to a length the program chose (without it, at most the size of the region
    the check found).
    """

    def __init__(self, load: Callable[[int, int], bytes], store: Callable[[int, bytes], None],
                 view: "Callable[[int, int, bool], memoryview] | None" = None):
        self._load = load
        self._store = store
        self._view = view

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of program memory at virtual address ``addr``."""
        return self._load(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to program memory at virtual address ``addr``."""
        self._store(addr, bytes(data))

    def check(self, addr: int, size: int, write: bool = False) -> None:
        """Raise what a load (or store, when ``write``) of ``size`` bytes at ``addr`` would
        raise; copies nothing when the engine has a view accessor."""
        if self._view is not None:
            self._view(addr, size, write)
        elif write:
            # Without a view: a copy whose size the load's check has bounded by its region.
            self._store(addr, self._load(addr, size))
        else:
            self._load(addr, size)

    def fill(self, addr: int, value: int, size: int) -> None:
        """Set ``size`` bytes at ``addr`` to ``value & 0xFF``: checked first, then written in
        chunks of at most ``_FILL_CHUNK`` bytes."""
        self.check(addr, size, True)
        if self._view is None:
            self._store(addr, bytes([value & 0xFF]) * size)
            return
        dest = self._view(addr, size, True)
        chunk = bytes([value & 0xFF]) * min(size, _FILL_CHUNK)
        for pos in range(0, size, _FILL_CHUNK):
            n = min(_FILL_CHUNK, size - pos)
            dest[pos:pos + n] = chunk[:n]

    def copy(self, dst: int, src: int, size: int) -> None:
        """Copy ``size`` bytes from ``src`` to ``dst`` (overlap allowed, as memmove); both
        ranges are checked before a byte moves."""
        self.check(dst, size, True)
        self.check(src, size, False)
        if self._view is None:
            self._store(dst, self._load(src, size))
            return
        self._view(dst, size, True)[:] = self._view(src, size, False)

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """Read a NUL-terminated string (without the NUL), at most ``limit`` bytes."""
        out = bytearray()
        while len(out) < limit:
            b = self._load(addr + len(out), 1)[0]
            if b == 0:
                return bytes(out)
            out.append(b)
        return bytes(out)


#: A helper's Python implementation: (ctx, r1, r2, r3, r4, r5) -> r0.
HelperFn = Callable[[HelperContext, int, int, int, int, int], int]


@dataclass(frozen=True)
class Helper:
    """A helper: its id (the ``call`` immediate), its name (for ELF calls by name) and code."""

    id: int
    name: str
    fn: HelperFn
    doc: str = ""


class HelperRegistry(Mapping[int, Helper]):
    """Helpers by id (and by name for ELF relocations against undefined symbols)."""

    def __init__(self, helpers: "list[Helper] | tuple[Helper, ...]" = ()):
        self._by_id: dict[int, Helper] = {}
        self._by_name: dict[str, Helper] = {}
        for h in helpers:
            self.register(h)

    def register(self, helper: Helper) -> None:
        """Add a helper; ids and names must be unique."""
        if not isinstance(helper, Helper):
            raise UsageError(f"expected a Helper, not {type(helper).__name__}")
        if helper.id in self._by_id:
            raise UsageError(f"helper id {helper.id} is already registered")
        if helper.name in self._by_name:
            raise UsageError(f"helper name {helper.name!r} is already registered")
        self._by_id[helper.id] = helper
        self._by_name[helper.name] = helper

    def by_name(self, name: str) -> Helper | None:
        """The helper called ``name``, or None."""
        return self._by_name.get(name)

    def __getitem__(self, key: int) -> Helper:
        return self._by_id[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"HelperRegistry({sorted((h.id, h.name) for h in self._by_id.values())})"


def _gather_bytes(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    return ((a & 0xFF) << 32) | ((b & 0xFF) << 24) | ((c & 0xFF) << 16) | ((d & 0xFF) << 8) | (e & 0xFF)


def _memfrob(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    if b:
        with _naming("memfrob", "buffer"):
            ctx.write(a, ctx.read(a, b).translate(_FROB))
    return 0


def _no_op(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    return 0


def _sqrti(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    return math.isqrt(a)


def _strcmp_ext(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    x, y = ctx.read_cstring(a), ctx.read_cstring(b)
    for p, q in zip(x + b"\0", y + b"\0"):
        if p != q:
            return (p - q) & MASK64
    return 0


def _unwind(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    if a == 0:
        raise StopRun(0)
    return a


def _memset(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    if c:
        with _naming("hermes_memset", "destination"):
            ctx.fill(a, b, c)
    return a


def _memcpy(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    if c:
        with _naming("hermes_memcpy", "destination"):
            ctx.check(a, c, True)
        with _naming("hermes_memcpy", "source"):
            ctx.check(b, c, False)
        ctx.copy(a, b, c)
    return a


_FROB = bytes(x ^ 42 for x in range(256))


class _naming:
    """Re-raises a helper's out-of-bounds access naming the helper and the operand, so the
    message says which pointer and length of the call were wrong (address, size and the mapped
    regions stay in the error)."""

    def __init__(self, helper: str, operand: str):
        self.what = f"{helper} {operand}"

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, ExecutionError) and exc.kind == "out_of_bounds":
            raise type(exc)(exc.kind, f"{self.what} out of bounds ({exc.message})", exc.pc,
                            exc.address, exc.size, exc.regions, exc.instructions) from None
        return False


#: The helpers of the conformance corpus (ids 0..5), registered for its tests.
CONFORMANCE_HELPERS = HelperRegistry([
    Helper(0, "gather_bytes", _gather_bytes, "pack the low bytes of r1..r5 into r0"),
    Helper(1, "memfrob", _memfrob, "XOR r2 bytes at r1 with 42"),
    Helper(2, "no_op", _no_op, "return 0"),
    Helper(3, "sqrti", _sqrti, "integer square root of r1"),
    Helper(4, "strcmp_ext", _strcmp_ext, "strcmp of the strings at r1 and r2"),
    Helper(5, "unwind", _unwind, "return r1; when r1 is 0 the program stops with r0 = 0"),
])

#: Helpers a Hermes device offers to every program (ids chosen above the corpus's range).
DEVICE_HELPERS = HelperRegistry([
    Helper(0x1000, "hermes_memset", _memset, "memset(r1, r2, r3); returns r1"),
    Helper(0x1001, "hermes_memcpy", _memcpy, "memcpy(r1, r2, r3); returns r1"),
])


def merged(*registries: HelperRegistry) -> HelperRegistry:
    """A registry holding every helper of ``registries`` (ids and names must not clash)."""
    out = HelperRegistry()
    for reg in registries:
        for h in reg.values():
            out.register(h)
    return out

"""Helper functions a program may call by id: the registry, its context object and built-in sets."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from ..errors import ExecutionError, UsageError
from .memory import MASK64

#: Bytes ``HelperContext.fill`` writes per step: its only host memory besides the destination.
_FILL_CHUNK = 64 << 10
#: Helper ids of the run contract (specs/run-contract.md section 1).
HELPER_SET_OUTPUT = 0x1002
HELPER_TRACE_PRINTK = 6
#: Bytes of printed text one run keeps; what a program prints beyond is dropped and counted.
TRACE_LIMIT = 4096


class RunState:
    """What helpers record during one run, for its ``RunResult``: the output length declared
    with ``hermes_set_output`` and the text printed with ``bpf_trace_printk``.

    The engine makes a fresh one per run; ``window`` is the length of the run's data window.
    """

    def __init__(self, window: int = 0):
        self.window = window
        self.output_length: int | None = None
        self.trace = bytearray()
        self.trace_dropped = 0

    def emit(self, text: bytes) -> int:
        """Append printed ``text``, keeping at most ``TRACE_LIMIT`` bytes in all; returns the
        bytes kept (the rest is counted in ``trace_dropped``)."""
        keep = text[:max(0, TRACE_LIMIT - len(self.trace))]
        self.trace += keep
        self.trace_dropped += len(text) - len(keep)
        return len(keep)

    def stamp(self, exc: BaseException) -> BaseException:
        """``exc`` (a failure that ends the run) carrying the text printed so far as its
        ``trace`` and ``trace_dropped``, decoded as ``RunResult.trace`` is for the library."""
        exc.trace = bytes(self.trace).decode("utf-8", "replace")  # type: ignore[attr-defined]
        exc.trace_dropped = self.trace_dropped  # type: ignore[attr-defined]
        return exc


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
                 view: Callable[[int, int, bool], memoryview] | None = None,
                 run: RunState | None = None):
        self._load = load
        self._store = store
        self._view = view
        #: The run's state (output length, printed text).
        self.run = run if run is not None else RunState()
        #: Slot of the call being served (the engine sets it before each call).
        self.pc: int | None = None

    def fault(self, message: str) -> ExecutionError:
        """A helper failure (kind ``helper``) at the current call, for the helper to raise."""
        return ExecutionError("helper", message, self.pc)

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

    def __init__(self, helpers: list[Helper] | tuple[Helper, ...] = ()):
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
    return (((a & 0xFF) << 32) | ((b & 0xFF) << 24) | ((c & 0xFF) << 16) | ((d & 0xFF) << 8)
            | (e & 0xFF))


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
    for p, q in zip(x + b"\0", y + b"\0", strict=False):
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


def _set_output(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    if a > ctx.run.window:
        raise ctx.fault(f"hermes_set_output: output length {a} is larger than the data window "
                        f"({ctx.run.window} bytes)")
    ctx.run.output_length = a
    return 0


#: Conversions of bpf_trace_printk's format, by the letters after ``%``: (bits, how printed).
_CONVERSIONS = {
    b"d": (32, "d"), b"i": (32, "d"), b"u": (32, "u"), b"x": (32, "x"), b"X": (32, "X"),
    b"ld": (64, "d"), b"lu": (64, "u"), b"lx": (64, "x"),
    b"lld": (64, "d"), b"llu": (64, "u"), b"llx": (64, "x"),
    b"p": (64, "p"), b"s": (64, "s"), b"c": (8, "c"),
}
#: Values a format may print (r3, r4, r5), as in Linux.
_TRACE_ARGS = 3


def _conversion(fmt: bytes, pos: int) -> bytes | None:
    """The conversion starting just after the ``%`` at ``pos - 1`` (longest match), or None."""
    for n in (3, 2, 1):
        if fmt[pos:pos + n] in _CONVERSIONS:
            return fmt[pos:pos + n]
    return None


def _format_value(ctx: HelperContext, how: str, bits: int, value: int) -> bytes:
    value &= (1 << bits) - 1
    if how == "d":
        return str(value - (1 << bits) if value >> (bits - 1) else value).encode()
    if how == "u":
        return str(value).encode()
    if how == "x":
        return f"{value:x}".encode()
    if how == "X":
        return f"{value:X}".encode()
    if how == "p":
        return f"0x{value:x}".encode()
    if how == "c":
        return bytes([value])
    with _naming("bpf_trace_printk", "string argument"):
        return ctx.read_cstring(value, TRACE_LIMIT)


def _trace_printk(ctx: HelperContext, a: int, b: int, c: int, d: int, e: int) -> int:
    if b == 0:
        raise ctx.fault("bpf_trace_printk: empty format (fmt_size is 0)")
    with _naming("bpf_trace_printk", "format"):
        ctx.check(a, b)
        # Text past TRACE_LIMIT could never be kept, so a longer format is read only that far.
        fmt = ctx.read(a, min(b, TRACE_LIMIT)).split(b"\0", 1)[0]
    values = [c, d, e]
    used = 0
    out = bytearray()
    pos = 0
    while True:
        k = fmt.find(b"%", pos)
        if k < 0:
            out += fmt[pos:]
            break
        out += fmt[pos:k]
        if fmt[k + 1:k + 2] == b"%":
            out += b"%"
            pos = k + 2
            continue
        conv = _conversion(fmt, k + 1)
        if conv is None:
            bad = fmt[k:k + 4].decode("latin-1")
            raise ctx.fault(f"bpf_trace_printk: unknown conversion {bad!r} at byte {k} of the "
                            "format (supported: %d %i %u %x %X %ld %lu %lx %lld %llu %llx %p "
                            "%s %c %%)")
        if used == _TRACE_ARGS:
            raise ctx.fault(f"bpf_trace_printk: more than {_TRACE_ARGS} conversions in the "
                            "format")
        bits, how = _CONVERSIONS[conv]
        out += _format_value(ctx, how, bits, values[used])
        used += 1
        pos = k + 1 + len(conv)
    return ctx.run.emit(bytes(out))


_FROB = bytes(x ^ 42 for x in range(256))


class _naming:
    """Re-raises a helper's out-of-bounds access naming the helper and the operand, so the
    message says which pointer and length of the call were wrong (address, size and the mapped
    regions stay in the error)."""

    def __init__(self, helper: str, operand: str):
        self.what = f"{helper} {operand}"

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ExecutionError) and exc.kind == "out_of_bounds":
            raise type(exc)(exc.kind, f"{self.what} out of bounds ({exc.message})", exc.pc,
                            address=exc.address, size=exc.size, regions=exc.regions,
                            instructions=exc.instructions, write=exc.write,
                            depth=exc.depth) from None


#: The helpers of the conformance corpus (ids 0..5), registered for its tests.
CONFORMANCE_HELPERS = HelperRegistry([
    Helper(0, "gather_bytes", _gather_bytes, "pack the low bytes of r1..r5 into r0"),
    Helper(1, "memfrob", _memfrob, "XOR r2 bytes at r1 with 42"),
    Helper(2, "no_op", _no_op, "return 0"),
    Helper(3, "sqrti", _sqrti, "integer square root of r1"),
    Helper(4, "strcmp_ext", _strcmp_ext, "strcmp of the strings at r1 and r2"),
    Helper(5, "unwind", _unwind, "return r1; when r1 is 0 the program stops with r0 = 0"),
])

#: Helpers a Hermes device offers to every program (its own ids above the corpus's range;
#: bpf_trace_printk keeps Linux's id so that programs written for Linux print unchanged).
DEVICE_HELPERS = HelperRegistry([
    Helper(0x1000, "hermes_memset", _memset, "memset(r1, r2, r3); returns r1"),
    Helper(0x1001, "hermes_memcpy", _memcpy, "memcpy(r1, r2, r3); returns r1"),
    Helper(HELPER_SET_OUTPUT, "hermes_set_output", _set_output,
           "declare the run's output length r1 (at most the data window); returns 0"),
    Helper(HELPER_TRACE_PRINTK, "bpf_trace_printk", _trace_printk,
           "print the format at r1 (r2 bytes) with values r3..r5; returns the bytes kept"),
])


def merged(*registries: HelperRegistry) -> HelperRegistry:
    """A registry holding every helper of ``registries`` (ids and names must not clash)."""
    out = HelperRegistry()
    for reg in registries:
        for h in reg.values():
            out.register(h)
    return out

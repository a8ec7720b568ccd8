"""Python references of the C example offloads: inputs, arguments and expected results.

Loaded by path (``hermes demo``, tests/test_examples.py); it imports nothing from Hermes so the
references stay independent of the code they check. README.md describes the run contract the
examples are written for.
"""
from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Size of the device's data slot: the largest window a run can have.
SLOT_SIZE = 1 << 20
#: Folder of the C sources.
EXAMPLES_DIR = Path(__file__).resolve().parent

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Case:
    """One run: the input bytes, the run's arguments (arg0..arg2) and the window size (``None``:
    the input's length)."""

    data: bytes
    args: tuple[int, ...] = ()
    size: int | None = None


@dataclass(frozen=True)
class Example:
    """One offload: its C source, how to make a run of it, and what the run must produce.

    ``make_case(rng, n)`` returns a ``Case`` of an ``n``-byte input; ``expected(case)`` returns
    ``(r0, output)``, the exact bytes the run's output must be (``Result.data``). ``max_input`` is
    the largest input whose window fits the slot.
    """

    name: str
    c_file: str
    make_case: Callable[[random.Random, int], Case]
    expected: Callable[[Case], tuple[int, bytes]]
    max_input: int
    description: str

    @property
    def source(self) -> Path:
        """Path of the C source."""
        return EXAMPLES_DIR / self.c_file


def align8(n: int) -> int:
    """``n`` rounded up to a multiple of 8."""
    return (n + 7) // 8 * 8


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def _plain_case(rng: random.Random, n: int) -> Case:
    return Case(_random_bytes(rng, n))


# --- bytecount ---------------------------------------------------------------------------------
def _bytecount_case(rng: random.Random, n: int) -> Case:
    value = rng.randrange(256)
    # a skewed alphabet so the counted value is frequent enough to matter
    alphabet = bytes([value, rng.randrange(256), rng.randrange(256), rng.randrange(256)])
    body = bytes(alphabet[b & 3] if b & 4 else b for b in _random_bytes(rng, n))
    # only the low 8 bits of arg0 count: the high ones are noise the program must ignore
    return Case(body, (value | rng.getrandbits(56) << 8,))


def _bytecount_expected(case: Case) -> tuple[int, bytes]:
    return case.data.count(case.args[0] & 0xFF), case.data


# --- newlines ----------------------------------------------------------------------------------
def _text(rng: random.Random, n: int, words: list[bytes], extra: bytes = b"") -> bytes:
    out = bytearray()
    while len(out) < n:
        line = [rng.choice(words) for _ in range(rng.randrange(0, 8))]
        if extra and rng.random() < 0.3:
            line.insert(rng.randrange(len(line) + 1), extra)
        out += b" ".join(line) + (b"\n" if rng.random() < 0.95 else b"\t")
    return bytes(out[:n])


_WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"error", b"warning", b"hermes", b"ebpf",
          b"offload", b"device", b"42", b"x", b""]


def _newlines_case(rng: random.Random, n: int) -> Case:
    return Case(_text(rng, n, _WORDS))


# --- fnv1a -------------------------------------------------------------------------------------
def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


# --- crc32 -------------------------------------------------------------------------------------
def _crc32_case(rng: random.Random, n: int) -> Case:
    # half the runs continue a CRC of earlier bytes (arg0), as pieces of one stream do
    return Case(_random_bytes(rng, n), (rng.getrandbits(32) if rng.random() < 0.5 else 0,))


# --- histogram ---------------------------------------------------------------------------------
#: Bytes of the histogram's output: 256 u32 counters.
HISTOGRAM_BYTES = 256 * 4


def _histogram_case(rng: random.Random, n: int) -> Case:
    # a few hot values on top of uniform noise
    hot = [rng.randrange(256) for _ in range(3)]
    body = bytes(hot[b % 3] if b < 64 else b for b in _random_bytes(rng, n))
    return Case(body, (), align8(n) + HISTOGRAM_BYTES)


def _histogram_expected(case: Case) -> tuple[int, bytes]:
    bins = [0] * 256
    for b in case.data:
        bins[b] += 1
    return len(case.data), struct.pack("<256I", *bins)


# --- grep --------------------------------------------------------------------------------------
_PATTERNS = [b"hermes", b"err", b"a", b"offload device", b"ebpf\tx"]


def _grep_case(rng: random.Random, n: int) -> Case:
    pattern = rng.choice(_PATTERNS)
    raw = pattern.ljust(16, b"\0")
    return Case(_text(rng, n, _WORDS, pattern),
                (len(pattern), *struct.unpack("<QQ", raw)))


def _grep_expected(case: Case) -> tuple[int, bytes]:
    m = case.args[0]
    if not 1 <= m <= 16:
        return 0, case.data
    pattern = struct.pack("<QQ", *case.args[1:3])[:m]
    return sum(pattern in line for line in case.data.split(b"\n")), case.data


# --- filter ------------------------------------------------------------------------------------
def _filter_case(rng: random.Random, n: int) -> Case:
    lo = rng.randrange(0, 1000)
    hi = lo + rng.randrange(0, 400)
    recs = b"".join(struct.pack("<QQ", rng.randrange(0, 1400) if rng.random() < 0.9
                                else rng.getrandbits(64), rng.getrandbits(64))
                    for _ in range(n // 16))
    # an input that is not a whole number of records: the partial one is never kept
    return Case(recs + _random_bytes(rng, n % 16), (lo, hi))


def _filter_expected(case: Case) -> tuple[int, bytes]:
    data, (lo, hi) = case.data, case.args
    keep = [data[i:i + 16] for i in range(0, len(data) - 15, 16)
            if lo <= struct.unpack_from("<Q", data, i)[0] <= hi]
    return len(keep), b"".join(keep)


# --- stats -------------------------------------------------------------------------------------
#: Bytes of the stats' output: {count, sum, min, max, calls} as u64.
STATS_BYTES = 5 * 8


def _stats_case(rng: random.Random, n: int) -> Case:
    return Case(_random_bytes(rng, n), (), max(n, STATS_BYTES))


def _stats_expected(case: Case) -> tuple[int, bytes]:
    words = struct.unpack_from(f"<{len(case.data) // 4}I", case.data)
    result = (len(words), sum(words), min(words, default=0xFFFFFFFF), max(words, default=0),
              len(words))
    return len(words), struct.pack("<5Q", *result)


EXAMPLES: tuple[Example, ...] = (
    Example("bytecount", "bytecount.c", _bytecount_case, _bytecount_expected, SLOT_SIZE,
            "count the input bytes equal to arg0"),
    Example("newlines", "newlines.c", _newlines_case,
            lambda c: (c.data.count(b"\n"), c.data), SLOT_SIZE, "count the '\\n' bytes"),
    Example("fnv1a", "fnv1a.c", _plain_case, lambda c: (fnv1a64(c.data), c.data), SLOT_SIZE,
            "64-bit FNV-1a hash of the input"),
    Example("crc32", "crc32.c", _crc32_case,
            lambda c: (zlib.crc32(c.data, c.args[0]), c.data), SLOT_SIZE,
            "CRC-32 with a lookup table in .rodata, continuing the CRC in arg0"),
    Example("histogram", "histogram.c", _histogram_case, _histogram_expected,
            SLOT_SIZE - HISTOGRAM_BYTES, "256-bin byte histogram as the output"),
    Example("grep", "grep.c", _grep_case, _grep_expected, SLOT_SIZE,
            "count lines containing a pattern passed in the arguments"),
    Example("filter", "filter.c", _filter_case, _filter_expected, SLOT_SIZE,
            "keep 16-byte records with key in [arg0, arg1], compacted, as the output"),
    Example("stats", "stats.c", _stats_case, _stats_expected, SLOT_SIZE,
            "count/sum/min/max of u32 words via a bpf-to-bpf call, .bss counter"),
)

BY_NAME = {e.name: e for e in EXAMPLES}

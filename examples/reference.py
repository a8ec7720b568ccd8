"""Python references of the C example offloads: input generators and expected results.

Loaded by path (``hermes demo``, tests/test_examples.py); it imports nothing from Hermes so the
references stay independent of the code they check. See README.md for the data-slot convention.
"""
from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: Size of the device's data slot; r2 at entry.
SLOT_SIZE = 1 << 20
#: Bytes of header before the payload: u64 length + seven u64 parameters.
HDR_SIZE = 64
#: Folder of the C sources.
EXAMPLES_DIR = Path(__file__).resolve().parent

MASK64 = (1 << 64) - 1


def out_offset(length: int) -> int:
    """Where a program writes its output: right after the payload, 8-byte aligned."""
    return HDR_SIZE + (length + 7) // 8 * 8


def header(length: int, *params: int) -> bytes:
    """The 64-byte header: payload length and up to seven u64 parameters."""
    vals = list(params) + [0] * (7 - len(params))
    return struct.pack("<8Q", length, *vals)


@dataclass(frozen=True)
class Example:
    """One offload: its C source, how to make an input, and what the run must produce.

    ``expected(input)`` returns ``(r0, out)``: after the run, the data slot must start with
    ``out`` (``None``: only r0 is checked). ``max_payload`` is the largest payload whose input
    and output fit the slot.
    """

    name: str
    c_file: str
    make_input: Callable[[random.Random, int], bytes]
    expected: Callable[[bytes], "tuple[int, bytes | None]"]
    max_payload: int
    description: str

    @property
    def source(self) -> Path:
        """Path of the C source."""
        return EXAMPLES_DIR / self.c_file


def _payload(data: bytes) -> bytes:
    (length,) = struct.unpack_from("<Q", data, 0)
    return data[HDR_SIZE:HDR_SIZE + length]


def _param(data: bytes, i: int) -> int:
    return struct.unpack_from("<Q", data, 8 + 8 * i)[0]


def _random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


# --- bytecount ---------------------------------------------------------------------------------
def _bytecount_input(rng: random.Random, n: int) -> bytes:
    value = rng.randrange(256)
    # a skewed alphabet so the counted value is frequent enough to matter
    alphabet = bytes([value, rng.randrange(256), rng.randrange(256), rng.randrange(256)])
    body = bytes(rng.choice(alphabet) if rng.random() < 0.5 else rng.randrange(256) for _ in range(n)) \
        if n < 4096 else bytes(alphabet[b & 3] if b & 4 else b for b in _random_bytes(rng, n))
    return header(n, value) + body


def _bytecount_expected(data: bytes) -> tuple[int, bytes | None]:
    return _payload(data).count(_param(data, 0) & 0xFF), None


# --- fnv1a -------------------------------------------------------------------------------------
def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def _plain_input(rng: random.Random, n: int) -> bytes:
    return header(n) + _random_bytes(rng, n)


# --- crc32 -------------------------------------------------------------------------------------
def _crc32_expected(data: bytes) -> tuple[int, bytes | None]:
    return zlib.crc32(_payload(data)), None


# --- histogram ---------------------------------------------------------------------------------
def _histogram_input(rng: random.Random, n: int) -> bytes:
    # a few hot values on top of uniform noise
    hot = [rng.randrange(256) for _ in range(3)]
    raw = _random_bytes(rng, n)
    return header(n) + bytes(hot[b % 3] if b < 64 else b for b in raw)


def _histogram_expected(data: bytes) -> tuple[int, bytes | None]:
    payload = _payload(data)
    bins = [0] * 256
    for b in payload:
        bins[b] += 1
    off = out_offset(len(payload))
    return len(payload), data.ljust(off, b"\0")[:off] + struct.pack("<256I", *bins)


# --- grep --------------------------------------------------------------------------------------
_WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"error", b"warning", b"hermes", b"ebpf",
          b"offload", b"device", b"42", b"x", b""]


def _grep_input(rng: random.Random, n: int) -> bytes:
    pattern = rng.choice([b"hermes", b"err", b"a", b"offload device", b"ebpf\tx"])
    out = bytearray()
    while len(out) < n:
        words = [rng.choice(_WORDS) for _ in range(rng.randrange(0, 8))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), pattern)
        out += b" ".join(words) + (b"\n" if rng.random() < 0.95 else b"\t")
    body = bytes(out[:n])
    # the pattern fills param[1..6] (header bytes 16..63)
    return struct.pack("<QQ", n, len(pattern)) + pattern.ljust(48, b"\0") + body


def _grep_expected(data: bytes) -> tuple[int, bytes | None]:
    m = _param(data, 0)
    if not 1 <= m <= 48:
        return 0, None
    pattern = data[16:16 + m]
    return sum(pattern in line for line in _payload(data).split(b"\n")), None


# --- filter ------------------------------------------------------------------------------------
def _filter_input(rng: random.Random, n: int) -> bytes:
    n -= n % 16
    lo = rng.randrange(0, 1000)
    hi = lo + rng.randrange(0, 400)
    recs = b"".join(struct.pack("<QQ", rng.randrange(0, 1400) if rng.random() < 0.9
                                else rng.getrandbits(64), rng.getrandbits(64))
                    for _ in range(n // 16))
    return header(n, lo, hi) + recs


def _filter_expected(data: bytes) -> tuple[int, bytes | None]:
    payload = _payload(data)
    lo, hi = _param(data, 0), _param(data, 1)
    keep = [payload[i:i + 16] for i in range(0, len(payload) - 15, 16)
            if lo <= struct.unpack_from("<Q", payload, i)[0] <= hi]
    kept = b"".join(keep)
    return len(keep), data[:HDR_SIZE] + kept + payload[len(kept):]


# --- stats -------------------------------------------------------------------------------------
def _stats_expected(data: bytes) -> tuple[int, bytes | None]:
    payload = _payload(data)
    words = struct.unpack_from(f"<{len(payload) // 4}I", payload)
    result = (len(words), sum(words), min(words, default=0xFFFFFFFF), max(words, default=0),
              len(words))
    off = out_offset(len(payload))
    return len(words), data.ljust(off, b"\0")[:off] + struct.pack("<5Q", *result)


def _stats_input(rng: random.Random, n: int) -> bytes:
    return header(n) + _random_bytes(rng, n)


EXAMPLES: tuple[Example, ...] = (
    Example("bytecount", "bytecount.c", _bytecount_input, _bytecount_expected,
            SLOT_SIZE - HDR_SIZE - 8, "count the payload bytes equal to param[0]"),
    Example("fnv1a", "fnv1a.c", _plain_input, lambda d: (fnv1a64(_payload(d)), None),
            SLOT_SIZE - HDR_SIZE - 8, "64-bit FNV-1a hash of the payload"),
    Example("crc32", "crc32.c", _plain_input, _crc32_expected,
            SLOT_SIZE - HDR_SIZE - 8, "CRC-32 with a lookup table in .rodata"),
    Example("histogram", "histogram.c", _histogram_input, _histogram_expected,
            SLOT_SIZE - HDR_SIZE - 1024 - 8, "256-bin byte histogram written after the payload"),
    Example("grep", "grep.c", _grep_input, _grep_expected,
            SLOT_SIZE - HDR_SIZE - 8, "count lines containing a pattern"),
    Example("filter", "filter.c", _filter_input, _filter_expected,
            SLOT_SIZE - HDR_SIZE - 8, "keep 16-byte records with key in [lo, hi], compacted"),
    Example("stats", "stats.c", _stats_input, _stats_expected,
            SLOT_SIZE - HDR_SIZE - 40 - 8,
            "count/sum/min/max of u32 words via a bpf-to-bpf call, .bss counter"),
)

BY_NAME = {e.name: e for e in EXAMPLES}

"""Device-side command helpers: a command's response and error code, the compiled-program cache."""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from .. import regs as R
from ..engine.cache import DEFAULT_CACHE_BYTES, LoadedCache
from ..engine.isa import jump_target
from ..errors import BudgetExceeded, ExecutionError, ProgramError

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
ELF_MAGIC = b"\x7fELF"

#: Programs up to this many bytes are cached under their own bytes, longer ones under SHA-256.
SHORT_KEY = 512


#: ``response(command_id, status, value=0)``: the 16-byte command response (id, status,
#: reserved bytes, then the 64-bit value).
response = R.Response.pack_fields


#: ``out_fields(instructions, output_len, trace_len, run_ns, fault_address, fault_size,
#: fault_flags, trace_dropped, run_budget)``: EHCMDCTXn's OUT bytes (from CTX_INSNS on).
out_fields = R.RunContextOut.pack_fields


def context_in(bar0: bytearray, offset: int) -> tuple:
    """The IN fields of the run context at ``offset`` of ``bar0`` as (input_len, window, args
    (three), budget, entry, reserved)."""
    input_len, window, a0, a1, a2, budget, entry, reserved = R.RunContextIn.fields(bar0, offset)
    return input_len, window, (a0, a1, a2), budget, entry, reserved


def error_code(exc: BaseException) -> int:
    """The status 0x05 error code describing ``exc`` (a load or run failure)."""
    if isinstance(exc, ProgramError):
        return R.ErrorKind.LOAD.pack(exc.index)
    if isinstance(exc, BudgetExceeded):
        return R.ErrorKind.BUDGET.pack(exc.pc)
    if isinstance(exc, ExecutionError):
        return R.ErrorKind.of(exc.kind).pack(exc.pc)
    return R.ErrorKind.INTERNAL.pack(0)


#: A program's ``work_bound``: (instruction slots when no run can execute an instruction twice,
#: else None; helper calls in the code).
Work = tuple[int | None, int]
_NO_BOUND: Work = (None, 0)


def work_bound(program: object) -> Work:
    """How much work one run of ``program`` (an ``hermes.engine.Program``) can do at most,
    from its code alone: a program without backward jumps and without calls of its own
    functions executes each instruction slot at most once. Helper calls are counted apart
    because their work grows with the data window. Anything else (None, no code) is unbounded.
    """
    insns = getattr(program, "insns", None)
    if not isinstance(insns, list):
        return _NO_BOUND
    calls = 0
    for i, insn in enumerate(insns):
        if insn is None:
            continue
        op = insn.op
        if op.is_local_call:
            return _NO_BOUND
        if op.is_call:
            calls += 1
            continue
        target = jump_target(insn, i)
        if target is not None and target <= i:
            return _NO_BOUND
    return len(insns), calls


class ProgramCache:
    """LRU of loaded programs keyed by (content of the slot bytes, entry symbol, executor name),
    bounded by ``size`` entries and ``max_bytes`` estimated host bytes (``Program.host_bytes``).

    ``loader(code, entry)`` loads the bytes with ELF entry symbol ``entry`` (0: the default).

    Values are an executable or the int error code the bytes failed to load with, so neither a
    good nor a bad program is decoded twice. Thread-safe; two engines missing on the same program
    at once may both load it (harmless, the second result wins). The device clears it when it
    closes.
    """

    def __init__(self, size: int, loader: Callable[[bytes, int], object], *,
                 max_bytes: int = DEFAULT_CACHE_BYTES):
        self.size = size
        self._loader = loader
        self._lock = threading.Lock()
        self._lru: LoadedCache[tuple[object, Work]] = LoadedCache(size, max_bytes)
        self.hits = 0
        self.misses = 0

    def get(self, code: bytes, executor: str, entry: int = 0) -> object:
        """The executable (or int error code) for program bytes ``code`` entered at ELF symbol
        ``entry`` (0: the default entry) on ``executor``."""
        # Short programs are their own key (hashing 16 bytes beats SHA-256 on the hot path);
        # longer ones are keyed by digest so the cache does not hold megabytes of keys. The
        # length in the key keeps the two kinds apart.
        n = len(code)
        digest = code if n <= SHORT_KEY else hashlib.sha256(code).digest()
        key = (n, digest, entry, executor)
        entry_ = self._lru.get(key)
        if entry_ is not None:
            self.hits += 1         # approximate under concurrency; diagnostics only
            return entry_[0]
        with self._lock:
            self.misses += 1
        loaded = self._loader(code, entry)
        program = getattr(loaded, "program", None)
        cost = len(digest) + (program.host_bytes if program is not None else 0)
        self._lru.put(key, (loaded, work_bound(program)), cost)
        return loaded

    def lookup(self, code: bytes, executor: str, entry: int = 0) -> tuple[object, Work] | None:
        """What ``get`` returns for a program loaded already, with its ``work_bound``, counted
        as a hit; None (and nothing counted) when it is not cached, so loading is left to a
        later ``get``."""
        n = len(code)
        digest = code if n <= SHORT_KEY else hashlib.sha256(code).digest()
        found = self._lru.get((n, digest, entry, executor))
        if found is not None:
            self.hits += 1
        return found

    def clear(self) -> None:
        """Forget every cached program."""
        self._lru.clear()

    @property
    def bytes(self) -> int:
        """Estimated host bytes of the programs held."""
        return self._lru.bytes

    def __len__(self) -> int:
        return len(self._lru)

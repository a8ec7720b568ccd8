"""The fast interpreter: basic blocks translated once into Python loops over local registers.

Rules of the translation (``Interpreter._compile``), which the run loop relies on:

* The program is cut into the basic blocks of ``cfg.block_leaders``; the blocks are grouped in
  order into chunks of at most ``CHUNK`` instructions, and each chunk becomes one Python
  function, compiled on its own the first time a run enters it (so the source of one code
  object is bounded, load time is linear in program size, and code no run reaches is never
  compiled). Registers are that function's local variables.
* Inside a chunk a ``while True`` loop dispatches on the block number ``b`` through a binary
  tree of comparisons. The arm of block R runs R and then follows control inline into its
  successors, each at most once per path and ``INLINE`` instructions in all: an edge back to R
  is a ``continue`` of R's own loop, an edge to a loop header (a target of a backward edge) or
  past the trace sets ``b`` and goes back to the dispatch, and those blocks get traces of their
  own. Only a loop header's trace copies blocks; any other inlines only blocks with one
  predecessor, and in all copies are bounded by the program's size. So a loop that fits in its
  header's trace runs as one Python loop without any dispatch. A chunk holds the traces of its
  roots only: the entry, function starts, return points, its first block and every block a
  trace sends to the dispatch. A block inside a trace is entered on its own only after a limit
  stopped the trace before it; then it runs in a function of its own, compiled when needed.
* Every block, inline or not, starts with its budget update exactly where every engine charges
  it: the chunk counts down ``left``, the instructions before the next limit (a one-digit int,
  the cheapest kind). A block that cannot fail (no memory access, no call) and goes straight on
  to an inlined block counts that block in its own update, as nothing can see ``left`` in
  between. Only the first block of an arm compares it: with the most instructions the blocks
  inlined after it can take on one pass (``_TraceWriter.need``), so no block inside the trace
  can pass the limit. When the test fails the chunk returns to the run loop, which raises
  ``BudgetExceeded`` if the block itself does not fit, or polls the ``Cancel`` flag, and
  re-enters; if the trace still cannot finish before the limit, the block runs alone in a
  one-block function (``Interpreter._alone``), which tests only its own count, so every stop
  falls on the block the reference stops at (a loop's fast version tests the limit once for
  all its passes, see below). Reaching a limit, entering another chunk and
  leaving the entry function are the only returns.
* Registers hold their value in [0, 2**64) at every block boundary and call, if they are live
  (``Interpreter._liveness``: read on some path before being written; a local call needs all of
  them, an ``exit`` r0 in the entry function and r0..r5 in any other, when no call enters the
  entry function and no jump leaves a function). Nothing else sees a register: a fault reports
  its pc, address and kind, and a budget stop falls on a block boundary. Inside a block
  (``_Body``) a 64-bit add, sub, mul, lsh, rsh, and, or, xor or mov (and an lddw) is a pending
  expression, not a statement, when the block reads its value once and it is dead after the
  block, or it is a copy of a register or a constant; a later step, the address of a load or
  store, or a stored value reads the expression itself, and a value no one reads is never
  computed. A pending value is written before any statement overwrites a local it reads, and the
  block's live values at its end. Expressions are congruent to the value modulo 2**64 and carry
  the range interval arithmetic proves of them: from constants, load sizes, 32-bit results,
  masks and shifts; a register an access succeeded through lies in ``_ADDR``; a block that no
  call, return or function entry reaches starts from the widest ranges its predecessors leave on
  the edges to it, as an unsigned 64-bit compare narrows them (``_refine``; for ``jeq``/``jne``
  going the unequal way, only when one side is a single value at an end of the other's range),
  first from earlier blocks only, then, for a loop header, once more with its back edges (the
  ranges of one translation hold for any other: they compute the same values). A value is
  written as it is when in range, corrected by a compare when it can only have wrapped once
  (cheaper than masking a many-digit int), else masked; an rsh takes an exact operand, and
  ``(x << k) >> k`` is ``x`` masked. Adding or subtracting a constant of 2**63 or more is
  subtracting or adding its small negation. An address not in [0, 2**64) fails the inline range
  tests, and the general lookup masks it. A block computes ``_i`` (the address) again only when
  it changed.
* A loop of one block that moves one register r by a constant c and goes on while r is on
  one side of a bound x the block does not write (``_version``: r below x for c > 0, above
  for c < 0, or not x for a step of one; nothing calls and every access that is not proven
  in the stack is through r) has a fast version in its trace (``_TraceWriter.versioned``).
  On each entry a guard computed from r and x proves that r moves monotonically to x without
  wrapping, so the loop makes at most a known number of passes, that ``left`` covers them
  all and what the trace needs after them, and that the first and last address of every
  access lie in the data slot; then the passes run without the limit test and with their
  accesses indexing the slot directly, and ``left`` is charged the passes made (r's distance
  from its value on entry, over c) when the loop ends: none of those statements can fail,
  so nothing sees ``left`` in between. Otherwise the passes run as in any trace, so a fault
  or a budget stop falls where the reference's does. Only a chunk's arm has it, never a
  block run alone.
* Any other loop from a header h through at most ``_CYCLE_BLOCKS`` later blocks of its chunk
  back to h, each going on to the next and leaving the blocks up to the last edge back to h
  otherwise (``_cycle``), has a fast version too (``_cycle_version``) when one register r is
  written once in it, by adding a constant c, nothing calls, every access not proven in the
  stack is through an affine address of the pass (invariant registers plus a multiple of r
  plus a constant, plus a value in a known interval such as a loaded byte), and some branch
  goes on while an affine r + k is below (c > 0) or above (c < 0) an invariant, or is not it
  for a step of one. Its guard proves, from the values at the first pass and at ``_n``, the
  fewest passes such branches allow, that r and every such r + k stay in [0, 2**64) (they
  never wrap, so they are the integers r0 + j c (+ k)), that the first and last address of
  every access lie in the data slot, and that ``left`` covers ``_n + 1`` passes; an access
  then indexes the slot with its base's expression when that is exact, else with its
  affine form over the locals (never a congruent pending value), and none with a range
  term and an inexact base has one. Each edge out charges the passes before it and the
  blocks of this one up to it, counted from r's distance to its value on entry, and the
  translation knows r in the range the guard proved. Failing the guard, the trace runs in
  a loop of its own (``_TraceWriter.cycled``).
* Local calls push (return block, r6..r10) on a frame list and move r10 and the stack's lower
  bound down one frame; ``exit`` pops it. A chunk saves ``left`` before any exception leaves it,
  so faults report the same instruction counts as the reference interpreter.
* Memory: a load or store the verifier proved inside the current stack frame indexes the stack
  directly, and so does one of a loop's fast version in the data slot (its guard proved it
  there); any other checks the data slot, then the live stack frames, inline, and falls back to
  a general region lookup (program segments, faults), so every access is bounds-checked against
  the program's own regions only. An aligned 2-, 4- or 8-byte word of the slot or the stack is
  read or written through a memoryview of such words (``D<size>``, ``T<size>``; native order,
  so only on little-endian hosts), cheaper than ``struct``; the run releases the views when it
  ends, so the caller's buffer is never left pinned.
"""
from __future__ import annotations

import bisect
import struct
import sys
import time
from collections.abc import Callable
from typing import Literal

from ..errors import BudgetExceeded, Cancelled, ExecutionError
from . import cfg
from .cancel import Cancel
from .helpers import HelperContext, HelperRegistry, RunState, StopRun
from .isa import Insn
from .memory import (
    DATA_BASE,
    MASK64,
    MAX_CALL_DEPTH,
    STACK_BASE,
    STACK_SIZE,
    STACK_TOP,
    input_region,
    out_of_bounds,
    run_args,
)
from .program import Program
from .result import RunResult
from .verifier import VerifierInfo, verify

W32 = 0xFFFF_FFFF
_UNPACK = {n: struct.Struct(f).unpack_from for n, f in ((2, "<H"), (4, "<I"), (8, "<Q"))}
_PACK = {n: struct.Struct(f).pack_into for n, f in ((2, "<H"), (4, "<I"), (8, "<Q"))}
_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: W32, 8: MASK64}
#: Instructions per chunk (one Python function each): large enough that the loops of real
#: programs stay inside one, small enough that compiling one takes milliseconds.
CHUNK = 1024
#: Instructions a block's trace may inline after the block itself: more saves dispatches, but
#: every block of a chunk carries a trace, so the source grows with it.
INLINE = 48
#: Deepest path of inlined blocks in a trace (bounds the nesting of the generated source).
_DEPTH = 12
#: A run with a ``Cancel`` flag looks at it after at most this many instructions (plus one
#: block): a few milliseconds of interpretation, and no cost at all for runs without a flag.
CANCEL_POLL = 1 << 16
#: Instructions a chunk counts down at most before it returns to the run loop: the count stays a
#: one-digit int, which Python adds and compares fastest.
_STEP = 1 << 29
#: What a chunk returns as the next block when the entry function exits.
_EXIT = -(1 << 62)
_M, _W = str(MASK64), str(W32)
_REGS = "(" + ", ".join(f"r{k}" for k in range(11)) + ")"


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def sdiv(a: int, b: int, bits: int) -> int:
    """RFC 9669 signed division of two ``bits``-wide unsigned values (x/0 = 0, truncating)."""
    mask = (1 << bits) - 1
    a, b = _signed(a & mask, bits), _signed(b & mask, bits)
    if b == 0:
        return 0
    q = abs(a) // abs(b)
    return (-q if (a < 0) != (b < 0) else q) & mask


def smod(a: int, b: int, bits: int) -> int:
    """RFC 9669 signed modulo (x%0 = x; the sign follows the dividend)."""
    mask = (1 << bits) - 1
    a, b = _signed(a & mask, bits), _signed(b & mask, bits)
    if b == 0:
        return a & mask
    r = abs(a) % abs(b)
    return (-r if a < 0 else r) & mask


def bswap(v: int, bits: int) -> int:
    """Reverse the low ``bits`` bits' bytes of ``v`` (the result is zero-extended)."""
    return int.from_bytes((v & ((1 << bits) - 1)).to_bytes(bits // 8, "little"), "big")


def _call_depth(pc: int) -> None:
    raise ExecutionError("call_depth", f"call depth limit of {MAX_CALL_DEPTH} frames exceeded", pc)


_CMP = {"jeq": "==", "jne": "!=", "jgt": ">", "jge": ">=", "jlt": "<", "jle": "<=",
        "jsgt": ">", "jsge": ">=", "jslt": "<", "jsle": "<="}
_BINOP = {"add": "+", "sub": "-", "mul": "*", "or": "|", "and": "&", "xor": "^"}
_ATOMIC_OP = {"add": "+", "or": "|", "and": "&", "xor": "^"}
#: Names every chunk function binds as defaults (locals are faster than globals).
_BOUND = {"U2": _UNPACK[2], "U4": _UNPACK[4], "U8": _UNPACK[8], "P2": _PACK[2], "P4": _PACK[4],
          "P8": _PACK[8], "SDIV": sdiv, "SMOD": smod, "BSWAP": bswap, "CALLDEPTH": _call_depth}


#: Whether the chunks read and write aligned 2-, 4- and 8-byte words of the data slot and the
#: stack through memoryviews of those words (native order, so only on little-endian hosts).
_VIEWS = sys.byteorder == "little" and [struct.calcsize(c) for c in "HIQ"] == [2, 4, 8]
_VIEW = {"DATA": "D", "STK": "T"}
_SHIFT = {2: 1, 4: 2, 8: 3}
_WORD: tuple[tuple[int, Literal["H", "I", "Q"]], ...] = ((2, "H"), (4, "I"), (8, "Q"))
#: The views of a run of a program without word accesses (D2..D8, T2..T8).
_NO_VIEWS: list[memoryview | None] = [None] * 6
#: The most ALU steps written as one expression (bounds the size of its intermediates).
_CHAIN = 6
_FOLD = frozenset(("add", "sub", "mul", "lsh", "rsh", "and", "or", "xor", "mov"))
_ALL = (1 << 11) - 1
#: Registers live at the ``exit`` of a function called by another: r0 and, for a caller that
#: reads them after the call, r1..r5 (r6..r10 come back from the frame).
_CALLEE_EXIT = (1 << 6) - 1
#: The values a register lies in when an access based on it succeeded: every region lies in
#: [DATA_BASE, STACK_TOP) and an offset is a signed 16-bit number.
_ADDR = (DATA_BASE - (1 << 15), STACK_TOP + (1 << 15))


def _folds(insn: Insn) -> bool:
    """Whether ``insn`` is a 64-bit ALU step ``_Body`` keeps as an expression (one of
    ``_FOLD``)."""
    op = insn.op
    return op.is_alu and op.width == 64 and op.sem in _FOLD


def _mask(regs: tuple[int, ...] | list[int] | set[int]) -> int:
    """A bit for each register of ``regs``."""
    m = 0
    for r in regs:
        m |= 1 << r
    return m


def _rw(insn: Insn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The registers ``insn`` reads (once per operand, as ``_Body`` reads them) and writes;
    a local call, ``exit`` and an atomic's writes are left to the caller (see ``_liveness``)."""
    op = insn.op
    src = (insn.src,) if op.source_x else ()
    if op.is_alu:
        return (src if op.sem in ("mov", "movsx") else (insn.dst,) + src), (insn.dst,)
    if op.is_lddw:
        return (), (insn.dst,)
    if op.is_load:
        return (insn.src,), (insn.dst,)
    if op.is_store or op.is_branch:
        return (insn.dst,) + src, ()
    if op.is_atomic:  # what it writes (r0 or src) counts as live before it: conservative
        return (insn.dst, insn.src, 0), ()
    if op.is_call and not op.is_local_call:
        return ((insn.dst,) if op.sem == "callx" else ()) + (1, 2, 3, 4, 5), (0,)
    return (), ()


class _BlockCompiler:
    """Turns the instructions of a basic block into Python statements over locals r0..r10.

    Besides the registers the statements use the chunk function's locals: ``DATA`` (the data
    slot) and ``DL<size>`` (its length minus the access size), ``STK`` (the stack of every frame)
    and ``sl`` (the lowest live stack byte, as an offset from ``DATA_BASE``), ``LD``/``ST`` (the
    general checked access), ``HC`` (helper calls) and the temporaries ``_i``, ``_t``, ``_o``.
    """

    def __init__(self, stack_safe: dict[int, int]):
        self.stack_safe = stack_safe

    def alu(self, insn: Insn, rd: str | None = None, rs: str | None = None) -> list[str]:
        """Statements of an ALU instruction; ``rd`` and ``rs`` are expressions of the
        destination's and the source's values when those are not the registers themselves
        (pending values, see ``_Body``)."""
        op = insn.op
        sem, w = op.sem, op.width
        d = f"r{insn.dst}"
        dr = rd or d
        mask = _M if w == 64 else _W
        if op.source_x:
            s = rs or (dr if insn.src == insn.dst else f"r{insn.src}")
        else:
            s = str(insn.imm & (MASK64 if w == 64 else W32))
        sh = 63 if w == 64 else 31
        if sem in _BINOP:
            if sem in ("or", "and", "xor") and w == 64:
                return [f"{d} = {dr} {_BINOP[sem]} {s}"]
            # a compare is cheaper than masking a multi-digit int, and mostly nothing wraps;
            # adding 2**64 - k is subtracting k (C's "x += -k"), and the small k is cheaper
            if w == 64 and not op.source_x and sem in ("add", "sub") and int(s) >> 63:
                sem, s = ("sub" if sem == "add" else "add"), str((1 << 64) - int(s))
            if sem == "add" and (w == 64 or rd is None and rs is None):
                return [f"{d} = {dr} + {s}", f"if {d} > {mask}: {d} &= {mask}"]
            if sem == "add":  # a congruent operand (a pending value) may be negative
                return [f"{d} = ({dr} + {s}) & {mask}"]
            if sem == "sub" and w == 64:
                return [f"{d} = {dr} - {s}", f"if {d} < 0: {d} += {1 << 64}"]
            return [f"{d} = ({dr} {_BINOP[sem]} {s}) & {mask}"]
        if sem == "mov":
            return [f"{d} = {s}" if (w == 64 or not op.source_x) else f"{d} = {s} & {_W}"]
        if sem == "movsx":
            bits = dict(op.match)["off"]
            half = 1 << (bits - 1)
            return [f"{d} = ((({s} & {(1 << bits) - 1}) ^ {half}) - {half}) & {mask}"]
        if sem == "neg":
            return [f"{d} = -{dr} & {mask}"]
        dv = dr if w == 64 else f"({dr} & {_W})"
        sv = s if (w == 64 or not op.source_x) else f"({s} & {_W})"
        if sem in ("lsh", "rsh", "arsh"):
            amt = f"({s} & {sh})" if op.source_x else str(int(s) & sh)
            if sem == "lsh":
                return [f"{d} = ({dr} << {amt}) & {mask}"]
            if sem == "rsh":
                return [f"{d} = {dv} >> {amt}"]
            sign = 1 << (w - 1)
            return [f"{d} = ((({dv} ^ {sign}) - {sign}) >> {amt}) & {mask}"]
        if sem == "div":
            if not op.source_x:
                return [f"{d} = {dv} // {s}" if int(s) else f"{d} = 0"]
            return [f"_t = {sv}", f"{d} = {dv} // _t if _t else 0"]
        if sem == "mod":
            if not op.source_x:
                return [f"{d} = {dv} % {s}" if int(s) else f"{d} = {dv}"]
            return [f"_t = {sv}", f"{d} = {dv} % _t if _t else {dv}"]
        if sem == "sdiv":
            return [f"{d} = SDIV({dr}, {s}, {w})"]
        if sem == "smod":
            return [f"{d} = SMOD({dr}, {s}, {w})"]
        if sem == "le":
            return [f"{d} = {dr}"] if w == 64 else [f"{d} = {dr} & {(1 << w) - 1}"]
        if sem in ("be", "bswap"):
            if w == 16:
                return [f"{d} = (({dr} & 255) << 8) | (({dr} >> 8) & 255)"]
            return [f"{d} = BSWAP({dr}, {w})"]
        raise AssertionError(sem)  # pragma: no cover - the table has no other ALU sem

    def cond(self, insn: Insn) -> str:
        op = insn.op
        w = op.width
        d = f"r{insn.dst}"
        if op.source_x:
            s = f"r{insn.src}"
            if w == 32:
                s = f"({s} & {_W})"
        else:
            s = str(insn.imm & (MASK64 if w == 64 else W32))
        if w == 32:
            d = f"({d} & {_W})"
        if op.sem == "jset":
            return f"{d} & {s}"
        if op.signed:
            sign = 1 << (w - 1)
            s = str(int(s) ^ sign) if not op.source_x else f"({s} ^ {sign})"
            d = f"({d} ^ {sign})"
        return f"{d} {_CMP[op.sem]} {s}"

    @staticmethod
    def _get(buf: str, index: str, size: int, aligned: str | bool) -> str:
        """The value of ``size`` bytes at ``buf[index]``: through the buffer's view of
        ``size``-byte words (``D<size>``, ``T<size>``) when ``aligned`` (a condition, or known
        now) holds, else unpacked."""
        if size == 1:
            return f"{buf}[{index}]"
        slow = f"U{size}({buf}, {index})[0]"
        if not _VIEWS or aligned is False:
            return slow
        word = f"{_VIEW[buf]}{size}[({index}) >> {_SHIFT[size]}]"
        return word if aligned is True else f"{word} if {aligned} else {slow}"

    @staticmethod
    def _put(buf: str, index: str, size: int, value: str, aligned: str | bool) -> list[str]:
        """Statements storing ``value`` at ``buf[index]`` (see ``_get``)."""
        if size == 1:
            return [f"{buf}[{index}] = {value}"]
        slow = f"P{size}({buf}, {index}, {value})"
        if not _VIEWS or aligned is False:
            return [slow]
        word = f"{_VIEW[buf]}{size}[({index}) >> {_SHIFT[size]}] = {value}"
        return [word] if aligned is True else [f"if {aligned}: {word}", f"else: {slow}"]

    @staticmethod
    def _checked(base: str, off: int, size: int, act: Callable[[str, str, str], list[str]],
                 slow: Callable[[str], str]) -> list[str]:
        """An access at ``base + off`` (``base`` an expression congruent to the address modulo
        2**64: one outside [0, 2**64) fails both range tests, and the general lookup masks it):
        ``act(buffer, index, aligned)`` when it lies in the data slot or a live stack frame, else
        ``slow(address)`` (the general lookup, which faults). Both buffers start on a multiple
        of 8 bytes, so ``_i`` tells the alignment."""
        aligned = f"not _i & {size - 1}"
        lines = [f"_i = {base} + {off - DATA_BASE}"]
        for test, buf, index in (
                (f"if 0 <= _i <= DL{size}", "DATA", "_i"),
                (f"elif sl <= _i <= {STACK_TOP - size - DATA_BASE}", "STK",
                 f"_i + {DATA_BASE - STACK_BASE}")):
            body = act(buf, index, aligned)
            if len(body) == 1:
                lines.append(f"{test}: {body[0]}")
            else:
                lines += [f"{test}:"] + [" " + line for line in body]
        return lines + [f"else: {slow(f'(_i + {DATA_BASE}) & {_M}')}"]

    @staticmethod
    def _direct(base: str, off: int, size: int, act: Callable[[str, str, str | bool], list[str]],
                inline: bool) -> list[str]:
        """An access at ``base + off`` known to lie in the data slot (``base`` then the address
        itself): ``_i = ...`` and ``act(buffer, index, aligned)``, or with ``inline`` for a
        byte the index written in the access."""
        if inline and size == 1:
            return act("DATA", f"{base} + {off - DATA_BASE}", True)
        return [f"_i = {base} + {off - DATA_BASE}"] + act("DATA", "_i", f"not _i & {size - 1}")

    def load(self, insn: Insn, pc: int, base: str | None = None,
             direct: int = 0) -> list[str]:
        """Statements of a load; ``base``, when given, is what the address register would
        hold (see ``_checked``), which the load then overwrites without it being written;
        ``direct`` is 1 or 2 for an access known to lie in the data slot (2: inline, see
        ``_direct``)."""
        size, dst = insn.op.width, f"r{insn.dst}"
        proven = self.stack_safe.get(pc)
        wrap = (lambda e: e) if insn.op.sem != "ldxs" else (  # noqa: E731
            lambda e, h=1 << (size * 8 - 1): f"((({e}) ^ {h}) - {h}) & {_M}")
        if proven is not None:  # r10 - STACK_BASE is a multiple of STACK_SIZE
            get = self._get("STK", f"r10 + {proven - STACK_BASE}", size, proven % size == 0)
            return [f"{dst} = {wrap(get)}"]
        if direct:
            return self._direct(base or f"r{insn.src}", insn.off, size,
                                lambda buf, i, al: [f"{dst} = {wrap(self._get(buf, i, size, al))}"],
                                direct == 2)
        return self._checked(base or f"r{insn.src}", insn.off, size,
                             lambda buf, i, al: [f"{dst} = {wrap(self._get(buf, i, size, al))}"],
                             lambda a: f"{dst} = {wrap(f'LD({a}, {size}, {pc}, sl)')}")

    def store(self, insn: Insn, pc: int, base: str | None = None,
              value: str | None = None, direct: int = 0) -> list[str]:
        """Statements of a store; ``base`` and ``direct`` are as for ``load``, ``value`` an
        expression of the value stored, already in [0, 2**(8 * size))."""
        size = insn.op.width
        if value is not None:
            v = value
        elif insn.op.source_x:  # registers always hold 64-bit values
            v = f"r{insn.src}" if size == 8 else f"(r{insn.src} & {_SIZE_MASK[size]})"
        else:
            v = str(insn.imm & _SIZE_MASK[size])
        proven = self.stack_safe.get(pc)
        if proven is not None:
            return self._put("STK", f"r10 + {proven - STACK_BASE}", size, v, proven % size == 0)
        if direct:
            return self._direct(base or f"r{insn.dst}", insn.off, size,
                                lambda buf, i, al: self._put(buf, i, size, v, al), direct == 2)
        return self._checked(base or f"r{insn.dst}", insn.off, size,
                             lambda buf, i, al: self._put(buf, i, size, v, al),
                             lambda a: f"ST({a}, {size}, {v}, {pc}, sl)")

    def atomic(self, insn: Insn, pc: int) -> list[str]:
        size = insn.op.width
        m = _SIZE_MASK[size]
        d, s = f"r{insn.dst}", f"r{insn.src}"
        name = insn.op.sem[len("atomic_"):]
        lines = [f"_t = ({d} + {insn.off}) & {_M}", f"_o = LD(_t, {size}, {pc}, sl)"]
        if name == "cmpxchg":
            lines += [f"if _o == (r0 & {m}): ST(_t, {size}, {s} & {m}, {pc}, sl)", "r0 = _o"]
        elif name == "xchg":
            lines += [f"ST(_t, {size}, {s} & {m}, {pc}, sl)", f"{s} = _o"]
        else:
            fetch = name.startswith("fetch_")
            base = name[len("fetch_"):] if fetch else name
            lines.append(f"ST(_t, {size}, (_o {_ATOMIC_OP[base]} {s}) & {m}, {pc}, sl)")
            if fetch:
                lines.append(f"{s} = _o")
        return lines

    def insn(self, insn: Insn, pc: int) -> list[str]:
        op = insn.op
        if op.is_alu:
            return self.alu(insn)
        if op.is_lddw:
            return [f"r{insn.dst} = {insn.imm}"]
        if op.is_load:
            return self.load(insn, pc)
        if op.is_store:
            return self.store(insn, pc)
        if op.is_atomic:
            return self.atomic(insn, pc)
        if op.is_call and not op.is_local_call:
            helper = f"r{insn.dst}" if op.sem == "callx" else insn.imm
            return [f"r0 = HC({helper}, r1, r2, r3, r4, r5, {pc}, sl)"]
        raise AssertionError(op.mnemonic)  # pragma: no cover - the caller handles control flow


def _unequal(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The range ``a`` of a value known to differ from one in ``b``: without ``b``'s value
    when ``b`` holds one value only and it is an end of ``a``."""
    if b[1] - b[0] != 1:
        return a
    if b[0] == a[0]:
        return (a[0] + 1, a[1])
    if b[0] == a[1] - 1:
        return (a[0], a[1] - 1)
    return a


def _refine(known: dict[int, tuple[int, int]], insn: Insn,
            taken: bool) -> dict[int, tuple[int, int]]:
    """The ranges ``known`` narrowed by a 64-bit unsigned compare ``insn`` having gone the way
    ``taken`` says (unchanged for any other branch, or an edge no value can take)."""
    op = insn.op
    sem = op.sem
    if op.width != 64 or op.signed or sem not in ("jgt", "jge", "jlt", "jle", "jeq", "jne") \
            or op.source_x and insn.src == insn.dst:
        return known
    full = (0, 1 << 64)
    a = known.get(insn.dst, full)
    c = insn.imm & MASK64
    b = known.get(insn.src, full) if op.source_x else (c, c + 1)
    swap = sem in ("jlt", "jle")
    if swap:  # a < b is b > a
        a, b, sem = b, a, "jgt" if sem == "jlt" else "jge"
    if sem == "jne":
        sem, taken = "jeq", not taken
    if sem == "jeq" and not taken:
        # a != b with one side a single value at an end of the other's range: one less
        a, b = _unequal(a, b), _unequal(b, a)
    elif sem == "jeq":
        a = b = (max(a[0], b[0]), min(a[1], b[1]))
    elif sem == "jgt":
        a, b = (((max(a[0], b[0] + 1), a[1]), (b[0], min(b[1], a[1] - 1))) if taken
                else ((a[0], min(a[1], b[1])), (max(b[0], a[0]), b[1])))
    else:  # jge
        a, b = (((max(a[0], b[0]), a[1]), (b[0], min(b[1], a[1]))) if taken
                else ((a[0], min(a[1], b[1] - 1)), (max(b[0], a[0] + 1), b[1])))
    if swap:
        a, b = b, a
    if a[0] >= a[1] or b[0] >= b[1]:
        return known
    out = dict(known)
    out[insn.dst] = a
    if op.source_x:
        out[insn.src] = b
    return out


#: The compares a loop's fast version may go on with (``_version``), and each with its
#: operands swapped.
_SWAPPED = {"jlt": "jgt", "jgt": "jlt", "jle": "jge", "jge": "jle", "jne": "jne"}


def _version(block: list[tuple[int, Insn]], term: tuple,
             rws: list[tuple[tuple[int, ...], tuple[int, ...]]],
             stack_safe: dict[int, int]) -> tuple[tuple[str, str, str, int], set[int]] | None:
    """The plan of the fast version of ``block``, a loop of one block (``term`` a branch
    taken back to it), or None: ((guard, trips, done, r), the pcs of its checked accesses).

    The loop qualifies when one register r is written once in it, by adding a constant c,
    and the branch goes on while r is below (c > 0) or above (c < 0) a constant or a register
    the block does not write, x (or is not x, for a step of one), no access can fail but
    through r and nothing calls. At entry ``guard`` (with r and x in their locals) then
    proves that r never wraps: it moves monotonically to x, so the loop runs at most
    ``trips`` times, and every access through r stays between its first and last address,
    both in the data slot when the guard holds; ``done`` is the number of times it ran, from
    r and its value on entry, ``_v``."""
    insn = term[1]
    op = insn.op
    if op.width != 64 or op.signed or op.sem not in _SWAPPED:
        return None
    writes = [[k for k, (_rd, wr) in enumerate(rws) if q in wr] for q in range(11)]
    r, sem = insn.dst, op.sem
    if op.source_x and len(writes[insn.src]) == 1 and insn.src != r:  # x < r is r > x
        r, sem = insn.src, _SWAPPED[sem]
    steps = writes[r]
    if len(steps) != 1 or any(i.op.is_atomic or i.op.is_call for _pc, i in block):
        return None
    step = block[steps[0]][1]
    if not (step.op.is_alu and step.op.width == 64 and step.op.sem in ("add", "sub")
            and not step.op.source_x):
        return None
    c = _signed(step.imm & MASK64, 64) * (1 if step.op.sem == "add" else -1)
    if c == 0 or abs(c) >= 1 << 31:
        return None
    x: int | None = None
    if op.source_x:
        other = insn.src + insn.dst - r
        if other == r or writes[other]:
            return None
        xv = f"r{other}"
    else:
        x = insn.imm & MASK64
        xv = str(x)
    rr = f"r{r}"
    # the bound of r on a pass, x + k, and the condition that no step wraps, x <= / >= w
    if c > 0 and (sem == "jlt" or sem == "jne" and c == 1):
        first, k, wrap = f"{rr} < {xv}", -1, ("<=", (1 << 64) - c)
    elif c > 0 and sem == "jle":
        first, k, wrap = f"{rr} <= {xv}", 0, ("<=", MASK64 - c)
    elif c < 0 and (sem == "jgt" or sem == "jne" and c == -1):
        first, k, wrap = f"{rr} > {xv}", 1, (">=", -c - 1)
    elif c < 0 and sem == "jge":
        first, k, wrap = f"{rr} >= {xv}", 0, (">=", -c)
    else:
        return None
    tests = [first]
    if x is not None:
        if not (x <= wrap[1] if wrap[0] == "<=" else x >= wrap[1]):
            return None
    elif not (wrap == ("<=", MASK64) or wrap == (">=", 0)):
        tests.append(f"{xv} {wrap[0]} {wrap[1]}")
    d = abs(c)
    # the passes: 1 + ((x + k) - r) // d for c > 0, 1 + (r - (x + k)) // d for c < 0
    span = f"{xv} - {rr}" if c > 0 else rr if x == 0 else f"{rr} - {xv}"
    extra = k if c > 0 else -k
    trips = (f"{span} + {extra + 1}" if extra + 1 else span) if d == 1 else \
        f"({span} + {extra}) // {d} + 1" if extra else f"({span}) // {d} + 1"
    done = (f"{rr} - _v" if c > 0 else f"_v - {rr}") if d == 1 else \
        f"({rr + ' - _v' if c > 0 else '_v - ' + rr}) // {d}"
    pcs: set[int] = set()
    for at, (pc, i) in enumerate(block):
        if not (i.op.is_load or i.op.is_store) or pc in stack_safe:
            continue
        if (i.src if i.op.is_load else i.dst) != r:
            return None
        pcs.add(pc)
        o = i.off + (c if at > steps[0] else 0) - DATA_BASE
        # r's farthest value on a pass: x + k for a step of one, else the last multiple of d
        # from r's value on entry before it
        far = f"{xv} + {k + o}" if d == 1 else \
            f"{rr} {'+' if c > 0 else '-'} ({span} + {extra}) // {d} * {d} + {o}"
        lo, hi = (f"{rr} + {o}", far) if c > 0 else (far, f"{rr} + {o}")
        for test in (f"0 <= {lo}", f"{hi} <= DL{i.op.width}"):
            if test not in tests:
                tests.append(test)
    return (" and ".join(tests), trips, done, r), pcs


#: An affine value of a loop's pass (``_cycle_version``): (invariant registers added, m, k,
#: u): the sum of those registers' values, m times the stepped register's value at the start
#: of the pass and k, plus some integer in u's closed interval (a loaded value) when u is not
#: None; it is congruent to the register's value modulo 2**64.
_Form = tuple[tuple[int, ...], int, int, "tuple[int, int] | None"]
#: The compare that goes on when the one given does not (the other edge).
_NEGATED = {"jlt": "jge", "jge": "jlt", "jgt": "jle", "jle": "jgt", "jeq": "jne", "jne": "jeq"}
#: The compare with its operands swapped.
_MIRROR = {"jlt": "jgt", "jgt": "jlt", "jle": "jge", "jge": "jle", "jeq": "jeq", "jne": "jne"}
#: The most blocks and instructions a loop with a fast version of several blocks may have.
_CYCLE_BLOCKS, _CYCLE_LENGTH = 4, 64


def _cycle(h: int, last: int, terms: list[tuple]) -> list[int] | None:
    """A path of at most ``_CYCLE_BLOCKS`` blocks from ``h`` back to it, each after the one
    before it in the program, whose other edges all leave ``h`` .. ``last`` (the blocks up to
    the last edge back to ``h``: a loop's fast version is left only when the loop ends, not
    on a path inside it), or None."""
    def walk(path: list[int]) -> list[int] | None:
        term = terms[path[-1]]
        succ = [term[1]] if term[0] == "goto" else [term[2], term[3]] \
            if term[0] == "branch" else []
        if h in succ:
            return path if all(s == h or not h <= s <= last for s in succ) else None
        if len(path) < _CYCLE_BLOCKS:
            for s in succ:
                if s > path[-1] and all(o == s or not h <= o <= last for o in succ):
                    found = walk(path + [s])
                    if found is not None:
                        return found
        return None
    return walk([h])


def _add(a: _Form | None, b: _Form | None, sign: int) -> _Form | None:
    """``a + b`` (``sign`` 1) or ``a - b`` (-1), when both are known (and ``b`` has no
    register for a difference)."""
    if a is None or b is None or sign < 0 and b[0]:
        return None
    u = a[3]
    if b[3] is not None:
        lo, hi = (b[3][0], b[3][1]) if sign > 0 else (-b[3][1], -b[3][0])
        u = (lo, hi) if u is None else (u[0] + lo, u[1] + hi)
    return tuple(sorted(a[0] + b[0])), a[1] + sign * b[1], a[2] + sign * b[2], u


def _scale(a: _Form | None, f: int) -> _Form | None:
    """``a * f`` for a form without registers."""
    if a is None or a[0] or abs(f) >> 40:
        return None
    u = a[3]
    if u is not None:
        u = (min(u[0] * f, u[1] * f), max(u[0] * f, u[1] * f))
    return (), a[1] * f, a[2] * f, u


def _affine(insn: Insn, forms: dict[int, _Form]) -> _Form | None:
    """The form of the value a 64-bit ALU step ``insn`` writes (None: not affine)."""
    op = insn.op
    if op.width != 64 or op.sem not in ("mov", "add", "sub", "lsh", "mul"):
        return None
    imm = _signed(insn.imm & MASK64, 64)
    src = forms.get(insn.src) if op.source_x else ((), 0, imm, None)
    if op.sem == "mov":
        return src
    dst = forms.get(insn.dst)
    if op.sem in ("add", "sub"):
        return _add(dst, src, 1 if op.sem == "add" else -1)
    if op.source_x:
        return None
    return _scale(dst, 1 << (imm & 63) if op.sem == "lsh" else imm)


def _sum(terms: list[str], k: int) -> str:
    """The expression ``terms[0] + ... + k``."""
    out = " + ".join(terms) if terms else ""
    if not out:
        return str(k)
    return f"{out} + {k}" if k > 0 else f"{out} - {-k}" if k < 0 else out


def _times(rr: str, m: int) -> list[str]:
    """The terms of ``m * rr``."""
    if m == 0:
        return []
    if m == 1:
        return [rr]
    if m > 0 and m & (m - 1) == 0:
        return [f"({rr} << {m.bit_length() - 1})"]
    return [f"{rr} * {m}"]


def _cycle_version(chain: list[int], items: list[list[tuple[int, Insn]]], terms: list[tuple],
                   rws: list[list[tuple[tuple[int, ...], tuple[int, ...]]]],
                   stack_safe: dict[int, int]) -> dict | None:
    """The plan of the fast version of the loop ``chain`` (blocks, each going on to the next
    and the last back to the first, see ``_cycle``), or None.

    The loop qualifies when one register r is written once in it, by adding a constant c,
    nothing calls, every access not proven in the stack is through an address ``_Form`` of
    the pass, and some branch goes on while a value r + k is below (c > 0) or above (c < 0)
    an invariant x, or is not x for a step of one. Each pass then starts with r the integer
    r0 + j c and every form is an affine function of j (plus a bounded u), so their values at
    pass 0 and pass ``_n`` (at least the last pass, the fewest any such branch allows) bound
    them on every pass between: the guard proves that r and each r + k stay in [0, 2**64)
    (so they are the integers themselves and never wrap) and that every address lies in the
    data slot, and then the address is the form's integer value. The plan: "r", "c", "n"
    (``_n``'s expression), "guard", "direct" (for each checked access: the expression of its
    base over the locals when the form has no u, else None: the base's own expression must be
    exact), "exits" (for each block: None when it goes on unconditionally, else (target,
    whether the taken edge goes on, instructions to charge as an expression over r and its
    value on entry ``_v``))."""
    if len(chain) > _CYCLE_BLOCKS:
        return None
    flat = [(b, pc, insn) for b in chain for pc, insn in items[b]]
    if len(flat) > _CYCLE_LENGTH or any(
            i.op.is_atomic or i.op.is_call or i.op.is_exit for _b, _pc, i in flat):
        return None
    count = [0] * 11
    for b in chain:
        for _rd, wr in rws[b]:
            for q in wr:
                count[q] += 1
    for at, (_b, _pc, step) in enumerate(flat):
        op = step.op
        if not (op.is_alu and op.width == 64 and op.sem in ("add", "sub")
                and not op.source_x and count[step.dst] == 1):
            continue
        c = _signed(step.imm & MASK64, 64) * (1 if op.sem == "add" else -1)
        if c == 0 or abs(c) >= 1 << 31:
            continue
        plan = _cycle_plan(chain, items, terms, flat, count, step.dst, c, at, stack_safe)
        if plan is not None:
            return plan
    return None


def _cycle_plan(chain: list[int], items: list[list[tuple[int, Insn]]], terms: list[tuple],
                flat: list[tuple[int, int, Insn]], count: list[int], r: int, c: int,
                at: int, stack_safe: dict[int, int]) -> dict | None:
    """``_cycle_version`` for the step of r by c at ``flat[at]``."""
    forms: dict[int, _Form] = {q: ((q,), 0, 0, None) for q in range(11) if not count[q]}
    forms[r] = ((), 1, 0, None)
    rr, d = f"r{r}", abs(c)
    accesses = []  # (pc, form, after the step, size, offset)
    bounds = []  # (k, compare going on, x)
    exits: list[tuple[int, bool, str] | None] = []
    lengths = [len(items[b]) for b in chain]
    total = sum(lengths)
    pos = 0
    for ci, b in enumerate(chain):
        for pc, insn in items[b]:
            op = insn.op
            after = pos > at
            pos += 1
            if op.is_load or op.is_store:
                if pc not in stack_safe:
                    f = forms.get(insn.src if op.is_load else insn.dst)
                    if f is None:
                        return None
                    accesses.append((pc, f, after, op.width, insn.off))
                if op.is_load:
                    forms.pop(insn.dst, None)
                    if op.sem == "ldx":
                        forms[insn.dst] = ((), 0, 0, (0, (1 << (8 * op.width)) - 1))
            elif op.is_lddw:
                forms[insn.dst] = ((), 0, _signed(insn.imm & MASK64, 64), None)
            elif op.is_alu:
                f = _affine(insn, forms)
                forms.pop(insn.dst, None)
                if f is not None:
                    forms[insn.dst] = f
        nxt = chain[(ci + 1) % len(chain)]
        term = terms[b]
        if term[0] == "goto":
            if term[1] != nxt:
                return None
            exits.append(None)
            continue
        if term[0] != "branch" or (term[2] == nxt) == (term[3] == nxt):
            return None
        on = term[2] == nxt
        target = term[3] if on else term[2]
        if target < 0:
            return None
        # the instructions run when the loop leaves here: the passes before and this one up
        # to here; r was stepped on this pass when its step lies before
        steps = f"{rr} - _v" if c > 0 else f"_v - {rr}"
        steps = steps if d == 1 else f"({steps}) // {d}"
        upto = sum(lengths[:ci + 1]) - (total if at < sum(lengths[:ci + 1]) else 0)
        exits.append((target, on, _sum([f"{total} * ({steps})" if total > 1 else f"({steps})"],
                                       upto)))
        insn = term[1]
        op = insn.op
        if op.width != 64 or op.signed or op.sem not in _NEGATED:
            continue
        fd = forms.get(insn.dst)
        fs = forms.get(insn.src) if op.source_x else ((), 0, insn.imm & MASK64, None)
        sem = op.sem if on else _NEGATED[op.sem]

        def bound(f: _Form | None) -> str | None:
            if f is None or f[3] is not None or f[1] or len(f[0]) > 1 or f[0] and f[2]:
                return None
            return f"r{f[0][0]}" if f[0] else str(f[2] & MASK64)
        if fd is not None and fd[:2] == ((), 1) and fd[3] is None and bound(fs) is not None:
            bounds.append((fd[2], sem, bound(fs)))
        elif fs is not None and fs[:2] == ((), 1) and fs[3] is None and bound(fd) is not None:
            bounds.append((fs[2], _MIRROR[sem], bound(fd)))
    counts, used = [], []
    for k, sem, x in bounds:
        # the pass on which the branch leaves: the first j with r0 + j c + k past x
        if c > 0 and (sem == "jlt" or sem == "jne" and c == 1):
            extra = d - 1 - k
        elif c > 0 and sem == "jle":
            extra = d - k
        elif c < 0 and (sem == "jgt" or sem == "jne" and c == -1):
            extra = k + d - 1
        elif c < 0 and sem == "jge":
            extra = k + d
        else:
            continue
        span = _sum([f"{x} - {rr}" if c > 0 else f"{rr} - {x}"], extra)
        counts.append(span if d == 1 else f"({span}) // {d}")
        used.append(k)
    if not counts:
        return None
    tests = ["_n > 0"]
    tests.append((f"{rr} + _n < {MASK64}" if c == 1 else f"{rr} + (_n + 1) * {c} <= {MASK64}")
                 if c > 0 else f"{rr} > _n" if d == 1 else f"{rr} >= (_n + 1) * {d}")
    for k in sorted(set(used)):
        if c > 0:
            if k < 0:
                tests.append(f"{rr} >= {-k}")
            # implied by the step's test when k <= c
            tests.append(f"{_sum([rr], k)} + _n * {c} <= {MASK64}" if k > c else "")
        else:
            if k > 0:
                tests.append(f"{rr} + {k} <= {MASK64}")
            tests.append(f"{_sum([rr], k)} >= _n * {d}" if k < -d else "")
    tests = [test for test in tests if test]
    direct: dict[int, tuple[str, int] | None] = {}
    for pc, (invs, m, k, u), after, size, off in accesses:
        base = [f"r{q}" for q in invs] + _times(rr, m)
        first = _sum(base, k + off - DATA_BASE)
        last = (f"{first} + _n" if m * c == 1 else f"{first} + _n * {m * c}") if m else first
        lo, hi = (first, last) if m * c >= 0 else (last, first)
        ulo, uhi = u if u is not None else (0, 0)
        for test in (f"0 <= {_sum([lo], ulo)}", f"{_sum([hi], uhi)} <= DL{size}"):
            if test not in tests:
                tests.append(test)
        # the base's value over the locals: r's holds r + c after the step
        direct[pc] = None if u is not None else (
            _sum([f"r{q}" for q in invs] + _times(rr, m), k - (m * c if after else 0)),
            _mask(list(invs) + ([r] if m else [])))
    # r's values at the start of the passes the guard admits: every r + k a bound reads
    # in [0, 2**64) (c > 0 raises them from the first pass, c < 0 lowers them to the last) and
    # the step never wraps
    rlo = max([0 if c > 0 else d] + [-k for k in used])
    rhi = min([(1 << 64) - (c if c > 0 else 0)] + [(1 << 64) - k for k in used if k > 0])
    step_block = next(ci for ci in range(len(chain)) if at < sum(lengths[:ci + 1]))
    return {"r": r, "c": c, "n": counts[0] if len(counts) == 1 else f"min({', '.join(counts)})",
            "guard": " and ".join(tests), "direct": direct, "exits": exits, "length": total,
            "range": (rlo, rhi), "step": step_block}


class _Val:
    """A value as an expression over the chunk's locals. When ``lo`` is not None the value
    lies in ``lo`` .. ``hi - 1``, else the expression is only congruent to it modulo 2**64;
    ``ops`` counts its ALU steps, ``refs`` has a bit for each register it reads, ``const`` is
    the value when it is known now and ``shl`` (inner, k) says the expression is
    ``inner << k``."""

    __slots__ = ("expr", "lo", "hi", "ops", "refs", "const", "shl")

    def __init__(self, expr: str, lo: int | None, hi: int, ops: int = 0, refs: int = 0,
                 const: int | None = None, shl: tuple[_Val, int] | None = None):
        self.expr, self.lo, self.hi, self.ops, self.refs = expr, lo, hi, ops, refs
        self.const, self.shl = const, shl

    @property
    def exact(self) -> bool:
        """Whether the expression is the value itself, in [0, 2**64)."""
        return self.lo is not None and self.lo >= 0 and self.hi <= 1 << 64


def _const(c: int) -> _Val:
    return _Val(str(c), c, c + 1, const=c)


def _exact(v: _Val) -> _Val:
    return v if v.exact else _Val(f"({v.expr} & {_M})", 0, 1 << 64, v.ops + 1, v.refs)


def _fold_const(sem: str, a: int, b: int) -> int:
    if sem in ("lsh", "rsh"):
        return (a << (b & 63)) & MASK64 if sem == "lsh" else a >> (b & 63)
    return {"add": a + b, "sub": a - b, "mul": a * b, "and": a & b, "or": a | b,
            "xor": a ^ b}[sem] & MASK64


def _step(sem: str, a: _Val, b: _Val) -> _Val:
    """The value of the 64-bit ALU step ``sem`` (one of ``_FOLD``) with destination value ``a``
    and source value ``b``, with the range interval arithmetic proves of it."""
    if sem == "mov":
        return b
    if a.const is not None and b.const is not None:
        return _const(_fold_const(sem, a.const, b.const))
    ops, refs = a.ops + b.ops + 1, a.refs | b.refs
    if sem in ("add", "sub") and b.const is not None and b.const >> 63:
        # adding 2**64 - k is subtracting k (C's "x += -k"), and the small k is cheaper
        sem, b = ("sub" if sem == "add" else "add"), _const((1 << 64) - b.const)
    alo, blo = a.lo, b.lo
    lo: int | None = None
    hi = 0
    if sem in ("add", "sub", "mul"):
        if alo is not None and blo is not None:
            if sem == "add":
                lo, hi = alo + blo, a.hi + b.hi - 1
            elif sem == "sub":
                lo, hi = alo - b.hi + 1, a.hi - blo
            elif alo >= 0 and blo >= 0:
                lo, hi = alo * blo, (a.hi - 1) * (b.hi - 1) + 1
        return _Val(f"({a.expr} {_BINOP[sem]} {b.expr})", lo, hi, ops, refs)
    if sem == "lsh":
        k = 63 if b.const is None else b.const & 63
        amt = f"({b.expr} & 63)" if b.const is None else str(k)
        if alo is not None and alo >= 0:
            lo, hi = (alo << k if b.const is not None else 0), ((a.hi - 1) << k) + 1
        return _Val(f"({a.expr} << {amt})", lo, hi, ops, refs,
                    shl=(a, k) if b.const is not None else None)
    if sem == "rsh":
        if b.const is None:
            a = _exact(a)
            return _Val(f"({a.expr} >> ({b.expr} & 63))", 0, a.hi, a.ops + b.ops + 1,
                        a.refs | b.refs)
        k = b.const & 63
        if a.shl is not None and a.shl[1] == k and a.shl[0].exact and not a.exact:
            # (x << k) mod 2**64 >> k: the low 64 - k bits of x
            inner = a.shl[0]
            return _Val(f"({inner.expr} & {(1 << (64 - k)) - 1})", 0,
                        min(inner.hi, 1 << (64 - k)), inner.ops + 1, inner.refs)
        a = _exact(a)
        assert a.lo is not None
        return _Val(f"({a.expr} >> {k})", a.lo >> k, ((a.hi - 1) >> k) + 1, a.ops + 1, a.refs)
    if sem == "and":  # of a value in range: in range whatever the other held
        bounds = [v.hi for v in (a, b) if v.exact]
        if bounds:
            lo, hi = 0, min(bounds)
    elif alo is not None and blo is not None and alo >= 0 and blo >= 0:  # or, xor
        lo, hi = 0, 1 << max((a.hi - 1).bit_length(), (b.hi - 1).bit_length())
    return _Val(f"({a.expr} {_BINOP[sem]} {b.expr})", lo, hi, ops, refs)


class _Body:
    """Writes the statements of one basic block's instructions (see the module's rules),
    keeping the value of a 64-bit ALU step (``_folds``) as a pending expression instead of a
    statement when it is read at most once, or is a copy of a register or a constant.

    ``pend`` maps a register to [its pending value, reads left in the block, whether it is
    live after the block]; the register's local still holds an older value. Before any
    statement writes a register's local, every pending value that reads that local is written
    first (``clobber``), so a pending expression always reads the values it was made of.
    ``known`` maps a register to the range its local is known to lie in."""

    def __init__(self, comp: _BlockCompiler, known: dict[int, tuple[int, int]],
                 direct: dict[int, tuple[str, int] | None] | None = None):
        self.comp = comp
        #: the pcs of the checked accesses known to lie in the data slot (see ``_version``),
        #: each with the exact value of its base over the locals (and the registers that
        #: reads), or None when the base's own expression must be exact
        self.direct = direct or {}
        #: whether an access of ``direct`` had neither
        self.failed = False
        self.lines: list[str] = []
        self.pend: dict[int, list] = {}
        self.known = dict(known)
        self.known[10] = (STACK_BASE, STACK_TOP + 1)
        #: the last ``_i = ...`` statement and the registers it reads, while ``_i`` holds it
        self.last: tuple[str, int] | None = None

    def peek(self, r: int) -> _Val:
        p = self.pend.get(r)
        if p is not None:
            return p[0]
        lo, hi = self.known.get(r, (0, 1 << 64))
        return _Val(f"r{r}", lo, hi, refs=1 << r)

    def take(self, r: int) -> _Val:
        """The value of ``r`` for one of the reads the analysis counted."""
        p = self.pend.get(r)
        if p is None:
            return self.peek(r)
        p[1] -= 1
        if p[1] <= 0 and not p[2]:
            del self.pend[r]
        return p[0]

    def wrote(self, r: int, rng: tuple[int, int] = (0, 1 << 64)) -> None:
        """Note that a statement wrote ``r``'s local, now in ``rng``."""
        self.known[r] = rng
        if self.last is not None and self.last[1] >> r & 1:
            self.last = None

    def assign(self, r: int, v: _Val) -> None:
        """The statements writing ``v`` to ``r`` in [0, 2**64): as it is when in range, else
        corrected by a compare when only one wrap is possible (cheaper than masking a
        many-digit int), else masked."""
        d = f"r{r}"
        self.pend.pop(r, None)
        if v.exact:
            assert v.lo is not None
            self.lines.append(f"{d} = {v.expr}")
            self.wrote(r, (v.lo, v.hi))
            return
        if v.lo is not None and v.lo >= 0 and v.hi <= 1 << 65:
            self.lines += [f"{d} = {v.expr}", f"if {d} > {_M}: {d} &= {_M}"]
        elif v.lo is not None and v.lo >= -(1 << 64) and v.hi <= 1 << 64:
            self.lines += [f"{d} = {v.expr}", f"if {d} < 0: {d} += {1 << 64}"]
        else:
            self.lines.append(f"{d} = {v.expr} & {_M}")
        self.wrote(r)

    def flush(self, regs: set[int] | list[int], extra: tuple[int, _Val] | None = None) -> None:
        """Write the pending values of ``regs``, each after (or with) every pending value
        that reads its local; then ``extra`` (a register and a new value), which reads the
        locals as they were before (with the others in one statement if it must)."""
        todo = {r for r in regs if r in self.pend}
        if not todo:  # the common case, quickly
            if extra is not None:
                self.assign(*extra)
            return
        while True:
            mask = _mask(todo)
            more = {r for r, p in self.pend.items() if r not in todo and p[0].refs & mask}
            if not more:
                break
            todo |= more
        if extra is not None and extra[0] in todo:
            todo.discard(extra[0])  # overwritten by extra
            self.pend.pop(extra[0])
        if extra is not None and extra[1].refs & _mask(todo):
            self.together(sorted(todo), [self.pend[r][0] for r in sorted(todo)], extra)
            return
        while todo:
            ready = [r for r in sorted(todo)
                     if not any(self.pend[q][0].refs >> r & 1 for q in todo if q != r)]
            if not ready:  # values that read each other's locals: one statement
                self.together(sorted(todo), [self.pend[r][0] for r in sorted(todo)], extra)
                return
            for r in ready:
                self.assign(r, self.pend[r][0])
                todo.discard(r)
        if extra is not None:
            self.assign(*extra)

    def together(self, regs: list[int], vals: list[_Val], extra: tuple[int, _Val] | None) -> None:
        """One statement writing ``vals`` to ``regs`` (and ``extra``), all read first."""
        if extra is not None:
            regs, vals = regs + [extra[0]], vals + [extra[1]]
        vals = [_exact(v) for v in vals]
        self.lines.append(", ".join(f"r{r}" for r in regs) + " = "
                          + ", ".join(v.expr for v in vals))
        for r, v in zip(regs, vals, strict=True):
            assert v.lo is not None
            self.pend.pop(r, None)
            self.wrote(r, (v.lo, v.hi))

    def clobber(self, r: int, then: _Val | None = None) -> None:
        """Make ready for a statement writing ``r``'s local (see the class); with ``then``,
        write that value to ``r`` too."""
        self.flush([q for q, p in self.pend.items() if q != r and p[0].refs >> r & 1],
                   None if then is None else (r, then))

    def access(self, head: list[str], base: _Val, checked: bool) -> None:
        """Add ``head``, the ``_i = ...`` statement of a checked access at ``base``, unless
        ``_i`` still holds that value."""
        if checked:
            if self.last is not None and self.last[0] == head[0]:
                return
            self.last = (head[0], base.refs)
        self.lines += head

    def index(self, pc: int, base: _Val) -> _Val | None:
        """The base of the access at ``pc`` of ``direct`` as an exact expression: its own
        when exact (congruent to the base and in [0, 2**64): the base itself), else the
        plan's (which reads only locals no statement of the loop writes but its step, and
        indexes the data slot only with the integer the guard proved there), else None."""
        if base.exact:
            return base
        alt = self.direct[pc]
        if alt is None:
            self.failed = True
            return None
        return _Val(alt[0], None, 0, ops=1, refs=alt[1])

    def based(self, base: _Val) -> None:
        """After a checked access at ``base`` succeeded: a local that is the base lies in
        ``_ADDR``."""
        if base.ops == 0 and base.const is None:
            r = base.refs.bit_length() - 1
            lo, hi = self.known.get(r, (0, 1 << 64))
            self.known[r] = (max(lo, _ADDR[0]), min(hi, _ADDR[1]))

    def insn(self, insn: Insn, pc: int, reads: int, live: bool) -> None:
        """The statements of ``insn`` (not a jump, exit or local call); ``reads`` and ``live``
        say how often the block reads the value it writes and whether that is live after the
        block."""
        op = insn.op
        comp = self.comp
        d = insn.dst
        if op.is_lddw or _folds(insn):
            if not reads and not live:
                return  # never read
            if op.is_lddw:
                a, src = None, _const(insn.imm & MASK64)
            else:
                a = None if op.sem == "mov" else self.peek(d)
                src = self.peek(insn.src) if op.source_x else _const(insn.imm & MASK64)
            if a is not None and a.ops + src.ops >= _CHAIN:  # bound the expression's size
                self.flush([d] if a.ops >= src.ops else [insn.src])
            if op.is_lddw:
                v = src
            else:
                a = None if op.sem == "mov" else self.take(d)
                b = self.take(insn.src) if op.source_x else _const(insn.imm & MASK64)
                v = b if a is None else _step(op.sem, a, b)
            if v.ops == 0 or reads == 1 and not live:  # a copy, a constant or read once
                self.pend[d] = [v, reads, live]
            else:
                self.clobber(d, v)
        elif op.is_alu:
            if not reads and not live:
                return  # never read (and no ALU instruction faults)
            self.clobber(d)
            wide = op.width == 64
            sem = op.sem
            rd = None if sem in ("mov", "movsx") else self.take(d)
            rs = self.take(insn.src) \
                if op.source_x and sem not in ("neg", "le", "be", "bswap") else None
            # a 32-bit (or narrower) result is masked: a congruent operand will do
            ed = None if rd is None else (_exact(rd) if wide else rd).expr
            es = None if rs is None else (_exact(rs) if wide else rs).expr
            self.pend.pop(d, None)
            self.lines += comp.alu(insn, ed, es)
            self.wrote(d, (0, 1 << op.width) if op.width < 64 else (0, 1 << 64))
        elif op.is_load:
            base = self.take(insn.src)
            self.pend.pop(d, None)  # read for the last time as the address, or dead
            checked = pc not in comp.stack_safe
            direct = 0
            if checked and pc in self.direct:
                exact = self.index(pc, base)
                if exact is not None:
                    base = exact
                    # a byte's index inline when no pending value must be written before rd is
                    direct = 1 + (insn.op.width == 1 and not any(
                        p[0].refs >> d & 1 for q, p in self.pend.items() if q != d))
                    checked = direct == 1
            lines = comp.load(insn, pc, base.expr, direct)
            # the address is in ``_i`` before the pending values reading rd are written
            self.access(lines[:1] if checked else [], base, checked)
            self.clobber(d)
            self.lines += lines[1:] if checked else lines
            if checked:
                self.based(base)
            size = insn.op.width
            self.wrote(d, (0, 1 << (8 * size)) if op.sem != "ldxs" else (0, 1 << 64))
        elif op.is_store:
            base = self.take(d)
            value = None
            if op.source_x:
                v = self.take(insn.src)
                m = _SIZE_MASK[op.width]
                value = v.expr if v.exact and v.hi <= m + 1 else f"({v.expr} & {m})"
            checked = pc not in comp.stack_safe
            direct = 0
            if checked and pc in self.direct:
                exact = self.index(pc, base)
                if exact is not None:
                    base = exact
                    direct = 1 + (insn.op.width == 1)
                    checked = direct == 1
            lines = comp.store(insn, pc, base.expr, value, direct)
            self.access(lines[:1] if checked else [], base, checked)
            self.lines += lines[1:] if checked else lines
            if checked:
                self.based(base)
        else:  # atomics and helper calls: every register in its local
            self.flush(set(self.pend))
            self.lines += comp.insn(insn, pc)
            self.last = None
            for r in (0, insn.src):
                self.known.pop(r, None)

    def end(self) -> list[str]:
        """The block's statements, every value still pending written."""
        self.flush(set(self.pend))
        return self.lines


class _TraceWriter:
    """Writes the arm of one block: the block and, for a root, its trace (see the module's
    rules); ``exits`` collects the blocks the arm sends back to the dispatch."""

    def __init__(self, blocks: list[tuple[list[str], tuple]], lengths: list[int],
                 headers: set[int], single: set[int], quiet: set[int], lo: int, hi: int,
                 root: int, room: int, fast: tuple[list[str], str, str, str, int] | None = None,
                 cycle: tuple[list[int], list[list[str]], dict] | None = None):
        self.blocks, self.lengths, self.headers, self.quiet = blocks, lengths, headers, quiet
        #: the root's fast version (its statements and ``_version``'s plan), for a root that
        #: loops on itself
        self.fast = fast
        #: or the fast version of a loop from the root (its blocks, their statements and
        #: ``_cycle_version``'s plan)
        self.cycle = cycle
        # a loop's trace may copy blocks; any other inlines only blocks with one predecessor,
        # so each of those is written once
        self.single = None if root in headers else single
        self.lo, self.hi, self.root, self.room = lo, hi, root, room
        self.out: list[tuple[int, str]] = []
        self.exits: set[int] = set()
        #: the most instructions the inlined blocks of one pass through the trace may take
        self.need = 0
        #: the count each ``left -= ...`` statement (by its index in ``out``) takes
        self.counts: dict[int, int] = {}

    def arm(self) -> list[tuple[int, str]]:
        """The arm's statements as (indent, text), the ``while True`` of the root included
        when the trace loops back to the root; without one, the arm's ``break``s are the
        dispatch loop's ``continue``s (a loop that never repeats only costs compile time)."""
        if self.fast is not None:
            return self.versioned(*self.fast)
        if self.cycle is not None:
            return self.cycled(*self.cycle)
        self.block(self.root, [self.root], 1, 0)
        for at, count in self.counts.items():
            self.out[at] = (self.out[at][0], f"left -= {count}")
        # the root's statement may count blocks after it too (see ``block``)
        length, later = self.counts[0], self.counts[0] - self.lengths[self.root]
        self.out[1] = (1, f"if left < {self.need - later}: left += {length}; "
                          f"b = {~self.root}; break")
        if any(line == "continue" for _ind, line in self.out):
            return [(0, "while True:")] + self.out
        return [(ind - 1, line[:-5] + "continue" if line == "break" or line.endswith("; break")
                 else line) for ind, line in self.out]

    def versioned(self, fast: list[str], cond: str, trips: str, done: str,
                  r: int) -> list[tuple[int, str]]:
        """The arm of a root that loops on itself, with its fast version: when ``cond`` (the
        plan's guard) holds and ``left`` covers the most passes the loop can make (see
        ``_version``), the passes run without limit test or range tests and are counted when
        the loop ends (no statement of them can fail, so nothing sees ``left`` in between);
        else they run as in any trace. The edge out of the loop follows both, inlined as
        usual; a path back to the root goes through the guard again."""
        root = self.root
        body, term = self.blocks[root]
        length = self.lengths[root]
        self.emit(0, "while True:")
        guard = len(self.out)
        self.emit(1, "")  # the guard, once ``need`` is known
        self.emit(2, f"_v = r{r}")
        test = 0
        for lines in (fast, body):
            self.emit(2, "while True:")
            if lines is body:
                self.emit(3, f"left -= {length}")
                test = len(self.out)
                self.emit(3, "")  # the limit test, once ``need`` is known
            for line in lines:
                self.emit(3, line)
            self.emit(3, f"if {term[1]}: continue")
            self.emit(3, "break")
            if lines is fast:
                self.emit(2, f"left -= {length} * ({done})")
                self.emit(1, "else:")
        self.edge(term[3], [root], 1, 0)
        for at, count in self.counts.items():
            self.out[at] = (self.out[at][0], f"left -= {count}")
        self.out[guard] = (1, f"if {cond} and left >= {self.need} + {length} * ({trips}):")
        self.out[test] = (3, f"if left < {self.need}: left += {length}; "
                             f"return ({~root}, left, sl, {_REGS})")
        return self.out

    def cycled(self, chain: list[int], fast: list[list[str]], plan: dict) -> list[tuple[int, str]]:
        """The arm of a loop header with the fast version of the loop ``chain`` (see
        ``_cycle_version``): when the guard holds and ``left`` covers every pass the loop may
        make (``_n + 1``, the last perhaps in part) and what the trace needs after, the passes
        run without limit test or range tests and each edge out of the loop charges the
        instructions run (no statement of them can fail, so nothing sees ``left`` in
        between), then follows the edge: inlined when every edge out goes to one block, else
        through the dispatch. Else the trace runs as usual, in a loop of its own: its edges
        back to the root go round it, and its other exits leave the arm. A path from the fast
        version back to the root goes through the guard again."""
        root = self.root
        r = plan["r"]
        self.emit(0, "while True:")
        self.emit(1, f"_n = {plan['n']}")
        guard = len(self.out)
        self.emit(1, "")  # the guard, once ``need`` is known
        self.emit(2, f"_v = r{r}")
        self.emit(2, "while True:")
        targets = {e[0] for e in plan["exits"] if e is not None}
        for k, (b, lines) in enumerate(zip(chain, fast, strict=True)):
            for line in lines:
                self.emit(3, line)
            leave = plan["exits"][k]
            if leave is None:
                continue
            target, on, charge = leave
            cond = self.blocks[b][1][1]
            out = f"left -= {charge}" + (f"; b = {target}" if len(targets) > 1 else "") + "; break"
            if not on:
                self.emit(3, f"if {cond}: {out}")
            elif k == len(chain) - 1:
                self.emit(3, f"if {cond}: continue")
                self.emit(3, out)
            else:
                self.emit(3, f"if not ({cond}): {out}")
        if len(targets) == 1:
            self.edge(targets.pop(), [root], 2, 0)
        else:
            self.exits |= targets
            self.emit(2, "break")
        self.emit(1, "while True:")
        at = len(self.out)
        self.block(root, [root], 2, 0)
        self.emit(1, "break")
        for pos, count in self.counts.items():
            self.out[pos] = (self.out[pos][0], f"left -= {count}")
        length, later = self.counts[at], self.counts[at] - self.lengths[root]
        self.out[at + 1] = (2, f"if left < {self.need - later}: left += {length}; "
                               f"b = {~root}; break")
        self.out[guard] = (1, f"if {plan['guard']} and "
                              f"left >= {self.need} + {plan['length']} * (_n + 1):")
        return self.out

    def emit(self, ind: int, line: str) -> None:
        self.out.append((ind, line))

    def block(self, k: int, path: list[int], ind: int, spent: int, at: int | None = None) -> None:
        """Block ``k`` at the end of ``path``, ``spent`` instructions of inlined blocks after
        the root (``k`` included); only the root compares ``left``, with ``need`` (see
        ``arm``). With ``at`` the ``left -= ...`` statement there counts ``k`` too: the blocks
        since then go straight to ``k`` and none of them can fail, so no error, stop or
        exit sees ``left`` in between."""
        if at is None:
            self.counts[len(self.out)] = self.lengths[k]
            at = len(self.out)
            self.emit(ind, "")
        else:
            self.counts[at] += self.lengths[k]
        if k == self.root:
            self.emit(ind, "")  # the root's limit test, once ``need`` is known
        self.need = max(self.need, spent)
        body, term = self.blocks[k]
        for line in body:
            self.emit(ind, line)
        kind = term[0]
        if kind == "goto":
            self.edge(term[1], path, ind, spent, at if k in self.quiet else None)
        elif kind == "branch":
            self.emit(ind, f"if {term[1]}:")
            self.edge(term[2], path, ind + 1, spent)
            self.edge(term[3], path, ind, spent)
        elif kind == "exit":
            self.exit(ind)
        else:  # a local call: ("call", callee block, return block, pc)
            self.emit(ind, f"if len(FR) >= {MAX_CALL_DEPTH - 1}: CALLDEPTH({term[3]})")
            self.emit(ind, f"FR.append(({term[2]}, r6, r7, r8, r9, r10))")
            self.emit(ind, f"r10 -= {STACK_SIZE}")
            self.emit(ind, f"sl -= {STACK_SIZE}")
            self.exits.add(term[2])
            self.edge(term[1], path, ind, spent)

    def edge(self, s: int, path: list[int], ind: int, spent: int, at: int | None = None) -> None:
        """Code that sends control to block ``s`` (-1: the end of the function); ``at`` as for
        ``block``."""
        if s == -1:
            self.exit(ind)
        elif s == self.root:
            self.emit(ind, "continue")
        elif self.lo <= s < self.hi and s not in path and s not in self.headers \
                and (self.single is None or s in self.single) \
                and self.lengths[s] <= self.room and len(path) < _DEPTH:
            self.room -= self.lengths[s]
            self.block(s, path + [s], ind, spent + self.lengths[s], at)
        else:
            self.exits.add(s)
            self.emit(ind, f"b = {s}")
            self.emit(ind, "break")

    def exit(self, ind: int) -> None:
        self.emit(ind, "if FR:")
        self.emit(ind + 1, "b, r6, r7, r8, r9, r10 = FR.pop()")
        self.emit(ind + 1, f"sl += {STACK_SIZE}")
        self.emit(ind + 1, "break")
        self.emit(ind, f"b = {_EXIT}")
        self.emit(ind, "break")


def _chunk_source(name: str, lo: int, hi: int, arms: dict[int, list[tuple[int, str]]]) -> str:
    """The function ``name`` for the blocks of ``arms``, all in ``lo`` .. ``hi - 1`` (the other
    blocks there never reach it): a dispatch loop over a binary tree of comparisons whose leaves
    are the arms."""
    keys = sorted(arms)
    out = [f"def {name}(b, left, sl, R, FR, DATA, DL1, DL2, DL4, DL8, STK, LD, ST, HC, "
           f"D2, D4, D8, T2, T4, T8, "
           f"S, {', '.join(f'{k}={k}' for k in _BOUND)}):",
           f" {_REGS[1:-1]} = R",
           " try:",
           "  while True:"]

    def tree(first: int, last: int, ind: int) -> None:
        pad = " " * ind
        if first == last:
            # the outermost leaves also catch the numbers of other chunks' blocks and the
            # negative codes (exit, limit): these leave for the run loop
            if first == 0:
                out.append(f"{pad}if b < {lo}: return (b, left, sl, {_REGS})")
            if first == len(keys) - 1:
                out.append(f"{pad}if b >= {hi}: return (b, left, sl, {_REGS})")
            out.extend(pad + " " * i + line for i, line in arms[keys[first]])
            return
        mid = (first + last + 1) // 2
        out.append(f"{pad}if b < {keys[mid]}:")
        tree(first, mid - 1, ind + 1)
        out.append(f"{pad}else:")
        tree(mid, last, ind + 1)

    tree(0, len(keys) - 1, 3)
    out += [" except BaseException:",
            "  S[0] = left",  # the run loop counts a failed or stopped run from it
            "  raise"]
    return "\n".join(out) + "\n"


class Interpreter:
    """The block-translating executor ``interp``:
    ``Interpreter(program, helpers=, budget=).run(memory)`` (``reference.Reference`` is the plain
    one to read against RFC 9669)."""

    name = "interp"

    def __init__(self, program: Program, *, helpers: HelperRegistry, budget: int,
                 checked: VerifierInfo | None = None):
        """``checked`` is the load pipeline's result for ``program`` (``hermes.engine.check``,
        as ``hermes.engine.load`` passes it); without it the same check runs here."""
        self.program = program
        self.helpers = helpers
        self.budget = budget
        info = checked or verify(program, helpers)
        self.functions = info.functions
        self._compile(info.stack_safe)
        # the word views a run builds: only those of the access sizes the program has (a view
        # costs about as much as a short run)
        widths = {i.op.width for i in program.insns
                  if i is not None and (i.op.is_load or i.op.is_store) and not i.op.is_atomic}
        self._words = tuple((n, code) for n, code in _WORD if n in widths) if _VIEWS else ()

    # -- translation ----------------------------------------------------------------------------
    def _compile(self, stack_safe: dict[int, int]) -> None:
        insns = self.program.insns
        n = len(insns)
        starts = cfg.block_leaders(insns, self.functions)
        nblocks = len(starts)
        block_of = {s: b for b, s in enumerate(starts)}
        ends = starts[1:] + [n]
        comp = _BlockCompiler(stack_safe)
        lengths, positions, block_at = [], [0] * n, [0] * n
        items: list[list[tuple[int, Insn]]] = []  # each block's instructions
        terms: list[tuple] = []
        for b, (s, e) in enumerate(zip(starts, ends, strict=True)):
            block: list[tuple[int, Insn]] = []
            nxt = block_of[e] if e < n else -1  # falling off the end is an exit
            term: tuple = ("goto", nxt)
            for pc in range(s, e):
                block_at[pc] = b
                insn = insns[pc]
                if insn is None:
                    continue
                block.append((pc, insn))
                positions[pc] = len(block)
                op = insn.op
                if op.is_jump:
                    term = ("goto", block_of[cfg.target(insn, pc)])
                elif op.is_branch:
                    term = ("branch", insn, block_of[cfg.target(insn, pc)], nxt)
                elif op.is_exit:
                    term = ("exit",)
                elif op.is_local_call:
                    # a call in the last slot returns to the last block, as the frame list says
                    term = ("call", block_of[cfg.target(insn, pc)],
                            nxt if nxt >= 0 else nblocks - 1, pc)
            items.append(block)
            terms.append(term)
            lengths.append(len(block))
        rws = [[_rw(insn) for _pc, insn in block] for block in items]
        # blocks whose statements cannot fail: no memory access and no call
        quiet = {b for b, block in enumerate(items)
                 if not any(i.op.is_load or i.op.is_store or i.op.is_atomic or i.op.is_call
                            for _pc, i in block)}
        live_out = self._liveness(starts, terms, rws)
        # the ranges of the locals on entry to a block that only earlier blocks jump to (no
        # call, return or function entry): those its predecessors leave them in
        entered = {0} | {block_of[f.start] for f in self.functions}
        incoming: list[list[int]] = [[] for _ in range(nblocks)]
        for b, term in enumerate(terms):
            if term[0] == "call":
                entered |= {term[1], term[2]}
            for t in (term[1:] if term[0] == "goto" else term[2:] if term[0] == "branch" else ()):
                if t >= 0:
                    incoming[t].append(b)
        known_after: list[dict[int, tuple[int, int]]] = []

        def entry(b: int, loops: bool) -> dict[int, tuple[int, int]]:
            """The ranges on entry to ``b``: the widest its predecessors leave on the edges to
            it (as ``_refine`` narrows them); from earlier blocks only, unless ``loops``."""
            if b in entered or not incoming[b] or not loops and max(incoming[b]) >= b:
                return {}
            known: dict[int, tuple[int, int]] | None = None
            for p in sorted(set(incoming[b])):
                term, after = terms[p], known_after[p]
                edges = [after] if term[0] == "goto" else \
                    [_refine(after, term[1], taken)
                     for taken, t in ((True, term[2]), (False, term[3])) if t == b]
                for facts in edges:
                    known = dict(facts) if known is None else {
                        r: (min(lo, facts[r][0]), max(hi, facts[r][1]))
                        for r, (lo, hi) in known.items() if r in facts}
            return known or {}

        def translate(b: int, known: dict[int, tuple[int, int]],
                      direct: dict[int, tuple[str, int] | None] | None = None
                      ) -> tuple[list[str], _Body]:
            block = items[b]
            # how often the block reads the value each instruction writes, and whether that
            # value is live after the block (read before the register is written again)
            reads, live = [0] * 11, [bool(live_out[b] >> r & 1) for r in range(11)]
            uses: list[tuple[int, bool]] = [(0, False)] * len(block)
            for i in range(len(block) - 1, -1, -1):
                rd, wr = rws[b][i]
                if len(wr) == 1:
                    uses[i] = (reads[wr[0]], live[wr[0]])
                for r in wr:
                    reads[r], live[r] = 0, False
                for r in rd:
                    reads[r] += 1
            body = _Body(comp, known, direct)
            for (pc, insn), (count, alive) in zip(block, uses, strict=True):
                op = insn.op
                if not (op.is_jump or op.is_branch or op.is_exit or op.is_local_call):
                    body.insn(insn, pc, count, alive)
            return body.end(), body

        blocks: list[tuple[list[str], tuple]] = []
        firsts = []
        for b in range(nblocks):
            term = terms[b]
            if term[0] == "branch":
                term = ("branch", comp.cond(term[1])) + term[2:]
            known = entry(b, False)
            lines, body = translate(b, known)
            blocks.append((lines, term))
            known_after.append(body.known)
            firsts.append(known)
        # a loop header again, with what the loop's blocks leave on its back edges: the ranges
        # of a first translation hold for any other, which computes the same values
        finals = list(firsts)
        for b in range(nblocks):
            if incoming[b] and max(incoming[b]) >= b:
                known = entry(b, True)
                finals[b] = known
                if known != firsts[b]:
                    blocks[b] = (translate(b, known)[0], blocks[b][1])
        # chunks: consecutive blocks of at most CHUNK instructions (a longer block is alone)
        bounds = [0]
        size = 0
        for b in range(nblocks):
            if size and size + lengths[b] > CHUNK:
                bounds.append(b)
                size = 0
            size += lengths[b]
        bounds.append(nblocks)
        chunk_of = [0] * nblocks
        for c, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
            chunk_of[lo:hi] = [c] * (hi - lo)
        # the fast versions of the loops of one block (see ``_version``), and of the other
        # loops from a header through later blocks of its chunk (see ``_cycle_version``)
        versions = {}
        cycles = {}
        for b in range(nblocks):
            if terms[b][0] == "branch" and terms[b][2] == b:  # (a fall-through is never b)
                plan = _version(items[b], terms[b], rws[b], stack_safe)
                if plan is not None:
                    fast, body = translate(b, finals[b], dict.fromkeys(plan[1]))
                    if not body.failed:
                        versions[b] = (fast,) + plan[0]
                        continue
            if not incoming[b] or max(incoming[b]) < b:
                continue
            chain = _cycle(b, max(incoming[b]), terms)
            if chain is None or any(chunk_of[k] != chunk_of[b] for k in chain):
                continue
            cplan = _cycle_version(chain, items, terms, rws, stack_safe)
            if cplan is None:
                continue
            fasts = []
            r = cplan["r"]
            for ci, k in enumerate(chain):
                pcs = {pc for pc, _i in items[k]}
                # r in the range the guard proves for every pass (stepped once before here)
                lo, hi = cplan["range"]
                moved = cplan["c"] if ci > cplan["step"] else 0
                was = finals[k].get(r, (0, 1 << 64))
                known = dict(finals[k])
                known[r] = (max(lo + moved, was[0]), min(hi + moved, was[1]))
                if known[r][0] >= known[r][1]:
                    break
                fast, body = translate(k, known, {pc: e for pc, e in cplan["direct"].items()
                                                  if pc in pcs})
                if body.failed:
                    break
                fasts.append(fast)
            else:
                cycles[b] = (chain, fasts, cplan)
        # loop headers (targets of backward edges) are roots, never inlined into a trace
        headers = set()
        preds = [0] * nblocks
        for b, (_body, term) in enumerate(blocks):
            for s in term[1:] if term[0] in ("goto", "branch") else ():
                if isinstance(s, int) and s >= 0:
                    preds[s] += 1
                    if s <= b:
                        headers.add(s)
        single = {b for b in range(nblocks) if preds[b] == 1}
        # roots get a trace: the entry, functions, return points, the first block of each chunk
        # and whatever a trace leaves to the dispatch; any other block is reached only when a
        # limit stopped a trace before it, and gets its own one-block function when that happens
        arms: list[dict[int, list[tuple[int, str]]]] = [{} for _ in bounds[1:]]
        work = [0] + [block_of[f.start] for f in self.functions] + bounds[1:-1]
        copies = 2 * n + INLINE  # instructions the loops' traces may copy, in all
        # the ``left`` a root's trace needs on entry to run without stopping (see _TraceWriter)
        thresh = list(lengths)
        while work:
            root = work.pop()
            c = chunk_of[root]
            if root in arms[c]:
                continue
            room = INLINE if root not in headers else min(INLINE, max(copies, 0))
            writer = _TraceWriter(blocks, lengths, headers, single, quiet, bounds[c],
                                  bounds[c + 1], root, room, versions.get(root),
                                  cycles.get(root))
            arms[c][root] = writer.arm()
            thresh[root] += writer.need
            if root in headers:
                copies -= room - writer.room
            work.extend(s for s in writer.exits if s >= 0 and s not in arms[chunk_of[s]])
        self._starts = starts
        self._lengths = lengths
        self._positions = positions
        self._block_at = block_at
        self._blocks, self._headers, self._single, self._bounds = blocks, headers, single, bounds
        self._quiet = quiet
        self._chunk_of = chunk_of
        self._arms = arms
        # what the run loop calls to run block b: its chunk's function for a root, its own
        # function for any other block; each is compiled the first time a run needs it, so
        # code no run reaches costs no compile time
        self._entry: list[Callable | None] = [None] * nblocks
        # near a limit a root whose trace cannot finish runs on its own instead, in the same
        # kind of one-block function, so every block stops exactly where the reference does
        self._thresh = thresh
        self._alone: list[Callable | None] = [None] * nblocks

    def _liveness(self, starts: list[int], terms: list[tuple],
                  rws: list[list[tuple[tuple[int, ...], tuple[int, ...]]]]) -> list[int]:
        """The registers live after each block (a bit each): read on some path before being
        written. A local call needs all of them; an ``exit`` needs r0 in the entry function and
        ``_CALLEE_EXIT`` in any other, when no call enters the entry function and no block
        leaves its function (else it needs all of them too)."""
        nblocks = len(starts)
        fstarts = [f.start for f in self.functions]
        func = [bisect.bisect_right(fstarts, s) - 1 for s in starts]
        contained = fstarts[0] == 0
        for b, term in enumerate(terms):
            if term[0] == "call":
                contained = contained and term[1] != 0
            succ = term[1:] if term[0] == "goto" else term[2:] if term[0] == "branch" else ()
            contained = contained and all(s >= 0 and func[s] == func[b] for s in succ)
        gen, kill = [0] * nblocks, [0] * nblocks
        for b in range(nblocks):
            g = k = 0
            for rd, wr in reversed(rws[b]):
                w = _mask(wr)
                g = (g & ~w) | _mask(rd)
                k |= w
            gen[b], kill[b] = g, k
        fixed = []  # blocks whose live-out set does not depend on other blocks
        out = [0] * nblocks
        for b, term in enumerate(terms):
            if term[0] == "exit":
                out[b] = _ALL if not contained else 1 if func[b] == 0 else _CALLEE_EXIT
                fixed.append(b)
            elif term[0] == "call" or -1 in term[1:] and term[0] != "call":
                out[b] = _ALL
                fixed.append(b)
        isfixed = set(fixed)
        live_in = [gen[b] | (out[b] & ~kill[b]) for b in range(nblocks)]
        changed = True
        while changed:
            changed = False
            for b in range(nblocks - 1, -1, -1):
                if b in isfixed:
                    continue
                term = terms[b]
                o = 0
                for s in (term[1:] if term[0] == "goto" else term[2:]):
                    o |= live_in[s]
                if o != out[b]:
                    out[b] = o
                    live_in[b] = gen[b] | (o & ~kill[b])
                    changed = True
        return out

    def _function(self, b: int, alone: bool = False) -> Callable:
        """The function that runs block ``b`` (see ``_entry``), or with ``alone`` the block by
        itself (see ``_alone``), compiled now if needed."""
        c = self._chunk_of[b]
        lo, hi = self._bounds[c], self._bounds[c + 1]
        arms = self._arms[c]
        tag = self.program.digest[:12]
        if b in arms and not alone:
            name, where, keys = f"chunk{c}", f"chunk {c}", list(arms)
        else:
            arms = {b: _TraceWriter(self._blocks, self._lengths, self._headers, self._single,
                                    self._quiet, lo, hi, b, 0).arm()}
            name, where, keys = f"block{b}", f"block {b}", [b]
            lo, hi = b, b + 1
        namespace: dict = dict(_BOUND)
        text = _chunk_source(name, lo, hi, arms)
        exec(compile(text, f"<hermes-interp {tag} {where}>", "exec"), namespace)
        fn = namespace[name]
        # several runs may compile the same function at once: any of the copies will do
        table = self._alone if alone else self._entry
        for k in keys:
            table[k] = fn
        return fn

    # -- execution ------------------------------------------------------------------------------
    def run(self, memory: bytearray | memoryview | bytes | None = None,
            budget: int | None = None, *, cancel: Cancel | None = None,
            length: int | None = None, args: tuple[int, ...] = ()) -> RunResult:
        """Run once; see ``hermes.engine.run``."""
        budget = self.budget if budget is None else budget
        # The chunks count down the instructions ``left`` before one limit: the budget, or for a
        # cancellable run the next point at which the flag is polled, and at most _STEP ahead.
        step = _STEP if cancel is None else CANCEL_POLL
        limit = min(budget, step)
        data, r1, r2 = input_region(memory, length)
        r3, r4, r5 = run_args(args)
        dlen = len(data)
        stack = bytearray(STACK_SIZE * MAX_CALL_DEPTH)
        segments = [(seg.vaddr, seg.end, bytearray(seg.data) if seg.writable else seg.data,
                     seg.writable, seg.name) for seg in self.program.segments if seg.data]
        segs = self.program.segments

        def find(addr: int, size: int, write: bool, pc: int, sl: int):
            if DATA_BASE <= addr and addr + size <= DATA_BASE + dlen:
                return data, addr - DATA_BASE
            if sl + DATA_BASE <= addr and addr + size <= STACK_TOP:
                return stack, addr - STACK_BASE
            for lo, hi, buf, writable, _name in segments:
                if lo <= addr and addr + size <= hi and (writable or not write):
                    return buf, addr - lo
            depth = (STACK_TOP - STACK_SIZE - DATA_BASE - sl) // STACK_SIZE
            raise out_of_bounds(pc, addr, size, write, dlen, segs, depth)

        def ld(addr: int, size: int, pc: int, sl: int) -> int:
            buf, off = find(addr, size, False, pc, sl)
            return int.from_bytes(buf[off:off + size], "little")

        def st(addr: int, size: int, value: int, pc: int, sl: int) -> None:
            buf, off = find(addr, size, True, pc, sl)
            buf[off:off + size] = (value & _SIZE_MASK[size]).to_bytes(size, "little")

        # where the helper being called runs: its pc and the stack's lower bound
        cur = [0, 0]

        def ctx_read(addr: int, size: int) -> bytes:
            buf, off = find(addr, size, False, cur[0], cur[1])
            return bytes(buf[off:off + size])

        def ctx_write(addr: int, blob: bytes) -> None:
            buf, off = find(addr, len(blob), True, cur[0], cur[1])
            buf[off:off + len(blob)] = blob

        def ctx_view(addr: int, size: int, write: bool) -> memoryview:
            buf, off = find(addr, size, write, cur[0], cur[1])
            return memoryview(buf)[off:off + size]

        state = RunState(dlen)
        ctx = HelperContext(ctx_read, ctx_write, ctx_view, state)
        helpers = self.helpers
        # S[0]: the count when an exception left a chunk; S[1]: the call site of a helper that
        # failed (its block is the one running, whatever pc the helper's error names)
        S: list = [0, None]

        def hc(hid: int, a: int, b: int, c: int, d: int, e: int, pc: int, sl: int) -> int:
            # The poll every CANCEL_POLL instructions is not a time bound when each instruction
            # may be a long helper call: a cancelled run stops at its next call.
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled", "run cancelled", pc)
            helper = helpers.get(hid)
            if helper is None:
                raise ExecutionError("helper", f"call to unknown helper id {hid}", pc)
            cur[0] = ctx.pc = pc
            cur[1] = sl
            try:
                return helper.fn(ctx, a, b, c, d, e) & MASK64
            except StopRun:
                raise
            except ExecutionError:
                S[1] = pc
                raise
            except Exception as exc:  # a helper bug must not look like a crash of the engine
                raise ExecutionError("helper", f"helper {helper.name} failed: {exc}", pc) from exc

        entry, lengths, starts = self._entry, self._lengths, self._starts
        alone, thresh = self._alone, self._thresh
        dl1, dl2, dl4, dl8 = dlen - 1, dlen - 2, dlen - 4, dlen - 8
        # D2..D8, T2..T8: the slot's and the stack's words (released below: a view pins them)
        words = self._words
        views = [memoryview(buf)[:len(buf) - len(buf) % n].cast(code)
                 if (n, code) in words else None
                 for buf in (data, stack) for n, code in _WORD] if words else _NO_VIEWS
        frames: list[tuple[int, int, int, int, int, int]] = []
        regs = (0, r1, r2, r3, r4, r5, 0, 0, 0, 0, STACK_TOP)
        sl = STACK_TOP - STACK_SIZE - DATA_BASE
        b = 0
        n = 0
        left = limit
        started = time.perf_counter_ns()
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled", "run cancelled", starts[b], instructions=0)
            fn = entry[b] or self._function(b)
            while True:
                b, left, sl, regs = fn(b, left, sl, regs, frames, data, dl1, dl2, dl4, dl8,
                                       stack, ld, st, hc, *views, S)
                if b >= 0:  # the next block is in another chunk
                    fn = entry[b] or self._function(b)
                    continue
                n = limit - left
                if b == _EXIT:
                    r0 = regs[0]
                    break
                b = ~b  # the limit was reached before this block
                if n + lengths[b] > budget:
                    raise BudgetExceeded("budget", f"instruction budget of {budget} exhausted",
                                         starts[b], instructions=n)
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled", "run cancelled", starts[b], instructions=n)
                limit = min(budget, n + lengths[b] + step)
                left = limit - n
                if left < thresh[b]:  # its trace would stop again: run the block alone
                    fn = alone[b] or self._function(b, True)
                else:
                    fn = entry[b] or self._function(b)
        except StopRun as stop:
            r0 = stop.value & MASK64
            n = limit - S[0]
        except ExecutionError as exc:
            if exc.instructions is None and exc.pc is not None:
                site = exc.pc if S[1] is None else S[1]
                exc.instructions = (limit - S[0] - lengths[self._block_at[site]]
                                    + self._positions[exc.pc])
            raise state.stamp(exc)  # noqa: B904 - the same exception, with the printed text
        finally:
            for view in views:
                if view is not None:
                    view.release()
        return RunResult(r0, data, n, state.output_length, bytes(state.trace),
                         state.trace_dropped, time.perf_counter_ns() - started)

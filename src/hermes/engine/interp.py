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
  it: the chunk counts down ``left``, the instructions before the next limit, and compares it
  with 0 (a one-digit int, the cheapest kind). On reaching the limit the chunk returns to the
  run loop, which raises ``BudgetExceeded`` or polls the ``Cancel`` flag and re-enters. Reaching
  a limit, entering another chunk and leaving the entry function are the only returns.
* Registers always hold their value in [0, 2**64): a 64-bit add or sub that wraps is corrected
  after a compare (cheaper than masking a many-digit int); a register move followed by an
  operation on the moved-to register is written as one statement.
* Local calls push (return block, r6..r10) on a frame list and move r10 and the stack's lower
  bound down one frame; ``exit`` pops it. A chunk saves ``left`` before any exception leaves it, so
  faults report the same instruction counts as the reference interpreter.
* Memory: a load or store the verifier proved inside the current stack frame indexes the stack
  directly; any other checks the data slot, then the live stack frames, inline, and falls back to
  a general region lookup (program segments, faults), so every access is bounds-checked against
  the program's own regions only.
"""
from __future__ import annotations

import struct
import time
from collections.abc import Callable

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


class _BlockCompiler:
    """Turns the instructions of a basic block into Python statements over locals r0..r10.

    Besides the registers the statements use the chunk function's locals: ``DATA`` (the data
    slot) and ``DL<size>`` (its length minus the access size), ``STK`` (the stack of every frame)
    and ``sl`` (the lowest live stack byte, as an offset from ``DATA_BASE``), ``LD``/``ST`` (the
    general checked access), ``HC`` (helper calls) and the temporaries ``_i``, ``_t``, ``_o``.
    """

    def __init__(self, stack_safe: dict[int, int]):
        self.stack_safe = stack_safe

    def alu(self, insn: Insn, rd: str | None = None) -> list[str]:
        """Statements of an ALU instruction; ``rd`` names what holds the destination's value
        when that is not the destination register itself (a ``mov`` folded into this one)."""
        op = insn.op
        sem, w = op.sem, op.width
        d = f"r{insn.dst}"
        dr = rd or d
        mask = _M if w == 64 else _W
        if op.source_x:
            s = dr if insn.src == insn.dst else f"r{insn.src}"
        else:
            s = str(insn.imm & (MASK64 if w == 64 else W32))
        sh = 63 if w == 64 else 31
        if sem in _BINOP:
            if sem in ("or", "and", "xor") and w == 64:
                return [f"{d} = {dr} {_BINOP[sem]} {s}"]
            # a compare is cheaper than masking a multi-digit int, and mostly nothing wraps
            if sem == "add":
                return [f"{d} = {dr} + {s}", f"if {d} > {mask}: {d} &= {mask}"]
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
    def _get(buf: str, index: str, size: int) -> str:
        return f"{buf}[{index}]" if size == 1 else f"U{size}({buf}, {index})[0]"

    @staticmethod
    def _put(buf: str, index: str, size: int, value: str) -> str:
        return f"{buf}[{index}] = {value}" if size == 1 else f"P{size}({buf}, {index}, {value})"

    @staticmethod
    def _checked(base: int, off: int, size: int, act: Callable[[str, str], str],
                 slow: Callable[[str], str]) -> list[str]:
        """An access at ``r<base> + off``: ``act(buffer, index)`` when it lies in the data slot
        or a live stack frame, else ``slow(address)`` (the general lookup, which faults)."""
        return [f"_i = r{base} + {off - DATA_BASE}",
                f"if 0 <= _i <= DL{size}: {act('DATA', '_i')}",
                f"elif sl <= _i <= {STACK_TOP - size - DATA_BASE}: "
                f"{act('STK', f'_i + {DATA_BASE - STACK_BASE}')}",
                f"else: {slow(f'(_i + {DATA_BASE}) & {_M}')}"]

    def load(self, insn: Insn, pc: int) -> list[str]:
        size, dst = insn.op.width, f"r{insn.dst}"
        proven = self.stack_safe.get(pc)
        wrap = (lambda e: e) if insn.op.sem != "ldxs" else (  # noqa: E731
            lambda e, h=1 << (size * 8 - 1): f"((({e}) ^ {h}) - {h}) & {_M}")
        if proven is not None:
            return [f"{dst} = {wrap(self._get('STK', f'r10 + {proven - STACK_BASE}', size))}"]
        return self._checked(insn.src, insn.off, size,
                             lambda buf, i: f"{dst} = {wrap(self._get(buf, i, size))}",
                             lambda a: f"{dst} = {wrap(f'LD({a}, {size}, {pc}, sl)')}")

    def store(self, insn: Insn, pc: int) -> list[str]:
        size = insn.op.width
        if insn.op.source_x:  # registers always hold 64-bit values
            v = f"r{insn.src}" if size == 8 else f"(r{insn.src} & {_SIZE_MASK[size]})"
        else:
            v = str(insn.imm & _SIZE_MASK[size])
        proven = self.stack_safe.get(pc)
        if proven is not None:
            return [self._put("STK", f"r10 + {proven - STACK_BASE}", size, v)]
        return self._checked(insn.dst, insn.off, size,
                             lambda buf, i: self._put(buf, i, size, v),
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


class _TraceWriter:
    """Writes the arm of one block: the block and, for a root, its trace (see the module's
    rules); ``exits`` collects the blocks the arm sends back to the dispatch."""

    def __init__(self, blocks: list[tuple[list[str], tuple]], lengths: list[int],
                 headers: set[int], single: set[int], lo: int, hi: int, root: int, room: int):
        self.blocks, self.lengths, self.headers = blocks, lengths, headers
        # a loop's trace may copy blocks; any other inlines only blocks with one predecessor,
        # so each of those is written once
        self.single = None if root in headers else single
        self.lo, self.hi, self.root, self.room = lo, hi, root, room
        self.out: list[tuple[int, str]] = []
        self.exits: set[int] = set()

    def arm(self) -> list[tuple[int, str]]:
        """The arm's statements as (indent, text), the ``while True`` of the root included
        when the trace loops back to the root; without one, the arm's ``break``s are the
        dispatch loop's ``continue``s (a loop that never repeats only costs compile time)."""
        self.block(self.root, [self.root], 1)
        if any(line == "continue" for _ind, line in self.out):
            return [(0, "while True:")] + self.out
        return [(ind - 1, line[:-5] + "continue" if line == "break" or line.endswith("; break")
                 else line) for ind, line in self.out]

    def emit(self, ind: int, line: str) -> None:
        self.out.append((ind, line))

    def block(self, k: int, path: list[int], ind: int) -> None:
        length = self.lengths[k]
        self.emit(ind, f"left -= {length}")
        self.emit(ind, f"if left < 0: left += {length}; b = {~k}; break")
        body, term = self.blocks[k]
        for line in body:
            self.emit(ind, line)
        kind = term[0]
        if kind == "goto":
            self.edge(term[1], path, ind)
        elif kind == "branch":
            self.emit(ind, f"if {term[1]}:")
            self.edge(term[2], path, ind + 1)
            self.edge(term[3], path, ind)
        elif kind == "exit":
            self.exit(ind)
        else:  # a local call: ("call", callee block, return block, pc)
            self.emit(ind, f"if len(FR) >= {MAX_CALL_DEPTH - 1}: CALLDEPTH({term[3]})")
            self.emit(ind, f"FR.append(({term[2]}, r6, r7, r8, r9, r10))")
            self.emit(ind, f"r10 -= {STACK_SIZE}")
            self.emit(ind, f"sl -= {STACK_SIZE}")
            self.exits.add(term[2])
            self.edge(term[1], path, ind)

    def edge(self, s: int, path: list[int], ind: int) -> None:
        """Code that sends control to block ``s`` (-1: the end of the function)."""
        if s == -1:
            self.exit(ind)
        elif s == self.root:
            self.emit(ind, "continue")
        elif self.lo <= s < self.hi and s not in path and s not in self.headers \
                and (self.single is None or s in self.single) \
                and self.lengths[s] <= self.room and len(path) < _DEPTH:
            self.room -= self.lengths[s]
            self.block(s, path + [s], ind)
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

    # -- translation ----------------------------------------------------------------------------
    def _compile(self, stack_safe: dict[int, int]) -> None:
        insns = self.program.insns
        n = len(insns)
        starts = cfg.block_leaders(insns, self.functions)
        nblocks = len(starts)
        block_of = {s: b for b, s in enumerate(starts)}
        ends = starts[1:] + [n]
        comp = _BlockCompiler(stack_safe)
        blocks: list[tuple[list[str], tuple]] = []
        lengths, positions, block_at = [], [0] * n, [0] * n
        for b, (s, e) in enumerate(zip(starts, ends, strict=True)):
            body: list[str] = []
            count = 0
            nxt = block_of[e] if e < n else -1  # falling off the end is an exit
            term: tuple = ("goto", nxt)
            moved: Insn | None = None  # a register move not written yet
            for pc in range(s, e):
                block_at[pc] = b
                insn = insns[pc]
                if insn is None:
                    continue
                count += 1
                positions[pc] = count
                op = insn.op
                if op.is_jump:
                    term = ("goto", block_of[cfg.target(insn, pc)])
                elif op.is_branch:
                    term = ("branch", comp.cond(insn), block_of[cfg.target(insn, pc)], nxt)
                elif op.is_exit:
                    term = ("exit",)
                elif op.is_local_call:
                    # a call in the last slot returns to the last block, as the frame list says
                    term = ("call", block_of[cfg.target(insn, pc)],
                            nxt if nxt >= 0 else nblocks - 1, pc)
                elif moved is not None and op.is_alu and insn.dst == moved.dst \
                        and op.sem not in ("mov", "movsx"):
                    body.extend(comp.alu(insn, f"r{moved.src}"))  # "mov d, s; op d": one step
                    moved = None
                    continue
                else:
                    if moved is not None:
                        body.extend(comp.alu(moved))
                        moved = None
                    body.extend(comp.insn(insn, pc))
                if op.is_alu and op.sem == "mov" and op.width == 64 and op.source_x \
                        and insn.dst != insn.src:
                    body.pop()  # written with the next instruction, or before it
                    moved = insn
            if moved is not None:
                body.extend(comp.alu(moved))
            blocks.append((body, term))
            lengths.append(count)
        # chunks: consecutive blocks of at most CHUNK instructions (a longer block is alone)
        bounds = [0]
        size = 0
        for b in range(nblocks):
            if size and size + lengths[b] > CHUNK:
                bounds.append(b)
                size = 0
            size += lengths[b]
        bounds.append(nblocks)
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
        chunk_of = [0] * nblocks
        for c, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
            chunk_of[lo:hi] = [c] * (hi - lo)
        # roots get a trace: the entry, functions, return points, the first block of each chunk
        # and whatever a trace leaves to the dispatch; any other block is reached only when a
        # limit stopped a trace before it, and gets its own one-block function when that happens
        arms: list[dict[int, list[tuple[int, str]]]] = [{} for _ in bounds[1:]]
        work = [0] + [block_of[f.start] for f in self.functions] + bounds[1:-1]
        copies = 2 * n + INLINE  # instructions the loops' traces may copy, in all
        while work:
            root = work.pop()
            c = chunk_of[root]
            if root in arms[c]:
                continue
            room = INLINE if root not in headers else min(INLINE, max(copies, 0))
            writer = _TraceWriter(blocks, lengths, headers, single, bounds[c], bounds[c + 1],
                                  root, room)
            arms[c][root] = writer.arm()
            if root in headers:
                copies -= room - writer.room
            work.extend(s for s in writer.exits if s >= 0 and s not in arms[chunk_of[s]])
        self._starts = starts
        self._lengths = lengths
        self._positions = positions
        self._block_at = block_at
        self._blocks, self._headers, self._single, self._bounds = blocks, headers, single, bounds
        self._chunk_of = chunk_of
        self._arms = arms
        # what the run loop calls to run block b: its chunk's function for a root, its own
        # function for any other block; each is compiled the first time a run needs it, so
        # code no run reaches costs no compile time
        self._entry: list[Callable | None] = [None] * nblocks

    def _function(self, b: int) -> Callable:
        """The function that runs block ``b`` (see ``_entry``), compiled now if needed."""
        c = self._chunk_of[b]
        lo, hi = self._bounds[c], self._bounds[c + 1]
        arms = self._arms[c]
        tag = self.program.digest[:12]
        if b in arms:
            name, where, keys = f"chunk{c}", f"chunk {c}", list(arms)
        else:
            arms = {b: _TraceWriter(self._blocks, self._lengths, self._headers, self._single,
                                    lo, hi, b, 0).arm()}
            name, where, keys = f"block{b}", f"block {b}", [b]
            lo, hi = b, b + 1
        namespace: dict = dict(_BOUND)
        text = _chunk_source(name, lo, hi, arms)
        exec(compile(text, f"<hermes-interp {tag} {where}>", "exec"), namespace)
        fn = namespace[name]
        # several runs may compile the same function at once: any of the copies will do
        for k in keys:
            self._entry[k] = fn
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
        dl1, dl2, dl4, dl8 = dlen - 1, dlen - 2, dlen - 4, dlen - 8
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
            while True:
                fn = entry[b] or self._function(b)
                b, left, sl, regs = fn(b, left, sl, regs, frames, data, dl1, dl2, dl4, dl8,
                                       stack, ld, st, hc, S)
                if b >= 0:
                    continue  # the next block is in another chunk
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
        except StopRun as stop:
            r0 = stop.value & MASK64
            n = limit - S[0]
        except ExecutionError as exc:
            if exc.instructions is None and exc.pc is not None:
                site = exc.pc if S[1] is None else S[1]
                exc.instructions = (limit - S[0] - lengths[self._block_at[site]]
                                    + self._positions[exc.pc])
            raise state.stamp(exc)  # noqa: B904 - the same exception, with the printed text
        return RunResult(r0, data, n, state.output_length, bytes(state.trace),
                         state.trace_dropped, time.perf_counter_ns() - started)

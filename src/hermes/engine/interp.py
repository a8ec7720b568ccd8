"""The fast interpreter: each basic block is pre-translated once into Python, then dispatched.

The program is decoded and checked once at load. Each basic block becomes one small Python
function over the registers (closure cells), generated from per-operation templates keyed by the
ISA table's ``sem`` names; a tight loop dispatches blocks, counts instructions and enforces the
budget. Memory accesses check the data slot and the live stack frames inline and fall back to a
general region lookup, so every access is bounds-checked against the program's own regions only.
"""
from __future__ import annotations

import struct
import time

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
_SUNPACK = {n: struct.Struct(f).unpack_from for n, f in ((1, "<b"), (2, "<h"), (4, "<i"))}
_PACK = {n: struct.Struct(f).pack_into for n, f in ((2, "<H"), (4, "<I"), (8, "<Q"))}
_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: W32, 8: MASK64}
#: Block functions are defined in groups of this many: Python's compiler spends time
#: proportional to the names of the enclosing scope on every nested function, so one scope with
#: all blocks of a 65,536-slot program would take minutes to compile (quadratic), groups keep it
#: linear. The blocks still share the registers as closure cells of one ``make``.
_GROUP = 256
#: A run with a ``Cancel`` flag looks at it after at most this many instructions (plus one
#: block): a few milliseconds of interpretation, and no cost at all for runs without a flag.
CANCEL_POLL = 1 << 16


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


_CMP = {"jeq": "==", "jne": "!=", "jgt": ">", "jge": ">=", "jlt": "<", "jle": "<=",
        "jsgt": ">", "jsge": ">=", "jslt": "<", "jsle": "<="}
_BINOP = {"add": "+", "sub": "-", "mul": "*", "or": "|", "and": "&", "xor": "^"}
_ATOMIC_OP = {"add": "+", "or": "|", "and": "&", "xor": "^"}


class _BlockCompiler:
    """Turns one basic block into Python statements (the body of a block function)."""

    def __init__(self, insns: list[Insn | None]):
        self.insns = insns

    def alu(self, insn: Insn, pc: int) -> list[str]:
        op = insn.op
        sem, w = op.sem, op.width
        d = f"r{insn.dst}"
        mask = "M" if w == 64 else "W"
        if op.source_x:
            s = f"r{insn.src}"
        else:
            s = str(insn.imm & (MASK64 if w == 64 else W32))
        sh = 63 if w == 64 else 31
        if sem in _BINOP:
            if sem in ("or", "and", "xor") and w == 64:
                return [f"{d} = {d} {_BINOP[sem]} {s}"]
            return [f"{d} = ({d} {_BINOP[sem]} {s}) & {mask}"]
        if sem == "mov":
            return [f"{d} = {s}" if (w == 64 or not op.source_x) else f"{d} = {s} & W"]
        if sem == "movsx":
            bits = dict(op.match)["off"]
            half = 1 << (bits - 1)
            return [f"{d} = ((({s} & {(1 << bits) - 1}) ^ {half}) - {half}) & {mask}"]
        if sem == "neg":
            return [f"{d} = -{d} & {mask}"]
        dv = d if w == 64 else f"({d} & W)"
        sv = s if (w == 64 or not op.source_x) else f"({s} & W)"
        if sem == "lsh":
            amt = f"({s} & {sh})" if op.source_x else str(int(s) & sh)
            return [f"{d} = ({d} << {amt}) & {mask}"]
        if sem == "rsh":
            amt = f"({s} & {sh})" if op.source_x else str(int(s) & sh)
            return [f"{d} = {dv} >> {amt}"]
        if sem == "arsh":
            amt = f"({s} & {sh})" if op.source_x else str(int(s) & sh)
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
            return [f"{d} = SDIV({d}, {s}, {w})"]
        if sem == "smod":
            return [f"{d} = SMOD({d}, {s}, {w})"]
        if sem == "le":
            return [] if w == 64 else [f"{d} = {d} & {(1 << w) - 1}"]
        if sem in ("be", "bswap"):
            if w == 16:
                return [f"{d} = (({d} & 255) << 8) | (({d} >> 8) & 255)"]
            return [f"{d} = BSWAP({d}, {w})"]
        raise AssertionError(sem)  # pragma: no cover - the table has no other ALU sem

    def cond(self, insn: Insn) -> str:
        op = insn.op
        w = op.width
        d = f"r{insn.dst}"
        if op.source_x:
            s = f"r{insn.src}"
            if w == 32:
                s = f"({s} & W)"
        else:
            s = str(insn.imm & (MASK64 if w == 64 else W32))
        if w == 32:
            d = f"({d} & W)"
        if op.sem == "jset":
            return f"{d} & {s}"
        if op.signed:
            sign = 1 << (w - 1)
            if not op.source_x:
                s = str(int(s) ^ sign)
            else:
                s = f"({s} ^ {sign})"
            d = f"({d} ^ {sign})"
        return f"{d} {_CMP[op.sem]} {s}"

    def load(self, dst: str, base: str, off: int, size: int, pc: int, signed: bool) -> list[str]:
        addr = f"_a = ({base} + {off}) & M" if off else f"_a = {base}"
        if size == 1:
            fast = "DATA[_a - DB]"
            sfast = "STK[_a - SB]"
        else:
            fast = f"U{size}(DATA, _a - DB)[0]"
            sfast = f"U{size}(STK, _a - SB)[0]"
        slow = f"LD(_a, {size}, {pc})"
        if signed:
            half = 1 << (size * 8 - 1)
            wrap = lambda e: f"((({e}) ^ {half}) - {half}) & M"  # noqa: E731
            fast, sfast, slow = wrap(fast), wrap(sfast), wrap(slow)
        return [addr,
                f"if DB <= _a <= DL{size}: {dst} = {fast}",
                f"elif SLO[0] <= _a <= SL{size}: {dst} = {sfast}",
                f"else: {dst} = {slow}"]

    def store(self, base: str, off: int, size: int, value: str, pc: int) -> list[str]:
        addr = f"_a = ({base} + {off}) & M" if off else f"_a = {base}"
        v = f"({value}) & {_SIZE_MASK[size]}" if size != 8 or not value.isdigit() else value
        if size == 1:
            fast, sfast = f"DATA[_a - DB] = {v}", f"STK[_a - SB] = {v}"
        else:
            fast, sfast = f"P{size}(DATA, _a - DB, {v})", f"P{size}(STK, _a - SB, {v})"
        return [addr,
                f"if DB <= _a <= DL{size}: {fast}",
                f"elif SLO[0] <= _a <= SL{size}: {sfast}",
                f"else: ST(_a, {size}, {v}, {pc})"]

    def atomic(self, insn: Insn, pc: int) -> list[str]:
        size = insn.op.width
        m = _SIZE_MASK[size]
        d, s = f"r{insn.dst}", f"r{insn.src}"
        addr = f"_a = ({d} + {insn.off}) & M"
        name = insn.op.sem[len("atomic_"):]
        lines = [addr, f"_o = LD(_a, {size}, {pc})"]
        if name == "cmpxchg":
            lines += [f"if _o == (r0 & {m}): ST(_a, {size}, {s} & {m}, {pc})", "r0 = _o"]
        elif name == "xchg":
            lines += [f"ST(_a, {size}, {s} & {m}, {pc})", f"{s} = _o"]
        else:
            fetch = name.startswith("fetch_")
            base = name[len("fetch_"):] if fetch else name
            lines.append(f"ST(_a, {size}, (_o {_ATOMIC_OP[base]} {s}) & {m}, {pc})")
            if fetch:
                lines.append(f"{s} = _o")
        return lines

    def insn(self, insn: Insn, pc: int) -> list[str]:
        op = insn.op
        if op.is_alu:
            return self.alu(insn, pc)
        if op.is_lddw:
            return [f"r{insn.dst} = {insn.imm}"]
        if op.is_load:
            return self.load(f"r{insn.dst}", f"r{insn.src}", insn.off, op.width, pc,
                             op.sem == "ldxs")
        if op.is_store:
            value = f"r{insn.src}" if op.source_x else str(insn.imm & _SIZE_MASK[op.width])
            return self.store(f"r{insn.dst}", insn.off, op.width, value, pc)
        if op.is_atomic:
            return self.atomic(insn, pc)
        if op.is_call and not op.is_local_call:
            helper = f"r{insn.dst}" if op.sem == "callx" else insn.imm
            return [f"r0 = HC({helper}, r1, r2, r3, r4, r5, {pc})"]
        raise AssertionError(op.mnemonic)  # pragma: no cover - the caller handles control flow


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
        self.functions = (checked or verify(program, helpers)).functions
        self._factory = self._compile()

    # -- translation ----------------------------------------------------------------------------
    def _compile(self):
        insns = self.program.insns
        n = len(insns)
        starts = cfg.block_leaders(insns, self.functions)
        block_of = {s: b for b, s in enumerate(starts)}
        ends = starts[1:] + [n]
        comp = _BlockCompiler(insns)
        src = []
        lengths, positions, callret = [], [0] * n, []
        for b, (s, e) in enumerate(zip(starts, ends, strict=True)):
            body: list[str] = []
            count = 0
            tail: list[str] = []
            ret = -1
            wmask = 0
            for pc in range(s, e):
                insn = insns[pc]
                if insn is None:
                    continue
                count += 1
                positions[pc] = count
                wmask |= cfg.writes(insn)
                op = insn.op
                if op.is_jump:
                    tail = [f"return {block_of[cfg.target(insn, pc)]}"]
                elif op.is_branch:
                    tail = [f"if {comp.cond(insn)}: return {block_of[cfg.target(insn, pc)]}",
                            f"return {block_of[e] if e < n else -1}"]
                elif op.is_exit:
                    tail = ["return -1"]
                elif op.is_local_call:
                    tail = [f"return {-2 - block_of[cfg.target(insn, pc)]}"]
                    ret = block_of.get(e, -1)
                else:
                    body.extend(comp.insn(insn, pc))
            if not tail:
                tail = [f"return {block_of[e]}" if e < n else "return -1"]
            lengths.append(count)
            callret.append(ret)
            regs = [f"r{r}" for r in range(11) if wmask >> r & 1]
            if b % _GROUP == 0:
                if b:
                    names = ", ".join(f"b{k}" for k in range(b - _GROUP, b))
                    src.append(f"        return [{names}]")
                src.append(f"    def group{b // _GROUP}():")
            src.append(f"        def b{b}():")
            if regs:
                src.append(f"            nonlocal {', '.join(regs)}")
            for line in body + tail:
                src.append(f"            {line}")
        nblocks = len(starts)
        last = (nblocks - 1) // _GROUP * _GROUP
        src.append(f"        return [{', '.join(f'b{k}' for k in range(last, nblocks))}]")
        groups = " + ".join(f"group{g}()" for g in range((nblocks + _GROUP - 1) // _GROUP))
        text = "\n".join([
            "def make(DATA, DB, DLEN, STK, SLO, LD, ST, HC, r1, r2, r3, r4, r5):",
            "    r0 = r6 = r7 = r8 = r9 = 0",
            f"    r10 = {STACK_TOP}",
            "    DL1, DL2, DL4, DL8 = DB + DLEN - 1, DB + DLEN - 2, DB + DLEN - 4, DB + DLEN - 8",
            f"    SL1, SL2, SL4, SL8 = {STACK_TOP - 1}, {STACK_TOP - 2}, {STACK_TOP - 4}, "
            f"{STACK_TOP - 8}",
            *src,
            "    def regs():",
            "        return (r0, r6, r7, r8, r9, r10)",
            "    def setregs(a, b, c, d, e):",
            "        nonlocal r6, r7, r8, r9, r10",
            "        r6, r7, r8, r9, r10 = a, b, c, d, e",
            f"    return {groups}, regs, setregs",
        ])
        namespace = {"M": MASK64, "W": W32, "SB": STACK_BASE, "SDIV": sdiv, "SMOD": smod,
                     "BSWAP": bswap, **{f"U{k}": v for k, v in _UNPACK.items()},
                     **{f"P{k}": v for k, v in _PACK.items()}}
        code = compile(text, f"<hermes-interp {self.program.digest[:12]}>", "exec")
        exec(code, namespace)
        self._starts = starts
        self._lengths = lengths
        self._positions = positions
        self._callret = callret
        self.source = text
        return namespace["make"]

    # -- execution ------------------------------------------------------------------------------
    def run(self, memory: bytearray | memoryview | bytes | None = None,
            budget: int | None = None, *, cancel: Cancel | None = None,
            length: int | None = None, args: tuple[int, ...] = ()) -> RunResult:
        """Run once; see ``hermes.engine.run``."""
        budget = self.budget if budget is None else budget
        # The dispatch loop compares the count with one limit: the budget, or for a cancellable
        # run the next point at which the flag is polled.
        limit = budget if cancel is None else min(budget, CANCEL_POLL)
        data, r1, r2 = input_region(memory, length)
        r3, r4, r5 = run_args(args)
        dlen = len(data)
        stack = bytearray(STACK_SIZE * MAX_CALL_DEPTH)
        slo = [STACK_TOP - STACK_SIZE]
        segments = [(seg.vaddr, seg.end, bytearray(seg.data) if seg.writable else seg.data,
                     seg.writable, seg.name) for seg in self.program.segments if seg.data]
        depth = [0]

        def find(addr: int, size: int, write: bool, pc: int):
            if DATA_BASE <= addr and addr + size <= DATA_BASE + dlen:
                return data, addr - DATA_BASE
            if slo[0] <= addr and addr + size <= STACK_TOP:
                return stack, addr - STACK_BASE
            for lo, hi, buf, writable, _name in segments:
                if lo <= addr and addr + size <= hi and (writable or not write):
                    return buf, addr - lo
            raise out_of_bounds(pc, addr, size, write, dlen, self.program.segments, depth[0])

        def ld(addr: int, size: int, pc: int) -> int:
            buf, off = find(addr, size, False, pc)
            return int.from_bytes(buf[off:off + size], "little")

        def st(addr: int, size: int, value: int, pc: int) -> None:
            buf, off = find(addr, size, True, pc)
            buf[off:off + size] = (value & _SIZE_MASK[size]).to_bytes(size, "little")

        def ctx_read(addr: int, size: int) -> bytes:
            buf, off = find(addr, size, False, cur_pc[0])
            return bytes(buf[off:off + size])

        def ctx_write(addr: int, blob: bytes) -> None:
            buf, off = find(addr, len(blob), True, cur_pc[0])
            buf[off:off + len(blob)] = blob

        def ctx_view(addr: int, size: int, write: bool) -> memoryview:
            buf, off = find(addr, size, write, cur_pc[0])
            return memoryview(buf)[off:off + size]

        cur_pc = [0]
        state = RunState(dlen)
        ctx = HelperContext(ctx_read, ctx_write, ctx_view, state)
        helpers = self.helpers

        def hc(hid: int, a: int, b: int, c: int, d: int, e: int, pc: int) -> int:
            # The poll every CANCEL_POLL instructions is not a time bound when each instruction
            # may be a long helper call: a cancelled run stops at its next call.
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled", "run cancelled", pc)
            helper = helpers.get(hid)
            if helper is None:
                raise ExecutionError("helper", f"call to unknown helper id {hid}", pc)
            cur_pc[0] = ctx.pc = pc
            try:
                return helper.fn(ctx, a, b, c, d, e) & MASK64
            except (ExecutionError, StopRun):
                raise
            except Exception as exc:  # a helper bug must not look like a crash of the engine
                raise ExecutionError("helper", f"helper {helper.name} failed: {exc}", pc) from exc

        blocks, getregs, setregs = self._factory(data, DATA_BASE, dlen, stack, slo, ld, st, hc,
                                                 r1, r2, r3, r4, r5)
        lengths, callret = self._lengths, self._callret
        frames: list[tuple[int, int, int, int, int, int]] = []
        b = 0
        n = 0
        started = time.perf_counter_ns()
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled", "run cancelled", self._starts[b], instructions=0)
            while True:
                n += lengths[b]
                if n > limit:
                    if n > budget:
                        n -= lengths[b]
                        raise BudgetExceeded("budget", f"instruction budget of {budget} exhausted",
                                             self._starts[b], instructions=n)
                    if cancel is not None and cancel.is_set():
                        n -= lengths[b]
                        raise Cancelled("cancelled", "run cancelled", self._starts[b],
                                        instructions=n)
                    limit = min(budget, n + CANCEL_POLL)
                nb = blocks[b]()
                if nb >= 0:
                    b = nb
                elif nb == -1:
                    if not frames:
                        r0 = getregs()[0]
                        break
                    b, *saved = frames.pop()
                    setregs(*saved)
                    depth[0] -= 1
                    slo[0] += STACK_SIZE
                else:
                    if len(frames) + 1 >= MAX_CALL_DEPTH:
                        raise ExecutionError("call_depth", f"call depth limit of {MAX_CALL_DEPTH} "
                                             "frames exceeded", self._last_pc(b))
                    _, r6, r7, r8, r9, r10 = getregs()
                    frames.append((callret[b], r6, r7, r8, r9, r10))
                    setregs(r6, r7, r8, r9, r10 - STACK_SIZE)
                    depth[0] += 1
                    slo[0] -= STACK_SIZE
                    b = -2 - nb
        except StopRun as stop:
            r0 = stop.value & MASK64
        except ExecutionError as exc:
            if exc.instructions is None and exc.pc is not None:
                exc.instructions = n - lengths[b] + self._positions[exc.pc]
            raise state.stamp(exc)  # noqa: B904 - the same exception, with the printed text
        return RunResult(r0, data, n, state.output_length, bytes(state.trace),
                         state.trace_dropped, time.perf_counter_ns() - started)

    def _last_pc(self, b: int) -> int:
        end = self._starts[b + 1] if b + 1 < len(self._starts) else len(self.program.insns)
        pc = end - 1
        while self.program.insns[pc] is None:
            pc -= 1
        return pc

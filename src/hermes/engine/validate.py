"""Structural load-time checks, the first part of the load contract (``verifier.verify``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProgramError
from .disasm import format_insn
from .helpers import HelperRegistry
from .isa import Insn, jump_target
from .program import Program

_ALL = (1 << 11) - 1
_R0 = 1 << 0
_ARGS = 0b111110        # r1..r5
_R10 = 1 << 10


@dataclass(frozen=True)
class Function:
    """A bpf-to-bpf function: slots [start, end) of the program."""

    start: int
    end: int


def writes(insn: Insn) -> int:
    """Bit set of registers ``insn`` writes (r0..r10 as bits 0..10)."""
    form, sem = insn.op.form, insn.op.sem
    if form in ("alu_k", "alu_x", "unary", "end", "lddw", "ldx"):
        return 1 << insn.dst
    if form == "atomic":
        if sem == "atomic_cmpxchg":
            return _R0
        if "fetch" in sem or sem == "atomic_xchg":
            return 1 << insn.src
        return 0
    if form in ("call", "callx", "call_local"):
        return _R0
    return 0


def reads(insn: Insn) -> int:
    """Bit set of registers ``insn`` reads."""
    form, sem = insn.op.form, insn.op.sem
    d, s = 1 << insn.dst, 1 << insn.src
    if form == "alu_k":
        return 0 if sem == "mov" else d
    if form == "alu_x":
        return s if sem in ("mov", "movsx") else d | s
    if form in ("unary", "end", "callx", "st"):
        return d
    if form == "jcond_k":
        return d
    if form == "jcond_x":
        return d | s
    if form == "ldx":
        return s
    if form == "stx":
        return d | s
    if form == "atomic":
        return d | s | (_R0 if sem == "atomic_cmpxchg" else 0)
    if form == "exit":
        return _R0
    return 0


def local_call_targets(insns: "list[Insn | None]") -> set[int]:
    """Slots that some local call (``call local``) jumps to."""
    return {jump_target(insn, i) for i, insn in enumerate(insns)
            if insn is not None and insn.op.form == "call_local"}


#: Forms after which the next slot starts a new basic block (the pc changes, or may).
BLOCK_ENDS = ("ja", "gotol", "jcond_k", "jcond_x", "exit", "call_local")


def block_leaders(insns: "list[Insn | None]",
                  funcs: "list[Function] | None" = None) -> list[int]:
    """Slots that start a basic block: function starts (``funcs``, default ``functions``),
    jump and call targets, and the slot after every instruction that changes the pc. Every
    engine charges the budget and counts instructions per block of this split, so they agree."""
    out = {f.start for f in (functions(insns) if funcs is None else funcs)}
    for pc, insn in enumerate(insns):
        if insn is None:
            continue
        target = jump_target(insn, pc)
        if target is not None:
            out.add(target)
        if insn.op.form in BLOCK_ENDS and pc + 1 < len(insns):
            out.add(pc + 1)
    return sorted(out)


def functions(insns: "list[Insn | None]") -> list[Function]:
    """Split the program into functions at local-call targets (slot 0 starts the entry function)."""
    ordered = sorted(local_call_targets(insns) | {0})
    return [Function(s, e) for s, e in zip(ordered, ordered[1:] + [len(insns)])]


def _err(reason: str, i: int, insns: "list[Insn | None]") -> ProgramError:
    insn = insns[i]
    return ProgramError(reason, i, format_insn(insn) if insn is not None else None)


def certain_faults(insns: "list[Insn | None]", f: Function, entered_by_call: bool) -> set[int]:
    """Slots of ``f`` whose memory access faults on every execution, at every call depth.

    ``entered_by_call`` says whether ``f`` can run as a callee (every function but an entry
    function that no local call targets): then r10 may be any frame's top, not just the stack
    top. A block-local constant propagation finds accesses whose address lies outside every
    region a program can map on every run: a constant address below the data slot or reaching
    the stack top or above, or ``r10 + off`` reaching the stack top even for the deepest frame
    ``f`` can run in (nothing is mapped at or above ``STACK_TOP``; ``memory.input_region`` keeps
    the data slot below the program data). Paths through such an instruction never reach what
    follows it, so the r0 check ignores them (the run reports the fault instead).
    """
    from .memory import DATA_BASE, MAX_CALL_DEPTH, STACK_SIZE, STACK_TOP
    deepest = MAX_CALL_DEPTH - 1 if entered_by_call or f.start != 0 else 0
    leaders = {f.start}
    for i in range(f.start, f.end):
        insn = insns[i]
        if insn is not None:
            t = jump_target(insn, i)
            if t is not None:
                leaders.add(t)
    faults: set[int] = set()
    consts: dict[int, int] = {}
    for i in range(f.start, f.end):
        insn = insns[i]
        if insn is None:
            continue
        if i in leaders:
            consts = {}
        form, sem = insn.op.form, insn.op.sem
        base = None
        if form in ("ldx",):
            base = insn.src
        elif form in ("st", "stx", "atomic"):
            base = insn.dst
        size = insn.op.width
        if base == 10:
            # frame d has r10 = STACK_TOP - STACK_SIZE * d, and every frame up to STACK_TOP is
            # live at depth d (callers' frames are addressable)
            if insn.off + size > STACK_SIZE * deepest:
                faults.add(i)
        elif base is not None and base in consts:
            addr = (consts[base] + insn.off) & 0xFFFFFFFFFFFFFFFF
            if addr + size <= DATA_BASE or addr + size > STACK_TOP:
                faults.add(i)
        # a local callee may leave anything in r0..r5 (only r6..r9 and r10 are restored)
        written = _R0 | _ARGS if form == "call_local" else writes(insn)
        if form == "lddw" or (form == "alu_k" and sem == "mov" and insn.op.width == 64):
            consts[insn.dst] = insn.imm & 0xFFFFFFFFFFFFFFFF
        elif form == "alu_k" and sem in ("add", "sub") and insn.op.width == 64 \
                and insn.dst in consts:
            delta = insn.imm if sem == "add" else -insn.imm
            consts[insn.dst] = (consts[insn.dst] + delta) & 0xFFFFFFFFFFFFFFFF
        else:
            for r in range(10):
                if written >> r & 1:
                    consts.pop(r, None)
    return faults


def successors(insn: Insn, i: int) -> list[int]:
    """Slots control may reach after ``insn`` at ``i`` within its function."""
    form = insn.op.form
    nxt = i + insn.slots
    if form == "exit":
        return []
    if form in ("ja", "gotol"):
        return [jump_target(insn, i)]
    if form in ("jcond_k", "jcond_x"):
        return [nxt, jump_target(insn, i)]
    return [nxt]


def check(program: Program, helpers: HelperRegistry) -> list[Function]:
    """The structural part of the load contract (``verifier.verify`` runs it first); returns
    the program's functions or raises ``ProgramError``.

    Checks: each function ends in ``exit`` or an unconditional jump (no fall-through), jumps stay
    inside their function, no write to r10, no ``ja -1`` self-loop, helper calls only to
    registered helpers, and r0 written on every path to each ``exit`` of the entry function.
    """
    insns = program.insns
    funcs = functions(insns)
    for f in funcs:
        last = f.end - 1
        while insns[last] is None:
            last -= 1
        if insns[last].op.form not in ("exit", "ja", "gotol"):
            what = "program" if f.start == 0 and len(funcs) == 1 else "function"
            raise _err(f"{what} does not end with exit or an unconditional jump "
                       "(execution would fall through)", last, insns)
        for i in range(f.start, f.end):
            insn = insns[i]
            if insn is None:
                continue
            if writes(insn) & _R10 and insn.op.form not in ("call", "callx", "call_local"):
                raise _err("r10 (the frame pointer) is read-only", i, insns)
            form = insn.op.form
            if form in ("ja", "gotol", "jcond_k", "jcond_x"):
                t = jump_target(insn, i)
                if t == i and form in ("ja", "gotol"):
                    raise _err("infinite loop: the jump targets itself", i, insns)
                if not f.start <= t < f.end:
                    raise _err(f"jump out of bounds: target {t} is outside the function "
                               f"[{f.start}, {f.end})", i, insns)
            elif form == "call" and insn.imm not in helpers:
                raise _err(f"call to unknown helper id {insn.imm}", i, insns)
    # Only the entry function's r0 is a result; a callee may be a C `void` function (clang
    # leaves r0 untouched there) and its caller already counts r0 as written after the call.
    _check_r0(insns, funcs[0], 0 in local_call_targets(insns))
    return funcs


def initialised(insns: "list[Insn | None]", f: Function, entry: int,
                dead_ends: "set[int] | frozenset[int]" = frozenset()) -> dict[int, int]:
    """Registers definitely written before each slot of ``f`` (bit sets), starting from ``entry``.

    Slots in ``dead_ends`` (instructions that always fault) have no successors.
    """
    state: dict[int, int] = {f.start: entry}
    work = [f.start]
    while work:
        i = work.pop()
        insn = insns[i]
        out = state[i] | writes(insn)
        for t in ([] if i in dead_ends else successors(insn, i)):
            if t >= f.end or insns[t] is None:
                continue
            old = state.get(t)
            new = out if old is None else old & out
            if new != old:
                state[t] = new
                work.append(t)
    return state


def _check_r0(insns: "list[Insn | None]", f: Function, entered_by_call: bool) -> None:
    entry = _R10 | _ARGS  # r1..r5: data window, input length, the three arguments
    state = initialised(insns, f, entry, certain_faults(insns, f, entered_by_call))
    for i, regs in sorted(state.items()):
        insn = insns[i]
        if insn.op.form == "exit" and not regs & _R0:
            raise _err("r0 may be read uninitialised: exit is reachable on a path that never "
                       "writes r0", i, insns)

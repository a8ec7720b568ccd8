"""Structural load-time checks, the first part of the load contract (``verifier.verify``)."""
from __future__ import annotations

import operator

from ..errors import ProgramError
from . import cfg
from .cfg import ARGS, R0, R10, Function
from .disasm import format_insn
from .helpers import HelperRegistry
from .isa import Insn
from .program import Program


def _err(reason: str, i: int, insns: list[Insn | None]) -> ProgramError:
    insn = insns[i]
    return ProgramError(reason, i, format_insn(insn) if insn is not None else None)


def certain_faults(insns: list[Insn | None], f: Function, entered_by_call: bool) -> set[int]:
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
    # constants are forgotten where paths merge (a fall-through past a branch keeps them)
    leaders = {f.start} | cfg.targets(insns, f.start, f.end)
    faults: set[int] = set()
    consts: dict[int, int] = {}
    for i in range(f.start, f.end):
        insn = insns[i]
        if insn is None:
            continue
        if i in leaders:
            consts = {}
        op, sem = insn.op, insn.op.sem
        base = insn.base_reg
        size = op.width
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
        written = R0 | ARGS if op.is_local_call else cfg.writes(insn)
        imm64 = op.is_alu and not op.source_x and op.width == 64
        if op.is_lddw or (imm64 and sem == "mov"):
            consts[insn.dst] = insn.imm & 0xFFFFFFFFFFFFFFFF
        elif imm64 and sem in ("add", "sub") and insn.dst in consts:
            delta = insn.imm if sem == "add" else -insn.imm
            consts[insn.dst] = (consts[insn.dst] + delta) & 0xFFFFFFFFFFFFFFFF
        else:
            for r in range(10):
                if written >> r & 1:
                    consts.pop(r, None)
    return faults


def check(program: Program, helpers: HelperRegistry) -> tuple[list[Function], dict[int, int]]:
    """The structural part of the load contract (``verifier.verify`` runs it first); returns
    the program's functions and the entry function's ``initialised`` state (from r1..r5 and
    r10, what the verifier starts from too), or raises ``ProgramError``.

    Checks: each function ends in ``exit`` or an unconditional jump (no fall-through), jumps stay
    inside their function, no write to r10, no ``ja -1`` self-loop, helper calls only to
    registered helpers, and r0 written on every path to each ``exit`` of the entry function.
    """
    insns = program.insns
    funcs = cfg.functions(insns)
    for f in funcs:
        last = cfg.last_slot(insns, f.end)
        tail = insns[last]
        assert tail is not None  # last_slot passes over an lddw's second slot
        if not (tail.op.is_exit or tail.op.is_jump):
            what = "program" if f.start == 0 and len(funcs) == 1 else "function"
            raise _err(f"{what} does not end with exit or an unconditional jump "
                       "(execution would fall through)", last, insns)
        for i in range(f.start, f.end):
            insn = insns[i]
            if insn is None:
                continue
            op = insn.op
            if cfg.writes(insn) & R10 and not op.is_call:
                raise _err("r10 (the frame pointer) is read-only", i, insns)
            if op.is_jump or op.is_branch:
                t = cfg.target(insn, i)
                if t == i and op.is_jump:
                    raise _err("infinite loop: the jump targets itself", i, insns)
                if not f.start <= t < f.end:
                    raise _err(f"jump out of bounds: target {t} is outside the function "
                               f"[{f.start}, {f.end})", i, insns)
            elif op.sem == "call" and insn.imm not in helpers:
                raise _err(f"call to unknown helper id {insn.imm}", i, insns)
    # Only the entry function's r0 is a result; a callee may be a C `void` function (clang
    # leaves r0 untouched there) and its caller already counts r0 as written after the call.
    return funcs, _check_r0(insns, funcs[0], 0 in cfg.local_call_targets(insns))


def _initialised_after(insn: Insn, state: int) -> int:
    """Registers holding a defined value after ``insn``: calls define r0 and leave r1..r5
    undefined (a helper may, a local callee does)."""
    if insn.op.is_call:
        return (state | R0) & ~ARGS
    return state | cfg.writes(insn)


def initialised(insns: list[Insn | None], f: Function, entry: int,
                dead_ends: set[int] | frozenset[int] = frozenset()) -> dict[int, int]:
    """Registers definitely written (and not clobbered by a call since) before each slot of
    ``f`` reachable from its start (bit sets), starting from ``entry``.

    Slots in ``dead_ends`` (instructions that always fault) have no successors.
    """
    return cfg.forward(insns, f, entry, _initialised_after, operator.and_, dead_ends)


#: Registers defined when a function starts: r1..r5 (the entry function's data window, input
#: length and three arguments, exactly as they are a local function's arguments) and r10.
ENTRY = R10 | ARGS


def _check_r0(insns: list[Insn | None], f: Function, entered_by_call: bool) -> dict[int, int]:
    state = initialised(insns, f, ENTRY, certain_faults(insns, f, entered_by_call))
    for i, regs in sorted(state.items()):
        insn = insns[i]
        assert insn is not None  # the dataflow has states for instruction slots only
        if insn.op.is_exit and not regs & R0:
            raise _err("r0 may be read uninitialised: exit is reachable on a path that never "
                       "writes r0", i, insns)
    return state

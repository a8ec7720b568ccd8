"""Control and data flow of a decoded program: targets, successors, functions, blocks, dataflow.

The one place that says where control goes after an instruction (from the ``Op`` properties of
the ISA table) and which registers an instruction reads and writes. The basic-block split here
(``block_leaders``) fixes the budget and instruction-count semantics: every engine charges the
budget and counts instructions per block of this split, so they agree. ``forward`` is the one
worklist dataflow; the load checks and the verifier give it their transfer functions.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .isa import Insn, jump_target

#: Register bit sets (r0..r10 as bits 0..10).
R0 = 1 << 0
ARGS = 0b111110        #: r1..r5, the arguments of every function (and what calls clobber)
R10 = 1 << 10          #: the frame pointer

Insns = Sequence["Insn | None"]
State = TypeVar("State")


@dataclass(frozen=True)
class Function:
    """A bpf-to-bpf function: slots [start, end) of the program."""

    start: int
    end: int


def writes(insn: Insn) -> int:
    """Bit set of registers ``insn`` writes (r0..r10 as bits 0..10); a call writes r0."""
    op = insn.op
    if op.is_alu or op.is_lddw or op.is_load:
        return 1 << insn.dst
    if op.is_atomic:
        if op.sem == "atomic_cmpxchg":
            return R0
        if "fetch" in op.sem or op.sem == "atomic_xchg":
            return 1 << insn.src
        return 0
    if op.is_call:
        return R0
    return 0


def reads(insn: Insn) -> int:
    """Bit set of registers ``insn`` reads."""
    op = insn.op
    d, s = 1 << insn.dst, 1 << insn.src
    if op.is_alu:
        if op.sem in ("mov", "movsx"):
            return s if op.source_x else 0
        return d | s if op.source_x else d
    if op.is_branch or op.is_store:
        return d | s if op.source_x else d
    if op.is_load:
        return s
    if op.is_atomic:
        return d | s | (R0 if op.sem == "atomic_cmpxchg" else 0)
    if op.is_exit:
        return R0
    if op.sem == "callx":  # the helper id
        return d
    return 0


def target(insn: Insn, i: int) -> int:
    """``jump_target`` of an instruction that has one (``Op.has_target``)."""
    slot = jump_target(insn, i)
    assert slot is not None, insn
    return slot


def successors(insn: Insn, i: int) -> list[int]:
    """Slots control may reach after ``insn`` at ``i`` within its function (a local call
    returns to the next slot; an ``exit`` has none)."""
    op = insn.op
    if op.is_exit:
        return []
    if op.is_jump:
        return [target(insn, i)]
    nxt = i + insn.slots
    if op.is_branch:
        return [nxt, target(insn, i)]
    return [nxt]


def targets(insns: Insns, start: int = 0, end: int | None = None) -> set[int]:
    """Slots that the jumps and local calls in slots [start, end) go to."""
    out = set()
    for i in range(start, len(insns) if end is None else end):
        insn = insns[i]
        if insn is not None and insn.op.has_target:
            out.add(target(insn, i))
    return out


def local_call_targets(insns: Insns) -> set[int]:
    """Slots that some local call (``call local``) jumps to."""
    return {target(insn, i) for i, insn in enumerate(insns)
            if insn is not None and insn.op.is_local_call}


def functions(insns: Insns) -> list[Function]:
    """Split the program into functions at local-call targets (slot 0 starts the entry function)."""
    ordered = sorted(local_call_targets(insns) | {0})
    return [Function(s, e) for s, e in zip(ordered, ordered[1:] + [len(insns)], strict=True)]


def block_leaders(insns: Insns, funcs: list[Function] | None = None) -> list[int]:
    """Slots that start a basic block: function starts (``funcs``, default ``functions``),
    jump and call targets, and the slot after every instruction that ends a block
    (``Op.ends_block``). Every engine charges the budget and counts instructions per block of
    this split, so they agree."""
    out = {f.start for f in (functions(insns) if funcs is None else funcs)} | targets(insns)
    for pc, insn in enumerate(insns):
        if insn is not None and insn.op.ends_block and pc + 1 < len(insns):
            out.add(pc + 1)
    return sorted(out)


def last_slot(insns: Insns, end: int) -> int:
    """The slot of the last instruction before ``end`` (an lddw's second half is skipped)."""
    last = end - 1
    while insns[last] is None:
        last -= 1
    return last


def forward(insns: Insns, f: Function, entry: State,
            transfer: Callable[[Insn, State], State], join: Callable[[State, State], State],
            dead_ends: set[int] | frozenset[int] = frozenset()) -> dict[int, State]:
    """A forward dataflow over function ``f``: the state before each slot reachable from
    ``f.start``, where the start has ``entry``.

    ``transfer(insn, state)`` is the state after ``insn``; ``join`` merges the states of two
    paths into a slot (it must be monotone, so the worklist reaches a fixpoint). Slots in
    ``dead_ends`` (instructions that always fault) have no successors, and edges leaving ``f``
    are ignored (the load checks reject jumps out of a function).
    """
    state: dict[int, State] = {f.start: entry}
    work = [f.start]
    while work:
        i = work.pop()
        insn = insns[i]
        if insn is None:  # never queued: targets inside an lddw are refused by decode
            continue
        out = transfer(insn, state[i])
        for t in ([] if i in dead_ends else successors(insn, i)):
            if not f.start <= t < f.end or insns[t] is None:
                continue
            old = state.get(t)
            new = out if old is None else join(old, out)
            if new != old:
                state[t] = new
                work.append(t)
    return state

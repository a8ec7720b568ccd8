"""Load-time verifier: structural checks, call-graph depth, register data flow and stack proofs.

``verify`` is the one load contract (``hermes.engine.check``): every engine runs it on load.

``verify(program, helpers)`` runs the structural checks (``validate.check``) and adds:

* the static call graph: when it is acyclic with at most ``MAX_CALL_DEPTH`` frames on any chain
  the depth limit is proven (``bounded``); recursion or deeper chains are rejected with
  ``strict_calls=True`` and otherwise left to the engines' run-time depth check;
* register data flow: no register is read before it is written (r0 and r6..r9 at entry, r1..r5
  after any call; r1..r5 are the arguments of every function, the entry function's included);
* stack proofs: a load/store whose base register is provably ``r10 + constant`` with the whole
  access inside the current 512-byte frame is recorded in ``VerifierInfo.stack_safe`` so the JIT
  accesses it without a bounds check.

Every rejection is a ``VerifierError`` carrying the instruction index and its disassembled text.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ProgramError, VerifierError
from . import cfg, validate
from .cfg import Function
from .disasm import format_insn
from .helpers import HelperRegistry
from .isa import Insn
from .memory import MAX_CALL_DEPTH, STACK_SIZE
from .program import Program


@dataclass
class VerifierInfo:
    """What the verifier learnt about a program, for the engines that compile it."""

    #: The program's functions (slot ranges), entry function first.
    functions: list[Function]
    #: Function index of every local call target, by call-site slot.
    call_targets: dict[int, int] = field(default_factory=dict)
    #: Deepest call chain from the entry function, in frames (1 = no local calls); meaningful
    #: when ``bounded``.
    max_depth: int = 1
    #: True when the call graph is acyclic and no chain exceeds MAX_CALL_DEPTH frames, so no run
    #: can exceed the depth limit; otherwise engines check the depth at run time.
    bounded: bool = True
    #: Slots reachable from the entry of their function.
    reachable: set[int] = field(default_factory=set)
    #: Memory accesses proven inside the current stack frame: slot -> byte offset from r10
    #: (negative; the access covers [r10 + offset, r10 + offset + size)).
    stack_safe: dict[int, int] = field(default_factory=dict)


def _error(reason: str, index: int, insns: list[Insn | None]) -> VerifierError:
    insn = insns[index] if 0 <= index < len(insns) else None
    return VerifierError(reason, index, format_insn(insn) if insn is not None else None)


def _check_reads(insns: list[Insn | None], state: dict[int, int], entry: bool) -> None:
    for i in sorted(state):
        insn = insns[i]
        assert insn is not None  # the dataflow has states for instruction slots only
        used = cfg.reads(insn)
        if not entry and insn.op.is_exit:
            used = 0  # a local function may be C `void`: its r0 is not a result
        missing = used & ~state[i]
        if missing:
            reg = (missing & -missing).bit_length() - 1
            after = " (r1..r5 are clobbered by calls)" if 1 <= reg <= 5 else ""
            raise _error(f"read of uninitialised register r{reg}{after}", i, insns)


# -- stack pointer tracking: value per register is None (unknown) or an offset from r10 ----------

def _fp_transfer(insn: Insn, regs: tuple) -> tuple:
    op, sem = insn.op, insn.op.sem
    out = list(regs)
    if op.is_call:
        for r in range(0, 6):
            out[r] = None
        return tuple(out)
    written = cfg.writes(insn)
    if not written:
        return regs
    d = insn.dst
    alu64 = op.is_alu and op.width == 64
    if alu64 and op.source_x and sem == "mov":
        out[d] = regs[insn.src]
    elif alu64 and not op.source_x and sem in ("add", "sub") and regs[d] is not None:
        delta = insn.imm if sem == "add" else -insn.imm
        out[d] = regs[d] + delta
    else:
        for r in range(11):
            if written >> r & 1:
                out[r] = None
    out[10] = 0
    return tuple(out)


def _fp_join(a: tuple, b: tuple) -> tuple:
    return tuple(x if x == y else None for x, y in zip(a, b, strict=True))


def _stack_proofs(insns: list[Insn | None], f: Function, out: dict[int, int]) -> None:
    entry = (None,) * 10 + (0,)
    state = cfg.forward(insns, f, entry, _fp_transfer, _fp_join)
    for i, regs in state.items():
        insn = insns[i]
        assert insn is not None  # the dataflow has states for instruction slots only
        reg = insn.base_reg
        base = None if reg is None else regs[reg]
        if base is None:
            continue
        lo = base + insn.off
        if -STACK_SIZE <= lo and lo + insn.op.width <= 0:
            out[i] = lo


def _call_graph(insns: list[Insn | None], funcs: list[Function],
                reach: dict[int, dict[int, int]], index_of: dict[int, int]) -> int:
    """The deepest chain of calls through reachable call sites, in frames; raises
    ``VerifierError`` on recursion or on a chain deeper than MAX_CALL_DEPTH (``verify`` decides
    whether that rejects the program)."""
    edges: dict[int, list[tuple[int, int]]] = {k: [] for k in range(len(funcs))}
    for k in range(len(funcs)):
        for i in sorted(reach.get(k, {})):
            insn = insns[i]
            assert insn is not None  # reachable slots hold instructions
            if insn.op.is_local_call:
                edges[k].append((i, index_of[cfg.target(insn, i)]))
    depth: dict[int, int] = {}
    on_stack: set[int] = set()

    def visit(k: int, level: int) -> int:
        """Height of the call tree under function k, entered as frame number ``level``."""
        if k in depth:
            return depth[k]
        on_stack.add(k)
        best = 1
        for site, callee in edges[k]:
            if callee in on_stack:
                raise _error(f"recursive call: function at {funcs[callee].start} is already on "
                             "the call chain (recursion is not allowed)", site, insns)
            if level + 1 > MAX_CALL_DEPTH:
                raise _error(f"call chain too deep: more than {MAX_CALL_DEPTH} frames", site,
                             insns)
            sub = visit(callee, level + 1)
            if level + sub > MAX_CALL_DEPTH:
                raise _error(f"call chain too deep: more than {MAX_CALL_DEPTH} frames", site,
                             insns)
            best = max(best, sub + 1)
        on_stack.discard(k)
        depth[k] = best
        return best

    # visit() recurses along one call chain only, which is cut off after MAX_CALL_DEPTH frames
    return visit(0, 1)


def verify(program: Program, helpers: HelperRegistry, *,
           strict_calls: bool = False) -> VerifierInfo:
    """Check ``program`` against ``helpers``; returns facts for the JIT or raises ``VerifierError``.

    With ``strict_calls`` recursion and call chains deeper than MAX_CALL_DEPTH frames are
    rejected; otherwise they are accepted with ``info.bounded = False`` and limited at run time.
    """
    insns = program.insns
    try:
        funcs, entry_state = validate.check(program, helpers)
    except VerifierError:
        raise
    except ProgramError as exc:
        raise VerifierError(exc.reason, exc.index, exc.insn_text) from None
    info = VerifierInfo(functions=funcs)
    states: dict[int, dict[int, int]] = {}
    entry_called = 0 in cfg.local_call_targets(insns)
    for k, f in enumerate(funcs):
        # instructions that fault on every execution (at every depth f can run at) end paths
        state = entry_state if k == 0 else validate.initialised(
            insns, f, validate.ENTRY, validate.certain_faults(insns, f, entry_called))
        _check_reads(insns, state, f.start == 0)
        states[k] = state
        info.reachable.update(state)
        _stack_proofs(insns, f, info.stack_safe)
    # Every call site gets its callee, reachable or not: the engines compile each one (a site the
    # analysis calls unreachable still gets a run-time depth check in the JIT). Only reachable
    # sites build the call graph whose depth is proven: an unreachable call cannot deepen a run.
    index_of = {f.start: k for k, f in enumerate(funcs)}
    info.call_targets = {i: index_of[cfg.target(insn, i)] for i, insn in enumerate(insns)
                         if insn is not None and insn.op.is_local_call}
    try:
        info.max_depth = _call_graph(insns, funcs, states, index_of)
    except VerifierError:
        if strict_calls:
            raise
        # recursion or a too-deep chain: allowed, the run stops with a call_depth error when it
        # really goes too deep (the reference interpreter's behaviour)
        info.bounded = False
        info.max_depth = MAX_CALL_DEPTH + 1
    return info

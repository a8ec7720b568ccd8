"""Loop analysis for the JIT's check-free fast loops (chunked loop versioning).

For an innermost natural loop without local calls we find the registers that change only by
constant additions (induction variables, IVs), the range of their change per iteration, and the
longest instruction path of one iteration. At run time, on entry to the loop header, the JIT
computes how many iterations K can certainly run without exhausting the budget and without any
IV-based data-slot access leaving the slot; it then runs K iterations of a copy of the loop that has
no budget compares and no bounds checks for those accesses, and returns to the checked loop (which
recomputes K) when K is used up. The loop's own exit conditions are untouched, so no trip count
is needed and the semantics (results, counts, faults) stay exactly those of the checked code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import validate
from ..isa import Insn
from ..program import jump_target

#: Offsets and increments beyond this magnitude make an access ineligible (keeps K's i64 math
#: free of overflow: slot offsets are below 2**40 by the dispatch's own check).
LIMIT = 1 << 32
#: Single-block loops up to UNROLL_MAX_LEN instructions get UNROLL copies per fast iteration.
UNROLL = 4
UNROLL_MAX_LEN = 16
#: Loops with more basic blocks than this are not versioned.
MAX_LOOP_BLOCKS = 64


@dataclass
class Access:
    """An IV-based data access: base register, offset range [lo, hi) over the iteration."""

    pc: int
    reg: int
    lo: int        #: lowest byte offset from the register's value at the header (incl. partial)
    hi: int        #: one past the highest byte offset (incl. partial and size)


@dataclass
class LoopPlan:
    """A loop the JIT versions: its header, blocks, IV increments and eligible accesses."""

    header: int
    body: set[int]                               #: block starts
    max_iter_len: int                            #: longest header-to-exit/back-edge path
    inc: dict[int, tuple[int, int]] = field(default_factory=dict)   #: reg -> (min, max) per iter
    accesses: dict[int, Access] = field(default_factory=dict)       #: pc -> access
    #: copies of the header block per fast iteration (single-block loops are unrolled)
    unroll: int = 1
    #: loop-exit tests on IVs against loop-invariant bounds, by pc: (iv register, value offset
    #: from the header value at the test, step per iteration, continue condition "<", "<=",
    #: ">", ">=" or "!=" (unsigned), bound register or None, bound immediate, stay on taken);
    #: the dispatch limits K to the iterations in which every such test certainly stays in the
    #: loop, and the fast copy does not evaluate them
    tests: dict = field(default_factory=dict)
    #: instructions of the shortest iteration (header back to header); the fast copy bounds its
    #: iterations through the instruction count instead of a separate down-counter
    uniform: "int | None" = None


def _succ(insns: "list[Insn | None]", s: int, e: int) -> list[int]:
    last = e - 1
    while insns[last] is None:
        last -= 1
    insn = insns[last]
    form = insn.op.form
    if form == "exit":
        return []
    if form in ("ja", "gotol"):
        return [jump_target(insn, last)]
    if form in ("jcond_k", "jcond_x"):
        return [e, jump_target(insn, last)]
    return [e]


def plan_loops(insns: "list[Insn | None]", starts: list[int], ends: dict[int, int],
               fstart: int, fend: int, stack_safe: dict[int, int]) -> dict[int, LoopPlan]:
    """Loops of the function [fstart, fend) worth versioning, by header block start."""
    blocks = [s for s in starts if fstart <= s < fend]
    succ = {s: [t for t in _succ(insns, s, ends[s]) if fstart <= t < fend] for s in blocks}
    pred: dict[int, list[int]] = {s: [] for s in blocks}
    for s in blocks:
        for t in succ[s]:
            pred[t].append(s)
    # candidate back-edges: u -> h with h <= u (every cycle has one)
    by_header: dict[int, list[int]] = {}
    for u in blocks:
        for h in succ[u]:
            if h <= u:
                by_header.setdefault(h, []).append(u)
    plans: dict[int, LoopPlan] = {}
    bodies: dict[int, set[int]] = {}
    for h, latches in by_header.items():
        body = {h}
        work = [u for u in latches if u != h]
        body.update(work)
        while work:
            b = work.pop()
            for p in pred[b]:
                if p not in body:
                    body.add(p)
                    work.append(p)
        bodies[h] = body
    for h, body in bodies.items():
        # single entry (h dominates the body) and innermost (no other header inside)
        if any(p not in body for b in body if b != h for p in pred[b]):
            continue
        if any(o != h and o in body for o in bodies):
            continue
        if len(body) > MAX_LOOP_BLOCKS:
            continue  # big loops stay checked (keeps the analysis cheap and shallow)
        plan = _plan(insns, h, body, succ, ends, stack_safe)
        if plan is not None:
            plans[h] = plan
    return plans


def _plan(insns, h, body, succ, ends, stack_safe) -> "LoopPlan | None":
    slots = [i for b in body for i in range(b, ends[b]) if insns[i] is not None]
    defs: dict[int, bool] = {}  # reg -> only constant add/sub so far
    for i in slots:
        insn = insns[i]
        if insn.op.form == "call_local":
            return None  # the callee's instructions are not in the iteration length
        w = validate.writes(insn)
        iv_step = insn.op.form == "alu_k" and insn.op.sem in ("add", "sub") and insn.op.width == 64
        for r in range(11):
            if w >> r & 1:
                defs[r] = defs.get(r, True) and iv_step
    ivs = {r for r, ok in defs.items() if ok}
    # topological order of the body without back-edges (to h)
    order: list[int] = []
    state: dict[int, int] = {}

    def visit(b: int) -> bool:
        state[b] = 1
        for t in succ[b]:
            if t == h or t not in body:
                continue
            if state.get(t) == 1:
                return False  # a cycle not through h: irreducible here, leave it alone
            if t not in state and not visit(t):
                return False
        state[b] = 2
        order.append(b)
        return True

    if not visit(h):
        return None
    order.reverse()
    # longest path (instructions) from each block to a loop exit or back-edge
    longest: dict[int, int] = {}
    for b in reversed(order):
        n = sum(1 for i in range(b, ends[b]) if insns[i] is not None)
        nxt = [longest[t] for t in succ[b] if t in body and t != h]
        longest[b] = n + max(nxt, default=0)
    # partial IV increments at block entries: reg -> (min, max); and abstract values of the other
    # registers: ("s", lo, hi) a scalar in [lo, hi], ("p", r, lo, hi) an invariant register r plus
    # an offset in [lo, hi], or None (unknown)
    invariant = [r for r in range(11) if r not in defs]
    start_av = {r: None for r in range(11)}
    for r in invariant:
        start_av[r] = ("p", r, 0, 0)
    entry: dict[int, dict[int, tuple[int, int]]] = {h: {r: (0, 0) for r in ivs}}
    entry_av: dict[int, dict] = {h: start_av}
    inc: dict[int, tuple[int, int]] = {}
    accesses: dict[int, Access] = {}
    term_partial: dict[int, dict[int, tuple[int, int]]] = {}
    for b in order:
        cur = dict(entry[b])
        av = dict(entry_av[b])
        for i in range(b, ends[b]):
            insn = insns[i]
            if insn is None:
                continue
            form = insn.op.form
            base = insn.src if form == "ldx" else insn.dst if form in ("st", "stx") else None
            if base is not None and i not in stack_safe:
                acc = None
                if base in ivs:
                    lo, hi = cur[base]
                    acc = Access(i, base, lo + insn.off, hi + insn.off + insn.op.width)
                elif av.get(base) is not None and av[base][0] == "p":
                    _, reg, lo, hi = av[base]
                    acc = Access(i, reg, lo + insn.off, hi + insn.off + insn.op.width)
                if acc is not None and abs(acc.lo) < LIMIT and abs(acc.hi) < LIMIT:
                    accesses[i] = acc
            if insn.dst in ivs and form == "alu_k":
                d = insn.imm if insn.op.sem == "add" else -insn.imm
                lo, hi = cur[insn.dst]
                cur[insn.dst] = (lo + d, hi + d)
            _abstract(insn, av, ivs)
        term_partial[b] = dict(cur)
        for t in succ[b]:
            if t == h:
                for r, (lo, hi) in cur.items():
                    plo, phi = inc.get(r, (lo, hi))
                    inc[r] = (min(plo, lo), max(phi, hi))
            elif t in body:
                if t in entry:
                    entry[t] = {r: (min(entry[t][r][0], v[0]), max(entry[t][r][1], v[1]))
                                for r, v in cur.items()}
                    entry_av[t] = {r: _join(entry_av[t][r], v) for r, v in av.items()}
                else:
                    entry[t] = dict(cur)
                    entry_av[t] = dict(av)
    if any(abs(lo) >= LIMIT or abs(hi) >= LIMIT for lo, hi in inc.values()):
        return None
    # the partial ranges inside an iteration may exceed [min, max] of a whole iteration; the
    # access ranges above already include them
    unroll = 1
    if body == {h}:
        last = ends[h] - 1
        while insns[last] is None:
            last -= 1
        # Loops that only walk IVs are left to LLVM's vectoriser (which our unrolled exits would
        # defeat); loops with data-dependent addresses (a histogram) cannot vectorise, unroll.
        indirect = any(insns[i].op.form in ("ldx", "st", "stx", "atomic") and i not in stack_safe
                       and (insns[i].src if insns[i].op.form == "ldx" else insns[i].dst) not in ivs
                       for i in range(h, ends[h]) if insns[i] is not None)
        if insns[last].op.form in ("jcond_k", "jcond_x") and indirect and \
                sum(1 for i in range(h, ends[h]) if insns[i] is not None) <= UNROLL_MAX_LEN:
            unroll = UNROLL
    tests = {}
    for b in order:
        t = _exit_test(insns, h, b, ends[b], body, ivs, defs, inc, term_partial[b])
        if t is not None:
            tests[t[0]] = t[1:]
    # shortest and longest path from the header start to each block's end
    dist: dict[int, tuple[int, int]] = {}
    for b in order:
        n = sum(1 for i in range(b, ends[b]) if insns[i] is not None)
        preds = [dist[p] for p in order if p in dist and b in succ[p] and b != h]
        lo = min((x[0] for x in preds), default=0) + n
        hi = max((x[1] for x in preds), default=0) + n
        dist[b] = (lo, hi)
    backs = [dist[b] for b in order if h in succ[b]]
    # the shortest iteration: n iterations add at least n * shortest to the count, so a limit on
    # the count bounds the number of iterations (exactly so when all iterations are equal)
    uniform = min(x[0] for x in backs) if backs else None
    return LoopPlan(h, set(body), longest[h], inc, accesses, unroll, tests, uniform)


_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_OPS = {"jlt": "<", "jle": "<=", "jgt": ">", "jge": ">=", "jeq": "==", "jne": "!="}
#: The same comparison with its operands swapped.
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _exit_test(insns, h, b, e, body, ivs, defs, inc, partial) -> "tuple | None":
    """(pc, iv, offset, step, condition, bound reg, bound imm, stay on taken) or None."""
    last = e - 1
    while insns[last] is None:
        last -= 1
    insn = insns[last]
    op = insn.op
    if op.form not in ("jcond_k", "jcond_x") or op.width != 64 or op.sem not in _OPS:
        return None
    taken = jump_target(insn, last)
    stay_taken = taken in body
    if stay_taken == (e in body):
        return None  # not an exit test (both targets inside, or both outside)
    iv, rel, bound = insn.dst, _OPS[op.sem], insn.src
    if op.form == "jcond_x" and iv not in ivs and insn.src in ivs:
        # clang writes `if (n > i)` as `jgt rN, rI`: read it as `i < n` (the IV on the left)
        iv, rel, bound = insn.src, _MIRROR[rel], insn.dst
    if iv not in ivs or inc.get(iv, (0, 1))[0] != inc[iv][1] or inc[iv][0] == 0:
        return None
    lo, hi = partial.get(iv, (0, 1))
    if lo != hi:
        return None
    step = inc[iv][0]
    cond = rel if stay_taken else _NEGATE[rel]
    if cond in ("<", "<=") and step > 0 or cond in (">", ">=") and step < 0 or \
            cond == "!=" and step in (1, -1):
        pass
    else:
        return None
    if op.form == "jcond_x":
        if bound in defs:
            return None
        return (last, iv, lo, step, cond, bound, 0, stay_taken)
    return (last, iv, lo, step, cond, None, insn.imm & 0xFFFF_FFFF_FFFF_FFFF, stay_taken)

_SMALL = 1 << 40


def _join(a, b):
    if a is None or b is None or a[0] != b[0] or (a[0] == "p" and a[1] != b[1]):
        return None
    return a[:-2] + (min(a[-2], b[-2]), max(a[-1], b[-1]))


def _abstract(insn: Insn, av: dict, ivs: set[int]) -> None:
    """Update the abstract register values ``av`` for ``insn`` (sound over-approximation)."""
    w = validate.writes(insn)
    if not w:
        return
    form, sem, d = insn.op.form, insn.op.sem, insn.dst
    val = None
    if form == "ldx" and sem == "ldx" and insn.op.width < 8:
        val = ("s", 0, (1 << (8 * insn.op.width)) - 1)
    elif insn.op.width == 64 and form in ("alu_k", "alu_x"):
        cur = av.get(d)
        if form == "alu_k":
            k = insn.imm
            if sem == "mov":
                val = ("s", k, k) if k >= 0 else None
            elif sem in ("add", "sub") and cur is not None:
                k = k if sem == "add" else -k
                if cur[0] == "p" or cur[1] + k >= 0:
                    val = cur[:-2] + (cur[-2] + k, cur[-1] + k)
            elif sem == "lsh" and cur is not None and cur[0] == "s" and 0 <= k < 64 and \
                    cur[2] << k < _SMALL:
                val = ("s", cur[1] << k, cur[2] << k)
            elif sem == "rsh" and 0 <= k < 64:
                if cur is not None and cur[0] == "s":
                    val = ("s", cur[1] >> k, cur[2] >> k)
                elif k >= 24:
                    val = ("s", 0, (1 << (64 - k)) - 1)
            elif sem == "and" and k >= 0:
                hi = cur[2] if cur is not None and cur[0] == "s" else k
                val = ("s", 0, min(k, hi))
        else:
            src = None if insn.src in ivs else av.get(insn.src)
            if sem == "mov":
                val = src
            elif sem == "add" and cur is not None and src is not None:
                if cur[0] == "s" and src[0] == "s":
                    val = ("s", cur[1] + src[1], cur[2] + src[2])
                elif cur[0] == "p" and src[0] == "s":
                    val = ("p", cur[1], cur[2] + src[1], cur[3] + src[2])
                elif cur[0] == "s" and src[0] == "p":
                    val = ("p", src[1], src[2] + cur[1], src[3] + cur[2])
    if val is not None and val[0] == "s" and val[2] >= _SMALL:
        val = None
    for r in range(11):
        if w >> r & 1:
            av[r] = None
    if w >> d & 1 and form not in ("atomic", "call", "callx", "call_local"):
        av[d] = val

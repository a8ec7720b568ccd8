"""Loop analysis for the JIT's check-free fast loops (chunked loop versioning).

For an innermost natural loop without local calls we find the registers that change only by
constant additions (induction variables, IVs), the range of their change per iteration, and the
longest instruction path of one iteration. At run time, on entry to the loop header, the JIT
computes how many iterations K can certainly run without exhausting the budget and without any
IV-based data-slot access leaving the slot; it then runs K iterations of a copy of the loop that has
no budget compares and no bounds checks for those accesses, and returns to the checked loop (which
recomputes K) when K is used up. Exit tests on an IV (or an IV plus a constant) that certainly
stay in the loop during those K iterations are dropped from the copy, which K also bounds; any
other exit condition stays, so no trip count is needed and the semantics (results, counts,
faults) stay exactly those of the checked code. Small loops whose copy is then a chain of blocks
and whose addresses depend on loaded data are unrolled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import cfg
from ..isa import Insn, jump_target

#: Offsets and increments beyond this magnitude make an access ineligible (keeps K's i64 math
#: free of overflow: slot offsets are below 2**40 by the dispatch's own check).
LIMIT = 1 << 32
#: Chain loops up to UNROLL_MAX_LEN instructions in all get UNROLL copies per fast iteration.
UNROLL = 4
UNROLL_MAX_LEN = 16
#: Loops with more basic blocks than this are not versioned.
MAX_LOOP_BLOCKS = 64


@dataclass
class Access:
    """An IV-based data access: base registers, offset range [lo, hi) over the iteration."""

    pc: int
    #: the address is the sum of coefficient * register value at the header, (reg, coef) pairs ...
    terms: tuple[tuple[int, int], ...]
    lo: int        #: ... plus at least lo (partial IV increments included)
    hi: int        #: one past the highest byte offset (incl. partial increments and size)


@dataclass
class LoopPlan:
    """A loop the JIT versions: its header, blocks, IV increments and eligible accesses."""

    header: int
    body: set[int]                               #: block starts
    max_iter_len: int                            #: longest header-to-exit/back-edge path
    inc: dict[int, tuple[int, int]] = field(default_factory=dict)   #: reg -> (min, max) per iter
    accesses: dict[int, Access] = field(default_factory=dict)       #: pc -> access
    #: copies of the loop per fast iteration (loops whose fast copy is a chain are unrolled)
    unroll: int = 1
    #: when unrolled: the blocks of one fast iteration in order, each but the last going on to
    #: the next (certain exit tests, jumps, fall-through), the last back to the header
    chain: tuple[int, ...] = ()
    #: loop-exit tests on IVs against loop-invariant bounds, by pc: (iv register, value offset
    #: from the header value at the test, step per iteration, continue condition "<", "<=",
    #: ">", ">=" or "!=" (unsigned), bound register or None, bound immediate, stay on taken);
    #: the dispatch limits K to the iterations in which every such test certainly stays in the
    #: loop, and the fast copy does not evaluate them
    tests: dict = field(default_factory=dict)
    #: instructions of the shortest iteration (header back to header); the fast copy bounds its
    #: iterations through the instruction count instead of a separate down-counter
    uniform: int | None = None
    #: (iv, step) when the fast copy keeps no count: every iteration runs the same number of
    #: instructions, ``iv`` moves by exactly ``step`` in each, and the copy can only leave
    #: through its exits (no unproven access, call or ``exit``), so the count at an exit is
    #: the count at the dispatch plus whole iterations (read from ``iv``) plus ``at_end``
    counter: tuple[int, int] | None = None
    #: with ``counter``: per block, (instructions from the header's start to the block's end,
    #: ``iv``'s change from the header to the block's end) in one iteration
    at_end: dict[int, tuple[int, int]] = field(default_factory=dict)


def _constant_step(insn: Insn) -> bool:
    """``insn`` adds or subtracts an immediate to a 64-bit register (what an IV may do)."""
    op = insn.op
    return op.is_alu and not op.source_x and op.sem in ("add", "sub") and op.width == 64


def plan_loops(insns: list[Insn | None], starts: list[int], ends: dict[int, int],
               fstart: int, fend: int, stack_safe: dict[int, int]) -> dict[int, LoopPlan]:
    """Loops of the function [fstart, fend) worth versioning, by header block start.

    Linear in the function's size (plus n log n for the dominators): loop bodies are only
    collected up to ``MAX_LOOP_BLOCKS`` blocks, since bigger loops are never versioned.
    """
    blocks = [s for s in starts if fstart <= s < fend]
    succ = {}
    for s in blocks:
        last = cfg.last_slot(insns, ends[s])
        tail = insns[last]
        assert tail is not None  # last_slot passes over an lddw's second slot
        succ[s] = [t for t in cfg.successors(tail, last) if fstart <= t < fend]
    pred: dict[int, list[int]] = {s: [] for s in blocks}
    for s in blocks:
        for t in succ[s]:
            pred[t].append(s)
    idom = _dominators(fstart, succ, pred)
    within = _DomTree(idom, fstart)
    # back-edges: u -> h where h dominates u (clang's rotated loops are entered in the middle, so
    # the address order of blocks says nothing about which edge closes a loop)
    by_header: dict[int, list[int]] = {}
    for u in blocks:
        for h in succ[u]:
            if within.dominates(h, u):
                by_header.setdefault(h, []).append(u)
    plans: dict[int, LoopPlan] = {}
    for h, latches in by_header.items():
        body = _loop_body(h, latches, pred, MAX_LOOP_BLOCKS)
        if body is None:
            continue  # big loops stay checked (keeps the analysis cheap and shallow)
        # single entry (h dominates the body) and innermost (no other header inside)
        if any(p not in body for b in body if b != h for p in pred[b]):
            continue
        if any(o != h and o in by_header for o in body):
            continue
        plan = _plan(insns, h, body, succ, ends, stack_safe)
        if plan is not None:
            plans[h] = plan
    return plans


def _dominators(entry: int, succ: dict[int, list[int]],
                pred: dict[int, list[int]]) -> dict[int, int]:
    """Immediate dominators of the blocks reachable from ``entry`` (the entry maps to itself).

    Lengauer and Tarjan's algorithm with path compression, O(E log V): the iterative algorithm
    is quadratic on long chains of blocks with many edges to one block (dense jumps).
    """
    order: list[int] = []   # blocks by DFS preorder number
    num: dict[int, int] = {}
    parent: list[int] = []
    stack = [(entry, -1)]
    while stack:
        b, p = stack.pop()
        if b in num:
            continue
        num[b] = len(order)
        order.append(b)
        parent.append(p)
        for t in reversed(succ[b]):
            if t not in num:
                stack.append((t, num[b]))
    n = len(order)
    semi = list(range(n))
    label = list(range(n))
    ancestor = [-1] * n
    idom = [0] * n
    bucket: list[list[int]] = [[] for _ in range(n)]

    def evaluate(v: int) -> int:
        if ancestor[v] == -1:
            return v
        path = []
        while ancestor[ancestor[v]] != -1:
            path.append(v)
            v = ancestor[v]
        for x in reversed(path):
            a = ancestor[x]
            if semi[label[a]] < semi[label[x]]:
                label[x] = label[a]
            ancestor[x] = ancestor[a]
        return label[path[0]] if path else label[v]

    for w in range(n - 1, 0, -1):
        for p in pred[order[w]]:
            if p in num:
                u = evaluate(num[p])
                if semi[u] < semi[w]:
                    semi[w] = semi[u]
        bucket[semi[w]].append(w)
        pw = parent[w]
        ancestor[w] = pw
        for v in bucket[pw]:
            u = evaluate(v)
            idom[v] = u if semi[u] < semi[v] else pw
        bucket[pw] = []
    for w in range(1, n):
        if idom[w] != semi[w]:
            idom[w] = idom[idom[w]]
    return {order[w]: order[idom[w]] for w in range(n)}


class _DomTree:
    """Constant-time dominance queries: DFS entry/exit numbers of the dominator tree."""

    def __init__(self, idom: dict[int, int], entry: int) -> None:
        children: dict[int, list[int]] = {b: [] for b in idom}
        for b, d in idom.items():
            if b != entry:
                children[d].append(b)
        self.tin: dict[int, int] = {}
        self.tout: dict[int, int] = {}
        clock = 0
        stack = [(entry, False)]
        while stack:
            b, done = stack.pop()
            if done:
                self.tout[b] = clock
                clock += 1
                continue
            self.tin[b] = clock
            clock += 1
            stack.append((b, True))
            stack.extend((c, False) for c in children[b])

    def dominates(self, h: int, u: int) -> bool:
        """Whether block h dominates block u (False for blocks unreachable from the entry)."""
        if u not in self.tin or h not in self.tin:
            return False
        return self.tin[h] <= self.tin[u] and self.tout[u] <= self.tout[h]


def _loop_body(h: int, latches: list[int], pred: dict[int, list[int]],
               limit: int) -> set[int] | None:
    """Blocks of the loop of header h (the union of the natural loops of its back-edges from
    ``latches``), or None as soon as it has more than ``limit`` blocks."""
    body = {h}
    work = []
    for u in latches:
        if u not in body:
            body.add(u)
            work.append(u)
    while work:
        if len(body) > limit:
            return None
        b = work.pop()
        for p in pred[b]:
            if p not in body:
                body.add(p)
                work.append(p)
    return body if len(body) <= limit else None


def _plan(insns, h, body, succ, ends, stack_safe) -> LoopPlan | None:
    slots = [i for b in body for i in range(b, ends[b]) if insns[i] is not None]
    defs: dict[int, bool] = {}  # reg -> only constant add/sub so far
    for i in slots:
        insn = insns[i]
        op = insn.op
        if op.is_local_call:
            return None  # the callee's instructions are not in the iteration length
        w = cfg.writes(insn)
        iv_step = _constant_step(insn)
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
    # partial IV increments at block entries: reg -> (min, max); and abstract values of the
    # registers that are not IVs: (terms, lo, hi) is a sum of up to two registers' header values
    # (invariants or IVs, each times a positive coefficient; no terms: a scalar) plus an offset in
    # [lo, hi], or None (unknown)
    invariant = [r for r in range(11) if r not in defs]
    start_av: dict = {r: None for r in range(11)}
    for r in invariant:
        start_av[r] = (((r, 1),), 0, 0)
    entry: dict[int, dict[int, tuple[int, int]]] = {h: {r: (0, 0) for r in ivs}}
    entry_av: dict[int, dict] = {h: start_av}
    inc: dict[int, tuple[int, int]] = {}
    accesses: dict[int, Access] = {}
    term_partial: dict[int, dict[int, tuple[int, int]]] = {}
    term_av: dict[int, dict] = {}
    # a data-dependent address (a histogram's bin): no vectorising, unrolling helps instead
    indirect = False
    for b in order:
        cur = dict(entry[b])
        av = dict(entry_av[b])
        for i in range(b, ends[b]):
            insn = insns[i]
            if insn is None:
                continue
            # atomics stay checked: the fast copy leaves their accesses alone
            base = None if insn.op.is_atomic else insn.base_reg
            if base is not None and i not in stack_safe:
                v = _value(base, av, ivs, cur)
                if v is not None and v[0]:
                    acc = Access(i, v[0], v[1] + insn.off, v[2] + insn.off + insn.op.width)
                    if abs(acc.lo) < LIMIT and abs(acc.hi) < LIMIT:
                        accesses[i] = acc
            reg = insn.base_reg
            if reg is not None and reg not in ivs and i not in stack_safe and \
                    not _walks(_value(reg, av, ivs, cur), ivs):
                indirect = True
            if insn.dst in ivs and _constant_step(insn):
                d = insn.imm if insn.op.sem == "add" else -insn.imm
                lo, hi = cur[insn.dst]
                cur[insn.dst] = (lo + d, hi + d)
            _abstract(insn, av, ivs, cur)
        term_partial[b] = dict(cur)
        term_av[b] = av
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
    tests = {}
    for b in order:
        t = _exit_test(insns, h, b, ends[b], body, ivs, defs, inc, term_partial[b], term_av[b])
        if t is not None:
            tests[t[0]] = t[1:]
    unroll = 1
    chain: tuple[int, ...] = ()
    if _is_chain(insns, h, order, succ, ends, body, tests):
        # Loops that only walk IVs are left to LLVM's vectoriser (which our unrolled exits would
        # defeat); loops with data-dependent addresses (a histogram) cannot vectorise, unroll.
        if indirect and len(slots) <= UNROLL_MAX_LEN:
            unroll, chain = UNROLL, tuple(order)
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
    plan = LoopPlan(h, set(body), longest[h], inc, accesses, unroll, chain, tests, uniform)
    _counter(plan, insns, order, succ, ends, dist, term_partial, stack_safe)
    return plan


def _counter(plan: LoopPlan, insns, order, succ, ends, dist, term_partial, stack_safe) -> None:
    """Set ``plan.counter`` and ``plan.at_end`` when the fast copy can do without a count.

    Every path through an iteration must have the same length (so whole iterations say the
    count), an IV must move by the same step in each (so its value says how many whole
    iterations ran) with a fixed partial change at every block end, and nothing in the copy
    may need the count before it leaves the copy: no unproven or atomic access (slow path),
    no call and no ``exit``.
    """
    if plan.uniform is None or any(dist[b][0] != dist[b][1] for b in order):
        return
    if len(order) != len(plan.body):
        return  # a dead block falls into the loop: the analysis never walked it
    if any(dist[b][1] != plan.uniform for b in order if plan.header in succ[b]):
        return
    for b in order:
        for i in range(b, ends[b]):
            insn = insns[i]
            if insn is None:
                continue
            op = insn.op
            if op.is_call or op.is_exit or op.mem_base is not None and i not in stack_safe and (
                    op.is_atomic or i not in plan.accesses):
                return
    steps = [(abs(lo), r, lo) for r, (lo, hi) in plan.inc.items() if lo == hi and lo != 0
             and all(term_partial[b][r][0] == term_partial[b][r][1] for b in order)]
    if not steps:
        return
    # a power-of-two step makes the iteration count a shift
    _, iv, step = min(steps, key=lambda x: (x[0] & (x[0] - 1) != 0, x[0], x[1]))
    plan.counter = (iv, step)
    plan.at_end = {b: (dist[b][1], term_partial[b][iv][0]) for b in order}


def _walks(v, ivs: set[int]) -> bool:
    """Whether abstract value ``v`` is an address that walks with the IVs: IV and invariant
    header values plus one fixed offset (clang's ``p + i``), nothing loaded or masked."""
    return v is not None and v[1] == v[2] and any(r in ivs for r, _ in v[0])


def _is_chain(insns, h, order, succ, ends, body, tests) -> bool:
    """Whether the fast copy of the loop is a straight chain of ``order``'s blocks.

    Every block but the last goes on only to the next one: by falling through or jumping, or by
    a certain exit test (``tests``: the fast copy does not evaluate it); the last one goes back
    to the header and nowhere else in the loop (a single-block loop by a conditional branch,
    its only exit).
    """
    if len(order) != len(body):  # pragma: no cover - a natural loop is reachable from h
        return False
    for n, b in enumerate(order):
        nxt = order[n + 1] if n + 1 < len(order) else h
        last = cfg.last_slot(insns, ends[b])
        if {t for t in succ[b] if t in body} != {nxt}:
            return False
        leaves = any(t not in body for t in succ[b])
        if nxt != h and leaves and last not in tests:
            return False  # an exit the fast copy evaluates in the middle of an iteration
        if nxt == h and len(order) == 1 and not insns[last].op.is_branch:
            return False
    return True


_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_OPS = {"jlt": "<", "jle": "<=", "jgt": ">", "jge": ">=", "jeq": "==", "jne": "!="}
#: The same comparison with its operands swapped.
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _exit_test(insns, h, b, e, body, ivs, defs, inc, partial, av) -> tuple | None:
    """(pc, iv, offset, step, condition, bound reg, bound imm, stay on taken) or None.

    The tested register is an IV, or a register whose abstract value at the test is exactly an
    IV's header value plus a constant (clang tests ``i - k`` kept in another register): either
    way it equals ``iv + offset`` (mod 2**64) at the test, with ``iv`` its value at the header.
    """
    last = cfg.last_slot(insns, e)
    insn = insns[last]
    op = insn.op
    if not op.is_branch or op.width != 64 or op.sem not in _OPS:
        return None
    taken = jump_target(insn, last)
    stay_taken = taken in body
    if stay_taken == (e in body):
        return None  # not an exit test (both targets inside, or both outside)

    def iv_plus(r: int) -> tuple[int, int] | None:
        v = _value(r, av, ivs, partial)
        if v is not None and len(v[0]) == 1 and v[0][0][1] == 1 and v[0][0][0] in ivs \
                and v[1] == v[2]:
            return (v[0][0][0], v[1])
        return None

    tested, rel, bound = iv_plus(insn.dst), _OPS[op.sem], insn.src
    if op.source_x and tested is None:
        # clang writes `if (n > i)` as `jgt rN, rI`: read it as `i < n` (the IV on the left)
        tested, rel, bound = iv_plus(insn.src), _MIRROR[rel], insn.dst
    if tested is None:
        return None
    iv, lo = tested
    if inc.get(iv, (0, 1))[0] != inc[iv][1] or inc[iv][0] == 0:
        return None
    step = inc[iv][0]
    cond = rel if stay_taken else _NEGATE[rel]
    if cond in ("<", "<=") and step > 0 or cond in (">", ">=") and step < 0 or \
            cond == "!=" and step in (1, -1):
        pass
    else:
        return None
    if op.source_x:
        if bound in defs:
            return None
        return (last, iv, lo, step, cond, bound, 0, stay_taken)
    return (last, iv, lo, step, cond, None, insn.imm & 0xFFFF_FFFF_FFFF_FFFF, stay_taken)

_SMALL = 1 << 40
#: Largest register coefficient in an abstract value (a record stride, not a multiplier).
_COEF = 1 << 16


def _value(r: int, av: dict, ivs: set[int], cur: dict) -> tuple | None:
    """Abstract value of register ``r`` here: an IV is its header value plus its partial change."""
    if r in ivs:
        return (((r, 1),),) + cur[r]
    return av.get(r)


def _join(a, b):
    if a is None or b is None or a[0] != b[0]:
        return None
    return (a[0], min(a[1], b[1]), max(a[2], b[2]))


def _sum(a, b):
    """a + b for abstract values (None when the result has more than two base registers)."""
    if a is None or b is None:
        return None
    coef = dict(a[0])
    for r, c in b[0]:
        coef[r] = coef.get(r, 0) + c
    if len(coef) > 2 or any(c >= _COEF for c in coef.values()):
        return None
    return (tuple(sorted(coef.items())), a[1] + b[1], a[2] + b[2])


def _scale(a, k: int):
    """a * k for a positive constant k (None when coefficients or offsets grow too large)."""
    if a is None or k <= 0:
        return None
    terms = tuple((r, c * k) for r, c in a[0])
    if any(c >= _COEF for _, c in terms) or a[0] and max(abs(a[1]), abs(a[2])) * k >= _SMALL:
        return None
    return (terms, a[1] * k, a[2] * k)


def _abstract(insn: Insn, av: dict, ivs: set[int], cur: dict) -> None:
    """Update the abstract register values ``av`` for ``insn`` (sound over-approximation).

    Values are exact 64-bit sums only while offsets stay far below 2**63: scalars are kept
    non-negative and below 2**40, and access offsets are limited by ``LIMIT``.
    """
    w = cfg.writes(insn)
    if not w:
        return
    op, sem, d = insn.op, insn.op.sem, insn.dst
    val = None
    if op.is_load and sem == "ldx" and op.width < 8:
        val = ((), 0, (1 << (8 * op.width)) - 1)
    elif op.width == 64 and op.is_alu:  # neg and byte swaps match no case below: unknown
        cur_v = av.get(d)
        scalar = cur_v is not None and not cur_v[0]
        if not op.source_x:
            k = insn.imm
            if sem == "mov":
                val = ((), k, k) if k >= 0 else None
            elif sem in ("add", "sub") and cur_v is not None:
                k = k if sem == "add" else -k
                if not scalar or cur_v[1] + k >= 0:
                    val = (cur_v[0], cur_v[1] + k, cur_v[2] + k)
            elif sem == "lsh" and 0 <= k < 32:
                val = _scale(cur_v, 1 << k)
            elif sem == "mul":
                val = _scale(cur_v, k)
            elif sem == "rsh" and 0 <= k < 64:
                if scalar and cur_v is not None:   # (scalar implies it: said for mypy)
                    val = ((), cur_v[1] >> k, cur_v[2] >> k)
                elif k >= 24:
                    val = ((), 0, (1 << (64 - k)) - 1)
            elif sem == "and" and k >= 0:
                hi = cur_v[2] if scalar and cur_v is not None else k
                val = ((), 0, min(k, hi))
        else:
            src = _value(insn.src, av, ivs, cur)
            if sem == "mov":
                val = src
            elif sem == "add":
                val = _sum(cur_v, src)
    if val is not None and not val[0] and val[2] >= _SMALL:
        val = None
    for r in range(11):
        if w >> r & 1:
            av[r] = None
    if w >> d & 1 and not (op.is_atomic or op.is_call):
        av[d] = val

"""Translation of a verified eBPF program to LLVM IR text (one LLVM function per eBPF function).

Layout decisions (see specs/jit.md):

* every eBPF function becomes ``internal {i64, i64} @P_fK(ptr ctx, i64 depth, i64 count,
  i64 r0..r9)`` returning ``(r0, count)``; a count of -1 (never a real count) means "an error is
  recorded in the context, unwind"; ``@P(ptr ctx)`` is the native entry (P = a per-program name);
* registers and the instruction counter are allocas, promoted to SSA by the optimiser;
* failure paths are shared: one budget failure block (phis name the failing block) and one
  unwind block per function;
* basic blocks are the interpreter's blocks (same leaders), so adding the block length at block
  entry and comparing with the budget reproduces the interpreter's budget behaviour exactly;
* memory: proven stack accesses go straight to the frame; any other access checks the data slot
  with one unsigned compare against a per-size limit and otherwise calls ``@P_slow`` (stack frames
  and program segments), which records the fault and returns null;
* innermost loops get a check-free copy run in proven chunks of iterations (``loops.py``);
* nothing in the generated IR has undefined behaviour: divisors are guarded, shift amounts masked,
  all allocas initialised.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable

from ...errors import VerifierError
from .. import cfg
from ..isa import Insn, jump_target
from ..memory import DATA_BASE, MASK64, MAX_CALL_DEPTH, STACK_BASE, STACK_SIZE, STACK_TOP, Segment
from ..program import Program
from ..verifier import VerifierInfo
from .loops import LoopPlan, plan_loops

# Context slots (u64 each); mirrored by the ctypes structure in runtime.py.
CTX_DATA, CTX_DLEN, CTX_STACK, CTX_BUDGET, CTX_R1, CTX_R2, CTX_HELPER, CTX_SEGS = range(8)
CTX_ERR_KIND, CTX_ERR_PC, CTX_ERR_ADDR, CTX_ERR_SIZE, CTX_ERR_COUNT, CTX_ERR_DEPTH = range(8, 14)
CTX_COUNT, CTX_STOP_VALUE = 14, 15
CTX_R3, CTX_R4, CTX_R5 = 16, 17, 18
CTX_FIELDS = 19

# Error kinds written to CTX_ERR_KIND.
ERR_NONE, ERR_LOAD, ERR_STORE, ERR_READONLY, ERR_BUDGET, ERR_DEPTH, ERR_HELPER, ERR_STOP = range(8)
#: Not an error of the program: a specialised program's entry was called without a data slot,
#: before running any instruction; the run is made again with the program's memoryless module.
ERR_MEMORYLESS = 8

STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH
#: Most instructions one chunk of a fast loop runs before its dispatch reads the budget again
#: (bounds how long a cancelled run keeps going: ~10 ms of native code).
CANCEL_CHUNK = 1 << 24
#: Programs up to this many slots get their entry function specialised for r1 = DATA_BASE.
SPECIALISE_MAX = 256

_BIN = {"add": "add", "sub": "sub", "mul": "mul", "or": "or", "and": "and", "xor": "xor",
        "lsh": "shl", "rsh": "lshr", "arsh": "ashr"}
_ICMP = {"jeq": "eq", "jne": "ne", "jgt": "ugt", "jge": "uge", "jlt": "ult", "jle": "ule",
         "jsgt": "sgt", "jsge": "sge", "jslt": "slt", "jsle": "sle"}
_ATOMIC = {"add": "add", "or": "or", "and": "and", "xor": "xor"}
_HOT = "!prof !0"
#: Metadata: "do not unroll this loop" (numbered loop ids follow it).
_NO_UNROLL = 2
_NO_RUNTIME_UNROLL = 3


def _s64(v: int) -> int:
    """A 64-bit pattern as the signed decimal LLVM expects for i64 constants."""
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def leaders(program: Program, info: VerifierInfo) -> list[int]:
    """Block starts, exactly as the interpreter splits blocks (so counts and budgets agree)."""
    return cfg.block_leaders(program.insns, info.functions)


def _renamed(text: str, prefix: str, name: str, attrs: str) -> str:
    """A copy of function 0's IR ``text`` named ``prefix + name`` with attribute group ``attrs``."""
    head, body = text.split("\n", 1)
    head = head.replace(f"@{prefix}f0(", f"@{prefix}{name}(").replace("#0 {", f"{attrs} {{")
    return head + "\n" + body


class _Func:
    """IR text builder for one eBPF function."""

    def __init__(self, gen: ModuleGen, index: int, start: int, end: int,
                 fast_loops: bool = True, data_r1: bool = False):
        self.gen = gen
        self.fast_loops = fast_loops and gen.fast_loops
        #: r1 is the constant DATA_BASE (the specialised entry copy, ``ModuleGen.main_fn``)
        self.data_r1 = data_r1
        self.index = index
        self.start = start
        self.end = end
        self.lines: list[str] = []
        self.tmp = 0
        self.fast: LoopPlan | None = None
        #: the label of the block being written (a phi in a shared block names it)
        self.current = "entry"
        #: (block label, pc, count before the block) of every budget compare: the incoming
        #: values of the shared ``budget_fail`` block's phis
        self.budget_edges: list[tuple[str, int, str]] = []
        #: access sizes with a data-slot compare (their limits are computed at entry)
        self.sizes: set[int] = set()
        #: per loop header with ``LoopPlan.counter``: the IV and count at the dispatch and the
        #: IV's value after the chunk's last iteration
        self.counted: dict[int, tuple[str, str, str]] = {}
        #: blocks that write the count on the edges leaving such a fast copy (at the end)
        self.stubs: list[str] = []
        #: every block's end (set by ``build``)
        self.ends: dict[int, int] = {}

    def t(self) -> str:
        self.tmp += 1
        return f"%t{self.tmp}"

    def emit(self, line: str) -> None:
        self.lines.append("  " + line)

    def label(self, name: str) -> None:
        self.lines.append(f"{name}:")
        self.current = name

    def new_label(self, stem: str) -> str:
        self.tmp += 1
        return f"{stem}{self.tmp}"

    # -- registers ------------------------------------------------------------------------------
    def get(self, r: int) -> str:
        v = self.t()
        self.emit(f"{v} = load i64, ptr %r{r}")
        return v

    def put(self, r: int, value: str) -> None:
        self.emit(f"store i64 {value}, ptr %r{r}")

    def get32(self, r: int) -> str:
        v = self.t()
        self.emit(f"{v} = trunc i64 {self.get(r)} to i32")
        return v

    def zext32(self, v32: str) -> str:
        v = self.t()
        self.emit(f"{v} = zext i32 {v32} to i64")
        return v

    def budget(self) -> str:
        """The run's budget, read afresh: cancelling a run sets it to zero from another thread
        (see runtime.py), so this is an atomic load that LLVM may not fold or hoist."""
        v = self.t()
        self.emit(f"{v} = load atomic i64, ptr %budget_p monotonic, align 8")
        return v

    # -- memory ---------------------------------------------------------------------------------
    def address(self, insn: Insn, pc: int, base_reg: int, write: bool, atomic: bool,
                count: str) -> str:
        """Host pointer for the access of ``insn``; emits the checks and the fault path."""
        size = insn.op.width
        proven = self.gen.info.stack_safe.get(pc)
        if proven is not None:
            p = self.t()
            self.emit(f"{p} = getelementptr i8, ptr %frame, i64 {STACK_SIZE + proven}")
            return p
        base = self.get(base_reg)
        a = self.t()
        self.emit(f"{a} = add i64 {base}, {_s64(insn.off)}")
        o = self.t()
        self.emit(f"{o} = sub i64 {a}, {DATA_BASE}")
        # The host pointer: data + o where o folds to a constant plus registers (r1 =
        # DATA_BASE cancels out), otherwise the address itself from %datab (the data slot less
        # DATA_BASE), so that base register and offset share one addressing mode; data + o
        # would leave a 64-bit displacement that needs a register of its own.
        walks = self.fast is not None and base_reg in self.fast.inc
        ptr = f"ptr %data, i64 {o}" if self.data_r1 and not walks else f"ptr %datab, i64 {a}"
        if self.fast is not None and pc in self.fast.accesses:
            # proven inside the data slot for this chunk of iterations (see loops.py)
            p = self.t()
            self.emit(f"{p} = getelementptr i8, {ptr}")
            return p
        if self.fast is not None and self.fast.counter is not None:
            # such a copy keeps no count for a slow path (loops._counter rules this out)
            raise AssertionError(f"checked access at {pc} in a fast copy without a count")
        self.sizes.add(size)
        ok = self.t()
        self.emit(f"{ok} = icmp ult i64 {o}, %dlim{size}")
        # the data pointer is computed before the compare (a gep has no effect), so the hot
        # path is one compare and branch straight to the access
        pf = self.t()
        self.emit(f"{pf} = getelementptr i8, {ptr}")
        fast = self.current
        slow, done = self.new_label("slow"), self.new_label("mem")
        self.emit(f"br i1 {ok}, label %{done}, label %{slow}, {_HOT}")
        self.label(slow)
        # An atomic is a load then a store in the reference interpreter, so an unmapped atomic
        # reports a failed load (flags: bit 0 = write, bit 1 = report unmapped as a load).
        flags = (1 if write else 0) | (2 if atomic else 0)
        ps = self.t()
        self.emit(f"{ps} = call ptr @{self.gen.prefix}slow(ptr %ctx, i64 {a}, i64 {size}, "
                  f"i64 {flags}, i64 %depth, i64 {pc}, i64 {count})")
        bad = self.t()
        self.emit(f"{bad} = icmp eq ptr {ps}, null")
        self.emit(f"br i1 {bad}, label %unwind, label %{done}")
        self.label(done)
        p = self.t()
        self.emit(f"{p} = phi ptr [{pf}, %{fast}], [{ps}, %{slow}]")
        return p

    def cast(self, inst: str, v: str, src: str, dst: str) -> str:
        """``inst`` (trunc/zext/sext) from type ``src`` to ``dst``; nothing when they are equal."""
        if src == dst:
            return v
        out = self.t()
        self.emit(f"{out} = {inst} {src} {v} to {dst}")
        return out

    # -- instructions ---------------------------------------------------------------------------
    def alu(self, insn: Insn) -> None:
        op = insn.op
        sem, w = op.sem, op.width
        ty = f"i{w}"
        d = insn.dst
        if sem in ("le", "be", "bswap"):
            v = self.get(d)
            if sem == "le" and w == 64:
                return
            x = self.cast("trunc", v, "i64", f"i{w}")
            if sem != "le":
                y = self.t()
                self.emit(f"{y} = call i{w} @llvm.bswap.i{w}(i{w} {x})")
                x = y
            self.put(d, self.cast("zext", x, f"i{w}", "i64"))
            return
        if op.source_x:
            src = self.get32(insn.src) if w == 32 else self.get(insn.src)
        else:
            src = str(_s64(insn.imm) if w == 64 else ((insn.imm + 2**31) % 2**32) - 2**31)
        if sem == "mov":
            res = src
        elif sem == "movsx":
            bits = dict(op.match)["off"]
            full = self.get(insn.src)
            tr = self.t()
            self.emit(f"{tr} = trunc i64 {full} to i{bits}")
            res = self.t()
            self.emit(f"{res} = sext i{bits} {tr} to {ty}")
        else:
            dv = self.get32(d) if w == 32 else self.get(d)
            res = self.t()
            if sem == "neg":
                self.emit(f"{res} = sub {ty} 0, {dv}")
            elif sem in ("lsh", "rsh", "arsh"):
                if not op.source_x:
                    amt = str(insn.imm & (w - 1))
                else:
                    amt = self.t()
                    self.emit(f"{amt} = and {ty} {src}, {w - 1}")
                self.emit(f"{res} = {_BIN[sem]} {ty} {dv}, {amt}")
            elif sem in _BIN:
                self.emit(f"{res} = {_BIN[sem]} {ty} {dv}, {src}")
            elif sem in ("div", "mod"):
                inst = "udiv" if sem == "div" else "urem"
                if not op.source_x:
                    k = insn.imm & (MASK64 if w == 64 else 0xFFFFFFFF)
                    if k == 0:
                        res = "0" if sem == "div" else dv
                    else:
                        self.emit(f"{res} = {inst} {ty} {dv}, {src}")
                else:
                    z = self.t()
                    self.emit(f"{z} = icmp eq {ty} {src}, 0")
                    s1 = self.t()
                    self.emit(f"{s1} = select i1 {z}, {ty} 1, {ty} {src}")
                    q = self.t()
                    self.emit(f"{q} = {inst} {ty} {dv}, {s1}")
                    self.emit(f"{res} = select i1 {z}, {ty} {'0' if sem == 'div' else dv}, "
                              f"{ty} {q}")
            elif sem in ("sdiv", "smod"):
                inst = "sdiv" if sem == "sdiv" else "srem"
                z = self.t()
                self.emit(f"{z} = icmp eq {ty} {src}, 0")
                m1 = self.t()
                self.emit(f"{m1} = icmp eq {ty} {src}, -1")
                either = self.t()
                self.emit(f"{either} = or i1 {z}, {m1}")
                s1 = self.t()
                self.emit(f"{s1} = select i1 {either}, {ty} 1, {ty} {src}")
                q = self.t()
                self.emit(f"{q} = {inst} {ty} {dv}, {s1}")
                if sem == "sdiv":
                    ng = self.t()
                    self.emit(f"{ng} = sub {ty} 0, {dv}")
                    q2 = self.t()
                    self.emit(f"{q2} = select i1 {m1}, {ty} {ng}, {ty} {q}")
                    self.emit(f"{res} = select i1 {z}, {ty} 0, {ty} {q2}")
                else:
                    q2 = self.t()
                    self.emit(f"{q2} = select i1 {m1}, {ty} 0, {ty} {q}")
                    self.emit(f"{res} = select i1 {z}, {ty} {dv}, {ty} {q2}")
            else:  # pragma: no cover - the ISA table has no other ALU semantics
                raise AssertionError(sem)
        if w == 32:
            res = self.zext32(res) if res not in ("0",) else "0"
        self.put(d, res)

    def load(self, insn: Insn, pc: int, count: str) -> None:
        size = insn.op.width
        p = self.address(insn, pc, insn.src, False, False, count)
        v = self.t()
        self.emit(f"{v} = load i{size * 8}, ptr {p}, align 1")
        if size == 8:
            self.put(insn.dst, v)
            return
        x = self.t()
        ext = "sext" if insn.op.sem == "ldxs" else "zext"
        self.emit(f"{x} = {ext} i{size * 8} {v} to i64")
        self.put(insn.dst, x)

    def store(self, insn: Insn, pc: int, count: str) -> None:
        size = insn.op.width
        if not insn.op.source_x:
            imm = insn.imm & ((1 << (size * 8)) - 1)
            val = str(imm - (1 << (size * 8)) if imm >> (size * 8 - 1) else imm)
        else:
            val = self.cast("trunc", self.get(insn.src), "i64", f"i{size * 8}")
        p = self.address(insn, pc, insn.dst, True, False, count)
        self.emit(f"store i{size * 8} {val}, ptr {p}, align 1")

    def atomic(self, insn: Insn, pc: int, count: str) -> None:
        # A run is single-threaded over its own regions, so a plain read-modify-write has the
        # reference semantics (and avoids unaligned atomics, which need a runtime library).
        size = insn.op.width
        ty = f"i{size * 8}"
        name = insn.op.sem[len("atomic_"):]
        # cmpxchg stores only when the comparison succeeds (a failing one may read read-only
        # data, as in the interpreter); the others always store
        p = self.address(insn, pc, insn.dst, name != "cmpxchg", True, count)
        old = self.t()
        self.emit(f"{old} = load {ty}, ptr {p}, align 1")
        sv = self.cast("trunc", self.get(insn.src), "i64", ty)
        oldx = self.cast("zext", old, ty, "i64")
        if name == "cmpxchg":
            r0 = self.cast("trunc", self.get(0), "i64", ty)
            eq = self.t()
            self.emit(f"{eq} = icmp eq {ty} {old}, {r0}")
            swap, done = self.new_label("swap"), self.new_label("xdone")
            self.emit(f"br i1 {eq}, label %{swap}, label %{done}")
            self.label(swap)
            pw = self.address(insn, pc, insn.dst, True, True, count)
            self.emit(f"store {ty} {sv}, ptr {pw}, align 1")
            self.emit(f"br label %{done}")
            self.label(done)
            self.put(0, oldx)
            return
        if name == "xchg":
            self.emit(f"store {ty} {sv}, ptr {p}, align 1")
            self.put(insn.src, oldx)
            return
        fetch = name.startswith("fetch_")
        base = name[len("fetch_"):] if fetch else name
        new = self.t()
        self.emit(f"{new} = {_ATOMIC[base]} {ty} {old}, {sv}")
        self.emit(f"store {ty} {new}, ptr {p}, align 1")
        if fetch:
            self.put(insn.src, oldx)

    def helper_call(self, insn: Insn, pc: int, count: str) -> None:
        if insn.op.sem == "callx":
            hid = self.get(insn.dst)
        else:
            hid = str(_s64(insn.imm))
        args = ", ".join(f"i64 {self.get(r)}" for r in range(1, 6))
        pcd = self.t()
        self.emit(f"{pcd} = or i64 %depth_hi, {pc}")
        r = self.t()
        self.emit(f"{r} = call i64 %helper(ptr %ctx, i64 {hid}, {args}, i64 {pcd}, i64 {count})")
        kind = self.t()
        self.emit(f"{kind} = load volatile i64, ptr %err_kind_p")
        bad = self.t()
        self.emit(f"{bad} = icmp ne i64 {kind}, 0")
        cont = self.new_label("hok")
        self.emit(f"br i1 {bad}, label %unwind, label %{cont}, !prof !1")
        self.label(cont)
        self.put(0, r)

    def local_call(self, insn: Insn, pc: int, count: str) -> None:
        info = self.gen.info
        callee = info.call_targets[pc]
        args = ", ".join(f"i64 {self.get(r)}" for r in range(0, 10))
        d1 = self.t()
        self.emit(f"{d1} = add i64 %depth, 1")
        if not info.bounded or pc not in info.reachable:
            # recursion or a deep chain: the interpreter's run-time limit; a call site outside
            # the proven call graph keeps the check too, so no analysis is trusted with the
            # stack's bounds
            deep = self.t()
            self.emit(f"{deep} = icmp uge i64 {d1}, {MAX_CALL_DEPTH}")
            bad, ok = self.new_label("deep"), self.new_label("depthok")
            self.emit(f"br i1 {deep}, label %{bad}, label %{ok}, !prof !1")
            self.label(bad)
            self.emit(f"call void @{self.gen.prefix}fault(ptr %ctx, i64 {ERR_DEPTH}, i64 {pc}, "
                      f"i64 0, i64 0, i64 {count}, i64 %depth)")
            self.emit("br label %unwind")
            self.label(ok)
        res = self.t()
        self.emit(f"{res} = call {{i64, i64}} @{self.gen.prefix}f{callee}(ptr %ctx, i64 {d1}, "
                  f"i64 {count}, {args})")
        c = self.t()
        self.emit(f"{c} = extractvalue {{i64, i64}} {res}, 1")
        r0 = self.t()
        self.emit(f"{r0} = extractvalue {{i64, i64}} {res}, 0")
        bad = self.t()
        self.emit(f"{bad} = icmp eq i64 {c}, -1")
        cont = self.new_label("cok")
        self.emit(f"br i1 {bad}, label %unwind, label %{cont}, !prof !1")
        self.label(cont)
        self.put(0, r0)
        self.emit(f"store i64 {c}, ptr %cnt")

    def cond(self, insn: Insn) -> str:
        op = insn.op
        w = op.width
        ty = f"i{w}"
        d = self.get32(insn.dst) if w == 32 else self.get(insn.dst)
        if op.source_x:
            s = self.get32(insn.src) if w == 32 else self.get(insn.src)
        else:
            s = str(_s64(insn.imm) if w == 64 else insn.imm)
        c = self.t()
        if op.sem == "jset":
            a = self.t()
            self.emit(f"{a} = and {ty} {d}, {s}")
            self.emit(f"{c} = icmp ne {ty} {a}, 0")
        else:
            self.emit(f"{c} = icmp {_ICMP[op.sem]} {ty} {d}, {s}")
        return c

    # -- function -------------------------------------------------------------------------------
    def build(self, starts: list[int], ends: dict[int, int]) -> str:
        """IR text of this function; ``starts`` are its block starts, ``ends`` every block's end."""
        insns = self.gen.program.insns
        name = f"{self.gen.prefix}f{self.index}"
        params = ", ".join(f"i64 %a{r}" for r in range(0, 10))
        head = [f"define internal {{i64, i64}} @{name}(ptr %ctx, i64 %depth, i64 %cnt0, {params}) "
                "#0 {", "entry:"]
        self.emit("%cnt = alloca i64")
        self.emit("%kvar = alloca i64")
        self.emit("store i64 0, ptr %kvar")
        for r in range(11):
            self.emit(f"%r{r} = alloca i64")
        self.emit("store i64 %cnt0, ptr %cnt")
        for r in range(0, 10):
            self.emit(f"store i64 %a{r}, ptr %r{r}")
        self.emit(f"%dm = mul i64 %depth, {STACK_SIZE}")
        self.emit(f"%r10v = sub i64 {STACK_TOP}, %dm")
        self.emit("store i64 %r10v, ptr %r10")
        for k, name_ in ((CTX_DATA, "data_i"), (CTX_DLEN, "dlen"), (CTX_STACK, "stack_i"),
                         (CTX_HELPER, "helper_i")):
            self.emit(f"%{name_}_p = getelementptr i64, ptr %ctx, i64 {k}")
            self.emit(f"%{name_} = load i64, ptr %{name_}_p")
        self.emit(f"%budget_p = getelementptr i64, ptr %ctx, i64 {CTX_BUDGET}")
        self.emit(f"%err_kind_p = getelementptr i64, ptr %ctx, i64 {CTX_ERR_KIND}")
        self.emit("%data = inttoptr i64 %data_i to ptr")
        self.emit(f"%datab = getelementptr i8, ptr %data, i64 {-DATA_BASE}")
        self.emit("%stack = inttoptr i64 %stack_i to ptr")
        self.emit("%helper = inttoptr i64 %helper_i to ptr")
        self.emit("%depth_hi = shl i64 %depth, 32")
        # frame (lowest byte of this function's 512 bytes) = stack + STACK_BYTES - 512*(depth+1)
        self.emit(f"%fo = sub i64 {STACK_BYTES - STACK_SIZE}, %dm")
        self.emit("%frame = getelementptr i8, ptr %stack, i64 %fo")
        prologue = len(self.lines)
        self.ends = ends
        plans = plan_loops(insns, starts, ends, self.start, self.end, self.gen.info.stack_safe) \
            if self.fast_loops else {}
        for s in starts:
            if not self.start <= s < self.end:
                continue
            if s in plans:
                self.dispatch(plans[s])
                self.block(s, ends[s], insns, checked_header=True)
            else:
                self.block(s, ends[s], insns)
        for plan in plans.values():
            if plan.chain:
                # an unrolled chain: copy j of every block in order, each falling into the next
                for copy in range(plan.unroll):
                    for s in plan.chain:
                        self.block(s, ends[s], insns, fast=plan, copy=copy)
                continue
            for s in sorted(plan.body):
                self.block(s, ends[s], insns, fast=plan)
        limits = []
        for size in sorted(self.sizes):
            # valid data offsets are o < dlen - size + 1 (none when dlen < size)
            limits += [f"  %dge{size} = icmp uge i64 %dlen, {size}",
                       f"  %dl{size} = sub i64 %dlen, {size - 1}",
                       f"  %dlim{size} = select i1 %dge{size}, i64 %dl{size}, i64 0"]
        limits.append(f"  br label %b{self.start}")
        self.lines[prologue:prologue] = limits
        tail = list(self.stubs)
        if self.budget_edges:
            pcs = ", ".join(f"[{pc}, %{lbl}]" for lbl, pc, _ in self.budget_edges)
            cnts = ", ".join(f"[{c}, %{lbl}]" for lbl, _, c in self.budget_edges)
            tail += ["budget_fail:",
                    f"  %bpc = phi i64 {pcs}",
                    f"  %bcnt = phi i64 {cnts}",
                    f"  call void @{self.gen.prefix}fault(ptr %ctx, i64 {ERR_BUDGET}, i64 %bpc, "
                    "i64 0, i64 0, i64 %bcnt, i64 %depth)",
                    "  br label %unwind"]
        tail += ["unwind:", "  ret {i64, i64} {i64 0, i64 -1}"]
        body = head + self.lines + tail + ["}"]
        return "\n".join(body)

    def test_limit(self, test: tuple, k: str) -> str:
        """min(k, iterations in which an IV exit test certainly stays in the loop)."""
        iv, offset, step, cond, breg, bimm, _ = test
        v = self.get(iv)
        x0 = self.t()
        self.emit(f"{x0} = add i64 {v}, {offset}")
        b = self.get(breg) if breg is not None else str(_s64(bimm))
        stays = self.t()
        if cond == "!=":
            # step +-1: it stays until the IV meets b exactly (wrapping arithmetic)
            if step == 1:
                self.emit(f"{stays} = sub i64 {b}, {x0}")
            else:
                self.emit(f"{stays} = sub i64 {x0}, {b}")
        else:
            # x_j = x0 + j*step moves towards b; no wrap while x0, b < 2**62 and |step| < 2**32
            small = self.t()
            self.emit(f"{small} = icmp ult i64 {x0}, {1 << 62}")
            small_b = self.t()
            self.emit(f"{small_b} = icmp ult i64 {b}, {1 << 62}")
            up = cond in ("<", "<=")
            dist = self.t()
            self.emit(f"{dist} = sub i64 {b if up else x0}, {x0 if up else b}")
            strict = cond in ("<", ">")
            # iterations j >= 0 with x_j (<|<=) b: strict: (d - 1) / s + 1 when d > 0;
            # otherwise d / s + 1 when d >= 0 (d = the distance, s = |step|)
            inside = self.t()
            self.emit(f"{inside} = icmp {'sgt' if strict else 'sge'} i64 {dist}, 0")
            d1 = self.t()
            self.emit(f"{d1} = sub i64 {dist}, {1 if strict else 0}")
            q = self.t()
            self.emit(f"{q} = udiv i64 {d1}, {abs(step)}")
            q1 = self.t()
            self.emit(f"{q1} = add i64 {q}, 1")
            ok = self.t()
            self.emit(f"{ok} = and i1 {small}, {small_b}")
            ok2 = self.t()
            self.emit(f"{ok2} = and i1 {ok}, {inside}")
            self.emit(f"{stays} = select i1 {ok2}, i64 {q1}, i64 0")
        out = self.t()
        self.emit(f"{out} = call i64 @llvm.umin.i64(i64 {k}, i64 {stays})")
        return out

    def either(self, fast: LoopPlan, insn: Insn, pc: int, e: int, tgt: Callable[[int], str],
               after: str) -> bool:
        """In a fast copy, ``if a goto T`` followed by a block that is only ``if b goto T`` (C's
        ``a || b``, a range test) as one branch on ``a | b``; True when emitted.

        The two paths to T differ by the second test's instruction, so their counts differ
        and LLVM cannot merge the branches itself: the count takes a ``select`` instead.
        Both tests only read registers, so evaluating the second one early changes nothing.
        """
        insns = self.gen.program.insns
        taken, fall = cfg.target(insn, pc), e
        for second, t in ((fall, taken), (taken, fall)):
            if second == t or second not in fast.body or second == fast.header:
                continue
            slots = [k for k in range(second, self.ends[second]) if insns[k] is not None]
            nxt = insns[slots[0]] if len(slots) == 1 else None
            if nxt is None or not nxt.op.is_branch or slots[0] in fast.tests:
                continue
            t2, f2 = cfg.target(nxt, slots[0]), self.inside(self.ends[second], slots[0])
            if t not in (t2, f2) or t2 == f2:
                continue
            x = f2 if t2 == t else t2
            if not {t, x} <= fast.body or fast.header in (t, x):
                continue
            first = self.cond(insn)
            if taken != t:
                inv = self.t()
                self.emit(f"{inv} = xor i1 {first}, true")
                first = inv
            then = self.cond(nxt)
            if t2 != t:
                inv = self.t()
                self.emit(f"{inv} = xor i1 {then}, true")
                then = inv
            either, go, extra, cnt = self.t(), self.t(), self.t(), self.t()
            self.emit(f"{either} = or i1 {first}, {then}")
            # (a freeze keeps the back end from splitting the `or` into two branches again)
            self.emit(f"{go} = freeze i1 {either}")
            self.emit(f"{extra} = select i1 {first}, i64 0, i64 1")
            self.emit(f"{cnt} = add i64 {after}, {extra}")
            self.emit(f"store i64 {cnt}, ptr %cnt")
            self.emit(f"br i1 {go}, label {tgt(t)}, label {tgt(x)}")
            return True
        return False

    def loop_id(self, plan: LoopPlan) -> str:
        """Metadata for the back-edge of ``plan``'s fast copy: one that is unrolled already is
        not unrolled again (LLVM would unroll a copy with a known trip count 4 times more, and
        the histogram ran 25% slower for it); one with a counter (a known trip count) is not
        unrolled at run time (its compile time grew by up to 40%), which leaves the
        vectoriser's interleaving alone."""
        if plan.unroll == 1 and plan.counter is None:
            return ""
        md = self.gen.metadata
        n = _NO_UNROLL + 2 + len(md)
        what = _NO_UNROLL if plan.unroll > 1 else _NO_RUNTIME_UNROLL
        md.append(f"!{n} = distinct !{{!{n}, !{what}}}")
        return f", !llvm.loop !{n}"

    def dispatch(self, plan: LoopPlan) -> None:
        """Entry of a versioned loop header: compute K and pick the fast or the checked copy."""
        h = plan.header
        self.label(f"b{h}")
        c = self.t()
        self.emit(f"{c} = load i64, ptr %cnt")
        left = self.t()
        self.emit(f"{left} = call i64 @llvm.usub.sat.i64(i64 {self.budget()}, i64 {c})")
        # a chunk runs at most CANCEL_CHUNK instructions, so a cancelled run stops soon after
        rem = self.t()
        self.emit(f"{rem} = call i64 @llvm.umin.i64(i64 {left}, i64 {CANCEL_CHUNK})")
        k = self.t()
        self.emit(f"{k} = udiv i64 {rem}, {max(1, plan.max_iter_len)}")
        kc = self.t()
        self.emit(f"{kc} = call i64 @llvm.umin.i64(i64 {k}, i64 {1 << 32})")
        k = kc
        ranges: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for acc in plan.accesses.values():
            lo_hi = ranges.setdefault(acc.terms, [acc.lo, acc.hi])
            lo_hi[0] = min(lo_hi[0], acc.lo)
            lo_hi[1] = max(lo_hi[1], acc.hi)
        ok = "true"
        for terms, (lo, hi) in sorted(ranges.items()):
            v = "0"
            for r, coef in terms:
                x = self.get(r)
                if coef != 1:
                    xs = self.t()
                    self.emit(f"{xs} = mul i64 {x}, {coef}")
                    x = xs
                vs = self.t()
                self.emit(f"{vs} = add i64 {v}, {x}")
                v = vs
            o = self.t()
            self.emit(f"{o} = sub i64 {v}, {DATA_BASE}")
            small = self.t()
            self.emit(f"{small} = icmp ult i64 {o}, {1 << 40}")
            olo, ohi = self.t(), self.t()
            self.emit(f"{olo} = add i64 {o}, {lo}")
            self.emit(f"{ohi} = add i64 {o}, {hi}")
            c1, c2 = self.t(), self.t()
            self.emit(f"{c1} = icmp sge i64 {olo}, 0")
            self.emit(f"{c2} = icmp sle i64 {ohi}, %dlen")
            for cond in (small, c1, c2):
                nok = self.t()
                self.emit(f"{nok} = and i1 {ok}, {cond}")
                ok = nok
            imin = sum(c * plan.inc.get(r, (0, 0))[0] for r, c in terms)
            imax = sum(c * plan.inc.get(r, (0, 0))[1] for r, c in terms)
            if imax > 0:
                room = self.t()
                self.emit(f"{room} = sub i64 %dlen, {ohi}")
                kk = self.t()
                self.emit(f"{kk} = udiv i64 {room}, {imax}")
                kk1 = self.t()
                self.emit(f"{kk1} = add i64 {kk}, 1")
                nk = self.t()
                self.emit(f"{nk} = call i64 @llvm.umin.i64(i64 {k}, i64 {kk1})")
                k = nk
            if imin < 0:
                kk = self.t()
                self.emit(f"{kk} = udiv i64 {olo}, {-imin}")
                kk1 = self.t()
                self.emit(f"{kk1} = add i64 {kk}, 1")
                nk = self.t()
                self.emit(f"{nk} = call i64 @llvm.umin.i64(i64 {k}, i64 {kk1})")
                k = nk
        for test in plan.tests.values():
            k = self.test_limit(test, k)
        kf = self.t()
        self.emit(f"{kf} = select i1 {ok}, i64 {k}, i64 0")
        if plan.counter is not None:
            # the copy runs K rounded down to whole groups of U iterations, then its IV is at
            # iv0 + that * step: a value it takes at no earlier group end (|step| < 2**32 and
            # K <= 2**32, so no multiple below it wraps to it)
            iv, step = plan.counter
            iv0 = self.get(iv)
            groups = kf
            if plan.unroll > 1:
                part = self.t()
                self.emit(f"{part} = urem i64 {kf}, {plan.unroll}")
                groups = self.t()
                self.emit(f"{groups} = sub i64 {kf}, {part}")
            span, stop = self.t(), self.t()
            self.emit(f"{span} = mul i64 {groups}, {step}")
            self.emit(f"{stop} = add i64 {iv0}, {span}")
            self.counted[h] = (iv0, c, stop)
        elif plan.uniform is not None:
            # another chunk of U iterations may start while the count is at most the count after
            # K - U iterations (K <= 2**32, short iterations: no overflow; unused when K < U)
            kl = self.t()
            self.emit(f"{kl} = mul i64 {kf}, {plan.uniform}")
            lim = self.t()
            self.emit(f"{lim} = add i64 {kl}, {c}")
            lim2 = self.t()
            self.emit(f"{lim2} = sub i64 {lim}, {plan.unroll * plan.uniform}")
            self.emit(f"store i64 {lim2}, ptr %kvar")
        else:
            self.emit(f"store i64 {kf}, ptr %kvar")
        go = self.t()
        self.emit(f"{go} = icmp uge i64 {kf}, {plan.unroll}")
        self.emit(f"br i1 {go}, label %fb{h}, label %bc{h}")

    def block(self, s: int, e: int, insns: list[Insn | None], fast: LoopPlan | None = None,
              checked_header: bool = False, copy: int = 0) -> None:
        """One basic block; ``fast`` emits the loop's check-free copy of it (``copy``: which
        copy of an unrolled loop, whose header continues the previous copy's last block)."""
        if fast is None:
            self.label(f"bc{s}" if checked_header else f"b{s}")
        elif copy == 0:
            self.label(f"fb{s}")
        elif s != fast.header:
            self.label(f"fb{s}u{copy}")
        unroll = fast.unroll if fast is not None else 1

        def tgt(t: int) -> str:
            if fast is not None and t in fast.body and t != fast.header:
                return f"%fb{t}" if copy == 0 else f"%fb{t}u{copy}"
            return leave(t)

        def leave(t: int) -> str:
            """The label of an edge out of a fast copy (or back to its dispatch) to ``t``."""
            if fast is None or fast.counter is None:
                return f"%b{t}"
            # the copy kept no count: write it on the way out, from the IV (whole iterations
            # of the chunk so far) and this block's place in the iteration
            iv, step = fast.counter
            iv0, c0, _ = self.counted[fast.header]
            length, moved = fast.at_end[s]
            stub = self.new_label("fc")
            n = self.tmp
            # the IV goes through an empty asm: LLVM would otherwise turn the count (an affine
            # function of the IV) back into an IV of its own, an add per iteration again
            lines = [f"{stub}:",
                     f"  %cr{n} = load i64, ptr %r{iv}",
                     f'  %cv{n} = call i64 asm "", "=r,0"(i64 %cr{n})',
                     f"  %cd{n} = sub i64 %cv{n}, {iv0}",
                     f"  %ce{n} = sub i64 %cd{n}, {_s64(moved)}"]
            dist = f"%ce{n}"
            if step < 0:
                lines.append(f"  %cn{n} = sub i64 0, %ce{n}")
                dist = f"%cn{n}"
            lines += [f"  %cj{n} = udiv i64 {dist}, {abs(step)}",
                      f"  %cm{n} = mul i64 %cj{n}, {fast.uniform}",
                      f"  %cc{n} = add i64 {c0}, %cm{n}",
                      f"  %cf{n} = add i64 %cc{n}, {length}",
                      f"  store i64 %cf{n}, ptr %cnt",
                      f"  br label %b{t}"]
            self.stubs.extend(lines)
            return f"%{stub}"

        def edge(cond: str | None, taken: int, other: int) -> None:
            """Branch (unconditional when cond is None); back-edges in a fast copy count K."""
            if cond == "stay" and fast is not None:
                # an exit test that certainly stays in the loop during this chunk
                stay = taken if taken in fast.body else other
                if stay != fast.header:
                    self.emit(f"br label {tgt(stay)}")
                    return
            if fast is None or fast.header not in (taken, other if cond else None):
                if cond is None:
                    self.emit(f"br label {tgt(taken)}")
                else:
                    self.emit(f"br i1 {cond}, label {tgt(taken)}, label {tgt(other)}")
                return
            h = fast.header
            if cond in ("stay", None):  # a jump or a latch inside its certain iterations
                if copy < unroll - 1:
                    nxt = self.new_label("fu")
                    self.emit(f"br label %{nxt}")
                    self.label(nxt)
                    return
                cond = None
                taken = h
            if copy < unroll - 1:
                # an unrolled copy: stay in the loop by falling into the next copy
                stay_v = cond
                if other == h:
                    stay_v = self.t()
                    self.emit(f"{stay_v} = xor i1 {cond}, true")
                nxt, out = self.new_label("fu"), self.new_label("fe")
                self.emit(f"br i1 {stay_v}, label %{nxt}, label %{out}")
                self.label(out)
                self.emit(f"br label {tgt(other if taken == h else taken)}")
                self.label(nxt)
                return
            kok = self.t()
            if fast.counter is not None:
                # the IV says when the chunk's whole groups are done
                self.emit(f"{kok} = icmp ne i64 {self.get(fast.counter[0])}, "
                          f"{self.counted[h][2]}")
            elif fast.uniform is not None:
                # every iteration has the same length: the count itself says how many are done
                lim = self.t()
                self.emit(f"{lim} = load i64, ptr %kvar")
                self.emit(f"{kok} = icmp ule i64 {self.block_after}, {lim}")
            else:
                k = self.t()
                self.emit(f"{k} = load i64, ptr %kvar")
                kn = self.t()
                self.emit(f"{kn} = sub i64 {k}, {unroll}")
                self.emit(f"store i64 {kn}, ptr %kvar")
                self.emit(f"{kok} = icmp uge i64 {kn}, {unroll}")
            if cond is None or taken == other:
                self.emit(f"br i1 {kok}, label %fb{h}, label {leave(h)}{self.loop_id(fast)}")
                return
            stay_v = cond
            if other == h:
                stay_v = self.t()
                self.emit(f"{stay_v} = xor i1 {cond}, true")
            both = self.t()
            self.emit(f"{both} = and i1 {stay_v}, {kok}")
            out = self.new_label("fx")
            self.emit(f"br i1 {both}, label %fb{h}, label %{out}{self.loop_id(fast)}")
            self.label(out)
            # K ran out (back to the dispatch) or the loop exits
            self.emit(f"br i1 {cond}, label {tgt(taken)}, label {tgt(other)}")

        self.fast = fast
        length = sum(1 for i in range(s, e) if insns[i] is not None)
        counted = fast is not None and fast.counter is not None
        before = after = self.t()
        if not counted:  # (a copy with a counter writes the count only where it leaves)
            self.emit(f"{before} = load i64, ptr %cnt")
            after = self.t()
            self.emit(f"{after} = add i64 {before}, {length}")
            self.emit(f"store i64 {after}, ptr %cnt")
            self.block_after = after
        elif fast is not None and s == fast.header and not any(
                x is not None and x.op.mem_base is not None
                for b in fast.body for x in insns[b:self.ends[b]]):
            # LLVM knows the trip count of such a copy, and one that only computes registers it
            # would replace by its closed form: a loop that is meant to run until it is stopped
            # would burn a budget of 2**40 in a second. The empty asm keeps it a loop.
            self.emit('call void asm sideeffect "", ""()')
        if fast is None:
            over = self.t()
            self.emit(f"{over} = icmp ugt i64 {after}, {self.budget()}")
            body = self.new_label("bb")
            # one shared failure block per function: its phis say which block stopped
            self.budget_edges.append((self.current, s, before))
            self.emit(f"br i1 {over}, label %budget_fail, label %{body}, !prof !1")
            self.label(body)
        pos = 0
        for i in range(s, e):
            insn = insns[i]
            if insn is None:
                continue
            pos += 1
            op = insn.op
            count = "0"
            if (op.mem_base is not None or op.is_call) and not counted:
                # what can stop the run reports the count up to and including itself
                count = self.t()
                self.emit(f"{count} = add i64 {before}, {pos}")
            if op.is_alu:
                self.alu(insn)
            elif op.is_lddw:
                self.put(insn.dst, str(_s64(insn.imm)))
            elif op.is_load:
                self.load(insn, i, count)
            elif op.is_store:
                self.store(insn, i, count)
            elif op.is_atomic:
                self.atomic(insn, i, count)
            elif op.is_local_call:
                self.local_call(insn, i, count)
                self.emit(f"br label %b{self.inside(e, i)}")
                break
            elif op.is_call:
                self.helper_call(insn, i, count)
            elif op.is_jump:
                edge(None, cfg.target(insn, i), 0)
                break
            elif op.is_branch:
                certain = fast is not None and i in fast.tests
                if fast is not None and not certain and not counted and \
                        self.either(fast, insn, i, e, tgt, after):
                    break
                c = "stay" if certain else self.cond(insn)
                edge(c, cfg.target(insn, i), self.inside(e, i))
                break
            elif op.is_exit:
                r0 = self.get(0)
                c = self.t()
                self.emit(f"{c} = load i64, ptr %cnt")
                v1 = self.t()
                self.emit(f"{v1} = insertvalue {{i64, i64}} undef, i64 {r0}, 0")
                v2 = self.t()
                self.emit(f"{v2} = insertvalue {{i64, i64}} {v1}, i64 {c}, 1")
                self.emit(f"ret {{i64, i64}} {v2}")
                break
            else:  # pragma: no cover - the ISA table has no other kind of instruction
                raise AssertionError(op.mnemonic)
        else:
            edge(None, self.inside(e, e - 1), 0)
        self.fast = None

    def inside(self, slot: int, pc: int) -> int:
        """``slot`` (where control goes after ``pc``), which must lie in this function.

        ``validate.check`` rejects functions that fall through their end; the generator still
        refuses to emit code for one rather than mark the path ``unreachable`` (undefined
        behaviour if it ran).
        """
        if slot >= self.end:
            raise VerifierError("execution would fall through the end of the function", pc)
        return slot


def specialised(program: Program) -> bool:
    """Whether ``program``'s module specialises its entry function for runs with a data slot
    (and runs without one need its memoryless module: ``ModuleGen.main_fn``)."""
    return len(program.insns) <= SPECIALISE_MAX and any(
        insn is not None and (insn.op.is_jump or insn.op.is_branch)
        and (jump_target(insn, i) or i + 1) <= i for i, insn in enumerate(program.insns))


class ModuleGen:
    """Builds the LLVM module text for one program."""

    def __init__(self, program: Program, info: VerifierInfo, prefix: str,
                 fast_loops: bool = True, memoryless: bool = False,
                 metadata: list[str] | None = None):
        self.program = program
        #: the module's numbered metadata beyond ``generate_module``'s own (shared by its
        #: programs, so every node gets a number of its own)
        self.metadata = [] if metadata is None else metadata
        self.info = info
        self.prefix = prefix
        self.fast_loops = fast_loops
        #: the module for runs of a specialised program without a data slot (see ``main_fn``)
        self.memoryless = memoryless
        #: inline function 0 with r1 = DATA_BASE when the program is small (only programs with
        # loops: straight-line code gains little for the separate module runs without memory need)
        self.specialise = specialised(program)

    def resolve_fn(self) -> str:
        """``@hermes_resolve``: stack frames and program segments (the slow path of an access)."""
        segs: tuple[Segment, ...] = tuple(s for s in self.program.segments if s.data)
        lines = [f"define internal ptr @{self.prefix}resolve(ptr %ctx, i64 %a, i64 %size, "
                 "i1 %write, i64 %depth) #1 {",
                 "entry:",
                 f"  %dm = mul i64 %depth, {STACK_SIZE}",
                 f"  %slo = sub i64 {STACK_TOP - STACK_SIZE}, %dm",
                 "  %so = sub i64 %a, %slo",
                 f"  %span = sub i64 {STACK_TOP}, %slo",
                 "  %slim = sub i64 %span, %size",
                 "  %sok = icmp ule i64 %so, %slim",
                 "  br i1 %sok, label %stack, label %seg0",
                 "stack:",
                 f"  %sp = getelementptr i64, ptr %ctx, i64 {CTX_STACK}",
                 "  %sh = load i64, ptr %sp",
                 f"  %sidx = sub i64 %a, {STACK_BASE}",
                 "  %sptr0 = inttoptr i64 %sh to ptr",
                 "  %sptr = getelementptr i8, ptr %sptr0, i64 %sidx",
                 "  ret ptr %sptr"]
        for k, seg in enumerate(segs):
            n = len(seg.data)
            lines += [f"seg{k}:",
                      f"  %o{k} = sub i64 %a, {_s64(seg.vaddr)}",
                      f"  %big{k} = icmp ugt i64 %size, {n}",
                      f"  %lim{k} = sub i64 {n}, %size",
                      f"  %in{k} = icmp ule i64 %o{k}, %lim{k}",
                      f"  %nb{k} = xor i1 %big{k}, true",
                      f"  %hit{k} = and i1 %in{k}, %nb{k}",
                      f"  br i1 %hit{k}, label %segin{k}, label %seg{k + 1}",
                      f"segin{k}:"]
            if not seg.writable:
                lines += [f"  br i1 %write, label %ro, label %rd{k}", f"rd{k}:"]
            lines += [f"  %segs{k} = getelementptr i64, ptr %ctx, i64 {CTX_SEGS}",
                      f"  %segt{k} = load i64, ptr %segs{k}",
                      f"  %segtp{k} = inttoptr i64 %segt{k} to ptr",
                      f"  %segh{k}p = getelementptr i64, ptr %segtp{k}, i64 {k}",
                      f"  %segh{k} = load i64, ptr %segh{k}p",
                      f"  %segb{k} = inttoptr i64 %segh{k} to ptr",
                      f"  %segp{k} = getelementptr i8, ptr %segb{k}, i64 %o{k}",
                      f"  ret ptr %segp{k}"]
        lines += [f"seg{len(segs)}:", "  ret ptr null",
                  "ro:", "  ret ptr inttoptr (i64 1 to ptr)", "}"]
        return "\n".join(lines)

    def slow_fn(self) -> str:
        """``@hermes_slow``: resolve a non-data access or record the fault and return null."""
        return "\n".join([
            f"define internal ptr @{self.prefix}slow(ptr %ctx, i64 %a, i64 %size, i64 %flags, "
            "i64 %depth, i64 %pc, i64 %count) #1 {",
            "entry:",
            "  %w = trunc i64 %flags to i1",
            f"  %p = call ptr @{self.prefix}resolve(ptr %ctx, i64 %a, i64 %size, i1 %w, "
            "i64 %depth)",
            "  %pi = ptrtoint ptr %p to i64",
            "  %bad = icmp ule i64 %pi, 1",
            "  br i1 %bad, label %fault, label %ok",
            "ok:",
            "  ret ptr %p",
            "fault:",
            "  %isro = icmp eq i64 %pi, 1",
            "  %asload = icmp ugt i64 %flags, 1",
            "  %unw = xor i1 %w, true",
            "  %ld = or i1 %unw, %asload",
            f"  %plain = select i1 %ld, i64 {ERR_LOAD}, i64 {ERR_STORE}",
            f"  %kind = select i1 %isro, i64 {ERR_READONLY}, i64 %plain",
            f"  call void @{self.prefix}fault(ptr %ctx, i64 %kind, i64 %pc, i64 %a, "
            "i64 %size, i64 %count, i64 %depth)",
            "  ret ptr null",
            "}"])

    def fault_fn(self) -> str:
        """``@hermes_fault``: write the error record (kind, pc, address, size, count, depth)."""
        lines = [f"define internal void @{self.prefix}fault(ptr %ctx, i64 %kind, i64 %pc, "
                 "i64 %addr, i64 %size, i64 %count, i64 %depth) #1 {", "entry:"]
        for k, v in ((CTX_ERR_KIND, "kind"), (CTX_ERR_PC, "pc"), (CTX_ERR_ADDR, "addr"),
                     (CTX_ERR_SIZE, "size"), (CTX_ERR_COUNT, "count"), (CTX_ERR_DEPTH, "depth")):
            lines += [f"  %p{k} = getelementptr i64, ptr %ctx, i64 {k}",
                      f"  store i64 %{v}, ptr %p{k}"]
        lines += ["  ret void", "}"]
        return "\n".join(lines)

    def main_fn(self, name: str) -> str:
        """The native entry ``i64 name(ptr ctx)``: runs function 0 at depth 0.

        Small programs with loops (``specialised``) get a copy of function 0, ``f0s``, inlined,
        for runs with a data slot: r1 = DATA_BASE as a constant lets LLVM fold every
        ``r1 + k - DATA_BASE`` into a plain offset. Called without one (r1 = 0), this entry
        records ``ERR_MEMORYLESS`` and returns before any instruction runs; the caller then
        runs the program's memoryless module (``memoryless=True``), compiled the first time a
        run needs it, whose entry calls ``f0n``: function 0 without fast loop copies (with no
        data slot their access proofs fail; its loops keep their per-block budget compares).
        Runs without memory are rare, and that copy would cost a third of the compile time.
        """
        def call(r1: str | int, r2: str, fn: str = "f0") -> str:
            return (f"call {{i64, i64}} @{self.prefix}{fn}(ptr %ctx, i64 0, i64 0, i64 0, "
                    f"i64 {r1}, i64 {r2}, i64 %r3, i64 %r4, i64 %r5, i64 0, i64 0, i64 0, "
                    "i64 0)")

        head = [f"define i64 @{name}(ptr %ctx) #0 {{", "entry:"]
        for reg, slot in ((1, CTX_R1), (2, CTX_R2), (3, CTX_R3), (4, CTX_R4), (5, CTX_R5)):
            head += [f"  %p{reg} = getelementptr i64, ptr %ctx, i64 {slot}",
                     f"  %r{reg} = load i64, ptr %p{reg}"]
        if self.specialise and self.memoryless:
            body = ["  %res = " + call("%r1", "%r2", "f0n")]
        elif self.specialise:
            body = ["  %hasmem = icmp eq i64 %r1, " + str(DATA_BASE),
                    "  br i1 %hasmem, label %withmem, label %nomem",
                    "nomem:",
                    f"  %pk = getelementptr i64, ptr %ctx, i64 {CTX_ERR_KIND}",
                    f"  store i64 {ERR_MEMORYLESS}, ptr %pk",
                    "  ret i64 0",
                    "withmem:",
                    "  %res = " + call(DATA_BASE, "%r2", "f0s")]
        else:
            body = ["  %res = " + call("%r1", "%r2")]
        tail = ["  %c = extractvalue {i64, i64} %res, 1",
                "  %r0 = extractvalue {i64, i64} %res, 0",
                f"  %pc = getelementptr i64, ptr %ctx, i64 {CTX_COUNT}",
                "  store i64 %c, ptr %pc",
                "  ret i64 %r0",
                "}"]
        return "\n".join(head + body + tail)

    def functions(self, entry_name: str) -> list[str]:
        """IR text of every function of this program (names prefixed, entry ``entry_name``)."""
        starts = leaders(self.program, self.info)
        n = len(self.program.insns)
        ends = dict(zip(starts, starts[1:] + [n], strict=True))
        parts = [self.resolve_fn(), self.slow_fn(), self.fault_fn()]
        called = set(self.info.call_targets.values())
        for k, f in enumerate(self.info.functions):
            if k != 0 and k not in called:
                continue  # never called: no code
            # only this function's blocks: the work per function stays linear in its size
            mine = starts[bisect.bisect_left(starts, f.start):bisect.bisect_left(starts, f.end)]
            if k == 0 and self.specialise:
                # main_fn's call gets a copy of its own (see there); the plain function stays
                # only for calls of the entry function from inside the program
                if self.memoryless:
                    plain = _Func(self, k, f.start, f.end, fast_loops=False).build(mine, ends)
                    parts.append(_renamed(plain, self.prefix, "f0n", "#3"))
                else:
                    copy = _Func(self, k, f.start, f.end, data_r1=True).build(mine, ends)
                    parts.append(_renamed(copy, self.prefix, "f0s", "#2"))
                if 0 not in called:
                    continue
            parts.append(_Func(self, k, f.start, f.end).build(mine, ends))
        parts.append(self.main_fn(entry_name))
        return parts


def generate_module(items: list[tuple[Program, VerifierInfo, str]], triple: str,
                    layout: str, memoryless: bool = False) -> str:
    """One LLVM module (IR text) holding several programs: (program, facts, entry name) each;
    ``memoryless``: their modules for runs without a data slot (``ModuleGen.main_fn``)."""
    parts = [f'target triple = "{triple}"', f'target datalayout = "{layout}"', ""]
    for w in (16, 32, 64):
        parts.append(f"declare i{w} @llvm.bswap.i{w}(i{w})")
    parts.append("declare i64 @llvm.usub.sat.i64(i64, i64)")
    parts.append("declare i64 @llvm.umin.i64(i64, i64)")
    metadata: list[str] = []
    for program, info, entry in items:
        if not info.functions:  # pragma: no cover - verify always returns the entry function
            raise VerifierError("program has no entry function")
        parts.extend(ModuleGen(program, info, f"{entry}_", memoryless=memoryless,
                               metadata=metadata).functions(entry))
    parts.append('attributes #0 = { nounwind }')
    parts.append('attributes #1 = { nounwind noinline cold }')
    parts.append('attributes #2 = { nounwind alwaysinline }')
    parts.append('attributes #3 = { nounwind noinline }')
    parts.append('!0 = !{!"branch_weights", i32 2000, i32 1}')
    parts.append('!1 = !{!"branch_weights", i32 1, i32 2000}')
    parts.append(f'!{_NO_UNROLL} = !{{!"llvm.loop.unroll.disable"}}')
    parts.append(f'!{_NO_RUNTIME_UNROLL} = !{{!"llvm.loop.unroll.runtime.disable"}}')
    parts.extend(metadata)
    return "\n".join(parts) + "\n"


def generate(program: Program, info: VerifierInfo, triple: str, layout: str,
             entry_name: str) -> str:
    """LLVM IR text for ``program`` (already verified; ``info`` from ``verifier.verify``)."""
    return generate_module([(program, info, entry_name)], triple, layout)

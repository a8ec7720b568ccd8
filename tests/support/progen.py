"""Random valid eBPF programs and an interpreter-vs-JIT comparison (differential testing support).

``random_case(rng)`` builds a program (assembly text) that passes the verifier by construction:
every register is written before it is read (r1..r5 are re-set after each call), jumps go
forward or close a counted loop, local calls form a shallow acyclic graph. It still exercises
every ALU operation (div/mod by zero, shifts beyond the width, movsx, byte swaps), loads, stores
and atomics on the stack and the data slot (in and out of bounds), helper calls (including a
helper that stops the run and one that faults), callx, local calls and small budgets.

``compare(case, jit_exe)`` runs the case on both engines and returns a description of the first
difference (r0, memory, instruction count, error type/kind/pc/address/size/count), or None.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from hermes.engine import isa
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.memory import (
    MAX_CALL_DEPTH,
    RODATA_BASE,
    RWDATA_BASE,
    STACK_SIZE,
    STACK_TOP,
    Segment,
)
from hermes.engine.program import Program
from hermes.errors import ExecutionError

#: Program data of the cases that use segments (16 bytes each).
SEGMENTS = (Segment(".rodata", RODATA_BASE, bytes(range(100, 116)), False),
            Segment(".data", RWDATA_BASE, bytes(range(16)), True))

_ALU = sorted({op.mnemonic: op for op in isa.OPS
               if op.form in ("alu_k", "alu_x", "unary", "end")}.items())
_ALU_OPS = [op for _, op in _ALU]
_JCC = sorted({op.mnemonic for op in isa.OPS if op.form in ("jcond_k", "jcond_x")})
_LOADS = [op.mnemonic for op in isa.OPS if op.form == "ldx"]
_STORES = [op.mnemonic for op in isa.OPS if op.form in ("st", "stx")]
_ATOMICS = [op.mnemonic for op in isa.OPS if op.form == "atomic"]
_GENERAL = (0, 1, 2, 3, 4, 5, 7, 8)  # r6 keeps the data address, r9 counts loops
_SPECIAL_IMMS = (0, 1, -1, 2, 7, 8, 16, 31, 32, 33, 63, 64, 255, 0x7FFFFFFF, -0x80000000,
                 0x8000, -2, 0xFFFF)


@dataclass
class Case:
    """A generated test: assembly text, input memory (None = no data slot) and budget."""

    text: str
    memory: bytes | None
    budget: int | None
    segments: bool = False

    def program(self) -> Program:
        """Assemble the case (with a read-only and a writable program data segment if asked)."""
        program = assemble_program(self.text, name="progen")
        if not self.segments:
            return program
        return Program(program.code, name="progen", segments=SEGMENTS)


class _Gen:
    def __init__(self, rng: random.Random, mem_len: int | None, segments: bool = False):
        self.rng = rng
        self.segments = segments
        self.mem_len = mem_len if mem_len is not None else 0
        self.lines: list[str] = []
        self.labels = 0
        self.funcs: list[list[str]] = []
        self.func_depth = 0

    def label(self) -> str:
        self.labels += 1
        return f"L{self.labels}"

    def imm(self) -> int:
        r = self.rng.random()
        if r < 0.45:
            return self.rng.choice(_SPECIAL_IMMS)
        if r < 0.8:
            return self.rng.randint(-100, 100)
        return self.rng.randint(-2**31, 2**31 - 1)

    def reg(self, in_func: bool) -> int:
        return self.rng.choice((0, 1, 2, 3, 4, 5) if in_func else _GENERAL)

    def src(self, in_func: bool) -> int:
        if not in_func and self.rng.random() < 0.1:
            return self.rng.choice((6, 10))
        if in_func and self.rng.random() < 0.05:
            return 10
        return self.reg(in_func)

    # -- items ------------------------------------------------------------------------------------
    def alu(self, out: list[str], in_func: bool) -> None:
        op = self.rng.choice(_ALU_OPS)
        d = self.reg(in_func)
        if op.form == "alu_k":
            out.append(f"{op.mnemonic} r{d}, {self.imm()}")
        elif op.form == "alu_x":
            out.append(f"{op.mnemonic} r{d}, r{self.src(in_func)}")
        else:
            out.append(f"{op.mnemonic} r{d}")

    def pointer(self, out: list[str], in_func: bool, size: int) -> str:
        """An address operand ``[rX+off]``, usually valid, sometimes just outside a region."""
        r = self.rng.random()
        edge = self.rng.random() < 0.04
        if self.mem_len < size and not edge:
            r = 0.0  # no room in the data slot: use the stack
        if r < 0.45 or (in_func and r < 0.9):
            if edge:
                off = self.rng.choice((-520, -513, -512 + self.rng.randint(0, 8), 0, 1,
                                       -size + 1))
            elif self.rng.random() < 0.7:
                off = -size * self.rng.randint(1, 512 // size)
            else:
                off = -self.rng.randint(size, 512)
            return f"[r10{off:+d}]"
        if in_func:
            # r1 / r2 may hold the data address or a pointer into the caller's frame
            return f"[r{self.rng.choice((1, 2))}{self.rng.randint(-16, 16) // size * size:+d}]"
        if self.segments and self.rng.random() < 0.3:
            t = self.rng.choice((7, 8))
            out.append(f"lddw r{t}, {self.rng.choice((RODATA_BASE, RWDATA_BASE)):#x}")
            return f"[r{t}{self.rng.randint(-2, 18 - size):+d}]"
        base = 6
        if r < 0.8:
            hi = max(0, self.mem_len - size)
            off = self.rng.choice((-1, hi + 1, hi, 0, self.mem_len)) if edge \
                else self.rng.randint(0, hi) if hi else 0
            return f"[r{base}{off:+d}]"
        # a derived pointer in r7 or r8
        t = self.rng.choice((7, 8))
        k = self.rng.randint(0, max(0, self.mem_len))
        out.append(f"mov r{t}, r6")
        out.append(f"add r{t}, {k}")
        off = self.rng.randint(-k, max(-k, self.mem_len - k - size)) if not edge \
            else self.rng.randint(-k - 2, self.mem_len - k + 2)
        return f"[r{t}{off:+d}]"

    def mem(self, out: list[str], in_func: bool) -> None:
        r = self.rng.random()
        if r < 0.4:
            m = self.rng.choice(_LOADS)
            size = _size(m)
            addr = self.pointer(out, in_func, size)
            out.append(f"{m} r{self.reg(in_func)}, {addr}")
        elif r < 0.85:
            m = self.rng.choice(_STORES)
            size = _size(m)
            addr = self.pointer(out, in_func, size)
            if m.startswith("stx"):
                out.append(f"{m} {addr}, r{self.src(in_func)}")
            else:
                out.append(f"{m} {addr}, {self.imm()}")
        else:
            m = self.rng.choice(_ATOMICS)
            size = 4 if m.endswith("32") else 8
            addr = self.pointer(out, in_func, size)
            src = self.reg(in_func)
            out.append(f"{m} {addr}, r{src}")

    def helper(self, out: list[str]) -> None:
        hid = self.rng.choice((0, 0, 1, 2, 3, 3, 4, 5, 5))
        if hid == 1:
            out.append("mov r1, r6")
            out.append(f"add r1, {self.rng.randint(0, max(0, self.mem_len))}")
            out.append(f"mov r2, {self.rng.randint(0, 6)}")
        elif hid == 4:
            out.append("mov r1, r6")
            out.append("mov r2, r10")
            out.append("add r2, -8")
            out.append("stdw [r10-8], 0x6162")
        elif hid == 5:
            out.append(f"mov r1, {self.rng.choice((0, 1, 9))}")
        if self.rng.random() < 0.2:
            out.append(f"mov r7, {hid if self.rng.random() < 0.95 else 77}")
            out.append("callx r7")
        else:
            out.append(f"call {hid}")
        self.reset_args(out)

    def reset_args(self, out: list[str]) -> None:
        for r in range(1, 6):
            out.append(f"mov r{r}, {self.imm()}" if self.rng.random() < 0.7 else f"mov r{r}, r6")

    def local_call(self, out: list[str]) -> None:
        if self.func_depth >= 3 or len(self.funcs) >= 4:
            return
        name = f"F{len(self.funcs) + 1}"
        self.funcs.append([])  # reserve the slot (and the name) before building the body
        body = [f"{name}:", f"mov r0, {self.imm()}"]
        self.func_depth += 1
        self.block(body, self.rng.randint(1, 8), in_func=True, allow_loop=False)
        if self.rng.random() < 0.05:
            # recursion: ends with the run-time call-depth error (or an earlier fault)
            body.append(f"call local {name}")
            body.extend(f"mov r{r}, {self.imm()}" for r in range(1, 6))
        self.func_depth -= 1
        body.append("exit")
        self.funcs[int(name[1:]) - 1] = body
        if self.rng.random() < 0.5:
            out.append("mov r1, r6")
        if self.rng.random() < 0.3:
            out.append("mov r2, r10")
            out.append(f"add r2, -{self.rng.choice((8, 16, 64, 512))}")
        out.append(f"call local {name}")
        self.reset_args(out)

    def access(self, out: list[str], addr: str, value: int) -> None:
        """One load or store at ``addr`` (``rX`` or ``rX+off``), values through r``value``."""
        m = self.rng.choice(_LOADS + _STORES)
        size = _size(m)
        off = self.rng.choice((0, 0, size, -size, self.rng.randint(-8, 8)))
        at = f"[{addr}{off:+d}]"
        if m.startswith("ld"):
            out.append(f"{m} r{value}, {at}")
        elif m.startswith("stx"):
            out.append(f"{m} {at}, r{value}")
        else:
            out.append(f"{m} {at}, {self.imm()}")

    def loop(self, out: list[str], in_func: bool) -> None:
        """A counted loop (r9), often walking a pointer or an index (induction variables) over
        the slot; sometimes in clang's rotated form (entered in the middle, latch first)."""
        head = self.label()
        trips = self.rng.choice((1, 2, 3, 5, 8, 13, 40))
        walk = self.rng.random() < 0.6
        index = walk and self.rng.random() < 0.4  # address = r6 + (index << shift) per access
        rotated = self.rng.random() < 0.3
        if walk:
            ptr = self.rng.choice((7, 8))
            tmp = 15 - ptr  # the other of r7/r8: the address computed from the index
            step = self.rng.choice((1, 2, 4, 8, -1, -4, 16, 3))
            if index:
                shift = self.rng.choice((0, 0, 1, 2, 3, 4))
                start = self.rng.randint(0, max(0, self.mem_len) >> shift)
                out.append(f"mov r{ptr}, {start}")
            else:
                start = self.rng.randint(0, max(0, self.mem_len))
                out.append(f"mov r{ptr}, r6")
                out.append(f"add r{ptr}, {start}")
        out.append(f"mov r9, {trips}")
        latch, done = self.label(), self.label()
        body: list[str] = [f"{head}:"]
        if walk:
            for _ in range(self.rng.randint(1, 2)):
                base = ptr
                if index:
                    base = tmp
                    form = self.rng.random()
                    if form < 0.4:
                        body.append(f"mov r{tmp}, r{ptr}")
                        if shift:
                            body.append(f"lsh r{tmp}, {shift}" if form < 0.3
                                        else f"mul r{tmp}, {1 << shift}")
                        body.append(f"add r{tmp}, r6")
                    else:
                        body.append(f"mov r{tmp}, r6")
                        if shift:
                            body.append(f"mov r5, r{ptr}")
                            body.append(f"lsh r5, {shift}")
                            body.append(f"add r{tmp}, r5")
                        else:
                            body.append(f"add r{tmp}, r{ptr}")
                self.access(body, f"r{base}", self.rng.choice((0, 2, 3)))
        self.block(body, self.rng.randint(0, 4), in_func, allow_loop=False)
        step_code: list[str] = []
        if walk:
            if self.rng.random() < 0.3:  # an increment that only some iterations make
                skip = self.label()
                step_code.append(f"jset r9, 1, {skip}")
                step_code.append(f"add r{ptr}, {step}")
                step_code.append(f"{skip}:")
            else:
                step_code.append(f"add r{ptr}, {step}")
        step_code.append("sub r9, 1")
        if rotated:
            out.append(f"ja {head}")
            out.append(f"{latch}:")
            out.extend(step_code)
            out.append(f"jne r9, 0, {head}")
            out.append(f"ja {done}")
            out.extend(body)
            out.append(f"ja {latch}")
            out.append(f"{done}:")
        else:
            out.extend(body)
            out.extend(step_code)
            out.append(f"jne r9, 0, {head}")

    def block(self, out: list[str], n: int, in_func: bool, allow_loop: bool) -> None:
        pending: list[list] = []  # [items left, label]
        for _ in range(n):
            r = self.rng.random()
            if r < 0.45:
                self.alu(out, in_func)
            elif r < 0.7:
                self.mem(out, in_func)
            elif r < 0.82:
                lab = self.label()
                op = self.rng.choice(_JCC)
                d = self.reg(in_func)
                if self.rng.random() < 0.5:
                    out.append(f"{op} r{d}, {self.imm()}, {lab}")
                else:
                    out.append(f"{op} r{d}, r{self.src(in_func)}, {lab}")
                pending.append([self.rng.randint(0, 4), lab])
            elif r < 0.86:
                out.append(f"lddw r{self.reg(in_func)}, {self.rng.getrandbits(64):#x}")
            elif r < 0.91 and not in_func:
                self.helper(out)
            elif r < 0.95 and not in_func:
                self.local_call(out)
            elif r < 0.98 and allow_loop:
                self.loop(out, in_func)
            elif r < 0.99:
                out.append("exit")
            else:
                out.append("ja +0")
            for p in pending:
                p[0] -= 1
            for p in [p for p in pending if p[0] < 0]:
                out.append(f"{p[1]}:")
                pending.remove(p)
        for p in pending:
            out.append(f"{p[1]}:")

    def program(self, n: int) -> str:
        out = ["mov r6, r1"]
        for r in _GENERAL:
            if r in (1, 2) and self.rng.random() < 0.5:
                continue  # keep the entry values of r1/r2 sometimes
            out.append(f"mov r{r}, {self.imm()}" if self.rng.random() < 0.8
                       else f"lddw r{r}, {self.rng.getrandbits(64):#x}")
        self.block(out, n, in_func=False, allow_loop=True)
        out.append("exit")
        for body in self.funcs:
            out.extend(body)
        return "\n".join(out) + "\n"


class _DeepGen(_Gen):
    """Programs built around calls at depth (see ``deep_case``)."""

    #: r2 at entry is the data length (at most 64 here) or 0; a re-entry passes REENTER + level
    REENTER = 1000

    def __init__(self, rng: random.Random, mem_len: int | None, segments: bool = False):
        super().__init__(rng, mem_len, segments)
        self.extra: list[list[str]] = []
        self.names: set[str] = set()

    def frame_offset(self, size: int, up: int) -> int:
        """An r10 offset into the frame ``up`` levels above the current one (0: its own)."""
        slot = self.rng.randint(1, STACK_SIZE // size)
        return STACK_SIZE * up - slot * size + (0 if self.rng.random() < 0.9 else
                                                self.rng.choice((1, -1, size)))

    def caller_frame_access(self, out: list[str], up_max: int, value_reg: int) -> None:
        """A load or store ``up`` frames above this one: valid only when the run is that deep."""
        size = self.rng.choice((1, 2, 4, 8))
        # mostly frames a run certainly has; sometimes one it has only when deep enough
        up = self.rng.randint(0, min(1, up_max)) if self.rng.random() < 0.8 else \
            self.rng.randint(0, up_max)
        off = self.frame_offset(size, up)
        suffix = {1: "b", 2: "h", 4: "w", 8: "dw"}[size]
        if self.rng.random() < 0.5:
            out.append(f"stx{suffix} [r10{off:+d}], r{value_reg}")
        else:
            out.append(f"ldx{suffix} r3, [r10{off:+d}]")
            out.append("add r0, r3")

    def function(self, name: str, body: list[str]) -> str:
        if name not in self.names:
            self.names.add(name)
            self.extra.append([f"{name}:", *body])
        return name

    def recursive(self) -> str:
        """R: recursion on r1 (levels left), stores its own frame, reads its callers' frames."""
        body = ["mov r0, r1", "stxdw [r10-8], r1"]
        for _ in range(self.rng.randint(0, 2)):
            self.caller_frame_access(body, 2, 1)
        body += ["jeq r1, 0, Rend", "sub r1, 1", "call local R", "ldxdw r3, [r10-8]",
                 "add r0, r3"]
        if self.rng.random() < 0.5:
            body += ["mov r1, r10", "add r1, -8", "mov r2, 0", "call local G"]
        body += ["Rend:", "exit"]
        self.leaf()
        return self.function("R", body)

    def mutual(self) -> str:
        """A and B call each other on r1; B writes into A's frame (its caller's)."""
        self.function("A", ["mov r0, r1", "stxw [r10-4], r1", "jeq r1, 0, Aend", "sub r1, 1",
                            "call local B", "Aend:", "exit"])
        off = self.frame_offset(4, 1)
        self.function("B", ["mov r0, r1", "add r0, 3", f"stxw [r10{off:+d}], r0",
                            "jeq r1, 0, Bend", "sub r1, 1", "call local A", "Bend:", "exit"])
        return "A"

    def leaf(self) -> str:
        """G: reads and writes through the pointer in r1 (often into a caller's frame)."""
        body = ["mov r0, r2", "jeq r1, 0, Gend", "ldxdw r3, [r1+0]", "add r3, 1",
                "stxdw [r1+0], r3", "add r0, r3", "Gend:", "exit"]
        return self.function("G", body)

    def levels(self) -> int:
        """Recursion levels for R or A/B: mostly within the depth limit, sometimes past it."""
        if self.rng.random() < 0.8:
            return self.rng.randint(0, MAX_CALL_DEPTH - 2)
        return self.rng.randint(MAX_CALL_DEPTH - 1, MAX_CALL_DEPTH + 1)

    def deep_item(self, out: list[str]) -> None:
        """One construct of the deep kind, at depth 0 in the entry function."""
        r = self.rng.random()
        if r < 0.45:
            out.append(f"mov r1, {self.levels()}")
            out.append(f"call local {self.recursive() if r < 0.3 else self.mutual()}")
        elif r < 0.65:
            # the entry function entered again by calls, down to `levels` frames
            out.append(f"mov r2, {self.REENTER + 1}")
            out.append("call local start")
        elif r < 0.8:
            # code no run reaches: jumped over, with a call the call graph leaves out
            skip = self.label()
            out.append(f"ja {skip}")
            out.append("mov r1, 0")
            out.append(f"call local {self.recursive()}")
            self.block(out, self.rng.randint(0, 3), in_func=False, allow_loop=False)
            out.append(f"{skip}:")
        elif r < 0.95:
            # a pointer into this frame, handed down (the callee writes the caller's frame)
            out.append("stdw [r10-16], 5")
            out.append("mov r1, r10")
            out.append("add r1, -16")
            out.append("mov r2, 1")
            out.append(f"call local {self.leaf()}")
            out.append("ldxdw r3, [r10-16]")
            out.append("add r0, r3")
        else:
            # a fault on every run at depth 0, then code that only looks dead
            out.append(f"lddw r3, {self.rng.choice((0, 8, STACK_TOP, STACK_TOP - 4)):#x}")
            out.append(f"stb [r3+0], {self.rng.randint(0, 255)}")
            out.append(f"call local {self.leaf()}")
        self.reset_args(out)

    def reentry(self) -> list[str]:
        """The entry function's path when entered by a call at depth r2 - REENTER."""
        levels = self.rng.randint(1, MAX_CALL_DEPTH)
        out = ["re:", "mov r0, r2", "mov r3, r2"]
        for _ in range(self.rng.randint(1, 3)):
            self.caller_frame_access(out, min(levels, 3), 3)
        out.append(f"jge r2, {self.REENTER + levels}, redone")
        out.append("add r2, 1")
        out.append("call local start")
        if self.rng.random() < 0.5:
            out += ["mov r1, r10", "add r1, -8", "stdw [r10-8], 1", "mov r2, 2",
                    f"call local {self.leaf()}"]
        out += ["redone:", "exit"]
        return out

    def program(self, n: int) -> str:
        out = ["start:", f"jge r2, {self.REENTER}, re", "mov r6, r1", "mov r0, 0"]
        for r in (3, 4, 5, 7, 8, 9):
            out.append(f"mov r{r}, {self.imm()}")
        for _ in range(self.rng.randint(1, 4)):
            self.block(out, self.rng.randint(0, max(1, n // 4)), in_func=False, allow_loop=True)
            self.deep_item(out)
        out.append("exit")
        out += self.reentry()
        for body in self.funcs + self.extra:
            out.extend(body)
        return "\n".join(out) + "\n"


def _size(mnemonic: str) -> int:
    for suffix, n in (("dw", 8), ("w", 4), ("h", 2), ("b", 1)):
        if mnemonic.endswith(suffix):
            return n
    raise AssertionError(mnemonic)  # pragma: no cover


def random_case(rng: random.Random, max_items: int = 24) -> Case:
    """One random valid program with its input memory and budget."""
    mem_len = None if rng.random() < 0.1 else rng.choice((0, 1, 4, 8, 16, 24, 32, 40, 64))
    segments = rng.random() < 0.15
    gen = _Gen(rng, mem_len, segments)
    text = gen.program(rng.randint(1, max_items))
    memory = None if mem_len is None else rng.randbytes(mem_len)
    budget = rng.randint(1, 80) if rng.random() < 0.15 else None
    return Case(text, memory, budget, segments)


def deep_case(rng: random.Random, max_items: int = 16) -> Case:
    """One random valid program of the deep kind: recursion to and past the call-depth limit
    (also of the entry function), mutual calls, loads and stores into callers' frames through
    r10 offsets that are valid only at depth, pointers to stack variables passed down, code no
    run reaches (with calls the call graph leaves out), faults on every run followed by more
    code, and budgets that run out at any depth."""
    mem_len = None if rng.random() < 0.1 else rng.choice((0, 8, 16, 32, 64))
    gen = _DeepGen(rng, mem_len, segments=rng.random() < 0.1)
    text = gen.program(rng.randint(1, max_items))
    memory = None if mem_len is None else rng.randbytes(mem_len)
    budget = rng.randint(1, 400) if rng.random() < 0.3 else None
    return Case(text, memory, budget, gen.segments)


#: Straight-line operations a loop body of ``loop_case`` mixes in (on r0, r2..r4 only).
_BODY_ALU = ("add", "sub", "xor", "or", "and", "mul", "lsh", "rsh", "arsh", "add32", "xor32",
             "mul32", "rsh32")


class _LoopGen(_Gen):
    """Programs made of the loop shapes the interpreter's fast versions and clang's kernels
    have (see ``loop_case``)."""

    def body_alu(self, out: list[str]) -> None:
        op, d = self.rng.choice(_BODY_ALU), self.rng.choice((0, 2, 3, 4))
        if op.startswith(("lsh", "rsh", "arsh")):
            out.append(f"{op} r{d}, {self.rng.randint(0, 31)}")
        elif self.rng.random() < 0.5:
            out.append(f"{op} r{d}, r{self.rng.choice((0, 2, 3, 4))}")
        else:
            out.append(f"{op} r{d}, {self.imm()}")

    def shaped_loop(self, out: list[str]) -> None:
        """One loop: a pointer (r7) or an index (r7, addresses r6 + (r7 << shift)) stepping by a
        constant towards a bound in r8 or an immediate, compared directly, through a derived
        counter (r9 = r7 - bound) or at an exit in the middle of a two-block body; mostly
        inside the slot, sometimes running off either end of it."""
        rng, n = self.rng, max(1, self.mem_len)
        index = rng.random() < 0.4
        shift = rng.choice((0, 1, 2, 3)) if index else 0
        step = rng.choice((1, 1, 2, 4, 8, -1, -4, 3))
        trips = rng.choice((1, 2, 3, 7, 16, 64, 200, 1000))
        span = n >> shift if index else n
        start = rng.randint(0, span)
        if rng.random() < 0.15:   # run off the end (or the start) of the slot
            trips = max(trips, span // abs(step) + 2)
        end = start + step * trips
        if index:
            out.append(f"mov r7, {start}")
        else:
            out.append("mov r7, r6")
            out.append(f"add r7, {start}")
        bound_reg = not index or rng.random() < 0.6   # a pointer's bound depends on r6
        if bound_reg:
            if index:
                out.append(f"mov r8, {end}")
            else:
                out.append("mov r8, r6")
                out.append(f"add r8, {end}")
        head, done = self.label(), self.label()
        body: list[str] = [f"{head}:"]
        for _ in range(rng.randint(1, 3)):
            if index:
                body.append("mov r5, r7")
                if shift:
                    body.append(f"lsh r5, {shift}")
                body.append("add r5, r6")
                addr = "r5"
            else:
                addr = "r7"
            if index and rng.random() < 0.3:   # a byte read, then an address made from it
                body.append(f"ldxb r4, [{addr}]")
                body.append("and r4, 15")
                body.append("mov r5, r6")
                body.append("add r5, r4")
                addr = "r5"
            self.access(body, addr, rng.choice((0, 2, 3)))
            for _ in range(rng.randint(0, 2)):
                self.body_alu(body)
        middle = rng.random() < 0.3
        if middle:   # the exit test between two blocks of the body, as clang rotates loops
            cmp = "jeq"
            body.append(f"{cmp} r7, {'r8' if bound_reg else self._bound(end, index)}, {done}")
            self.body_alu(body)
        body.append(f"add r7, {step}")
        if middle:
            body.append(f"ja {head}")
        elif rng.random() < 0.3:   # a derived counter: r9 = r7 - bound, tested against 0
            body.append("mov r9, r7")
            body.append(f"sub r9, {'r8' if bound_reg else self._bound(end, index)}")
            body.append(f"jne r9, 0, {head}")
        else:
            ops = ["jne"] + (["jlt", "jle"] if step > 0 else ["jgt", "jge"])
            op = rng.choice(ops)
            if op in ("jle", "jge") and rng.random() < 0.5:
                op = "jne"   # (jle/jge run one pass more: both kinds appear)
            body.append(f"{op} r7, {'r8' if bound_reg else self._bound(end, index)}, {head}")
        out.extend(body)
        out.append(f"{done}:")

    def _bound(self, end: int, index: bool) -> str:
        """The immediate bound of an index loop whose bound is not in r8."""
        assert index and -2**31 <= end < 2**31
        return str(end)

    def program(self, n: int) -> str:
        out = ["mov r6, r1", "mov r0, 0", "mov r2, 1", "mov r3, 2", "mov r4, 3"]
        for _ in range(n):
            self.shaped_loop(out)
            if self.rng.random() < 0.3:
                self.body_alu(out)
        out.append("exit")
        return "\n".join(out) + "\n"


def loop_case(rng: random.Random, max_items: int = 3) -> Case:
    """One program of 1..3 loops of the shapes the interpreter's fast loop versions take (and
    clang's kernels have): pointer and base + index addressing, bounds in a register or an
    immediate, derived counters, exits in the middle, addresses from loaded bytes, over slots of
    up to 4 KiB, with budgets that run out inside a loop about one case in five."""
    mem_len = rng.choice((16, 64, 256, 1024, 4096))
    gen = _LoopGen(rng, mem_len)
    text = gen.program(rng.randint(1, min(3, max(1, max_items))))
    budget = rng.randint(1, 3000) if rng.random() < 0.2 else None
    return Case(text, rng.randbytes(mem_len), budget)


#: Generators by the name ``fuzz/jit_diff.py --kind`` uses.
KINDS = {"flat": random_case, "deep": deep_case, "loops": loop_case}


def outcome(exe, case: Case):
    """Run ``case`` on a loaded executable; a comparable tuple (result or error, and memory)."""
    mem = bytearray(case.memory) if case.memory is not None else None
    try:
        res = exe.run(mem, case.budget)
    except ExecutionError as exc:
        return ("error", type(exc).__name__, exc.kind, exc.pc, exc.address, exc.size,
                exc.instructions, str(exc), bytes(mem) if mem is not None else None)
    return ("ok", res.return_value, res.instructions,
            bytes(res.memory) if mem is not None else None)


def compare(case: Case, jit_exe, interp_exe=None) -> str | None:
    """Run ``case`` on the interpreter and the JIT; a description of the difference, or None."""
    from hermes.engine.interp import Interpreter
    if interp_exe is None:
        interp_exe = Interpreter(jit_exe.program, helpers=CONFORMANCE_HELPERS,
                                 budget=jit_exe.budget)
    return compare_all(case, {"interp": interp_exe, "jit": jit_exe})


def compare_all(case: Case, exes: dict[str, object]) -> str | None:
    """Run ``case`` on every executable (the first is the reference); the differences, or None."""
    results = {name: outcome(exe, case) for name, exe in exes.items()}
    ref_name, ref = next(iter(results.items()))
    bad = {name: r for name, r in results.items() if r != ref}
    if not bad:
        return None
    width = max(len(n) for n in results)
    lines = [f"{ref_name:>{width}} {ref!r}"] + [f"{n:>{width}} {r!r}" for n, r in bad.items()]
    return "\n".join(lines) + f"\nprogram (budget {case.budget}, memory " \
        f"{case.memory.hex() if case.memory is not None else None}):\n{case.text}"

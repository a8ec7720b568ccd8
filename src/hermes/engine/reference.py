"""The plain reference interpreter: RFC 9669 run one instruction at a time, readable beside the RFC.

Nothing here is generated or pre-translated: ``_Machine.execute`` has one arm per operation of
the ISA table, every memory access goes through the one check ``_Machine.locate``, helpers see
the same ``HelperContext`` as on the other engines. It is the semantic yardstick the block
translator (``interp``) and the JIT are compared with, and the engine behind ``hermes exec
--trace``: ``run(..., step=hook)`` calls ``hook(Step)`` after every executed instruction.

The run contract is the other engines' (specs/run-contract.md, specs/engine.md): r1 = the data
window, r2 = the input length, r3..r5 = the arguments, r10 = the frame pointer; the same load
check, error kinds, messages, pcs and instruction counts. Instructions are charged one basic
block at a time when the block is entered, as the engines do: a block that would take the count
past the budget is not started (``BudgetExceeded`` at its first pc, counting what ran before),
and a fault counts the instructions up to and including the faulting one.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from ..errors import BudgetExceeded, Cancelled, ExecutionError
from . import cfg
from .cancel import Cancel
from .helpers import HelperContext, HelperRegistry, RunState, StopRun
from .isa import MAX_REG, Insn, jump_target
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


class Step(NamedTuple):
    """One executed instruction, as a step hook sees it.

    ``before`` and ``after`` are r0..r10 around the instruction; ``stores`` the memory it wrote,
    as ``(address, size, value)`` (stores and atomics; what a helper writes is not listed).
    """

    pc: int
    insn: Insn
    before: tuple[int, ...]
    after: tuple[int, ...]
    stores: tuple[tuple[int, int, int], ...]


#: A step hook: called after every instruction that completed (not for one that faulted).
StepHook = Callable[[Step], None]


#: The ALU operations that swap bytes (form ``end``), computed by ``_Machine.byte_swap``.
_BYTE_SWAPS = frozenset(("le", "be", "bswap"))


def _signed(value: int, bits: int) -> int:
    """``value`` (already ``bits`` wide) read as a two's-complement number."""
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


class Reference:
    """The reference engine: ``Reference(program, helpers=, budget=).run(memory, ...)``."""

    name = "reference"

    def __init__(self, program: Program, *, helpers: HelperRegistry, budget: int,
                 checked: VerifierInfo | None = None):
        """Find the basic blocks; ``checked`` is the load pipeline's result for ``program``
        (``hermes.engine.check``), run here when the caller gives none."""
        if checked is None:
            verify(program, helpers)
        self.program = program
        self.helpers = helpers
        self.budget = budget
        insns = program.insns
        leaders = cfg.block_leaders(insns)
        #: Instructions of the block starting at each leader (an lddw counts once).
        self.block_length: dict[int, int] = {}
        for start, end in zip(leaders, leaders[1:] + [len(insns)], strict=True):
            self.block_length[start] = sum(1 for i in range(start, end) if insns[i] is not None)

    def run(self, memory: bytearray | memoryview | bytes | None = None,
            budget: int | None = None, *, cancel: Cancel | None = None,
            length: int | None = None, args: tuple[int, ...] = (),
            step: StepHook | None = None, state: RunState | None = None) -> RunResult:
        """Run once; see ``hermes.engine.run``. ``step`` is called with a ``Step`` after every
        instruction (the ``--trace`` of ``hermes exec``). ``state`` receives what the helpers
        record (printed text, output length), which a caller can read even when the run
        fails."""
        data, r1, r2 = input_region(memory, length)
        state = state if state is not None else RunState()
        state.window = len(data)
        machine = _Machine(self, data, (r1, r2, *run_args(args)),
                           self.budget if budget is None else budget, cancel, step, state)
        started = time.perf_counter_ns()
        try:
            r0 = machine.run()
        except ExecutionError as exc:
            raise machine.state.stamp(exc)  # noqa: B904 - the same exception, stamped
        elapsed = time.perf_counter_ns() - started
        state = machine.state
        return RunResult(r0, data, machine.charged, output_length=state.output_length,
                         trace=bytes(state.trace), trace_dropped=state.trace_dropped,
                         elapsed_ns=elapsed)


class _Machine:
    """The state of one run: registers, pc, call frames, stack, program data and counts."""

    def __init__(self, exe: Reference, data: bytearray | memoryview, entry: tuple[int, ...],
                 budget: int, cancel: Cancel | None, hook: StepHook | None, state: RunState):
        self.program = exe.program
        self.helpers = exe.helpers
        self.block_length = exe.block_length
        self.budget = budget
        self.cancel = cancel
        self.hook = hook
        self.data = data
        # r1..r5 from the entry values; r0 and r6..r9 start at 0 (the load check proves that
        # no program reads them before writing them); r10 is the top of frame 0.
        self.regs = [0] * (MAX_REG + 1)
        self.regs[1:6] = entry
        self.regs[10] = STACK_TOP
        self.pc = 0
        #: One entry per active local call: (return pc, r6, r7, r8, r9, r10 of the caller).
        self.frames: list[tuple[int, ...]] = []
        #: Every frame's bytes: frame d spans [STACK_TOP - 512 (d+1), STACK_TOP - 512 d).
        self.stack = bytearray(STACK_SIZE * MAX_CALL_DEPTH)
        #: (vaddr, bytes, writable) of each program data segment; writable ones are fresh copies.
        self.segments = [(seg.vaddr, bytearray(seg.data) if seg.writable
                          else memoryview(seg.data), seg.writable)
                         for seg in self.program.segments if seg.data]
        self.state = state
        self.ctx = HelperContext(self.read, self.write, self.view, run=self.state)
        #: Instructions charged (whole blocks, on entry) and instructions actually executed.
        self.charged = 0
        self.executed = 0
        self.stores: list[tuple[int, int, int]] = []

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> int:
        """Execute from slot 0 until the entry function exits; returns r0."""
        insns = self.program.insns
        try:
            while True:
                if self.pc in self.block_length:
                    self.enter_block()
                insn = insns[self.pc]
                assert insn is not None  # validated: no jump lands inside an lddw
                self.executed += 1
                if self.hook is None:
                    next_pc = self.execute(insn)
                else:
                    before = tuple(self.regs)
                    self.stores = []
                    next_pc = self.execute(insn)
                    self.hook(Step(self.pc, insn, before, tuple(self.regs), tuple(self.stores)))
                if next_pc is None:
                    return self.regs[0]
                self.pc = next_pc
        except StopRun as stop:
            return stop.value & MASK64
        except ExecutionError as exc:
            if exc.instructions is None:
                exc.instructions = self.executed
            raise

    def enter_block(self) -> None:
        """Charge the block starting at the pc against the budget; honour a cancellation."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled", "run cancelled", self.pc, instructions=self.charged)
        length = self.block_length[self.pc]
        if self.charged + length > self.budget:
            raise BudgetExceeded("budget", f"instruction budget of {self.budget} exhausted",
                                 self.pc, instructions=self.charged)
        self.charged += length

    def execute(self, insn: Insn) -> int | None:
        """Execute ``insn`` at ``self.pc``; the next pc, or None when the program ends."""
        op, regs, pc = insn.op, self.regs, self.pc
        if op.is_alu:
            regs[insn.dst] = self.byte_swap(insn) if op.sem in _BYTE_SWAPS else self.alu(insn)
        elif op.is_lddw:
            regs[insn.dst] = insn.imm
            return pc + 2
        elif op.is_load:
            value = self.load((regs[insn.src] + insn.off) & MASK64, op.width)
            if op.sem == "ldxs":
                value = _signed(value, op.width * 8) & MASK64
            regs[insn.dst] = value
        elif op.is_store:
            value = regs[insn.src] if op.source_x else insn.imm
            self.store((regs[insn.dst] + insn.off) & MASK64, op.width, value)
        elif op.is_atomic:
            self.atomic(insn)
        elif op.is_jump:
            return jump_target(insn, pc)
        elif op.is_branch:
            return jump_target(insn, pc) if self.condition(insn) else pc + 1
        elif op.is_local_call:
            return self.call_local(cfg.target(insn, pc))
        elif op.is_call:
            regs[0] = self.call_helper(regs[insn.dst] if op.sem == "callx" else insn.imm)
        elif op.is_exit:
            return self.exit()
        else:  # pragma: no cover - the ISA table has no other kind of instruction
            raise AssertionError(op.mnemonic)
        return pc + 1

    # -- arithmetic -----------------------------------------------------------------------------
    def alu(self, insn: Insn) -> int:
        """The result of an ALU (32-bit) or ALU64 instruction: operands are taken at the
        operation's width (an immediate sign-extended first), the result zero-extended."""
        op = insn.op
        bits = op.width
        mask = (1 << bits) - 1
        dst = self.regs[insn.dst] & mask
        src = (self.regs[insn.src] if op.source_x else insn.imm) & mask
        shift = src & (bits - 1)
        sem = op.sem
        if sem == "add":
            return (dst + src) & mask
        if sem == "sub":
            return (dst - src) & mask
        if sem == "mul":
            return (dst * src) & mask
        if sem == "div":  # unsigned; x / 0 = 0
            return dst // src if src else 0
        if sem == "sdiv":  # signed, truncating toward zero; x / 0 = 0, MIN / -1 = MIN
            a, b = _signed(dst, bits), _signed(src, bits)
            if b == 0:
                return 0
            quotient = abs(a) // abs(b)
            return (quotient if (a < 0) == (b < 0) else -quotient) & mask
        if sem == "mod":  # unsigned; x % 0 = x
            return dst % src if src else dst
        if sem == "smod":  # signed, the sign of the dividend; x % 0 = x, MIN % -1 = 0
            a, b = _signed(dst, bits), _signed(src, bits)
            if b == 0:
                return dst
            remainder = abs(a) % abs(b)
            return (remainder if a >= 0 else -remainder) & mask
        if sem == "or":
            return dst | src
        if sem == "and":
            return dst & src
        if sem == "xor":
            return dst ^ src
        if sem == "lsh":
            return (dst << shift) & mask
        if sem == "rsh":
            return dst >> shift
        if sem == "arsh":
            return (_signed(dst, bits) >> shift) & mask
        if sem == "neg":
            return -dst & mask
        if sem == "mov":
            return src
        if sem == "movsx":  # the low 8, 16 or 32 bits of src, sign-extended to the width
            low = dict(op.match)["off"]
            return _signed(src & ((1 << low) - 1), low) & mask
        raise AssertionError(sem)  # pragma: no cover - the table has no other ALU operation

    def byte_swap(self, insn: Insn) -> int:
        """``le``/``be``/``bswap`` of the low ``width`` bits, zero-extended. The machine is
        little-endian, so ``le`` only truncates and ``be`` is the same swap as ``bswap``."""
        width = insn.op.width
        value = self.regs[insn.dst] & ((1 << width) - 1)
        if insn.op.sem == "le":
            return value
        return int.from_bytes(value.to_bytes(width // 8, "little"), "big")

    def condition(self, insn: Insn) -> bool:
        """Whether a conditional jump is taken (JMP: 64-bit operands, JMP32: the low 32 bits)."""
        op = insn.op
        bits = op.width
        mask = (1 << bits) - 1
        a = self.regs[insn.dst] & mask
        b = (self.regs[insn.src] if op.source_x else insn.imm) & mask
        sa, sb = _signed(a, bits), _signed(b, bits)
        sem = op.sem
        if sem == "jeq":
            return a == b
        if sem == "jne":
            return a != b
        if sem == "jset":
            return a & b != 0
        if sem == "jgt":
            return a > b
        if sem == "jge":
            return a >= b
        if sem == "jlt":
            return a < b
        if sem == "jle":
            return a <= b
        if sem == "jsgt":
            return sa > sb
        if sem == "jsge":
            return sa >= sb
        if sem == "jslt":
            return sa < sb
        if sem == "jsle":
            return sa <= sb
        raise AssertionError(sem)  # pragma: no cover - the table has no other condition

    def atomic(self, insn: Insn) -> None:
        """An atomic read-modify-write of 4 or 8 bytes at ``dst + off`` (one thread runs the
        program, so reading then writing is atomic)."""
        op, regs = insn.op, self.regs
        size = op.width
        mask = (1 << (size * 8)) - 1
        addr = (regs[insn.dst] + insn.off) & MASK64
        old = self.load(addr, size)
        src = regs[insn.src] & mask
        if op.sem == "atomic_cmpxchg":
            if old == regs[0] & mask:
                self.store(addr, size, src)
            regs[0] = old
            return
        if op.sem == "atomic_xchg":
            self.store(addr, size, src)
            regs[insn.src] = old
            return
        operation = op.sem.rsplit("_", 1)[1]
        new = {"add": old + src, "or": old | src, "and": old & src, "xor": old ^ src}[operation]
        self.store(addr, size, new & mask)
        if op.sem.startswith("atomic_fetch_"):
            regs[insn.src] = old

    # -- calls ----------------------------------------------------------------------------------
    def call_helper(self, helper_id: int) -> int:
        """r0 of helper ``helper_id`` called with r1..r5 (which it leaves unchanged)."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled", "run cancelled", self.pc)
        helper = self.helpers.get(helper_id)
        if helper is None:
            raise ExecutionError("helper", f"call to unknown helper id {helper_id}", self.pc)
        self.ctx.pc = self.pc
        try:
            return helper.fn(self.ctx, *self.regs[1:6]) & MASK64
        except (ExecutionError, StopRun):
            raise
        except Exception as exc:  # a helper bug must not look like a crash of the engine
            raise ExecutionError("helper", f"helper {helper.name} failed: {exc}",
                                 self.pc) from exc

    def call_local(self, target: int) -> int:
        """Enter the local function at ``target``: save r6..r9 and r10, move r10 one frame
        down."""
        if len(self.frames) + 1 >= MAX_CALL_DEPTH:
            raise ExecutionError("call_depth", f"call depth limit of {MAX_CALL_DEPTH} frames "
                                 "exceeded", self.pc)
        self.frames.append((self.pc + 1, *self.regs[6:11]))
        self.regs[10] -= STACK_SIZE
        return target

    def exit(self) -> int | None:
        """Return to the caller (restoring its r6..r10), or end the program (None)."""
        if not self.frames:
            return None
        return_pc, *saved = self.frames.pop()
        self.regs[6:11] = saved
        return return_pc

    # -- memory ---------------------------------------------------------------------------------
    def locate(self, addr: int, size: int, write: bool) -> tuple[bytearray | memoryview, int]:
        """The buffer and offset holding ``[addr, addr + size)``: the one check every load,
        store, atomic and helper access goes through. The range must lie wholly inside the data
        window, the live stack frames (the current one and its callers') or a program data
        segment (writable ones only for a write); anything else is an out-of-bounds fault."""
        end = addr + size
        if DATA_BASE <= addr and end <= DATA_BASE + len(self.data):
            return self.data, addr - DATA_BASE
        depth = len(self.frames)
        if STACK_TOP - STACK_SIZE * (depth + 1) <= addr and end <= STACK_TOP:
            return self.stack, addr - STACK_BASE
        for vaddr, buf, writable in self.segments:
            if vaddr <= addr and end <= vaddr + len(buf) and (writable or not write):
                return buf, addr - vaddr
        raise out_of_bounds(self.pc, addr, size, write, len(self.data), self.program.segments,
                            depth)

    def load(self, addr: int, size: int) -> int:
        """The little-endian unsigned value of ``size`` bytes at ``addr``."""
        buf, off = self.locate(addr, size, False)
        return int.from_bytes(buf[off:off + size], "little")

    def store(self, addr: int, size: int, value: int) -> None:
        """Write the low ``size`` bytes of ``value`` at ``addr``, little-endian."""
        value &= (1 << (size * 8)) - 1
        buf, off = self.locate(addr, size, True)
        buf[off:off + size] = value.to_bytes(size, "little")
        if self.hook is not None:
            self.stores.append((addr, size, value))

    def read(self, addr: int, size: int) -> bytes:
        """``HelperContext`` reader: ``size`` bytes at ``addr``."""
        buf, off = self.locate(addr, size, False)
        return bytes(buf[off:off + size])

    def write(self, addr: int, blob: bytes) -> None:
        """``HelperContext`` writer: ``blob`` at ``addr``."""
        buf, off = self.locate(addr, len(blob), True)
        buf[off:off + len(blob)] = blob

    def view(self, addr: int, size: int, write: bool) -> memoryview:
        """``HelperContext`` accessor: the checked range as a memoryview (no copy)."""
        buf, off = self.locate(addr, size, write)
        return memoryview(buf)[off:off + size]


__all__ = ["Reference", "Step", "StepHook"]

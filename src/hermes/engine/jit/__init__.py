"""The LLVM JIT engine: verified eBPF compiled to native code, with the interpreter's semantics."""
from __future__ import annotations

import ctypes
import threading
import time
from functools import cached_property

from ...errors import BudgetExceeded, Cancelled, ExecutionError, VerifierError
from ..cancel import Cancel
from ..helpers import HelperContext, HelperRegistry, RunState, StopRun
from ..interp import Interpreter
from ..memory import (
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
from ..program import Program
from ..result import RunResult
from ..verifier import VerifierInfo, verify
from . import codegen
from .runtime import (
    HELPER_CFUNC,
    STACK_BYTES,
    Compiled,
    Ctx,
    auto_tier,
    compile_many,
    compile_program,
)

__all__ = ["JitExecutable", "DEFAULT_OPT_LEVEL"]

#: LLVM optimisation level (speed level of the new pass manager's default pipeline).
DEFAULT_OPT_LEVEL = 3

# Runs in flight, by the address of their context (how the shared helper callback finds them).
_runs: dict[int, _Run] = {}
_runs_lock = threading.Lock()


class _Run:
    """Per-run Python state: buffers the native code points into, and the helper context."""

    def __init__(self, exe: JitExecutable, data, dlen: int, stack, segbufs, ctx: Ctx,
                 cancel: Cancel | None = None):
        self.exe = exe
        self.cancel = cancel
        self.data = data
        self.dlen = dlen
        self.stack = stack
        self.segbufs = segbufs
        self.ctx = ctx
        self.depth = 0
        self.pc = 0
        self.error: BaseException | None = None
        self.state = RunState(dlen)

    @cached_property
    def helper_ctx(self) -> HelperContext:
        """The helpers' view of this run, made at its first helper call."""
        return HelperContext(self._read, self._write, self._view, self.state)

    def _find(self, addr: int, size: int, write: bool):
        """Same region lookup (and error wording) as the interpreters (``memory.out_of_bounds``)."""
        addr &= MASK64
        if DATA_BASE <= addr and addr + size <= DATA_BASE + self.dlen:
            return self.data, addr - DATA_BASE
        slo = STACK_TOP - STACK_SIZE * (self.depth + 1)
        if slo <= addr and addr + size <= STACK_TOP:
            return self.stack, addr - STACK_BASE
        for seg, buf in self.segbufs:
            if seg.vaddr <= addr and addr + size <= seg.end and (seg.writable or not write):
                return buf, addr - seg.vaddr
        raise out_of_bounds(self.pc, addr, size, write, self.dlen, self.exe.program.segments,
                            self.depth)

    def _read(self, addr: int, size: int) -> bytes:
        buf, off = self._find(addr, size, False)
        return bytes(memoryview(buf).cast("B")[off:off + size])

    def _write(self, addr: int, blob: bytes) -> None:
        buf, off = self._find(addr, len(blob), True)
        memoryview(buf).cast("B")[off:off + len(blob)] = blob

    def _view(self, addr: int, size: int, write: bool) -> memoryview:
        buf, off = self._find(addr, size, write)
        return memoryview(buf).cast("B")[off:off + size]


def _helper_dispatch(ctx_addr, hid, a, b, c, d, e, pcd, count):  # noqa: ANN001 - ctypes ABI
    """The one native helper callback: finds the run, calls the helper, records failures."""
    run = _runs.get(ctx_addr)
    if run is None:  # pragma: no cover - a context is registered for its whole run
        return 0
    pc = pcd & 0xFFFF_FFFF
    run.pc = run.helper_ctx.pc = pc
    run.depth = pcd >> 32
    ctx = run.ctx
    if run.cancel is not None and run.cancel.is_set():
        # A fast-loop chunk is bounded in instructions, not in time: a loop of helper calls
        # could run for minutes before its next budget read, so a cancelled run stops here, as
        # at a budget stop (reported as the cancellation), before the helper spends anything.
        ctx.err_count = count
        ctx.err_pc = pc
        ctx.err_kind = codegen.ERR_BUDGET
        return 0
    try:
        helper = run.exe.helpers.get(hid)
        if helper is None:
            raise ExecutionError("helper", f"call to unknown helper id {hid}", pc)
        try:
            return helper.fn(run.helper_ctx, a, b, c, d, e) & MASK64
        except (ExecutionError, StopRun):
            raise
        except Exception as exc:  # a helper bug must not look like a crash of the engine
            raise ExecutionError("helper", f"helper {helper.name} failed: {exc}", pc) from exc
    except StopRun as stop:
        ctx.stop_value = stop.value & MASK64
        ctx.err_count = count
        ctx.err_pc = pc
        ctx.err_kind = codegen.ERR_STOP
    except BaseException as exc:  # noqa: BLE001 - nothing may unwind through native frames
        run.error = exc
        ctx.err_count = count
        ctx.err_pc = pc
        ctx.err_kind = codegen.ERR_HELPER
    return 0


_HELPER_CALLBACK = HELPER_CFUNC(_helper_dispatch)
_HELPER_ADDRESS = ctypes.cast(_HELPER_CALLBACK, ctypes.c_void_p).value


class JitExecutable:
    """A program compiled to native code: ``JitExecutable(program, helpers=, budget=).run(mem)``.

    Loading verifies the program (``hermes.engine.verifier``) and compiles it through LLVM once per
    process (cached by program digest). ``run`` is reentrant; the native code runs without the GIL.
    ``tier`` is "quick", "full" or "auto" (``runtime.auto_tier``: by size, with the interpreter
    for programs too large to compile in bounded time); ``self.tier`` is the one in use
    ("upgrade": quick code now, the full tier's once the background compilation is done).
    """

    name = "jit"

    def __init__(self, program: Program, *, helpers: HelperRegistry, budget: int,
                 opt_level: int = DEFAULT_OPT_LEVEL, tier: str = "auto",
                 checked: VerifierInfo | None = None, _prepared: tuple | None = None):
        """``checked`` is the load pipeline's result for ``program`` (``hermes.engine.check``,
        as ``hermes.engine.load`` passes it); without it the same check runs here."""
        self.program = program
        self.helpers = helpers
        self.budget = budget
        self._interp: Interpreter | None = None
        #: the native code (None when the program is too large to compile and is interpreted)
        self.compiled: Compiled | None = None
        if _prepared is None:
            self.info: VerifierInfo = checked or verify(program, helpers)
            starts = codegen.leaders(program, self.info)
            self.tier = tier
            if tier == "auto":
                self.tier = auto_tier(len(program), len(starts))
                if self.tier == "interp":
                    # bounded load time: the interpreter builds in time linear in the program
                    self._interp = Interpreter(program, helpers=helpers, budget=budget,
                                               checked=self.info)
                    return
            self.compiled = compile_program(program, self.info, opt_level, tier)
        else:
            self.info, self.compiled = _prepared
            self.tier = "quick" if tier == "quick" else "full"
            starts = codegen.leaders(program, self.info)
        self._segments = tuple(s for s in program.segments if s.data)
        # Read-only segments are shared by all runs; writable ones are copied per run.
        self._ro = {i: ctypes.create_string_buffer(bytes(s.data), len(s.data))
                    for i, s in enumerate(self._segments) if not s.writable}
        n = len(program.insns)
        # instructions still to count in a block after slot pc (StopRun counts the whole block)
        self._rest: dict[int, int] = {}
        for s, e in zip(starts, starts[1:] + [n], strict=True):
            slots = [i for i in range(s, e) if program.insns[i] is not None]
            for k, i in enumerate(slots):
                self._rest[i] = len(slots) - k - 1

    @classmethod
    def load_many(cls, programs: list[Program], *, helpers: HelperRegistry, budget: int,
                  opt_level: int = DEFAULT_OPT_LEVEL, tier: str = "auto"
                  ) -> list[JitExecutable | VerifierError]:
        """Verify and compile many programs in one LLVM module (amortises LLVM's fixed cost).

        Programs the verifier rejects come back as their ``VerifierError`` instead. ``tier``
        picks the compilation tier (``runtime.TIERS``; "auto" compiles a module at full
        optimisation).
        """
        out: list = [None] * len(programs)
        todo = []
        for k, program in enumerate(programs):
            try:  # the load contract, as for one program
                todo.append((k, program, verify(program, helpers)))
            except VerifierError as exc:
                out[k] = exc
        compiled = compile_many([(p, i) for _, p, i in todo], opt_level, tier)
        for (k, program, info), comp in zip(todo, compiled, strict=True):
            out[k] = cls(program, helpers=helpers, budget=budget, _prepared=(info, comp))
        return out

    def wait_final(self, timeout: float | None = None) -> bool:
        """Wait until the fully optimised code is in place (large programs are first compiled
        quickly and recompiled in the background); True when it is."""
        return self.compiled is None or self.compiled.wait_final(timeout)

    def run(self, memory: bytearray | memoryview | bytes | None = None,
            budget: int | None = None, *, cancel: Cancel | None = None,
            length: int | None = None, args: tuple[int, ...] = ()) -> RunResult:
        """Run once; see ``hermes.engine.run``."""
        if self._interp is not None:
            return self._interp.run(memory, budget, cancel=cancel, length=length, args=args)
        assert self.compiled is not None  # only the interpreted tier has no native code
        budget = self.budget if budget is None else budget
        data, r1, r2 = input_region(memory, length)
        r3, r4, r5 = run_args(args)
        dlen = len(data)
        if dlen:
            host = (ctypes.c_char * dlen).from_buffer(data)
            data_addr = ctypes.addressof(host)
        else:
            host = None
            data_addr = 0
        stack = (ctypes.c_char * STACK_BYTES)()
        segbufs = []
        seg_addrs = (ctypes.c_uint64 * max(1, len(self._segments)))()
        for i, seg in enumerate(self._segments):
            buf = self._ro.get(i)
            if buf is None:
                buf = ctypes.create_string_buffer(bytes(seg.data), len(seg.data))
            segbufs.append((seg, buf))
            seg_addrs[i] = ctypes.addressof(buf)
        ctx = Ctx()
        ctx.data = data_addr
        ctx.dlen = dlen
        ctx.stack = ctypes.addressof(stack)
        ctx.budget = max(0, min(budget, (1 << 63) - 1))
        ctx.r1, ctx.r2, ctx.r3, ctx.r4, ctx.r5 = r1, r2, r3, r4, r5
        ctx.helper = _HELPER_ADDRESS
        ctx.segs = ctypes.addressof(seg_addrs)
        key = ctypes.addressof(ctx)
        state = _Run(self, data, dlen, stack, segbufs, ctx, cancel)
        # The native code reads the budget at every block and loop chunk: a zero budget stops it
        # at the next one, and the budget error it records is reported as the cancellation.
        watch = 0 if cancel is None else cancel.watch(lambda: setattr(ctx, "budget", 0))
        with _runs_lock:
            _runs[key] = state
        started = time.perf_counter_ns()
        try:
            r0 = self.compiled.entry(ctypes.byref(ctx))
        finally:
            elapsed = time.perf_counter_ns() - started
            with _runs_lock:
                del _runs[key]
            if cancel is not None:
                cancel.unwatch(watch)
            del host  # release the buffer export so the caller may resize its bytearray
            state.data = None
        kind = ctx.err_kind
        if kind == codegen.ERR_BUDGET and cancel is not None and cancel.is_set():
            raise state.state.stamp(Cancelled("cancelled", "run cancelled", ctx.err_pc,
                                              instructions=ctx.err_count))
        if kind in (codegen.ERR_NONE, codegen.ERR_STOP):
            if kind == codegen.ERR_NONE:
                r0, count = r0 & MASK64, ctx.count
            else:
                r0, count = ctx.stop_value, ctx.err_count + self._rest[ctx.err_pc]
            rs = state.state
            return RunResult(r0, data, count, rs.output_length, bytes(rs.trace), rs.trace_dropped,
                             elapsed)
        raise state.state.stamp(self._error(ctx, state, budget))

    def _error(self, ctx: Ctx, state: _Run, budget: int) -> ExecutionError:
        kind, pc, count = ctx.err_kind, ctx.err_pc, ctx.err_count
        if kind == codegen.ERR_HELPER:
            exc = state.error
            if isinstance(exc, ExecutionError):
                if exc.instructions is None:
                    exc.instructions = count
                return exc
            return ExecutionError("helper", f"helper failed: {exc!r}", pc, instructions=count)
        if kind == codegen.ERR_DEPTH:
            return ExecutionError("call_depth", f"call depth limit of {MAX_CALL_DEPTH} frames "
                                  "exceeded", pc, instructions=count)
        if kind == codegen.ERR_BUDGET:
            return BudgetExceeded("budget", f"instruction budget of {budget} exhausted", pc,
                                  instructions=count)
        return out_of_bounds(pc, ctx.err_addr, ctx.err_size, kind != codegen.ERR_LOAD,
                             state.dlen, self.program.segments, ctx.err_depth,
                             instructions=count)

"""The LLVM JIT engine: verified eBPF compiled to native code, with the interpreter's semantics."""
from __future__ import annotations

import ctypes
import functools
import threading
import time
import weakref
from collections.abc import Callable

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
    Segment,
    input_region,
    out_of_bounds,
    run_args,
)
from ..program import Program
from ..result import RunResult
from ..verifier import VerifierInfo, verify
from . import codegen, runtime
from .runtime import (
    ENTRY_CFUNC,
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

# Run states by the address of their context: how the shared helper callback finds its run. A
# state registers once, when it is built, and its weak reference's callback removes it before
# the context's memory is freed (so an address is never found for the wrong state). Plain dict
# operations: the callback may fire inside any allocation, even one made under a lock.
_runs: dict[int, weakref.ref[_Run]] = {}

_BUDGET_MAX = (1 << 63) - 1
_ZERO_STACK = bytes(STACK_BYTES)
#: What a run that called no helper recorded (only ever read).
_NOTHING_RECORDED = RunState()
_now = time.perf_counter_ns


def _forget(key: int, ref: weakref.ref) -> None:
    if _runs.get(key) is ref:
        del _runs[key]


class _Run:
    """The native state of one run at a time, built once and reused by the executable's runs.

    It holds the context, the stack, the segment table (read-only segments shared by all runs,
    writable ones copied per state and restored before each run of a program that can write)
    and, during a run, the data window and the helper context.
    """

    def __init__(self, exe: JitExecutable):
        self.helpers = exe.helpers
        self.segments = exe.program.segments
        self.ctx = Ctx()
        self.addr = ctypes.addressof(self.ctx)
        self.stack = (ctypes.c_char * STACK_BYTES)()
        self.stack_at = ctypes.addressof(self.stack)
        self.stack_view = memoryview(self.stack).cast("B")
        self.segbufs: list[tuple[Segment, ctypes.Array]] = []
        #: writable segments: (this state's copy, the program's bytes)
        self.rw: list[tuple[memoryview, bytes]] = []
        self.seg_addrs = (ctypes.c_uint64 * max(1, len(exe._segments)))()
        for i, seg in enumerate(exe._segments):
            buf = exe._ro.get(i)
            if buf is None:
                buf = ctypes.create_string_buffer(bytes(seg.data), len(seg.data))
                self.rw.append((memoryview(buf).cast("B"), seg.data))
            self.segbufs.append((seg, buf))
            self.seg_addrs[i] = ctypes.addressof(buf)
        self.ctx.stack = self.stack_at
        self.ctx.helper = _HELPER_ADDRESS
        self.ctx.segs = ctypes.addressof(self.seg_addrs)
        self.data: bytearray | memoryview | None = None
        self.dlen = 0
        self.cancel: Cancel | None = None
        # the cancellation hook and the end of a run: a late hook never stops the next run
        self.lock = threading.Lock()
        self.depth = 0
        self.pc = 0
        self.error: BaseException | None = None
        #: the helpers' view of the current run and what they recorded (made at the first call)
        self.hctx: HelperContext | None = None
        self.rs: RunState | None = None
        _runs[self.addr] = weakref.ref(self, functools.partial(_forget, self.addr))

    def stop(self) -> None:
        """Cancellation hook: zero the budget if the run in progress has its flag set (a hook
        of an earlier run's flag, called late, finds this run's flag unset or none)."""
        with self.lock:
            cancel = self.cancel
            if cancel is not None and cancel.is_set():
                # the native code reads the budget at every block and loop chunk
                self.ctx.budget = 0

    def helper_context(self) -> HelperContext:
        """The helpers' view of the current run, made at its first helper call."""
        hctx = self.hctx
        if hctx is None:
            self.rs = RunState(self.dlen)
            hctx = self.hctx = HelperContext(self._read, self._write, self._view, self.rs)
        return hctx

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
        raise out_of_bounds(self.pc, addr, size, write, self.dlen, self.segments, self.depth)

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
    ref = _runs.get(ctx_addr)
    run = ref() if ref is not None else None
    if run is None:  # pragma: no cover - a context is registered while its state lives
        return 0
    pc = pcd & 0xFFFF_FFFF
    hctx = run.helper_context()
    run.pc = hctx.pc = pc
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
        helper = run.helpers.get(hid)
        if helper is None:
            raise ExecutionError("helper", f"call to unknown helper id {hid}", pc)
        try:
            return helper.fn(hctx, a, b, c, d, e) & MASK64
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


# -- the call into native code -------------------------------------------------------------------
#
# A ctypes call costs more than everything else a run does together (argument conversion, a
# libffi call frame, the result's conversion). So runs enter the native code through a small
# native function of the CPython calling convention, compiled once per process by LLVM: Python
# calls it like any builtin. It writes the run's slots of the context, pins the data window (a
# buffer export, as ``ctypes.from_buffer`` does), releases the GIL around the program, and
# returns (r0, count, error kind). ``_ctypes_call`` does the same through ctypes wherever the
# native function cannot be built.

#: ``budget`` argument meaning "the caller has set the budget slot itself" (a budget is at most
#: 2^63 - 1): a cancellable run sets it before its cancellation hook may zero it.
_KEEP_BUDGET = MASK64
_PYBUF_WRITABLE = 1
_METH_FASTCALL = 0x0080
#: C functions the native call uses: name -> (return type, argument types)
_CAPI = {
    "PyLong_AsUnsignedLongLong": ("i64", "ptr"),
    "PyObject_GetBuffer": ("i32", "ptr, ptr, i32"),
    "PyBuffer_Release": ("void", "ptr"),
    "PyEval_SaveThread": ("ptr", ""),
    "PyEval_RestoreThread": ("void", "ptr"),
    "PyTuple_New": ("ptr", "i64"),
    "PyTuple_SetItem": ("i32", "ptr, i64, ptr"),
    "PyLong_FromUnsignedLongLong": ("ptr", "i64"),
    "Py_DecRef": ("void", "ptr"),
}
#: the run's arguments after the context, entry, data object and its address
_CALL_ARGS = ("dlen", "budget", "r1", "r2", "r3", "r4", "r5")


def _call_ir(triple: str, layout: str) -> str:
    """IR of ``hermes_call(self, args, nargs)``: METH_FASTCALL with args (ctx address, entry
    address, data buffer or None, data address, dlen, budget, r1..r5), all ints but the third."""
    fns = {name: ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
           for name in _CAPI}
    lines = [f'target triple = "{triple}"', f'target datalayout = "{layout}"',
             "define ptr @hermes_call(ptr %self, ptr %args, i64 %nargs) {", "entry:",
             "  %view = alloca [16 x i64], align 8"]
    for name, addr in fns.items():
        lines.append(f"  %{name} = inttoptr i64 {addr} to ptr")

    def arg(k: int, name: str) -> None:
        lines.extend([f"  %{name}_pp = getelementptr ptr, ptr %args, i64 {k}",
                      f"  %{name}_o = load ptr, ptr %{name}_pp"])

    def word(k: int, name: str) -> None:
        arg(k, name)
        lines.append(f"  %{name} = call i64 %PyLong_AsUnsignedLongLong(ptr %{name}_o)")

    def store(slot: int, value: str) -> None:
        lines.extend([f"  %s{slot} = getelementptr i64, ptr %ctx, i64 {slot}",
                      f"  store i64 {value}, ptr %s{slot}"])

    word(0, "ctx_i")
    lines.append("  %ctx = inttoptr i64 %ctx_i to ptr")
    word(1, "fn_i")
    lines.append("  %fn = inttoptr i64 %fn_i to ptr")
    arg(2, "data")
    word(3, "data_i")
    for k, name in enumerate(_CALL_ARGS, 4):
        word(k, name)
    none = id(None)
    lines += [f"  %pin = icmp ne ptr %data_o, inttoptr (i64 {none} to ptr)",
              "  br i1 %pin, label %export, label %set",
              "export:",
              "  %rc = call i32 %PyObject_GetBuffer(ptr %data_o, ptr %view, "
              f"i32 {_PYBUF_WRITABLE})",
              "  %failed = icmp slt i32 %rc, 0",
              "  br i1 %failed, label %fail, label %pinned",
              "pinned:",
              "  %buf = load i64, ptr %view",
              "  br label %set",
              "set:",
              "  %addr = phi i64 [%buf, %pinned], [%data_i, %entry]"]
    store(codegen.CTX_DATA, "%addr")
    store(codegen.CTX_DLEN, "%dlen")
    for slot, name in ((codegen.CTX_R1, "r1"), (codegen.CTX_R2, "r2"), (codegen.CTX_R3, "r3"),
                       (codegen.CTX_R4, "r4"), (codegen.CTX_R5, "r5")):
        store(slot, f"%{name}")
    lines += [f"  %keep = icmp eq i64 %budget, {_KEEP_BUDGET}",
              "  br i1 %keep, label %run, label %budget_set",
              "budget_set:"]
    store(codegen.CTX_BUDGET, "%budget")
    lines += ["  br label %run",
              "run:",
              "  %ts = call ptr %PyEval_SaveThread()",
              "  %r0 = call i64 %fn(ptr %ctx)",
              "  call void %PyEval_RestoreThread(ptr %ts)",
              "  br i1 %pin, label %release, label %out",
              "release:",
              "  call void %PyBuffer_Release(ptr %view)",
              "  br label %out",
              "out:",
              f"  %kp = getelementptr i64, ptr %ctx, i64 {codegen.CTX_ERR_KIND}",
              "  %kind = load i64, ptr %kp",
              f"  %cp = getelementptr i64, ptr %ctx, i64 {codegen.CTX_COUNT}",
              "  %count = load i64, ptr %cp",
              "  %t = call ptr %PyTuple_New(i64 3)",
              "  %o0 = call ptr %PyLong_FromUnsignedLongLong(i64 %r0)",
              "  %o1 = call ptr %PyLong_FromUnsignedLongLong(i64 %count)",
              "  %o2 = call ptr %PyLong_FromUnsignedLongLong(i64 %kind)"]
    for k, v in enumerate(("t", "o0", "o1", "o2")):
        lines.append(f"  %n{k} = icmp eq ptr %{v}, null")
    lines += ["  %n01 = or i1 %n0, %n1", "  %n23 = or i1 %n2, %n3", "  %nomem = or i1 %n01, %n23",
              "  br i1 %nomem, label %oom, label %pack",
              "oom:"]  # Py_DecRef is Py_XDECREF: it accepts the NULLs
    lines += [f"  call void %Py_DecRef(ptr %{v})" for v in ("t", "o0", "o1", "o2")]
    lines += ["  ret ptr null",
              "pack:"]
    lines += [f"  %si{k} = call i32 %PyTuple_SetItem(ptr %t, i64 {k}, ptr %o{k})" for k in range(3)]
    lines += ["  ret ptr %t",
              "fail:",
              "  ret ptr null",
              "}"]
    return "\n".join(lines) + "\n"


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


def _build_native_call() -> Callable[..., tuple[int, int, int]]:
    """Compile ``hermes_call`` and wrap it as a builtin function (kept for the process)."""
    st = runtime._llvm()
    llvm = st["llvm"]
    with runtime._llvm_lock:
        mod = llvm.parse_assembly(_call_ir(st["triple"], st["layout"]))
        mod.verify()  # invalid IR makes LLVM's back end abort the process
        engine = runtime._engine(st, 3)
        engine.add_module(mod)
        engine.finalize_object()
        address = engine.get_function_address("hermes_call")
    if not address:  # pragma: no cover - MCJIT always resolves a defined function
        raise RuntimeError("LLVM did not produce hermes_call")
    method = _MethodDef(b"hermes_call", address, _METH_FASTCALL, None)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    fn = new(ctypes.addressof(method), None, None)
    _native_keep.extend((engine, method))  # the code and its method table live as long as fn
    return fn


def _ctypes_call(ctx_addr: int, fn_addr: int, data: bytearray | memoryview | None,
                 data_addr: int, dlen: int, budget: int, r1: int, r2: int, r3: int, r4: int,
                 r5: int) -> tuple[int, int, int]:
    """What ``hermes_call`` does, through ctypes (slower; same arguments and result)."""
    ctx = Ctx.from_address(ctx_addr)
    host = ctypes.c_char.from_buffer(data) if data is not None else None
    ctx.data = ctypes.addressof(host) if host is not None else data_addr
    ctx.dlen = dlen
    ctx.r1, ctx.r2, ctx.r3, ctx.r4, ctx.r5 = r1, r2, r3, r4, r5
    if budget != _KEEP_BUDGET:
        ctx.budget = budget
    try:
        r0 = ENTRY_CFUNC(fn_addr)(ctypes.byref(ctx))
    finally:
        del host
    return r0, ctx.count, ctx.err_kind


def _first_call(*args: object) -> tuple[int, int, int]:
    """``_call`` until the first executable with native code picks the real one."""
    raise AssertionError("no JitExecutable was built")  # pragma: no cover


_call: Callable[..., tuple[int, int, int]] = _first_call
_native_keep: list = []
_native_lock = threading.Lock()
_native: list[Callable[..., tuple[int, int, int]]] = []


def _call_function() -> Callable[..., tuple[int, int, int]]:
    """The process's way into native code: ``hermes_call``, or ``_ctypes_call`` without it."""
    with _native_lock:
        if not _native:
            try:
                _native.append(_build_native_call())
            except Exception:  # noqa: BLE001 - any failure leaves the (slower) ctypes path
                _native.append(_ctypes_call)
        return _native[0]


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
        self._opt_level, self._tier = opt_level, tier
        #: the memoryless module's entry (kept alive here) and its address, once a run needed it
        self._nomem: tuple[object, int] | None = None
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
        # Only a program that stores or calls a helper can change its stack or writable
        # segments; the others' runs need not clean them (each run starts as if all were new).
        self._writes = any(i is not None and (i.op.is_store or i.op.is_atomic or i.op.is_call)
                           for i in program.insns)
        # Run states not in use: a run takes one (or builds one) and gives it back, so each
        # serves one run at a time, whichever thread (or nested helper call) it runs in.
        self._free: list[_Run] = []
        #: the entry point last seen and its address (the entry changes once, at an upgrade)
        self._entry: tuple[object, int | None] = (None, 0)
        global _call
        if _call is _first_call:
            _call = _call_function()

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
        if memory is None and length is None:
            data: bytearray | memoryview = bytearray()  # input_region's empty window
            r1 = r2 = 0
        else:
            data, r1, r2 = input_region(memory, length)
        r3, r4, r5 = (0, 0, 0) if args == () else run_args(args)
        try:
            st = self._free.pop()
        except IndexError:
            st = _Run(self)
        host = None
        try:
            dlen = len(data)
            if type(budget) is int and 0 <= budget <= _BUDGET_MAX:
                limit = budget
            else:  # the same conversion (and error) as an assignment to the field
                st.ctx.budget = max(0, min(budget, _BUDGET_MAX))
                limit = st.ctx.budget
            if not dlen:
                pin, data_addr = None, 0
            elif type(data) is bytearray or type(data) is memoryview:
                pin, data_addr = data, 0  # the native call pins it (input_region checked it)
            else:  # other buffers as ctypes takes them (and with its errors)
                host = ctypes.c_char.from_buffer(data)
                pin, data_addr = None, ctypes.addressof(host)
            if self._writes:
                st.stack_view[:] = _ZERO_STACK
                for copy, pristine in st.rw:
                    copy[:] = pristine
            st.data = data
            st.dlen = dlen
            if cancel is not None:
                st.cancel = cancel
                st.ctx.budget = limit
                limit = _KEEP_BUDGET
                # A zero budget stops the native code at its next block or loop chunk, and the
                # budget error it records is reported as the cancellation.
                watch = cancel.watch(st.stop)
            fn = self.compiled.entry  # read once: the code it belongs to lives while fn does
            entry = self._entry
            if entry[0] is not fn:
                entry = self._entry = (fn, ctypes.cast(fn, ctypes.c_void_p).value)  # type: ignore[arg-type]
            started = _now()
            try:
                r0, count, kind = _call(st.addr, entry[1], pin, data_addr, dlen, limit,
                                        r1, r2, r3, r4, r5)
                if kind == codegen.ERR_MEMORYLESS:  # nothing ran: run the memoryless module
                    st.ctx.err_kind = codegen.ERR_NONE
                    r0, count, kind = _call(st.addr, self._memoryless(), pin, data_addr, dlen,
                                            limit, r1, r2, r3, r4, r5)
            finally:
                elapsed = _now() - started
                host = None  # end the buffer export so the caller may resize its bytearray
                if cancel is not None:
                    cancel.unwatch(watch)
                    with st.lock:
                        st.cancel = None
            if kind == codegen.ERR_NONE:
                rs = st.rs
                if rs is None:
                    return RunResult(r0, data, count, None, b"", 0, elapsed)
                return RunResult(r0, data, count, rs.output_length, bytes(rs.trace),
                                 rs.trace_dropped, elapsed)
            return self._finish(st, kind, data, elapsed, budget, cancel)
        finally:
            st.data = None
            if st.hctx is not None:
                st.hctx = st.rs = None
                st.error = None
            self._free.append(st)

    def _memoryless(self) -> int:
        """The address of the entry for runs without a data slot (``codegen.ModuleGen.main_fn``),
        compiled by the first run that needs it."""
        if self._nomem is None:
            compiled = compile_many([(self.program, self.info)], self._opt_level, self._tier,
                                    memoryless=True)[0]
            self._nomem = (compiled.entry, compiled.address)
        return self._nomem[1]

    def _finish(self, st: _Run, kind: int, data: bytearray | memoryview, elapsed: int,
                budget: int, cancel: Cancel | None) -> RunResult:
        """The result or error of a run that stopped early (error kind ``kind``)."""
        ctx = st.ctx
        rs = st.rs or _NOTHING_RECORDED
        try:
            if kind == codegen.ERR_BUDGET and cancel is not None and cancel.is_set():
                raise rs.stamp(Cancelled("cancelled", "run cancelled", ctx.err_pc,
                                         instructions=ctx.err_count))
            if kind == codegen.ERR_STOP:
                return RunResult(ctx.stop_value, data, ctx.err_count + self._rest[ctx.err_pc],
                                 rs.output_length, bytes(rs.trace), rs.trace_dropped, elapsed)
            raise rs.stamp(self._error(ctx, st, budget))
        finally:
            ctx.err_kind = codegen.ERR_NONE  # the native code reads it after every helper call

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

"""LLVM compilation (MCJIT, process-wide cache) and the per-run context the native code uses."""
from __future__ import annotations

import atexit
import ctypes
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import UsageError
from ..memory import MAX_CALL_DEPTH, STACK_SIZE
from ..program import Program
from ..verifier import VerifierInfo
from . import codegen

U64 = ctypes.c_uint64


class Ctx(ctypes.Structure):
    """The run context passed to the native code (field order = ``codegen.CTX_*`` slots)."""

    _fields_ = [(name, U64) for name in (
        "data", "dlen", "stack", "budget", "r1", "r2", "helper", "segs",
        "err_kind", "err_pc", "err_addr", "err_size", "err_count", "err_depth",
        "count", "stop_value", "r3", "r4", "r5")]


assert len(Ctx._fields_) == codegen.CTX_FIELDS

#: Native helper callback: (ctx, id, r1..r5, pc | depth << 32, count) -> r0.
HELPER_CFUNC = ctypes.CFUNCTYPE(U64, ctypes.c_void_p, U64, U64, U64, U64, U64, U64, U64, U64)
#: Native entry point: (ctx) -> r0.
ENTRY_CFUNC = ctypes.CFUNCTYPE(U64, ctypes.POINTER(Ctx))

STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH

_llvm_lock = threading.Lock()
_llvm_state: dict[str, object] = {}


def _llvm():
    """Initialise LLVM once and return (binding module, target machine, engine)."""
    with _llvm_lock:
        if not _llvm_state:
            import llvmlite.binding as llvm
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            # LLVM's loop passes may emit 128-bit divisions (exit-value formulas), which the back
            # end lowers to libgcc calls (__udivti3...); MCJIT aborts on a missing symbol.
            import ctypes.util
            libgcc = ctypes.util.find_library("gcc_s") or "libgcc_s.so.1"
            try:
                llvm.load_library_permanently(libgcc)
                has_libgcc = bool(llvm.address_of_symbol("__udivti3"))
            except RuntimeError:
                has_libgcc = False
            target = llvm.Target.from_default_triple()
            if target.triple.startswith("x86_64"):
                # Innermost loops start on a 64-byte line: a small hot loop (a fast loop copy)
                # that straddles two lines runs up to 40% slower (insertion_sort's inner loop
                # at LLVM's default 16-byte alignment), for at most 63 bytes of padding.
                llvm.set_option("hermes", "--x86-experimental-pref-innermost-loop-alignment=6")
            cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
            # Two back ends: full optimisation for ordinary programs, and LLVM's fast instruction
            # selector and register allocator for very large ones. These target machines serve
            # the pass builders; every compiled module gets an engine (and machine) of its own.
            tms = {level: target.create_target_machine(cpu=cpu, features=features, opt=level,
                                                       codemodel="jitdefault")
                   for level in (0, 3)}
            tm = tms[3]
            _llvm_state.update(llvm=llvm, tm=tm, tms=tms, target=target, cpu=cpu,
                               features=features, triple=tm.triple, has_libgcc=has_libgcc,
                               layout=str(tm.target_data))
        return _llvm_state


@dataclass
class Compiled:
    """A compiled program: the native entry point (which keeps its LLVM engine alive).

    Large programs first get quickly compiled code; a background thread then compiles them with
    the full pipeline and swaps ``entry`` (runs already in flight finish on the old code, which
    is freed after them). ``final`` is set once the entry will not change any more.
    """

    #: the native function: (pointer to a ``Ctx``) -> r0
    entry: Callable[..., int]
    address: int
    ir: str
    compile_seconds: float
    #: set when ``entry`` is the final code (at once for programs compiled at full optimisation)
    final: threading.Event = field(default_factory=threading.Event)
    #: seconds the background compilation took (None: there was none, or it has not finished)
    optimise_seconds: float | None = None
    #: of ``compile_seconds``: writing the IR (Python analyses and code generation) and LLVM's
    #: share (parsing, optimising, machine code), per program of the module
    codegen_seconds: float = 0.0
    llvm_seconds: float = 0.0

    def wait_final(self, timeout: float | None = None) -> bool:
        """Block until the final code is in place (or ``timeout``); True when it is."""
        return self.final.wait(timeout)


#: Compiled programs kept for reuse, most recently used last. Older ones are dropped from the
#: cache; their machine code is freed once nothing runs or holds them any more.
CACHE_MAX = 256
_cache: OrderedDict[tuple, Compiled] = OrderedDict()
_cache_lock = threading.Lock()
#: Engines whose last user is gone, closed by the next compilation (under the LLVM lock: a
#: finaliser may run in any thread, at any point, including one in the middle of compiling).
_dead: list[Any] = []


class _Code:
    """One MCJIT engine holding one compiled module; the engine is closed with the last user.

    Every entry point made from it refers to it (``_owner``), so a run in progress keeps the
    code alive even when the program is recompiled or evicted meanwhile.
    """

    def __init__(self, engine) -> None:
        self.engine = engine

    def entry(self, address: int) -> Callable[..., int]:
        """A callable for the native function at ``address`` that keeps this code alive."""
        fn = ENTRY_CFUNC(address)
        fn._owner = self  # type: ignore[attr-defined]
        return fn

    def __del__(self) -> None:
        _dead.append(self.engine)


def _engine(st, level: int):
    """A new MCJIT engine at back-end optimisation ``level`` (it owns its target machine)."""
    llvm = st["llvm"]
    tm = st["target"].create_target_machine(cpu=st["cpu"], features=st["features"], opt=level,
                                            codemodel="jitdefault")
    backing = llvm.parse_assembly("")
    backing.triple = tm.triple
    backing.data_layout = str(tm.target_data)
    return llvm.create_mcjit_compiler(backing, tm)


def _close_dead() -> None:
    """Close the engines no one uses any more (caller holds ``_llvm_lock``)."""
    while _dead:
        _dead.pop().close()


def _cached(key: tuple) -> Compiled | None:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
        return hit


def _remember(key: tuple, compiled: Compiled) -> Compiled:
    """Cache ``compiled`` under ``key`` (an earlier entry wins); returns the cached one."""
    with _cache_lock:
        kept = _cache.setdefault(key, compiled)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_MAX:
            _cache.popitem(last=False)
        return kept


#: Compilation tiers: "quick" (SROA, SimplifyCFG for programs with few blocks, LLVM's fast back
#: end), "full" (the O3 pipeline and back end), "auto" (chosen by ``auto_tier``).
TIERS = ("auto", "quick", "full")
#: Programs with more slots than this get the light pipeline first (compile time stays bounded).
LARGE_PROGRAM = 160
#: ... and, up to this many slots and UPGRADE_MAX_BLOCKS blocks, the full pipeline in the
#: background afterwards (O3 is super-linear in the blocks of dense control flow, and it holds
#: the LLVM lock that every other compilation waits for).
UPGRADE_MAX = 2048
UPGRADE_MAX_BLOCKS = 512
#: The quick tier runs SimplifyCFG only on programs with at most this many blocks: after SROA it
#: is super-linear in the blocks of dense control flow (a minute for 10,000 conditional jumps).
QUICK_CFG_MAX_BLOCKS = 1024
#: "auto" runs programs with more slots or blocks than these on the interpreter (which builds in
#: time linear in the program): compile time is bounded before any is spent (specs/jit.md). No
#: tier compiles a larger program: ``compile_many`` refuses it (LLVM would need minutes).
JIT_MAX_SLOTS = 8192
JIT_MAX_BLOCKS = 4096


def check_compile_size(program: Program, blocks: int, tier: str) -> None:
    """Refuse, with ``UsageError``, to compile ``program`` (of ``blocks`` basic blocks) on JIT tier
    ``tier`` when it has more than ``JIT_MAX_SLOTS`` slots or ``JIT_MAX_BLOCKS`` blocks."""
    if len(program) > JIT_MAX_SLOTS or blocks > JIT_MAX_BLOCKS:
        label = f" {program.name!r}" if program.name else ""
        raise UsageError(
            f"program{label} is too large to compile on JIT tier {tier!r}: {len(program)} slots "
            f"and {blocks} basic blocks, the limit is {JIT_MAX_SLOTS} slots and "
            f"{JIT_MAX_BLOCKS} blocks (tier 'auto' runs larger programs on the interpreter)")


def auto_tier(slots: int, blocks: int) -> str:
    """The tier "auto" picks for a program of ``slots`` slots and ``blocks`` basic blocks:
    "full" (small programs), "upgrade" (quick now, full in the background), "quick", "interp"."""
    if slots > JIT_MAX_SLOTS or blocks > JIT_MAX_BLOCKS:
        return "interp"
    if slots <= LARGE_PROGRAM:
        return "full"
    if slots <= UPGRADE_MAX and blocks <= UPGRADE_MAX_BLOCKS:
        return "upgrade"
    return "quick"


def _optimise(st, mod, opt_level: int, light: bool, blocks: int = 0) -> None:
    # Fresh pass builder and pass manager every time: running one module pass manager twice
    # aborts the process inside llvmlite, and each run registers callbacks in its builder.
    llvm = st["llvm"]
    pto = llvm.create_pipeline_tuning_options(speed_level=max(1, opt_level))
    pb = llvm.create_pass_builder(st["tms"][0 if light else 3], pto)
    if light:
        # registers to SSA, then the cheap cleanups that matter most for eBPF-shaped code
        # (instcombine would double the optimisation time for little gain on large programs)
        mpm = llvm.create_new_module_pass_manager()
        mpm.add_sroa_pass()
        if blocks <= QUICK_CFG_MAX_BLOCKS:
            mpm.add_simplify_cfg_pass()
    else:
        mpm = pb.getModulePassManager()
    mpm.run(mod, pb)


def _needs_libgcc(text: str) -> bool:
    return any(f"{op} i128" in text for op in ("udiv", "urem", "sdiv", "srem"))


def compile_many(items: list[tuple[Program, VerifierInfo]], opt_level: int = 3,
                 tier: str = "auto", memoryless: bool = False) -> list[Compiled]:
    """Compile several verified programs ((program, info) pairs) in one LLVM module.

    One module amortises LLVM's fixed costs (used by the differential fuzzer); results are cached
    per program like ``compile_program``'s. ``tier`` is one of ``TIERS``. ``memoryless``
    compiles the programs' modules for runs without a data slot (``codegen.ModuleGen.main_fn``),
    on the quick tier when ``tier`` is "quick", else on the full one.
    """
    if tier not in TIERS:
        raise UsageError(f"unknown JIT tier {tier!r}; choose one of {', '.join(TIERS)}")
    if memoryless:
        tier = "quick" if tier == "quick" else "full"
    import time
    st = _llvm()
    llvm = st["llvm"]
    out: list[Compiled | None] = [None] * len(items)
    todo: list[tuple[int, Program, VerifierInfo]] = []
    seen: dict[tuple, int] = {}
    variant = (tier, "memoryless") if memoryless else tier
    for k, (program, info) in enumerate(items):
        key = (program.digest, opt_level, variant)
        hit = _cached(key)
        if hit is not None:
            out[k] = hit
        elif key not in seen:
            seen[key] = k
            todo.append((k, program, info))
    if todo:
        t0 = time.perf_counter()
        names = {k: f"hermes_{program.digest[:24]}_o{opt_level}{'m' if memoryless else ''}"
                 for k, program, _ in todo}
        # the passes that are super-linear are so in the blocks of one function's control flow
        sizes = [len(codegen.leaders(p, i)) for _, p, i in todo]
        for (_, program, _info), n in zip(todo, sizes, strict=True):
            check_compile_size(program, n, tier)
        blocks = max(sizes)
        choice = auto_tier(sum(len(p) for _, p, _i in todo), blocks) \
            if tier == "auto" and len(todo) == 1 and opt_level <= 3 else "full"
        light = tier == "quick" or (tier == "auto" and choice in ("upgrade", "quick", "interp"))
        ir = codegen.generate_module([(p, i, names[k]) for k, p, i in todo], st["triple"],
                                     st["layout"], memoryless)
        t1 = time.perf_counter()
        with _llvm_lock:
            _close_dead()
            mod = llvm.parse_assembly(ir)
            # Invalid IR makes LLVM's back end abort the process: verify first, always.
            mod.verify()
            if opt_level > 0:
                _optimise(st, mod, opt_level, light, blocks)
                if not st["has_libgcc"] and _needs_libgcc(str(mod)):
                    mod = llvm.parse_assembly(ir)  # unoptimised code needs no runtime library
            engine = _engine(st, 0 if (light or opt_level == 0) else 3)
            engine.add_module(mod)
            engine.finalize_object()
            code = _Code(engine)
            t2 = time.perf_counter()
            addrs = {k: engine.get_function_address(names[k]) for k, _, _ in todo}
        for k, program, info in todo:
            addr = addrs[k]
            if not addr:  # pragma: no cover - MCJIT always resolves a defined function
                raise RuntimeError(f"LLVM did not produce {names[k]}")
            compiled = Compiled(code.entry(addr), addr, ir if len(todo) == 1 else "",
                                (t2 - t0) / len(todo), codegen_seconds=(t1 - t0) / len(todo),
                                llvm_seconds=(t2 - t1) / len(todo))
            if tier == "auto" and choice == "upgrade":
                _upgrades.submit(compiled, program, info, opt_level)
            else:
                compiled.final.set()
            out[k] = _remember((program.digest, opt_level, variant), compiled)
    for k, (program, _) in enumerate(items):
        if out[k] is None:  # a repeat of a program compiled in this call
            out[k] = out[seen[(program.digest, opt_level, variant)]]
    # every slot is filled now: compiled here, cached, or a repeat of one compiled here
    return [c for c in out if c is not None]


class _Upgrader:
    """One background thread that recompiles light-compiled programs with the full pipeline.

    One thread (not one per program) keeps LLVM's work to a single core, and the lock it takes
    per compilation lets foreground compilations interleave with a queue of upgrades.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._current: Compiled | None = None

    def submit(self, compiled: Compiled, program: Program, info: VerifierInfo,
               opt_level: int) -> None:
        """Queue ``compiled`` for recompilation; starts the thread on first use."""
        with self._lock:
            if self._stopping:
                compiled.final.set()
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="hermes-jit-upgrade",
                                                daemon=True)
                self._thread.start()
        self._queue.put((compiled, program, info, opt_level))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            compiled, program, info, opt_level = job
            self._current = compiled
            try:
                if not self._stopping:
                    _upgrade(compiled, program, info, opt_level)
            except Exception:  # noqa: BLE001 - the quickly compiled code stays; it is correct
                pass
            finally:
                self._current = None
                compiled.final.set()

    def stop(self) -> None:
        """Finish the compilation in progress and drop the rest (at interpreter exit: LLVM
        must not be mid-compilation while the process tears down)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def reset_after_fork(self) -> None:
        """A forked child has no upgrade thread: its programs keep their first code."""
        pending: list[Compiled | tuple | None] = [self._current]
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._reset()
        for job in pending:
            if job is not None:
                (job if isinstance(job, Compiled) else job[0]).final.set()


_upgrades = _Upgrader()
atexit.register(_upgrades.stop)


def _upgrade(compiled: Compiled, program: Program, info: VerifierInfo, opt_level: int) -> None:
    """Compile ``program`` with the full pipeline and point ``compiled`` at the new code."""
    import time
    st = _llvm()
    llvm = st["llvm"]
    t0 = time.perf_counter()
    name = f"hermes_{program.digest[:24]}_o{opt_level}_full"
    ir = codegen.generate_module([(program, info, name)], st["triple"], st["layout"])
    with _llvm_lock:
        _close_dead()
        mod = llvm.parse_assembly(ir)
        mod.verify()
        _optimise(st, mod, opt_level, False)
        if not st["has_libgcc"] and _needs_libgcc(str(mod)):
            return  # keep the light code rather than call a missing runtime library
        engine = _engine(st, 3)
        engine.add_module(mod)
        engine.finalize_object()
        code = _Code(engine)
        addr = engine.get_function_address(name)
    if addr:
        # one assignment swaps the entry: a run reads ``entry`` once and keeps its code alive
        compiled.entry = code.entry(addr)
        compiled.address = addr
        compiled.optimise_seconds = time.perf_counter() - t0


def _after_fork_in_child() -> None:
    global _llvm_lock
    # the lock may have been held by the parent's upgrade thread, which the child does not have
    _llvm_lock = threading.Lock()
    _upgrades.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def compile_program(program: Program, info: VerifierInfo, opt_level: int = 3,
                    tier: str = "auto") -> Compiled:
    """Compile ``program`` (verified, facts in ``info``) once per process and configuration."""
    hit = _cached((program.digest, opt_level, tier))
    if hit is not None:
        return hit
    return compile_many([(program, info)], opt_level, tier)[0]


def optimised_ir(program: Program, info: VerifierInfo, opt_level: int = 3) -> str:
    """The optimised LLVM IR of ``program`` (for inspection and the docs; not cached)."""
    st = _llvm()
    llvm = st["llvm"]
    ir = codegen.generate(program, info, st["triple"], st["layout"], "hermes_inspect")
    with _llvm_lock:
        mod = llvm.parse_assembly(ir)
        pto = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        pb = llvm.create_pass_builder(st["tm"], pto)
        pb.getModulePassManager().run(mod, pb)
        return str(mod)

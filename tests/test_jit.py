"""LLVM JIT: conformance corpus, semantics and errors as the interpreter's, threads, bench."""
from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings, strategies as st

from hermes.conformance import load_corpus, run_case
from hermes.engine import CONFORMANCE_HELPERS, load
from hermes.engine.asm import assemble_program
from hermes.engine.frontends import read_program
from hermes.engine.helpers import Helper, HelperRegistry, StopRun
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable
from hermes.engine.jit.runtime import compile_program
from hermes.engine.memory import DATA_BASE, RODATA_BASE, RWDATA_BASE, STACK_TOP, Segment
from hermes.engine.program import Program
from hermes.errors import BudgetExceeded, ExecutionError, VerifierError
from tests.volume import examples

from .support.progen import Case, compare, outcome, random_case

BUDGET = 10**9


def asm(text: str, segments=()) -> Program:
    return Program(assemble_program(text).code, segments=tuple(segments))


def both(program: Program, memory=None, budget=None, helpers=CONFORMANCE_HELPERS):
    """Outcome tuples of the interpreter and the JIT on the same input (they must be equal)."""
    case = Case("", memory, budget)
    jit = JitExecutable(program, helpers=helpers, budget=BUDGET)
    ref = Interpreter(program, helpers=helpers, budget=BUDGET)
    return outcome(ref, case), outcome(jit, case)


def same(text: str, memory=None, budget=None, segments=()):
    a, b = both(asm(text, segments), memory, budget)
    assert a == b
    return b


def test_corpus_under_the_jit(conformance_dir):
    failures = []
    cases = load_corpus([conformance_dir])
    for case in cases:
        result = run_case(case, executor="jit")
        if not result.passed:
            failures.append(f"{case.name}: {result.detail}")
    assert not failures, "\n".join(failures)
    assert len(cases) > 250


def test_engine_registry_picks_up_the_jit():
    exe = load(asm("mov r0, 7\nexit"), executor="jit")
    assert isinstance(exe, JitExecutable)
    assert exe.run().return_value == 7


@pytest.mark.parametrize("text", [
    "mov r0, 7\nmov r1, 0\ndiv r0, r1\nexit",
    "mov r0, 7\nmov r1, 0\nmod r0, r1\nexit",
    "lddw r0, 0x1234567887654321\nmov32 r1, 0\nmod32 r0, r1\nexit",
    "lddw r0, 0x8000000000000000\nmov r1, -1\nsdiv r0, r1\nexit",
    "lddw r0, 0x8000000000000000\nmov r1, -1\nsmod r0, r1\nexit",
    "mov32 r0, 0x80000000\nmov r1, -1\nsdiv32 r0, r1\nexit",
    "mov32 r0, 0x80000000\nsmod32 r0, -1\nexit",
    "mov r0, -7\nsdiv r0, 2\nexit",
    "mov r0, -7\nsmod r0, 2\nexit",
    "mov r0, 7\nsmod r0, -2\nexit",
    "mov r0, 1\nmov r1, 65\nlsh r0, r1\nexit",
    "mov r0, 1\nmov r1, 33\nlsh32 r0, r1\nexit",
    "mov r0, -1\nmov r1, 127\nrsh r0, r1\nexit",
    "mov r0, -8\nmov r1, 66\narsh r0, r1\nexit",
    "mov32 r0, -8\nmov r1, 35\narsh32 r0, r1\nexit",
    "lddw r0, 0x0102030405060708\nbe16 r0\nexit",
    "lddw r0, 0x0102030405060708\nbe32 r0\nexit",
    "lddw r0, 0x0102030405060708\nbe64 r0\nexit",
    "lddw r0, 0x0102030405060708\nle16 r0\nexit",
    "lddw r0, 0x0102030405060708\nbswap32 r0\nexit",
    "mov r1, 0x80\nmovsx864 r0, r1\nexit",
    "mov r1, 0x8000\nmovsx1632 r0, r1\nexit",
    "lddw r1, 0x80000000\nmovsx3264 r0, r1\nexit",
    "mov r0, -1\nneg32 r0\nexit",
    "mov32 r0, -1\nadd32 r0, 2\nexit",
    "mov r0, -1\njsgt r0, 0, +1\nmov r0, 9\nexit",
    "mov r0, -1\njgt32 r0, 5, +1\nmov r0, 9\nexit",
    "lddw r0, 0x100000000\njeq32 r0, 0, +1\nmov r0, 9\nexit",
    "mov r0, 6\njset r0, 4, +1\nmov r0, 9\nexit",
    "mov r0, 3\nmov r1, -1\ndiv32 r0, r1\nexit",
])
def test_alu_and_jump_semantics_match_the_interpreter(text):
    same(text)


def test_memory_and_atomics_match():
    mem = bytes(range(32))
    same("ldxdw r0, [r1+8]\nldxsh r2, [r1+30]\nadd r0, r2\nstxw [r1+4], r0\nexit", mem)
    same("mov r2, 5\nstxdw [r10-8], r2\nmov r3, 7\nlock fetch add [r10-8], r3\n"
         "lock xchg32 [r1+4], r3\nmov r0, 5\nmov r4, 99\nlock cmpxchg [r10-8], r4\n"
         "ldxdw r0, [r10-8]\nadd r0, r3\nexit", mem)
    same("mov r0, 1\nmov r2, 3\nlock or [r1+0], r2\nlock fetch xor32 [r1+4], r2\n"
         "lock and [r1+8], r2\nadd r0, r2\nexit", mem)


@pytest.mark.parametrize("text, kind, pc, address, size", [
    ("mov r0, 0\nldxw r0, [r1+30]\nexit", "out_of_bounds", 1, DATA_BASE + 30, 4),
    ("mov r0, 0\nstb [r10+0], 1\nexit", "out_of_bounds", 1, STACK_TOP, 1),
    ("mov r0, 0\nmov r2, r10\nstdw [r2-520], 1\nexit", "out_of_bounds", 2, STACK_TOP - 520, 8),
    ("mov r0, 0\nmov r6, 0\nsub r6, 1\nstb [r6], 0\nexit", "out_of_bounds", 3, 2**64 - 1, 1),
    ("mov r0, 0\nmov r2, 1\nlock add [r1+31], r2\nexit", "out_of_bounds", 2, DATA_BASE + 31, 8),
])
def test_faults_carry_kind_pc_address_size_and_count(text, kind, pc, address, size):
    mem = bytes(32)
    a, b = both(asm(text), mem)
    assert a == b
    _, typ, k, p, addr, sz, count, _, _ = b
    assert (typ, k, p, addr, sz) == ("ExecutionError", kind, pc, address, size)
    assert count == pc + 1


def test_no_memory_means_no_data_region():
    out = same("mov r0, r1\nadd r0, r2\nldxb r3, [r1]\nexit")
    assert out[2] == "out_of_bounds"


def test_segments_read_only_and_writable():
    segs = [Segment(".rodata", RODATA_BASE, b"hello\0", False),
            Segment(".data", RWDATA_BASE, bytes(8), True)]
    out = same(f"lddw r1, {RODATA_BASE:#x}\nldxw r0, [r1+1]\nlddw r2, {RWDATA_BASE:#x}\n"
               "stxdw [r2], r0\nldxdw r0, [r2]\nexit", segments=segs)
    assert out[1] == int.from_bytes(b"ello", "little")
    out = same(f"mov r0, 0\nlddw r1, {RODATA_BASE:#x}\nstb [r1], 1\nexit", segments=segs)
    assert out[2] == "out_of_bounds" and "read-only" in out[7]
    out = same(f"mov r0, 0\nlddw r1, {RODATA_BASE:#x}\nmov r2, 1\nlock add32 [r1], r2\nexit",
               segments=segs)
    assert "read-only" in out[7]
    out = same(f"mov r0, 0\nlddw r1, {RWDATA_BASE:#x}\nldxdw r0, [r1+1]\nexit", segments=segs)
    assert out[2] == "out_of_bounds"
    # writable program data is fresh for every run
    p = asm(f"lddw r1, {RWDATA_BASE:#x}\nldxdw r0, [r1]\nadd r0, 1\nstxdw [r1], r0\nexit",
            segs)
    exe = JitExecutable(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert exe.run().return_value == exe.run().return_value == 1


def test_budget_behaves_exactly_like_the_interpreter():
    text = "mov r0, 0\nmov r1, 10\nloop:\nadd r0, r1\nsub r1, 1\njne r1, 0, loop\nexit"
    total = same(text)[2]
    assert total == 2 + 30 + 1
    assert same(text, budget=total)[0] == "ok"
    for budget in range(0, total):
        out = same(text, budget=budget)
        assert out[1] == "BudgetExceeded"
    with pytest.raises(BudgetExceeded):
        load(asm(text), executor="jit", budget=5).run()


def test_helpers_stop_run_and_failures():
    out = same("mov r1, 0\ncall 5\nmov r0, 2\nexit")
    assert out[:2] == ("ok", 0) and out[2] == 4  # the whole block counts, like the interpreter
    out = same("mov r1, 3\ncall 5\nexit")
    assert out[:3] == ("ok", 3, 3)
    out = same("mov r1, 0\nmov r2, 4\ncall 1\nexit", bytes(2))
    assert out[2] == "out_of_bounds" and out[3] == 2
    out = same("mov r2, 77\ncallx r2\nexit")
    assert out[2] == "helper" and "unknown helper" in out[7]
    out = same("mov r1, 9\nmov r7, 3\ncallx r7\nexit")
    assert out[1] == 3


def test_helper_context_reads_the_callers_frame_and_python_errors_are_wrapped():
    seen = []

    def peek(ctx, a, b, c, d, e):
        seen.append(ctx.read(a, 8))
        if b:
            raise ValueError("boom")
        return 1

    def stop(ctx, a, b, c, d, e):
        raise StopRun(a)

    helpers = HelperRegistry([Helper(9, "peek", peek), Helper(10, "stop", stop)])
    p = asm("mov r1, 0x55\nstxdw [r10-8], r1\nmov r1, r10\nadd r1, -8\nmov r2, 0\ncall 9\n"
            "mov r1, r10\nadd r1, -8\nmov r2, 1\ncall 9\nexit")
    exe = JitExecutable(p, helpers=helpers, budget=BUDGET)
    with pytest.raises(ExecutionError) as info:
        exe.run()
    assert info.value.kind == "helper" and info.value.pc == 9 and "boom" in str(info.value)
    assert seen == [(0x55).to_bytes(8, "little")] * 2
    p = asm("lddw r1, 0x1122334455667788\ncall 10\nexit")
    assert JitExecutable(p, helpers=helpers, budget=BUDGET).run().return_value == \
        0x1122334455667788


def test_local_calls_frames_and_pointers_into_the_callers_frame():
    text = ("mov r6, 3\nstdw [r10-8], 40\nmov r1, r10\nadd r1, -8\ncall local f\n"
            "ldxdw r2, [r10-8]\nadd r0, r2\nadd r0, r6\nexit\n"
            "f:\nstdw [r10-8], 1\nldxdw r0, [r1]\nadd r0, 2\nstxdw [r1], r0\n"
            "mov r6, 100\nmov r1, r10\ncall local g\nexit\n"
            "g:\nmov r0, r1\nexit")
    out = same(text)
    # g returns f's r10 (depth 1 frame); main adds the updated slot (42) and its own r6 (3)
    assert out[:2] == ("ok", (STACK_TOP - 512) + 42 + 3)


def test_memory_input_forms():
    p = asm("stw [r1], 0x01020304\nmov r0, r2\nexit")
    exe = JitExecutable(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    buf = bytearray(8)
    r = exe.run(buf)
    assert r.memory is buf and buf[:4] == b"\x04\x03\x02\x01" and r.return_value == 8
    src = bytes(8)
    r = exe.run(src)
    assert src == bytes(8) and bytes(r.memory[:4]) == b"\x04\x03\x02\x01"
    big = bytearray(16)
    r = exe.run(memoryview(big)[4:12])
    assert big[4:8] == b"\x04\x03\x02\x01" and r.return_value == 8
    buf.extend(b"xx")  # the buffer export ended with the run


def test_threads_share_one_executable():
    p = asm("mov r0, 0\nldxdw r3, [r1]\nloop:\nadd r0, r3\nsub r3, 1\njne r3, 0, loop\n"
            "stxdw [r1+8], r0\nexit")
    exe = JitExecutable(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    errors = []

    def work(n):
        for _ in range(50):
            mem = bytearray(n.to_bytes(8, "little") + bytes(8))
            r = exe.run(mem)
            if r.return_value != n * (n + 1) // 2 or int.from_bytes(mem[8:], "little") != \
                    r.return_value:
                errors.append(n)

    threads = [threading.Thread(target=work, args=(k * 1000 + 1,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_compiled_code_is_cached_per_program():
    p1 = asm("mov r0, 41\nadd r0, 1\nexit")
    p2 = asm("mov r0, 41\nadd r0, 1\nexit")
    a = JitExecutable(p1, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    b = JitExecutable(p2, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert a.compiled is b.compiled
    assert compile_program(p1, a.info) is a.compiled


def test_verifier_runs_before_compilation():
    with pytest.raises(VerifierError):
        JitExecutable(asm("mov r0, r6\nexit"), helpers=CONFORMANCE_HELPERS, budget=BUDGET)


def test_large_program_compiles():
    lines = ["mov r0, 0"]
    for k in range(1500):
        lines += [f"add r0, {k}", f"stxb [r10-{1 + k % 500}], r0", f"ldxb r3, [r10-{1 + k % 500}]",
                  "xor r0, r3"]
    lines.append("exit")
    same("\n".join(lines))


def test_bench_kernels(bench_dir):
    import sys
    sys.path.insert(0, str(bench_dir))
    import reference
    for name in ("sum_bytes", "histogram", "filter_records"):
        mem, r0, after = reference.PROGRAMS[name]()
        p = read_program(bench_dir / "asm" / f"{name}.asm")
        buf = bytearray(mem)
        r = load(p, executor="jit").run(buf)
        assert r.return_value == r0, name
        assert bytes(buf) == bytes(after if after is not None else mem), name


# -- differential testing ---------------------------------------------------------------------
#: Programs per hypothesis example (compiled together in one LLVM module).
BATCH = 50
#: Shards run as separate test items, so pytest-xdist spreads them over the CI's cores.
SHARDS = 4
#: Examples per shard: 4 x 3 x 50 = 600 programs in `./dev test`, 4 x 50 x 50 = 10^4 in
#: `./dev volume`.
EXAMPLES = examples("HERMES_JIT_DIFF_EXAMPLES", 3, 50)


@pytest.mark.parametrize("shard", range(SHARDS))
@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**64 - 1))
def test_differential_random_programs(shard, seed):
    """Random valid programs: r0, memory, counts and errors agree with the interpreter."""
    rng = random.Random(seed * SHARDS + shard)
    cases = [random_case(rng) for _ in range(BATCH)]
    exes = JitExecutable.load_many([c.program() for c in cases], helpers=CONFORMANCE_HELPERS,
                                   budget=BUDGET)
    for case, exe in zip(cases, exes, strict=True):
        assert not isinstance(exe, VerifierError), f"{exe}\n{case.text}"
        diff = compare(case, exe)
        assert diff is None, diff


@pytest.mark.parametrize("step, size, start, trips", [
    (1, 1, 0, 100), (4, 4, 0, 9), (8, 8, 8, 3), (-1, 1, 39, 60), (-4, 4, 36, 20),
    (3, 2, 1, 20), (16, 8, 0, 2), (1, 8, 30, 5),
])
def test_fast_loops_fault_at_the_exact_iteration(step, size, start, trips):
    """The check-free loop copy hands over to the checked copy before any access can fault."""
    sfx = {1: "b", 2: "h", 4: "w", 8: "dw"}[size]
    text = (f"mov r0, 0\nmov r5, r1\nadd r5, {start}\nmov r9, {trips}\nloop:\n"
            f"ldx{sfx} r3, [r5+0]\nadd r0, r3\nstx{sfx} [r5+0], r0\nadd r5, {step}\n"
            "sub r9, 1\njne r9, 0, loop\nexit")
    for budget in (None, 7, 50, 200):
        same(text, bytes(range(40)), budget)


def test_fast_loop_is_generated_for_the_bench_shape():
    from hermes.engine.jit.runtime import optimised_ir
    from hermes.engine.verifier import verify
    p = asm("mov r0, 0\nmov r5, r1\nmov r6, r1\nadd r6, r2\njge r5, r6, +4\n"
            "ldxb r7, [r5]\nadd r0, r7\nadd r5, 1\njlt r5, r6, -4\nexit")
    ir = optimised_ir(p, verify(p, CONFORMANCE_HELPERS))
    assert "vector" in ir  # the check-free copy of the loop is simple enough to vectorise
    same("mov r0, 0\nmov r5, r1\nmov r6, r1\nadd r6, r2\njge r5, r6, +4\n"
         "ldxb r7, [r5]\nadd r0, r7\nadd r5, 1\njlt r5, r6, -4\nexit", bytes(range(200)))


@pytest.mark.parametrize("step, size, end", [(1, 1, 40), (1, 1, 41), (2, 2, 44), (8, 8, 40),
                                             (3, 4, 39), (1, 4, 38), (5, 1, 0)])
def test_counted_loops_match_at_every_budget(step, size, end):
    """Single-block loops ``jlt iv, bound`` skip their compare inside certain iterations."""
    sfx = {1: "b", 2: "h", 4: "w", 8: "dw"}[size]
    text = (f"mov r0, 0\nmov r5, r1\nmov r6, r1\nadd r6, {end}\nloop:\nldx{sfx} r3, [r5+0]\n"
            f"mov r4, r3\nand r4, 15\nlsh r4, 1\nadd r4, r1\nldxb r4, [r4]\nadd r0, r4\n"
            f"add r0, r3\nadd r5, {step}\njlt r5, r6, loop\nexit")
    total = same(text, bytes(range(40)))
    for budget in (1, 5, 9, 17, 40, 100):
        same(text, bytes(range(40)), budget)
    same(text.replace("jlt r5, r6", "jne r5, r6"), bytes(range(40)))
    assert total[0] in ("ok", "error")


def test_multi_block_counted_loop_with_early_exit_and_budgets():
    """A filter-shaped loop: conditional work, a conditional exit, a counted latch."""
    text = ("mov r0, 0\nmov r6, r1\nmov r7, r1\nmov r3, r1\nadd r3, 48\nloop:\n"
            "ldxb r8, [r6+0]\njlt r8, 8, next\njeq r8, 30, out\nstxb [r7+0], r8\nadd r7, 1\n"
            "add r0, 1\nnext:\nadd r6, 2\njlt r6, r3, loop\nout:\nexit")
    mem = bytes((k * 7) % 41 for k in range(40))
    total = same(text, mem)
    for budget in range(1, 120, 7):
        same(text, mem, budget)
    same(text.replace("jeq r8, 30", "jeq r8, 99"), mem)
    assert total[0] in ("ok", "error")


def test_failing_cmpxchg_on_read_only_data_only_reads():
    segs = [Segment(".rodata", RODATA_BASE, bytes(range(1, 17)), False)]
    out = same(f"mov r0, 0\nlddw r7, {RODATA_BASE:#x}\nmov r4, 9\nlock cmpxchg32 [r7+4], r4\n"
               "exit", segments=segs)
    assert out[:2] == ("ok", 0x08070605)
    out = same(f"mov r0, 0x08070605\nlddw r7, {RODATA_BASE:#x}\nmov r4, 9\n"
               "lock cmpxchg32 [r7+4], r4\nexit", segments=segs)
    assert "read-only" in out[7]


@pytest.mark.parametrize("test, start, bound", [
    ("jle r6, r9, out", 36, 0), ("jle r6, r9, out", 36, 20), ("jlt r6, r9, out", 38, 3),
    ("jeq r6, r9, out", 36, 8), ("jle r6, r9, out", 36, -8), ("jgt r9, r6, out", 36, 4),
])
def test_header_exit_tests_on_ivs(test, start, bound):
    """Exit tests in the loop header (insertion-sort shape) are skipped only while certain."""
    text = (f"mov r0, 0\nmov r6, r1\nadd r6, {start}\nmov r9, r1\nadd r9, {bound}\n"
            f"inner:\n{test}\nldxw r8, [r6-4]\njgt r8, 0x80000000, out\nstxw [r6+0], r8\n"
            "add r0, r8\nsub r6, 4\nja inner\nout:\nexit")
    mem = bytes((k * 37) % 256 for k in range(40))
    same(text, mem)
    for budget in (3, 10, 25, 60):
        same(text, mem, budget)


def test_recursion_and_deep_chains_stop_at_the_depth_limit():
    out = same("mov r0, 0\ncall local f\nexit\nf:\ncall local f\nexit")
    assert out[2] == "call_depth" and out[3] == 3
    chain = ["mov r0, 0", "call local f1", "exit"]
    for k in range(1, 12):
        chain += [f"f{k}:", f"stb [r10-1], {k}", f"call local f{k + 1}", "exit"]
    chain += ["f12:", "mov r0, 5", "exit"]
    out = same("\n".join(chain))
    assert out[2] == "call_depth"
    # bounded recursion (a counter in a callee-saved register) runs to completion
    out = same("mov r1, 5\nmov r0, 0\ncall local f\nexit\n"
               "f:\nmov r0, r1\nsub r1, 1\njeq r1, 0, +1\ncall local f\nexit")
    assert out[:2] == ("ok", 1)


def test_void_callee_keeps_the_callers_r0():
    out = same("mov r0, 7\ncall local f\nexit\nf:\nstb [r10-1], 0\nexit")
    assert out[:2] == ("ok", 7)


@pytest.mark.parametrize("n, size", [(10, 64), (56, 64), (57, 64), (100, 64), (1000, 4096),
                                     (5000, 4096)])
def test_bound_on_the_left_loop_matches_interpreter(n, size):
    """clang's `jgt rN, rI` latch (bound first) gets the fast loop; faults stay exact."""
    from hermes.engine import run as _run
    p = assemble_program("""
        ldxdw r2, [r1]
        mov r4, 0
        mov r0, 0
        mov r3, r1
        add r3, 8
    l:  mov r5, r3
        add r5, r4
        ldxb r5, [r5]
        add r0, r5
        add r4, 1
        jgt r2, r4, l
        exit
    """)
    mem = bytearray(size)
    mem[:8] = n.to_bytes(8, "little")
    mem[8:] = bytes((i * 7) & 255 for i in range(size - 8))
    outcome = {}
    for e in ("interp", "jit"):
        try:
            r = _run(p, bytearray(mem), executor=e)
            outcome[e] = ("ok", r.return_value, r.instructions)
        except ExecutionError as x:
            outcome[e] = ("err", x.kind, x.pc, x.address, x.size, x.instructions)
    assert outcome["interp"] == outcome["jit"]


def _loop_plans(program: Program, monkeypatch) -> dict:
    """The loop plans the JIT makes for ``program`` (captured while it generates IR)."""
    from hermes.engine.jit import codegen
    from hermes.engine.jit.runtime import _llvm
    from hermes.engine.verifier import verify
    seen: dict = {}
    real = codegen.plan_loops

    def spy(*args, **kwargs):
        plans = real(*args, **kwargs)
        seen.update(plans)
        return plans

    monkeypatch.setattr(codegen, "plan_loops", spy)
    st = _llvm()
    codegen.generate(program, verify(program, CONFORMANCE_HELPERS), st["triple"], st["layout"],
                     "plans")
    return seen


# clang's shape of a filter loop: entered in its middle (the latch block comes first in address
# order), the output index is a conditional IV scaled by the record size
_ROTATED_FILTER = """
    ldxdw r2, [r1]
    ldxdw r4, [r1+16]
    ldxdw r5, [r1+8]
    mov r3, r1
    add r3, 64
    mov r0, 0
    mov r6, 0
    add r1, 72
    ja body
next:
    add r1, 16
    add r6, 1
    jgt r2, r6, body
    exit
body:
    ldxdw r7, [r1-8]
    jgt r5, r7, next
    jge r7, r4, next
    mov r8, r0
    lsh r8, 4
    mov r9, r3
    add r9, r8
    ldxdw r8, [r1]
    stxdw [r9+8], r8
    stxdw [r9], r7
    add r0, 1
    ja next
"""


def test_rotated_loop_with_scaled_output_index_gets_a_fast_copy(monkeypatch):
    p = assemble_program(_ROTATED_FILTER)
    plans = _loop_plans(p, monkeypatch)
    body = 13  # slot of the label "body"
    assert list(plans) == [body]  # the block entered from outside is the header
    plan = plans[body]
    # all four data accesses are proven per chunk, the stores through 16 * r0 + r3
    assert len(plan.accesses) == 4
    assert {a.terms for a in plan.accesses.values()} == {((1, 1),), ((0, 16), (3, 1))}


@pytest.mark.parametrize("n, records", [(0, 8), (3, 8), (8, 8), (9, 8), (40, 8), (300, 300)])
def test_rotated_filter_loop_matches_the_interpreter(n, records):
    """Results, counts, budgets and the faulting iteration are those of the interpreter."""
    lo, hi = 1 << 20, 3 << 20
    mem = bytearray(72 + 16 * records - 8)
    mem[0:8] = n.to_bytes(8, "little")
    mem[8:16] = lo.to_bytes(8, "little")
    mem[16:24] = hi.to_bytes(8, "little")
    rng = random.Random(n * 1000 + records)
    for k in range(records - 1):
        off = 64 + 16 * k
        mem[off:off + 8] = rng.randrange(4 << 20).to_bytes(8, "little")
        mem[off + 8:off + 16] = rng.getrandbits(64).to_bytes(8, "little")
    for budget in (None, 5, 13, 50, 200, 1000):
        same(_ROTATED_FILTER, bytes(mem), budget)


# clang's histogram loop: the exit tests compare `i - k`, kept in another register, with the
# count and the slot's length
_DERIVED_TESTS = """
    ldxdw r4, [r1]
    add r2, -{bound}
    mov r3, r1
    add r3, 8
    mov r5, {start}
loop:
    mov r0, r1
    add r0, r5
    ldxb r0, [r0]
    lsh r0, 2
    mov r6, r3
    add r6, r0
    ldxw r0, [r6]
    add32 r0, 1
    stxw [r6], r0
    mov r0, r5
    add r0, -{off}
    jge r0, r4, out
    add r5, 1
    jlt r0, r2, loop
out:
    exit
"""


def test_exit_tests_on_an_iv_minus_a_constant_are_recognised(monkeypatch):
    p = assemble_program(_DERIVED_TESTS.format(bound=1100, start=1040, off=1039))
    plans = _loop_plans(p, monkeypatch)
    assert len(plans) == 1
    (plan,) = plans.values()
    assert sorted((iv, offset, cond) for iv, offset, _, cond, *_ in plan.tests.values()) == \
        [(5, -1039, "<"), (5, -1039, "<")]


@pytest.mark.parametrize("n, start, off, size", [
    (0, 1040, 1039, 1300), (5, 1040, 1039, 1300), (200, 1040, 1039, 1300),
    (300, 1040, 1039, 1300), (50, 1040, 2000, 1300), (100, 1040, 0, 1300),
    (1000, 1032, 1031, 4096),
])
def test_loops_with_derived_exit_tests_match_the_interpreter(n, start, off, size):
    """Counts, budgets, the faulting iteration and wrapped `i - k` tests are the interpreter's."""
    text = _DERIVED_TESTS.format(bound=0, start=start, off=off)
    mem = bytearray(size)
    mem[0:8] = n.to_bytes(8, "little")
    mem[1032:] = bytes((i * 37) & 255 for i in range(size - 1032))
    for budget in (None, 9, 100, 2000):
        same(text, bytes(mem), budget)


def test_shared_header_inner_loop_is_versioned_alone(monkeypatch):
    """clang's insertion sort: the outer loop jumps into the inner loop's header, so the only
    back-edge is the inner one; its accesses and its counted exit are proven per chunk."""
    text = """
        ldxdw r2, [r1]
        mov r3, r1
        add r3, 16
        mov r6, r2
        rsh r6, 2
        mov r5, 8
        stxdw [r10-8], r2
        jgt r5, r2, done
        mov r5, 1
        add r1, 20
        ja outer
    inner:
        ldxw r9, [r6-4]
        mov r4, r0
        mov r8, r7
        jge r4, r9, place
        add r7, -1
        stxw [r6], r9
        mov r8, 0
        add r6, -4
        jne r7, 0, inner
    place:
        lsh r8, 2
        mov r4, r3
        add r4, r8
        stxw [r4], r0
        add r1, 4
        add r5, 1
        mov r6, r2
        jgt r6, r5, outer
        ja done
    outer:
        mov r2, r6
        mov r0, r5
        lsh r0, 2
        mov r6, r3
        add r6, r0
        ldxw r0, [r6]
        mov r6, r1
        mov r7, r5
        ja inner
    done:
        mov r0, 0
        ldxdw r2, [r10-8]
        jgt r2, 0, +1
        exit
        ldxw r0, [r3+4]
        exit
    """
    p = assemble_program(text)
    plans = _loop_plans(p, monkeypatch)
    (plan,) = plans.values()
    assert plan.inc == {6: (-4, -4), 7: (-1, -1)} and len(plan.accesses) == 2 and plan.tests
    for count in (8, 9, 40, 64, 200):
        mem = bytearray(16 + 4 * 50)
        mem[0:8] = (count * 4).to_bytes(8, "little")  # past the slot for the larger counts
        for k in range(50):
            mem[16 + 4 * k:20 + 4 * k] = ((k * 2654435761) & 0xFFFFFFFF).to_bytes(4, "little")
        for budget in (None, 20, 300, 3000):
            same(text, bytes(mem), budget)


def test_large_programs_are_upgraded_in_the_background():
    """A large program runs at once on quickly compiled code, then on the full pipeline's code;
    both give the interpreter's results."""
    lines = ["mov r0, 0", "mov r6, 0"]
    for k in range(200):
        lines += [f"stxw [r1+{4 * (k % 16)}], r0", f"add r0, {k}"]
    lines += ["loop:", "ldxb r3, [r1+64]", "add r0, r3", "add r6, 1", "jlt r6, 1000, loop", "exit"]
    text = "\n".join(lines)
    p = asm(text)
    exe = JitExecutable(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    light = exe.compiled.address
    mem = bytes(range(80))
    first = outcome(exe, Case("", mem, None))
    assert exe.wait_final(timeout=120)
    assert exe.compiled.optimise_seconds is not None and exe.compiled.address != light
    ref = Interpreter(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert first == outcome(exe, Case("", mem, None)) == outcome(ref, Case("", mem, None))
    for budget in (3, 300, 1500):
        assert outcome(exe, Case("", mem, budget)) == outcome(ref, Case("", mem, budget))
    # small programs are final at once
    small = JitExecutable(asm("mov r0, 1\nexit"), helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert small.compiled.final.is_set() and small.compiled.optimise_seconds is None


def test_exit_during_a_background_upgrade_is_clean():
    """The interpreter may exit while LLVM upgrades a program: the process still ends normally."""
    import subprocess
    import sys
    code = ("from hermes.engine import load\n"
            "from hermes.engine.asm import assemble_program\n"
            "lines = ['mov r0, 0'] + [f'stxw [r10-{4 + 4 * (k % 100)}], r0\\nadd r0, {k}'"
            " for k in range(600)] + ['exit']\n"
            "exe = load(assemble_program('\\n'.join(lines)), executor='jit')\n"
            "print(exe.run().return_value)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(range(600))


def test_evicted_code_is_freed_but_code_in_use_stays(monkeypatch):
    """The compiled-program cache is bounded: code that drops out of it and is held by nobody
    has its LLVM engine closed, while an executable that still holds evicted code runs on."""
    import gc
    import weakref

    from hermes.engine.jit import runtime
    monkeypatch.setattr(runtime, "CACHE_MAX", 4)
    held = JitExecutable(asm("mov r0, 7\nexit"), helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    dropped = JitExecutable(asm("mov r0, 8\nexit"), helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    gone = weakref.ref(dropped.compiled.entry._owner)
    engine = dropped.compiled.entry._owner.engine
    del dropped
    others = [JitExecutable(asm(f"mov r0, {100 + k}\nexit"), helpers=CONFORMANCE_HELPERS,
                            budget=BUDGET) for k in range(6)]
    assert len(runtime._cache) == 4
    gc.collect()
    assert gone() is None  # nothing referred to it any more
    JitExecutable(asm("mov r0, 9\nexit"), helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert engine.closed and runtime._dead == []  # the next compilation closed it
    assert held.run().return_value == 7 and [o.run().return_value for o in others][-1] == 105


def test_an_upgrade_frees_the_quick_code_once_unused():
    """After a background upgrade, the quickly compiled code is freed when no run holds it."""
    import gc
    import weakref
    lines = ["mov r0, 0"] + [f"stxw [r10-{4 + 4 * (k % 100)}], r0\nadd r0, {k}"
                             for k in range(200)] + ["exit"]
    exe = JitExecutable(asm("\n".join(lines)), helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    quick = weakref.ref(exe.compiled.entry._owner)
    engine = exe.compiled.entry._owner.engine
    assert exe.wait_final(timeout=120) and exe.compiled.optimise_seconds is not None
    gc.collect()
    assert quick() is None
    JitExecutable(asm("mov r0, 31337\nexit"), helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert engine.closed
    assert exe.run().return_value == sum(range(200))


def _every_budget(program: Program, mem: bytes, budgets) -> None:
    """The JIT's outcome equals the interpreter's with no budget and at every one of ``budgets``."""
    jit = JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    ref = Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    for budget in (None, *budgets):
        case = Case("", mem, budget)
        assert outcome(ref, case) == outcome(jit, case), budget


# a histogram loop whose exit test on the IV comes first; the last block goes back to the header
# by a jump or by a data-dependent latch (a bin reaching ``cap``), which can leave mid-unroll
_CHAIN = """
    mov r3, r1
    add r3, 8
    mov r5, r1
    add r5, 1032
    mov r4, r1
    add r4, r2
    add r4, {past}
    mov r0, 0
loop:
    jge r5, r4, out
    ldxb r7, [r5]
    lsh r7, 2
    add r7, r3
    ldxw r6, [r7]
    add r6, 1
    stxw [r7], r6
    add r0, r6
    add r5, 1
    {latch}
out:
    exit
"""


def _chain_memory(n: int, seed: int, spread: int = 256) -> bytes:
    rng = random.Random(seed)
    return bytes(1032) + bytes(rng.randrange(spread) for _ in range(n))


@pytest.mark.parametrize("latch", ["ja loop", "jlt r6, 3, loop"])
def test_chain_loops_are_unrolled(monkeypatch, latch):
    from hermes.engine.jit.loops import UNROLL
    plans = _loop_plans(assemble_program(_CHAIN.format(past=0, latch=latch)), monkeypatch)
    (plan,) = plans.values()
    assert plan.unroll == UNROLL and len(plan.chain) == 2 and plan.chain[0] == plan.header
    p = assemble_program(_DERIVED_TESTS.format(bound=0, start=1032, off=1031))
    (plan,) = _loop_plans(p, monkeypatch).values()
    assert plan.unroll == UNROLL and len(plan.chain) == 2 and len(plan.tests) == 2


def test_chain_loops_walking_only_ivs_are_left_to_the_vectoriser(monkeypatch):
    """clang's ``p + i`` in another register is a walk, not a data-dependent address."""
    text = ("mov r0, 0\nmov r4, 0\nloop:\nmov r5, r1\nadd r5, r4\nldxb r5, [r5]\nadd r0, r5\n"
            "jge r4, 100, out\nadd r4, 1\njgt r2, r4, loop\nout:\nexit")
    (plan,) = _loop_plans(assemble_program(text), monkeypatch).values()
    assert plan.unroll == 1 and len(plan.tests) == 2
    same(text, bytes(range(150)))


@pytest.mark.parametrize("latch", ["ja loop", "jlt r6, 3, loop", "jlt r6, 100, loop"])
@pytest.mark.parametrize("n, past", [(0, 0), (1, 0), (7, 0), (9, 0), (13, 2), (14, 1)])
def test_unrolled_chains_match_at_every_budget(latch, n, past):
    """Budgets at every count of the run, a fault in the last iteration (``past``: the exit
    test's bound lies beyond the slot) and exits in the middle of an unrolled group."""
    p = asm(_CHAIN.format(past=past, latch=latch))
    mem = _chain_memory(n, n * 31 + past, spread=4)
    _every_budget(p, mem, range(1, 12 * (n + past) + 16))


@pytest.mark.parametrize("n, size", [(11, 1043), (40, 1043), (40, 1041), (9, 1200)])
def test_unrolled_derived_tests_match_at_every_budget(n, size):
    """clang's histogram shape: every budget, and the load faulting at the exact iteration
    when the count runs past the slot."""
    text = _DERIVED_TESTS.format(bound=0, start=1032, off=1031)
    mem = bytearray(size)
    mem[0:8] = n.to_bytes(8, "little")
    mem[1032:] = bytes((i * 37) & 255 for i in range(size - 1032))
    _every_budget(asm(text), bytes(mem), range(1, 14 * n + 20))


@pytest.mark.parametrize("start, off, bound", [
    (1040, 2000, 0),           # i - k wraps below zero: no certain iterations
    (1040, 1039, 1400),        # the slot bound wraps: r2 - bound is near 2**64
    (1040, 1050, 0),           # i - k starts wrapped, the first test leaves at once
])
def test_unrolled_chains_with_wrapped_tests(start, off, bound):
    text = _DERIVED_TESTS.format(bound=bound, start=start, off=off)
    mem = bytearray(1300)
    mem[0:8] = (30).to_bytes(8, "little")
    mem[1032:] = bytes((i * 53) & 255 for i in range(1300 - 1032))
    _every_budget(asm(text), bytes(mem), range(1, 500, 3))


# insertion sort's inner loop: a walk down by 4 that leaves in the middle of an iteration on the
# data or at its exit test on the IV; ``{lo}`` (below the slot when negative) is where it stops
_SORT = """
    mov r9, r1
    add r9, {lo}
    mov r3, r2
    rsh r3, 2
    mov r5, 1
    jge r5, r3, done
outer:
    mov r6, r5
    lsh r6, 2
    add r6, r1
    ldxw r7, [r6+0]
inner:
    jle r6, r9, place
    ldxw r8, [r6-4]
    jle r8, r7, place
    stxw [r6+0], r8
    sub r6, 4
    ja inner
place:
    stxw [r6+0], r7
    add r5, 1
    jlt r5, r3, outer
done:
    ldxw r0, [r1+0]
    exit
"""


def test_fast_copies_without_a_count_are_chosen_where_every_iteration_is_alike(monkeypatch):
    """The count comes from an IV when all iterations have one length and nothing but the
    loop's exits needs it; the filter loop's paths differ, so it keeps its count."""
    plans = _loop_plans(assemble_program(_SORT.format(lo=0)), monkeypatch)
    assert [p.counter for p in plans.values()] == [(6, -4)]
    (plan,) = _loop_plans(assemble_program(_CHAIN.format(past=0, latch="ja loop")),
                          monkeypatch).values()
    assert plan.counter == (5, 1) and plan.unroll > 1
    (plan,) = _loop_plans(assemble_program(_ROTATED_FILTER), monkeypatch).values()
    assert plan.counter is None
    # a helper call needs the count inside the copy
    text = "mov r6, r1\nmov r7, 0\nloop:\nldxb r1, [r6]\ncall 0\nadd r6, 1\nadd r7, 1\n" \
           "jlt r7, 9, loop\nexit"
    assert all(p.counter is None for p in _loop_plans(assemble_program(text),
                                                      monkeypatch).values())


@pytest.mark.parametrize("lo, n", [(0, 14), (0, 3), (-8, 14), (-4, 9), (4, 12)])
def test_sort_walks_without_a_count_match_at_every_budget(lo, n):
    """Exits on the data in the middle of an iteration, at the IV's test, and (``lo`` below
    the slot) a fault at the exact iteration, with every budget."""
    rng = random.Random(n * 7 + lo)
    mem = b"".join(rng.randrange(1 << 32).to_bytes(4, "little") for _ in range(n))
    _every_budget(asm(_SORT.format(lo=lo)), mem, range(1, 8 * n * n + 40))


@pytest.mark.parametrize("counter, size", [("", 40), ("", 200), ("add r3, 1\njne r3, 0", 200),
                                           ("add r3, 1\njne r3, 0", 60)])
def test_walks_by_odd_strides_and_wrapping_counters_match_at_every_budget(counter, size):
    """A stride of 12 (the iteration count is a division, not a shift) and a counter that
    wraps through zero (its last value is found modulo 2**64)."""
    latch = counter or "jlt r5, r6"
    text = (f"mov r0, 0\nmov r5, r1\nmov r6, r1\nadd r6, 160\nmov r3, -11\nloop:\n"
            f"ldxw r4, [r5+4]\nadd r0, r4\nadd r5, 12\n{latch}, loop\nexit")
    mem = bytes((i * 29) & 255 for i in range(size))
    _every_budget(asm(text), mem, range(1, 90))


# range filters: ``if (a || b) skip`` in its shapes (the second test's target to the skip path
# taken or fallen through, the first test reaching the second by a jump or by falling through)
_EITHER = {
    "both taken": "jlt r8, 8, next\njge r8, 30, next\nstxb [r7], r8\nadd r7, 1\nadd r0, 1\n"
                  "next:\nadd r6, 1\njlt r6, r3, loop\nexit",
    "second falls": "jlt r8, 8, next\njlt r8, 30, keep\nnext:\nadd r6, 1\njlt r6, r3, loop\n"
                    "exit\nkeep:\nstxb [r7], r8\nadd r7, 1\nadd r0, 1\nja next",
    "first jumps": "jge r8, 8, second\nnext:\nadd r6, 1\njlt r6, r3, loop\nexit\nsecond:\n"
                   "jge r8, 30, next\nstxb [r7], r8\nadd r7, 1\nadd r0, 1\nja next",
}


@pytest.mark.parametrize("shape", sorted(_EITHER))
@pytest.mark.parametrize("end", [40, 43])
def test_range_filters_as_one_branch_match_at_every_budget(shape, end):
    """The fast copy tests ``a || b`` at once and counts the second test's instruction only
    when it ran; every budget, and (``end`` past the slot) the load faulting in the end."""
    text = (f"mov r0, 0\nmov r6, r1\nmov r7, r1\nmov r3, r1\nadd r3, {end}\nloop:\n"
            f"ldxb r8, [r6]\n{_EITHER[shape]}")
    mem = bytes((k * 7) % 41 for k in range(40))
    _every_budget(asm(text), mem, range(1, 8 * end + 20))


def test_dead_code_falling_into_a_loop_keeps_the_count(monkeypatch):
    """A dead block that falls into a loop belongs to its body but not to its analysis (found
    by the fuzzer): such a copy keeps its count."""
    text = ("mov r0, 0\nmov r5, 0\nmov r8, r1\nadd r8, 3\nmov r9, 8\nja L1\nL2:\nadd r8, 3\n"
            "sub r9, 1\njne r9, 0, L1\nmov r0, 1\nexit\nL1:\nstw [r8+0], -98\n"
            "jsgt r5, -20, L4\nexit\n"
            "mov r7, r1\nadd r7, 10\nstb [r7-9], 77\nL4:\nja L2")
    assert all(p.counter is None
               for p in _loop_plans(assemble_program(text), monkeypatch).values())
    _every_budget(asm(text), bytes(40), range(1, 60))
    _every_budget(asm(text), bytes(20), range(1, 60))


def test_register_only_loops_without_a_count_stay_loops():
    """A copy that only computes registers has a closed form LLVM would use instead: the run
    of a loop meant to go on until it is stopped must take its time (the contract's cancel
    and timeout tests)."""
    from hermes.engine.jit.runtime import optimised_ir
    from hermes.engine.verifier import verify
    p = asm("mov r0, 0\nloop:\nadd r0, 1\nja loop")
    assert 'asm sideeffect ""' in optimised_ir(p, verify(p, CONFORMANCE_HELPERS))
    for budget in (1, 2, 3, 17, 1000):
        a, b = both(p, b"", budget)
        assert a == b

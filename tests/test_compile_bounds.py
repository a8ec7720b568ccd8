"""Bounded compile time: linear analyses, and the JIT's tier chosen by size before compiling."""
from __future__ import annotations

import random
import time

import pytest

from hermes.engine import load
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable, runtime
from hermes.engine.jit.codegen import leaders
from hermes.engine.jit.loops import _dominators, _DomTree, plan_loops
from hermes.engine.program import MAX_PROGRAM_SLOTS, Program
from hermes.engine.verifier import verify


def dense_jumps(n: int, seed: int = 1) -> Program:
    """``n`` slots of conditional jumps (never taken) to random slots within reach."""
    rng = random.Random(seed)
    body = n - 3
    lines = ["mov r0, 0", "mov r1, 7"]
    for i in range(body):
        lines.append(f"L{i}:")
        target = rng.randrange(max(0, i - 30000), min(body, i + 30000))
        lines.append(f"jeq r1, {12345 + i}, L{target}")
    lines.append("exit")
    return assemble_program("\n".join(lines), name=f"dense-{n}-{seed}")


def back_jumps(n: int) -> Program:
    """Every slot jumps back to one block that dominates it (the quadratic case of a naive
    dominance test and of collecting each natural loop separately)."""
    lines = ["mov r0, 0", "mov r1, 7", "L0:"]
    lines += [f"jeq r1, {12345 + i}, L0" for i in range(n - 3)]
    lines.append("exit")
    return assemble_program("\n".join(lines), name=f"back-{n}")


def test_the_largest_program_loads_and_runs_on_a_tier_that_is_cheap_to_build():
    program = dense_jumps(MAX_PROGRAM_SLOTS)
    assert len(program) == MAX_PROGRAM_SLOTS
    t0 = time.perf_counter()
    exe = load(program, helpers=CONFORMANCE_HELPERS, executor="jit")
    res = exe.run(bytearray(8))
    assert time.perf_counter() - t0 < 120  # a guard against minutes, not a speed figure
    assert exe.tier == "interp" and exe.wait_final(0)
    assert (res.return_value, res.instructions) == (0, MAX_PROGRAM_SLOTS)


def test_loop_analysis_of_many_back_edges_finishes():
    program = back_jumps(30000)
    info = verify(program, CONFORMANCE_HELPERS)
    starts = leaders(program, info)
    ends = dict(zip(starts, starts[1:] + [len(program)], strict=True))
    t0 = time.perf_counter()
    plans = plan_loops(program.insns, starts, ends, 0, len(program), info.stack_safe)
    assert time.perf_counter() - t0 < 120
    assert plans == {}  # one loop of 30,000 blocks: too big to version


@pytest.mark.parametrize("slots, blocks, tier", [
    (2, 1, "full"), (160, 40, "full"), (161, 40, "upgrade"), (2048, 512, "upgrade"),
    (2048, 513, "quick"), (2049, 10, "quick"), (8192, 4096, "quick"), (8193, 10, "interp"),
    (5000, 4097, "interp"), (65536, 65536, "interp")])
def test_auto_tier_thresholds(slots, blocks, tier):
    assert runtime.auto_tier(slots, blocks) == tier


def test_each_tier_gives_the_interpreters_results():
    """A program between the thresholds of every tier, run on each (same r0, count, memory)."""
    lines = ["mov r0, 0", "mov r6, 0"]
    for k in range(300):
        lines += [f"ldxb r3, [r1+{k % 32}]", "add r0, r3", f"jgt r0, {1000 + 7 * k}, S{k}",
                  f"stxb [r1+{(k * 5) % 32}], r0", f"S{k}:"]
    lines += ["loop:", "add r6, 1", "jlt r6, 100, loop", "exit"]
    program = assemble_program("\n".join(lines))
    ref = Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=10**9)
    want_mem = bytearray(range(32))
    want = ref.run(want_mem)
    for tier in ("quick", "full", "auto"):
        exe = JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=10**9, tier=tier)
        mem = bytearray(range(32))
        got = exe.run(mem)
        assert (got.return_value, got.instructions, mem) == \
            (want.return_value, want.instructions, want_mem), tier


def _naive_dominators(entry, succ):
    reach, stack = set(), [entry]
    while stack:
        b = stack.pop()
        if b not in reach:
            reach.add(b)
            stack.extend(succ[b])
    dom = {b: set(reach) for b in reach}
    dom[entry] = {entry}
    changed = True
    while changed:
        changed = False
        for b in reach - {entry}:
            new = set.intersection(*[dom[p] for p in reach if b in succ[p]]) | {b}
            if new != dom[b]:
                dom[b], changed = new, True
    return dom


def test_dominators_match_the_definition_on_random_graphs():
    rng = random.Random(3)
    for _ in range(400):
        nodes = list(range(0, 3 * rng.randint(1, 25), 3))
        succ = {b: rng.sample(nodes, rng.randint(0, min(3, len(nodes)))) for b in nodes}
        pred = {b: [p for p in nodes for t in succ[p] if t == b] for b in nodes}
        idom = _dominators(nodes[0], succ, pred)
        dom = _naive_dominators(nodes[0], succ)
        tree = _DomTree(idom, nodes[0])
        assert set(idom) == set(dom)
        for b in dom:
            assert {h for h in nodes if tree.dominates(h, b)} == dom[b]
            if b != nodes[0]:
                assert idom[b] in dom[b] - {b} and dom[b] - {b} <= dom[idom[b]]


def test_an_unknown_tier_is_a_usage_error():
    from hermes.errors import UsageError
    with pytest.raises(UsageError, match="unknown JIT tier 'fast'"):
        JitExecutable(assemble_program("mov r0, 1\nexit"), helpers=CONFORMANCE_HELPERS,
                      budget=10, tier="fast")


def _straight(n: int) -> Program:
    return assemble_program("\n".join(["mov r0, 0"] * (n - 1) + ["exit"]), name=f"straight-{n}")


def test_the_compile_limit_is_at_the_autos_interpreter_threshold():
    runtime.check_compile_size(_straight(runtime.JIT_MAX_SLOTS), runtime.JIT_MAX_BLOCKS, "full")
    from hermes.errors import UsageError
    with pytest.raises(UsageError, match="8193 slots and 1 basic blocks, the limit is 8192"):
        runtime.check_compile_size(_straight(runtime.JIT_MAX_SLOTS + 1), 1, "quick")
    with pytest.raises(UsageError, match="4097 basic blocks"):
        runtime.check_compile_size(_straight(10), runtime.JIT_MAX_BLOCKS + 1, "full")


@pytest.mark.parametrize("tier", ["quick", "full"])
@pytest.mark.parametrize("program", [_straight(runtime.JIT_MAX_SLOTS + 1), dense_jumps(5000)],
                         ids=["slots", "blocks"])
def test_an_explicit_tier_refuses_a_program_too_large_before_compiling(program, tier,
                                                                        monkeypatch):
    from hermes.errors import UsageError

    def no_codegen(*args, **kwargs):
        raise AssertionError("code generation started")

    monkeypatch.setattr(runtime.codegen, "generate_module", no_codegen)
    with pytest.raises(UsageError, match=rf"too large to compile on JIT tier '{tier}': "
                                         rf"{len(program)} slots"):
        JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=10, tier=tier)
    with pytest.raises(UsageError, match="the limit is 8192 slots and 4096 blocks"):
        JitExecutable.load_many([_straight(3), program], helpers=CONFORMANCE_HELPERS,
                                budget=10, tier=tier)
    # "auto" interprets it instead
    exe = JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=10**6)
    assert exe.tier == "interp"

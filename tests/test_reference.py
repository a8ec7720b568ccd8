"""The plain reference interpreter: RFC 9669 values, run contract, step hook, same as interp/jit."""
from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from hermes.engine import CONFORMANCE_HELPERS, DEFAULT_BUDGET, DEVICE_HELPERS, Cancel, load
from hermes.engine.asm import assemble_program
from hermes.engine.cfg import block_leaders
from hermes.engine.helpers import merged
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable
from hermes.engine.memory import DATA_BASE, STACK_TOP
from hermes.engine.reference import Reference, Step
from hermes.errors import BudgetExceeded, Cancelled, ExecutionError, ProgramError
from tests.volume import examples

from .support.progen import KINDS, compare_all, outcome

ALL_HELPERS = merged(CONFORMANCE_HELPERS, DEVICE_HELPERS)
#: Programs per hypothesis example (the JIT compiles them in one module): in the default
#: suite 2 generators x 3 examples x 10 programs; ``./dev volume`` 2 x 50 x 50 more.
BATCH, VOLUME_BATCH = 10, 50
EXAMPLES = examples("HERMES_REF_DIFF_EXAMPLES", 3, 3)
VOLUME_EXAMPLES = examples("HERMES_REF_DIFF_VOLUME", 2, 50)


def ref(text: str, helpers=ALL_HELPERS, budget: int = DEFAULT_BUDGET) -> Reference:
    return Reference(assemble_program(text), helpers=helpers, budget=budget)


def r0(text: str, memory: bytes | None = None, **options) -> int:
    """r0 of ``text`` on the reference, checked against the block interpreter too."""
    mem = bytearray(memory) if memory is not None else None
    want = ref(text).run(mem, **options).return_value
    mem2 = bytearray(memory) if memory is not None else None
    got = Interpreter(assemble_program(text), helpers=ALL_HELPERS,
                      budget=DEFAULT_BUDGET).run(mem2, **options).return_value
    assert got == want, (text, got, want)
    return want


M64 = (1 << 64) - 1
INT_MIN = 1 << 63

#: (program, r0) straight from RFC 9669's definitions.
RFC_CASES = [
    ("mov r0, 7\ndiv r0, 0\nexit", 0),                            # x / 0 = 0
    ("mov r0, 7\nmov r1, 0\nmod r0, r1\nexit", 7),                 # x % 0 = x
    ("lddw r0, 0x1ffffffff\nmod32 r0, 0\nexit", 0xFFFFFFFF),       # ... truncated to 32 bits
    ("lddw r0, 0x8000000000000000\nsdiv r0, -1\nexit", INT_MIN),   # MIN / -1 = MIN
    ("lddw r0, 0x8000000000000000\nsmod r0, -1\nexit", 0),         # MIN % -1 = 0
    ("mov r0, -7\nsdiv r0, 2\nexit", -3 & M64),                    # truncates toward zero
    ("mov r0, -7\nsmod r0, 2\nexit", -1 & M64),                    # sign of the dividend
    ("mov r0, 7\nsmod r0, -2\nexit", 1),
    ("mov32 r0, -7\nsdiv32 r0, 2\nexit", -3 & 0xFFFFFFFF),         # 32-bit, zero-extended
    ("mov r0, 1\nlsh r0, 65\nexit", 2),                            # shift amount masked to 63
    ("mov r0, 1\nlsh32 r0, 33\nexit", 2),                          # ... to 31
    ("mov r0, -16\narsh r0, 2\nexit", -4 & M64),
    ("mov r0, -16\narsh32 r0, 2\nexit", -4 & 0xFFFFFFFF),
    ("mov r0, -1\nrsh32 r0, 28\nexit", 0xF),
    ("mov r0, 5\nneg32 r0\nexit", -5 & 0xFFFFFFFF),
    ("mov r0, -1\nadd32 r0, 1\nexit", 0),
    ("mov32 r0, -1\nexit", 0xFFFFFFFF),                            # ALU results zero-extended
    ("mov r0, -1\nexit", M64),                                     # ALU64 immediates sign-extend
    ("mov r1, 0x80\nmovsx864 r0, r1\nexit", -128 & M64),
    ("mov r1, 0x8000\nmovsx1632 r0, r1\nexit", 0xFFFF8000),
    ("lddw r0, 0x1122334455667788\nbe16 r0\nexit", 0x8877),
    ("lddw r0, 0x1122334455667788\nle32 r0\nexit", 0x55667788),
    ("lddw r0, 0x1122334455667788\nbswap64 r0\nexit", 0x8877665544332211),
    ("mov r0, 0\nmov r1, -1\njsgt r1, 0, +1\nmov r0, 1\nexit", 1),  # signed: -1 < 0
    ("mov r0, 0\nmov r1, -1\njgt r1, 0, +1\nmov r0, 1\nexit", 0),   # unsigned: 2^64-1 > 0
    ("mov r0, 0\nlddw r1, 0x100000000\njeq32 r1, 0, +1\nmov r0, 1\nexit", 0),  # low 32 bits
    ("mov r0, 0\nmov r1, 6\njset r1, 4, +1\nmov r0, 1\nexit", 0),
    ("stdw [r10-8], 5\nmov r1, 3\nlock fetch add [r10-8], r1\nldxdw r0, [r10-8]\n"
     "lsh r0, 8\nor r0, r1\nexit", (8 << 8) | 5),
    ("stdw [r10-8], 5\nmov r0, 5\nmov r1, 9\nlock cmpxchg [r10-8], r1\nldxdw r0, [r10-8]\nexit",
     9),
    ("stdw [r10-8], 5\nmov r0, 4\nmov r1, 9\nlock cmpxchg [r10-8], r1\nexit", 5),
    ("stdw [r10-8], 5\nmov r1, 9\nlock xchg [r10-8], r1\nmov r0, r1\nexit", 5),
    ("stw [r10-4], -1\nldxsw r0, [r10-4]\nexit", M64),             # sign-extending load
    ("stw [r10-4], -1\nldxw r0, [r10-4]\nexit", 0xFFFFFFFF),
    ("lddw r0, 0x123456789\nexit", 0x123456789),
]


@pytest.mark.parametrize("text, want", RFC_CASES, ids=[t.split("\n")[-2] + f"#{k}" for k, (t, _)
                                                        in enumerate(RFC_CASES)])
def test_rfc_semantics(text: str, want: int):
    assert r0(text) == want


def test_entry_registers_follow_the_run_contract():
    """r1 = the window, r2 = the input length, r3..r5 = the arguments (modulo 2^64)."""
    text = "mov r0, r1\nexit"
    assert r0(text, bytes(8)) == DATA_BASE
    assert r0("mov r0, r2\nexit", bytes(16), length=5) == 5
    assert r0("mov r0, r3\nsub r0, r4\nadd r0, r5\nexit", bytes(1), args=(10, 3, -1)) == 6
    assert r0("mov r0, r5\nexit", bytes(1), args=(1, 2)) == 0
    assert r0("mov r0, r10\nexit") == STACK_TOP
    # the window is the whole buffer, also past the input length
    assert r0("ldxb r0, [r1+15]\nexit", bytes(15) + b"\x2a", length=1) == 42


def test_faults_budget_and_call_depth_match_the_interpreter():
    cases = [
        ("ldxw r0, [r1+6]\nexit", bytes(8), None),                    # straddles the window end
        ("mov r1, 0\nstb [r1+0], 1\nmov r0, 0\nexit", None, None),
        ("mov r0, 0\nloop:\nadd r0, 1\nja loop", bytes(1), 100),       # budget
        ("f:\nmov r0, 0\ncall local f\nexit", None, None),             # call depth
        ("mov r1, 77\ncallx r1\nexit", None, None),                    # unknown helper at run time
    ]
    for text, mem, budget in cases:
        program = assemble_program(text)
        exes = {"reference": Reference(program, helpers=ALL_HELPERS, budget=DEFAULT_BUDGET),
                "interp": Interpreter(program, helpers=ALL_HELPERS, budget=DEFAULT_BUDGET)}
        results = {n: _error_of(e, mem, budget) for n, e in exes.items()}
        assert results["reference"] == results["interp"], text
        assert results["reference"][0] != "ok", text


def _error_of(exe, mem, budget):
    try:
        res = exe.run(bytearray(mem) if mem is not None else None, budget)
    except ExecutionError as exc:
        return (type(exc).__name__, exc.kind, exc.pc, exc.address, exc.size, exc.instructions,
                str(exc))
    return ("ok", res.return_value, res.instructions)


def test_budget_is_charged_per_block():
    """A block that would pass the budget is not started: the error names its first pc and the
    count before it; a run that fits reports whole blocks."""
    exe = ref("mov r0, 0\nmov r1, 1\nja +0\nmov r2, 2\nmov r3, 3\nexit")
    with pytest.raises(BudgetExceeded) as info:
        exe.run(None, 4)
    assert (info.value.pc, info.value.instructions) == (3, 3)
    assert exe.run(None, 6).instructions == 6
    assert block_leaders(exe.program.insns) == [0, 3]


def test_load_contract_is_the_engines():
    """A program the engines refuse is refused by the reference with the same error."""
    for text in ("mov r0, r6\nexit", "mov r0, 0\ncall 999\nexit", "mov r0, 0"):
        program = assemble_program(text)
        with pytest.raises(ProgramError) as want:
            load(program, executor="interp", helpers=ALL_HELPERS)
        with pytest.raises(ProgramError) as got:
            Reference(program, helpers=ALL_HELPERS, budget=DEFAULT_BUDGET)
        assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))


def test_step_hook_sees_every_instruction():
    steps: list[Step] = []
    exe = ref("mov r0, 0\nmov r2, 3\nloop:\nstxdw [r10-8], r2\nadd r0, r2\nsub r2, 1\n"
              "jne r2, 0, loop\nlddw r3, 0x100000000\nexit")
    res = exe.run(bytearray(4), step=steps.append)
    assert res.return_value == 6
    assert len(steps) == res.instructions == 2 + 3 * 4 + 2
    first_store = steps[2]
    assert first_store.pc == 2 and first_store.insn.op.mnemonic == "stxdw"
    assert first_store.stores == ((STACK_TOP - 8, 8, 3),)
    assert first_store.before == first_store.after
    add = steps[3]
    assert (add.before[0], add.after[0]) == (0, 3) and add.stores == ()
    assert [s.pc for s in steps[-2:]] == [6, 8]  # lddw takes two slots
    assert steps[-2].after[3] == 1 << 32


def test_step_hook_stops_before_a_faulting_instruction():
    steps: list[Step] = []
    exe = ref("mov r0, 1\nldxdw r0, [r1+8]\nexit")
    with pytest.raises(ExecutionError) as info:
        exe.run(bytearray(4), step=steps.append)
    assert [s.pc for s in steps] == [0]
    assert info.value.pc == 1 and info.value.instructions == 2


def test_printed_text_and_output_length():
    """bpf_trace_printk("%d\\n", 4, 42) and hermes_set_output(2), through the same helpers."""
    text = ("stdw [r10-8], 0\nstw [r10-8], 0x0a642520\nmov r1, r10\nadd r1, -7\nmov r2, 4\n"
            "mov r3, 42\ncall 6\nmov r1, 2\ncall 0x1002\nmov r0, 0\nexit")
    res = ref(text).run(bytearray(8))
    assert res.trace == b"42\n"
    assert res.output_length == 2
    interp = Interpreter(assemble_program(text), helpers=ALL_HELPERS,
                         budget=DEFAULT_BUDGET).run(bytearray(8))
    assert (interp.trace, interp.output_length) == (res.trace, res.output_length)


def test_cancel_before_and_during_a_run():
    exe = ref("mov r0, 0\nloop:\nadd r0, 1\nja loop")
    flag = Cancel()
    flag.set()
    with pytest.raises(Cancelled):
        exe.run(None, cancel=flag)
    flag = Cancel()
    timer = threading.Timer(0.2, flag.set)
    timer.start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        exe.run(None, cancel=flag)
    assert time.monotonic() - start < 1.2
    timer.join()


def test_conformance_corpus_runs_as_on_the_interpreter(conformance_dir):
    """Every program of the corpus gives the same r0, or the same error, as on the interpreter
    (which passes the corpus: tests/test_conformance.py)."""
    from hermes.conformance import load_corpus
    compared = 0
    for case in load_corpus([conformance_dir]):
        try:
            program = case.program()
        except ProgramError:
            continue
        outcomes = []
        for engine in (Interpreter, Reference):
            try:
                exe = engine(program, helpers=CONFORMANCE_HELPERS, budget=DEFAULT_BUDGET)
                memory = bytearray(case.memory) if case.memory is not None else None
                outcomes.append(("ok", exe.run(memory).return_value))
            except (ProgramError, ExecutionError) as exc:
                outcomes.append((type(exc).__name__, str(exc)))
        assert outcomes[0] == outcomes[1], case.name
        compared += 1
    assert compared > 200


def _differential(kind: str, seed: int, count: int) -> None:
    rng = random.Random(seed)
    cases = [KINDS[kind](rng) for _ in range(count)]
    programs = [c.program() for c in cases]
    jits = JitExecutable.load_many(programs, helpers=CONFORMANCE_HELPERS, budget=DEFAULT_BUDGET)
    for case, program, jit in zip(cases, programs, jits, strict=True):
        assert not isinstance(jit, ProgramError), f"{jit}\n{case.text}"
        exes = {"reference": Reference(program, helpers=CONFORMANCE_HELPERS,
                                       budget=DEFAULT_BUDGET),
                "interp": Interpreter(program, helpers=CONFORMANCE_HELPERS,
                                      budget=DEFAULT_BUDGET),
                "jit": jit}
        diff = compare_all(case, exes)
        assert diff is None, diff


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**64 - 1))
def test_random_programs_agree_with_interp_and_jit(kind: str, seed: int):
    """Generated programs (every operation, faults, helpers, calls at depth, budgets): r0,
    memory, counts and errors are the same on the reference, the interpreter and the JIT."""
    _differential(kind, seed, BATCH)


@pytest.mark.volume
@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=VOLUME_EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**64 - 1))
def test_random_programs_agree_volume(kind: str, seed: int):
    """The same differential at volume (``./dev volume``)."""
    _differential(kind, seed, VOLUME_BATCH)


def test_outcome_of_reference_matches_progen_format():
    """progen's ``outcome`` (what the fuzzers compare) runs on the reference unchanged."""
    case = KINDS["flat"](random.Random(3))
    exe = Reference(case.program(), helpers=CONFORMANCE_HELPERS, budget=DEFAULT_BUDGET)
    assert outcome(exe, case)[0] in ("ok", "error")

"""Analyses that prune code are sound at every call depth; the JIT never emits undefined code."""
from __future__ import annotations

import mmap
import random

import pytest

from hermes.engine import cfg, validate
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable, codegen
from hermes.engine.jit.runtime import _llvm
from hermes.engine.memory import DATA_BASE, MAX_DATA
from hermes.engine.program import Program
from hermes.engine.verifier import verify
from hermes.errors import UsageError, VerifierError

from .support.progen import Case, outcome, random_case

BUDGET = 10**9
TIERS = ("quick", "full")

# The entry function calls itself; one frame deep it stores into its caller's live frame
# ([r10+8], legal there) and then calls g. At depth 0 the same store would fault, but the
# function also runs at depth 1, so neither the store nor what follows it is dead code.
SELF_CALL = """start:
jeq r1, 1, deep
mov r1, 1
call local start
exit
deep:
stdw [r10+8], 7
call local g
mov r0, 42
exit
g:
mov r0, 1
exit
"""

def engines(program: Program):
    """The interpreter and both JIT tiers for ``program``."""
    yield "interp", Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    for tier in TIERS:
        yield tier, JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=BUDGET, tier=tier)


def outcomes(program: Program, memory) -> dict:
    return {name: outcome(exe, Case("", memory, None)) for name, exe in engines(program)}


def ir_of(program: Program) -> str:
    st = _llvm()
    return codegen.generate(program, verify(program, CONFORMANCE_HELPERS), st["triple"],
                            st["layout"], "hermes_soundness")


def test_entry_function_entered_by_a_call_stores_into_its_callers_frame():
    program = assemble_program(SELF_CALL)
    got = outcomes(program, None)
    assert got["interp"] == ("ok", 42, 11, None)
    assert got["quick"] == got["full"] == got["interp"]


def test_a_local_call_forgets_constant_arguments():
    """The callee may leave anything in r0..r5: no certain fault is derived from a constant
    set before the call (the load contract then refuses the read of r1 itself)."""
    program = assemble_program("mov r6, r1\nmov r1, 0\ncall local f\nstb [r1+0], 5\n"
                               "mov r0, 9\nexit\nf:\nmov r1, r6\nexit")
    entry = cfg.functions(program.insns)[0]
    assert validate.certain_faults(program.insns, entry, entered_by_call=False) == set()
    with pytest.raises(VerifierError, match="uninitialised register r1") as info:
        Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=BUDGET)
    assert info.value.index == 3


@pytest.mark.parametrize("text", [SELF_CALL])
def test_every_call_site_is_compiled_and_no_ir_is_unreachable(text):
    program = assemble_program(text)
    info = verify(program, CONFORMANCE_HELPERS)
    calls = {i for i, insn in enumerate(program.insns)
             if insn is not None and insn.op.form == "call_local"}
    assert set(info.call_targets) == calls
    assert "unreachable" not in ir_of(program)


def test_faults_are_certain_only_when_they_happen_at_every_depth():
    # stb [r10+0] faults in an entry function nobody calls (the corpus's err-stack-oob) ...
    insns = assemble_program("stb [r10+0], 0\nexit").insns
    entry = cfg.functions(insns)[0]
    assert validate.certain_faults(insns, entry, entered_by_call=False) == {0}
    # ... but not in one that is also a callee, nor in any other function
    assert validate.certain_faults(insns, entry, entered_by_call=True) == set()
    callee = assemble_program("call local f\nexit\nf:\nstb [r10+8], 0\nstb [r10+3584], 0\n"
                              "exit").insns
    f = cfg.functions(callee)[1]
    assert validate.certain_faults(callee, f, entered_by_call=True) == {3}


def test_no_generated_program_compiles_to_unreachable_code():
    rng = random.Random(20261201)
    for _ in range(60):
        case = random_case(rng)
        assert "unreachable" not in ir_of(case.program()), case.text


def test_input_larger_than_the_data_region_is_refused():
    big = mmap.mmap(-1, MAX_DATA + 1)  # lazily backed: no memory is spent on it
    try:
        program = assemble_program("mov r0, 1\nexit")
        for _, exe in engines(program):
            with pytest.raises(UsageError, match="larger than the data region"):
                exe.run(memoryview(big))
    finally:
        big.close()
    assert DATA_BASE + MAX_DATA <= 0x2_0000_0000

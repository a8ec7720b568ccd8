"""JIT code generation: the shape of the IR (shared failure blocks, entry copies) and that the
memoryless entry copy of a specialised program behaves exactly like the interpreter."""
from __future__ import annotations

import pytest

from hermes.engine.asm import assemble_program
from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable, codegen
from hermes.engine.jit.runtime import _llvm
from hermes.engine.program import Program
from hermes.engine.verifier import verify

from .support.progen import Case, outcome

# A loop over the stack and the data slot: small enough to be specialised (SPECIALISE_MAX).
LOOP = """mov r0, 0
mov r2, 0
loop:
add r0, r2
stxdw [r10-8], r0
ldxdw r3, [r10-8]
add r0, r3
jeq r1, 0, skip
ldxb r4, [r1+0]
add r0, r4
skip:
add r2, 1
jlt r2, 50, loop
exit
"""

# The same, with the entry function entered again by a call (so the plain copy is needed).
RECURSIVE = """start:
jeq r5, 1, body
mov r5, 1
call local start
exit
body:
""" + LOOP.replace("exit\n", "mov r5, 0\nexit\n")


def ir_of(program: Program) -> str:
    st = _llvm()
    return codegen.generate(program, verify(program, CONFORMANCE_HELPERS), st["triple"],
                            st["layout"], "hermes_codegen")


def defined(ir: str) -> list[str]:
    """Names of the functions the IR defines."""
    return [line.split("@", 1)[1].split("(", 1)[0] for line in ir.splitlines()
            if line.startswith("define ")]


def test_one_budget_failure_block_per_function():
    ir = ir_of(assemble_program(LOOP, name="codegen-loop"))
    functions = ir.split("\ndefine ")
    for body in functions[1:]:
        assert body.count("\nbudget_fail:") <= 1
    assert "alloca" in ir and "%fpc" not in ir  # the failing block comes from a phi


def test_specialised_program_has_data_and_memoryless_copies_and_no_unused_plain_one():
    program = assemble_program(LOOP, name="codegen-copies")
    assert codegen.ModuleGen(program, verify(program, CONFORMANCE_HELPERS), "p_").specialise
    names = defined(ir_of(program))
    assert "hermes_codegen_f0s" in names and "hermes_codegen_f0n" in names
    assert "hermes_codegen_f0" not in names  # nothing calls the entry function


def test_entry_function_called_by_the_program_keeps_its_plain_copy():
    names = defined(ir_of(assemble_program(RECURSIVE, name="codegen-recursive")))
    assert {"hermes_codegen_f0", "hermes_codegen_f0s", "hermes_codegen_f0n"} <= set(names)


@pytest.mark.parametrize("text", [LOOP, RECURSIVE], ids=["loop", "recursive"])
@pytest.mark.parametrize("memory", [None, b"\x07" * 16, b""], ids=["none", "slot", "empty"])
@pytest.mark.parametrize("budget", [None, 1, 37, 200, 301])
def test_both_entry_copies_match_the_interpreter(text, memory, budget):
    program = assemble_program(text, name="codegen-both")
    case = Case(text, memory, budget)
    ref = outcome(Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=10**6), case)
    for tier in ("quick", "full"):
        exe = JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=10**6, tier=tier)
        assert outcome(exe, case) == ref, tier

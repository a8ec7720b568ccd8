"""JIT code generation: the shape of the IR (shared failure blocks, entry copies) and that the
memoryless module of a specialised program behaves exactly like the interpreter."""
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


def ir_of(program: Program, memoryless: bool = False) -> str:
    st = _llvm()
    return codegen.generate_module([(program, verify(program, CONFORMANCE_HELPERS),
                                     "hermes_codegen")], st["triple"], st["layout"], memoryless)


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


def test_specialised_program_has_a_data_copy_and_a_separate_memoryless_module():
    program = assemble_program(LOOP, name="codegen-copies")
    assert codegen.ModuleGen(program, verify(program, CONFORMANCE_HELPERS), "p_").specialise
    names = defined(ir_of(program))
    assert "hermes_codegen_f0s" in names and "hermes_codegen_f0n" not in names
    assert "hermes_codegen_f0" not in names  # nothing calls the entry function
    assert f"store i64 {codegen.ERR_MEMORYLESS}" in ir_of(program)
    names = defined(ir_of(program, memoryless=True))
    assert "hermes_codegen_f0n" in names and "hermes_codegen_f0s" not in names


def test_entry_function_called_by_the_program_keeps_its_plain_copy():
    program = assemble_program(RECURSIVE, name="codegen-recursive")
    assert {"hermes_codegen_f0", "hermes_codegen_f0s"} <= set(defined(ir_of(program)))
    assert {"hermes_codegen_f0", "hermes_codegen_f0n"} <= \
        set(defined(ir_of(program, memoryless=True)))


def test_memoryless_module_is_compiled_by_the_first_run_without_memory():
    program = assemble_program(LOOP, name="codegen-lazy")
    exe = JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=10**6, tier="full")
    assert exe._nomem is None
    with_slot = exe.run(bytearray(b"\x07" * 16))
    assert exe._nomem is None  # runs with a data slot never need it
    first, second = exe.run(), exe.run()
    assert exe._nomem is not None
    assert first.return_value == second.return_value != with_slot.return_value
    assert first.instructions == second.instructions


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

"""Verifier: structural checks, call graph, uninitialised reads, stack proofs, the corpus."""
from __future__ import annotations

import pytest

from hermes.conformance import expected_kind, load_corpus
from hermes.engine import isa
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.memory import MAX_CALL_DEPTH
from hermes.engine.program import Program
from hermes.engine.verifier import verify
from hermes.errors import ProgramError, VerifierError


def asm(text: str) -> Program:
    return assemble_program(text)


def reject(text: str) -> VerifierError:
    with pytest.raises(VerifierError) as info:
        verify(asm(text), CONFORMANCE_HELPERS)
    return info.value


@pytest.mark.parametrize("text, index, reg", [
    ("add r0, 1\nexit", 0, 0),
    ("mov r0, r6\nexit", 0, 6),                    # r3..r5 are the run's arguments, r6 is not
    ("mov r0, 0\njeq r1, 0, +1\nmov r7, 1\nmov r0, r7\nexit", 3, 7),
    ("mov r0, 0\ncall 2\nmov r0, r1\nexit", 2, 1),           # r1..r5 clobbered by a helper call
    ("mov r0, 0\ncall local f\nadd r0, r5\nexit\nf:\nmov r0, 1\nexit", 2, 5),
    ("mov r0, 0\ncall local f\nexit\nf:\nmov r0, r6\nexit", 3, 6),  # callee-saved, not an argument
    ("mov r0, 0\nstxdw [r10-8], r7\nexit", 1, 7),
    ("mov r0, 0\nlock cmpxchg [r10-8], r8\nexit", 1, 8),
    ("mov r0, 0\ncallx r9\nexit", 1, 9),
])
def test_uninitialised_reads_name_index_and_register(text, index, reg):
    err = reject(text)
    assert err.index == index
    assert f"r{reg}" in err.reason and "uninitialised" in err.reason
    assert err.insn_text  # the disassembled instruction
    assert f"instruction {index}" in str(err)


def test_arguments_are_initialised_in_local_functions():
    info = verify(asm("mov r1, 1\nmov r2, 2\ncall local f\nexit\n"
                      "f:\nmov r0, r1\nadd r0, r2\nadd r0, r5\nexit"), CONFORMANCE_HELPERS)
    assert len(info.functions) == 2 and info.max_depth == 2


def test_entry_registers_r1_r2_r10_are_initialised():
    verify(asm("mov r0, r1\nadd r0, r2\nadd r0, r10\nexit"), CONFORMANCE_HELPERS)


def reject_strict(text: str) -> VerifierError:
    with pytest.raises(VerifierError) as info:
        verify(asm(text), CONFORMANCE_HELPERS, strict_calls=True)
    return info.value


def test_recursion_is_rejected_with_the_call_site_when_strict():
    text = "mov r0, 0\ncall local f\nexit\nf:\nmov r0, 0\ncall local f\nexit"
    err = reject_strict(text)
    assert err.index == 4 and "recursi" in err.reason
    err = reject_strict("mov r0, 0\ncall local f\nexit\nf:\nmov r0, 0\ncall local g\nexit\n"
                        "g:\nmov r0, 0\ncall local f\nexit")
    assert "recursi" in err.reason
    # by default recursion is left to the run-time depth limit (the interpreter's semantics)
    info = verify(asm(text), CONFORMANCE_HELPERS)
    assert not info.bounded and info.call_targets == {1: 1, 4: 1}


def test_void_local_functions_need_not_write_r0():
    info = verify(asm("mov r0, 1\ncall local f\nexit\nf:\nstb [r10-1], 0\nexit"),
                  CONFORMANCE_HELPERS)
    assert info.bounded and info.max_depth == 2


def _chain(depth: int) -> str:
    lines = ["mov r0, 0", "call local f1", "exit"]
    for k in range(1, depth):
        lines += [f"f{k}:", "mov r0, 0"]
        if k + 1 < depth:
            lines.append(f"call local f{k + 1}")
        lines.append("exit")
    return "\n".join(lines)


def test_call_depth_is_bounded_statically():
    info = verify(asm(_chain(MAX_CALL_DEPTH)), CONFORMANCE_HELPERS)
    assert info.max_depth == MAX_CALL_DEPTH and info.bounded
    err = reject_strict(_chain(MAX_CALL_DEPTH + 1))
    assert "too deep" in err.reason
    assert not verify(asm(_chain(MAX_CALL_DEPTH + 1)), CONFORMANCE_HELPERS).bounded


@pytest.mark.parametrize("text, words", [
    ("ja -1\nexit", "infinite loop"),
    ("mov r10, 1\nmov r0, 0\nexit", "r10"),
    ("mov r0, 0\ncall 99\nexit", "unknown helper"),
    ("mov r0, 0\njeq r0, 0, +1\nexit\nmov r0, 1", "fall through"),
    ("mov r0, 0\ncall local f\nexit\nf:\nja -4\nexit", "out of bounds"),
])
def test_structural_checks_become_verifier_errors(text, words):
    err = reject(text)
    assert isinstance(err, ProgramError) and words in str(err)
    assert err.index is not None and err.insn_text


def test_stack_proofs():
    p = asm("mov r0, 0\nstxdw [r10-8], r0\nmov r3, r10\nadd r3, -16\nstw [r3+4], 1\n"
            "ldxb r0, [r10-512]\nldxdw r4, [r10-4]\nstb [r10+0], 1\nmov r5, r1\n"
            "ldxb r4, [r5]\nexit")
    info = verify(p, CONFORMANCE_HELPERS)
    assert info.stack_safe == {1: -8, 4: -12, 5: -512}


def test_stack_proofs_join_paths():
    p = asm("mov r0, 0\nmov r3, r10\njeq r1, 0, +1\nadd r3, -8\nstxb [r3-1], r0\nexit")
    assert verify(p, CONFORMANCE_HELPERS).stack_safe == {}
    p = asm("mov r0, 0\nmov r3, r10\nadd r3, -8\njeq r1, 0, +1\nmov r0, 1\nstxb [r3-1], r0\nexit")
    assert verify(p, CONFORMANCE_HELPERS).stack_safe == {5: -9}


def test_unknown_opcodes_are_never_crashes():
    for opcode in range(256):
        if opcode in isa.BY_OPCODE:
            continue
        with pytest.raises(ProgramError):
            verify(Program(isa.encode_slot(opcode, 0, 0, 0, 0) + isa.encode_slot(0x95, 0, 0, 0, 0)),
                   CONFORMANCE_HELPERS)


def test_corpus(conformance_dir):
    """Valid corpus programs pass; load-time error tests are rejected."""
    checked = rejected = 0
    for case in load_corpus([conformance_dir]):
        if case.pyelf is not None or case.events or (case.asm is not None and case.raw is not None):
            continue
        try:
            program = case.program()
        except ProgramError:
            assert case.expect_error, case.name
            continue
        try:
            verify(program, CONFORMANCE_HELPERS)
        except VerifierError as exc:
            assert case.expect_error, f"{case.name}: {exc}"
            rejected += 1
            continue
        assert expected_kind(case) != "load", f"{case.name} should be rejected at load"
        checked += 1
    assert checked > 200 and rejected >= 5


def test_very_long_call_chains_are_rejected_without_deep_recursion():
    lines = ["mov r0, 0", "call local f1", "exit"]
    for k in range(1, 5000):
        lines += [f"f{k}:", "mov r0, 0", f"call local f{k + 1}", "exit"]
    lines += ["f5000:", "mov r0, 1", "exit"]
    err = reject_strict("\n".join(lines))
    assert "too deep" in err.reason
    assert not verify(asm("\n".join(lines)), CONFORMANCE_HELPERS).bounded

"""Assembler and disassembler: syntax, errors and round trips (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hermes import AssemblerError, Program, ProgramError
from hermes.engine import isa
from hermes.engine.asm import assemble
from hermes.engine.disasm import disassemble


def test_corpus_syntax_examples():
    text = """
        mov32 r0, 0
        ldxw r1, [r2+4]
        stxdw [r10-8], r1
        jeq r1, 0x10, +2
        lddw r0, 0x123456789
        call 1
        exit
    """
    code = assemble(text)
    assert len(code) == 8 * 8
    assert code[:8] == isa.encode_slot(0xB4, 0, 0, 0, 0)
    assert code[8:16] == isa.encode_slot(0x61, 1, 2, 4, 0)
    assert code[16:24] == isa.encode_slot(0x7B, 10, 1, -8, 0)
    assert code[24:32] == isa.encode_slot(0x15, 1, 0, 2, 0x10)
    assert code[32:48] == (isa.encode_slot(0x18, 0, 0, 0, 0x23456789)
                           + isa.encode_slot(0, 0, 0, 0, 1))


def test_labels_and_percent_registers():
    code = assemble("""
    start:
        mov %r0, 3
    loop: sub %r0, 1
        jne %r0, 0, loop
        ja done
        mov %r0, 9
    done:
        exit
    """)
    p = Program.from_bytes(code)
    assert p.insns[2].off == -2
    assert p.insns[3].off == 1


def test_call_forms():
    code = assemble("call local f\nexit\nf: mov r0, 1\nexit\ncall %r2\ncallx r3")
    p = Program.from_bytes(code)
    assert p.insns[0].op.form == "call_local" and p.insns[0].imm == 1
    assert p.insns[4].op.form == "callx" and p.insns[4].dst == 2


@pytest.mark.parametrize("text, message", [
    ("frobnicate r1, 2", "unknown mnemonic 'frobnicate'"),
    ("mov r11, 1", "invalid register r11"),
    ("ldxw r1, [r2+40000]", "offset 40000 does not fit in 16 bits"),
    ("mov r1, 0x100000000", "does not fit in 32 bits"),
    ("jeq r1, 1, nowhere", "unknown label 'nowhere'"),
    ("mov r1", "takes 2 operands"),
    ("ldxw r1, r2", "memory operand"),
    ("neg r1, 2", "takes 1 operand"),
    ("mov r1, zz", "invalid number"),
])
def test_assembler_errors_name_the_line(text, message):
    with pytest.raises(AssemblerError, match=message) as info:
        assemble("mov r0, 0\n" + text + "\nexit")
    assert info.value.line == 2


def _fields_for(op: isa.Op, draw, pos: int, starts: list[int]) -> tuple[int, int, int, int]:
    match = dict(op.match)
    zero = set(isa.FORMS[op.form][1])
    reg = st.integers(0, 10)
    dst = 0 if "dst" in zero else draw(reg)
    src = match.get("src", 0 if "src" in zero else draw(reg))
    off = match.get("off", 0 if "off" in zero else draw(st.integers(-(1 << 15), (1 << 15) - 1)))
    imm = match.get("imm", 0 if "imm" in zero else draw(st.integers(-(1 << 31), (1 << 31) - 1)))
    if op.form in ("ja", "jcond_k", "jcond_x"):
        off = draw(st.sampled_from(starts)) - pos - 1
    if op.form in ("gotol", "call_local"):
        imm = draw(st.sampled_from(starts)) - pos - 1
    if op.form == "lddw":
        imm = draw(st.integers(0, (1 << 64) - 1))
    return dst, src, off, imm


@st.composite
def valid_programs(draw) -> bytes:
    ops = draw(st.lists(st.sampled_from(isa.OPS), min_size=1, max_size=24))
    starts, pos = [], 0
    for op in ops:
        starts.append(pos)
        pos += 2 if op.form == "lddw" else 1
    out = bytearray()
    for op, start in zip(ops, starts, strict=True):
        dst, src, off, imm = _fields_for(op, draw, start, starts)
        out += isa.encode(isa.Insn(op, dst, src, off, imm))
    return bytes(out)


@settings(max_examples=400)
@given(valid_programs())
def test_asm_of_disasm_is_identity(code):
    assert assemble(disassemble(code)) == code


@settings(max_examples=200)
@given(valid_programs())
def test_disasm_of_asm_round_trips_text(code):
    text = disassemble(code)
    assert disassemble(assemble(text)) == text


def test_whole_corpus_round_trips(conformance_dir):
    from hermes.conformance import load_corpus
    count = 0
    for case in load_corpus([conformance_dir]):
        if case.asm is None or case.pyelf is not None:
            continue
        try:
            code = assemble(case.asm)
            Program.from_bytes(code)
        except ProgramError:
            continue  # the corpus's deliberately bad programs (r11, jumps into lddw...)
        assert assemble(disassemble(code)) == code, case.name
        count += 1
    assert count > 150

"""The instruction table is consistent and drives encoding and decoding."""
from __future__ import annotations

import pytest

from hermes.engine import isa
from hermes.engine.isa import decode
from hermes.errors import ProgramError


def test_every_row_has_a_known_form_and_doc():
    for op in isa.OPS:
        assert op.form in isa.FORMS, op
        assert op.doc, op


def test_forms_are_strings():
    assert isa.Form.CALL_LOCAL == "call_local" and str(isa.Form.LDX) == "ldx"
    assert {"ldx": 1}[isa.Form.LDX] == 1 and isa.FORMS["ja"] == isa.FORMS[isa.Form.JA]


def test_properties_agree_with_the_encoding():
    for op in isa.OPS:
        cls, code = op.cls, op.opcode & 0xF0
        jmp = cls in (isa.CLS_JMP, isa.CLS_JMP32)
        assert op.is_alu == (cls in (isa.CLS_ALU, isa.CLS_ALU64)), op
        assert op.is_exit == (jmp and code == isa.JMP_EXIT), op
        assert op.is_call == (jmp and code == isa.JMP_CALL), op
        assert op.is_local_call == (op.is_call and dict(op.match).get("src") == 1), op
        assert op.is_jump == (jmp and code == isa.JMP_JA), op
        assert op.is_branch == (jmp and not (op.is_jump or op.is_call or op.is_exit)), op
        assert op.has_target == (op.is_jump or op.is_branch or op.is_local_call), op
        assert (op.target_field is None) == (not op.has_target), op
        assert op.ends_block == (op.is_jump or op.is_branch or op.is_exit or op.is_local_call)
        assert op.is_load == (cls == isa.CLS_LDX), op
        assert op.is_atomic == (op.opcode & 0xE0 == isa.MODE_ATOMIC and cls == isa.CLS_STX), op
        assert op.is_store == (cls in (isa.CLS_ST, isa.CLS_STX) and not op.is_atomic), op
        assert op.mem_base == ("src" if op.is_load else
                               "dst" if op.is_store or op.is_atomic else None), op
        assert op.is_lddw == (op.opcode == isa.OPCODE_LDDW) and op.slots == 1 + op.is_lddw, op
        if op.is_alu and op.form != "end" or op.is_branch:
            assert op.source_x == bool(op.opcode & isa.SRC_X), op
        elif op.is_store:
            assert op.source_x == (cls == isa.CLS_STX), op
        else:
            assert not op.source_x, op


def test_jump_targets_and_base_registers():
    code = decode(isa.encode_slot(isa.CLS_JMP | isa.JMP_JA, 0, 0, 1, 0)
                  + isa.encode_slot(isa.CLS_JMP32 | isa.JMP_JA, 0, 0, 0, -2)
                  + isa.encode_slot(isa.CLS_LDX | isa.MODE_MEM | isa.SIZE_W, 2, 1, 0, 0)
                  + isa.encode_slot(isa.CLS_JMP | isa.JMP_EXIT, 0, 0, 0, 0))
    assert [isa.jump_target(insn, i) for i, insn in enumerate(code)] == [2, 0, None, None]
    assert [insn.base_reg for insn in code] == [None, None, 1, None]


def test_rows_sharing_an_opcode_are_told_apart_by_match():
    for opcode, rows in isa.BY_OPCODE.items():
        keys = [tuple(sorted(r.match)) for r in rows]
        assert len(set(keys)) == len(keys), hex(opcode)


def test_rfc9669_coverage():
    names = {op.mnemonic for op in isa.OPS}
    for base in ("add", "sub", "mul", "div", "sdiv", "mod", "smod", "or", "and", "lsh", "rsh",
                 "arsh", "neg", "xor", "mov"):
        assert base in names and base + "32" in names
    for n in ("movsx864", "movsx1664", "movsx3264", "movsx832", "movsx1632", "le16", "le32",
              "le64", "be16", "be32", "be64", "bswap16", "bswap32", "bswap64", "ja", "gotol",
              "call", "callx", "exit", "lddw", "ldxsb", "ldxsh", "ldxsw", "lock cmpxchg",
              "lock cmpxchg32", "lock xchg", "lock fetch xor32"):
        assert n in names, n
    for j in ("jeq", "jgt", "jge", "jset", "jne", "jsgt", "jsge", "jlt", "jle", "jslt", "jsle"):
        assert j in names and j + "32" in names
    for s in ("b", "h", "w", "dw"):
        assert {"ldx" + s, "st" + s, "stx" + s} <= names


@pytest.mark.parametrize("opcode", [0x20, 0x28, 0x30, 0x40, 0x48, 0x50])
def test_legacy_packet_loads_are_rejected_by_name(opcode):
    code = isa.encode_slot(opcode, 0, 0, 0, 0) + isa.encode_slot(0x95, 0, 0, 0, 0)
    with pytest.raises(ProgramError, match="legacy packet load"):
        decode(code)


@pytest.mark.parametrize("src", [1, 2, 3, 4, 5, 6])
def test_lddw_pseudo_sources_are_decoded_and_rejected_clearly(src):
    code = isa.encode_slot(0x18, 0, src, 0, 0) + isa.encode_slot(0, 0, 0, 0, 0)
    with pytest.raises(ProgramError, match=f"src={src}") as info:
        decode(code)
    assert info.value.index == 0


@pytest.mark.parametrize("code, message, index", [
    (b"\x95" + b"\0" * 6, "multiple of 8", None),
    (b"", "empty", None),
    (isa.encode_slot(0xFF, 0, 0, 0, 0), "unknown opcode 0xff", 0),
    (isa.encode_slot(0x07, 0, 1, 0, 5), "reserved field src", 0),
    (isa.encode_slot(0xB7, 11, 0, 0, 5), "destination register r11", 0),
    (isa.encode_slot(0xBF, 1, 12, 0, 0), "source register r12", 0),
    (isa.encode_slot(0x18, 0, 0, 0, 0), "incomplete lddw", 0),
    (isa.encode_slot(0x05, 0, 0, 5, 0) + isa.encode_slot(0x95, 0, 0, 0, 0), "out of bounds", 0),
    (isa.encode_slot(0xD4, 1, 0, 0, 48), "endian immediate 48", 0),
    (isa.encode_slot(0x3F, 1, 2, 2, 0), "invalid off field 2", 0),
])
def test_decoder_rejections_name_the_instruction(code, message, index):
    with pytest.raises(ProgramError, match=message) as info:
        decode(code)
    assert info.value.index == index


def test_program_of_a_million_instructions_is_rejected():
    with pytest.raises(ProgramError, match="more than the limit"):
        decode(isa.encode_slot(0xB7, 0, 0, 0, 0) * 1_000_000)

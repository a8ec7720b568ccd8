"""Disassembler: decoded instructions back to the assembler's syntax (``asm(disasm(b)) == b``)."""
from __future__ import annotations

from .isa import Insn


def fmt_imm(value: int) -> str:
    """An immediate as text: small values in decimal, large ones in hex (sign kept)."""
    if -4096 < value < 4096:
        return str(value)
    return hex(value) if value >= 0 else "-" + hex(-value)


def _off(value: int) -> str:
    return f"+{value}" if value >= 0 else str(value)


def _mem(reg: int, off: int) -> str:
    return f"[r{reg}{_off(off)}]" if off else f"[r{reg}]"


def format_insn(insn: Insn) -> str:
    """One instruction in assembly syntax (jump targets as relative offsets)."""
    op, d, s, off, imm = insn
    m, form = op.mnemonic, op.form
    if form == "alu_k":
        return f"{m} r{d}, {fmt_imm(imm)}"
    if form == "alu_x":
        return f"{m} r{d}, r{s}"
    if form in ("unary", "end", "callx"):
        return f"{m} r{d}"
    if form == "ja":
        return f"{m} {_off(off)}"
    if form == "gotol":
        return f"{m} {_off(imm)}"
    if form == "jcond_k":
        return f"{m} r{d}, {fmt_imm(imm)}, {_off(off)}"
    if form == "jcond_x":
        return f"{m} r{d}, r{s}, {_off(off)}"
    if form == "call":
        return f"call {imm}"
    if form == "call_local":
        return f"call local {_off(imm)}"
    if form == "exit":
        return "exit"
    if form == "lddw":
        return f"lddw r{d}, {hex(imm)}"
    if form == "ldx":
        return f"{m} r{d}, {_mem(s, off)}"
    if form == "st":
        return f"{m} {_mem(d, off)}, {fmt_imm(imm)}"
    return f"{m} {_mem(d, off)}, r{s}"  # stx, atomic


def disassemble_insns(insns: "list[Insn | None]") -> str:
    """Disassemble a decoded program (``None`` entries are lddw second halves and are skipped)."""
    return "\n".join(format_insn(i) for i in insns if i is not None) + "\n"


def disassemble(code: bytes) -> str:
    """Decode and disassemble raw instruction bytes."""
    from .program import decode
    return disassemble_insns(decode(code))


def listing(insns: "list[Insn | None]", symbols: dict[int, str] | None = None) -> str:
    """An annotated listing: slot index, raw hex and the instruction, with function labels."""
    from .isa import encode
    lines = []
    for i, insn in enumerate(insns):
        if insn is None:
            continue
        if symbols and i in symbols:
            lines.append(f"{symbols[i]}:")
        lines.append(f"{i:6d}:  {encode(insn).hex(' ')[:23]:23s}  {format_insn(insn)}")
    return "\n".join(lines) + "\n"

"""Assembler for the corpus's eBPF assembly dialect (``mov32 r0, 0``, ``ldxw r1, [r2+4]``, ...)."""
from __future__ import annotations

import re

from ..errors import AssemblerError, UsageError
from . import isa
from .isa import Op
from .program import Program

_REG = re.compile(r"%?r(\d+)$")
_MEM = re.compile(r"\[\s*(%?r\d+)\s*(?:([+-])\s*([^\]\s]+)\s*)?\]$")
_LABEL = re.compile(r"[A-Za-z_.][\w.]*$")


def _int(text: str) -> int:
    t = text.strip().replace("_", "")
    try:
        return int(t, 0)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None


def _reg(text: str) -> int:
    m = _REG.match(text.strip())
    if not m:
        raise ValueError(f"expected a register, found {text!r}")
    n = int(m.group(1))
    if n > isa.MAX_REG:
        raise ValueError(f"invalid register r{n} (registers are r0..r10)")
    return n


def _is_reg(text: str) -> bool:
    return bool(_REG.match(text.strip()))


def _imm32(text: str) -> int:
    v = _int(text)
    if not -(1 << 31) <= v < (1 << 32):
        raise ValueError(f"immediate {text} does not fit in 32 bits")
    return v - (1 << 32) if v >= (1 << 31) else v


def _imm64(text: str) -> int:
    v = _int(text)
    if not -(1 << 63) <= v < (1 << 64):
        raise ValueError(f"immediate {text} does not fit in 64 bits")
    return v & 0xFFFFFFFFFFFFFFFF


def _mem(text: str) -> tuple[int, int]:
    m = _MEM.match(text.strip())
    if not m:
        raise ValueError(f"expected a memory operand like [r1+8], found {text!r}")
    reg = _reg(m.group(1))
    off = 0
    if m.group(2):
        off = _int(m.group(3))
        if m.group(2) == "-":
            off = -off
    if not -(1 << 15) <= off < (1 << 15):
        raise ValueError(f"offset {off} does not fit in 16 bits")
    return reg, off


def _split_operands(text: str) -> list[str]:
    text = text.strip()
    return [p.strip() for p in text.split(",")] if text else []


def _strip_comment(line: str) -> str:
    for marker in ("#", ";", "//"):
        pos = line.find(marker)
        if pos >= 0:
            line = line[:pos]
    return line.strip()


def _split_mnemonic(text: str) -> tuple[str, str]:
    """Split ``lock fetch add32 [r1], r2`` into (``lock fetch add32``, ``[r1], r2``)."""
    words = text.split(None, 1)
    mnem = words[0].lower()
    rest = words[1] if len(words) > 1 else ""
    if mnem == "lock":
        parts = rest.split(None, 1)
        mnem += " " + parts[0].lower()
        rest = parts[1] if len(parts) > 1 else ""
        if mnem == "lock fetch":
            parts = rest.split(None, 1)
            mnem += " " + parts[0].lower()
            rest = parts[1] if len(parts) > 1 else ""
    elif mnem == "call":
        parts = rest.split(None, 1)
        if parts and parts[0].lower() == "local":
            mnem = "call local"
            rest = parts[1] if len(parts) > 1 else ""
    return mnem, rest


class _Line:
    __slots__ = ("lineno", "source", "mnem", "operands", "slot")

    def __init__(self, lineno: int, source: str, mnem: str, operands: list[str], slot: int):
        self.lineno, self.source, self.mnem, self.operands, self.slot = \
            lineno, source, mnem, operands, slot


def source_text(data: bytes | bytearray | memoryview, name: str | None = None) -> str:
    """Assembly source bytes as text (UTF-8); anything else is an ``AssemblerError`` naming the
    line, offset and value of the first byte that is not UTF-8."""
    data = bytes(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AssemblerError(f"{name or 'the source'} is not UTF-8 text (byte "
                             f"{data[exc.start]:#04x} at offset {exc.start})", line) from None


def assemble_program(text: str | bytes, *, name: str | None = None) -> Program:
    """Assemble ``text`` into a ``Program`` (validated as every program is); raises
    ``AssemblerError`` naming the line, ``ProgramError`` for code that assembles but is invalid
    (a jump out of the program)."""
    return Program(assemble(text), name=name)


def assemble(text: str | bytes) -> bytes:
    """Assemble ``text`` (or UTF-8 bytes) into instruction bytes; raises ``AssemblerError``
    naming the line."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = source_text(text)
    elif not isinstance(text, str):
        raise UsageError(f"assembly source must be str or bytes, not {type(text).__name__}")
    lines: list[_Line] = []
    labels: dict = {}
    slot = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        while line:
            head, sep, tail = line.partition(":")
            if sep and _LABEL.match(head.strip()) and not head.strip().startswith("["):
                name = head.strip()
                if name in labels:
                    raise AssemblerError(f"label {name!r} defined twice", lineno, raw)
                labels[name] = slot
                line = tail.strip()
                continue
            break
        if not line:
            continue
        mnem, rest = _split_mnemonic(line)
        mnem = isa.ALIASES.get(mnem, mnem)
        if mnem not in isa.BY_MNEMONIC and mnem not in ("call local", "callx"):
            raise AssemblerError(f"unknown mnemonic {mnem!r}", lineno, raw)
        lines.append(_Line(lineno, raw, mnem, _split_operands(rest), slot))
        if mnem == "exit":
            labels.setdefault(_EXITS, []).append(slot)
        slot += 2 if mnem == "lddw" else 1
    out = bytearray()
    for ln in lines:
        try:
            out += _encode_line(ln, labels)
        except ValueError as exc:
            raise AssemblerError(str(exc), ln.lineno, ln.source) from None
    return bytes(out)


_EXITS = "\0exits"


def _target(text: str, labels: dict, slot: int, bits: int) -> int:
    t = text.strip()
    if t in labels:
        rel = labels[t] - slot - 1
    elif t == "exit" and _EXITS in labels:
        # bpf_conformance's dialect: "exit" as a target means the next exit instruction
        later = [e for e in labels[_EXITS] if e > slot] or labels[_EXITS]
        rel = later[0] - slot - 1
    elif t[:1] in "+-" or t[:1].isdigit():
        rel = _int(t)
    else:
        raise ValueError(f"unknown label {t!r}")
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    if not lo <= rel < hi:
        raise ValueError(f"jump offset {rel} does not fit in {bits} bits")
    return rel


def _want(ops: list[str], n: int, mnem: str) -> None:
    if len(ops) != n:
        raise ValueError(f"{mnem} takes {n} operand{'s' if n != 1 else ''}, found {len(ops)}")


def _row(mnem: str, form: str) -> Op:
    for op in isa.BY_MNEMONIC[mnem]:
        if op.form == form:
            return op
    raise ValueError(f"{mnem} has no {form.replace('_', ' ')} form")


def _match(op: Op, name: str, default: int = 0) -> int:
    return dict(op.match).get(name, default)


def _encode_line(ln: _Line, labels: dict[str, int]) -> bytes:
    m, ops, slot = ln.mnem, ln.operands, ln.slot
    if m == "call local":
        _want(ops, 1, m)
        op = _row("call", "call_local")
        return isa.encode_slot(op.opcode, 0, 1, 0, _target(ops[0], labels, slot, 32))
    if m in ("call", "callx") and len(ops) == 1 and _is_reg(ops[0]):
        op = isa.BY_MNEMONIC["callx"][0]
        return isa.encode_slot(op.opcode, _reg(ops[0]), 0, 0, 0)
    rows = isa.BY_MNEMONIC[m]
    form = rows[0].form
    if form in ("alu_k", "alu_x"):
        _want(ops, 2, m)
        dst = _reg(ops[0])
        if _is_reg(ops[1]):
            op = _row(m, "alu_x")
            return isa.encode_slot(op.opcode, dst, _reg(ops[1]), _match(op, "off"), 0)
        op = _row(m, "alu_k")
        return isa.encode_slot(op.opcode, dst, 0, _match(op, "off"), _imm32(ops[1]))
    if form in ("jcond_k", "jcond_x"):
        _want(ops, 3, m)
        dst = _reg(ops[0])
        off = _target(ops[2], labels, slot, 16)
        if _is_reg(ops[1]):
            op = _row(m, "jcond_x")
            return isa.encode_slot(op.opcode, dst, _reg(ops[1]), off, 0)
        op = _row(m, "jcond_k")
        return isa.encode_slot(op.opcode, dst, 0, off, _imm32(ops[1]))
    op = rows[0]
    if form == "unary":
        _want(ops, 1, m)
        return isa.encode_slot(op.opcode, _reg(ops[0]), 0, 0, 0)
    if form == "end":
        _want(ops, 1, m)
        return isa.encode_slot(op.opcode, _reg(ops[0]), 0, 0, _match(op, "imm"))
    if form == "ja":
        _want(ops, 1, m)
        return isa.encode_slot(op.opcode, 0, 0, _target(ops[0], labels, slot, 16), 0)
    if form == "gotol":
        _want(ops, 1, m)
        return isa.encode_slot(op.opcode, 0, 0, 0, _target(ops[0], labels, slot, 32))
    if form == "call":
        _want(ops, 1, m)
        return isa.encode_slot(op.opcode, 0, 0, 0, _imm32(ops[0]))
    if form == "callx":
        _want(ops, 1, m)
        return isa.encode_slot(op.opcode, _reg(ops[0]), 0, 0, 0)
    if form == "exit":
        _want(ops, 0, m)
        return isa.encode_slot(op.opcode, 0, 0, 0, 0)
    if form == "lddw":
        _want(ops, 2, m)
        value = _imm64(ops[1])
        return (isa.encode_slot(op.opcode, _reg(ops[0]), 0, 0, value & 0xFFFFFFFF)
                + isa.encode_slot(0, 0, 0, 0, value >> 32))
    if form == "ldx":
        _want(ops, 2, m)
        src, off = _mem(ops[1])
        return isa.encode_slot(op.opcode, _reg(ops[0]), src, off, 0)
    if form == "st":
        _want(ops, 2, m)
        dst, off = _mem(ops[0])
        return isa.encode_slot(op.opcode, dst, 0, off, _imm32(ops[1]))
    if form in ("stx", "atomic"):
        _want(ops, 2, m)
        dst, off = _mem(ops[0])
        return isa.encode_slot(op.opcode, dst, _reg(ops[1]), off, _match(op, "imm"))
    raise ValueError(f"cannot assemble {m!r}")  # pragma: no cover - every form is handled

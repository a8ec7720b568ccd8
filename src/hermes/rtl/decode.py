"""Instruction decode for the RTL core: slot fields and the load contract's validity checks."""
# no ``from __future__ import annotations``: wiring reads the port annotations as objects

from amaranth.hdl import Cat, Const, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..engine import isa


def valid_opcodes() -> int:
    """256-bit mask of the opcode bytes the instruction table defines (bit n = opcode n)."""
    mask = 0
    for opcode in isa.BY_OPCODE:
        mask |= 1 << opcode
    return mask


def match_rules() -> dict[int, tuple[str, set[int]]]:
    """Per opcode, the field (``off``, ``imm`` or ``src``) and the values of it that select one
    of its table rows; opcodes with a row matching any value are absent."""
    rules: dict[int, tuple[str, set[int]]] = {}
    for opcode, rows in isa.BY_OPCODE.items():
        if not all(row.match for row in rows):
            continue  # some row of this opcode matches any field value
        names = {name for row in rows for name, _ in row.match}
        if len(names) != 1:
            continue
        (name,) = names
        rules[opcode] = (name, {value for row in rows for _, value in row.match})
    return rules


class Decoder(wiring.Component):
    """Splits one instruction slot into its fields and says whether the core may run it.

    Purely combinational.

    * ``insn`` (in, 64): the slot as the instruction memory holds it (little-endian fields).
    * ``opcode``, ``dst``, ``src``: the opcode byte and the two register numbers.
    * ``off`` (signed 16) and ``imm`` (signed 32): the offset and immediate fields.
    * ``cls`` (opcode bits 2..0), ``srcx`` (bit 3: register operand), ``op`` (bits 7..4: the ALU
      or jump operation), ``mode`` (bits 7..5: the memory mode), ``size`` (bits 4..3).
    * ``nbytes``: the access width in bytes that ``size`` selects (1, 2, 4 or 8).
    * ``valid``: the opcode is a row of the instruction table, the field that selects between an
      opcode's rows (``off``, ``imm`` or ``src``) holds one of the table's values, both registers
      exist (r0..r10) and the instruction does not write r10.
    """

    insn: In(64)
    opcode: Out(8)
    dst: Out(4)
    src: Out(4)
    off: Out(signed(16))
    imm: Out(signed(32))
    cls: Out(3)
    srcx: Out(1)
    op: Out(4)
    mode: Out(3)
    size: Out(2)
    nbytes: Out(4)
    valid: Out(1)

    def elaborate(self, platform: object) -> Module:
        """Build the field split and the validity checks."""
        m = Module()
        insn, opcode = self.insn, self.opcode
        m.d.comb += [
            opcode.eq(insn[0:8]), self.dst.eq(insn[8:12]), self.src.eq(insn[12:16]),
            self.off.eq(insn[16:32]), self.imm.eq(insn[32:64]),
            self.cls.eq(opcode[0:3]), self.srcx.eq(opcode[3]), self.op.eq(opcode[4:8]),
            self.mode.eq(opcode[5:8]), self.size.eq(opcode[3:5]),
        ]
        with m.Switch(self.size):
            for sz, n in isa.SIZE_BYTES.items():
                with m.Case(sz >> 3):
                    m.d.comb += self.nbytes.eq(n)

        op_known = Const(valid_opcodes(), 256).bit_select(opcode, 1)
        # 1 unless the opcode has selecting values and its selecting field holds none of them
        match_ok = Signal()
        m.d.comb += match_ok.eq(1)
        field_of = {"off": insn[16:32], "imm": insn[32:64], "src": self.src}
        with m.Switch(opcode):
            for opc, (name, values) in sorted(match_rules().items()):
                with m.Case(opc):
                    sig = field_of[name]
                    mask = (1 << len(sig)) - 1
                    m.d.comb += match_ok.eq(Cat(*[sig == (v & mask) for v in sorted(values)]).any())
        cls, dst, src = self.cls, self.dst, self.src
        writes_reg = ((cls == isa.CLS_ALU) | (cls == isa.CLS_ALU64) | (cls == isa.CLS_LDX)
                      | (cls == isa.CLS_LD))
        reg_ok = (dst <= 10) & (src <= 10) & ~(writes_reg & (dst == 10))
        # the ALU32 movsx32 row does not exist although its opcode and off value do
        movsx32_32 = (opcode == (isa.CLS_ALU | isa.ALU_MOV | isa.SRC_X)) & (insn[16:32] == 32)
        m.d.comb += self.valid.eq(op_known & match_ok & reg_ok & ~movsx32_32)
        return m

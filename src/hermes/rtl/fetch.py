"""Instruction fetch for the RTL core: the instruction memory and the next-slot computation."""
from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..engine import isa


class Fetch(wiring.Component):
    """The instruction memory: one 64-bit slot a word, one synchronous read and one write port.

    * ``addr`` (in, ``pc_bits``): the slot to read; it is on ``insn`` in the next cycle.
    * ``insn`` (out, 64): the slot read.
    * ``waddr`` (in, ``pc_bits``), ``wdata`` (in, 64), ``we`` (in): write one slot (the host
      loading a program).

    ``imem`` is the ``amaranth.lib.memory.Memory``; ``code`` gives its initial contents.
    """

    def __init__(self, *, depth: int, code: bytes = b""):
        pc_bits = (depth - 1).bit_length()
        super().__init__({"addr": In(pc_bits), "insn": Out(64), "waddr": In(pc_bits),
                          "wdata": In(64), "we": In(1)})
        words = [int.from_bytes(code[i:i + 8], "little") for i in range(0, len(code), 8)]
        self.imem = Memory(shape=64, depth=depth, init=words)

    def elaborate(self, platform: object) -> Module:
        """Connect the memory's ports."""
        m = Module()
        m.submodules.imem = self.imem
        rd = self.imem.read_port()
        wr = self.imem.write_port()
        m.d.comb += [
            rd.addr.eq(self.addr), self.insn.eq(rd.data),
            wr.addr.eq(self.waddr), wr.data.eq(self.wdata), wr.en.eq(self.we),
        ]
        return m


class Branch(wiring.Component):
    """Where a jump or call goes and whether a conditional jump is taken (combinational).

    * ``op`` (in, 4): the jump operation (opcode bits 7..4, ``isa.JMP_* >> 4``).
    * ``jmp32`` (in): the JMP32 class (compare the low 32 bits; ``ja`` takes its offset from
      ``imm``).
    * ``a`` (in, 64): the destination register; ``b`` (in, 64): the source register or the
      sign-extended immediate.
    * ``pc`` (in, ``pc_bits``), ``off`` (in, signed 16), ``imm`` (in, signed 32): the jump's slot
      and fields.
    * ``taken`` (out): the condition holds (always for ``ja``).
    * ``next`` (out, ``pc_bits + 1``): ``pc + 1``, the fall-through slot.
    * ``target`` (out, signed): ``pc + 1 + off``, or ``pc + 1 + imm`` for ``call`` and the
      JMP32 ``ja``; it may lie outside the program (the core checks).
    """

    def __init__(self, *, pc_bits: int):
        super().__init__({
            "op": In(4), "jmp32": In(1), "a": In(64), "b": In(64), "pc": In(pc_bits),
            "off": In(signed(16)), "imm": In(signed(32)), "taken": Out(1),
            "next": Out(pc_bits + 1), "target": Out(signed(pc_bits + 34)),
        })

    def elaborate(self, platform: object) -> Module:
        """Build the comparisons and the target adder."""
        m = Module()
        j32, a, b = self.jmp32, self.a, self.b
        ca = Mux(j32, a[0:32], a)
        cb = Mux(j32, b[0:32], b)
        cas = Mux(j32, a[0:32].as_signed(), a.as_signed())
        cbs = Mux(j32, b[0:32].as_signed(), b.as_signed())
        eq = ca == cb
        gtu = ca > cb
        gts = cas > cbs
        with m.Switch(self.op):
            for jcode, expr in (
                    (isa.JMP_JA, Const(1)), (isa.JMP_JEQ, eq), (isa.JMP_JGT, gtu),
                    (isa.JMP_JGE, gtu | eq), (isa.JMP_JSET, (ca & cb) != 0), (isa.JMP_JNE, ~eq),
                    (isa.JMP_JSGT, gts), (isa.JMP_JSGE, gts | eq), (isa.JMP_JLT, ~(gtu | eq)),
                    (isa.JMP_JLE, ~gtu), (isa.JMP_JSLT, ~(gts | eq)), (isa.JMP_JSLE, ~gts)):
                with m.Case(jcode >> 4):
                    m.d.comb += self.taken.eq(expr)
        use_imm = j32 & (self.op == (isa.JMP_JA >> 4)) | (self.op == (isa.JMP_CALL >> 4))
        m.d.comb += [
            self.next.eq(self.pc + 1),
            self.target.eq(self.next + Mux(use_imm, self.imm, self.off)),
        ]
        return m

"""Arithmetic of the RTL core: the one-cycle ALU, the iterative divider, the atomic operations."""
# no ``from __future__ import annotations``: wiring reads the port annotations as objects

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..engine import isa


def _bswap(value, nbytes: int):
    """Byte-reverse the low ``nbytes`` bytes of ``value``."""
    return Cat(*[value[8 * i:8 * i + 8] for i in reversed(range(nbytes))])


class Alu(wiring.Component):
    """The ALU and ALU64 classes' operations but the divide and modulo, in one combinational step.

    * ``op`` (in, 4): the operation (opcode bits 7..4, ``isa.ALU_* >> 4``).
    * ``wide`` (in): 1 for the ALU64 class (64-bit operation), 0 for ALU (32-bit).
    * ``srcx`` (in): the opcode's register-operand bit; for ``end`` it selects big-endian.
    * ``off`` (in, 16), ``imm`` (in, 32): the instruction's fields, which select the sign
      extension of ``movsx`` (``off``) and the width of ``end``/``bswap`` (``imm``).
    * ``a`` (in, 64): the destination register; ``b`` (in, 64): the source operand (the source
      register or the sign-extended immediate).
    * ``result`` (out, 64): the value written to the destination; a 32-bit operation's result is
      zero-extended. A divide gives 0 and a modulo gives ``a``: the values for a zero divisor,
      the only case the core takes from here.
    * ``divides`` (out): the operation is a divide or modulo by a divisor that is not zero at the
      operation's width, so the ``Divider`` computes it.
    """

    op: In(4)
    wide: In(1)
    srcx: In(1)
    off: In(16)
    imm: In(32)
    a: In(64)
    b: In(64)
    result: Out(64)
    divides: Out(1)

    def elaborate(self, platform: object) -> Module:
        """Build the operation switch."""
        m = Module()
        a, b, wide = self.a, self.b, self.wide
        a_w = Signal(64)     # a at the operation width, zero-extended
        a_ws = Signal(64)    # ... and sign-extended
        b_w = Signal(64)
        m.d.comb += [a_w.eq(Mux(wide, a, a[0:32])), a_ws.eq(Mux(wide, a, a[0:32].as_signed())),
                     b_w.eq(Mux(wide, b, b[0:32]))]
        sh = Mux(wide, b[0:6], b[0:5])
        res = Signal(64)
        with m.Switch(self.op):
            with m.Case(isa.ALU_ADD >> 4):
                m.d.comb += res.eq(a + b)
            with m.Case(isa.ALU_SUB >> 4):
                m.d.comb += res.eq(a - b)
            with m.Case(isa.ALU_MUL >> 4):
                m.d.comb += res.eq(a * b)
            with m.Case(isa.ALU_OR >> 4):
                m.d.comb += res.eq(a | b)
            with m.Case(isa.ALU_AND >> 4):
                m.d.comb += res.eq(a & b)
            with m.Case(isa.ALU_XOR >> 4):
                m.d.comb += res.eq(a ^ b)
            with m.Case(isa.ALU_LSH >> 4):
                m.d.comb += res.eq(a << sh)
            with m.Case(isa.ALU_RSH >> 4):
                m.d.comb += res.eq(a_w >> sh)
            with m.Case(isa.ALU_ARSH >> 4):
                m.d.comb += res.eq(a_ws.as_signed() >> sh)
            with m.Case(isa.ALU_NEG >> 4):
                m.d.comb += res.eq(-a)
            with m.Case(isa.ALU_MOV >> 4):
                with m.Switch(self.off):
                    for bits in (8, 16, 32):
                        with m.Case(bits):
                            m.d.comb += res.eq(b[0:bits].as_signed())
                    with m.Default():
                        m.d.comb += res.eq(b)
            with m.Case(isa.ALU_END >> 4):
                swap = self.srcx | wide   # be (ALU class, X) and bswap (ALU64) reverse bytes
                with m.Switch(self.imm):
                    for bits in (16, 32):
                        with m.Case(bits):
                            m.d.comb += res.eq(Mux(swap, _bswap(a, bits // 8), a[0:bits]))
                    with m.Default():
                        m.d.comb += res.eq(Mux(swap, _bswap(a, 8), a))
            with m.Case(isa.ALU_DIV >> 4):
                m.d.comb += res.eq(0)
            with m.Case(isa.ALU_MOD >> 4):
                m.d.comb += res.eq(a)
        # end's width comes from imm, not from the class
        trunc32 = ~wide & (self.op != (isa.ALU_END >> 4))
        is_divmod = (self.op == (isa.ALU_DIV >> 4)) | (self.op == (isa.ALU_MOD >> 4))
        m.d.comb += [
            self.result.eq(Mux(trunc32, res[0:32], res)),
            self.divides.eq(is_divmod & (b_w != 0)),
        ]
        return m


class Divider(wiring.Component):
    """Restoring division, two quotient bits a cycle: 32 cycles for 64 bits, 16 for 32.

    * ``start`` (in): latch ``a``, ``b``, ``wide``, ``signed`` and ``mod`` and begin; ``b`` must
      not be zero at the operation's width.
    * ``a`` (in, 64): the dividend; ``b`` (in, 64): the divisor (the ALU's operands).
    * ``wide`` (in): 64-bit operation (else the low 32 bits of both, result zero-extended).
    * ``signed`` (in): ``sdiv``/``smod`` (the instruction's ``off`` is 1): the quotient truncates
      toward zero and the remainder takes the dividend's sign.
    * ``mod`` (in): give the remainder instead of the quotient.
    * ``busy`` (out): steps remain; ``result`` (out, 64) holds the answer once it falls.
    """

    start: In(1)
    a: In(64)
    b: In(64)
    wide: In(1)
    signed: In(1)
    mod: In(1)
    busy: Out(1)
    result: Out(64)

    def elaborate(self, platform: object) -> Module:
        """Build the divider's registers and its two restoring steps."""
        m = Module()
        rem = Signal(65)
        quo = Signal(64)
        dvd = Signal(64)
        dvs = Signal(64)
        count = Signal(7)
        neg_q = Signal()
        neg_r = Signal()
        mod = Signal()
        narrow = Signal()
        a_ws = Signal(64)    # the operands at the operation width, sign-extended
        b_ws = Signal(64)
        m.d.comb += [a_ws.eq(Mux(self.wide, self.a, self.a[0:32].as_signed())),
                     b_ws.eq(Mux(self.wide, self.b, self.b[0:32].as_signed()))]
        abs_a = Mux(self.signed & a_ws[63], -a_ws, a_ws)
        abs_b = Mux(self.signed & b_ws[63], -b_ws, b_ws)
        rem_n, quo_n, dvd_n = rem, quo, dvd
        for _ in range(2):
            trial = Cat(dvd_n[63], rem_n[0:64])
            ge = trial >= dvs
            rem_n = Mux(ge, trial - dvs, trial)[0:65]
            quo_n = Cat(ge, quo_n[0:63])
            dvd_n = Cat(Const(0, 1), dvd_n[0:63])
        with m.If(self.start):
            m.d.sync += [
                rem.eq(0), quo.eq(0), dvs.eq(Mux(self.wide, abs_b, abs_b[0:32])),
                # a 32-bit dividend sits in the high half, so 16 steps bring it all in
                dvd.eq(Mux(self.wide, abs_a, Cat(Const(0, 32), abs_a[0:32]))),
                count.eq(Mux(self.wide, 32, 16)),
                neg_q.eq(self.signed & (a_ws[63] ^ b_ws[63])), neg_r.eq(self.signed & a_ws[63]),
                mod.eq(self.mod), narrow.eq(~self.wide),
            ]
        with m.Elif(count != 0):
            m.d.sync += [rem.eq(rem_n), quo.eq(quo_n), dvd.eq(dvd_n), count.eq(count - 1)]
        q_fix = Mux(neg_q, -quo, quo)[0:64]
        r_fix = Mux(neg_r, -rem[0:64], rem[0:64])[0:64]
        res = Mux(mod, r_fix, q_fix)
        m.d.comb += [self.busy.eq(count != 0), self.result.eq(Mux(narrow, res[0:32], res))]
        return m


class AtomicAlu(wiring.Component):
    """The value an atomic instruction stores, from the memory's old value (combinational).

    * ``op`` (in, 8): the instruction's ``imm`` low byte (``isa.ATOMIC_*``, with or without
      ``ATOMIC_FETCH``).
    * ``old`` (in, 64): the value read from memory; ``operand`` (in, 64): the source register.
    * ``expected`` (in, 64): r0, which ``cmpxchg`` compares with ``old``.
    * ``word`` (in): a 32-bit access (``cmpxchg`` compares the low halves only).
    * ``new`` (out, 64): the value to store.
    """

    op: In(8)
    old: In(64)
    operand: In(64)
    expected: In(64)
    word: In(1)
    new: Out(64)

    def elaborate(self, platform: object) -> Module:
        """Build the operation select."""
        m = Module()
        old, operand, new = self.old, self.operand, self.new
        cmp_eq = Mux(self.word, old[0:32] == self.expected[0:32], old == self.expected)
        base = self.op & (0xFF ^ isa.ATOMIC_FETCH)
        with m.If(self.op == isa.ATOMIC_XCHG):
            m.d.comb += new.eq(operand)
        with m.Elif(self.op == isa.ATOMIC_CMPXCHG):
            m.d.comb += new.eq(Mux(cmp_eq, operand, old))
        with m.Elif(base == isa.ATOMIC_ADD):
            m.d.comb += new.eq(old + operand)
        with m.Elif(base == isa.ATOMIC_OR):
            m.d.comb += new.eq(old | operand)
        with m.Elif(base == isa.ATOMIC_AND):
            m.d.comb += new.eq(old & operand)
        with m.Else():
            m.d.comb += new.eq(old ^ operand)
        return m

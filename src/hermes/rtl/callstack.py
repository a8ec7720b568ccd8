"""The RTL core's call stack: return slots and callee-saved registers of the active local calls."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..engine.memory import MAX_CALL_DEPTH, STACK_SIZE, STACK_TOP


class CallStack(wiring.Component):
    """One entry per active local call: the slot to return to and the caller's r6..r9.

    * ``clear`` (in): empty the stack (a run starts).
    * ``push`` (in): enter a call: store ``ret`` (in, ``pc_bits``) and ``saved`` (in, 256: r6 in
      bits 63..0 up to r9) as a new entry. The caller checks ``full`` first.
    * ``pop`` (in): return from a call: drop the top entry. The caller checks ``depth`` first.
    * ``depth`` (out): active calls (0 in the program's entry function).
    * ``full`` (out): ``depth`` is ``MAX_CALL_DEPTH - 1``: one more call exceeds the limit.
    * ``top_ret`` (out, ``pc_bits``), ``top_saved`` (out, 256): the top entry (read
      combinationally, valid while ``depth`` > 0).
    * ``frame`` (out, 64): r10 of the current function, the top of its stack frame.

    ``clear``, ``push`` and ``pop`` act at the clock edge, one at a time.
    """

    def __init__(self, *, pc_bits: int):
        super().__init__({
            "clear": In(1), "push": In(1), "pop": In(1), "ret": In(pc_bits), "saved": In(256),
            "depth": Out(range(MAX_CALL_DEPTH)), "full": Out(1), "top_ret": Out(pc_bits),
            "top_saved": Out(256), "frame": Out(64),
        })
        self.pc_bits = pc_bits
        self.rstack = Memory(shape=pc_bits + 256, depth=MAX_CALL_DEPTH, init=[])

    def elaborate(self, platform: object) -> Module:
        """Build the entry memory and the depth counter."""
        m = Module()
        m.submodules.rstack = self.rstack
        rd = self.rstack.read_port(domain="comb")
        wr = self.rstack.write_port()
        depth, pcw = self.depth, self.pc_bits
        m.d.comb += [
            rd.addr.eq(depth - 1), self.top_ret.eq(rd.data[0:pcw]),
            self.top_saved.eq(rd.data[pcw:]),
            wr.addr.eq(depth), wr.data.eq(Cat(self.ret, self.saved)), wr.en.eq(self.push),
            self.full.eq(depth == MAX_CALL_DEPTH - 1),
            self.frame.eq(Const(STACK_TOP, 64) - depth * STACK_SIZE),
        ]
        with m.If(self.clear):
            m.d.sync += depth.eq(0)
        with m.Elif(self.push):
            m.d.sync += depth.eq(depth + 1)
        with m.Elif(self.pop):
            m.d.sync += depth.eq(depth - 1)
        return m

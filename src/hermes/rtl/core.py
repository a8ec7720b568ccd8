"""The eBPF processor core in Amaranth HDL: the register file and the control over its parts."""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..engine import isa
from ..engine.memory import DATA_BASE
from ..regs import (
    EBPF_ERR_BUDGET,
    EBPF_ERR_CALL_DEPTH,
    EBPF_ERR_LOAD,
    EBPF_ERR_OUT_OF_BOUNDS,
    EBPF_ERR_UNSUPPORTED,
)
from .alu import Alu, AtomicAlu, Divider
from .callstack import CallStack
from .decode import Decoder
from .fetch import Branch, Fetch
from .lsu import STACK_BYTES, STACK_LO, LoadStore

__all__ = ["STACK_BYTES", "STACK_LO", "EbpfCore"]


class EbpfCore(wiring.Component):
    """One eBPF engine: runs the program in its instruction memory against its data memory.

    Interface (all synchronous to the ``sync`` domain):

    * ``start`` (pulse while idle) runs the program of ``prog_len`` slots with ``data_len`` bytes
      of data memory; ``data_present`` selects r1 = DATA_BASE, r2 = data_len (else r1 = r2 = 0);
      ``budget`` bounds the instructions executed.
    * ``busy`` is high from the cycle after ``start`` until the run ends; ``done`` pulses once at
      the end with ``r0``, ``error`` (1 when the run failed) and ``error_code`` (kind in bits 7..0,
      the faulting pc in bits 8 and up; see ``hermes.regs.EBPF_ERR_*``), ``instructions`` and
      ``cycles`` of the run.
    * ``abort`` (level) stops a run at the next instruction boundary: the instruction at ``pc``
      is not executed, ``done`` pulses with ``aborted`` set (``error`` clear) and ``pc`` names
      that instruction. A multi-cycle instruction (load, atomic, lddw, div/mod) finishes first,
      so a run stops at most 34 cycles after ``abort`` rises.
    * ``host_*`` ports write the instruction memory and read/write the data memory (64-bit words,
      byte enables, one cycle read latency); they act only while the core is idle.
    * ``code``/``data`` optionally give the memories initial contents.
    * ``forward_loads`` (a build variant): loads retire in their execute cycle and write their
      register in the next one, whose instruction receives the value straight from the memory
      read port (one cycle a load instead of two, at the cost of a longer combinational path).

    The core is the register file and the control state machine (one instruction a cycle in
    ``EXEC``; ``LOAD``, ``ATOMIC``, ``LDDW`` and ``DIV`` finish the multi-cycle ones) over its
    parts, each a submodule with its own documented ports: ``fetch`` (the instruction memory,
    ``imem``), ``decoder``, ``alu``, ``divider``, ``atomic``, ``branch``, ``lsu`` (the data and
    stack memories, ``dmem[0..1]`` and ``smem[0..1]``) and ``calls`` (the call stack,
    ``rstack``).
    """

    def __init__(self, *, imem_depth: int = 1024, dmem_bytes: int = 4096, code: bytes = b"",
                 data: bytes = b"", forward_loads: bool = False):
        if imem_depth < 2 or imem_depth & (imem_depth - 1):
            raise ValueError("imem_depth must be a power of two >= 2")
        if dmem_bytes < 16 or dmem_bytes & (dmem_bytes - 1):
            raise ValueError("dmem_bytes must be a power of two >= 16")
        self.imem_depth = imem_depth
        self.dmem_bytes = dmem_bytes
        self.forward_loads = forward_loads
        self.pc_bits = (imem_depth - 1).bit_length()
        self.dword_bits = (dmem_bytes // 8 - 1).bit_length()
        super().__init__({
            "start": In(1),
            "prog_len": In(self.pc_bits + 1),
            "data_len": In(self.dword_bits + 4),
            "data_present": In(1),
            "budget": In(64),
            "busy": Out(1),
            "done": Out(1),
            "r0": Out(64),
            "error": Out(1),
            "error_code": Out(64),
            "instructions": Out(64),
            "cycles": Out(64),
            "abort": In(1),
            "aborted": Out(1),
            "pc": Out(self.pc_bits),
            "host_imem_addr": In(self.pc_bits),
            "host_imem_wdata": In(64),
            "host_imem_we": In(1),
            "host_dmem_addr": In(self.dword_bits),
            "host_dmem_wdata": In(64),
            "host_dmem_we": In(8),
            "host_dmem_rdata": Out(64),
        })
        if len(code) > 8 * imem_depth or len(data) > dmem_bytes:
            raise ValueError("initial code or data larger than its memory")
        self.fetch = Fetch(depth=imem_depth, code=code)
        self.decoder = Decoder()
        self.alu = Alu()
        self.divider = Divider()
        self.atomic = AtomicAlu()
        self.branch = Branch(pc_bits=self.pc_bits)
        self.lsu = LoadStore(dmem_bytes=dmem_bytes, data=data)
        self.calls = CallStack(pc_bits=self.pc_bits)
        # the memories, for a simulation's testbench to load and inspect
        self.imem = self.fetch.imem
        self.dmem = self.lsu.dmem
        self.smem = self.lsu.smem
        self.rstack = self.calls.rstack
        self.regs = [Signal(64, name=f"r{i}") for i in range(10)]

    def elaborate(self, platform: object) -> Module:  # noqa: C901 - the control state machine
        """Compose the parts and build the register file and the control state machine."""
        m = Module()
        fetch, dec, alu, div, atomic = self.fetch, self.decoder, self.alu, self.divider, self.atomic
        branch, lsu, calls = self.branch, self.lsu, self.calls
        for name in ("fetch", "decoder", "alu", "divider", "atomic", "branch", "lsu", "calls"):
            m.submodules[name] = getattr(self, name)

        pcw = self.pc_bits
        regs = self.regs
        pc = Signal(pcw)
        npc_hold = Signal(pcw)     # next slot while a multi-cycle instruction finishes
        instret = Signal(64)
        cycles = Signal(64)

        m.d.comb += dec.insn.eq(fetch.insn)
        cls, op, dst, src = dec.cls, dec.op, dec.dst, dec.src
        imm64 = Signal(64)
        m.d.comb += imm64.eq(dec.imm)

        # Register values as the executing instruction sees them: with ``forward_loads`` a load
        # writes its register in the cycle after its execute cycle, and that cycle's instruction
        # (already executing) gets the loaded value forwarded from the memory read port.
        fwd = [Signal(64, name=f"rf{i}") for i in range(10)]
        pl_valid = Signal()   # a forwarded load's value is on the read ports this cycle
        rview = Array(fwd + [calls.frame] * 6)
        dval = Signal(64)
        sval = Signal(64)
        b = Signal(64)        # the second operand: the source register or the immediate
        m.d.comb += [dval.eq(rview[dst]), sval.eq(rview[src]), b.eq(Mux(dec.srcx, sval, imm64))]

        is_alu = (cls == isa.CLS_ALU) | (cls == isa.CLS_ALU64)
        is64 = cls == isa.CLS_ALU64
        is32j = cls == isa.CLS_JMP32
        is_ldx = cls == isa.CLS_LDX
        is_atomic = (cls == isa.CLS_STX) & (dec.mode == (isa.MODE_ATOMIC >> 5))
        m.d.comb += [
            alu.op.eq(op), alu.wide.eq(is64), alu.srcx.eq(dec.srcx), alu.off.eq(dec.off),
            alu.imm.eq(dec.imm), alu.a.eq(dval), alu.b.eq(b),
            div.a.eq(dval), div.b.eq(b), div.wide.eq(is64), div.signed.eq(dec.off[0]),
            div.mod.eq(op == (isa.ALU_MOD >> 4)),
            branch.op.eq(op), branch.jmp32.eq(is32j), branch.a.eq(dval), branch.b.eq(b),
            branch.pc.eq(pc), branch.off.eq(dec.off), branch.imm.eq(dec.imm),
            lsu.base.eq(Mux(is_ldx, sval, dval)), lsu.off.eq(dec.off), lsu.nbytes.eq(dec.nbytes),
            lsu.data_len.eq(self.data_len), lsu.depth.eq(calls.depth),
            lsu.sign_extend.eq(dec.mode == (isa.MODE_MEMSX >> 5)),
            calls.ret.eq(branch.next[0:pcw]), calls.saved.eq(Cat(*fwd[6:10])),
        ]
        pc1 = branch.next
        divides = is_alu & alu.divides
        multi_cycle = (divides | (cls == isa.CLS_LD) | is_atomic
                       | (is_ldx if not self.forward_loads else Const(0)))

        # what the second cycle of a load, atomic or lddw needs of its instruction
        l_dst = Signal(4)
        l_src = Signal(4)
        l_aimm = Signal(8)
        l_sval = Signal(64)
        l_r0 = Signal(64)
        dv_dst = Signal(4)
        loaded = lsu.loaded
        m.d.comb += [atomic.op.eq(l_aimm), atomic.old.eq(loaded), atomic.operand.eq(l_sval),
                     atomic.expected.eq(l_r0), atomic.word.eq(lsu.lnbytes == 4)]

        # ------------------------------------------------------------------ outputs
        r0_out = Signal(64)
        err = Signal()
        err_code = Signal(64)
        done = Signal()
        aborted = Signal()
        m.d.comb += [
            self.r0.eq(r0_out), self.error.eq(err), self.error_code.eq(err_code),
            self.done.eq(done), self.aborted.eq(aborted), self.pc.eq(pc),
            self.instructions.eq(instret), self.cycles.eq(cycles),
        ]
        m.d.sync += [done.eq(0), pl_valid.eq(0)]
        for i in range(10):
            if self.forward_loads:
                m.d.comb += fwd[i].eq(Mux(pl_valid & (l_dst == i), loaded, regs[i]))
            else:
                m.d.comb += fwd[i].eq(regs[i])

        def trap(kind: int, at=pc):
            m.d.sync += [err.eq(1), err_code.eq(kind | (at << 8)), done.eq(1)]
            m.next = "IDLE"

        def wreg(idx, value):
            m.d.sync += Array(regs)[idx].eq(value)

        # host access (only while idle: otherwise the core owns every port)
        host = Signal()
        m.d.comb += [
            fetch.waddr.eq(self.host_imem_addr), fetch.wdata.eq(self.host_imem_wdata),
            fetch.we.eq(host & self.host_imem_we),
            lsu.host.eq(host), lsu.host_addr.eq(self.host_dmem_addr),
            lsu.host_wdata.eq(self.host_dmem_wdata), lsu.host_we.eq(self.host_dmem_we),
            self.host_dmem_rdata.eq(lsu.host_rdata),
        ]

        with m.FSM(name="state"):
            with m.State("IDLE"):
                m.d.comb += [host.eq(1), fetch.addr.eq(0)]
                with m.If(self.start):
                    m.d.comb += [calls.clear.eq(1), lsu.clear.eq(1)]
                    m.d.sync += [
                        pc.eq(0), instret.eq(0), cycles.eq(0), err.eq(0), err_code.eq(0),
                        aborted.eq(0),
                    ]
                    for i, r in enumerate(regs):
                        if i == 1:
                            m.d.sync += r.eq(Mux(self.data_present, DATA_BASE, 0))
                        elif i == 2:
                            m.d.sync += r.eq(Mux(self.data_present, self.data_len, 0))
                        else:
                            m.d.sync += r.eq(0)
                    m.next = "EXEC"

            with m.State("EXEC"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                if self.forward_loads:
                    # the previous instruction's load lands first; this instruction's own
                    # register write (a later statement) wins when both name the same register
                    with m.If(pl_valid):
                        wreg(l_dst, loaded)
                # default: fall through to the next slot
                m.d.comb += fetch.addr.eq(pc1)
                retire = Signal()
                jump_to = Signal(signed(pcw + 34))
                m.d.comb += jump_to.eq(pc1)
                with m.If(self.abort):
                    # every EXEC cycle is an instruction boundary: stop before the one at pc
                    m.d.sync += [aborted.eq(1), done.eq(1)]
                    m.next = "IDLE"
                with m.Elif(instret >= self.budget):
                    trap(EBPF_ERR_BUDGET)
                with m.Elif(~dec.valid):
                    trap(EBPF_ERR_LOAD)
                with m.Elif(multi_cycle & (pc1 >= self.prog_len)):
                    # its successor slot is outside the program: the loader never passes such a
                    # program, the core still refuses to run into stale instruction memory
                    trap(EBPF_ERR_LOAD)
                with m.Elif(is_alu):
                    with m.If(divides):
                        m.d.comb += div.start.eq(1)
                        m.d.sync += [dv_dst.eq(dst), npc_hold.eq(pc1)]
                        m.next = "DIV"
                    with m.Else():
                        wreg(dst, alu.result)
                        m.d.comb += retire.eq(1)
                with m.Elif((cls == isa.CLS_JMP) | is32j):
                    with m.If((cls == isa.CLS_JMP) & (op == (isa.JMP_EXIT >> 4))):
                        with m.If(calls.depth == 0):
                            m.d.sync += [r0_out.eq(fwd[0]), done.eq(1),
                                         instret.eq(instret + 1)]
                            m.next = "IDLE"
                        with m.Else():
                            for i in range(4):
                                m.d.sync += regs[6 + i].eq(calls.top_saved[64 * i:64 * (i + 1)])
                            m.d.comb += [calls.pop.eq(1), retire.eq(1),
                                         jump_to.eq(calls.top_ret)]
                    with m.Elif((cls == isa.CLS_JMP) & (op == (isa.JMP_CALL >> 4))):
                        with m.If(dec.srcx | (src != 1)):
                            trap(EBPF_ERR_UNSUPPORTED)   # helper call or callx
                        with m.Elif(calls.full):
                            trap(EBPF_ERR_CALL_DEPTH)
                        with m.Else():
                            m.d.comb += [calls.push.eq(1), retire.eq(1),
                                         jump_to.eq(branch.target)]
                    with m.Else():
                        m.d.comb += retire.eq(1)
                        with m.If(branch.taken):
                            m.d.comb += jump_to.eq(branch.target)
                with m.Elif(cls == isa.CLS_LD):
                    m.d.sync += [l_dst.eq(dst), l_sval.eq(dec.imm.as_unsigned())]
                    m.next = "LDDW"
                with m.Elif(~lsu.in_bounds):
                    trap(EBPF_ERR_OUT_OF_BOUNDS)
                with m.Elif(is_ldx | (dec.mode == (isa.MODE_ATOMIC >> 5))):
                    m.d.comb += lsu.latch.eq(1)
                    m.d.sync += [
                        l_dst.eq(dst), l_src.eq(src), l_aimm.eq(dec.imm[0:8]), l_sval.eq(sval),
                        l_r0.eq(fwd[0]), npc_hold.eq(pc1),
                    ]
                    with m.If(is_ldx):
                        if self.forward_loads:
                            # retire now; the register is written (and forwarded) next cycle
                            m.d.sync += pl_valid.eq(1)
                            m.d.comb += retire.eq(1)
                        else:
                            m.next = "LOAD"
                    with m.Else():
                        m.next = "ATOMIC"
                with m.Else():
                    # ST / STX: one cycle, both banks written at once
                    m.d.comb += [
                        lsu.store.eq(1), lsu.wdata.eq(Mux(cls == isa.CLS_ST, imm64, sval)),
                        retire.eq(1),
                    ]
                with m.If(retire):
                    with m.If((jump_to < 0) | (jump_to >= self.prog_len)):
                        trap(EBPF_ERR_LOAD)
                    with m.Else():
                        m.d.comb += fetch.addr.eq(jump_to[0:pcw])
                        m.d.sync += [pc.eq(jump_to[0:pcw]), instret.eq(instret + 1)]

            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1), fetch.addr.eq(npc_hold)]
                m.d.sync += [cycles.eq(cycles + 1), pc.eq(npc_hold), instret.eq(instret + 1)]
                wreg(l_dst, loaded)
                m.next = "EXEC"

            with m.State("ATOMIC"):
                m.d.comb += [self.busy.eq(1), fetch.addr.eq(npc_hold)]
                m.d.sync += [cycles.eq(cycles + 1), pc.eq(npc_hold), instret.eq(instret + 1)]
                m.d.comb += [lsu.store_latched.eq(1), lsu.wdata.eq(atomic.new)]
                with m.If(l_aimm == isa.ATOMIC_CMPXCHG):
                    wreg(0, loaded)
                with m.Elif(l_aimm[0]):   # ATOMIC_FETCH: the old value to the source register
                    wreg(l_src, loaded)
                m.next = "EXEC"

            with m.State("LDDW"):
                # the second slot is on the instruction port now: its imm is the upper half
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                wreg(l_dst, Cat(l_sval[0:32], dec.imm))
                nxt = Signal(pcw + 1)
                m.d.comb += nxt.eq(pc + 2)
                with m.If(nxt >= self.prog_len):
                    trap(EBPF_ERR_LOAD)
                with m.Else():
                    m.d.comb += fetch.addr.eq(nxt)
                    m.d.sync += [pc.eq(nxt), instret.eq(instret + 1)]
                    m.next = "EXEC"

            with m.State("DIV"):
                m.d.comb += [self.busy.eq(1), fetch.addr.eq(npc_hold)]
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(~div.busy):
                    wreg(dv_dst, div.result)
                    m.d.sync += [pc.eq(npc_hold), instret.eq(instret + 1)]
                    m.next = "EXEC"
        return m

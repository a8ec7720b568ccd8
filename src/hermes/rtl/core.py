"""The eBPF processor core in Amaranth HDL: fetch/execute pipeline, banked memories, call stack."""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..engine import isa
from ..engine.memory import DATA_BASE, MAX_CALL_DEPTH, STACK_SIZE, STACK_TOP
from ..regs import (EBPF_ERR_BUDGET, EBPF_ERR_CALL_DEPTH, EBPF_ERR_LOAD, EBPF_ERR_OUT_OF_BOUNDS,
                    EBPF_ERR_UNSUPPORTED)

#: Bytes of stack memory: every frame of the deepest call chain.
STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH
#: Lowest virtual stack address; stack byte ``i`` of the stack memory is at STACK_LO + i.
STACK_LO = STACK_TOP - STACK_BYTES
# the bounds check relies on these alignments (see EbpfCore.elaborate)
assert DATA_BASE % (1 << 32) == 0 and STACK_LO % STACK_BYTES == 0 and STACK_BYTES == 4096



def _valid_opcodes() -> int:
    """256-bit mask of the opcode bytes the instruction table defines (bit n = opcode n)."""
    mask = 0
    for opcode in isa.BY_OPCODE:
        mask |= 1 << opcode
    return mask


def _match_rules() -> dict[int, dict[str, set[int]]]:
    """Per opcode, the values of ``off``/``imm``/``src`` that select one of its table rows."""
    rules: dict[int, dict[str, set[int]]] = {}
    for opcode, rows in isa.BY_OPCODE.items():
        if not all(row.match for row in rows):
            continue  # some row of this opcode matches any field value
        fields: dict[str, set[int]] = {}
        names = {name for row in rows for name, _ in row.match}
        if len(names) != 1:
            continue
        (name,) = names
        fields[name] = {value for row in rows for name_, value in row.match}
        rules[opcode] = fields
    return rules


def _bswap(value, nbytes: int):
    """Byte-reverse the low ``nbytes`` bytes of ``value``."""
    return Cat(*[value[8 * i:8 * i + 8] for i in reversed(range(nbytes))])


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

    Memories are ``amaranth.lib.memory.Memory`` blocks with synchronous ports: the instruction
    memory (``imem``, one slot a word), the data memory and the stack, both split into an even and
    an odd bank of 64-bit words (``dmem[0..1]``, ``smem[0..1]``) so that any access of up to 8
    bytes, aligned or not, reads or writes its two neighbouring words in one cycle.
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
        # optional initial contents (a self-contained build, e.g. to simulate the Verilog)
        words = [int.from_bytes(code[i:i + 8], "little") for i in range(0, len(code), 8)]
        padded = data + bytes(-len(data) % 8)
        dwords = [int.from_bytes(padded[i:i + 8], "little") for i in range(0, len(padded), 8)]
        self.imem = Memory(shape=64, depth=imem_depth, init=words)
        self.dmem = [Memory(shape=64, depth=dmem_bytes // 16, init=dwords[bank::2])
                     for bank in range(2)]
        self.smem = [Memory(shape=64, depth=STACK_BYTES // 16, init=[]) for _ in range(2)]
        # One entry per active call: return slot and the caller's r6..r9.
        self.rstack = Memory(shape=self.pc_bits + 256, depth=MAX_CALL_DEPTH, init=[])
        self.regs = [Signal(64, name=f"r{i}") for i in range(10)]

    def elaborate(self, platform) -> Module:  # noqa: C901 - one datapath, kept in one place
        """Build the core."""
        m = Module()
        m.submodules.imem = self.imem
        for i in range(2):
            m.submodules[f"dmem{i}"] = self.dmem[i]
            m.submodules[f"smem{i}"] = self.smem[i]
        m.submodules.rstack = self.rstack

        pcw = self.pc_bits
        imem_rd = self.imem.read_port()
        imem_wr = self.imem.write_port()
        d_rd = [b.read_port() for b in self.dmem]
        d_wr = [b.write_port(granularity=8) for b in self.dmem]
        s_rd = [b.read_port() for b in self.smem]
        s_wr = [b.write_port(granularity=8) for b in self.smem]
        rs_rd = self.rstack.read_port(domain="comb")
        rs_wr = self.rstack.write_port()

        regs = self.regs
        pc = Signal(pcw)
        npc_hold = Signal(pcw)     # next slot while a multi-cycle instruction finishes
        depth = Signal(range(MAX_CALL_DEPTH))
        instret = Signal(64)
        cycles = Signal(64)

        # ------------------------------------------------------------------ decode
        insn = imem_rd.data
        opcode = insn[0:8]
        dst = insn[8:12]
        src = insn[12:16]
        off = insn[16:32].as_signed()
        imm = insn[32:64].as_signed()
        cls = opcode[0:3]
        srcx = opcode[3]
        code = opcode[4:8]
        mode = opcode[5:8]
        size_f = opcode[3:5]
        imm64 = Signal(64)
        m.d.comb += imm64.eq(imm)

        r10 = Const(STACK_TOP, 64) - (depth * STACK_SIZE)
        # Register values as the executing instruction sees them: with ``forward_loads`` a load
        # writes its register in the cycle after its execute cycle, and that cycle's instruction
        # (already executing) gets the loaded value forwarded from the memory read port.
        fwd = [Signal(64, name=f"rf{i}") for i in range(10)]
        pl_valid = Signal()   # a forwarded load's value is on the read ports this cycle
        rview = Array(fwd + [r10] * 6)
        dval = Signal(64)
        sval = Signal(64)
        m.d.comb += [dval.eq(rview[dst]), sval.eq(rview[src])]

        # opcode validity comes from the instruction table; selecting fields checked per opcode
        valid_mask = Const(_valid_opcodes(), 256)
        op_known = valid_mask.bit_select(opcode, 1)
        match_ok = Signal()
        m.d.comb += match_ok.eq(1)
        field_of = {"off": insn[16:32], "imm": insn[32:64], "src": src}
        with m.Switch(opcode):
            for opc, rules in sorted(_match_rules().items()):
                with m.Case(opc):
                    ((name, values),) = rules.items()
                    sig = field_of[name]
                    width = len(sig)
                    m.d.comb += match_ok.eq(
                        Cat(*[sig == (v & ((1 << width) - 1)) for v in sorted(values)]).any())
        writes_reg = ((cls == isa.CLS_ALU) | (cls == isa.CLS_ALU64) | (cls == isa.CLS_LDX)
                      | (cls == isa.CLS_LD))
        reg_ok = (dst <= 10) & (src <= 10) & ~(writes_reg & (dst == 10))
        # the ALU32 movsx32 row does not exist although its opcode and off value do
        movsx32_32 = (opcode == (isa.CLS_ALU | isa.ALU_MOV | isa.SRC_X)) & (insn[16:32] == 32)
        insn_ok = op_known & match_ok & reg_ok & ~movsx32_32

        # ------------------------------------------------------------------ ALU
        is_alu = (cls == isa.CLS_ALU) | (cls == isa.CLS_ALU64)
        is64 = cls == isa.CLS_ALU64
        b = Signal(64)
        m.d.comb += b.eq(Mux(srcx, sval, imm64))
        a = dval
        a_w = Signal(64)     # dst at the operation width, zero-extended
        a_ws = Signal(64)    # dst at the operation width, sign-extended
        b_w = Signal(64)
        b_ws = Signal(64)
        m.d.comb += [
            a_w.eq(Mux(is64, a, a[0:32])),
            a_ws.eq(Mux(is64, a, a[0:32].as_signed())),
            b_w.eq(Mux(is64, b, b[0:32])),
            b_ws.eq(Mux(is64, b, b[0:32].as_signed())),
        ]
        sh = Mux(is64, b[0:6], b[0:5])
        alu_res = Signal(64)
        with m.Switch(code):
            with m.Case(isa.ALU_ADD >> 4):
                m.d.comb += alu_res.eq(a + b)
            with m.Case(isa.ALU_SUB >> 4):
                m.d.comb += alu_res.eq(a - b)
            with m.Case(isa.ALU_MUL >> 4):
                m.d.comb += alu_res.eq(a * b)
            with m.Case(isa.ALU_OR >> 4):
                m.d.comb += alu_res.eq(a | b)
            with m.Case(isa.ALU_AND >> 4):
                m.d.comb += alu_res.eq(a & b)
            with m.Case(isa.ALU_XOR >> 4):
                m.d.comb += alu_res.eq(a ^ b)
            with m.Case(isa.ALU_LSH >> 4):
                m.d.comb += alu_res.eq(a << sh)
            with m.Case(isa.ALU_RSH >> 4):
                m.d.comb += alu_res.eq(a_w >> sh)
            with m.Case(isa.ALU_ARSH >> 4):
                m.d.comb += alu_res.eq(a_ws.as_signed() >> sh)
            with m.Case(isa.ALU_NEG >> 4):
                m.d.comb += alu_res.eq(-a)
            with m.Case(isa.ALU_MOV >> 4):
                with m.Switch(insn[16:32]):
                    with m.Case(8):
                        m.d.comb += alu_res.eq(b[0:8].as_signed())
                    with m.Case(16):
                        m.d.comb += alu_res.eq(b[0:16].as_signed())
                    with m.Case(32):
                        m.d.comb += alu_res.eq(b[0:32].as_signed())
                    with m.Default():
                        m.d.comb += alu_res.eq(b)
            with m.Case(isa.ALU_END >> 4):
                swap = srcx | is64   # be (ALU class, X) and bswap (ALU64) reverse bytes
                with m.Switch(insn[32:64]):
                    with m.Case(16):
                        m.d.comb += alu_res.eq(Mux(swap, _bswap(a, 2), a[0:16]))
                    with m.Case(32):
                        m.d.comb += alu_res.eq(Mux(swap, _bswap(a, 4), a[0:32]))
                    with m.Default():
                        m.d.comb += alu_res.eq(Mux(swap, _bswap(a, 8), a))
            with m.Case(isa.ALU_DIV >> 4):
                m.d.comb += alu_res.eq(0)          # only reached for x / 0
            with m.Case(isa.ALU_MOD >> 4):
                m.d.comb += alu_res.eq(a)          # only reached for x % 0
        alu_out = Signal(64)
        trunc32 = (cls == isa.CLS_ALU) & (code != (isa.ALU_END >> 4))
        m.d.comb += alu_out.eq(Mux(trunc32, alu_res[0:32], alu_res))
        is_divmod = is_alu & ((code == (isa.ALU_DIV >> 4)) | (code == (isa.ALU_MOD >> 4)))
        div_signed = insn[16]

        # ------------------------------------------------------------------ branches
        is32j = cls == isa.CLS_JMP32
        ca = Mux(is32j, dval[0:32], dval)
        cb = Mux(is32j, b[0:32], b)
        cas = Mux(is32j, dval[0:32].as_signed(), dval.as_signed())
        cbs = Mux(is32j, b[0:32].as_signed(), b.as_signed())
        eq = ca == cb
        gtu = ca > cb
        gts = cas > cbs
        taken = Signal()
        with m.Switch(code):
            for jcode, expr in (
                    (isa.JMP_JA, Const(1)), (isa.JMP_JEQ, eq), (isa.JMP_JGT, gtu),
                    (isa.JMP_JGE, gtu | eq), (isa.JMP_JSET, (ca & cb) != 0), (isa.JMP_JNE, ~eq),
                    (isa.JMP_JSGT, gts), (isa.JMP_JSGE, gts | eq), (isa.JMP_JLT, ~(gtu | eq)),
                    (isa.JMP_JLE, ~gtu), (isa.JMP_JSLT, ~(gts | eq)), (isa.JMP_JSLE, ~gts)):
                with m.Case(jcode >> 4):
                    m.d.comb += taken.eq(expr)
        pc1 = Signal(pcw + 1)
        m.d.comb += pc1.eq(pc + 1)
        use_imm = is32j & (code == (isa.JMP_JA >> 4)) | (code == (isa.JMP_CALL >> 4))
        target = Signal(signed(pcw + 34))
        m.d.comb += target.eq(pc1 + Mux(use_imm, imm, off))

        # ------------------------------------------------------------------ memory address
        is_ldx = cls == isa.CLS_LDX
        base = Mux(is_ldx, sval, dval)
        addr = Signal(64)
        m.d.comb += addr.eq(base + off)
        nbytes = Signal(4)
        with m.Switch(size_f):
            for sz, n in isa.SIZE_BYTES.items():
                with m.Case(sz >> 3):
                    m.d.comb += nbytes.eq(n)
        # Both regions start at addresses aligned far beyond their size (DATA_BASE at 4 GiB,
        # STACK_LO at 4 KiB), so an address's low bits are already its offset in the memory and
        # the region test is an equality on the high bits plus a short compare on the low ones:
        # no 64-bit subtraction or comparison after the address adder.
        lo_bits = max(self.dword_bits + 3, 12)
        in_data = ((addr[32:64] == DATA_BASE >> 32)
                   & ((addr[0:32] + nbytes) <= self.data_len))
        stack_floor = (MAX_CALL_DEPTH - 1 - depth) * STACK_SIZE
        in_stack = ((addr[12:64] == STACK_LO >> 12) & (addr[0:12] >= stack_floor)
                    & ((addr[0:12] + nbytes) <= STACK_BYTES))
        in_bounds = in_data | in_stack
        # physical byte address inside the selected memory
        pa = Signal(lo_bits)
        m.d.comb += pa.eq(addr[0:lo_bits])
        word = pa[3:]
        boff = pa[0:3]

        # registered access description for the second cycle of loads and atomics
        l_dst = Signal(4)
        l_src = Signal(4)
        l_boff = Signal(3)
        l_odd = Signal()
        l_stack = Signal()
        l_nbytes = Signal(4)
        l_sx = Signal()
        l_word = Signal(len(word))
        l_aimm = Signal(8)
        l_sval = Signal(64)
        l_r0 = Signal(64)

        # read ports: both banks see the same address computed in the execute cycle
        m.d.comb += [
            d_rd[0].addr.eq((word + 1) >> 1), d_rd[1].addr.eq(word >> 1),
            s_rd[0].addr.eq((word + 1) >> 1), s_rd[1].addr.eq(word >> 1),
        ]
        # Stack rows written during this run: a row not yet written reads as zero, so a run never
        # sees a previous run's stack (and the stack needs no clearing cycles at start).
        rows = STACK_BYTES // 16
        row_bits = (rows - 1).bit_length()
        s_valid = [Signal(rows, name=f"stack_valid{i}") for i in range(2)]
        l_valid = [Signal(name=f"l_valid{i}") for i in range(2)]
        rd0 = Mux(l_stack, Mux(l_valid[0], s_rd[0].data, 0), d_rd[0].data)
        rd1 = Mux(l_stack, Mux(l_valid[1], s_rd[1].data, 0), d_rd[1].data)
        window = Mux(l_odd, Cat(rd1, rd0), Cat(rd0, rd1))
        loaded = Signal(64)
        shifted = Signal(64)
        m.d.comb += shifted.eq(window >> (l_boff * 8))
        with m.Switch(l_nbytes):
            with m.Case(1):
                m.d.comb += loaded.eq(Mux(l_sx, shifted[0:8].as_signed(), shifted[0:8]))
            with m.Case(2):
                m.d.comb += loaded.eq(Mux(l_sx, shifted[0:16].as_signed(), shifted[0:16]))
            with m.Case(4):
                m.d.comb += loaded.eq(Mux(l_sx, shifted[0:32].as_signed(), shifted[0:32]))
            with m.Default():
                m.d.comb += loaded.eq(shifted)

        # write request (driven by stores in execute and by atomics in their second cycle)
        w_en = Signal()
        w_data = Signal(64)
        w_nbytes = Signal(4)
        w_boff = Signal(3)
        w_word = Signal(len(word))
        w_stack = Signal()
        lane_mask = Signal(8)
        with m.Switch(w_nbytes):
            for n in (1, 2, 4, 8):
                with m.Case(n):
                    m.d.comb += lane_mask.eq((1 << n) - 1)
        wwin_data = Signal(128)
        wwin_en = Signal(16)
        m.d.comb += [wwin_data.eq(w_data << (w_boff * 8)), wwin_en.eq(lane_mask << w_boff)]
        w_odd = w_word[0]
        lo_data, hi_data = wwin_data[0:64], wwin_data[64:128]
        lo_en, hi_en = wwin_en[0:8], wwin_en[8:16]
        bank_data = [Mux(w_odd, hi_data, lo_data), Mux(w_odd, lo_data, hi_data)]
        bank_en = [Mux(w_odd, hi_en, lo_en), Mux(w_odd, lo_en, hi_en)]
        bank_addr = [(w_word + 1) >> 1, w_word >> 1]
        for i in range(2):
            row = bank_addr[i][0:row_bits]
            fresh = ~s_valid[i].bit_select(row, 1)
            # the first write to a row writes all of it, with zeros outside the stored bytes
            lanes = Cat(*[Mux(bank_en[i][k], bank_data[i][8 * k:8 * k + 8], 0) for k in range(8)])
            with m.If(w_en & w_stack & (bank_en[i] != 0)):
                m.d.sync += s_valid[i].eq(s_valid[i] | (Const(1, rows) << row))
            m.d.comb += [
                s_wr[i].addr.eq(bank_addr[i]), s_wr[i].data.eq(Mux(fresh, lanes, bank_data[i])),
                s_wr[i].en.eq(Mux(w_en & w_stack, Mux(fresh & (bank_en[i] != 0), 0xFF,
                                                      bank_en[i]), 0)),
                d_wr[i].addr.eq(bank_addr[i]), d_wr[i].data.eq(bank_data[i]),
                d_wr[i].en.eq(Mux(w_en & ~w_stack, bank_en[i], 0)),
            ]

        is_atomic = (cls == isa.CLS_STX) & (mode == (isa.MODE_ATOMIC >> 5))
        multi_cycle = ((is_divmod & (b_w != 0)) | (cls == isa.CLS_LD) | is_atomic
                       | (is_ldx if not self.forward_loads else Const(0)))

        # ------------------------------------------------------------------ divider
        dv_rem = Signal(65)
        dv_quo = Signal(64)
        dv_dvd = Signal(64)
        dv_dvs = Signal(64)
        dv_count = Signal(7)
        dv_neg_q = Signal()
        dv_neg_r = Signal()
        dv_mod = Signal()
        dv_32 = Signal()
        dv_dst = Signal(4)
        abs_a = Mux(div_signed & a_ws[63], -a_ws, a_ws)
        abs_b = Mux(div_signed & b_ws[63], -b_ws, b_ws)
        # two restoring steps per cycle
        rem_n, quo_n, dvd_n = dv_rem, dv_quo, dv_dvd
        for _ in range(2):
            trial = Cat(dvd_n[63], rem_n[0:64])
            ge = trial >= dv_dvs
            rem_n = Mux(ge, trial - dv_dvs, trial)[0:65]
            quo_n = Cat(ge, quo_n[0:63])
            dvd_n = Cat(Const(0, 1), dvd_n[0:63])
        q_fix = Mux(dv_neg_q, -dv_quo, dv_quo)[0:64]
        r_fix = Mux(dv_neg_r, -dv_rem[0:64], dv_rem[0:64])[0:64]
        dv_res = Mux(dv_mod, r_fix, q_fix)
        dv_out = Mux(dv_32, dv_res[0:32], dv_res)

        # ------------------------------------------------------------------ return stack
        m.d.comb += rs_rd.addr.eq(depth - 1)
        rs_ret = rs_rd.data[0:pcw]
        rs_regs = [rs_rd.data[pcw + 64 * i:pcw + 64 * (i + 1)] for i in range(4)]
        m.d.comb += [
            rs_wr.addr.eq(depth),
            rs_wr.data.eq(Cat(pc1[0:pcw], fwd[6], fwd[7], fwd[8], fwd[9])),
        ]

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
            imem_wr.addr.eq(self.host_imem_addr), imem_wr.data.eq(self.host_imem_wdata),
            imem_wr.en.eq(host & self.host_imem_we),
        ]
        host_bank = self.host_dmem_addr[0]
        host_rbank = Signal()
        m.d.sync += host_rbank.eq(host_bank)
        m.d.comb += self.host_dmem_rdata.eq(Mux(host_rbank, d_rd[1].data, d_rd[0].data))

        with m.FSM(name="state"):
            with m.State("IDLE"):
                m.d.comb += [
                    host.eq(1),
                    imem_rd.addr.eq(0),
                    d_rd[0].addr.eq(self.host_dmem_addr >> 1),
                    d_rd[1].addr.eq(self.host_dmem_addr >> 1),
                    d_wr[0].addr.eq(self.host_dmem_addr >> 1),
                    d_wr[1].addr.eq(self.host_dmem_addr >> 1),
                    d_wr[0].data.eq(self.host_dmem_wdata),
                    d_wr[1].data.eq(self.host_dmem_wdata),
                    d_wr[0].en.eq(Mux(host_bank, 0, self.host_dmem_we)),
                    d_wr[1].en.eq(Mux(host_bank, self.host_dmem_we, 0)),
                ]
                with m.If(self.start):
                    m.d.sync += [
                        pc.eq(0), depth.eq(0), instret.eq(0), cycles.eq(0), err.eq(0),
                        err_code.eq(0), aborted.eq(0), s_valid[0].eq(0), s_valid[1].eq(0),
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
                m.d.comb += imem_rd.addr.eq(pc1)
                retire = Signal()
                jump_to = Signal(signed(pcw + 34))
                m.d.comb += jump_to.eq(pc1)
                with m.If(self.abort):
                    # every EXEC cycle is an instruction boundary: stop before the one at pc
                    m.d.sync += [aborted.eq(1), done.eq(1)]
                    m.next = "IDLE"
                with m.Elif(instret >= self.budget):
                    trap(EBPF_ERR_BUDGET)
                with m.Elif(~insn_ok):
                    trap(EBPF_ERR_LOAD)
                with m.Elif(multi_cycle & (pc1 >= self.prog_len)):
                    # its successor slot is outside the program: the loader never passes such a
                    # program, the core still refuses to run into stale instruction memory
                    trap(EBPF_ERR_LOAD)
                with m.Elif(is_alu):
                    with m.If(is_divmod & (b_w != 0)):
                        m.d.sync += [
                            dv_rem.eq(0), dv_quo.eq(0), dv_dvs.eq(Mux(is64, abs_b, abs_b[0:32])),
                            dv_dvd.eq(Mux(is64, abs_a, Cat(Const(0, 32), abs_a[0:32]))),
                            dv_count.eq(Mux(is64, 32, 16)),
                            dv_neg_q.eq(div_signed & (a_ws[63] ^ b_ws[63])),
                            dv_neg_r.eq(div_signed & a_ws[63]),
                            dv_mod.eq(code == (isa.ALU_MOD >> 4)), dv_32.eq(~is64),
                            dv_dst.eq(dst), npc_hold.eq(pc1),
                        ]
                        m.next = "DIV"
                    with m.Else():
                        wreg(dst, alu_out)
                        m.d.comb += retire.eq(1)
                with m.Elif((cls == isa.CLS_JMP) | is32j):
                    with m.If((cls == isa.CLS_JMP) & (code == (isa.JMP_EXIT >> 4))):
                        with m.If(depth == 0):
                            m.d.sync += [r0_out.eq(fwd[0]), done.eq(1),
                                         instret.eq(instret + 1)]
                            m.next = "IDLE"
                        with m.Else():
                            for i in range(4):
                                m.d.sync += regs[6 + i].eq(rs_regs[i])
                            m.d.sync += depth.eq(depth - 1)
                            m.d.comb += [retire.eq(1), jump_to.eq(rs_ret)]
                    with m.Elif((cls == isa.CLS_JMP) & (code == (isa.JMP_CALL >> 4))):
                        with m.If(srcx | (src != 1)):
                            trap(EBPF_ERR_UNSUPPORTED)   # helper call or callx
                        with m.Elif(depth == MAX_CALL_DEPTH - 1):
                            trap(EBPF_ERR_CALL_DEPTH)
                        with m.Else():
                            m.d.comb += [rs_wr.en.eq(1), retire.eq(1), jump_to.eq(target)]
                            m.d.sync += depth.eq(depth + 1)
                    with m.Else():
                        m.d.comb += retire.eq(1)
                        with m.If(taken):
                            m.d.comb += jump_to.eq(target)
                with m.Elif(cls == isa.CLS_LD):
                    m.d.sync += [l_dst.eq(dst), l_sval.eq(insn[32:64])]
                    m.next = "LDDW"
                with m.Elif(~in_bounds):
                    trap(EBPF_ERR_OUT_OF_BOUNDS)
                with m.Elif(is_ldx | (mode == (isa.MODE_ATOMIC >> 5))):
                    m.d.sync += [
                        l_dst.eq(dst), l_src.eq(src), l_boff.eq(boff), l_odd.eq(word[0]),
                        l_stack.eq(~in_data), l_nbytes.eq(nbytes),
                        l_sx.eq(mode == (isa.MODE_MEMSX >> 5)), l_word.eq(word),
                        l_aimm.eq(insn[32:40]), l_sval.eq(sval), l_r0.eq(fwd[0]),
                        l_valid[0].eq(s_valid[0].bit_select(((word + 1) >> 1)[0:row_bits], 1)),
                        l_valid[1].eq(s_valid[1].bit_select((word >> 1)[0:row_bits], 1)),
                        npc_hold.eq(pc1),
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
                        w_en.eq(1), w_data.eq(Mux(cls == isa.CLS_ST, imm64, sval)),
                        w_nbytes.eq(nbytes), w_boff.eq(boff), w_word.eq(word),
                        w_stack.eq(~in_data), retire.eq(1),
                    ]
                with m.If(retire):
                    with m.If((jump_to < 0) | (jump_to >= self.prog_len)):
                        trap(EBPF_ERR_LOAD)
                    with m.Else():
                        m.d.comb += imem_rd.addr.eq(jump_to[0:pcw])
                        m.d.sync += [pc.eq(jump_to[0:pcw]), instret.eq(instret + 1)]

            with m.State("LOAD"):
                m.d.comb += [self.busy.eq(1), imem_rd.addr.eq(npc_hold)]
                m.d.sync += [cycles.eq(cycles + 1), pc.eq(npc_hold), instret.eq(instret + 1)]
                wreg(l_dst, loaded)
                m.next = "EXEC"

            with m.State("ATOMIC"):
                m.d.comb += [self.busy.eq(1), imem_rd.addr.eq(npc_hold)]
                m.d.sync += [cycles.eq(cycles + 1), pc.eq(npc_hold), instret.eq(instret + 1)]
                is_w = l_nbytes == 4
                old = loaded
                operand = l_sval
                cmp_eq = Mux(is_w, old[0:32] == l_r0[0:32], old == l_r0)
                new = Signal(64)
                op = l_aimm & (0xFF ^ isa.ATOMIC_FETCH)
                with m.If(l_aimm == isa.ATOMIC_XCHG):
                    m.d.comb += new.eq(operand)
                with m.Elif(l_aimm == isa.ATOMIC_CMPXCHG):
                    m.d.comb += new.eq(Mux(cmp_eq, operand, old))
                with m.Elif(op == isa.ATOMIC_ADD):
                    m.d.comb += new.eq(old + operand)
                with m.Elif(op == isa.ATOMIC_OR):
                    m.d.comb += new.eq(old | operand)
                with m.Elif(op == isa.ATOMIC_AND):
                    m.d.comb += new.eq(old & operand)
                with m.Else():
                    m.d.comb += new.eq(old ^ operand)
                m.d.comb += [
                    w_en.eq(1), w_data.eq(new), w_nbytes.eq(l_nbytes), w_boff.eq(l_boff),
                    w_word.eq(l_word), w_stack.eq(l_stack),
                ]
                with m.If(l_aimm == isa.ATOMIC_CMPXCHG):
                    wreg(0, old)
                with m.Elif(l_aimm[0]):
                    wreg(l_src, old)
                m.next = "EXEC"

            with m.State("LDDW"):
                # the second slot is on the instruction port now: its imm is the upper half
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                wreg(l_dst, Cat(l_sval[0:32], insn[32:64]))
                nxt = Signal(pcw + 1)
                m.d.comb += nxt.eq(pc + 2)
                with m.If(nxt >= self.prog_len):
                    trap(EBPF_ERR_LOAD)
                with m.Else():
                    m.d.comb += imem_rd.addr.eq(nxt)
                    m.d.sync += [pc.eq(nxt), instret.eq(instret + 1)]
                    m.next = "EXEC"

            with m.State("DIV"):
                m.d.comb += [self.busy.eq(1), imem_rd.addr.eq(npc_hold)]
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(dv_count == 0):
                    wreg(dv_dst, dv_out)
                    m.d.sync += [pc.eq(npc_hold), instret.eq(instret + 1)]
                    m.next = "EXEC"
                with m.Else():
                    m.d.sync += [dv_rem.eq(rem_n), dv_quo.eq(quo_n), dv_dvd.eq(dvd_n),
                                 dv_count.eq(dv_count - 1)]
        return m

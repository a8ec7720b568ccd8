"""The device top level in RTL: BAR0 command registers per engine, slot memories, eBPF cores."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .. import regs
from .core import EbpfCore

#: Build string in EHBLD (NUL padded to 48 bytes).
BUILD = b"hermes-rtl 1"
#: Instructions a run may execute before it stops with EBPF_ERR_BUDGET (a parameter of the build).
DEFAULT_BUDGET = 1 << 32


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


class HermesTop(wiring.Component):
    """``n_engines`` eBPF cores behind the Hermes BAR0 command interface.

    Buses (all synchronous, one clock domain):

    * register bus (BAR0): ``reg_addr`` (byte offset, 4-byte aligned), ``reg_wdata``, ``reg_we``,
      ``reg_re``; ``reg_rdata`` is valid the cycle after ``reg_re``. 32-bit accesses.
    * memory bus (BAR4): ``mem_addr`` (byte offset, 8-byte aligned), ``mem_wdata``, ``mem_we``
      (byte enables), ``mem_re``; ``mem_rdata`` valid the cycle after ``mem_re``. Program slot
      ``i`` is engine ``i``'s instruction memory (write only), data slot ``i`` its data memory;
      accesses to an engine's slots while it runs are ignored (reads return 0).
    * ``irq`` bit ``n`` pulses when engine ``n`` completes a command.

    Commands (opcode in request byte 0): Request Slot, Release Slot (slot ``i`` of either type
    exists for ``i < n_engines``), Run Program (engine ``n`` runs program slot ``n`` on data slot
    ``n``: other slot ids get status 0x02/0x03). Anything else gets status 0x06.
    """

    def __init__(self, *, n_engines: int = 1, imem_depth: int = 1024, dmem_bytes: int = 4096,
                 budget: int = DEFAULT_BUDGET, forward_loads: bool = False):
        if not 1 <= n_engines <= 255:
            raise ValueError("n_engines must be 1..255")
        self.n_engines = n_engines
        self.imem_depth = imem_depth
        self.dmem_bytes = dmem_bytes
        self.budget = budget
        self.prog_slot_size = imem_depth * 8
        self.data_slot_size = dmem_bytes
        self.prog_base = 0
        self.data_base = _pow2_at_least(n_engines * self.prog_slot_size)
        mem_span = self.data_base + _pow2_at_least(n_engines * self.data_slot_size)
        self.mem_addr_bits = (mem_span - 1).bit_length()
        super().__init__({
            "reg_addr": In(16), "reg_wdata": In(32), "reg_we": In(1), "reg_re": In(1),
            "reg_rdata": Out(32),
            "mem_addr": In(self.mem_addr_bits), "mem_wdata": In(64), "mem_we": In(8),
            "mem_re": In(1), "mem_rdata": Out(64),
            "irq": Out(n_engines),
        })
        self.cores = [EbpfCore(imem_depth=imem_depth, dmem_bytes=dmem_bytes,
                               forward_loads=forward_loads) for _ in range(n_engines)]

    def _constant_words(self) -> dict[int, int]:
        """BAR0 read-only registers as 32-bit words by offset."""
        image = bytearray(0x48)
        image[regs.EHVER:regs.EHVER + 4] = (1).to_bytes(4, "little")
        image[regs.EHBLD:regs.EHBLD + len(BUILD)] = BUILD
        image[regs.EHENG] = self.n_engines
        image[regs.EHPSLOT] = self.n_engines
        image[regs.EHDSLOT] = self.n_engines
        for off, value in ((regs.EHPSOFF, self.prog_base), (regs.EHPSSZE, self.prog_slot_size),
                           (regs.EHDSOFF, self.data_base), (regs.EHDSSZE, self.data_slot_size)):
            image[off:off + 4] = value.to_bytes(4, "little")
        return {i: int.from_bytes(image[i:i + 4], "little") for i in range(0, len(image), 4)}

    def elaborate(self, platform) -> Module:
        """Build the register file, the command sequencers and the memory decoder."""
        m = Module()
        n = self.n_engines
        rdata = Signal(32)
        m.d.comb += self.reg_rdata.eq(rdata)
        word_addr = self.reg_addr[2:]

        prog_alloc = Signal(n)
        data_alloc = Signal(n)
        irq = Signal(n)
        m.d.sync += irq.eq(0)
        m.d.comb += self.irq.eq(irq)

        read_cases: dict[int, object] = dict(self._constant_words())

        for e, core in enumerate(self.cores):
            m.submodules[f"engine{e}"] = core
            req = [Signal(32, name=f"e{e}_req{i}") for i in range(8)]
            res = [Signal(32, name=f"e{e}_res{i}") for i in range(4)]
            exec_bit = Signal(name=f"e{e}_exec")
            done_bit = Signal(name=f"e{e}_done")
            running = Signal(name=f"e{e}_running")
            req_base = regs.cmdreq(e)
            res_base = regs.cmdres(e)
            ctrl = regs.cmdctrl(e)
            for i in range(8):
                read_cases[req_base + 4 * i] = req[i]
            for i in range(4):
                read_cases[res_base + 4 * i] = res[i]
            read_cases[ctrl] = Cat(exec_bit, Const(0, 7), done_bit)

            # host writes to the request while the engine is idle
            with m.If(self.reg_we & ~exec_bit):
                for i in range(8):
                    with m.If(word_addr == (req_base + 4 * i) >> 2):
                        m.d.sync += req[i].eq(self.reg_wdata)

            opcode = req[0][0:8]
            cmd_id = req[0][16:32]
            arg8 = req[2][0:8]
            arg9 = req[2][8:16]
            length = req[3]

            def respond(status, value, *, _res=res, _id=cmd_id, _exec=exec_bit, _done=done_bit,
                        _e=e):
                wide = Cat(value, Const(0, 64))
                m.d.sync += [
                    _res[0].eq(Cat(_id, Const(status, 8) if isinstance(status, int) else status,
                                   Const(0, 8))),
                    _res[1].eq(0), _res[2].eq(wide[0:32]), _res[3].eq(wide[32:64]),
                    _exec.eq(0), _done.eq(1), irq[_e].eq(1),
                ]

            start = self.reg_we & (word_addr == ctrl >> 2) & self.reg_wdata[0] & ~exec_bit
            m.d.comb += [
                core.prog_len.eq(length[3:]), core.data_len.eq(self.data_slot_size),
                core.data_present.eq(1), core.budget.eq(self.budget),
            ]
            bad_len = ((length == 0) | (length[0:3] != 0) | (length > self.prog_slot_size))
            with m.If(start):
                m.d.sync += [exec_bit.eq(1), done_bit.eq(0)]
                with m.Switch(opcode):
                    with m.Case(regs.CMD_RUN_PROGRAM):
                        with m.If((arg8 != e) | ~prog_alloc[e]):
                            respond(regs.STATUS_INVALID_PROG_SLOT, Const(0, 64))
                        with m.Elif((arg9 != e) | ~data_alloc[e]):
                            respond(regs.STATUS_INVALID_DATA_SLOT, Const(0, 64))
                        with m.Elif(bad_len):
                            respond(regs.STATUS_EBPF_ERROR, Const(regs.EBPF_ERR_LOAD, 64))
                        with m.Else():
                            m.d.comb += core.start.eq(1)
                            m.d.sync += running.eq(1)
                    with m.Case(regs.CMD_REQUEST_SLOT):
                        for kind, alloc in ((regs.SLOT_PROGRAM, prog_alloc),
                                            (regs.SLOT_DATA, data_alloc)):
                            with m.If(arg8 == kind):
                                with m.If(alloc.all()):
                                    respond(regs.STATUS_NO_SPACE, Const(0, 64))
                                with m.Else():
                                    # lowest free slot
                                    free = Signal(range(n + 1), name=f"e{e}_free{kind}")
                                    m.d.comb += free.eq(n)
                                    for s in reversed(range(n)):
                                        with m.If(~alloc[s]):
                                            m.d.comb += free.eq(s)
                                    m.d.sync += alloc.eq(alloc | (Const(1, n) << free))
                                    respond(regs.STATUS_SUCCESS, free)
                        with m.If(arg8 > regs.SLOT_DATA):
                            respond(regs.STATUS_INVALID_OPCODE, Const(0, 64))
                    with m.Case(regs.CMD_RELEASE_SLOT):
                        for kind, alloc, bad in (
                                (regs.SLOT_PROGRAM, prog_alloc, regs.STATUS_INVALID_PROG_SLOT),
                                (regs.SLOT_DATA, data_alloc, regs.STATUS_INVALID_DATA_SLOT)):
                            with m.If(arg8 == kind):
                                sel = arg9[0:max(1, (n - 1).bit_length())]
                                with m.If((arg9 >= n) | ~alloc.bit_select(sel, 1)):
                                    respond(bad, Const(0, 64))
                                with m.Else():
                                    m.d.sync += alloc.eq(alloc & ~(Const(1, n) << arg9))
                                    respond(regs.STATUS_SUCCESS, Const(0, 64))
                        with m.If(arg8 > regs.SLOT_DATA):
                            respond(regs.STATUS_INVALID_OPCODE, Const(0, 64))
                    with m.Default():
                        respond(regs.STATUS_INVALID_OPCODE, Const(0, 64))
            with m.If(running & core.done):
                m.d.sync += running.eq(0)
                with m.If(core.error):
                    respond(regs.STATUS_EBPF_ERROR, core.error_code)
                with m.Else():
                    respond(regs.STATUS_SUCCESS, core.r0)

            # BAR4: this engine's slots
            in_prog = (self.mem_addr >= self.prog_base + e * self.prog_slot_size) & \
                      (self.mem_addr < self.prog_base + (e + 1) * self.prog_slot_size)
            in_data = (self.mem_addr >= self.data_base + e * self.data_slot_size) & \
                      (self.mem_addr < self.data_base + (e + 1) * self.data_slot_size)
            m.d.comb += [
                core.host_imem_addr.eq(self.mem_addr[3:]),
                core.host_imem_wdata.eq(self.mem_wdata),
                core.host_imem_we.eq(in_prog & (self.mem_we != 0) & ~running),
                core.host_dmem_addr.eq(self.mem_addr[3:]),
                core.host_dmem_wdata.eq(self.mem_wdata),
                core.host_dmem_we.eq(Mux(in_data & ~running, self.mem_we, 0)),
            ]
            was_data = Signal(name=f"e{e}_mem_rd")
            m.d.sync += was_data.eq(self.mem_re & in_data & ~running)
            with m.If(was_data):
                m.d.comb += self.mem_rdata.eq(core.host_dmem_rdata)

        with m.If(self.reg_re):
            m.d.sync += rdata.eq(0)
            with m.Switch(word_addr):
                for off, value in sorted(read_cases.items()):
                    with m.Case(off >> 2):
                        m.d.sync += rdata.eq(value)
        return m

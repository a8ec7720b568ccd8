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
    """``n_engines`` command blocks and as many slot pairs, each with its own eBPF core.

    Buses (all synchronous, one clock domain):

    * register bus (BAR0): ``reg_addr`` (byte offset, 4-byte aligned), ``reg_wdata``, ``reg_we``,
      ``reg_re``; ``reg_rdata`` is valid the cycle after ``reg_re``. 32-bit accesses.
    * memory bus (BAR4): ``mem_addr`` (byte offset, 8-byte aligned), ``mem_wdata``, ``mem_we``
      (byte enables), ``mem_re``; ``mem_rdata`` valid the cycle after ``mem_re``. Program slot
      ``s`` is core ``s``'s instruction memory (write only), data slot ``s`` its data memory;
      accesses to a slot while its core runs are ignored (reads return 0).
    * ``irq`` bit ``n`` pulses when command block ``n`` completes a command.

    Commands (opcode in request byte 0): Request Slot and Release Slot with the device's
    ownership rules (slots ``s < n_engines`` of either type; device- and host-owned slots, busy
    slots never handed out), Run Program of program slot ``s`` on data slot ``s`` from any
    command block (the run waits for core ``s``; other pairings get status 0x03), the
    EHCMDABORT control bit (``can_abort``). Anything else gets status 0x06.
    """

    def __init__(self, *, n_engines: int = 1, imem_depth: int = 1024, dmem_bytes: int = 4096,
                 budget: int = DEFAULT_BUDGET, forward_loads: bool = False,
                 can_abort: bool = True):
        if not 1 <= n_engines <= 255:
            raise ValueError("n_engines must be 1..255")
        self.n_engines = n_engines
        self.imem_depth = imem_depth
        self.dmem_bytes = dmem_bytes
        self.budget = budget
        self.can_abort = bool(can_abort)
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
        image = regs.Header.pack(regs.Geometry(
            1, BUILD.decode("ascii"), self.n_engines, self.n_engines, self.n_engines,
            self.prog_base, self.prog_slot_size, self.data_base, self.data_slot_size,
            regs.EHCAP_ABORT if self.can_abort else 0))
        return {i: int.from_bytes(image[i:i + 4], "little") for i in range(0, len(image), 4)}

    def elaborate(self, platform: object) -> Module:  # noqa: C901 - one command block, kept in one place
        """Build the register file, the slot owners, the command sequencers and the bus decoder."""
        m = Module()
        n = self.n_engines
        rdata = Signal(32)
        m.d.comb += self.reg_rdata.eq(rdata)
        word_addr = self.reg_addr[2:]
        slot_bits = max(1, (n - 1).bit_length())

        # Slot owners, per type (program, data): device-owned (handed out by Request Slot) and
        # host-owned (claimed by a Run Program on a free slot); neither bit = free.
        dev_own = [Signal(n, name=f"dev_own{k}") for k in range(2)]
        host_own = [Signal(n, name=f"host_own{k}") for k in range(2)]
        irq = Signal(n)
        m.d.sync += irq.eq(0)
        m.d.comb += self.irq.eq(irq)

        # Per core: running, and the program length of its run (held for the whole run).
        c_busy = [Signal(name=f"c{s}_busy") for s in range(n)]
        c_len = [Signal(len(self.cores[0].prog_len), name=f"c{s}_len") for s in range(n)]
        # Per command block: a Run Program waiting for its core (pend) or on it (run), the slot
        # pair it names, its length, and the abort bit.
        pend = [Signal(name=f"e{e}_pend") for e in range(n)]
        run = [Signal(name=f"e{e}_run") for e in range(n)]
        tgt = [Signal(slot_bits, name=f"e{e}_slot") for e in range(n)]
        plen = [Signal(len(self.cores[0].prog_len), name=f"e{e}_len") for e in range(n)]
        abort_bit = [Signal(name=f"e{e}_abort") for e in range(n)]
        # Per command block: a Request Slot zeroing the slot it hands out (kind, slot, word).
        z_active = [Signal(name=f"e{e}_zero") for e in range(n)]
        z_kind = [Signal(name=f"e{e}_zkind") for e in range(n)]
        z_slot = [Signal(slot_bits, name=f"e{e}_zslot") for e in range(n)]
        z_word = [Signal(range(max(self.imem_depth, self.dmem_bytes // 8)), name=f"e{e}_zword")
                  for e in range(n)]
        zeroing = [[Signal(name=f"e{e}_zeroing{k}_{s}") for s in range(n) for k in range(2)]
                   for e in range(n)]

        def zeroes(e: int, kind: int, s: int) -> Signal:
            """Command block ``e`` is zeroing slot ``s`` of type ``kind``."""
            return zeroing[e][2 * s + kind]

        for e in range(n):
            for s in range(n):
                for k in range(2):
                    m.d.comb += zeroes(e, k, s).eq(z_active[e] & (z_kind[e] == k)
                                                   & (z_slot[e] == s))
        # slots being zeroed, per type: not handed out again, and their core does not start
        in_zeroing = [Signal(n, name=f"in_zeroing{k}") for k in range(2)]
        for k in range(2):
            for s in range(n):
                m.d.comb += in_zeroing[k][s].eq(Cat(*[zeroes(e, k, s) for e in range(n)]).any())

        # A slot is busy from the Run Program's EXEC write until the command completes, so a
        # Request Slot after that write never hands it out (and a release of it defers the free).
        busy = Signal(n)
        for s in range(n):
            m.d.comb += busy[s].eq(Cat(*[(pend[e] | run[e]) & (tgt[e] == s)
                                         for e in range(n)]).any())

        # Core s starts the lowest-numbered command block waiting for it.
        grant = [[Signal(name=f"g{e}_{s}") for s in range(n)] for e in range(n)]
        for s in range(n):
            taken = Const(0)
            for e in range(n):
                m.d.comb += grant[e][s].eq(pend[e] & ~abort_bit[e] & (tgt[e] == s)
                                           & ~c_busy[s] & ~in_zeroing[0][s]
                                           & ~in_zeroing[1][s] & ~taken)
                taken = taken | grant[e][s]

        read_cases: dict[int, object] = dict(self._constant_words())

        for s, core in enumerate(self.cores):
            m.submodules[f"engine{s}"] = core
            m.d.comb += [
                core.prog_len.eq(c_len[s]), core.data_len.eq(self.data_slot_size),
                core.data_present.eq(1), core.budget.eq(self.budget),
                core.abort.eq(Cat(*[run[e] & abort_bit[e] & (tgt[e] == s)
                                    for e in range(n)]).any()),
            ]
            with m.If(core.done):
                m.d.sync += c_busy[s].eq(0)
            for e in range(n):
                with m.If(grant[e][s]):
                    m.d.comb += core.start.eq(1)
                    m.d.sync += [c_busy[s].eq(1), c_len[s].eq(plen[e])]

            # BAR4: this core's slots
            in_prog = (self.mem_addr >= self.prog_base + s * self.prog_slot_size) & \
                      (self.mem_addr < self.prog_base + (s + 1) * self.prog_slot_size)
            in_data = (self.mem_addr >= self.data_base + s * self.data_slot_size) & \
                      (self.mem_addr < self.data_base + (s + 1) * self.data_slot_size)
            m.d.comb += [
                core.host_imem_addr.eq(self.mem_addr[3:]),
                core.host_imem_wdata.eq(self.mem_wdata),
                core.host_imem_we.eq(in_prog & (self.mem_we != 0) & ~c_busy[s]),
                core.host_dmem_addr.eq(self.mem_addr[3:]),
                core.host_dmem_wdata.eq(self.mem_wdata),
                core.host_dmem_we.eq(Mux(in_data & ~c_busy[s], self.mem_we, 0)),
            ]
            # Zeroing a slot takes its memory port from the bus (one word a cycle).
            for e in range(n):
                with m.If(zeroes(e, regs.SLOT_PROGRAM, s)):
                    m.d.comb += [core.host_imem_addr.eq(z_word[e]), core.host_imem_wdata.eq(0),
                                 core.host_imem_we.eq(1)]
                with m.If(zeroes(e, regs.SLOT_DATA, s)):
                    m.d.comb += [core.host_dmem_addr.eq(z_word[e]), core.host_dmem_wdata.eq(0),
                                 core.host_dmem_we.eq(0xFF)]
            was_data = Signal(name=f"c{s}_mem_rd")
            m.d.sync += was_data.eq(self.mem_re & in_data & ~c_busy[s]
                                    & ~in_zeroing[regs.SLOT_DATA][s])
            with m.If(was_data):
                m.d.comb += self.mem_rdata.eq(core.host_dmem_rdata)

        for e in range(n):
            req = [Signal(32, name=f"e{e}_req{i}") for i in range(8)]
            res = [Signal(32, name=f"e{e}_res{i}") for i in range(4)]
            exec_bit = Signal(name=f"e{e}_exec")
            done_bit = Signal(name=f"e{e}_done")
            req_base = regs.cmdreq(e)
            res_base = regs.cmdres(e)
            ctrl = regs.cmdctrl(e)
            for i in range(8):
                read_cases[req_base + 4 * i] = req[i]
            for i in range(4):
                read_cases[res_base + 4 * i] = res[i]
            read_cases[ctrl] = Cat(exec_bit, Const(0, 7), done_bit, Const(0, 7), abort_bit[e])

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
                """Handshake end: response, DONE = 1, EXEC = ABORT = 0, interrupt pulse."""
                wide = Cat(value, Const(0, 64))
                m.d.sync += [
                    _res[0].eq(Cat(_id, Const(status, 8) if isinstance(status, int) else status,
                                   Const(0, 8))),
                    _res[1].eq(0), _res[2].eq(wide[0:32]), _res[3].eq(wide[32:64]),
                    _exec.eq(0), _done.eq(1), abort_bit[_e].eq(0), irq[_e].eq(1),
                ]

            ctrl_we = self.reg_we & (word_addr == ctrl >> 2)
            start = ctrl_we & self.reg_wdata[0] & ~exec_bit
            if self.can_abort:
                # A write that carries ABORT and EXEC stops the running command; the start is
                # then an EXEC write to a busy engine (ignored).
                with m.If(ctrl_we & self.reg_wdata[8 * regs.EHCMDABORT] & (pend[e] | run[e])):
                    m.d.sync += abort_bit[e].eq(1)
            bad_len = ((length == 0) | (length[0:3] != 0) | (length > self.prog_slot_size))
            pslot = arg8[0:slot_bits]
            with m.If(start):
                m.d.sync += [exec_bit.eq(1), done_bit.eq(0)]
                with m.Switch(opcode):
                    with m.Case(regs.CMD_RUN_PROGRAM):
                        with m.If(arg8 >= n):
                            respond(regs.STATUS_INVALID_PROG_SLOT, Const(0, 64))
                        with m.Elif((arg9 >= n) | (arg9 != arg8)):
                            # each core's data memory is the data slot of the same number
                            respond(regs.STATUS_INVALID_DATA_SLOT, Const(0, 64))
                        with m.Else():
                            # a free slot a run uses becomes host-owned: the host's allocator
                            # chose it, and only a release or reset frees it
                            for k in range(2):
                                with m.If(~(dev_own[k] | host_own[k]).bit_select(pslot, 1)):
                                    m.d.sync += host_own[k].eq(
                                        host_own[k] | (Const(1, n) << pslot))
                            with m.If(bad_len):
                                respond(regs.STATUS_EBPF_ERROR, Const(regs.EBPF_ERR_LOAD, 64))
                            with m.Else():
                                m.d.sync += [pend[e].eq(1), tgt[e].eq(pslot),
                                             plen[e].eq(length[3:])]
                    with m.Case(regs.CMD_REQUEST_SLOT):
                        for kind in (regs.SLOT_PROGRAM, regs.SLOT_DATA):
                            with m.If(arg8 == kind):
                                free = ~(dev_own[kind] | host_own[kind] | busy
                                         | in_zeroing[kind])
                                with m.If(free == 0):
                                    respond(regs.STATUS_NO_SPACE, Const(0, 64))
                                with m.Else():
                                    # the lowest free slot that no running command uses
                                    low = Signal(slot_bits, name=f"e{e}_free{kind}")
                                    for i in reversed(range(n)):
                                        with m.If(free[i]):
                                            m.d.comb += low.eq(i)
                                    # device-owned from now on; the response follows the zeroing,
                                    # so a new owner never reads a previous owner's bytes
                                    m.d.sync += [
                                        dev_own[kind].eq(dev_own[kind] | (Const(1, n) << low)),
                                        z_active[e].eq(1), z_kind[e].eq(kind), z_slot[e].eq(low),
                                        z_word[e].eq(0),
                                    ]
                        with m.If(arg8 > regs.SLOT_DATA):
                            respond(regs.STATUS_INVALID_OPCODE, Const(0, 64))
                    with m.Case(regs.CMD_RELEASE_SLOT):
                        for kind, bad in ((regs.SLOT_PROGRAM, regs.STATUS_INVALID_PROG_SLOT),
                                          (regs.SLOT_DATA, regs.STATUS_INVALID_DATA_SLOT)):
                            with m.If(arg8 == kind):
                                owned = (dev_own[kind] | host_own[kind]).bit_select(
                                    arg9[0:slot_bits], 1)
                                with m.If((arg9 >= n) | ~owned):
                                    respond(bad, Const(0, 64))
                                with m.Else():
                                    # Free at once; a busy slot stays out of Request Slot until
                                    # its run ends (deferred free), through ``busy``.
                                    keep = ~(Const(1, n) << arg9[0:slot_bits])
                                    m.d.sync += [dev_own[kind].eq(dev_own[kind] & keep),
                                                 host_own[kind].eq(host_own[kind] & keep)]
                                    respond(regs.STATUS_SUCCESS, Const(0, 64))
                        with m.If(arg8 > regs.SLOT_DATA):
                            respond(regs.STATUS_INVALID_OPCODE, Const(0, 64))
                    with m.Default():
                        respond(regs.STATUS_INVALID_OPCODE, Const(0, 64))

            with m.If(z_active[e]):
                last = Mux(z_kind[e] == regs.SLOT_PROGRAM, self.imem_depth - 1,
                           self.dmem_bytes // 8 - 1)
                with m.If(z_word[e] == last):
                    m.d.sync += z_active[e].eq(0)
                    respond(regs.STATUS_SUCCESS, z_slot[e])
                with m.Else():
                    m.d.sync += z_word[e].eq(z_word[e] + 1)
            # A run aborted before its core started: status 0x07, value 0 (pc not reached).
            with m.If(pend[e] & abort_bit[e]):
                m.d.sync += pend[e].eq(0)
                respond(regs.STATUS_ABORTED, Const(0, 64))
            for s, core in enumerate(self.cores):
                with m.If(grant[e][s]):
                    m.d.sync += [pend[e].eq(0), run[e].eq(1)]
                with m.If(run[e] & (tgt[e] == s) & core.done):
                    m.d.sync += run[e].eq(0)
                    with m.If(core.aborted):
                        respond(regs.STATUS_ABORTED, core.pc)
                    with m.Elif(core.error):
                        respond(regs.STATUS_EBPF_ERROR, core.error_code)
                    with m.Else():
                        respond(regs.STATUS_SUCCESS, core.r0)

        with m.If(self.reg_re):
            m.d.sync += rdata.eq(0)
            with m.Switch(word_addr):
                for off, value in sorted(read_cases.items()):
                    with m.Case(off >> 2):
                        m.d.sync += rdata.eq(value)
        return m

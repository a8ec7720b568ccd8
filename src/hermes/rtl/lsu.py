"""The RTL core's load/store unit: bounds check, banked data and stack memories, byte lanes."""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..engine.memory import DATA_BASE, MAX_CALL_DEPTH, STACK_SIZE, STACK_TOP

#: Bytes of stack memory: every frame of the deepest call chain.
STACK_BYTES = STACK_SIZE * MAX_CALL_DEPTH
#: Lowest virtual stack address; stack byte ``i`` of the stack memory is at STACK_LO + i.
STACK_LO = STACK_TOP - STACK_BYTES
# the bounds check relies on these alignments (see LoadStore.elaborate)
assert DATA_BASE % (1 << 32) == 0 and STACK_LO % STACK_BYTES == 0 and STACK_BYTES == 4096


class LoadStore(wiring.Component):
    """Data and stack memory behind the virtual address map, for accesses of 1, 2, 4 or 8 bytes.

    Both memories are split into an even and an odd bank of 64-bit words (``dmem[0..1]``,
    ``smem[0..1]``, ``amaranth.lib.memory.Memory``), so that any access, aligned or not, reads
    or writes its two neighbouring words in one cycle.

    The access of the executing instruction:

    * ``base`` (in, 64) + ``off`` (in, signed 16): its virtual address; ``nbytes`` (in, 4): its
      width.
    * ``data_len`` (in): bytes of the data region in use (from DATA_BASE); ``depth`` (in): active
      calls, which bound the stack region to the frames in use.
    * ``in_bounds`` (out): the access lies inside the data region or the stack frames in use.

    Loads (two cycles: the address in the first, the value in the second):

    * ``latch`` (in): remember this access, with ``sign_extend`` (in) for ``ldxs*``; the memories
      read it in the same cycle.
    * ``loaded`` (out, 64): in the next cycle, the latched access's value (zero- or
      sign-extended); ``lnbytes`` (out, 4): its width.

    Stores (one cycle):

    * ``store`` (in): write the low ``nbytes`` of ``wdata`` (in, 64) at this cycle's access.
    * ``store_latched`` (in): write them at the latched access instead (an atomic's second cycle).
    * ``clear`` (in): a run starts: the stack reads as zeros until written.

    The host (only while ``host`` is high, the core idle; 64-bit words, one cycle read latency):

    * ``host_addr`` (in): data word index; ``host_wdata`` (in, 64) with byte enables ``host_we``
      (in, 8); ``host_rdata`` (out, 64): the word addressed in the previous cycle.

    ``data`` gives the data memory's initial contents.
    """

    def __init__(self, *, dmem_bytes: int, data: bytes = b""):
        self.dword_bits = (dmem_bytes // 8 - 1).bit_length()
        # a physical byte address covers the larger of the two memories
        self.lo_bits = max(self.dword_bits + 3, (STACK_BYTES - 1).bit_length())
        super().__init__({
            "base": In(64), "off": In(signed(16)), "nbytes": In(4),
            "data_len": In(self.dword_bits + 4), "depth": In(range(MAX_CALL_DEPTH)),
            "in_bounds": Out(1),
            "latch": In(1), "sign_extend": In(1), "loaded": Out(64), "lnbytes": Out(4),
            "store": In(1), "store_latched": In(1), "wdata": In(64), "clear": In(1),
            "host": In(1), "host_addr": In(self.dword_bits), "host_wdata": In(64),
            "host_we": In(8), "host_rdata": Out(64),
        })
        padded = data + bytes(-len(data) % 8)
        dwords = [int.from_bytes(padded[i:i + 8], "little") for i in range(0, len(padded), 8)]
        self.dmem = [Memory(shape=64, depth=dmem_bytes // 16, init=dwords[bank::2])
                     for bank in range(2)]
        self.smem = [Memory(shape=64, depth=STACK_BYTES // 16, init=[]) for _ in range(2)]

    def elaborate(self, platform: object) -> Module:  # noqa: C901 - one access path, read and write
        """Build the address check, the bank ports and the lane shifts."""
        m = Module()
        for i in range(2):
            m.submodules[f"dmem{i}"] = self.dmem[i]
            m.submodules[f"smem{i}"] = self.smem[i]
        d_rd = [b.read_port() for b in self.dmem]
        d_wr = [b.write_port(granularity=8) for b in self.dmem]
        s_rd = [b.read_port() for b in self.smem]
        s_wr = [b.write_port(granularity=8) for b in self.smem]

        # Both regions start at addresses aligned far beyond their size (DATA_BASE at 4 GiB,
        # STACK_LO at 4 KiB), so an address's low bits are already its offset in the memory and
        # the region test is an equality on the high bits plus a short compare on the low ones:
        # no 64-bit subtraction or comparison after the address adder.
        addr = Signal(64)
        m.d.comb += addr.eq(self.base + self.off)
        nbytes = self.nbytes
        in_data = ((addr[32:64] == DATA_BASE >> 32)
                   & ((addr[0:32] + nbytes) <= self.data_len))
        stack_floor = (MAX_CALL_DEPTH - 1 - self.depth) * STACK_SIZE
        in_stack = ((addr[12:64] == STACK_LO >> 12) & (addr[0:12] >= stack_floor)
                    & ((addr[0:12] + nbytes) <= STACK_BYTES))
        m.d.comb += self.in_bounds.eq(in_data | in_stack)
        # physical byte address inside the selected memory
        pa = Signal(self.lo_bits)
        m.d.comb += pa.eq(addr[0:self.lo_bits])
        word = pa[3:]
        boff = pa[0:3]

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

        # the latched access, for the second cycle of loads and atomics
        l_boff = Signal(3)
        l_odd = Signal()
        l_stack = Signal()
        l_sx = Signal()
        l_word = Signal(len(word))
        l_valid = [Signal(name=f"l_valid{i}") for i in range(2)]
        with m.If(self.latch):
            m.d.sync += [
                l_boff.eq(boff), l_odd.eq(word[0]), l_stack.eq(~in_data),
                self.lnbytes.eq(nbytes), l_sx.eq(self.sign_extend), l_word.eq(word),
                l_valid[0].eq(s_valid[0].bit_select(((word + 1) >> 1)[0:row_bits], 1)),
                l_valid[1].eq(s_valid[1].bit_select((word >> 1)[0:row_bits], 1)),
            ]
        rd0 = Mux(l_stack, Mux(l_valid[0], s_rd[0].data, 0), d_rd[0].data)
        rd1 = Mux(l_stack, Mux(l_valid[1], s_rd[1].data, 0), d_rd[1].data)
        window = Mux(l_odd, Cat(rd1, rd0), Cat(rd0, rd1))
        shifted = Signal(64)
        m.d.comb += shifted.eq(window >> (l_boff * 8))
        with m.Switch(self.lnbytes):
            for n in (1, 2, 4):
                with m.Case(n):
                    part = shifted[0:8 * n]
                    m.d.comb += self.loaded.eq(Mux(l_sx, part.as_signed(), part))
            with m.Default():
                m.d.comb += self.loaded.eq(shifted)

        # the write: this cycle's access (a store) or the latched one (an atomic)
        w_en = self.store | self.store_latched
        w_nbytes = Mux(self.store_latched, self.lnbytes, nbytes)
        w_boff = Mux(self.store_latched, l_boff, boff)
        w_word = Signal(len(word))
        m.d.comb += w_word.eq(Mux(self.store_latched, l_word, word))
        w_stack = Mux(self.store_latched, l_stack, ~in_data)
        lane_mask = Signal(8)
        with m.Switch(w_nbytes):
            for n in (1, 2, 4, 8):
                with m.Case(n):
                    m.d.comb += lane_mask.eq((1 << n) - 1)
        wwin_data = Signal(128)
        wwin_en = Signal(16)
        m.d.comb += [wwin_data.eq(self.wdata << (w_boff * 8)), wwin_en.eq(lane_mask << w_boff)]
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
            with m.If(self.clear):
                m.d.sync += s_valid[i].eq(0)
            with m.Elif(w_en & w_stack & (bank_en[i] != 0)):
                m.d.sync += s_valid[i].eq(s_valid[i] | (Const(1, rows) << row))
            m.d.comb += [
                s_wr[i].addr.eq(bank_addr[i]), s_wr[i].data.eq(Mux(fresh, lanes, bank_data[i])),
                s_wr[i].en.eq(Mux(w_en & w_stack, Mux(fresh & (bank_en[i] != 0), 0xFF,
                                                      bank_en[i]), 0)),
            ]

        # the data memory's ports belong to the host while the core is idle
        host_bank = self.host_addr[0]
        host_rbank = Signal()
        m.d.sync += host_rbank.eq(host_bank)
        m.d.comb += self.host_rdata.eq(Mux(host_rbank, d_rd[1].data, d_rd[0].data))
        with m.If(self.host):
            m.d.comb += [
                d_rd[0].addr.eq(self.host_addr >> 1), d_rd[1].addr.eq(self.host_addr >> 1),
                d_wr[0].addr.eq(self.host_addr >> 1), d_wr[1].addr.eq(self.host_addr >> 1),
                d_wr[0].data.eq(self.host_wdata), d_wr[1].data.eq(self.host_wdata),
                d_wr[0].en.eq(Mux(host_bank, 0, self.host_we)),
                d_wr[1].en.eq(Mux(host_bank, self.host_we, 0)),
            ]
        with m.Else():
            for i in range(2):
                m.d.comb += [
                    d_wr[i].addr.eq(bank_addr[i]), d_wr[i].data.eq(bank_data[i]),
                    d_wr[i].en.eq(Mux(w_en & ~w_stack, bank_en[i], 0)),
                ]
        return m

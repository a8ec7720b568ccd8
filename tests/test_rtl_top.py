"""The RTL device top: BAR0 command handshake, slot commands and Run Program through the buses."""
from __future__ import annotations

import struct

import pytest

from hermes import regs
from hermes.engine.program import Program

pytest.importorskip("amaranth")
from amaranth.sim import Simulator  # noqa: E402

from hermes.rtl.top import HermesTop  # noqa: E402


class Host:
    """Bus-level driver of the top, the way a PCIe front end would drive it."""

    def __init__(self, ctx, top: HermesTop):
        self.ctx, self.top = ctx, top

    async def wr(self, addr: int, value: int) -> None:
        c, t = self.ctx, self.top
        c.set(t.reg_addr, addr)
        c.set(t.reg_wdata, value)
        c.set(t.reg_we, 1)
        await c.tick()
        c.set(t.reg_we, 0)

    async def rd(self, addr: int) -> int:
        c, t = self.ctx, self.top
        c.set(t.reg_addr, addr)
        c.set(t.reg_re, 1)
        await c.tick()
        c.set(t.reg_re, 0)
        return c.get(t.reg_rdata)

    async def mem_wr(self, addr: int, data: bytes) -> None:
        c, t = self.ctx, self.top
        data = data + bytes(-len(data) % 8)
        for i in range(0, len(data), 8):
            c.set(t.mem_addr, addr + i)
            c.set(t.mem_wdata, int.from_bytes(data[i:i + 8], "little"))
            c.set(t.mem_we, 0xFF)
            await c.tick()
        c.set(t.mem_we, 0)

    async def mem_rd(self, addr: int, n: int) -> bytes:
        c, t = self.ctx, self.top
        out = b""
        for i in range(0, n, 8):
            c.set(t.mem_addr, addr + i)
            c.set(t.mem_re, 1)
            await c.tick()
            out += c.get(t.mem_rdata).to_bytes(8, "little")
        c.set(t.mem_re, 0)
        return out[:n]

    async def command(self, engine: int, opcode: int, cmd_id: int, args: bytes = b"") -> tuple:
        """Write the request, set EXEC, wait for DONE; returns (id, status, value)."""
        req = bytes([opcode, 0]) + cmd_id.to_bytes(2, "little") + bytes(4) + args
        req = req + bytes(32 - len(req))
        for i in range(8):
            await self.wr(regs.cmdreq(engine) + 4 * i, int.from_bytes(req[4 * i:4 * i + 4], "little"))
        await self.wr(regs.cmdctrl(engine), 1)
        ctrl = await self.rd(regs.cmdctrl(engine))
        for _ in range(100_000):
            if (ctrl >> 8) & 1:
                break
            ctrl = await self.rd(regs.cmdctrl(engine))
        assert ctrl & 1 == 0, "EXEC still set after DONE"
        words = [await self.rd(regs.cmdres(engine) + 4 * i) for i in range(4)]
        res = b"".join(w.to_bytes(4, "little") for w in words)
        return (int.from_bytes(res[0:2], "little"), res[2], int.from_bytes(res[8:16], "little"))


def run_top(top: HermesTop, bench) -> None:
    """Simulate ``top`` with the async ``bench(host)``."""
    sim = Simulator(top)
    sim.add_clock(4e-9)

    async def tb(ctx):
        await bench(Host(ctx, top))

    sim.add_testbench(tb)
    sim.run()


def test_capability_registers():
    top = HermesTop(n_engines=2, imem_depth=64, dmem_bytes=256)
    seen = {}

    async def bench(h: Host):
        seen["ver"] = await h.rd(regs.EHVER)
        seen["counts"] = await h.rd(regs.EHENG)
        seen["pssze"] = await h.rd(regs.EHPSSZE)
        seen["dsoff"] = await h.rd(regs.EHDSOFF)
        seen["dssze"] = await h.rd(regs.EHDSSZE)
        seen["unmapped"] = await h.rd(0x3000)

    run_top(top, bench)
    assert seen["ver"] == 1
    assert seen["counts"] & 0xFFFFFF == 0x020202
    assert seen["pssze"] == 64 * 8
    assert seen["dsoff"] == top.data_base
    assert seen["dssze"] == 256
    assert seen["unmapped"] == 0


def test_run_program_through_bar0():
    top = HermesTop(n_engines=2, imem_depth=64, dmem_bytes=256)
    prog = Program.from_asm("""
        ldxdw %r3, [%r1+0]
        add %r3, %r2
        stxdw [%r1+8], %r3
        mov %r0, %r3
        exit
    """)
    out = {}

    async def bench(h: Host):
        # slots 0 and 1 of each kind
        out["p0"] = await h.command(1, regs.CMD_REQUEST_SLOT, 1, bytes([regs.SLOT_PROGRAM]))
        out["p1"] = await h.command(1, regs.CMD_REQUEST_SLOT, 2, bytes([regs.SLOT_PROGRAM]))
        out["d0"] = await h.command(1, regs.CMD_REQUEST_SLOT, 3, bytes([regs.SLOT_DATA]))
        out["d1"] = await h.command(1, regs.CMD_REQUEST_SLOT, 4, bytes([regs.SLOT_DATA]))
        out["full"] = await h.command(1, regs.CMD_REQUEST_SLOT, 5, bytes([regs.SLOT_DATA]))
        out["badtype"] = await h.command(1, regs.CMD_REQUEST_SLOT, 6, bytes([7]))
        await h.mem_wr(top.prog_base + top.prog_slot_size, prog.code)
        await h.mem_wr(top.data_base + top.data_slot_size, struct.pack("<Q", 1000))
        args = bytes([1, 1, 0, 0]) + len(prog.code).to_bytes(4, "little")
        out["run"] = await h.command(1, regs.CMD_RUN_PROGRAM, 7, args)
        out["mem"] = await h.mem_rd(top.data_base + top.data_slot_size, 16)
        out["wrong_slot"] = await h.command(1, regs.CMD_RUN_PROGRAM, 8, bytes([0, 1, 0, 0]) + args[4:])
        out["bad_len"] = await h.command(1, regs.CMD_RUN_PROGRAM, 9, bytes([1, 1, 0, 0, 12, 0, 0, 0]))
        out["bad_op"] = await h.command(0, 0x42, 10)
        out["release"] = await h.command(0, regs.CMD_RELEASE_SLOT, 11, bytes([regs.SLOT_DATA, 1]))
        out["release2"] = await h.command(0, regs.CMD_RELEASE_SLOT, 12, bytes([regs.SLOT_DATA, 1]))
        out["norun"] = await h.command(1, regs.CMD_RUN_PROGRAM, 13, args)

    run_top(top, bench)
    assert out["p0"] == (1, regs.STATUS_SUCCESS, 0)
    assert out["p1"] == (2, regs.STATUS_SUCCESS, 1)
    assert out["d1"] == (4, regs.STATUS_SUCCESS, 1)
    assert out["full"] == (5, regs.STATUS_NO_SPACE, 0)
    assert out["badtype"][1] == regs.STATUS_INVALID_OPCODE
    assert out["run"] == (7, regs.STATUS_SUCCESS, 1000 + 256)
    assert struct.unpack("<QQ", out["mem"]) == (1000, 1256)
    assert out["wrong_slot"][1] == regs.STATUS_INVALID_PROG_SLOT
    assert out["bad_len"] == (9, regs.STATUS_EBPF_ERROR, regs.EBPF_ERR_LOAD)
    assert out["bad_op"] == (10, regs.STATUS_INVALID_OPCODE, 0)
    assert out["release"] == (11, regs.STATUS_SUCCESS, 0)
    assert out["release2"][1] == regs.STATUS_INVALID_DATA_SLOT
    assert out["norun"][1] == regs.STATUS_INVALID_DATA_SLOT


def test_run_error_is_status_5_with_code():
    top = HermesTop(n_engines=1, imem_depth=16, dmem_bytes=64)
    prog = Program.from_asm("mov %r0, 1\nldxdw %r0, [%r1+60]\nexit")
    out = {}

    async def bench(h: Host):
        await h.command(0, regs.CMD_REQUEST_SLOT, 1, bytes([regs.SLOT_PROGRAM]))
        await h.command(0, regs.CMD_REQUEST_SLOT, 2, bytes([regs.SLOT_DATA]))
        await h.mem_wr(0, prog.code)
        args = bytes([0, 0, 0, 0]) + len(prog.code).to_bytes(4, "little")
        out["run"] = await h.command(0, regs.CMD_RUN_PROGRAM, 3, args)

    run_top(top, bench)
    assert out["run"] == (3, regs.STATUS_EBPF_ERROR, regs.EBPF_ERR_OUT_OF_BOUNDS | (1 << 8))


def test_two_engines_run_at_the_same_time():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    # engine 0 loops longer than engine 1; both are started before either finishes
    slow = Program.from_asm("mov %r0, 0\nmov %r3, 50\nl:\nadd %r0, %r3\nsub %r3, 1\n"
                            "jne %r3, 0, l\nexit")
    fast = Program.from_asm("ldxdw %r0, [%r1+0]\nadd %r0, 1\nexit")
    out = {}

    async def bench(h: Host):
        for i in range(2):
            await h.command(0, regs.CMD_REQUEST_SLOT, 1, bytes([regs.SLOT_PROGRAM]))
            await h.command(0, regs.CMD_REQUEST_SLOT, 2, bytes([regs.SLOT_DATA]))
        await h.mem_wr(0, slow.code)
        await h.mem_wr(top.prog_slot_size, fast.code)
        await h.mem_wr(top.data_base + top.data_slot_size, struct.pack("<Q", 41))
        for e, prog, cid in ((0, slow, 10), (1, fast, 11)):
            req = bytes([regs.CMD_RUN_PROGRAM, 0]) + cid.to_bytes(2, "little") + bytes(4) + \
                bytes([e, e, 0, 0]) + len(prog.code).to_bytes(4, "little")
            req += bytes(32 - len(req))
            for i in range(8):
                await h.wr(regs.cmdreq(e) + 4 * i, int.from_bytes(req[4 * i:4 * i + 4], "little"))
            await h.wr(regs.cmdctrl(e), 1)
        out["ctrl0_early"] = await h.rd(regs.cmdctrl(0))
        # a second EXEC while engine 0 runs is ignored
        await h.wr(regs.cmdctrl(0), 1)
        for _ in range(1000):
            c0, c1 = await h.rd(regs.cmdctrl(0)), await h.rd(regs.cmdctrl(1))
            if c0 >> 8 & 1 and c1 >> 8 & 1:
                break
        for e in range(2):
            words = [await h.rd(regs.cmdres(e) + 4 * i) for i in range(4)]
            res = b"".join(w.to_bytes(4, "little") for w in words)
            out[e] = (int.from_bytes(res[0:2], "little"), res[2], int.from_bytes(res[8:16], "little"))

    run_top(top, bench)
    assert out["ctrl0_early"] & 1 == 1 and not out["ctrl0_early"] >> 8 & 1
    assert out[0] == (10, regs.STATUS_SUCCESS, sum(range(1, 51)))
    assert out[1] == (11, regs.STATUS_SUCCESS, 42)

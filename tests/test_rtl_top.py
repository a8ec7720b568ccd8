"""The RTL device top: BAR0 handshake, slot ownership, abort and Run Program through the buses.

Where the RTL implements a rule of specs/device.md the same command sequence runs on the
simulated RTL and on the software device model, and the responses must be equal.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import pytest

from hermes import regs
from hermes.device import HermesDevice
from hermes.engine.asm import assemble_program
from tests.test_device import RET7
from tests.test_device_slots import ENDLESS

pytest.importorskip("amaranth")
from amaranth.sim import Simulator  # noqa: E402

from hermes.rtl.top import HermesTop  # noqa: E402

#: Register reads a wait for DONE may take on the RTL (each is a bus cycle).
MAX_POLLS = 20_000
#: Seconds a wait for DONE may take on the model.
MODEL_BOUND = 5.0
#: Seconds an "idle" step lets the model's engines run (the RTL runs ``Step.n`` cycles).
MODEL_IDLE = 0.05


class Host:
    """Bus-level driver of the top, the way a PCIe front end would drive it."""

    def __init__(self, ctx, top: HermesTop):
        self.ctx, self.top = ctx, top
        self.irqs = [0] * top.n_engines

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

    async def start(self, engine: int, opcode: int, cmd_id: int, args: bytes = b"") -> None:
        """Write the request, then EXEC."""
        req = bytes([opcode, 0]) + cmd_id.to_bytes(2, "little") + bytes(4) + args
        req = req + bytes(32 - len(req))
        for i in range(8):
            await self.wr(regs.cmdreq(engine) + 4 * i,
                          int.from_bytes(req[4 * i:4 * i + 4], "little"))
        await self.wr(regs.cmdctrl(engine), 1)

    async def finish(self, engine: int) -> tuple:
        """Wait for DONE; returns (id, status, value)."""
        for _ in range(MAX_POLLS):
            ctrl = await self.rd(regs.cmdctrl(engine))
            if (ctrl >> 8) & 1:
                break
        else:
            raise AssertionError(f"engine {engine}: no DONE after {MAX_POLLS} reads")
        assert ctrl & 1 == 0, "EXEC still set after DONE"
        words = [await self.rd(regs.cmdres(engine) + 4 * i) for i in range(4)]
        res = b"".join(w.to_bytes(4, "little") for w in words)
        return (int.from_bytes(res[0:2], "little"), res[2], int.from_bytes(res[8:16], "little"))

    async def command(self, engine: int, opcode: int, cmd_id: int, args: bytes = b"") -> tuple:
        """Write the request, set EXEC, wait for DONE; returns (id, status, value)."""
        await self.start(engine, opcode, cmd_id, args)
        return await self.finish(engine)


def run_top(top: HermesTop, bench) -> None:
    """Simulate ``top`` with the async ``bench(host)``; ``host.irqs`` counts ``irq`` pulses."""
    sim = Simulator(top)
    sim.add_clock(4e-9)
    host: list[Host] = []

    async def tb(ctx):
        host.append(Host(ctx, top))
        await bench(host[0])

    async def irq_counter(ctx):
        async for _clk, _rst, value in ctx.tick().sample(top.irq):
            if host:
                for e in range(top.n_engines):
                    host[0].irqs[e] += value >> e & 1

    sim.add_testbench(tb)
    sim.add_testbench(irq_counter, background=True)
    sim.run()


# --- one command sequence, two devices ----------------------------------------------------------
@dataclass
class Step:
    """One driver action. ``op``: "cmd" (start + wait, records the response), "start", "wait"
    (records the response; ``keep_value=False`` records None for the value, e.g. the pc of an
    abort), "abort" (EHCMDABORT write), "ctrl_write" (32-bit EHCMDCTRL write of ``value``),
    "ctrl" (records (EXEC, DONE, ABORT)), "load" (BAR4 write into program or data slot ``slot``),
    "read" (records ``n`` bytes of data slot ``slot``), "idle" (lets running programs go on:
    ``n`` cycles on the RTL, MODEL_IDLE seconds on the model), "irqs" (records completion
    interrupts per engine so far), "cap" (records EHCAP)."""
    op: str
    engine: int = 0
    opcode: int = 0
    args: bytes = b""
    kind: int = regs.SLOT_DATA
    slot: int = 0
    data: bytes = b""
    n: int = 0
    value: int = 0
    keep_value: bool = True


def cmd(engine: int, opcode: int, args: bytes = b"") -> Step:
    """A command that is started and waited for."""
    return Step("cmd", engine, opcode, args)


def request(kind: int, engine: int = 0) -> Step:
    """Request Slot of ``kind``."""
    return cmd(engine, regs.CMD_REQUEST_SLOT, bytes([kind]))


def release(kind: int, slot: int, engine: int = 0) -> Step:
    """Release Slot ``slot`` of ``kind``."""
    return cmd(engine, regs.CMD_RELEASE_SLOT, bytes([kind, slot]))


def run_args(pslot: int, dslot: int, length: int) -> bytes:
    """Run Program request bytes 8..15."""
    return bytes([pslot, dslot, 0, 0]) + struct.pack("<I", length)


def run(pslot: int, dslot: int, length: int, engine: int = 0) -> Step:
    """Run Program, waited for."""
    return cmd(engine, regs.CMD_RUN_PROGRAM, run_args(pslot, dslot, length))


def start_run(pslot: int, dslot: int, length: int, engine: int = 0) -> Step:
    """Run Program, started only (a later "wait" step takes its response)."""
    return Step("start", engine, regs.CMD_RUN_PROGRAM, run_args(pslot, dslot, length))


def load(kind: int, slot: int, data: bytes) -> Step:
    """BAR4 write of ``data`` at the start of slot ``slot`` of ``kind`` (DMA stands in)."""
    return Step("load", kind=kind, slot=slot, data=data)


def on_rtl(top: HermesTop, steps: list[Step]) -> list:
    """Run ``steps`` on the simulated RTL; the recorded results in order."""
    out: list = []

    async def bench(h: Host):
        await _play_rtl(h, top, steps, out)

    run_top(top, bench)
    return out


async def _play_rtl(h: Host, top: HermesTop, steps: list[Step], out: list) -> None:
    geometry = [await h.rd(off) for off in (regs.EHPSOFF, regs.EHPSSZE, regs.EHDSOFF,
                                            regs.EHDSSZE)]
    for cid, st in enumerate(steps, 1):
        if st.op in ("cmd", "start"):
            await h.start(st.engine, st.opcode, cid, st.args)
            if st.op == "cmd":
                out.append(await h.finish(st.engine))
        elif st.op == "wait":
            rcid, status, value = await h.finish(st.engine)
            out.append((rcid, status, value if st.keep_value else None))
        elif st.op == "abort":
            await h.wr(regs.cmdctrl(st.engine), 1 << 8 * regs.EHCMDABORT)
        elif st.op == "ctrl_write":
            await h.wr(regs.cmdctrl(st.engine), st.value)
        elif st.op == "ctrl":
            v = await h.rd(regs.cmdctrl(st.engine))
            out.append((v & 0xFF, v >> 8 & 0xFF, v >> 16 & 0xFF))
        elif st.op in ("load", "read"):
            base, size = geometry[2 * st.kind], geometry[2 * st.kind + 1]
            if st.op == "load":
                await h.mem_wr(base + st.slot * size, st.data)
            else:
                out.append(await h.mem_rd(base + st.slot * size, st.n))
        elif st.op == "idle":
            for _ in range(st.n):
                await h.ctx.tick()
        elif st.op == "irqs":
            await h.ctx.tick()     # the pulse of a completion seen this cycle is counted
            out.append(tuple(h.irqs))
        elif st.op == "cap":
            out.append(await h.rd(regs.EHENG) >> 24)
        else:
            raise ValueError(f"unknown step {st.op!r}")


def model_for(top: HermesTop) -> HermesDevice:
    """A software device of the RTL top's geometry (engines, slots, slot sizes, abort)."""
    n = top.n_engines
    return HermesDevice(engines=n, program_slots=n, data_slots=n,
                        program_slot_size=top.prog_slot_size, data_slot_size=top.data_slot_size,
                        executor="interp", budget=1 << 62, can_abort=top.can_abort,
                        run_context=False)   # the RTL has no run context (EHCAP_RUNCTX clear)


def on_model(dev: HermesDevice, steps: list[Step]) -> list:
    """Run ``steps`` on the software device model through its BARs; the recorded results."""
    irqs = [0] * dev.engines
    out: list = []

    def handler(vector: int) -> None:
        if regs.engine_vector(0) <= vector < regs.engine_vector(dev.engines):
            irqs[vector - regs.engine_vector(0)] += 1

    dev.set_irq_handler(handler)
    geometry = [dev.bar_read(0, off, 4) for off in (regs.EHPSOFF, regs.EHPSSZE, regs.EHDSOFF,
                                                     regs.EHDSSZE)]

    def finish(engine: int) -> tuple:
        deadline = time.monotonic() + MODEL_BOUND
        while not dev.bar_read(0, regs.cmdctrl(engine) + regs.EHCMDDONE, 1):
            assert time.monotonic() < deadline, f"engine {engine}: no DONE"
            time.sleep(0.0005)
        lo = dev.bar_read(0, regs.cmdres(engine), 8)
        return lo & 0xFFFF, lo >> 16 & 0xFF, dev.bar_read(0, regs.cmdres(engine) + 8, 8)

    for cid, st in enumerate(steps, 1):
        if st.op in ("cmd", "start"):
            req = (bytes([st.opcode, 0]) + cid.to_bytes(2, "little") + bytes(4)
                   + st.args).ljust(32, b"\0")
            for i in range(0, 32, 4):
                dev.bar_write(0, regs.cmdreq(st.engine) + i, 4,
                              int.from_bytes(req[i:i + 4], "little"))
            dev.bar_write(0, regs.cmdctrl(st.engine), 4, 1)
            if st.op == "cmd":
                out.append(finish(st.engine))
        elif st.op == "wait":
            rcid, status, value = finish(st.engine)
            out.append((rcid, status, value if st.keep_value else None))
        elif st.op == "abort":
            dev.bar_write(0, regs.cmdctrl(st.engine), 4, 1 << 8 * regs.EHCMDABORT)
        elif st.op == "ctrl_write":
            dev.bar_write(0, regs.cmdctrl(st.engine), 4, st.value)
        elif st.op == "ctrl":
            v = dev.bar_read(0, regs.cmdctrl(st.engine), 4)
            out.append((v & 0xFF, v >> 8 & 0xFF, v >> 16 & 0xFF))
        elif st.op in ("load", "read"):
            off = geometry[2 * st.kind] + st.slot * geometry[2 * st.kind + 1]
            if st.op == "load":
                dev.bar4[off:off + len(st.data)] = st.data
            else:
                out.append(bytes(dev.bar4[off:off + st.n]))
        elif st.op == "idle":
            time.sleep(MODEL_IDLE)
        elif st.op == "irqs":
            out.append(tuple(irqs))
        elif st.op == "cap":
            out.append(dev.bar_read(0, regs.EHCAP, 1))
        else:
            raise ValueError(f"unknown step {st.op!r}")
    return out


def both(top: HermesTop, steps: list[Step]) -> list:
    """Run ``steps`` on the RTL and on a model of the same geometry; asserts equal results."""
    dev = model_for(top)
    try:
        model = on_model(dev, steps)
    finally:
        dev.close(abort=True)
    rtl = on_rtl(top, steps)
    assert rtl == model
    return rtl


def test_capability_registers():
    top = HermesTop(n_engines=2, imem_depth=64, dmem_bytes=256)
    seen = {}

    async def bench(h: Host):
        seen["ver"] = await h.rd(regs.EHVER)
        seen["counts"] = await h.rd(regs.EHENG)   # EHENG, EHPSLOT, EHDSLOT, EHCAP
        seen["pssze"] = await h.rd(regs.EHPSSZE)
        seen["dsoff"] = await h.rd(regs.EHDSOFF)
        seen["dssze"] = await h.rd(regs.EHDSSZE)
        seen["unmapped"] = await h.rd(0x3000)

    run_top(top, bench)
    assert seen["ver"] == 1
    assert seen["counts"] == 0x020202 | regs.EHCAP_ABORT << 24
    assert seen["pssze"] == 64 * 8
    assert seen["dsoff"] == top.data_base
    assert seen["dssze"] == 256
    assert seen["unmapped"] == 0


def test_run_program_through_bar0():
    top = HermesTop(n_engines=2, imem_depth=64, dmem_bytes=256)
    prog = assemble_program("""
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
        out["pairing"] = await h.command(1, regs.CMD_RUN_PROGRAM, 8, bytes([0, 1, 0, 0]) + args[4:])
        out["no_slot"] = await h.command(1, regs.CMD_RUN_PROGRAM, 8, bytes([2, 1, 0, 0]) + args[4:])
        out["bad_len"] = await h.command(1, regs.CMD_RUN_PROGRAM, 9,
                                         bytes([1, 1, 0, 0, 12, 0, 0, 0]))
        out["bad_op"] = await h.command(0, 0x42, 10)
        out["release"] = await h.command(0, regs.CMD_RELEASE_SLOT, 11, bytes([regs.SLOT_DATA, 1]))
        out["release2"] = await h.command(0, regs.CMD_RELEASE_SLOT, 12, bytes([regs.SLOT_DATA, 1]))
        out["host_run"] = await h.command(1, regs.CMD_RUN_PROGRAM, 13, args)

    run_top(top, bench)
    assert out["p0"] == (1, regs.STATUS_SUCCESS, 0)
    assert out["p1"] == (2, regs.STATUS_SUCCESS, 1)
    assert out["d1"] == (4, regs.STATUS_SUCCESS, 1)
    assert out["full"] == (5, regs.STATUS_NO_SPACE, 0)
    assert out["badtype"][1] == regs.STATUS_INVALID_OPCODE
    assert out["run"] == (7, regs.STATUS_SUCCESS, 1000 + 256)
    assert struct.unpack("<QQ", out["mem"]) == (1000, 1256)
    # each core pairs program slot s with data slot s (no crossbar between the memories)
    assert out["pairing"][1] == regs.STATUS_INVALID_DATA_SLOT
    assert out["no_slot"][1] == regs.STATUS_INVALID_PROG_SLOT
    assert out["bad_len"] == (9, regs.STATUS_EBPF_ERROR, regs.EBPF_ERR_LOAD)
    assert out["bad_op"] == (10, regs.STATUS_INVALID_OPCODE, 0)
    assert out["release"] == (11, regs.STATUS_SUCCESS, 0)
    assert out["release2"][1] == regs.STATUS_INVALID_DATA_SLOT
    # a released slot is free, and a Run Program on a free slot claims it (host-owned)
    assert out["host_run"] == (13, regs.STATUS_SUCCESS, 1000 + 256)


def test_run_error_is_status_5_with_code():
    top = HermesTop(n_engines=1, imem_depth=16, dmem_bytes=64)
    prog = assemble_program("mov %r0, 1\nldxdw %r0, [%r1+60]\nexit")
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
    slow = assemble_program("mov %r0, 0\nmov %r3, 50\nl:\nadd %r0, %r3\nsub %r3, 1\n"
                            "jne %r3, 0, l\nexit")
    fast = assemble_program("ldxdw %r0, [%r1+0]\nadd %r0, 1\nexit")
    out = {}

    async def bench(h: Host):
        for _ in range(2):
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
            out[e] = (int.from_bytes(res[0:2], "little"), res[2],
                      int.from_bytes(res[8:16], "little"))

    run_top(top, bench)
    assert out["ctrl0_early"] & 1 == 1 and not out["ctrl0_early"] >> 8 & 1
    assert out[0] == (10, regs.STATUS_SUCCESS, sum(range(1, 51)))
    assert out[1] == (11, regs.STATUS_SUCCESS, 42)


# --- slot ownership (specs/device.md 4.3, D18/D19), same sequences on model and RTL -------------
def test_run_program_on_host_allocated_slots_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [
        load(regs.SLOT_PROGRAM, 1, RET7), load(regs.SLOT_DATA, 1, b"input"),
        run(1, 1, len(RET7)),                  # never requested: the run claims both slots
        Step("read", slot=1, n=5),             # a host-owned slot is never zeroed
        request(regs.SLOT_DATA), request(regs.SLOT_DATA),    # Request Slot skips the claimed one
        request(regs.SLOT_PROGRAM), request(regs.SLOT_PROGRAM),
        load(regs.SLOT_PROGRAM, 0, RET7),
        run(0, 0, len(RET7), engine=1),        # a device-owned slot runs as before
        release(regs.SLOT_DATA, 1), release(regs.SLOT_DATA, 1),   # a host-owned slot given back
        request(regs.SLOT_DATA),
        cmd(0, regs.CMD_RUN_PROGRAM, run_args(2, 0, 8)),     # slots that do not exist
        cmd(0, regs.CMD_RUN_PROGRAM, run_args(0, 2, 8)),
        Step("irqs"),
    ])
    ok, none = regs.STATUS_SUCCESS, regs.STATUS_NO_SPACE
    assert [r[1:] for r in res[:1]] == [(ok, 7)] and res[1] == b"input"
    assert [r[1:] for r in res[2:6]] == [(ok, 0), (none, 0), (ok, 0), (none, 0)]
    assert res[6][1:] == (ok, 7)
    assert [r[1] for r in res[7:10]] == [ok, regs.STATUS_INVALID_DATA_SLOT, ok]
    assert res[9][2] == 1
    assert [r[1] for r in res[10:12]] == [regs.STATUS_INVALID_PROG_SLOT,
                                          regs.STATUS_INVALID_DATA_SLOT]
    assert res[12] == (10, 1)       # every completion interrupts (no user mask in the way)


def test_request_slot_zeroes_what_it_hands_out_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [
        load(regs.SLOT_PROGRAM, 0, RET7), load(regs.SLOT_DATA, 0, b"previous owner"),
        run(0, 0, len(RET7)),
        release(regs.SLOT_PROGRAM, 0), release(regs.SLOT_DATA, 0),
        request(regs.SLOT_PROGRAM), request(regs.SLOT_DATA, engine=1),
        Step("read", slot=0, n=16),
        run(0, 0, len(RET7)),                  # the program slot holds zeros: not a program
    ])
    assert [r[1:] for r in res[:5]] == [(0, 7), (0, 0), (0, 0), (0, 0), (0, 0)]
    assert res[5] == bytes(16)
    assert res[6][1:] == (regs.STATUS_EBPF_ERROR, regs.EBPF_ERR_LOAD)


def test_host_slots_shared_by_engines_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [load(regs.SLOT_PROGRAM, 0, RET7), run(0, 0, len(RET7), engine=0),
                     run(0, 0, len(RET7), engine=1), run(0, 0, len(RET7), engine=0)])
    assert [r[1:] for r in res] == [(regs.STATUS_SUCCESS, 7)] * 3


def test_released_busy_slot_is_not_handed_out_until_idle_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [
        request(regs.SLOT_PROGRAM), request(regs.SLOT_DATA),
        load(regs.SLOT_PROGRAM, 0, ENDLESS),
        start_run(0, 0, len(ENDLESS), engine=1),
        Step("ctrl", engine=1), Step("idle", n=20),
        # the owner gives up (a driver that timed out): the releases succeed at once...
        release(regs.SLOT_PROGRAM, 0), release(regs.SLOT_DATA, 0), release(regs.SLOT_DATA, 0),
        # ...but the next owner gets other slots while the program still writes into slot 0
        request(regs.SLOT_PROGRAM), request(regs.SLOT_DATA), request(regs.SLOT_DATA),
        Step("abort", engine=1), Step("wait", engine=1, keep_value=False),
        Step("ctrl", engine=1),
        request(regs.SLOT_DATA),               # idle now: the deferred free is complete
        Step("read", slot=0, n=1),
    ])
    ok = regs.STATUS_SUCCESS
    assert res[2] == (1, 0, 0)
    assert [r[1:] for r in res[3:9]] == [(ok, 0), (ok, 0), (regs.STATUS_INVALID_DATA_SLOT, 0),
                                         (ok, 1), (ok, 1), (regs.STATUS_NO_SPACE, 0)]
    assert res[9] == (4, regs.STATUS_ABORTED, None) and res[10] == (0, 1, 0)
    assert res[11][1:] == (ok, 0)
    assert res[12] == b"\0"      # the runaway's 0xAA is gone: Request Slot zeroed the slot


def test_request_slot_skips_slots_of_running_host_runs_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [
        load(regs.SLOT_PROGRAM, 0, ENDLESS), start_run(0, 0, len(ENDLESS), engine=1),
        request(regs.SLOT_DATA), release(regs.SLOT_DATA, 0), request(regs.SLOT_DATA),
        Step("abort", engine=1), Step("wait", engine=1, keep_value=False),
        request(regs.SLOT_DATA),
    ])
    assert [r[1:] for r in res] == [(0, 1), (0, 0), (regs.STATUS_NO_SPACE, 0),
                                    (regs.STATUS_ABORTED, None), (0, 0)]


# --- abort (specs/device.md 4.5, D17) -------------------------------------------------------------
def test_abort_stops_the_running_command_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [
        Step("cap"),
        load(regs.SLOT_PROGRAM, 1, ENDLESS), start_run(1, 1, len(ENDLESS), engine=0),
        Step("ctrl"), Step("idle", n=20), Step("abort"), Step("wait", keep_value=False),
        Step("ctrl"), Step("read", slot=1, n=1),
        load(regs.SLOT_PROGRAM, 1, RET7), run(1, 1, len(RET7)),      # the engine is free again
        Step("abort"), Step("ctrl"), Step("irqs"),                   # idle: ignored, no interrupt
    ])
    assert res[0] == regs.EHCAP_ABORT
    assert res[1] == (1, 0, 0)
    assert res[2] == (3, regs.STATUS_ABORTED, None) and res[3] == (0, 1, 0)
    assert res[4] == b"\xaa"
    assert res[5][1:] == (regs.STATUS_SUCCESS, 7)
    assert res[6] == (0, 1, 0) and res[7] == (2, 0)


def test_abort_stops_at_an_instruction_boundary_with_its_pc():
    top = HermesTop(n_engines=1, imem_depth=16, dmem_bytes=64)
    # a loop of a divide and a store: the abort lands in the divider's cycles or on a boundary
    prog = assemble_program("mov r3, 7\nloop:\ndiv r3, 3\nstxb [r1], r3\nja loop").code
    out = {}

    async def bench(h: Host):
        await h.mem_wr(0, prog)
        await h.start(0, regs.CMD_RUN_PROGRAM, 1, run_args(0, 0, len(prog)))
        for _ in range(7):
            await h.ctx.tick()
        await h.wr(regs.cmdctrl(0), 1 << 8 * regs.EHCMDABORT)
        out["ctrl"] = await h.rd(regs.cmdctrl(0))
        out["res"] = await h.finish(0)
        out["irqs"] = list(h.irqs)

    run_top(top, bench)
    assert out["ctrl"] == 1 | 1 << 16                 # EXEC and ABORT read 1 until completion
    cid, status, pc = out["res"]
    assert (cid, status) == (1, regs.STATUS_ABORTED) and 1 <= pc <= 3
    assert out["irqs"] == [1]


def test_abort_and_exec_in_one_write_as_the_model():
    top = HermesTop(n_engines=1, imem_depth=16, dmem_bytes=64)
    both_bits = 1 << 8 * regs.EHCMDABORT | 1
    res = both(top, [
        load(regs.SLOT_PROGRAM, 0, ENDLESS), start_run(0, 0, len(ENDLESS)),
        # abort + EXEC: the running command stops, the start is an EXEC write to a busy engine
        Step("ctrl_write", value=both_bits), Step("wait", keep_value=False), Step("ctrl"),
        # on an idle engine the same write starts a command and the abort bit is ignored
        load(regs.SLOT_PROGRAM, 0, RET7), Step("start", opcode=regs.CMD_RUN_PROGRAM,
                                               args=run_args(0, 0, len(RET7))),
        Step("wait"), Step("irqs"),
    ])
    assert res[0] == (2, regs.STATUS_ABORTED, None) and res[1] == (0, 1, 0)
    assert res[2][1:] == (regs.STATUS_SUCCESS, 7) and res[3] == (2,)


def test_abort_of_a_run_waiting_for_its_core():
    """Two command blocks naming slot pair 0: the second waits for the core (EXEC 1), and an
    abort completes it at once with status 0x07 and pc 0, leaving the first running."""
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    out = {}

    async def bench(h: Host):
        await h.mem_wr(0, ENDLESS)
        await h.start(0, regs.CMD_RUN_PROGRAM, 1, run_args(0, 0, len(ENDLESS)))
        await h.start(1, regs.CMD_RUN_PROGRAM, 2, run_args(0, 0, len(ENDLESS)))
        out["waiting"] = await h.rd(regs.cmdctrl(1))
        await h.wr(regs.cmdctrl(1), 1 << 8 * regs.EHCMDABORT)
        out["second"] = await h.finish(1)
        out["first_ctrl"] = await h.rd(regs.cmdctrl(0))
        await h.wr(regs.cmdctrl(0), 1 << 8 * regs.EHCMDABORT)
        out["first"] = await h.finish(0)

    run_top(top, bench)
    assert out["waiting"] == 1
    assert out["second"] == (2, regs.STATUS_ABORTED, 0)
    assert out["first_ctrl"] == 1
    assert out["first"][:2] == (1, regs.STATUS_ABORTED)


def test_waiting_run_starts_when_the_core_is_free():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    slow = assemble_program("mov r0, 0\nmov r3, 30\nl:\nadd r0, r3\nsub r3, 1\n"
                            "jne r3, 0, l\nexit").code
    out = {}

    async def bench(h: Host):
        await h.mem_wr(0, slow)
        await h.start(0, regs.CMD_RUN_PROGRAM, 1, run_args(0, 0, len(slow)))
        await h.start(1, regs.CMD_RUN_PROGRAM, 2, run_args(0, 0, len(slow)))
        out[1] = await h.finish(1)
        out[0] = await h.finish(0)

    run_top(top, bench)
    assert out == {0: (1, 0, sum(range(31))), 1: (2, 0, sum(range(31)))}


def test_device_without_abort_capability_as_the_model():
    top = HermesTop(n_engines=1, imem_depth=16, dmem_bytes=64, can_abort=False)
    res = both(top, [
        Step("cap"), load(regs.SLOT_PROGRAM, 0, ENDLESS), start_run(0, 0, len(ENDLESS)),
        Step("abort"), Step("ctrl"), Step("ctrl"),
    ])
    assert res == [0, (1, 0, 0), (1, 0, 0)]    # ABORT is read-only: the run goes on


def test_run_refused_for_its_length_still_claims_free_slots_as_the_model():
    top = HermesTop(n_engines=2, imem_depth=16, dmem_bytes=64)
    res = both(top, [run(1, 1, 12), run(0, 0, 0), request(regs.SLOT_DATA),
                     request(regs.SLOT_PROGRAM)])
    load_error = (regs.STATUS_EBPF_ERROR, regs.EBPF_ERR_LOAD)
    assert [r[1:] for r in res] == [load_error, load_error, (regs.STATUS_NO_SPACE, 0),
                                    (regs.STATUS_NO_SPACE, 0)]

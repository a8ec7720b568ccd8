"""The RTL core's own contract: error codes, cycle counts per instruction class, CLI and Verilog."""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys

import pytest

from hermes import engine
from hermes.engine import isa
from hermes.engine.asm import assemble_program
from hermes.engine.isa import encode_slot
from hermes.engine.memory import DATA_BASE, STACK_TOP
from hermes.engine.program import Program
from hermes.regs import (
    EBPF_ERR_BUDGET,
    EBPF_ERR_CALL_DEPTH,
    EBPF_ERR_LOAD,
    EBPF_ERR_OUT_OF_BOUNDS,
    EBPF_ERR_UNSUPPORTED,
)

pytest.importorskip("amaranth")
from hermes.rtl.sim import RtlSession, simulate  # noqa: E402


@pytest.fixture(scope="module")
def rtl():
    s = RtlSession(imem_depth=64, dmem_bytes=64)
    yield s
    s.close()


def asm(text: str) -> Program:
    return assemble_program(text)


def test_entry_registers(rtl):
    r = rtl.run(asm("mov %r0, %r1\nexit"), bytes(16))
    assert r.return_value == DATA_BASE
    assert rtl.run(asm("mov %r0, %r2\nexit"), bytes(16)).return_value == 16
    assert rtl.run(asm("mov %r0, %r10\nexit"), bytes(16)).return_value == STACK_TOP
    assert rtl.run(asm("mov %r0, %r1\nexit"), None).return_value == 0
    assert rtl.run(asm("mov %r0, %r1\nexit"), b"").return_value == DATA_BASE


def test_helper_call_is_unsupported(rtl):
    r = rtl.run(asm("mov %r1, 1\ncall 2\nexit"), None)
    assert r.error == EBPF_ERR_UNSUPPORTED | (1 << 8)
    assert r.error_kind == "unsupported" and r.return_value is None
    code = asm("mov %r0, 0\nexit").code
    callx = encode_slot(isa.CLS_JMP | isa.JMP_CALL | isa.SRC_X, 2, 0, 0, 0)
    r = rtl.run(callx + code, None)
    assert r.error == EBPF_ERR_UNSUPPORTED


def test_invalid_instruction_traps_with_its_pc(rtl):
    good = asm("mov %r0, 1").code
    for bad in (encode_slot(isa.CLS_ALU64 | isa.ALU_ADD, 1, 0, 1, 0),  # add with off != 0
                bytes([0xFF]) + bytes(7),                              # no such opcode
                encode_slot(isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_K, 11, 0, 0, 1),  # r11
                encode_slot(isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_K, 10, 0, 0, 1),  # writes r10
                encode_slot(isa.CLS_ALU | isa.ALU_END, 1, 0, 0, 48),   # bad endian width
                encode_slot(isa.CLS_STX | isa.MODE_ATOMIC | isa.SIZE_DW, 1, 2, 0, 0x02)):
        r = rtl.run(good + bad + asm("exit").code, bytes(8))
        assert r.error == EBPF_ERR_LOAD | (1 << 8), bad.hex()


def test_jump_outside_the_program_traps(rtl):
    r = rtl.run(encode_slot(isa.CLS_JMP | isa.JMP_JA, 0, 0, 5, 0) + asm("exit").code, None)
    assert r.error == EBPF_ERR_LOAD


def test_out_of_bounds_and_stack_frames(rtl):
    r = rtl.run(asm("mov %r0, 0\nldxdw %r0, [%r1+57]\nexit"), bytes(64))
    assert r.error == EBPF_ERR_OUT_OF_BOUNDS | (1 << 8)
    assert rtl.run(asm("ldxdw %r0, [%r1+56]\nexit"), bytes(range(64))).return_value == \
        int.from_bytes(bytes(range(56, 64)), "little")
    # the entry frame may not touch the frame a call would use
    r = rtl.run(asm("mov %r0, 0\nstb [%r10-513], 1\nexit"), None)
    assert r.error == EBPF_ERR_OUT_OF_BOUNDS | (1 << 8)
    assert rtl.run(asm("stb [%r10-512], 7\nldxb %r0, [%r10-512]\nexit"), None).return_value == 7
    # a called function sees its caller's frame above its own
    prog = asm("""
        stw [%r10-4], 0x55
        call local f
        ldxw %r1, [%r10-4]
        add %r0, %r1
        exit
    f:
        ldxw %r0, [%r10+508]
        stw [%r10-4], 0x66
        exit
    """)
    r = rtl.run(prog, None)
    assert r.return_value == 0x55 + 0x55


def test_stack_starts_zeroed_every_run(rtl):
    rtl.run(asm("stdw [%r10-8], -1\nmov %r0, 0\nexit"), None)
    assert rtl.run(asm("ldxdw %r0, [%r10-8]\nexit"), None).return_value == 0
    assert rtl.run(asm("stb [%r10-6], 0x11\nldxdw %r0, [%r10-8]\nexit"), None).return_value == \
        0x11 << 16


def test_call_depth_limit(rtl):
    prog = asm("""
        mov %r0, 0
        call local f
        exit
    f:
        mov %r0, 1
        call local f
        exit
    """)
    r = rtl.run(prog, None)
    assert r.error == EBPF_ERR_CALL_DEPTH | (4 << 8)
    with pytest.raises(engine.ExecutionError) as exc:
        engine.run(prog, executor="interp")
    assert exc.value.kind == "call_depth" and exc.value.pc == 4


def test_budget(rtl):
    prog = asm("mov %r0, 0\nl:\nadd %r0, 1\nja l\nexit")
    r = rtl.run(prog, None, budget=101)
    assert r.error == EBPF_ERR_BUDGET | (1 << 8)
    assert r.instructions == 101
    assert rtl.run(asm("mov %r0, 3\nexit"), None, budget=2).return_value == 3


def test_max_cycles_reports_a_timeout():
    r = simulate(asm("mov %r0, 0\nl:\nadd %r0, 1\nja l\nexit"), None, max_cycles=200)
    assert r.timeout and r.error_kind == "timeout" and r.return_value is None


def test_cycles_per_instruction_class(rtl):
    """One cycle for ALU, jumps, stores, calls and exits; two for loads, atomics and lddw."""
    def cycles(text, mem=bytes(64)):
        r = rtl.run(asm(text), mem)
        assert r.error is None
        return r.cycles, r.instructions
    assert cycles("mov %r0, 1\nadd %r0, 2\nja +0\njeq %r0, 3, +0\nexit") == (5, 5)
    assert cycles("stxdw [%r1+3], %r1\nmov %r0, 0\nexit") == (3, 3)
    assert cycles("ldxdw %r0, [%r1+3]\nexit") == (3, 2)
    assert cycles("lddw %r0, 5\nexit") == (3, 2)
    assert cycles("mov %r0, 0\nlock add [%r1+0], %r0\nexit") == (4, 3)
    assert cycles("mov %r0, 0\ncall local f\nexit\nf:\nmov %r0, 1\nexit") == (5, 5)
    # 64-bit division: two quotient bits a cycle
    c, n = cycles("mov %r0, 100\ndiv %r0, 7\nexit")
    assert n == 3 and c == 2 + 1 + 32 + 1
    c, n = cycles("mov %r0, 100\ndiv32 %r0, 7\nexit")
    assert c == 2 + 1 + 16 + 1


def test_unaligned_access_spanning_two_words(rtl):
    mem = bytes(range(1, 65))
    prog = asm("""
        ldxdw %r0, [%r1+13]
        stxdw [%r1+21], %r0
        ldxw %r3, [%r1+7]
        lock xor [%r1+29], %r3
        exit
    """)
    got = rtl.run(prog, mem)
    want = engine.run(prog, bytearray(mem), executor="interp")
    assert got.return_value == want.return_value
    assert bytes(got.memory) == bytes(want.memory)


def test_vcd_is_written(tmp_path):
    vcd = tmp_path / "run.vcd"
    r = simulate(asm("mov %r0, 7\nexit"), None, vcd=vcd)
    assert r.return_value == 7
    text = vcd.read_text()
    assert text.startswith("$comment") or "$timescale" in text
    assert "$enddefinitions" in text


def test_cli_sim(tmp_path):
    src = tmp_path / "p.s"
    src.write_text("ldxdw %r0, [%r1+0]\nadd %r0, 1\nexit\n")
    mem = tmp_path / "p.mem"
    mem.write_bytes(struct.pack("<Q", 41))
    out = subprocess.run([sys.executable, "-m", "hermes.cli", "rtl", "sim", str(src), "--input",
                          str(mem), "--vcd", str(tmp_path / "p.vcd")],
                         capture_output=True, text=True, check=True)
    assert "r0: 0x2a" in out.stdout
    assert "CPI: " in out.stdout
    assert (tmp_path / "p.vcd").exists()


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_cli_verilog(tmp_path):
    out = tmp_path / "hermes_engine.v"
    subprocess.run([sys.executable, "-m", "hermes.cli", "rtl", "verilog", "-o", str(out),
                    "--imem-depth", "16", "--dmem-bytes", "64"],
                   capture_output=True, text=True, check=True)
    text = out.read_text()
    assert "module hermes_top" in text
    assert "reg_rdata" in text and "mem_wdata" in text
    # the Verilog reads back into yosys and passes its structural checks (no comb loops)
    chk = subprocess.run(["yosys", "-q", "-p", f"read_verilog {out}; hierarchy -top hermes_top; "
                          "proc; flatten; check -assert"], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout[-2000:] + chk.stderr[-2000:]


def test_cli_cpi_on_one_bench_program(bench_dir):
    out = subprocess.run([sys.executable, "-m", "hermes.cli", "rtl", "cpi", "--bench",
                          str(bench_dir), "filter_records"],
                         capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("filter_records"))
    cpi = float(line.split()[4])
    assert 1.0 <= cpi <= 1.5


def test_multi_cycle_instruction_in_the_last_slot_traps(rtl):
    for last in ("ldxdw %r0, [%r1+0]", "lddw %r0, 1", "div %r0, 3", "lock add [%r1+0], %r0"):
        prog = asm("mov %r0, 1\nja +1\nexit\n" + last).code
        r = rtl.run(prog, bytes(8))
        assert r.error == EBPF_ERR_LOAD | (3 << 8), last


def test_synth_report_parsing():
    from hermes.cli.rtl_tools.synth import parse_stat, path_kinds
    log = """
2.50. Printing statistics.
     LUT2                            9
3. Printing statistics.

=== hermes_top ===

   Number of cells:              20
     CARRY4                          3
     FDRE                            5
     LUT6                            7
     RAMB36E1                        2

4. Executing LTP pass (find longest path).
Longest topological path in hermes_top (length=4):
    0: \\engine0.r9
    1: x.A (via c1)
    2: y.A (via c2)
    3: z.A (via c3)
"""
    cells = parse_stat(log)
    assert cells == {"CARRY4": 3, "FDRE": 5, "LUT6": 7, "RAMB36E1": 2}
    net = {"modules": {"hermes_top": {"cells": {"c1": {"type": "LUT6"}, "c2": {"type": "CARRY4"},
                                                "c3": {"type": "MUXF7"}}}}}
    assert path_kinds(log, net) == {"LUT": 1, "MUXF": 1, "CARRY4": 1, "DSP48E1": 0, "RAM32M": 0}


def test_forwarded_loads_take_one_cycle():
    s = RtlSession(imem_depth=64, dmem_bytes=64, forward_loads=True)
    mem = bytes(range(64))
    for text, cycles in (("ldxdw %r0, [%r1+3]\nexit", 2),
                         ("ldxdw %r0, [%r1+3]\nadd %r0, %r0\nexit", 3),       # load-use
                         ("ldxb %r2, [%r1+1]\nldxb %r2, [%r1+2]\nmov %r0, %r2\nexit", 4),
                         ("ldxw %r0, [%r1+0]\nmov %r0, 5\nexit", 3),          # later write wins
                         ("ldxh %r1, [%r1+0]\nmov %r0, %r1\nexit", 3)):       # base overwritten
        got = s.run(asm(text), mem)
        want = engine.run(asm(text), bytearray(mem), executor="interp")
        assert (got.return_value, got.cycles) == (want.return_value, cycles), text


@pytest.mark.parametrize("forward_loads", [False, True])
def test_abort_stops_at_the_next_instruction_boundary(forward_loads):
    """``abort`` raised at every cycle of a loop of 64-bit divides (34 cycles each) and loads:
    the core finishes the instruction it is in, stops before the next one with ``aborted`` and
    that instruction's pc, and runs normally again on the next start."""
    from amaranth.sim import Simulator

    from hermes.rtl.core import EbpfCore

    prog = asm("mov %r3, -1\nmov %r4, 3\nl:\ndiv %r3, %r4\nldxdw %r5, [%r1+0]\nja l").code
    core = EbpfCore(imem_depth=16, dmem_bytes=64, code=prog, forward_loads=forward_loads)
    seen = []

    async def bench(ctx):
        ctx.set(core.prog_len, len(prog) // 8)
        ctx.set(core.data_len, 64)
        ctx.set(core.data_present, 1)
        ctx.set(core.budget, 1 << 40)
        for delay in range(0, 42):
            ctx.set(core.start, 1)
            await ctx.tick()
            ctx.set(core.start, 0)
            for _ in range(delay):
                await ctx.tick()
            ctx.set(core.abort, 1)
            waited = 0
            while waited < 100:
                waited += 1
                await ctx.tick()
                if ctx.get(core.done):
                    break
            ctx.set(core.abort, 0)
            seen.append((waited, ctx.get(core.aborted), ctx.get(core.error), ctx.get(core.pc),
                         ctx.get(core.instructions)))
        ctx.set(core.prog_len, 2)   # "mov r3, -1; mov r4, 3" then a fall-through off the end
        ctx.set(core.start, 1)
        await ctx.tick()
        ctx.set(core.start, 0)
        while not ctx.get(core.done):
            await ctx.tick()
        seen.append((ctx.get(core.aborted), ctx.get(core.error), ctx.get(core.error_code)))

    sim = Simulator(core)
    sim.add_clock(4e-9)
    sim.add_testbench(bench)
    sim.run()
    stopped_at = set()
    for waited, aborted, error, pc, instructions in seen[:-1]:
        assert aborted == 1 and error == 0
        assert waited <= 34                           # the divide's cycles at the most
        assert pc in (0, 1, 2, 3, 4)
        # instructions retired before pc: 2 at entry, then 3 a loop turn
        assert instructions in ((pc,) if pc < 2 else (pc + 3 * k for k in range(3)))
        stopped_at.add(pc)
    assert {2, 3, 4} <= stopped_at
    assert seen[-1] == (0, 1, EBPF_ERR_LOAD | 1 << 8)  # a later run is not marked aborted

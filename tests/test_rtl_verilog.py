"""The generated Verilog behaves like the Amaranth model: run in yosys's simulator, compared."""
from __future__ import annotations

import shutil

import pytest

from hermes import engine
from hermes.engine.asm import assemble_program
from hermes.regs import EBPF_ERR_OUT_OF_BOUNDS

pytest.importorskip("amaranth")
from hermes.cli.rtl_tools.vsim import simulate_verilog  # noqa: E402
from hermes.rtl.sim import simulate  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")

#: Loops, unaligned loads and stores, stack, signed division, a local call with an atomic, bswap.
MIXED = """
    mov %r0, 0
    mov %r7, %r1
    mov %r8, 5
loop:
    ldxw %r4, [%r7+3]
    add %r0, %r4
    stxdw [%r10-13], %r0
    ldxdw %r5, [%r10-13]
    mul %r0, 3
    sdiv %r5, -7
    xor %r0, %r5
    mov %r1, %r7
    mov %r2, %r0
    call local f
    sub %r8, 1
    jne %r8, 0, loop
    ldxdw %r6, [%r7+8]
    add %r0, %r6
    be32 %r0
    exit
f:
    lock add [%r1+8], %r2
    mov %r0, %r2
    exit
"""


# One simulation costs ~10 s: the default suite runs the core with load forwarding (the
# configuration the synthesis estimate reports), ./dev volume both.
@pytest.mark.parametrize("forward_loads", [pytest.param(False, marks=pytest.mark.volume), True])
def test_mixed_program_matches_amaranth_and_interpreter(forward_loads):
    prog = assemble_program(MIXED)
    data = bytes(range(1, 33))
    want = engine.run(prog, bytearray(data), executor="interp")
    model = simulate(prog, data, forward_loads=forward_loads)
    got = simulate_verilog(prog.code, data, max_cycles=model.cycles + 8,
                           forward_loads=forward_loads)
    assert got["finished"] == 1 and got["error"] == 0
    assert got["r0"] == want.return_value == model.return_value
    assert got["instructions"] == want.instructions
    assert got["cycles"] == model.cycles


def test_error_code_from_verilog():
    prog = assemble_program("mov %r0, 1\nldxw %r0, [%r1+30]\nexit")
    got = simulate_verilog(prog.code, bytes(32), max_cycles=20)
    assert got["finished"] == 1 and got["error"] == 1
    assert got["error_code"] == EBPF_ERR_OUT_OF_BOUNDS | (1 << 8)

"""Prints device.map throughput on the emulated device for 1, 2 and 4 engines, compute-bound runs.

Each item runs a 300,000-iteration ALU loop (native JIT code, which releases the GIL), so the
figure shows how engines scale across cores rather than the Python driver path (which
`hermes bench --device emu` measures with a 2-instruction program). ``cores busy`` is the
process's CPU time over the wall time: on a shared machine it shows the scaling that the wall
time may hide. Usage: python benchmarks/map_scaling.py [ITEMS]
"""
from __future__ import annotations

import sys
import time

import hermes
from hermes.engine.asm import assemble_program

PROGRAM = """
    mov r0, 0
    ldxdw r3, [r1]
l:  mul r0, 1103515245
    add r0, 12345
    sub r3, 1
    jne r3, 0, l
    exit
"""


def main() -> None:
    """Measure and print runs/s per engine count."""
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    prog = assemble_program(PROGRAM)
    bufs = [(300_000).to_bytes(8, "little")] * items
    base = None
    for engines in (1, 2, 4):
        dev = hermes.open("emu", engines=engines)
        try:
            list(dev.map(prog, bufs[:4]))  # compile and warm up
            c0, t0 = time.process_time(), time.perf_counter()
            list(dev.map(prog, bufs))
            wall = time.perf_counter() - t0
            cores = (time.process_time() - c0) / wall
            rate = items / wall
        finally:
            dev.close()
        base = base or rate
        print(f"{engines} engine(s): {rate:8.1f} runs/s  x{rate / base:.2f}  "
              f"{cores:4.2f} cores busy")


if __name__ == "__main__":
    main()

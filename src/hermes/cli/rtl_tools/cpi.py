"""Cycles per instruction of the RTL core on the shared bench programs (reduced inputs)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ...benchmarks.engine import load_reference
from ...engine.asm import assemble_program
from ...engine.program import Program
from ...rtl.sim import SimResult, simulate

#: Clock the throughput figures assume.
CLOCK_HZ = 250e6
#: Payload offset of the bench slot layout (shared/bench/bench.h).
PAYLOAD = 4096

#: Payload bytes (the slot header's n) used per program: the full 1 MiB inputs would take hours
#: in Amaranth's Python simulator, so each kernel runs on a prefix of its reference input.
REDUCED_N = {
    "sum_bytes": 4096,
    "fnv1a": 4096,
    "histogram": 4096,
    "lcg_loop": 2000,          # iterations (n is an iteration count here, not bytes)
    "insertion_sort": 512,     # 128 u32 values
    "filter_records": 4096,    # 256 records of 16 bytes
}


@dataclass
class CpiRow:
    """One program's measurement."""

    name: str
    n: int
    result: SimResult

    @property
    def mips_at_clock(self) -> float:
        """Million instructions per second at ``CLOCK_HZ``."""
        return CLOCK_HZ / self.result.cpi / 1e6


def reduced_input(name: str, full_slot: bytes, n: int | None = None) -> bytes:
    """The first ``PAYLOAD + n`` bytes of a reference slot with its header's n set to ``n``."""
    n = REDUCED_N[name] if n is None else n
    size = PAYLOAD + (0 if name == "lcg_loop" else n)
    mem = bytearray(full_slot[:size])
    struct.pack_into("<Q", mem, 0, n)
    return bytes(mem)


def load_bench(bench_dir: Path) -> dict[str, tuple[Program, bytes]]:
    """Programs of ``bench_dir/asm`` with their inputs (made by ``bench_dir/reference.py``)."""
    ref = load_reference(bench_dir)
    out = {}
    for name, make in ref.PROGRAMS.items():
        asm = bench_dir / "asm" / f"{name}.asm"
        if asm.exists():
            out[name] = (assemble_program(asm.read_text(), name=name), bytes(make()[0]))
    return out


def measure(program: Program, memory: bytes, name: str, n: int, *,
            max_cycles: int = 5_000_000, forward_loads: bool = False) -> CpiRow:
    """Simulate one bench run and keep its cycle and instruction counts."""
    return CpiRow(name, n, simulate(program, memory, max_cycles=max_cycles,
                                    forward_loads=forward_loads))


def format_table(rows: list[CpiRow]) -> str:
    """The CPI table the CLI and scripts print."""
    lines = [f"{'program':16s} {'n':>6s} {'instructions':>12s} {'cycles':>9s} {'CPI':>6s} "
             f"{'MIPS@250MHz':>11s}  r0"]
    for row in rows:
        r = row.result
        r0 = f"{r.return_value:#x}" if r.error is None else f"error {r.error_kind}"
        lines.append(f"{row.name:16s} {row.n:6d} {r.instructions:12d} {r.cycles:9d} {r.cpi:6.3f} "
                     f"{row.mips_at_clock:11.1f}  {r0}")
    total_i = sum(r.result.instructions for r in rows)
    total_c = sum(r.result.cycles for r in rows)
    if total_i:
        lines.append(f"{'all':16s} {'':6s} {total_i:12d} {total_c:9d} {total_c / total_i:6.3f} "
                     f"{CLOCK_HZ * total_i / total_c / 1e6:11.1f}")
    return "\n".join(lines)

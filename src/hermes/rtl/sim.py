"""Simulation harness: run programs on the RTL core in Amaranth's simulator, collect results."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amaranth.sim import Simulator

from ..engine.program import Program
from ..regs import ErrorKind
from .core import EbpfCore

#: Simulation cycles a run may take unless the caller says otherwise.
DEFAULT_MAX_CYCLES = 1_000_000
#: A clock of 250 MHz (the period only labels the VCD's time axis).
CLOCK_PERIOD = 4e-9


@dataclass
class SimResult:
    """Outcome of one simulated run.

    ``return_value`` is r0 (None when the run failed), ``memory`` the data memory after the run
    (same length as the input; None when the run had no memory), ``error`` the core's error code
    (kind in the low byte, pc above; None on success), ``timeout`` True when ``max_cycles`` ran
    out before the core stopped.
    """

    return_value: int | None
    memory: bytearray | None
    cycles: int
    instructions: int
    error: int | None
    timeout: bool = False

    @property
    def error_kind(self) -> str | None:
        """Short name of the error kind (``out_of_bounds``, ``unsupported``...), or None."""
        if self.timeout:
            return "timeout"
        if self.error is None:
            return None
        kind = ErrorKind.of_code(self.error)
        if kind is None:
            return f"unknown({self.error & 0xFF:#x})"
        # The core has no loader: a load error is an instruction it found invalid on reaching it.
        return "invalid_instruction" if kind is ErrorKind.LOAD else kind.value

    @property
    def error_pc(self) -> int | None:
        """Instruction index the error happened at, or None."""
        return None if self.error is None else self.error >> 8

    @property
    def cpi(self) -> float:
        """Cycles per retired instruction."""
        return self.cycles / self.instructions if self.instructions else float("nan")


def _pow2(n: int, lo: int) -> int:
    size = lo
    while size < n:
        size *= 2
    return size


def _check(program: Program) -> bytes:
    if any(seg.data for seg in program.segments):
        raise ValueError("the RTL core maps no program data segments (.rodata/.data); "
                         "programs with segments run only on the software engines")
    return program.code


class RtlSession:
    """A simulator kept alive across runs, so that many short programs share one elaboration.

    The memories are sized once (``imem_depth`` slots, ``dmem_bytes`` bytes); a program or input
    larger than them raises ``ValueError``.
    """

    def __init__(self, *, imem_depth: int = 1024, dmem_bytes: int = 4096,
                 vcd: str | Path | None = None, forward_loads: bool = False):
        self.core = EbpfCore(imem_depth=imem_depth, dmem_bytes=dmem_bytes,
                             forward_loads=forward_loads)
        self.sim = Simulator(self.core)
        self.sim.add_clock(CLOCK_PERIOD)
        self._job: dict | None = None
        self._vcd_cm = None
        self.sim.add_testbench(self._bench, background=True)
        if vcd is not None:
            self._vcd_cm = self.sim.write_vcd(str(vcd), traces=self._traces())
            self._vcd_cm.__enter__()

    def _traces(self) -> list:
        c = self.core
        return [c.start, c.busy, c.done, c.r0, c.error, c.error_code, c.instructions, c.cycles,
                *c.regs]

    def close(self) -> None:
        """Finish the VCD file, if one is being written."""
        if self._vcd_cm is not None:
            self._vcd_cm.__exit__(None, None, None)
            self._vcd_cm = None

    async def _bench(self, ctx) -> None:
        core = self.core
        while True:
            job = self._job
            if job is None or job.get("result") is not None:
                await ctx.tick()
                continue
            code, memory = job["code"], job["memory"]
            budget, max_cycles = job["budget"], job["max_cycles"]
            for i in range(len(code) // 8):
                ctx.set(core.imem.data[i], int.from_bytes(code[8 * i:8 * i + 8], "little"))
            data = bytes(memory or b"")
            nwords = (len(data) + 7) // 8
            padded = data + bytes(nwords * 8 - len(data))
            for w in range(nwords):
                ctx.set(core.dmem[w & 1].data[w >> 1],
                        int.from_bytes(padded[8 * w:8 * w + 8], "little"))
            ctx.set(core.prog_len, len(code) // 8)
            ctx.set(core.data_len, len(data))
            ctx.set(core.data_present, memory is not None)
            ctx.set(core.budget, budget)
            ctx.set(core.start, 1)
            await ctx.tick()
            ctx.set(core.start, 0)
            (finished,) = await ctx.tick().sample(core.done).until(
                core.done | (core.cycles >= max_cycles))
            if not finished:
                # stopped by max_cycles: let the core finish would take forever; report a timeout
                result = SimResult(None, None, ctx.get(core.cycles), ctx.get(core.instructions),
                                   None, timeout=True)
                job["result"] = result
                job["dead"] = True
                continue
            out = None
            if memory is not None:
                raw = bytearray()
                for w in range(nwords):
                    raw += ctx.get(core.dmem[w & 1].data[w >> 1]).to_bytes(8, "little")
                out = raw[:len(data)]
            error = ctx.get(core.error)
            job["result"] = SimResult(
                None if error else ctx.get(core.r0), out, ctx.get(core.cycles),
                ctx.get(core.instructions), ctx.get(core.error_code) if error else None)

    def run(self, program: Program | bytes, memory: bytes | bytearray | None = None, *,
            budget: int = (1 << 64) - 1, max_cycles: int = DEFAULT_MAX_CYCLES) -> SimResult:
        """Run ``program`` once against ``memory`` (copied; the result carries the new bytes)."""
        if self._job is not None and self._job.get("dead"):
            raise RuntimeError("the session's core is still running a timed-out program")
        code = _check(program) if isinstance(program, Program) else bytes(program)
        if len(code) // 8 > self.core.imem_depth:
            raise ValueError(f"program of {len(code) // 8} slots exceeds the instruction memory "
                             f"({self.core.imem_depth} slots)")
        if memory is not None and len(memory) > self.core.dmem_bytes:
            raise ValueError(f"memory of {len(memory)} bytes exceeds the data memory "
                             f"({self.core.dmem_bytes} bytes)")
        job: dict[str, Any] = {"code": code, "memory": None if memory is None else bytes(memory),
                                "budget": budget, "max_cycles": max_cycles, "result": None}
        self._job = job
        while job["result"] is None:
            self.sim.advance()
        return job["result"]


def simulate(program: Program | bytes, memory: bytes | bytearray | None = None, *,
             vcd: str | Path | None = None, max_cycles: int = DEFAULT_MAX_CYCLES,
             budget: int = (1 << 64) - 1, imem_depth: int | None = None,
             dmem_bytes: int | None = None, forward_loads: bool = False) -> SimResult:
    """Simulate one run of ``program`` on a core sized for it; optionally write a VCD waveform.

    ``memory`` None means no data region (r1 = r2 = 0), as for the software engines.
    ``forward_loads`` selects the core variant whose loads take one cycle (see ``EbpfCore``).
    """
    code = _check(program) if isinstance(program, Program) else bytes(program)
    session = RtlSession(imem_depth=imem_depth or _pow2(len(code) // 8, 2),
                         dmem_bytes=dmem_bytes or _pow2(len(memory or b""), 16), vcd=vcd,
                         forward_loads=forward_loads)
    try:
        return session.run(code, memory, budget=budget, max_cycles=max_cycles)
    finally:
        session.close()

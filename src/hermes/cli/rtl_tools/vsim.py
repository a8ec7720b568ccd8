"""The generated Verilog of the RTL core run in yosys's simulator, to compare with Amaranth's."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from ...rtl.build import rtlil_to_verilog, to_rtlil, yosys_path
from ...rtl.core import EbpfCore


class SelfStartTop(wiring.Component):
    """A core with its program and data built in, started by the first cycle after reset.

    Used to run the *generated Verilog* in yosys's own simulator and compare it with Amaranth's
    simulation and the interpreter (``simulate_verilog``).
    """

    def __init__(self, code: bytes, data: bytes, *, budget: int = 1 << 32,
                 forward_loads: bool = False):
        super().__init__({"r0": Out(64), "error": Out(1), "error_code": Out(64),
                          "finished": Out(1), "cycles": Out(64), "instructions": Out(64)})
        imem = 2
        while imem * 8 < len(code):
            imem *= 2
        dmem = 16
        while dmem < len(data):
            dmem *= 2
        self.core = EbpfCore(imem_depth=imem, dmem_bytes=dmem, code=code, data=data,
                             forward_loads=forward_loads)
        self.prog_len = len(code) // 8
        self.data_len = len(data)
        self.budget = budget

    def elaborate(self, platform: object) -> Module:
        """Wire the core's start to the first cycle and latch its completion."""
        m = Module()
        m.submodules.core = c = self.core
        started = Signal()
        fin = Signal()
        m.d.sync += started.eq(1)
        with m.If(c.done):
            m.d.sync += fin.eq(1)
        m.d.comb += [
            c.start.eq(~started), c.prog_len.eq(self.prog_len), c.data_len.eq(self.data_len),
            c.data_present.eq(1), c.budget.eq(self.budget),
            self.r0.eq(c.r0), self.error.eq(c.error), self.error_code.eq(c.error_code),
            self.finished.eq(fin), self.cycles.eq(c.cycles), self.instructions.eq(c.instructions),
        ]
        return m


def _vcd_final_values(path: Path, names: set[str]) -> dict[str, int]:
    """Last value of each top-level signal of ``names`` in a VCD file (x/z read as 0)."""
    ids: dict[str, str] = {}
    vals: dict[str, int] = {}
    depth = 0
    with open(path) as f:
        for line in f:
            t = line.split()
            if not t:
                continue
            if t[0] == "$scope":
                depth += 1
            elif t[0] == "$upscope":
                depth -= 1
            elif t[0] == "$var" and depth == 1 and t[4] in names:
                ids[t[3]] = t[4]
            elif t[0][0] in "bB" and len(t) == 2 and t[1] in ids:
                vals[ids[t[1]]] = int(t[0][1:].translate(str.maketrans("xzXZ", "0000")), 2)
            elif t[0][0] in "01xzXZ" and t[0][1:] in ids:
                vals[ids[t[0][1:]]] = 1 if t[0][0] == "1" else 0
    return vals


def simulate_verilog(code: bytes, data: bytes, *, max_cycles: int,
                     forward_loads: bool = False) -> dict[str, int]:
    """Run the generated Verilog of a ``SelfStartTop`` in yosys's simulator.

    Returns the final ``r0``, ``error``, ``error_code``, ``finished``, ``cycles`` and
    ``instructions`` (``finished`` 0 when ``max_cycles`` was too few).
    """
    top = SelfStartTop(code, data, forward_loads=forward_loads)
    with tempfile.TemporaryDirectory() as tmp:
        v = Path(tmp, "top.v")
        vcd = Path(tmp, "run.vcd")
        il = Path(tmp, "top.il")
        il.write_text(to_rtlil(top, name="selfstart"))
        rtlil_to_verilog(il, v)
        subprocess.run([yosys_path(), "-q", "-p", f"read_verilog {v}; hierarchy -top selfstart; "
                        f"proc; flatten; opt_clean; sim -clock clk -reset rst -n {max_cycles + 4} "
                        f"-zinit -vcd {vcd}"], check=True, capture_output=True, text=True)
        return _vcd_final_values(vcd, {"r0", "error", "error_code", "finished", "cycles",
                                       "instructions"})

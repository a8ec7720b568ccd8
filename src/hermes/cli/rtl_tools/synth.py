"""Synthesis estimates of the RTL device top with yosys: resources and a critical-path figure."""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ...rtl.build import TOP_NAME, to_rtlil, yosys_path
from ...rtl.top import HermesTop

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


def parse_stat(log: str) -> dict[str, int]:
    """Cell counts from the last ``stat`` block of a yosys log (top module, flattened)."""
    blocks = log.split("Printing statistics.")
    cells: dict[str, int] = {}
    if len(blocks) < 2:
        return cells
    for m in re.finditer(r"^\s+(\$?[\w$]+)\s+(\d+)\s*$", blocks[-1], re.M):
        cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    return cells


def path_kinds(log: str, netlist: dict) -> dict[str, int]:
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
        out = subprocess.run([yosys_path(), "-p", script], capture_output=True, text=True,
                             timeout=timeout)
        log = "\n".join(line for line in (out.stdout + out.stderr).splitlines()
                        if "Detected loop" not in line)
        if out.returncode != 0:
            raise RuntimeError(f"yosys failed:\n{log[-4000:]}")
        netlist = json.loads(net.read_text()) if net.exists() else {}
    cells = parse_stat(log)
    rep = SynthReport(target=target, cells=cells, log=log)
    if target == "xilinx":
        rep.luts = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k))
        rep.ffs = sum(v for k, v in cells.items() if re.fullmatch(r"FD[CPRS]E?", k))
        # in RAMB36 equivalents (two RAMB18 make one)
        rep.brams = sum(v for k, v in cells.items() if k.startswith("RAMB36")) + \
            (sum(v for k, v in cells.items() if k.startswith("RAMB18")) + 1) // 2
        rep.dsps = sum(v for k, v in cells.items() if k.startswith("DSP"))
        rep.lutrams = sum(v for k, v in cells.items() if k.startswith(("RAM32", "RAM64", "RAM128")))
        rep.path = path_kinds(log, netlist)
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

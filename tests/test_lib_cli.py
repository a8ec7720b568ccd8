"""``hermes info`` and ``hermes run`` (the device CLI) and the device benchmark entry point."""
from __future__ import annotations

import struct

import pytest

from hermes.cli import main


def test_info_emu(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "interface version: 1" in out
    assert "engines:           4" in out
    assert "16 x 1 MiB" in out and "DMA channels:      4 H2C, 4 C2H" in out


def test_info_cpu(capsys):
    assert main(["info", "--device", "cpu"]) == 0
    assert "backend:           cpu" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_run_asm_with_output(tmp_path, capsys, spec):
    src = tmp_path / "swap.s"
    src.write_text("ldxw r2, [r1]\nldxw r3, [r1+4]\nstxw [r1], r3\nstxw [r1+4], r2\n"
                   "mov r0, 42\nexit\n")
    inp = tmp_path / "in.bin"
    inp.write_bytes(struct.pack("<2I", 1, 2))
    out = tmp_path / "out.bin"
    assert main(["run", str(src), "--input", str(inp), "--output", str(out), "--device", spec,
                 "--engine", "interp"]) == 0
    assert "r0 = 0x2a (42)" in capsys.readouterr().out
    assert out.read_bytes() == struct.pack("<2I", 2, 1)


def test_run_read_more(tmp_path):
    src = tmp_path / "p.bin"
    from hermes.engine import Program
    src.write_bytes(Program.from_asm("stb [r1+5], 9\nmov r0, 0\nexit").to_bytes())
    out = tmp_path / "out.bin"
    assert main(["run", str(src), "--read", "8", "--output", str(out)]) == 0
    assert out.read_bytes() == bytes(5) + b"\x09" + bytes(2)


def test_run_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "oob.s"
    src.write_text("mov r3, r1\nadd r3, r2\nldxb r0, [r3]\nexit\n")
    assert main(["run", str(src)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of bounds" in err and "pc 2" in err
    assert main(["run", str(src), "--device", "emu", "--engine", "nope"]) == 2  # usage error
    assert "unknown engine" in capsys.readouterr().err
    assert main(["info", "--device", "nowhere"]) == 1
    assert "unknown device spec" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.s")]) == 1


def test_device_benchmark_quick(capsys):
    from hermes.benchmarks.device import main as bench_main
    assert bench_main(["--device", "emu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Run Program round trip" in out and "H2C" in out and "runs/s" in out

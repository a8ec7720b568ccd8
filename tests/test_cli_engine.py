"""The engine CLI: asm, disasm, exec; bad input gives one clear line and never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hermes.engine import isa


def hermes(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hermes", *args], capture_output=True,
                          text=True, input=input)


def test_asm_then_disasm_then_exec(tmp_path: Path):
    src = tmp_path / "p.s"
    src.write_text("mov r0, 0\nldxb r2, [r1+1]\nadd r0, r2\nexit\n")
    out = hermes("asm", str(src), "-o", str(tmp_path / "p.bin"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.bin").stat().st_size == 32
    dis = hermes("disasm", str(tmp_path / "p.bin"))
    assert dis.stdout == "mov r0, 0\nldxb r2, [r1+1]\nadd r0, r2\nexit\n"
    run = hermes("exec", str(tmp_path / "p.bin"), "--mem", "00 29")
    assert run.returncode == 0 and run.stdout.strip() == "0x29"
    run = hermes("exec", str(src), "--mem-file", str(tmp_path / "p.bin"))
    assert run.stdout.strip() == "0x0"


BAD_ASM = [
    ("frob r1\n", "unknown mnemonic 'frob'"),
    ("mov r11, 1\n", "invalid register r11"),
    ("ldxw r1, [r2+70000]\nexit\n", "does not fit in 16 bits"),
    ("mov r1, 0x1ffffffff\nexit\n", "does not fit in 32 bits"),
]


@pytest.mark.parametrize("text, message", BAD_ASM)
def test_bad_assembly_is_one_line(tmp_path: Path, text: str, message: str):
    src = tmp_path / "bad.s"
    src.write_text(text)
    out = hermes("asm", str(src))
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("blob, message", [
    (b"\x95\0\0\0\0\0\0", "not a multiple of 8"),
    (b"", "empty"),
    (b"\xff" * 8, "unknown opcode 0xff"),
    (isa.encode_slot(0xB7, 0, 0, 0, 0) * 1_000_000, "more than the limit"),
    (isa.encode_slot(0xB7, 0, 0, 0, 0), "fall through"),
])
def test_bad_program_bytes_are_one_line(tmp_path: Path, blob: bytes, message: str):
    f = tmp_path / "bad.bin"
    f.write_bytes(blob)
    out = hermes("exec", str(f))
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_runtime_fault_is_one_line(tmp_path: Path):
    f = tmp_path / "oob.s"
    f.write_text("ldxdw r0, [r1+8]\nexit\n")
    out = hermes("exec", str(f), "--mem", "00")
    assert out.returncode == 1
    assert "out-of-bounds memory load, at pc 0" in out.stderr and "Traceback" not in out.stderr


def test_missing_file_is_one_line():
    out = hermes("exec", "/nonexistent/prog.bin")
    assert out.returncode == 1 and "No such file" in out.stderr and "Traceback" not in out.stderr

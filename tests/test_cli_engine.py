"""The engine CLI: asm, disasm, exec (--trace, --arg, --size); bad input: one line, no traceback."""
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
    assert dis.stdout == "    mov r0, 0\n    ldxb r2, [r1+1]\n    add r0, r2\n    exit\n"
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


#: Bad invocations of every subcommand: (arguments, text the one error line must contain).
#: Files: ok.s (valid), bad.s (not UTF-8), empty.s, empty.bin, adir/ (a directory), emptydir/,
#: big.bin (larger than a data slot); "missing" names nothing.
BAD_INVOCATIONS = [
    (["asm", "bad.s"], "not UTF-8 text (byte 0xff at offset 0)"),
    (["asm", "empty.s"], "empty.s"),
    (["asm", "adir"], "adir"),
    (["asm", "missing.s"], "missing.s"),
    (["asm", "ok.s", "-o", "adir"], "adir"),
    (["disasm", "empty.bin"], "empty.bin"),
    (["disasm", "bad.s"], "bad.s"),
    (["exec", "bad.s"], "bad.s is not UTF-8 text"),
    (["exec", "ok.s", "--executor", "bogus"], "unknown executor 'bogus'"),
    (["exec", "ok.s", "--budget", "-5"], "--budget: -5 is out of range"),
    (["exec", "ok.s", "--budget", str(1 << 64)], f"--budget: {1 << 64} is out of range"),
    (["exec", "ok.s", "--budget", "lots"], "--budget: not an integer: 'lots'"),
    (["exec", "ok.s", "--mem", "zz"], "--mem is not valid hex"),
    (["exec", "ok.s", "--mem-file", "adir"], "adir"),
    (["exec", "huge.s"], "does not fit in 32 bits"),
    (["exec", "ok.s", "--arg", "1", "--arg", "2", "--arg", "3", "--arg", "4"],
     "at most 3 run arguments, got 4"),
    (["exec", "ok.s", "--arg", "x"], "--arg: not an integer: 'x'"),
    (["exec", "ok.s", "--size", "-1"], "--size: -1 is out of range"),
    (["exec", "ok.s", "--mem", "0102", "--size", "1"], "does not fit a window of --size 1"),
    (["exec", "ok.s", "--trace", "--executor", "jit"], "--executor does not apply"),
    (["exec", "ok.s", "--trace-limit", "-1"], "--trace-limit: -1 is out of range"),
    (["disasm", "ok.s", "--elf"], "--elf needs an ELF object"),
    (["exec", "big.bin"], "more than the limit of 65536"),
    (["run", "bad.s"], "bad.s is not UTF-8 text"),
    (["run", "ok.s", "--executor", "bogus"], "unknown executor 'bogus'"),
    (["run", "ok.s", "--device", "cpu", "--budget", "0"], "--budget: 0 is out of range"),
    (["run", "ok.s", "--read", "-1"], "--read: -1 is out of range"),
    (["run", "ok.s", "--input", "big.bin"], "--input big.bin is 1200000 bytes"),
    (["run", "ok.s", "--input", "missing"], "missing"),
    (["run", "ok.s", "--device", "nowhere"], "unknown device spec 'nowhere'"),
    (["run", "ok.s", "--device", "emu:x"], "emu:x"),
    (["run", "ok.s", "--device", "vfio-user:/missing.sock"], "/missing.sock"),
    (["info", "--device", "cpu:x"], "cpu:x"),
    (["bench", "--executor", "bogus"], "unknown executor 'bogus'"),
    (["bench", "--repeat", "0"], "--repeat: 0 is out of range"),
    (["conformance", "emptydir"], "no conformance cases (.data files) in emptydir"),
    (["conformance", "emptydir", "--executor", "bogus"], "unknown executor 'bogus'"),
    (["conformance-plugin", "--executor", "bogus"], "unknown executor 'bogus'"),
    (["rtl", "verilog", "--engines", "0", "-o", "x.v"], "--engines 0"),
    (["rtl", "sim", "ok.s", "--max-cycles", "0"], "--max-cycles: 0 is out of range"),
    (["rtl", "sim", "bad.s"], "bad.s is not UTF-8 text"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "ok.s").write_text("mov r0, 1\nexit\n")
    (d / "bad.s").write_bytes(b"\xff\xfe mov r0, 1\n")
    (d / "empty.s").write_text("")
    (d / "empty.bin").write_bytes(b"")
    (d / "huge.s").write_text("mov r0, 99999999999999999999999\nexit\n")
    (d / "big.bin").write_bytes(bytes(1_200_000))
    (d / "adir").mkdir()
    (d / "emptydir").mkdir()
    return d


@pytest.mark.parametrize("args, wanted", BAD_INVOCATIONS,
                         ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_line(bad_files, args, wanted):
    out = subprocess.run([sys.executable, "-m", "hermes", *args], capture_output=True, text=True,
                         cwd=bad_files, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.endswith("\n"), out.stderr
    assert wanted in out.stderr, out.stderr
    assert "internal error" not in out.stderr, out.stderr


@pytest.mark.parametrize("exc, status, wanted", [
    (RuntimeError("boom"), 70, "hermes: internal error (RuntimeError): boom; please report it"),
    (KeyError(), 70, "hermes: internal error (KeyError): no message; please report it"),
    (MemoryError(), 70, "hermes: error: out of memory"),
    (FileNotFoundError(2, "No such file or directory", "x.bin"), 1,
     "hermes: error: No such file or directory (ENOENT): x.bin"),
])
def test_guard_turns_every_exception_into_one_line(capsys, exc, status, wanted):
    from hermes.cli import guarded

    def command() -> int:
        raise exc
    assert guarded(command) == status
    err = capsys.readouterr().err
    assert err == wanted + "\n"


TRACED = """\
mov r0, 0
mov r6, r2
mov r7, r3
loop:
ldxb r4, [r1+0]
add r0, r4
stxdw [r10-8], r0
sub r6, 1
jne r6, 0, loop
call local f
add r0, r7
exit
f:
mov r0, 7
exit
"""


def test_exec_trace_shows_each_instruction_its_changes_and_stores(tmp_path: Path):
    src = tmp_path / "t.s"
    src.write_text(TRACED)
    out = hermes("exec", str(src), "--mem", "05 00", "--size", "4", "--arg", "0x10", "--trace")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "0x17"  # r0 after the trace: f's 7 + the argument
    trace = lines[:-1]
    # r2 is the input length (2), not the window (4): two trips round the loop
    assert len(trace) == 3 + 2 * 5 + 1 + 2 + 2
    assert trace[0].split() == ["0:", "mov", "r0,", "0"]  # no register changed
    assert trace[1].split()[-3:] == ["r6", "=", "0x2"]
    assert trace[2].split()[-3:] == ["r7", "=", "0x10"]
    assert trace[5].split()[1:] == ["stxdw", "[r10-8],", "r0", "[0x3fffffff8]", "=", "0x5",
                                     "(8", "bytes)"]
    assert "jne r6, 0, L1" in trace[7]
    call = trace[13]
    assert "call local F1" in call and "r10 = 0x3fffffe00" in call
    assert trace[-3].split()[-3:] == ["r10", "=", "0x400000000"]  # f's exit restores r10
    assert trace[-2].split()[1:] == ["add", "r0,", "r7", "r0", "=", "0x17"]
    assert trace[-1].split() == ["10:", "exit"]


def test_exec_trace_limit_counts_what_it_does_not_show(tmp_path: Path):
    src = tmp_path / "t.s"
    src.write_text("mov r0, 0\nmov r1, 50\nloop:\nadd r0, 1\nsub r1, 1\njne r1, 0, loop\nexit\n")
    out = hermes("exec", str(src), "--trace", "--trace-limit", "5")
    lines = out.stdout.splitlines()
    assert len(lines) == 7 and lines[-1] == "0x32"
    assert lines[5] == "... 148 more instructions not shown (--trace-limit 5)"


def test_exec_trace_of_a_failing_run_shows_the_steps_then_the_error(tmp_path: Path):
    src = tmp_path / "t.s"
    src.write_text("mov r0, 1\nldxdw r0, [r1+8]\nexit\n")
    out = hermes("exec", str(src), "--mem", "00", "--trace")
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["     0: mov r0, 1         r0 = 0x1"]
    assert "out-of-bounds memory load, at pc 1" in out.stderr
    assert out.stderr.count("\n") == 1


PRINTS = """\
stdw [r10-8], 0
stw [r10-8], 0x0a642520
mov r1, r10
add r1, -7
mov r2, 4
call 6
mov r0, 0
exit
"""


@pytest.mark.parametrize("extra", [[], ["--trace"], ["--executor", "interp"]])
def test_exec_shows_printed_text_on_stderr(tmp_path: Path, extra: list):
    src = tmp_path / "p.s"
    src.write_text(PRINTS)
    out = hermes("exec", str(src), "--arg", "-3", *extra)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "-3\n"
    assert out.stdout.splitlines()[-1] == "0x0"


def test_exec_printed_text_of_a_failing_traced_run(tmp_path: Path):
    src = tmp_path / "p.s"
    src.write_text(PRINTS.replace("mov r0, 0\nexit", "ldxdw r0, [r10+8]\nexit"))
    out = hermes("exec", str(src), "--arg", "7", "--trace")
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == "7" and "out-of-bounds" in out.stderr


def test_exec_arguments_and_window(tmp_path: Path):
    src = tmp_path / "a.s"
    src.write_text("mov r0, r2\nlsh r0, 8\nadd r0, r3\nadd r0, r5\nldxb r4, [r1+7]\n"
                   "add r0, r4\nexit\n")
    out = hermes("exec", str(src), "--mem", "01", "--size", "8", "--arg", "2", "--arg", "0",
                 "--arg", "0x30")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hex((1 << 8) + 2 + 0x30)  # byte 7 of the window reads 0
    out = hermes("exec", str(src), "--mem", "01", "--size", "4")
    assert out.returncode == 1 and "out-of-bounds memory load" in out.stderr

"""The device CLI: ``hermes info``, ``hermes run`` and ``hermes scan`` on the run contract, their
errors (one line, never a traceback, as a user's shell sees them) and Ctrl-C; the device
benchmark entry point."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hermes.cli import INTERRUPT_GRACE, interruptible, main
from hermes.cli.demo import find_examples_dir
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c, find_clang

#: A loop that never ends (two blocks: a one-instruction self-loop is refused at load).
SPIN = "mov r0, 0\nspin:\nadd r0, 1\nja back\nback:\nja spin\nexit\n"
#: The largest budget: the spin really runs until it is stopped.
NO_BUDGET = str((1 << 64) - 1)

#: A C program using every part of the run contract the CLI shows.
CONTRACT_C = r"""
#include "hermes.h"

HERMES_ENTRY(contract)
{
    hermes_printk("len %llu arg0 %llu\n", len, arg0);
    for (u64 i = 0; i < len; i++)
        data[i] += (u8)arg1;
    data[len] = (u8)arg2;          /* the first byte past the input: zero before, in the window */
    hermes_set_output(len + 1);
    return len * 1000 + arg0;
}
"""
#: Two entry points in two sections: chosen with --function or --section.
TWO_ENTRIES_C = r"""
#include "hermes.h"

HERMES_ENTRY(first) { return 1; }

__attribute__((section("alt"))) HERMES_ENTRY(second) { return 2 + len; }
"""


def hermes(*args: str, stdin: bytes | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess:
    """``python -m hermes.cli ARGS`` as a user's shell runs it (text output)."""
    return subprocess.run([sys.executable, "-m", "hermes.cli", *args], input=stdin,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, Path]:
    """The C programs of these tests and the newline-count example, compiled once."""
    if find_clang() is None:
        pytest.skip("clang not found: apt-get install clang")
    out = tmp_path_factory.mktemp("cli-objects")
    sources = {"contract": CONTRACT_C, "two": TWO_ENTRIES_C}
    built = {}
    for name, text in sources.items():
        (out / f"{name}.c").write_text(text)
        built[name] = compile_c(out / f"{name}.c", out / f"{name}.o")
    built["newlines"] = compile_c(find_examples_dir() / "newlines.c", out / "newlines.o")
    return built


def test_info_emu(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "interface version: " in out
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
                 "--executor", "interp"]) == 0
    text = capsys.readouterr().out
    assert "r0 = 0x2a (42)" in text
    assert "instructions: 6" in text and "time: " in text
    assert out.read_bytes() == struct.pack("<2I", 2, 1)


def test_run_size_makes_room_past_the_input(tmp_path, capsys):
    src = tmp_path / "p.bin"
    src.write_bytes(assemble_program("stb [r1+5], 9\nmov r0, 0\nexit").to_bytes())
    out = tmp_path / "out.bin"
    assert main(["run", str(src), "--size", "8", "--read", "8", "--output", str(out)]) == 0
    assert out.read_bytes() == bytes(5) + b"\x09" + bytes(2)
    capsys.readouterr()
    # without --size the window is the (empty) input: the store is out of bounds, and so is a
    # read past it
    assert main(["run", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out-of-bounds memory store" in err
    assert main(["run", str(src), "--read", "8", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "larger than the data window (0 bytes)" in err


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_run_contract_from_the_command_line(objects, tmp_path, capsys, spec):
    """--arg, the input length, zeros past it, hermes_set_output, printed text on stderr."""
    inp = tmp_path / "in.bin"
    inp.write_bytes(b"\x01\x02\x03")
    out = tmp_path / "out.bin"
    assert main(["run", str(objects["contract"]), "--input", str(inp), "--arg", "7", "--arg",
                 "0x10", "--arg", "-1", "--size", "4", "--output", str(out),
                 "--device", spec]) == 0
    captured = capsys.readouterr()
    assert f"r0 = {3007:#x} (3007)" in captured.out
    instructions = int(captured.out.split("instructions: ")[1].split()[0])
    assert instructions > 10
    assert "len 3 arg0 7\n" in captured.err
    assert out.read_bytes() == b"\x11\x12\x13\xff"


def test_run_chooses_the_entry(objects, capsys):
    obj = str(objects["two"])
    assert main(["run", obj, "--function", "first"]) == 0
    assert "r0 = 0x1 (1)" in capsys.readouterr().out
    assert main(["run", obj, "--function", "second"]) == 0
    assert "r0 = 0x2 (2)" in capsys.readouterr().out
    assert main(["run", obj, "--section", "alt", "--device", "cpu"]) == 0
    assert "r0 = 0x2 (2)" in capsys.readouterr().out


def test_run_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "oob.s"
    src.write_text("mov r3, r1\nadd r3, r2\nldxb r0, [r3]\nexit\n")
    assert main(["run", str(src)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out-of-bounds memory load" in err and "pc 2" in err
    assert main(["run", str(src), "--device", "emu", "--executor", "nope"]) == 2  # usage error
    assert "unknown executor" in capsys.readouterr().err
    assert main(["info", "--device", "nowhere"]) == 1
    assert "unknown device spec" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.s")]) == 1


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_failed_run_shows_what_it_printed(tmp_path, capsys, spec):
    """The text a run printed before its fault is on stderr, before the one error line."""
    if find_clang() is None:
        pytest.skip("clang not found: apt-get install clang")
    src = tmp_path / "late.c"
    src.write_text('#include "hermes.h"\nHERMES_ENTRY(late) {\n'
                   '    hermes_printk("reached %llu\\n", len);\n    return data[len + 8];\n}\n')
    inp = tmp_path / "in.bin"
    inp.write_bytes(b"abc")
    obj = compile_c(src, tmp_path / "late.o")
    assert main(["run", str(obj), "--input", str(inp), "--device", spec]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reached 3\n") and err.count("\n") == 2
    assert "out-of-bounds memory load" in err.splitlines()[1]


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_run_limits_are_one_line_errors(tmp_path, capsys, spec):
    """An input larger than the slot, a --timeout and a --budget each end the run with one
    line naming what was exceeded."""
    big = tmp_path / "big.bin"
    big.write_bytes(bytes((1 << 20) + 1))
    ret = tmp_path / "ret.s"
    ret.write_text("mov r0, 1\nexit\n")
    assert main(["run", str(ret), "--input", str(big), "--device", spec]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"--input {big} is {(1 << 20) + 1} bytes, larger than the "
                                      f"device's data slot ({1 << 20} bytes)") in err
    spin = tmp_path / "spin.s"
    spin.write_text(SPIN)
    t0 = time.monotonic()
    assert main(["run", str(spin), "--budget", NO_BUDGET, "--timeout", "0.3",
                 "--device", spec]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "within its 0.3 s timeout" in err, err
    assert time.monotonic() - t0 < 10
    assert main(["run", str(spin), "--budget", "1000", "--device", spec]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "budget" in err, err


def _bad_command_lines(tmp: Path, objects: dict[str, Path]) -> list[tuple[list[str], int, str]]:
    """(arguments, exit status, text the one-line error must hold) for every new option."""
    asm = tmp / "ret.s"
    asm.write_text("mov r0, 1\nexit\n")
    text = tmp / "text.txt"
    text.write_bytes(b"a\nb\n")
    obj, a, t = str(objects["two"]), str(asm), str(text)
    return [
        (["run", a, "--arg", "x"], 2, "argument --arg: not an integer"),
        (["run", a, "--arg", "1", "--arg", "2", "--arg", "3", "--arg", "4"], 2, "at most 3"),
        (["run", a, "--arg", hex(1 << 64)], 2, "out of range"),
        (["run", a, "--size", "-1"], 2, "argument --size"),
        (["run", a, "--timeout", "0"], 2, "argument --timeout"),
        (["run", a, "--timeout", "soon"], 2, "argument --timeout"),
        (["run", a, "--budget", "0"], 2, "argument --budget"),
        (["run", obj, "--function", "nope"], 1, "nope"),
        (["run", obj, "--section", "nowhere"], 1, "nowhere"),
        (["run", obj, "--function", "first", "--section", "alt"], 2, "not allowed with"),
        (["run", a, "--function", "first"], 1, "--function needs an ELF object"),
        (["run", a, "--input", str(tmp / "missing.bin")], 1, "missing.bin"),
        (["run", str(tmp / "missing.o")], 1, "missing.o"),
        (["scan", a, str(tmp / "missing.log")], 1, "missing.log"),
        (["scan", a, t, "--delimiter", ""], 2, "must not be empty"),
        (["scan", a, t, "--delimiter", "\\x1"], 2, "bad escape"),
        (["scan", a, t, "--record", "4", "--delimiter", "\\n"], 2, "not allowed with"),
        (["scan", a, t, "--piece-size", "0"], 2, "argument --piece-size"),
        (["scan", a, t, "--reduce", "mean"], 2, "argument --reduce"),
        (["scan", a, t, "--arg", "1", "--arg", "2", "--arg", "3", "--arg", "4"], 2, "at most 3"),
        (["scan", a, t, "--workers", "0"], 2, "argument --workers"),
    ]


def test_bad_command_lines_are_one_line_without_traceback(objects, tmp_path):
    failures = []
    for argv, status, text in _bad_command_lines(tmp_path, objects):
        r = hermes(*argv)
        err = r.stderr.decode(errors="replace")
        if (r.returncode != status or "Traceback" in err or err.count("\n") != 1
                or text not in err):
            failures.append(f"hermes {' '.join(argv)}: exit {r.returncode} (want {status}), "
                            f"stderr {err!r} (want one line with {text!r})")
    assert not failures, "\n".join(failures)


def _text_file(path: Path, size: int) -> int:
    """A text file of about ``size`` bytes with lines of varying length; its newline count."""
    lines = [b"x" * (i * 37 % 300) for i in range(size // 150 + 1)]
    data = b"\n".join(lines)[:size]
    path.write_bytes(data)
    return data.count(b"\n")


@pytest.mark.parametrize("spec", ["emu", "cpu"])
def test_scan_counts_newlines(objects, tmp_path, capsys, spec):
    log = tmp_path / "big.log"
    count = _text_file(log, 3 << 20)
    assert main(["scan", str(objects["newlines"]), str(log), "--piece-size", "65536",
                 "--delimiter", "\\n", "--device", spec]) == 0
    out = capsys.readouterr().out
    assert f"sum of r0 = {count:#x} ({count})" in out
    pieces = int(out.split(" pieces, ")[0].split()[-1])
    assert pieces >= (3 << 20) // 65536
    assert f"pieces, {3 << 20} bytes in " in out and "GB/s" in out


def test_scan_per_piece_lines_and_progress(objects, tmp_path, capsys):
    log = tmp_path / "small.log"
    data = b"ab\n" * 1000  # 3000 bytes: pieces of 1024 bytes at 0, 1024, 2048
    log.write_bytes(data)
    assert main(["scan", str(objects["newlines"]), str(log), "--piece-size", "1024",
                 "--reduce", "none", "--progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("piece ")]
    counts = [data[o:o + 1024].count(b"\n") for o in (0, 1024, 2048)]
    assert lines == [f"piece {i} at {o}: r0 = {c:#x} ({c})"
                     for i, (o, c) in enumerate(zip((0, 1024, 2048), counts, strict=True))]
    assert "3 pieces, 3000 bytes" in captured.out
    assert "100.0%" in captured.err and "B/s" in captured.err
    assert main(["scan", str(objects["newlines"]), str(log), "--record", "3", "--piece-size",
                 "1024", "--reduce", "max", "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "max of r0 = 0x155 (341)" in captured.out  # 1023-byte pieces of 341 records
    assert captured.err == ""


def test_scan_reads_standard_input(objects):
    data = b"one\ntwo\nthree\n" * 5000
    r = hermes("scan", str(objects["newlines"]), "-", "--piece-size", "4096", "--delimiter",
               "\\n", "--device", "cpu", stdin=data)
    assert r.returncode == 0, r.stderr
    assert f"sum of r0 = {15000:#x} (15000)" in r.stdout.decode()


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _interrupt(argv: list[str], tmp_path: Path) -> tuple[int, float, str]:
    """Start ``hermes ARGV`` on a runaway program, Ctrl-C it while the run is in progress;
    (exit status, seconds from the signal to the exit, stderr)."""
    spin = tmp_path / "spin.s"
    spin.write_text(SPIN)
    proc = subprocess.Popen([sys.executable, "-m", "hermes.cli", "run", str(spin), "--budget",
                             NO_BUDGET, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # the command's worker thread exists once the CLI is past its imports and parsing
        deadline = time.monotonic() + 60
        while _threads(proc.pid) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the device is opened and the program is looping
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("hermes run ignored Ctrl-C for 10 s")
        seconds = time.monotonic() - sent
        return proc.returncode, seconds, proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("argv", [["--device", "emu"], ["--device", "cpu"],
                                  ["--device", "cpu", "--executor", "interp"]],
                         ids=["emu", "cpu-jit", "cpu-interp"])
def test_ctrl_c_stops_a_runaway_run_within_a_second(argv, tmp_path):
    status, seconds, err = _interrupt(argv, tmp_path)
    assert status == 130, err
    assert err == "hermes: interrupted\n"
    assert seconds < 1.0, f"exit {seconds:.2f} s after Ctrl-C"


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_interrupt_waits_for_the_work_to_unwind():
    """Ctrl-C sets the work's stop and the command returns only once the work has cleaned up
    (a real SIGINT cutting the main thread's wait short must not lose track of the worker)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    stopped, cleaned = threading.Event(), threading.Event()

    def work() -> int:
        assert stopped.wait(30)
        time.sleep(0.3)  # the device aborting the run and closing
        cleaned.set()
        return 0

    timer = threading.Timer(0.35, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        interruptible(work, stopped.set)
    timer.join()
    assert cleaned.is_set(), "interruptible returned while the work was still unwinding"
    assert time.monotonic() - t0 < 0.35 + INTERRUPT_GRACE + 0.5


def test_ctrl_c_over_vfio_user(tmp_path):
    from tests.vfio_devices import ServerProcess
    server = ServerProcess(str(tmp_path / "hermes.sock"), "--engines", "1")
    try:
        status, seconds, err = _interrupt(["--device", f"vfio-user:{server.path}"], tmp_path)
        assert status == 130, err
        assert err == "hermes: interrupted\n"
        assert seconds < 1.0, f"exit {seconds:.2f} s after Ctrl-C"
        # the interrupted run was aborted: the server's only engine takes the next run at once
        ret = tmp_path / "ret.s"
        ret.write_text("mov r0, 5\nexit\n")
        t0 = time.monotonic()
        r = hermes("run", str(ret), "--device", f"vfio-user:{server.path}", timeout=60)
        assert r.returncode == 0, r.stderr
        assert b"r0 = 0x5 (5)" in r.stdout
        assert time.monotonic() - t0 < 30
    finally:
        server.stop()


def test_device_benchmark_quick(capsys):
    from hermes.benchmarks.device import main as bench_main
    assert bench_main(["--device", "emu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Run Program round trip" in out and "H2C" in out and "runs/s" in out

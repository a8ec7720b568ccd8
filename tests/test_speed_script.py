"""benchmarks/speed.py runs end to end on one small kernel and prints every table (no timings)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hermes.benchmarks import find_shared
from hermes.engine.clang import find_clang

ROOT = Path(__file__).resolve().parent.parent
BENCH = find_shared("bench")

pytestmark = pytest.mark.skipif(BENCH is None or find_clang() is None,
                                reason="needs shared/bench and clang")

HEADINGS = ["== run time per kernel", "== compile time per kernel", "== per-call overhead",
            "== interpreter, million instructions per second", "== scan of 4 MiB"]


def test_quick_run_prints_every_table() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick",
                        "--no-peers", "--kernels", "sum_bytes", "--forms", "asm",
                        "--repeat", "2", "--scan-mib", "4"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    for heading in HEADINGS:
        assert heading in p.stdout, (heading, p.stdout)
    rows = [line for line in p.stdout.splitlines() if line.startswith("sum_bytes       asm")]
    # one row in each of the run, compile and interpreter tables, every result checked
    assert len(rows) == 3, p.stdout
    assert "WRONG" not in p.stdout
    assert "emu, memory" in p.stdout and "cpu, memory" in p.stdout
    assert "peers" in p.stdout.splitlines()[0]


def test_unknown_kernel_is_refused() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--no-peers",
                        "--kernels", "nope"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert p.returncode == 2 and "unknown kernels" in p.stderr

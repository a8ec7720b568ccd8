"""Per-call overhead of running a tiny program: this tree against the tree before the change.

Usage: python benchmarks/call_overhead.py [--base /tmp/base/main] [--calls N] [--rounds R]

Times ``mov r0, 1; exit`` (2 instructions) through ``JitExecutable.run``, through
``hermes.engine.load(...).run`` (the JIT, as users reach it), through the interpreter, and the
JIT with an 8-byte data window, and prints the median and minimum microseconds per call of R
rounds of N calls each. The baseline tree runs in a subprocess (``PYTHONPATH=BASE/src``); the two
trees' rounds are interleaved (one round of each in turn) so both see the same machine load,
and the last column is the baseline's median over this tree's. On a shared machine prefer the
minimum, or callgrind instruction counts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROGRAM = "mov r0, 1\nexit"
CASES = ("JitExecutable.run", "load().run", "interp", "jit, 8-byte window")


def _runners() -> dict[str, object]:
    """The call each case times, in the current interpreter's tree."""
    from hermes.engine import load
    from hermes.engine.asm import assemble_program
    from hermes.engine.helpers import DEVICE_HELPERS
    from hermes.engine.jit import JitExecutable

    program = assemble_program(PROGRAM)
    jit = JitExecutable(program, helpers=DEVICE_HELPERS, budget=1_000_000)
    loaded = load(program)
    interp = load(program, executor="interp")
    window = bytearray(8)
    return {"JitExecutable.run": jit.run, "load().run": loaded.run, "interp": interp.run,
            "jit, 8-byte window": lambda: jit.run(window)}


def _round(run, calls: int) -> float:
    """Microseconds per call over ``calls`` calls."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        run()
    return (time.perf_counter_ns() - started) / calls / 1000


def _child(calls: int) -> None:
    """Serve rounds on stdin/stdout: a case name in, one round's figure out."""
    runners = _runners()
    for run in runners.values():
        _round(run, calls)  # warm up
    print("ready", flush=True)
    for line in sys.stdin:
        print(_round(runners[line.strip()], calls), flush=True)


def _spawn(src: Path, calls: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--calls", str(calls)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the benchmark child for {src} did not start")
    return proc


def _ask(proc: subprocess.Popen, case: str) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(case + "\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    """Run the interleaved rounds and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("/tmp/base/main"),
                    help="the tree to compare with (its src/ is put on PYTHONPATH)")
    ap.add_argument("--calls", type=int, default=2000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=40, help="rounds per case and tree")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        _child(opts.calls)
        return
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"this": _spawn(here, opts.calls)}
    if (opts.base / "src").is_dir():
        trees["base"] = _spawn(opts.base / "src", opts.calls)
    figures: dict[str, dict[str, list[float]]] = {t: {c: [] for c in CASES} for t in trees}
    for _ in range(opts.rounds):
        for case in CASES:
            for tree, proc in trees.items():
                figures[tree][case].append(_ask(proc, case))
    for proc in trees.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    print(f"{PROGRAM!r}: microseconds per call, {opts.rounds} rounds of {opts.calls} calls")
    print(f"{'case':20} {'this median':>12} {'this min':>9} {'base median':>12} {'base min':>9}"
          f" {'base/this':>10}")
    summary = {}
    for case in CASES:
        this = figures["this"][case]
        row = f"{case:20} {statistics.median(this):12.2f} {min(this):9.2f}"
        if "base" in figures:
            base = figures["base"][case]
            ratio = statistics.median(base) / statistics.median(this)
            row += f" {statistics.median(base):12.2f} {min(base):9.2f} {ratio:9.1f}x"
        print(row)
        summary[case] = {t: {"median": statistics.median(f[case]), "min": min(f[case])}
                         for t, f in figures.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

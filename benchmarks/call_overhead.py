"""Per-call overhead of running a tiny program: this tree against the tree before the change.

Usage: python benchmarks/call_overhead.py [--base TREE | --no-base] [--calls N] [--rounds R]

Times ``mov r0, 1; exit`` (2 instructions) through ``JitExecutable.run``, through
``hermes.engine.load(...).run`` (the JIT, as users reach it), through the interpreter, and the
JIT with an 8-byte data window, and prints the median and minimum microseconds per call of R
rounds of N calls each. Each tree runs in a child process with its ``src`` first on
``PYTHONPATH`` (the baseline: ``--base TREE``, default /tmp/base/main when present); the two
trees' rounds are interleaved (one round of each in turn) so both see the same machine load,
and the last column is the baseline's median over this tree's. On a shared machine prefer the
minimum, or callgrind instruction counts.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

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


def main(argv: list[str] | None = None) -> None:
    """Run the interleaved rounds and print the table."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:  # the measuring side: `--child CALLS`, any tree's hermes
        _child(int(args[1]))
        return
    from hermes.benchmarks.baseline import THIS_TREE, Child, add_base_options, base_tree

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_base_options(ap)
    ap.add_argument("--calls", type=int, default=2000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=40, help="rounds per case and tree")
    opts = ap.parse_args(args)
    base = base_tree(opts)
    # a round takes a few ms; the bound only catches a child that hangs
    timeout = 60 + opts.calls / 1000
    trees = {"this": THIS_TREE} | ({"base": base} if base else {})
    children = {name: Child(tree, __file__, ["--child", str(opts.calls)], timeout=timeout)
                for name, tree in trees.items()}
    for child in children.values():
        if child.readline() != "ready":
            raise SystemExit(f"the benchmark child for {child.tree} did not start")
    figures: dict[str, dict[str, list[float]]] = {t: {c: [] for c in CASES} for t in trees}
    for _ in range(opts.rounds):
        for case in CASES:
            for tree, child in children.items():
                figures[tree][case].append(float(child.ask(case)))
    for child in children.values():
        child.close()
    print(f"{PROGRAM!r}: microseconds per call, {opts.rounds} rounds of {opts.calls} calls"
          + (f"; base {base}" if base else ""))
    print(f"{'case':20} {'this median':>12} {'this min':>9} {'base median':>12} {'base min':>9}"
          f" {'base/this':>10}")
    summary = {}
    for case in CASES:
        this = figures["this"][case]
        row = f"{case:20} {statistics.median(this):12.2f} {min(this):9.2f}"
        if "base" in figures:
            old = figures["base"][case]
            ratio = statistics.median(old) / statistics.median(this)
            row += f" {statistics.median(old):12.2f} {min(old):9.2f} {ratio:9.1f}x"
        print(row)
        summary[case] = {t: {"median": statistics.median(f[case]), "min": min(f[case])}
                         for t, f in figures.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Compile-time figures: analyses, code generation and LLVM time per program size and shape.

Usage: python benchmarks/compile_time.py [--sizes 1000,10000,65536] [--shapes jumps,back,...]
                                         [--llvm-max N] [--base TREE | --no-base]
                                         [--timeout S]
For each worst-case shape and size it prints, in seconds: the verifier (validate + data flow),
the JIT's code generation (loop analysis and IR text), LLVM's time for the quick tier and for
the full tier (programs up to --llvm-max slots; LLVM is super-linear on dense control flow,
which is why larger programs never reach it), the interpreter's load, and what
`hermes.engine.load(program, executor="jit")` followed by one run costs end to end, with the tier
it chose. CPU seconds are given beside wall seconds: the machine may be shared. Each case runs
in a fresh process, for this tree and, beside it, for the baseline tree (`--base TREE`, default
/tmp/base/main when present, none with `--no-base`: its `src` first on PYTHONPATH); a case that
takes longer than --timeout seconds prints "> S s" instead.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from hermes.engine import load
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import DEVICE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import codegen, runtime
from hermes.engine.program import Program
from hermes.engine.verifier import verify
from hermes.errors import UsageError

#: Jumps reach at most this far (the 16-bit offset of a conditional jump).
REACH = 30000


def jumps(n: int, rng: random.Random) -> str:
    """Every slot a conditional jump (never taken) to a random slot within reach."""
    body = n - 3
    out = ["mov r0, 0", "mov r1, 7"]
    for i in range(body):
        out.append(f"L{i}:")
        target = rng.randrange(max(0, i - REACH), min(body, i + REACH))
        out.append(f"jeq r1, {12345 + i}, L{target}")
    out.append("exit")
    return "\n".join(out)


def back(n: int, rng: random.Random) -> str:
    """Every slot jumps back to one block that dominates it (many back-edges, nested loops)."""
    out = ["mov r0, 0", "mov r1, 7", "L0:"]
    for i in range(n - 3):
        out.append(f"jeq r1, {12345 + i}, L{(i // REACH) * REACH}")
        if (i + 1) % REACH == 0:
            out.append(f"L{i + 1}:")
    out.append("exit")
    return "\n".join(out)


def forward(n: int, rng: random.Random) -> str:
    """Every slot jumps forward to one join block (a block with thousands of predecessors)."""
    out = ["mov r0, 0", "mov r1, 7"]
    for i in range(n - 3):
        out.append(f"jeq r1, {12345 + i}, M{i // REACH}")
        if (i + 1) % REACH == 0:
            out.append(f"M{i // REACH}:")
    out += [f"M{(n - 4) // REACH}:", "exit"]
    return "\n".join(out)


def straight(n: int, rng: random.Random) -> str:
    """One long block of ALU, stack and data-slot accesses."""
    out = ["mov r0, 0"]
    while len(out) < n - 1:
        k = len(out)
        out += [f"add r0, {k}", f"stxdw [r10-{8 + 8 * (k % 60)}], r0", f"ldxb r3, [r1+{k % 8}]",
                "xor r0, r3"]
    return "\n".join(out[:n - 1] + ["exit"])


def calls(n: int, rng: random.Random) -> str:
    """Thousands of small functions, each called once from the entry function."""
    nf = (n - 2) // 7
    out = ["mov r0, 0"] + [f"call local F{k}" for k in range(nf)] + ["exit"]
    for k in range(nf):
        out += [f"F{k}:", "mov r0, r1", f"add r0, {k}", "stxdw [r10-8], r0", "ldxdw r0, [r10-8]",
                "exit"]
    return "\n".join(out)


SHAPES = {"jumps": jumps, "back": back, "forward": forward, "straight": straight, "calls": calls}


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def measure(shape: str, n: int, llvm_max: int) -> dict:
    """Figures for one program (see the module docstring)."""
    program = assemble_program(SHAPES[shape](n, random.Random(n)),
                               name=f"{shape}-{n}-{time.time_ns()}")
    row: dict = {"shape": shape, "slots": len(program)}
    info, row["verify"], _ = _timed(lambda: verify(program, DEVICE_HELPERS))
    gen = codegen.ModuleGen(program, info, "bench_")
    _, row["codegen"], _ = _timed(lambda: gen.functions("bench"))
    for tier in ("quick", "full"):
        row[f"llvm_{tier}"] = None
        if len(program) <= llvm_max:
            try:
                row[f"llvm_{tier}"] = runtime.compile_program(program, info, 3, tier).llvm_seconds
            except UsageError:
                pass  # beyond the size any tier compiles
    _, row["interp"], _ = _timed(lambda: Interpreter(program, helpers=DEVICE_HELPERS, budget=10**9))
    fresh = Program(program.code, name=f"{shape}-{n}-{time.time_ns()}-fresh")

    def load_and_run():
        exe = load(fresh, executor="jit")
        exe.run(bytearray(64))
        return exe

    exe, row["total"], row["total_cpu"] = _timed(load_and_run)
    row["tier"] = exe.tier
    return row


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def in_process(tree: Path, shape: str, n: int, llvm_max: int, timeout: float) -> dict | None:
    """``measure`` in a fresh process with ``tree``'s package; None when it took too long."""
    from hermes.benchmarks.baseline import run_child_json
    try:
        return run_child_json(tree, Path(__file__).resolve(),
                              ["--child", f"{shape},{n}", str(llvm_max)], timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def main(argv: list[str] | None = None) -> None:
    """Print one line per shape and size, the baseline's figures beside this tree's."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:  # one case: `--child SHAPE,N LLVM_MAX`, printed as JSON
        shape, n = args[1].split(",")
        print(json.dumps(measure(shape, int(n), int(args[2]))))
        return
    from hermes.benchmarks.baseline import THIS_TREE, add_base_options, base_tree

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,65536")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--llvm-max", type=int, default=1000,
                    help="largest program LLVM is timed on directly (default 1000 slots)")
    add_base_options(ap)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per case and tree")
    opts = ap.parse_args(args)
    base = base_tree(opts)
    print(f"{'shape':9s} {'slots':>6s} {'verify':>7s} {'codegen':>8s} {'llvm q':>7s} "
          f"{'llvm f':>7s} {'interp':>7s} {'load+run':>9s} {'(cpu)':>7s}  {'tier':8s}"
          + (f" | baseline {base}: load+run (cpu) tier" if base else ""))
    for shape in opts.shapes.split(","):
        for n in (int(x) for x in opts.sizes.split(",")):
            r = in_process(THIS_TREE, shape, n, opts.llvm_max, opts.timeout)
            if r is None:
                line = f"{shape:9s} {n:6d} > {opts.timeout:.0f} s"
            else:
                line = (f"{r['shape']:9s} {r['slots']:6d} {_fmt(r['verify']):>7s} "
                        f"{_fmt(r['codegen']):>8s} {_fmt(r['llvm_quick']):>7s} "
                        f"{_fmt(r['llvm_full']):>7s} {_fmt(r['interp']):>7s} "
                        f"{_fmt(r['total']):>9s} {_fmt(r['total_cpu']):>7s}  {r['tier']:8s}")
            if base is not None:
                b = in_process(base, shape, n, opts.llvm_max, opts.timeout)
                line += (f" | > {opts.timeout:.0f} s" if b is None else
                         f" | {_fmt(b['total'])} ({_fmt(b['total_cpu'])}) {b['tier']}")
            print(line, flush=True)


if __name__ == "__main__":
    main()

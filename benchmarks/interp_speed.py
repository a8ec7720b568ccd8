"""Interpreter figures: instructions per second on the six bench kernels, and load time.

Usage: python benchmarks/interp_speed.py [--repeat N] [--base TREE | --no-base]
Runs the kernels of shared/bench as hand assembly (asm/) and as C compiled by clang for BPF,
on their reference inputs, with ``executor="interp"``, checks r0 and the slot, and prints the
best of N runs (CPU time) as million instructions per second for this tree and for a baseline
tree (``--base TREE``, default /tmp/base/main when present: the same script run in a child
process with the baseline's ``src`` first on ``PYTHONPATH``; ``--no-base`` for none), their
ratio, and the load time of straight-line-and-loops programs of 1,000, 10,000 and 65,536
instructions.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["sum_bytes", "fnv1a", "histogram", "lcg_loop", "insertion_sort", "filter_records"]
SIZES = (1000, 10000, 65536)


def _program(n_insns: int):
    """A fresh program of ``n_insns`` instructions: short loops over the data slot and stack
    stores, one after another, so load time is measured on real blocks and branches."""
    from hermes.engine.asm import assemble_program
    lines = ["mov %r0, 0", "mov %r6, 0"]
    k = 0
    while len(lines) - 2 * k + 8 < n_insns:  # the labels are not instructions
        k += 1
        lines += ["mov %r7, %r1", f"loop{k}:", f"ldxb %r4, [%r7+{k % 32}]", "xor %r0, %r4",
                  f"stxb [%r10-{1 + k % 256}], %r0", "add %r7, 1", f"add %r6, {k}",
                  f"jlt %r6, {k * 7}, loop{k}", f"next{k}:"]
    lines += ["add %r0, 1"] * (n_insns - 1 - (len(lines) - 2 * k)) + ["exit"]
    return assemble_program("\n".join(lines), name=f"interp-load-{n_insns}-{time.time_ns()}")


def measure(repeat: int) -> dict:
    """Figures of the tree on ``sys.path``: {"kernels": {name/kind: [mips, ok]}, "load": {n: s}}."""
    sys.path.insert(0, str(Path(__file__).parent))
    from jit_figures import BENCH, _inputs  # the kernels' inputs, as the JIT figures use them

    from hermes.engine import load
    from hermes.engine.clang import compile_c
    from hermes.engine.elf import load_elf
    from hermes.engine.frontends import read_program
    from hermes.engine.helpers import DEVICE_HELPERS
    bench = BENCH
    inputs = _inputs()
    kernels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            for kind in ("asm", "c"):
                if kind == "asm":
                    prog = read_program(bench / "asm" / f"{name}.asm")
                else:
                    prog = load_elf(compile_c(bench / f"{name}.c", Path(tmp) / f"{name}.o"))
                mem, r0, after = inputs[name]
                exe = load(prog, helpers=DEVICE_HELPERS, executor="interp", budget=1 << 40)
                best = float("inf")
                ok = True
                for _ in range(repeat):
                    buf = bytearray(mem)
                    t0 = time.process_time()  # CPU time: the machine may be shared
                    res = exe.run(buf)
                    best = min(best, time.process_time() - t0)
                    ok = ok and res.return_value == r0 and bytes(buf) == after
                kernels[f"{name}/{kind}"] = [res.instructions / best / 1e6, ok]
    loads = {}
    for size in SIZES:
        prog = _program(size)
        t0 = time.perf_counter()
        exe = load(prog, helpers=DEVICE_HELPERS, executor="interp")
        loads[str(size)] = time.perf_counter() - t0
        exe.run(bytearray(64))
    return {"kernels": kernels, "load": loads}


def main(argv: list[str] | None = None) -> None:
    """Measure both trees and print the table."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:  # the measuring side: `--child REPEAT`, any tree's hermes
        print(json.dumps(measure(int(args[1]))))
        return
    from hermes.benchmarks.baseline import add_base_options, base_tree, run_child_json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    add_base_options(ap)
    opts = ap.parse_args(args)
    tree = base_tree(opts)
    base = None
    if tree is not None:
        base = run_child_json(tree, __file__, ["--child", str(opts.repeat)], timeout=3600)
    this = measure(opts.repeat)
    print(f"{'kernel':22s} {'Minsn/s':>8s} {'base':>8s} {'ratio':>6s}")
    for key, (mips, ok) in this["kernels"].items():
        bm = base["kernels"][key][0] if base else float("nan")
        print(f"{key:22s} {mips:8.2f} {bm:8.2f} {mips / bm:6.2f}{'' if ok else '  WRONG RESULT'}")
    for size, secs in this["load"].items():
        bs = f" (base {base['load'][size]:.2f} s)" if base else ""
        print(f"load time of a {size}-instruction program: {secs:.2f} s{bs}")


if __name__ == "__main__":
    main()

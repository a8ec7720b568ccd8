"""Interpreter figures: instructions per second on the six bench kernels, and load time.

Usage: python benchmarks/interp_speed.py [--repeat N] [--base /tmp/base/main] [--no-base]
Runs the kernels of shared/bench as hand assembly (asm/) and as C compiled by clang for BPF,
on their reference inputs, with ``executor="interp"``, checks r0 and the slot, and prints the
best of N runs (CPU time) as million instructions per second for this tree and for a baseline
tree (the same script run in a subprocess with the baseline's ``src`` on ``PYTHONPATH``), their
ratio, and the load time of straight-line-and-loops programs of 1,000, 10,000 and 65,536
instructions.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--base", default="/tmp/base/main")
    ap.add_argument("--no-base", action="store_true")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the subprocess mode
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args.repeat)))
        return
    base = None
    if not args.no_base and Path(args.base, "src").is_dir():
        env = dict(os.environ, PYTHONPATH=str(Path(args.base, "src")))
        out = subprocess.run([sys.executable, __file__, "--json", "--repeat", str(args.repeat)],
                             env=env, capture_output=True, text=True, check=True, timeout=3600)
        base = json.loads(out.stdout)
    this = measure(args.repeat)
    print(f"{'kernel':22s} {'Minsn/s':>8s} {'base':>8s} {'ratio':>6s}")
    for key, (mips, ok) in this["kernels"].items():
        bm = base["kernels"][key][0] if base else float("nan")
        print(f"{key:22s} {mips:8.2f} {bm:8.2f} {mips / bm:6.2f}{'' if ok else '  WRONG RESULT'}")
    for size, secs in this["load"].items():
        bs = f" (base {base['load'][size]:.2f} s)" if base else ""
        print(f"load time of a {size}-instruction program: {secs:.2f} s{bs}")


if __name__ == "__main__":
    main()

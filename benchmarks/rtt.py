"""Prints the in-process Run Program round trip on ``emu``: from the driver interface and from a
``hermes.open("emu")`` session, for this tree and, beside it, a baseline tree.

A round trip is one Run Program command on a loaded 2-instruction program (``mov r0, 7;
exit``) over 8 bytes of data, from the call to its return: ``file.run`` (plain Run Program),
``file.run_ex`` (with a run context, what the library sends) and ``session.run(read=0)``. Each
figure is the median, and the minimum, of ``--rounds`` rounds of ``--n`` calls; the trees run
in child processes taking turns, so both see the same load. CPU seconds per call (user+system
of the whole process, every thread) are printed too: they are far less noisy than wall time on
a shared machine.

Usage: python benchmarks/rtt.py [--n 2000] [--rounds 7] [--base /tmp/base/main/src]
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

HERE = Path(__file__).resolve().parent
TREE = HERE.parent / "src"


def measure(n: int) -> dict[str, tuple[float, float]]:
    """(wall us, CPU us) per call of each round trip, ``n`` calls each (run in a child)."""
    import hermes
    from hermes.driver import RunArgs
    from hermes.engine.asm import assemble_program

    prog = assemble_program("mov r0, 7\nexit")
    out: dict[str, tuple[float, float]] = {}

    def timed(name: str, call: object) -> None:
        for _ in range(n // 10):   # warm up
            call()  # type: ignore[operator]
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            call()  # type: ignore[operator]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[name] = (wall / n * 1e6, cpu / n * 1e6)

    with hermes.open("emu") as dev:
        f = dev.driver.open()  # type: ignore[attr-defined]
        f.download_program(prog.to_bytes())
        f.pwrite(bytes(8), 0)
        timed("driver file.run", f.run)
        request = RunArgs(input_len=8, window=8)
        timed("driver file.run_ex", lambda: f.run_ex(request))
        f.close()
        with dev.session() as s:
            s.load(prog)
            s.write(bytes(8))
            timed("session.run", lambda: s.run(read=0))
    return out


def child(tree: str, n: int) -> dict[str, tuple[float, float]]:
    """``measure(n)`` in a child process importing hermes from ``tree``."""
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.run([sys.executable, __file__, "--child", str(n)], env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    return {k: (v[0], v[1]) for k, v in json.loads(proc.stdout).items()}


def main(argv: list[str] | None = None) -> None:
    """Alternate child runs of both trees, then print one line per round trip."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per round (default 2000)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per tree (default 7)")
    ap.add_argument("--base", default="/tmp/base/main/src",
                    help="baseline tree's src directory ('' to skip)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child is not None:
        print(json.dumps(measure(opts.child)))
        return
    trees = {"this tree": str(TREE)}
    if opts.base and Path(opts.base).is_dir():
        trees["baseline"] = opts.base
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(opts.rounds):
        for name, tree in trees.items():
            runs[name].append(child(tree, opts.n))
    print(f"{opts.rounds} rounds of {opts.n} calls; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'round trip':<20} {'tree':<10} {'median us':>9} {'min us':>7} {'CPU us':>7}")
    for key in runs["this tree"][0]:
        for name in trees:
            walls = [r[key][0] for r in runs[name]]
            cpus = [r[key][1] for r in runs[name]]
            print(f"{key:<20} {name:<10} {statistics.median(walls):9.1f} {min(walls):7.1f} "
                  f"{statistics.median(cpus):7.1f}")


if __name__ == "__main__":
    main()

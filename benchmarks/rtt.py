"""Prints the in-process Run Program round trip on ``emu``: from the driver interface and from a
``hermes.open("emu")`` session, for this tree and, beside it, a baseline tree.

A round trip is one Run Program command on a loaded 2-instruction program (``mov r0, 7;
exit``) over 8 bytes of data, from the call to its return: ``file.run`` (plain Run Program),
``file.run_ex`` (with a run context, what the library sends) and ``session.run(read=0)``. Each
figure is the median, and the minimum, of ``--rounds`` rounds of ``--n`` calls; the trees run
in child processes taking turns, so both see the same load. CPU seconds per call (user+system
of the whole process, every thread) are printed too: they are far less noisy than wall time on
a shared machine.

The baseline is ``--base TREE`` (a checkout; default /tmp/base/main when present), or none
with ``--no-base``.

Usage: python benchmarks/rtt.py [--n 2000] [--rounds 7] [--base TREE | --no-base]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


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


def main(argv: list[str] | None = None) -> None:
    """Alternate child runs of both trees, then print one line per round trip."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:  # the measuring side: `--child N`, any tree's hermes
        print(json.dumps(measure(int(args[1]))))
        return
    from hermes.benchmarks.baseline import THIS_TREE, add_base_options, base_tree, run_child_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="calls per round (default 2000)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per tree (default 7)")
    add_base_options(ap)
    opts = ap.parse_args(args)
    base = base_tree(opts)
    trees = {"this tree": THIS_TREE} | ({"baseline": base} if base else {})
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(opts.rounds):
        for name, tree in trees.items():
            runs[name].append(run_child_json(tree, __file__, ["--child", str(opts.n)],
                                             timeout=600))
    print(f"{opts.rounds} rounds of {opts.n} calls; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}" + (f"; baseline {base}" if base else ""))
    print(f"{'round trip':<20} {'tree':<10} {'median us':>9} {'min us':>7} {'CPU us':>7}")
    for key in runs["this tree"][0]:
        for name in trees:
            walls = [r[key][0] for r in runs[name]]
            cpus = [r[key][1] for r in runs[name]]
            print(f"{key:<20} {name:<10} {statistics.median(walls):9.1f} {min(walls):7.1f} "
                  f"{statistics.median(cpus):7.1f}")


if __name__ == "__main__":
    main()

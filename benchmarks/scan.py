"""Prints the throughput of a 1 GiB ``scan`` (u64 sum, 1 MiB pieces) on emu and cpu, from memory and
from a file, with the per-piece overhead against the engine time and a numpy sum of the same data.

Each line is one end-to-end scan: splitting, moving every piece into a data slot, running the
program, and reducing the results. ``engine`` is the mean of the runs' own ``Result.elapsed``
(program time on the engine); ``overhead`` is the wall time per piece minus that, the cost of
everything around the program. The numpy lines sum the same bytes on the host (from memory, and
piece by piece from the file's mapping), as a bound for what the scan could reach. ``CPU us`` is
the process's CPU time (every thread, user and system) per piece and ``cores`` that CPU time over
the wall time: how many cores the scan kept busy, which shows a second worker's gain even when
other jobs take the cores and the wall time says little.

Every figure is measured for this tree and for a baseline tree (``--base TREE``, a checkout;
default /tmp/base/main when present, none with ``--no-base``), each in child processes taking
turns (``--rounds``), so both see the same load; the best wall time is kept.

``--callgrind`` prints instead the instructions per 1 MiB piece written and run (one thread,
both trees, under valgrind's callgrind), split into memcpy and the rest: the copies saved and
the code added, exactly, on a machine too busy for wall times.

Usage: python benchmarks/scan.py [--mib 1024] [--piece-kib 1024] [--backends emu,cpu]
[--workers N] [--runs 2] [--rounds 2] [--base TREE | --no-base] [--file PATH] [--callgrind]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import hermes

#: r0 = the sum of the input's u64 words, modulo 2^64 (a trailing partial word is ignored).
SUM_C = r"""
typedef unsigned long long u64;
typedef unsigned char u8;
__attribute__((section(".text"), used))
u64 sum_u64(u8 *data, u64 len)
{
    const u64 *w = (const u64 *)data;
    u64 s = 0;
    for (u64 i = 0; i < len / 8; i++)
        s += w[i];
    return s;
}
"""
MASK = (1 << 64) - 1


def add(acc: tuple[int, float, int], result: hermes.Result) -> tuple[int, float, int]:
    """Reduce step: (sum modulo 2^64, engine seconds, pieces)."""
    return ((acc[0] + result.return_value) & MASK, acc[1] + (result.elapsed or 0.0), acc[2] + 1)


def best(runs: int, fn: Callable[[], object]) -> tuple[float, float, object]:
    """(shortest wall time, the CPU time of that run, its value) of ``runs`` calls of ``fn``
    (other jobs share the cores). CPU time is the process's, every thread's, user and system."""
    out = []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        value = fn()
        out.append((time.perf_counter() - t0, time.process_time() - c0, value))
    return min(out, key=lambda tv: tv[0])


HEADER = (f"{'scan':<14} {'tree':<9} {'workers':>7} {'GB/s':>6} {'us/piece':>9} "
          f"{'engine us':>9} {'overhead us':>11} {'CPU us':>7} {'cores':>5} {'x numpy':>7}")


def row(r: dict, numpy_per_piece: float) -> str:
    """One line of figures: GB/s, wall time per piece, engine time per piece, the overhead (wall
    minus engine, per piece), CPU time per piece, cores kept busy (CPU over wall), and the time
    per piece against numpy's."""
    n, wall, engine = r["pieces"], r["wall"], r["engine"]
    per = wall / n
    eng = f"{engine / n * 1e6:9.1f}" if engine else f"{'-':>9}"
    over = f"{(per - engine / n) * 1e6:11.1f}" if engine else f"{'-':>11}"
    return (f"{r['label']:<14} {r['tree']:<9} {r['workers']:>7} {r['bytes'] / wall / 1e9:6.2f} "
            f"{per * 1e6:9.1f} {eng} {over} {r['cpu'] / n * 1e6:7.1f} {r['cpu'] / wall:5.2f} "
            f"{per / numpy_per_piece:7.1f}")


def measure(opts: argparse.Namespace) -> list[dict]:
    """Build the data, then time numpy and every (backend, source, workers) scan: one dict of
    figures each (run in a child process, for the tree on its ``PYTHONPATH``)."""
    import numpy as np

    import hermes
    from hermes.engine.clang import compile_c
    from hermes.engine.elf import load_elf
    from hermes.lib.pieces import pieces, scan

    nbytes, piece = opts.mib << 20, opts.piece_kib << 10
    npieces = -(-nbytes // piece)
    rows: list[dict] = []

    def add_row(label: str, workers: int, wall: float, cpu: float, n: int,
                engine: float | None) -> None:
        rows.append({"label": label, "workers": workers, "bytes": nbytes, "wall": wall,
                     "cpu": cpu, "pieces": n, "engine": engine})

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sum.c").write_text(SUM_C)
        program = load_elf(compile_c(Path(tmp) / "sum.c", Path(tmp) / "sum.o"))
        words = np.arange(nbytes // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        path = Path(opts.file) if opts.file else Path(tmp) / "data.bin"
        words.tofile(path)

        wall, cpu, want = best(opts.runs, lambda: int(words.sum()))
        add_row("numpy, memory", 1, wall, cpu, npieces, None)

        def numpy_pieces() -> int:
            with pieces(path, piece) as it:
                return sum(int(np.frombuffer(p.data, dtype=np.uint64).sum()) for p in it) & MASK
        wall, cpu, from_file = best(opts.runs, numpy_pieces)
        assert from_file == want
        add_row("numpy, file", 1, wall, cpu, npieces, None)

        for spec in opts.backends.split(","):
            with hermes.open(spec) as dev:
                # compile, and touch every slot and buffer the scans use, before timing
                scan(dev, program, words[:min(nbytes, 64 << 20) // 8], piece_size=piece, read=0,
                     reduce=lambda acc, r: acc, initial=0)
                default = opts.workers or dev.engines
                for label, source in (("memory", words), ("file", str(path))):
                    # all engines busy for the throughput; one worker for the overhead (a
                    # piece's wall time is then its engine time plus everything around it)
                    for workers in dict.fromkeys((default, 2, 1)):
                        def once(source: object = source, workers: int = workers) -> tuple:
                            return scan(dev, program, source, piece_size=piece, read=0,
                                        workers=workers, reduce=add, initial=(0, 0.0, 0))
                        wall, cpu, value = best(opts.runs, once)
                        total, engine, n = cast(tuple[int, float, int], value)
                        if total != want or n != npieces:
                            sys.exit(f"{spec} {label}: sum {total:#x} over {n} pieces, "
                                     f"numpy {want:#x} over {npieces}")
                        add_row(f"{spec}, {label}", workers, wall, cpu, n,
                                engine if workers == 1 else None)
    return rows


def _measure_options(ap: argparse.ArgumentParser) -> None:
    """The options ``measure`` reads (a child parses these alone)."""
    ap.add_argument("--mib", type=int, default=1024, help="data size in MiB (default 1024)")
    ap.add_argument("--piece-kib", type=int, default=1024, help="piece size in KiB (default 1024)")
    ap.add_argument("--backends", default="emu,cpu", help="device specs, comma-separated")
    ap.add_argument("--workers", type=int, default=None, help="map workers (default: engines)")
    ap.add_argument("--runs", type=int, default=2, help="runs per figure, best kept (default 2)")
    ap.add_argument("--file", default=None, help="where to write the data file (default: a "
                                                 "temporary file, removed at the end)")


def _measure_args(opts: argparse.Namespace) -> list[str]:
    """The command line of a child measuring what ``opts`` asks for."""
    out = ["--child", "--mib", str(opts.mib), "--piece-kib", str(opts.piece_kib),
           "--backends", opts.backends, "--runs", str(opts.runs)]
    out += ["--workers", str(opts.workers)] if opts.workers is not None else []
    return out + (["--file", opts.file] if opts.file else [])


#: The loop ``--callgrind`` counts: 1 MiB pieces written into a data slot and run, one thread.
CALLGRIND_LOOP = r"""
import os, subprocess, sys
import hermes
from hermes.engine.asm import assemble_program
prog = assemble_program("mov r0, 7\nexit")
n = int(sys.argv[1])
data = memoryview(bytearray(os.urandom(n << 20)))
with hermes.open(sys.argv[2], executor="interp", engines=1) as dev, dev.session() as s:
    s.load(prog)
    for i in range(2):
        s.write(data[:1 << 20]); s.run(read=0)
    me = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", me], capture_output=True, check=True)
    for i in range(n):
        s.write(data[i << 20:(i + 1) << 20]); s.run(read=0)
    subprocess.run(["callgrind_control", "-i", "off", me], capture_output=True, check=True)
"""


def callgrind(trees: dict[str, Path], backends: list[str], pieces: int = 8) -> None:
    """Print the instructions per 1 MiB piece (written into a slot, then a 2-instruction run)
    under callgrind, and the share of them in memcpy: deterministic, whatever the load."""
    from hermes.benchmarks.baseline import tree_env
    print(f"callgrind: instructions per 1 MiB piece (write + run, {pieces} pieces, interp)")
    print(f"{'backend':<8} {'tree':<9} {'Ir/piece':>10} {'memcpy Ir':>10} {'other Ir':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "loop.py"
        script.write_text(CALLGRIND_LOOP)
        for spec in backends:
            for name, tree in trees.items():
                out = Path(tmp) / f"{spec}.{name}.out"
                subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                f"--callgrind-out-file={out}", sys.executable, str(script),
                                str(pieces), spec], env=tree_env(tree),
                               capture_output=True, timeout=3600, check=True)
                report = subprocess.run(["callgrind_annotate", "--threshold=100", str(out)],
                                        capture_output=True, text=True, check=True,
                                        timeout=600).stdout
                total = copy = 0
                for line in report.splitlines():
                    figure = line.strip().split(" ", 1)[0].replace(",", "")
                    if not figure.isdigit():
                        continue
                    if "PROGRAM TOTALS" in line:
                        total = int(figure)
                    elif "memmove" in line or "memcpy" in line:
                        copy += int(figure)
                print(f"{spec:<8} {name:<9} {total / pieces:10.0f} {copy / pieces:10.0f} "
                      f"{(total - copy) / pieces:10.0f}")


def main(argv: list[str] | None = None) -> None:
    """Time both trees, taking turns ``--rounds`` times, and print each figure's best."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:  # the measuring side, any tree's hermes
        child = argparse.ArgumentParser()
        _measure_options(child)
        print(json.dumps(measure(child.parse_args(args[1:]))))
        return
    from hermes.benchmarks.baseline import (
        THIS_TREE,
        ChildError,
        add_base_options,
        base_tree,
        run_child_json,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _measure_options(ap)
    ap.add_argument("--rounds", type=int, default=2,
                    help="child processes per tree, taking turns (default 2)")
    add_base_options(ap)
    ap.add_argument("--callgrind", action="store_true",
                    help="count instructions per piece under callgrind instead of timing")
    opts = ap.parse_args(args)
    base = base_tree(opts)
    trees = {"this": THIS_TREE} | ({"baseline": base} if base else {})
    if opts.callgrind:
        callgrind(trees, opts.backends.split(","))
        return
    from hermes.engine.clang import require_clang
    require_clang()
    bests: dict[tuple, dict] = {}
    for _ in range(opts.rounds):
        for name, tree in trees.items():
            try:
                rows = run_child_json(tree, __file__, _measure_args(opts), timeout=3600)
            except ChildError as exc:
                sys.exit(f"the scan failed: {exc}")
            for r in rows:
                key = (r["label"], name, r["workers"])
                if key not in bests or r["wall"] < bests[key]["wall"]:
                    bests[key] = {**r, "tree": name}
    npieces = -(-(opts.mib << 20) // (opts.piece_kib << 10))
    per_numpy = min(r["wall"] for k, r in bests.items() if k[0] == "numpy, memory") / npieces
    print(f"{opts.mib} MiB in {npieces} pieces of {opts.piece_kib} KiB; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; best of {opts.rounds} x {opts.runs} runs"
          + (f"; baseline {base}" if base else ""))
    print(HEADER)
    labels = list(dict.fromkeys(k[0] for k in bests))
    for key in sorted(bests, key=lambda k: (labels.index(k[0]), -k[2], k[1] != "this")):
        print(row(bests[key], per_numpy))


if __name__ == "__main__":
    main()

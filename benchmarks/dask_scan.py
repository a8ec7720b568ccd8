"""Prints hermes.dask throughput with 1 and 2 worker processes against the library's local scan,
and the per-piece overhead of a dask task against a local piece, on the same file.

Throughput: a newline count (``examples/newlines.c``) over a synthetic text file (``--mib``,
1 MiB pieces) on ``emu`` devices: locally (``hermes.lib.pieces.scan`` on one device of 1 and 2
engines) and on a ``LocalCluster`` of 1 and 2 worker processes, each worker with one 1-engine
device. Overhead: a 2-instruction program over ``--small-pieces`` pieces of 4 KiB, locally and
through dask with one piece per task, ``--batch`` pieces per task and the default batching; the
per-piece figure is the wall time per piece. Compute-bound: 32 pieces of a 20M-step LCG loop
each (the engine's time dominates), locally and on 1 and 2 workers. Each figure is the best of
``--runs``; cluster start-up is timed apart and not counted. Usage: python
benchmarks/dask_scan.py [--mib 128] [--small-pieces 500] [--batch 64] [--runs 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import distributed
import numpy as np

import hermes
import hermes.dask as hd
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c
from hermes.engine.elf import load_elf
from hermes.lib.pieces import scan

#: The example offload counting '\n' bytes (r0 = the count), compiled with clang for BPF.
NEWLINES_C = Path(__file__).resolve().parent.parent / "examples" / "newlines.c"
TRIVIAL = "mov r0, 0\nexit"
#: Compute-bound: r0 = argument 0 steps of a linear congruential generator (input unread).
LCG = "mov r0, 0\nl: mul r0, 1103515245\nadd r0, 12345\nsub r3, 1\njne r3, 0, l\nexit"
#: Pieces (4 KiB each) and LCG steps per piece of the compute-bound runs.
LCG_PIECES = 32
LCG_STEPS = 20_000_000
MIB = 1 << 20


def make_text(path: str, mib: int) -> int:
    """Write ``mib`` MiB of random lines (about one newline in 64 bytes); their newline count."""
    rng = np.random.default_rng(7)
    count = 0
    with open(path, "wb") as f:
        for _ in range(mib):
            block = rng.integers(97, 123, MIB, dtype=np.uint8)
            block[rng.integers(0, MIB, MIB // 64)] = 10
            count += int(np.count_nonzero(block == 10))
            f.write(block.tobytes())
    return count


def local(program: object, path: str, engines: int, piece: int, runs: int,
          **kw: object) -> tuple[float, int]:
    """Best seconds of ``runs`` local scans on one emu device (after a warm-up scan that
    compiles the program), and the reduced count."""
    dev = hermes.open("emu", engines=engines, data_slot_size=max(piece, 4096))
    try:
        best = float("inf")
        for k in range(runs + 1):
            t0 = time.perf_counter()
            total = scan(dev, program, path, piece_size=piece, read=0,
                         reduce=lambda a, r: a + r.return_value, initial=0, **kw)
            if k:
                best = min(best, time.perf_counter() - t0)
        return best, total
    finally:
        dev.close()


def cluster(workers: int, piece: int) -> tuple[distributed.LocalCluster, distributed.Client, float]:
    """A LocalCluster of ``workers`` processes, each with one 1-engine emu device."""
    t0 = time.perf_counter()
    c = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                 silence_logs=logging.ERROR)
    client = distributed.Client(c)
    client.register_plugin(hd.HermesPlugin([("emu", {"engines": 1,
                                                     "data_slot_size": max(piece, 4096)})]))
    return c, client, time.perf_counter() - t0


def remote(client: distributed.Client, program: object, path: str, piece: int, runs: int,
           **kw: object) -> tuple[float, int]:
    """Best seconds of ``runs`` hermes.dask.map over ``path``, and the reduced count."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        total = hd.map(program, path, client=client, piece_size=piece, read=0,
                       reduce=lambda a, r: a + r.return_value, initial=0, **kw)
        best = min(best, time.perf_counter() - t0)
    return best, total


def main() -> None:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=128, help="size of the text file in MiB")
    ap.add_argument("--small-pieces", type=int, default=500, help="4 KiB pieces for overhead")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (the best is printed)")
    ap.add_argument("--batch", type=int, default=64, help="pieces per task, second overhead run")
    opts = ap.parse_args()
    trivial = assemble_program(TRIVIAL)
    with tempfile.TemporaryDirectory() as tmp:
        newlines = load_elf(compile_c(NEWLINES_C, Path(tmp) / "newlines.o"))
        path = os.path.join(tmp, "lines.txt")
        want = make_text(path, opts.mib)
        small = os.path.join(tmp, "small.bin")
        with open(small, "wb") as f:
            f.truncate(opts.small_pieces * 4096)
        size = opts.mib * MIB
        print(f"newline count over {opts.mib} MiB, 1 MiB pieces ({opts.mib} pieces), emu:")
        rates = {}
        lcg_file = os.path.join(tmp, "lcg.bin")
        with open(lcg_file, "wb") as f:
            f.truncate(LCG_PIECES * 4096)
        lcg = assemble_program(LCG)
        compute: dict[str, float] = {}
        for engines in (1, 2):
            compute[f"local scan, 1 device x {engines} engine(s)"], _ = local(
                lcg, lcg_file, engines, 4096, opts.runs, args=(LCG_STEPS,))
        for engines in (1, 2):
            secs, got = local(newlines, path, engines, MIB, opts.runs)
            assert got == want, (got, want)
            rates[f"local {engines}"] = size / secs
            print(f"  local scan, 1 device x {engines} engine(s): {size / secs / 1e9:6.3f} GB/s")
        per_piece: dict[str, float] = {}
        secs, _ = local(trivial, small, 1, 4096, opts.runs)
        per_piece["local"] = secs / opts.small_pieces
        for workers in (1, 2):
            c, client, start = cluster(workers, MIB)
            try:
                remote(client, newlines, path, MIB, 1)  # warm: ship and compile the program
                secs, got = remote(client, newlines, path, MIB, opts.runs)
                assert got == want, (got, want)
                rates[f"dask {workers}"] = size / secs
                print(f"  hermes.dask, {workers} worker(s) x 1 engine: "
                      f"{size / secs / 1e9:6.3f} GB/s"
                      f"  (x{size / secs / rates['dask 1']:.2f} of 1 worker; cluster start "
                      f"{start:.1f} s)")
                compute[f"hermes.dask, {workers} worker(s) x 1 engine"], _ = remote(
                    client, lcg, lcg_file, 4096, opts.runs, args=(LCG_STEPS,), batch=1)
                if workers == 1:
                    for batch in (1, opts.batch, None):
                        remote(client, trivial, small, 4096, 1, batch=batch)
                        secs, _ = remote(client, trivial, small, 4096, opts.runs, batch=batch)
                        per_piece[f"dask batch {batch or 'auto'}"] = secs / opts.small_pieces
            finally:
                client.close()
                c.close()
        print(f"compute-bound: {LCG_PIECES} pieces of {LCG_STEPS:,} LCG steps each:")
        for name, t in compute.items():
            print(f"  {name:40s} {t:6.2f} s")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"per-piece overhead, 2-instruction program, {opts.small_pieces} pieces of 4 KiB, "
              "1 worker / 1 device:")
        for name, t in per_piece.items():
            extra = t - per_piece["local"]
            print(f"  {name:14s} {t * 1e6:9.1f} us/piece" + (
                "" if name == "local" else f"  (+{extra * 1e6:.1f} us over the local scan)"))


if __name__ == "__main__":
    main()

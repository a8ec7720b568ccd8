"""Prints the throughput of a 1 GiB ``scan`` (u64 sum, 1 MiB pieces) on emu and cpu, from memory and
from a file, with the per-piece overhead against the engine time and a numpy sum of the same data.

Each line is one end-to-end scan: splitting, moving every piece into a data slot, running the
program, and reducing the results. ``engine`` is the mean of the runs' own ``Result.elapsed``
(program time on the engine); ``overhead`` is the wall time per piece minus that, the cost of
everything around the program. The numpy lines sum the same bytes on the host (from memory, and
piece by piece from the file's mapping), as a bound for what the scan could reach.

Usage: python benchmarks/scan.py [--mib 1024] [--piece-kib 1024] [--backends emu,cpu]
[--workers N] [--runs 2] [--file PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import hermes
from hermes.engine.clang import compile_c, require_clang
from hermes.engine.elf import load_elf
from hermes.lib.pieces import pieces, scan

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


def best(runs: int, fn) -> tuple[float, object]:
    """(shortest wall time, its value) of ``runs`` calls of ``fn`` (other jobs share the cores)."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        value = fn()
        out.append((time.perf_counter() - t0, value))
    return min(out, key=lambda tv: tv[0])


HEADER = (f"{'scan':<14} {'workers':>7} {'GB/s':>6} {'pieces/s':>9} {'us/piece':>9} "
          f"{'engine us':>9} {'overhead us':>11} {'x numpy':>7}")


def row(label: str, workers: str, nbytes: int, wall: float, npieces: int,
        engine: float | None, numpy_per_piece: float) -> str:
    """One line of figures: GB/s, pieces/s, wall time per piece, engine time per piece, the
    overhead (wall minus engine, per piece), and the time per piece against numpy's."""
    per = wall / npieces
    eng = f"{engine / npieces * 1e6:9.1f}" if engine else f"{'-':>9}"
    over = f"{(per - engine / npieces) * 1e6:11.1f}" if engine else f"{'-':>11}"
    return (f"{label:<14} {workers:>7} {nbytes / wall / 1e9:6.2f} {npieces / wall:9.0f} "
            f"{per * 1e6:9.1f} {eng} {over} {per / numpy_per_piece:7.1f}")


def main(argv: list[str] | None = None) -> None:
    """Build the data, then time numpy and every (backend, source) scan, printing one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="data size in MiB (default 1024)")
    ap.add_argument("--piece-kib", type=int, default=1024, help="piece size in KiB (default 1024)")
    ap.add_argument("--backends", default="emu,cpu", help="device specs, comma-separated")
    ap.add_argument("--workers", type=int, default=None, help="map workers (default: engines)")
    ap.add_argument("--runs", type=int, default=2, help="runs per figure, best kept (default 2)")
    ap.add_argument("--file", default=None, help="where to write the data file (default: a "
                                                 "temporary file, removed at the end)")
    opts = ap.parse_args(argv)
    require_clang()
    nbytes, piece = opts.mib << 20, opts.piece_kib << 10
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sum.c").write_text(SUM_C)
        program = load_elf(compile_c(Path(tmp) / "sum.c", Path(tmp) / "sum.o"))
        words = np.arange(nbytes // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        path = Path(opts.file) if opts.file else Path(tmp) / "data.bin"
        words.tofile(path)
        npieces = -(-nbytes // piece)
        print(f"{opts.mib} MiB in {npieces} pieces of {opts.piece_kib} KiB; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")

        t_numpy, want = best(opts.runs, lambda: int(words.sum()))

        def numpy_pieces() -> int:
            with pieces(path, piece) as it:
                return sum(int(np.frombuffer(p.data, dtype=np.uint64).sum()) for p in it) & MASK
        t_numpy_file, from_file = best(opts.runs, numpy_pieces)
        assert from_file == want
        per_numpy = t_numpy / npieces
        print(HEADER)
        print(row("numpy, memory", "1", nbytes, t_numpy, npieces, None, per_numpy))
        print(row("numpy, file", "1", nbytes, t_numpy_file, npieces, None, per_numpy))

        for spec in opts.backends.split(","):
            with hermes.open(spec) as dev:
                # compile, and touch every slot and buffer the scans use, before timing
                scan(dev, program, words[:min(nbytes, 64 << 20) // 8], piece_size=piece, read=0,
                     reduce=lambda acc, r: acc, initial=0)
                default = opts.workers or dev.engines
                for label, source in (("memory", words), ("file", str(path))):
                    # all engines busy for the throughput; one worker for the overhead (a
                    # piece's wall time is then its engine time plus everything around it)
                    for workers in dict.fromkeys((default, 1)):
                        def once(source: object = source, workers: int = workers) -> tuple:
                            return scan(dev, program, source, piece_size=piece, read=0,
                                        workers=workers, reduce=add, initial=(0, 0.0, 0))
                        wall, (total, engine, n) = best(opts.runs, once)
                        print(row(f"{spec}, {label}", str(workers), nbytes, wall, n,
                                  engine if workers == 1 else None, per_numpy))
                        if total != want or n != npieces:
                            sys.exit(f"{spec} {label}: sum {total:#x} over {n} pieces, "
                                     f"numpy {want:#x} over {npieces}")


if __name__ == "__main__":
    main()

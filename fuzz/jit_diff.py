#!/usr/bin/env python3
"""Differential fuzzer: random valid eBPF programs on the interpreter and the LLVM JIT must agree.

Usage: python fuzz/jit_diff.py --count N [--seed S] [--batch B] [--jobs J] [--max-items K]
Compares r0, memory, instruction count and errors (type, kind, pc, address, size, count, message)
of every program; prints each difference with the program and exits 1 when any was found.
Programs are compiled B at a time in one LLVM module to amortise LLVM's fixed cost.
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time

from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.jit import JitExecutable
from hermes.engine.jit.progen import compare, random_case
from hermes.errors import VerifierError


def run_range(args: tuple[int, int, int, int]) -> tuple[int, int, list[str]]:
    """Run ``count`` programs from ``seed``; returns (programs run, rejected, differences)."""
    seed, count, batch, max_items = args
    rng = random.Random(seed)
    done = rejected = 0
    diffs: list[str] = []
    while done < count:
        n = min(batch, count - done)
        cases = [random_case(rng, max_items) for _ in range(n)]
        exes = JitExecutable.load_many([c.program() for c in cases], helpers=CONFORMANCE_HELPERS,
                                       budget=10**9)
        for case, exe in zip(cases, exes):
            if isinstance(exe, VerifierError):
                rejected += 1
                diffs.append(f"generator produced a program the verifier rejects: {exe}\n"
                             f"{case.text}")
                continue
            d = compare(case, exe)
            if d:
                diffs.append(d)
        done += n
    return done, rejected, diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (0: in this process)")
    ap.add_argument("--max-items", type=int, default=24)
    ap.add_argument("--chunk", type=int, default=5000, help="programs per progress report")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"jit_diff: {args.count} programs, seed {seed}, {args.jobs} job(s)", flush=True)
    chunks = [(seed * 1_000_003 + k, min(args.chunk, args.count - k * args.chunk), args.batch,
               args.max_items) for k in range((args.count + args.chunk - 1) // args.chunk)]
    t0 = time.time()
    total = 0
    ndiff = 0
    # one chunk per worker process: compiled code is cached for the life of a process, so fresh
    # processes keep memory bounded over a million programs
    with multiprocessing.Pool(args.jobs, maxtasksperchild=1) if args.jobs > 0 else _Serial() as pool:
        for done, rejected, diffs in pool.imap_unordered(run_range, chunks):
            total += done
            for d in diffs:
                ndiff += 1
                if ndiff <= 20:
                    print(f"--- difference {ndiff}\n{d}", flush=True)
            rate = total / max(1e-9, time.time() - t0)
            print(f"ran {total} programs, {ndiff} differences ({rate:.0f}/s)", flush=True)
    print(f"jit_diff: ran {total} programs with seed {seed}: {ndiff} differences "
          f"in {time.time() - t0:.0f} s")
    return 1 if ndiff else 0


class _Serial:
    """In-process stand-in for a pool (keeps tracebacks readable with --jobs 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, items):
        return map(fn, items)


if __name__ == "__main__":
    sys.exit(main())

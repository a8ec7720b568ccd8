#!/usr/bin/env python3
"""Differential fuzzer: random programs agree on the reference, the interpreter and both JIT tiers.

Usage: python fuzz/jit_diff.py --count N [--kind flat|deep|loops|mixed] [--seed S] [--batch B]
                               [--jobs J] [--max-items K]
Every program runs on the reference interpreter (the specification, `engine/reference.py`), the
fast interpreter, the JIT's quick tier and its full tier; r0, memory, instruction count and
errors (type, kind, pc, address, size, count, message) are compared with the reference's, each
difference is printed with the program and the exit status is 1 when any was found. Kinds:
`flat` (ALU, memory, helpers, shallow calls, counted loops), `deep` (recursion to and past the
depth limit, mutual calls, callers' frames through r10, code no run reaches, budgets running out
at depth), `loops` (the loop shapes of the interpreter's fast versions and of clang's kernels:
pointer and base + index walks, derived counters, exits mid-body), `mixed` (alternating).
Each program is verified once (every engine shares the result)
and compiled B at a time in one LLVM module per tier. J worker processes (each chunk of programs
in a fresh one) share the programs, so every worker has some. The time is LLVM's: about 16 ms of
CPU per program for the quick tier and 70 ms for the full tier, out of about 100 ms in all,
so the rate is about 10 programs a second per core (specs/jit.md).
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import time
from pathlib import Path

from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import DEFAULT_OPT_LEVEL, JitExecutable, runtime
from hermes.engine.program import Program
from hermes.engine.reference import Reference
from hermes.engine.verifier import VerifierInfo, verify
from hermes.errors import VerifierError

# The program generators are test support (tests/support), not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.progen import KINDS, Case, compare_all  # noqa: E402

#: JIT tiers every program is compiled for (besides the interpreter, the reference).
TIERS = ("quick", "full")
BUDGET = 10**9


def run_range(args: tuple[int, int, int, int, str]) -> tuple[int, int, list[str]]:
    """Run ``count`` programs from ``seed``; returns (programs run, rejected, differences)."""
    seed, count, batch, max_items, kind = args
    rng = random.Random(seed)
    makers = [KINDS[k] for k in KINDS] if kind == "mixed" else [KINDS[kind]]
    # every executable of a batch is made from the compile cache right after its module is built
    batch = max(1, min(batch, runtime.CACHE_MAX))
    done = rejected = 0
    diffs: list[str] = []
    while done < count:
        n = min(batch, count - done)
        cases = [makers[(done + k) % len(makers)](rng, max_items) for k in range(n)]
        programs = [c.program() for c in cases]
        # one verification per program, shared by the interpreter and both tiers (the load
        # pipeline's contract: the same check whichever executor runs the program)
        checked: list[tuple[Case, Program, VerifierInfo]] = []
        for case, program in zip(cases, programs, strict=True):
            try:
                checked.append((case, program, verify(program, CONFORMANCE_HELPERS)))
            except VerifierError as bad:
                rejected += 1
                diffs.append(f"generator produced a program the verifier rejects: {bad}\n"
                             f"{case.text}")
        # the reference comes first: every other engine is compared with it
        exes: list[dict[str, object]] = [
            {"reference": Reference(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET, checked=info),
             "interp": Interpreter(p, helpers=CONFORMANCE_HELPERS, budget=BUDGET, checked=info)}
            for _, p, info in checked]
        for tier in TIERS:
            # one LLVM module per tier and batch amortises LLVM's fixed cost
            runtime.compile_many([(p, info) for _, p, info in checked], DEFAULT_OPT_LEVEL, tier)
            for found, (_, p, info) in zip(exes, checked, strict=True):
                found[f"jit-{tier}"] = JitExecutable(p, helpers=CONFORMANCE_HELPERS,
                                                     budget=BUDGET, tier=tier, checked=info)
        for found, (case, _, _) in zip(exes, checked, strict=True):
            d = compare_all(case, found)
            if d:
                diffs.append(d)
        done += n
    return done, rejected, diffs


def chunks(seed: int, count: int, chunk: int, jobs: int, batch: int, max_items: int,
           kind: str) -> list[tuple[int, int, int, int, str]]:
    """``run_range`` arguments for ``count`` programs: at least one chunk per job (so every
    worker has work) and at most ``chunk`` programs in each."""
    size = max(1, min(chunk, -(-count // max(1, jobs))))
    return [(seed * 1_000_003 + k, min(size, count - k * size), batch, max_items, kind)
            for k in range(-(-count // size))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (0: in this process)")
    ap.add_argument("--max-items", type=int, default=24)
    ap.add_argument("--kind", choices=[*KINDS, "mixed"], default="mixed",
                    help="program generator (default: every kind, alternating)")
    ap.add_argument("--chunk", type=int, default=5000, help="programs per progress report")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"jit_diff: {args.count} programs of kind {args.kind}, seed {seed}, {args.jobs} job(s), "
          f"engines reference + interp + JIT {' + '.join(TIERS)}", flush=True)
    work = chunks(seed, args.count, args.chunk, args.jobs, args.batch, args.max_items,
                  args.kind)
    t0 = time.time()
    total = 0
    ndiff = 0
    # one chunk per worker process: compiled code is cached for the life of a process, so fresh
    # processes keep memory bounded over a million programs
    pool_or_serial = (multiprocessing.Pool(args.jobs, maxtasksperchild=1) if args.jobs > 0
                      else _Serial())
    with pool_or_serial as pool:
        for done, _rejected, diffs in pool.imap_unordered(run_range, work):
            total += done
            for d in diffs:
                ndiff += 1
                if ndiff <= 20:
                    print(f"--- difference {ndiff}\n{d}", flush=True)
            rate = total / max(1e-9, time.time() - t0)
            print(f"ran {total} programs, {ndiff} differences ({rate:.0f}/s)", flush=True)
    print(f"jit_diff: ran {total} programs ({args.kind}) with seed {seed}: {ndiff} differences "
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

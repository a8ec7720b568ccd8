"""JIT memory: resident memory added per distinct program compiled, once the code cache is full.

Usage: python benchmarks/jit_memory.py [--programs N] [--cache N]
Compiles N distinct programs (the bench's filter_records kernel with a different constant each
time) through ``hermes.engine.load(..., executor="jit")``, runs each once and drops it, and prints
the growth of the resident set per program after the cache has filled. Machine code and LLVM
modules that fall out of the cache are freed; what remains per program is held inside LLVM's
optimisation pipeline (see specs/jit.md, "Compilation, caching, threads").
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
from pathlib import Path

from hermes.benchmarks import find_shared
from hermes.engine import load
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import DEVICE_HELPERS
from hermes.engine.jit import runtime

BENCH = Path(os.environ.get("HERMES_BENCH") or find_shared("bench") or "../shared/bench")


def _rss_mib() -> float:
    gc.collect()
    try:  # hand freed heap pages back, so the figure is what is really still held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--programs", type=int, default=600)
    ap.add_argument("--cache", type=int, default=runtime.CACHE_MAX)
    args = ap.parse_args()
    runtime.CACHE_MAX = args.cache
    src = (BENCH / "asm" / "filter_records.asm").read_text()
    mark = None
    for i in range(args.cache + args.programs):
        exe = load(assemble_program(f"{src}\nmov %r0, {i}\nexit", name=f"mem{i}"),
                   helpers=DEVICE_HELPERS, executor="jit")
        exe.run(bytearray(8192))
        del exe
        if i + 1 == args.cache:
            mark = _rss_mib()
    grown = _rss_mib() - mark
    print(f"code cache: {len(runtime._cache)} programs (limit {args.cache})")
    print(f"{args.programs} more distinct programs compiled: resident set grew {grown:.1f} MiB, "
          f"{grown * 1024 / args.programs:.0f} KiB per program")


if __name__ == "__main__":
    main()

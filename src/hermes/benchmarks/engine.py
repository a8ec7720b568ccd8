"""Engine benchmark: runs the shared bench kernels (asm, and C via clang) on one engine."""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

from .. import engine as _engine
from ..engine.asm import assemble_program
from ..engine.elf import load_elf
from ..engine.program import Program
from . import find_shared


def load_reference(bench_dir: Path) -> ModuleType:
    """Import the bench's ``reference.py`` (input slots and expected results)."""
    spec = importlib.util.spec_from_file_location("hermes_bench_reference",
                                                  bench_dir / "reference.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {bench_dir / 'reference.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _programs(bench_dir: Path, kinds: list[str], names: list[str] | None,
              workdir: Path) -> list[tuple[str, str, Program]]:
    out = []
    ref = load_reference(bench_dir)
    for name in ref.PROGRAMS:
        if names and name not in names:
            continue
        if "asm" in kinds:
            out.append((name, "asm", assemble_program((bench_dir / "asm" / f"{name}.asm")
                                                      .read_text(), name=name)))
        if "c" in kinds:
            from ..engine.clang import compile_c
            obj = compile_c(bench_dir / f"{name}.c", workdir / f"{name}.o")
            out.append((name, "c", load_elf(obj)))
    return out


def main(args: argparse.Namespace) -> int:
    """``hermes bench --executor NAME``: per program instructions, time, instr/s, check."""
    import tempfile
    bench_dir = Path(args.bench_dir) if args.bench_dir else find_shared("bench")
    if bench_dir is None:
        print("hermes bench: cannot find shared/bench; pass --bench-dir")
        return 2
    ref = load_reference(bench_dir)
    kinds = args.kind or ["asm"]
    failures = 0
    print(f"executor: {args.executor or _engine.DEFAULT_EXECUTOR}   repeats: {args.repeat}")
    print(f"{'program':16s} {'src':4s} {'compile ms':>10s} {'bg opt ms':>9s} {'instructions':>13s} "
          f"{'ms/run':>9s} {'M instr/s':>10s}  check")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, program in _programs(bench_dir, kinds, args.program, Path(tmp)):
            mem, r0, after = ref.PROGRAMS[name]()
            t0 = time.perf_counter()
            exe = _engine.load(program, executor=args.executor)
            compile_ms = (time.perf_counter() - t0) * 1e3
            # large programs run first on quickly compiled code; time the final code
            wait = getattr(exe, "wait_final", None)
            if wait is not None:
                wait()
            upgrade = getattr(getattr(exe, "compiled", None), "optimise_seconds", None)
            upgrade_ms = f"{upgrade * 1e3:9.1f}" if upgrade is not None else f"{'-':>9s}"
            times = []
            result = None
            for _ in range(args.repeat):
                slot = bytearray(mem)
                t0 = time.perf_counter()
                result = exe.run(slot)
                times.append(time.perf_counter() - t0)
                ok = result.return_value == r0 and (after is None or bytes(slot) == after)
            assert result is not None, "--repeat must be at least 1"
            best = min(times)
            med = statistics.median(times)
            rate = result.instructions / best / 1e6
            check = "ok" if ok else f"MISMATCH r0={result.return_value:#x} want {r0:#x}"
            failures += not ok
            print(f"{name:16s} {kind:4s} {compile_ms:10.2f} {upgrade_ms} "
                  f"{result.instructions:13,d} {med * 1e3:9.3f} {rate:10.2f}  {check}")
    return 1 if failures else 0

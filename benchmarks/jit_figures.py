"""JIT figures: per-kernel run time (JIT, gcc -O2 native, uBPF's published figures), compile time.

Usage: python benchmarks/jit_figures.py [--repeat N] [--no-gcc] [--code [--base TREE | --no-base]]
Runs the six kernels of shared/bench, as hand-written assembly (asm/) and as C compiled by
clang -O2 for BPF, on their reference inputs, checks r0 and the output slot, and prints
min/median milliseconds per run (of the final code: large programs are recompiled in the
background, and the figures wait for that). gcc -O2 is timed in the same process via
ctypes on the same slot bytes, so the ratio is measured on the same machine and run.

``--code`` prints instead, per kernel, the generated code's size (IR lines and instructions
before and after optimisation, machine code bytes) and the full pipeline's compile time (CPU
milliseconds of code generation, parsing, optimisation and machine code, the minimum of
``--repeat`` compilations) beside the same figures of a baseline checkout (``--base TREE``,
default /tmp/base/main when present; ``--no-base`` for none), measured in a child process with
its ``src`` first on ``PYTHONPATH``, kernel by kernel interleaved with this tree's.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hermes.benchmarks import find_shared
from hermes.engine import load
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c
from hermes.engine.elf import load_elf
from hermes.engine.frontends import read_program
from hermes.engine.helpers import DEVICE_HELPERS
from hermes.engine.program import Program

BENCH = Path(os.environ.get("HERMES_BENCH") or find_shared("bench") or "../shared/bench")
#: uBPF x86-64 JIT figures from the bench README (ms, minimum of several runs).
UBPF_JIT = {"sum_bytes": 0.244, "fnv1a": 1.01, "histogram": 0.497, "lcg_loop": 1.01,
            "insertion_sort": 0.119, "filter_records": 0.232}
NAMES = list(UBPF_JIT)


def _inputs() -> dict[str, tuple[bytes, int, bytes]]:
    sys.path.insert(0, str(BENCH))
    import reference  # the bench folder's own reference data
    out = {}
    for name, make in reference.PROGRAMS.items():
        mem, r0, after = make()
        out[name] = (bytes(mem), r0, bytes(after) if after is not None else bytes(mem))
    return out


def _gcc_lib(tmp: Path):
    """Build the six C kernels with gcc -O2 as one shared library; None when gcc is missing."""
    src = tmp / "all.c"
    src.write_text("".join(f'#include "{BENCH / (n + ".c")}"\n' for n in NAMES))
    lib = tmp / "libbench.so"
    try:
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", str(BENCH), "-o", str(lib),
                        str(src)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return ctypes.CDLL(str(lib))


def _time(fn, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return min(samples), statistics.median(samples)


def compile_time(n_insns: int = 1000) -> tuple:
    """(ms, CPU ms, instructions, background ms or None) to verify and compile a fresh
    straight-line-and-loops program of n_insns until it can run."""
    lines = ["mov %r0, 0", "mov %r3, 0"]
    k = 0
    while len(lines) - 2 * k < n_insns - 9:  # labels are not instructions
        k += 1
        lines += [f"L{k}:", f"add %r0, {k}", "xor %r3, %r0", f"ldxb %r4, [%r1+{k % 64}]",
                  "add %r0, %r4", f"stxb [%r10-{1 + k % 500}], %r4", "mul %r3, 7",
                  f"jgt %r3, {k * 13}, L{k}x", "add %r3, 1", f"L{k}x:"]
    while len(lines) - 2 * k < n_insns - 1:
        lines.append("add %r0, 1")
    lines += ["exit"]
    prog = assemble_program("\n".join(lines), name=f"compile-{time.time_ns()}")
    t0 = time.perf_counter()
    c0 = time.process_time()
    exe = load(prog, helpers=DEVICE_HELPERS, executor="jit")
    out = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3, len(prog)
    exe.wait_final()
    bg = exe.compiled.optimise_seconds
    return out + ((bg * 1e3 if bg is not None else None),)


def _kernels(tmp: Path, only: str | None = None):
    """(name, form, program) of every bench kernel, assembly and C (or only ``name.form``)."""
    for name, kind in [(n, k) for n in NAMES for k in ("asm", "c")]:
        if only is not None and f"{name}.{kind}" != only:
            continue
        if kind == "asm":
            yield name, kind, read_program(BENCH / "asm" / f"{name}.asm")
        else:
            yield name, kind, load_elf(compile_c(BENCH / f"{name}.c", tmp / f"{name}.o"))


def _cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def code_figures(program: Program, repeat: int) -> dict:
    """IR and machine code size of ``program`` and the CPU ms of compiling it (full pipeline)."""
    from hermes.engine.helpers import DEVICE_HELPERS as helpers
    from hermes.engine.jit import codegen, runtime
    from hermes.engine.verifier import verify
    st = runtime._llvm()
    llvm = st["llvm"]
    info = verify(program, helpers)
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = _cpu()
        ir = codegen.generate(program, info, st["triple"], st["layout"], "kernel")
        mod = llvm.parse_assembly(ir)
        mod.verify()
        runtime._optimise(st, mod, 3, False)
        obj = st["tm"].emit_object(mod)
        best = min(best, _cpu() - t0)
    # the JIT code model puts code in .ltext as well as .text
    text = sum(sec.size() for sec in llvm.ObjectFileRef.from_data(obj).sections()
               if sec.is_text())
    lines = ir.splitlines()
    return {"ir_lines": len(lines), "ir_insns": sum(1 for ln in lines if ln.startswith("  ")),
            "opt_insns": sum(1 for ln in str(mod).splitlines() if ln.startswith("  ")),
            "text": text, "ms": best * 1e3}


def _code_rows(repeat: int, only: str | None = None) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return {f"{name}.{kind}": code_figures(prog, repeat)
                for name, kind, prog in _kernels(Path(tmp), only)}


def _base_row(tree: Path, key: str, repeat: int) -> dict | None:
    """One kernel's code figures measured by the checkout ``tree`` (None when it fails)."""
    from hermes.benchmarks.baseline import ChildError, run_child_json
    try:
        return run_child_json(tree, __file__, ["--child", key, str(repeat)], timeout=600)[key]
    except (ChildError, subprocess.TimeoutExpired):
        return None


def code_table(repeat: int, base: Path | None) -> None:
    """Print the per-kernel code size and compile time table (and ``base``'s beside it)."""
    print(f"{'kernel':20s} {'IR lines':>8s} {'IR insns':>8s} {'opt insns':>9s} "
          f"{'text B':>7s} {'compile':>9s}" + ("   (base tree: same columns)" if base else ""))
    totals = [0.0, 0.0]
    for key in [f"{n}.{k}" for n in NAMES for k in ("asm", "c")]:
        # interleaved, so both trees see the same machine load
        old = _base_row(base, key, repeat) if base else None
        row = _code_rows(repeat, key)[key]
        totals[0] += row["ms"]
        line = (f"{key:20s} {row['ir_lines']:8d} {row['ir_insns']:8d} {row['opt_insns']:9d} "
                f"{row['text']:7d} {row['ms']:7.1f}ms")
        if old is not None:
            totals[1] += old["ms"]
            line += (f"   {old['ir_lines']:6d} {old['ir_insns']:6d} {old['opt_insns']:6d} "
                     f"{old['text']:6d} {old['ms']:7.1f}ms  ({row['ms'] / old['ms']:.2f}x)")
        print(line, flush=True)
    print(f"{'total':20s} {'':37s} {totals[0]:7.1f}ms" +
          (f"   {'':27s} {totals[1]:7.1f}ms  ({totals[0] / totals[1]:.2f}x)" if base else ""))


def main(argv: list[str] | None = None) -> None:
    """Print the run time table, or with ``--code`` the code size and compile time table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # one kernel's code figures: `--child KEY REPEAT`, any tree
        print(json.dumps(_code_rows(int(argv[2]), argv[1])))
        return
    from hermes.benchmarks.baseline import add_base_options, base_tree

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--no-gcc", action="store_true")
    ap.add_argument("--code", action="store_true", help="code size and compile time per kernel")
    add_base_options(ap)
    args = ap.parse_args(argv)
    if args.code:
        code_table(min(args.repeat, 5), base_tree(args))
        return
    inputs = _inputs()
    with tempfile.TemporaryDirectory() as tmp:
        lib = None if args.no_gcc else _gcc_lib(Path(tmp))
        print(f"{'program':16s} {'src':4s} {'jit min':>8s} {'jit med':>8s} {'gcc min':>8s} "
              f"{'uBPF':>7s} {'jit/gcc':>7s} {'jit/uBPF':>8s} {'compile':>8s}")
        for name, kind, prog in _kernels(Path(tmp)):
            mem, r0, after = inputs[name]
            t0 = time.perf_counter()
            exe = load(prog, helpers=DEVICE_HELPERS, executor="jit")
            ctime = (time.perf_counter() - t0) * 1e3
            exe.wait_final()
            bg = exe.compiled.optimise_seconds
            buf = bytearray(mem)
            res = exe.run(buf)
            ok = res.return_value == r0 and bytes(buf) == after
            work = [bytearray(mem) for _ in range(args.repeat)]
            it = iter(work)
            jmin, jmed = _time(lambda exe=exe, it=it: exe.run(next(it)), args.repeat)
            gmin = float("nan")
            if lib is not None:
                fn = getattr(lib, name)
                fn.restype = ctypes.c_uint64
                fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
                gbufs = [ctypes.create_string_buffer(mem, len(mem)) for _ in range(args.repeat)]
                git = iter(gbufs)
                gmin, _ = _time(lambda fn=fn, git=git, mem=mem: fn(next(git), len(mem)),
                                args.repeat)
            print(f"{name:16s} {kind:4s} {jmin:8.3f} {jmed:8.3f} {gmin:8.3f} {UBPF_JIT[name]:7.3f} "
                  f"{jmin / gmin:7.2f} {jmin / UBPF_JIT[name]:8.2f} {ctime:7.1f}ms"
                  f"{f' (+{bg * 1e3:.0f} ms in the background)' if bg else ''}"
                  f"{'' if ok else '  WRONG RESULT'}")
    for size in (100, 400, 1000):
        ms, cpu, n, bg = compile_time(size)
        extra = f"; full pipeline in the background: {bg:.0f} ms" if bg is not None else ""
        print(f"compile time for a {n}-instruction program: {ms:.1f} ms ({cpu:.1f} ms CPU){extra}")


if __name__ == "__main__":
    main()

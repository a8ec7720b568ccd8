"""Speed table: Hermes against native C and other eBPF engines on the six shared/bench kernels.

Usage: python benchmarks/speed.py [--quick] [--repeat N] [--peers DIR | --no-peers]
                                  [--kernels a,b] [--forms asm,c] [--scan-mib N] [--no-scan]

One run prints, measured in the same process and minute so the ratios hold on a shared machine:
  1. run time per kernel and form (asm/*.s hand assembly; the C built by clang -O2 for BPF):
     Hermes' compiled entry called directly and through ``JitExecutable.run``, the same C built
     natively by gcc -O2 and clang -O2 (at run time, called through ctypes on the same slot),
     every peer engine found, and the ratios Hermes / gcc and Hermes / best peer;
  2. compile time per kernel: Hermes' load, the peers' own, and llvmbpf's IR put through
     llvmlite's LLVM (the one Hermes uses), so one LLVM compiles both;
  3. per-call overhead: the median call of a 2-instruction program;
  4. the interpreter's instructions per second per kernel (and uBPF's, when present);
  5. the 1 GiB scan of benchmarks/scan.py through hermes.open("emu") and "cpu" beside numpy.
Every engine's r0 (and the slot it leaves) is checked against the kernel's expected result.

Peers are found in --peers DIR (default $HERMES_PEERS; none without either): DIR/ubpf and
DIR/llvmbpf built as benchmarks/peers/README.md says. The glue programs of benchmarks/peers are
compiled into DIR/hermes-glue when a peer is present. With the peers, default settings take
about 5 minutes on a busy 2-core machine, --quick (fewer repeats, 64 MiB scan) about 1.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hermes.benchmarks import find_shared
from hermes.engine import load
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c, find_clang
from hermes.engine.elf import load_elf
from hermes.engine.frontends import read_program
from hermes.engine.helpers import DEVICE_HELPERS
from hermes.engine.program import Program

BENCH = Path(os.environ.get("HERMES_BENCH") or find_shared("bench") or "../shared/bench")
HERE = Path(__file__).resolve().parent
GLUE = HERE / "peers"
NAMES = ["sum_bytes", "fnv1a", "histogram", "lcg_loop", "insertion_sort", "filter_records"]
MASK = (1 << 64) - 1
#: A budget no kernel reaches (the direct call still counts instructions against it).
BIG_BUDGET = 1 << 62
NAN = float("nan")
#: The run context's fields the direct call sets (``hermes.engine.jit.runtime.Ctx``).
CTX_FIELDS = {"data", "dlen", "stack", "budget", "r1", "r2", "helper", "segs", "err_kind",
              "count"}


class Kernel:
    """One kernel in one form: its program, input slot and expected r0 and slot after the run."""

    def __init__(self, name: str, form: str, program: Program, mem: bytes, r0: int,
                 after: bytes) -> None:
        self.name, self.form, self.program = name, form, program
        self.mem, self.r0, self.after = mem, r0, after

    def ok(self, r0: int, slot: bytes) -> bool:
        """Whether an engine's r0 and slot are the expected ones."""
        return (r0 & MASK) == self.r0 and slot == self.after


def kernels(names: list[str], forms: list[str], tmp: Path) -> list[Kernel]:
    """The kernels of shared/bench in the forms asked for, with their reference inputs."""
    sys.path.insert(0, str(BENCH))
    import reference  # the bench folder's own reference data
    out = []
    for name in names:
        mem, r0, after = reference.PROGRAMS[name]()
        mem_b = bytes(mem)
        after_b = bytes(after) if after is not None else mem_b
        for form in forms:
            if form == "asm":
                prog = read_program(BENCH / "asm" / f"{name}.asm")
            else:
                prog = load_elf(compile_c(BENCH / f"{name}.c", tmp / f"{name}.o"))
            out.append(Kernel(name, form, prog, mem_b, r0, after_b))
    return out


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(min, median) seconds of ``repeat`` calls of ``fn``."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return min(samples), statistics.median(samples)


# -- native C ---------------------------------------------------------------------------------

def native_lib(label: str, cc: str | None, names: list[str], tmp: Path) -> ctypes.CDLL | None:
    """The C kernels built by ``cc -O2`` for the host as one shared library; None when there
    is no ``cc`` or it fails. ``label`` names the files."""
    if cc is None:
        return None
    src = tmp / f"native-{label}.c"
    # the kernels, and a function doing nothing: the floor of any call made through ctypes
    src.write_text("".join(f'#include "{BENCH / (n + ".c")}"\n' for n in names)
                   + "unsigned long long speed_noop(void *p, unsigned long long n) "
                     "{ (void)p; (void)n; return 1; }\n")
    lib = tmp / f"libnative-{label}.so"
    try:
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-I", str(BENCH), "-o", str(lib),
                        str(src)], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return ctypes.CDLL(str(lib))


def time_native(lib: ctypes.CDLL, k: Kernel, repeat: int) -> tuple[float, bool]:
    """Minimum seconds of the native kernel on fresh slot copies, and whether it was right."""
    fn = getattr(lib, k.name)
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    bufs = [ctypes.create_string_buffer(k.mem, len(k.mem)) for _ in range(repeat)]
    results = []
    it = iter(bufs)
    best, _ = timed(lambda: results.append(fn(next(it), len(k.mem))), repeat)
    ok = all(k.ok(r, bytes(b.raw)) for r, b in zip(results, bufs, strict=True))
    return best, ok


# -- Hermes -----------------------------------------------------------------------------------

def direct_entry(exe: object, size: int) -> Callable[[int], int] | None:
    """A call of ``exe``'s compiled entry on a slot at a host address, with a run context and
    stack allocated once here (only the context's fields set per call; the rest of what ``run``
    does per call left out), or None when the JIT does not expose the pieces this needs. The
    callable returns r0, or raises when the run stopped early."""
    try:
        from hermes.engine.jit import _HELPER_ADDRESS, runtime
        from hermes.engine.memory import DATA_BASE
        compiled = exe.compiled  # type: ignore[attr-defined]
        entry = compiled.entry
        ctx = runtime.Ctx()
        # a Python attribute of another name would be set silently, and the code never see it
        if not CTX_FIELDS <= {name for name, *_ in runtime.Ctx._fields_}:
            return None
        stack = (ctypes.c_char * runtime.STACK_BYTES)()
        segs = (ctypes.c_uint64 * 1)()
    except (ImportError, AttributeError):
        return None
    ref = ctypes.byref(ctx)
    stack_addr, segs_addr = ctypes.addressof(stack), ctypes.addressof(segs)

    def call(addr: int) -> int:
        ctx.data, ctx.dlen, ctx.stack, ctx.budget = addr, size, stack_addr, BIG_BUDGET
        ctx.r1, ctx.r2, ctx.helper, ctx.segs = DATA_BASE, size, _HELPER_ADDRESS, segs_addr
        ctx.err_kind = ctx.count = 0
        r0 = entry(ref)
        if ctx.err_kind:
            raise RuntimeError(f"direct call stopped: error kind {ctx.err_kind} at {ctx.err_pc}")
        return r0 & MASK
    return call


def time_direct(exe: object, k: Kernel, repeat: int) -> tuple[float, bool | None]:
    """Minimum seconds of direct entry calls, and whether they were right (None: not possible)."""
    call = direct_entry(exe, len(k.mem))
    if call is None:
        return NAN, None
    bufs = [ctypes.create_string_buffer(k.mem, len(k.mem)) for _ in range(repeat)]
    results: list[int] = []
    it = iter(bufs)
    try:
        best, _ = timed(lambda: results.append(call(ctypes.addressof(next(it)))), repeat)
    except (RuntimeError, ctypes.ArgumentError, AttributeError, TypeError):
        return NAN, False
    return best, all(k.ok(r, bytes(b.raw)) for r, b in zip(results, bufs, strict=True))


def hermes_jit(k: Kernel, repeat: int) -> dict:
    """Load (compile) ``k`` on the JIT, then time ``run`` and the direct entry call."""
    t0 = time.perf_counter()
    exe = load(k.program, helpers=DEVICE_HELPERS, executor="jit")
    row: dict = {"compile": time.perf_counter() - t0}
    wait = getattr(exe, "wait_final", None)
    if wait is not None:  # large programs are recompiled in the background: time the final code
        wait(600)
    compiled = getattr(exe, "compiled", None)
    row["background"] = getattr(compiled, "optimise_seconds", None)
    row["llvm"] = getattr(compiled, "llvm_seconds", None) or None
    bufs = [bytearray(k.mem) for _ in range(repeat)]
    results = []
    it = iter(bufs)
    row["run"], _ = timed(lambda: results.append(exe.run(next(it)).return_value), repeat)
    row["run_ok"] = all(k.ok(r, bytes(b)) for r, b in zip(results, bufs, strict=True))
    row["direct"], row["direct_ok"] = time_direct(exe, k, repeat)
    return row


def hermes_interp(k: Kernel, repeat: int) -> tuple[float, int, bool]:
    """(minimum seconds, instructions executed, right) of the interpreter on ``k``."""
    exe = load(k.program, helpers=DEVICE_HELPERS, executor="interp")
    out = []
    for _ in range(repeat):
        buf = bytearray(k.mem)
        t0 = time.perf_counter()
        res = exe.run(buf)
        out.append((time.perf_counter() - t0, res.instructions, k.ok(res.return_value, bytes(buf))))
    best = min(out)
    return best[0], best[1], all(o[2] for o in out)


# -- peers ------------------------------------------------------------------------------------

class Peer:
    """An eBPF engine built in the peers folder, driven through a glue program of ours."""

    def __init__(self, label: str, binary: Path, mode: str) -> None:
        self.label, self.binary, self.mode = label, binary, mode

    def run(self, code: bytes, mem: bytes, repeat: int, tmp: Path,
            mode: str | None = None) -> dict:
        """Run the glue on ``code`` and ``mem``: its figures (compile_ns, r0, min_ns,
        median_ns) and the slot after the first run ("slot"); {"error": text} on failure."""
        (tmp / "code.bin").write_bytes(code)
        (tmp / "slot.bin").write_bytes(mem)
        out_path = tmp / "out.bin"
        cmd = [str(self.binary), mode or self.mode, str(tmp / "code.bin"), str(tmp / "slot.bin"),
               str(out_path), str(repeat)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"error": str(exc)}
        if p.returncode != 0:
            lines = (p.stderr or p.stdout).strip().splitlines()
            return {"error": lines[-1] if lines else f"exit status {p.returncode}"}
        if mode == "ir":
            return {"ir": p.stdout}
        fig: dict = {}
        for line in p.stdout.splitlines():
            key, _, value = line.partition(" ")
            fig[key] = int(value, 0)
        fig["slot"] = out_path.read_bytes()
        return fig


def _build(out: Path, cmd: list[str], sources: list[Path]) -> Path | None:
    """Compile a glue program unless an up-to-date one is there; None when the build fails."""
    if out.exists() and all(out.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(cmd + ["-o", str(out)], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        print(f"peer glue {out.name} did not build: {exc} {err.decode(errors='replace')[-300:]}",
              file=sys.stderr)
        return None
    return out


def find_peers(root: Path | None) -> dict[str, Peer]:
    """The peers built under ``root`` (uBPF JIT and interpreter, llvmbpf), glue compiled."""
    peers: dict[str, Peer] = {}
    if root is None or not root.is_dir():
        return peers
    glue = root / "hermes-glue"
    header = GLUE / "glue.h"
    ubpf = root / "ubpf"
    lib = ubpf / "build" / "lib" / "libubpf.a"
    if lib.exists() and (ubpf / "vm" / "inc" / "ubpf.h").exists():
        src = GLUE / "ubpf_glue.c"
        binary = _build(glue / "ubpf_glue",
                        ["cc", "-O2", "-I", str(ubpf / "vm" / "inc"), "-I",
                         str(ubpf / "build" / "vm"), str(src), str(lib)], [src, header, lib])
        if binary:
            peers["uBPF jit"] = Peer("uBPF jit", binary, "jit")
            peers["uBPF interp"] = Peer("uBPF interp", binary, "interp")
    llvmbpf = root / "llvmbpf"
    lib = llvmbpf / "libllvmbpf_vm.a"
    if lib.exists() and (llvmbpf / "include" / "llvmbpf.hpp").exists():
        src = GLUE / "llvmbpf_glue.cpp"
        config = os.environ.get("LLVM_CONFIG", "llvm-config-19")
        try:
            flags = subprocess.run([config, "--includedir", "--libs", "core", "orcjit", "mcjit",
                                    "support", "nativecodegen", "--system-libs"],
                                   check=True, capture_output=True, text=True).stdout.split()
        except (OSError, subprocess.SubprocessError):
            flags = []
        if flags:
            binary = _build(glue / "llvmbpf_glue",
                            ["c++", "-O2", "-std=c++20", "-I", str(llvmbpf / "include"),
                             "-I", str(llvmbpf / "src"), "-I", flags[0], str(src), str(lib),
                             *flags[1:], "-lspdlog", "-lfmt", "-lpthread"], [src, header, lib])
            if binary:
                peers["llvmbpf"] = Peer("llvmbpf", binary, "jit")
    return peers


def llvmlite_compile(ir: str) -> float | str:
    """Seconds llvmlite's LLVM takes to parse, optimise (O3) and emit machine code for ``ir``
    (text from another LLVM), or the reason it could not."""
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                      features=llvm.get_host_cpu_features().flatten(), opt=3)
    t0 = time.perf_counter()
    try:
        mod = llvm.parse_assembly(ir)
        mod.verify()
        pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
        pb.getModulePassManager().run(mod, pb)
        tm.emit_object(mod)
    except (RuntimeError, AttributeError) as exc:
        return str(exc).splitlines()[0][:60]
    return time.perf_counter() - t0


# -- tables -----------------------------------------------------------------------------------

def ms(v: float | None, width: int = 8) -> str:
    """Seconds as milliseconds, '-' for no figure."""
    if v is None or v != v:
        return f"{'-':>{width}}"
    return f"{v * 1e3:{width}.3f}"


def ratio(a: float | None, b: float | None) -> str:
    """a / b, '-' when either is missing."""
    if a is None or b is None or a != a or b != b or b == 0:
        return f"{'-':>7}"
    return f"{a / b:7.2f}"


def run_table(ks: list[Kernel], peers: dict[str, Peer], libs: dict[str, ctypes.CDLL | None],
              repeat: int, tmp: Path) -> tuple[dict, dict]:
    """Print the run-time table; return Hermes' and the peers' figures per kernel."""
    jit_peers = [p for p in peers.values() if p.mode == "jit"]
    print("\n== run time per kernel, ms (minimum of runs); ratios of Hermes run() ==")
    head = f"{'kernel':15s} {'form':4s} {'direct':>8s} {'run()':>8s} {'gcc -O2':>8s} "
    head += f"{'clang':>8s} " + "".join(f"{p.label:>9s} " for p in jit_peers)
    print(head + f"{'/gcc':>7s} {'/peer':>7s}  check")
    hermes: dict = {}
    peer_figs: dict = {}
    native: dict[tuple[str, str], tuple[float, bool]] = {}
    for k in ks:
        h = hermes_jit(k, repeat)
        hermes[(k.name, k.form)] = h
        bad = [] if h["run_ok"] else ["run()"]
        if h["direct_ok"] is False:
            bad.append("direct")
        for cc, lib in libs.items():
            if (cc, k.name) not in native:
                native[(cc, k.name)] = time_native(lib, k, repeat) if lib else (NAN, True)
            if not native[(cc, k.name)][1]:
                bad.append(cc)
        cells = []
        best_peer = NAN
        for p in jit_peers:
            fig = p.run(k.program.code, k.mem, repeat, tmp)
            peer_figs[(p.label, k.name, k.form)] = fig
            if "error" in fig:
                cells.append(f"{'error':>9s} ")
                bad.append(f"{p.label} ({fig['error']})")
                continue
            if not k.ok(fig["r0"], fig["slot"]):
                bad.append(p.label)
            t = fig["min_ns"] / 1e9
            best_peer = t if best_peer != best_peer else min(best_peer, t)
            cells.append(f"{ms(t, 9)} ")
        gcc = native.get(("gcc", k.name), (NAN, True))[0]
        clang = native.get(("clang", k.name), (NAN, True))[0]
        print(f"{k.name:15s} {k.form:4s} {ms(h['direct'])} {ms(h['run'])} {ms(gcc)} {ms(clang)} "
              + "".join(cells) + f"{ratio(h['run'], gcc)} {ratio(h['run'], best_peer)}  "
              + ("ok" if not bad else "WRONG: " + ", ".join(map(str, bad))), flush=True)
    return hermes, peer_figs


def compile_table(ks: list[Kernel], hermes: dict, peers: dict[str, Peer], peer_figs: dict,
                  tmp: Path) -> None:
    """Print compile times: Hermes' first load, the peers', llvmbpf's IR through llvmlite."""
    jit_peers = [p for p in peers.values() if p.mode == "jit"]
    llvmbpf = peers.get("llvmbpf")
    print("\n== compile time per kernel, ms (first load in this process) ==")
    head = f"{'kernel':15s} {'form':4s} {'load':>8s} {'of it LLVM':>10s} {'backgrnd':>8s} "
    head += "".join(f"{p.label:>9s} " for p in jit_peers)
    print(head + (f"{'llvmbpf IR via llvmlite':>24s}" if llvmbpf else ""))
    for k in ks:
        h = hermes[(k.name, k.form)]
        cells = []
        for p in jit_peers:
            fig = peer_figs.get((p.label, k.name, k.form), {})
            cells.append(f"{ms(fig['compile_ns'] / 1e9, 9)} " if "compile_ns" in fig
                         else f"{'-':>9s} ")
        extra = ""
        if llvmbpf:
            got = llvmbpf.run(k.program.code, k.mem, 1, tmp, mode="ir")
            t = llvmlite_compile(got["ir"]) if "ir" in got else str(got.get("error"))
            extra = f"{ms(t, 24)}" if isinstance(t, float) else f"  {t}"
        print(f"{k.name:15s} {k.form:4s} {ms(h['compile'])} {ms(h['llvm'], 10)} "
              f"{ms(h['background'])} " + "".join(cells) + extra, flush=True)


def overhead_table(peers: dict[str, Peer], native: ctypes.CDLL | None, calls: int,
                   tmp: Path) -> None:
    """Print the median cost of one call of a 2-instruction program on each engine, and of a
    native function doing nothing called through ctypes (what any call from Python costs)."""
    prog = assemble_program("mov r0, 1\nexit", name="speed-overhead")
    mem = bytes(64)
    print(f"\n== per-call overhead, us (median of {calls} calls, 2-instruction program) ==")
    rows = []
    jit = load(prog, helpers=DEVICE_HELPERS, executor="jit")
    interp = load(prog, helpers=DEVICE_HELPERS, executor="interp")
    buf = bytearray(mem)
    rows.append(("Hermes jit run()", timed(lambda: jit.run(buf), calls)[1]))
    cbuf = ctypes.create_string_buffer(mem, len(mem))
    addr = ctypes.addressof(cbuf)
    call = direct_entry(jit, len(mem))
    if call is not None:
        try:
            rows.append(("Hermes jit direct", timed(lambda: call(addr), calls)[1]))
        except (RuntimeError, ctypes.ArgumentError, AttributeError, TypeError):
            pass
    rows.append(("Hermes interp run()", timed(lambda: interp.run(buf), calls)[1]))
    if native is not None:
        noop = native.speed_noop
        noop.restype = ctypes.c_uint64
        noop.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        rows.append(("gcc no-op via ctypes", timed(lambda: noop(addr, 64), calls)[1]))
    for p in peers.values():
        fig = p.run(prog.code, mem, calls, tmp)
        if "median_ns" in fig and fig["r0"] == 1:
            rows.append((f"{p.label} (timed in C)", fig["median_ns"] / 1e9))
    for label, t in rows:
        print(f"{label:24s} {t * 1e6:8.2f}")


def interp_table(ks: list[Kernel], peers: dict[str, Peer], repeat: int, tmp: Path) -> None:
    """Print the interpreters' instructions per second per kernel."""
    ubpf = peers.get("uBPF interp")
    print(f"\n== interpreter, million instructions per second (best of {repeat}) ==")
    print(f"{'kernel':15s} {'form':4s} {'insns':>11s} {'ms':>9s} {'M insn/s':>9s}"
          + (f" {'uBPF ms':>9s} {'uBPF M/s':>9s}" if ubpf else "") + "  check")
    for k in ks:
        t, n, ok = hermes_interp(k, repeat)
        extra = ""
        if ubpf:
            fig = ubpf.run(k.program.code, k.mem, repeat, tmp)
            if "min_ns" in fig:
                ok = ok and k.ok(fig["r0"], fig["slot"])
                extra = f" {ms(fig['min_ns'] / 1e9, 9)} {n / (fig['min_ns'] / 1e9) / 1e6:9.1f}"
            else:
                extra = f" {'error':>9s} {'-':>9s}"
        print(f"{k.name:15s} {k.form:4s} {n:11d} {ms(t, 9)} {n / t / 1e6:9.1f}{extra}  "
              + ("ok" if ok else "WRONG"), flush=True)


def scan_table(mib: int, runs: int) -> None:
    """Print benchmarks/scan.py's table (run as its own process, so its devices start fresh):
    this tree only, one round."""
    print(f"\n== scan of {mib} MiB, u64 sum (benchmarks/scan.py) ==", flush=True)
    cmd = [sys.executable, str(HERE / "scan.py"), "--mib", str(mib), "--runs", str(runs),
           "--no-base", "--rounds", "1"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"scan did not run: {exc}")
        return
    print(p.stdout.rstrip())
    if p.returncode != 0:
        print(f"scan failed ({p.returncode}): {p.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> None:
    """Parse the options and print every table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, 64 MiB scan")
    ap.add_argument("--repeat", type=int, default=None, help="runs per kernel figure "
                                                             "(default 21, quick 5)")
    ap.add_argument("--peers", default=os.environ.get("HERMES_PEERS"),
                    help="folder of peer builds (default $HERMES_PEERS)")
    ap.add_argument("--no-peers", action="store_true", help="compare with no peer")
    ap.add_argument("--kernels", default=",".join(NAMES), help="comma-separated")
    ap.add_argument("--forms", default="asm,c", help="asm, c or both")
    ap.add_argument("--scan-mib", type=int, default=None, help="scan size (default 1024, "
                                                               "quick 64)")
    ap.add_argument("--no-scan", action="store_true")
    opts = ap.parse_args(argv)
    repeat = opts.repeat or (5 if opts.quick else 21)
    names = [n for n in opts.kernels.split(",") if n]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        ap.error(f"unknown kernels {unknown}; known: {NAMES}")
    peers_dir = None if opts.no_peers or not opts.peers else Path(opts.peers)
    print(f"speed table: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"bench {BENCH}; peers {peers_dir or 'none'}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        peers = find_peers(peers_dir)
        if peers_dir is not None:
            print(f"peers found: {', '.join(peers) or 'none'} (rbpf needs crates.io; see "
                  "benchmarks/peers/README.md)")
        ks = kernels(names, opts.forms.split(","), tmp)
        # LLVM's one-time set-up is paid here, not by the first kernel's compile time
        load(assemble_program("mov r0, 0\nexit", name="speed-warm-up"), executor="jit")
        libs = {"gcc": native_lib("gcc", "gcc", names, tmp),
                "clang": native_lib("clang", find_clang(), names, tmp)}
        hermes, peer_figs = run_table(ks, peers, libs, repeat, tmp)
        compile_table(ks, hermes, peers, peer_figs, tmp)
        overhead_table(peers, libs["gcc"], 2000 if opts.quick else 20000, tmp)
        interp_table(ks, peers, 1 if opts.quick else 3, tmp)
    if not opts.no_scan:
        scan_table(opts.scan_mib or (64 if opts.quick else 1024), 1 if opts.quick else 2)


if __name__ == "__main__":
    main()

"""vfio-user figures: 4-byte register read round trip, Run Program round trip, 1 MiB DMA rate.

Usage: python benchmarks/vfio_figures.py [--socket PATH] [--quick] [--base TREE | --no-base]
Without --socket it starts ``hermes serve`` on a temporary socket (and stops it at the end).
With a baseline checkout (``--base TREE``, default /tmp/base/main when present) the same figures
are taken of that tree, its own server and client in a child process with its ``src`` first on
``PYTHONPATH``, in rounds interleaved with this tree's, and printed side by side (the best round
of each: the machine is shared and noisy).
Targets: register read <= 50 us median, Run Program <= 50 us median, 1 MiB DMA >= 1 GB/s.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
#: Figure name -> (comparison, target, whether bigger is better).
TARGETS = {"register read (us)": ("<=", 50.0), "Run Program (us)": ("<=", 50.0),
           "H2C 1 MiB (GB/s)": (">=", 1.0), "C2H 1 MiB (GB/s)": (">=", 1.0),
           "memory copy 1 MiB (GB/s)": (">=", 0.0)}


def _median_us(fn: Callable[[], object], n: int, warmup: int = 50) -> float:
    """Median wall time of ``fn()`` in microseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(times)


def _start_server(path: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hermes.cli", "serve", "--socket", path],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return proc
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
    proc.kill()
    raise SystemExit("hermes serve did not start")


def measure(path: str, quick: bool = False) -> dict[str, float]:
    """The figures against the server at ``path`` (and a plain 1 MiB memory copy for scale)."""
    import hermes.driver
    from hermes import regs
    from hermes.engine.asm import assemble_program
    from hermes.transport.vfio_user import VfioUserTransport

    n = 300 if quick else 5000
    t = VfioUserTransport(path)
    drv = hermes.driver.attach(t)
    try:
        reg = _median_us(lambda: t.read(regs.BAR_REGS, regs.EHVER, 4), n)
        f = drv.open()
        f.download_program(assemble_program("mov r0, 0\nexit").to_bytes())
        f.pwrite(bytes(8), 0)
        run = _median_us(f.fsync, n)
        buf = drv.dma_alloc(MiB)
        off = drv.geometry.data_slot(f.data_slot)
        m = 20 if quick else 200
        h2c = _median_us(lambda: drv.dma_write(off, buf), m, warmup=5)
        c2h = _median_us(lambda: drv.dma_read_into(off, buf), m, warmup=5)
        src, dst = bytearray(MiB), memoryview(bytearray(MiB))

        def copy() -> None:
            dst[:] = src

        cp = _median_us(copy, m, warmup=5)
        buf.free()
        f.close()
    finally:
        drv.close()
    return {"register read (us)": reg, "Run Program (us)": run,
            "H2C 1 MiB (GB/s)": MiB / h2c / 1e3, "C2H 1 MiB (GB/s)": MiB / c2h / 1e3,
            "memory copy 1 MiB (GB/s)": MiB / cp / 1e3}


def _one_round(socket_path: str | None, quick: bool) -> dict[str, float]:
    """One set of figures of the tree this process imports (its own server unless given one)."""
    if socket_path is not None:
        return measure(socket_path, quick)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "hermes.sock")
    proc = _start_server(path)
    try:
        return measure(path, quick)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        os.rmdir(tmp)


def _baseline_round(tree: Path, quick: bool) -> dict[str, float]:
    """One set of figures of the checkout ``tree``: its server and client in a child process."""
    from hermes.benchmarks.baseline import run_child_json
    return run_child_json(tree, os.path.abspath(__file__),
                          ["--child"] + (["--quick"] if quick else []), timeout=600, cwd=tree)


def _best(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Per figure the best round: the least time, the highest rate."""
    return {name: (min if TARGETS[name][0] == "<=" else max)(r[name] for r in rounds)
            for name in rounds[0]}


def main(argv: list[str] | None = None) -> int:
    """Print the figures, the baseline's beside them, and whether each meets its target."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # one round of any tree's own server: `--child [--quick]`
        print(json.dumps(_one_round(None, "--quick" in argv)))
        return 0
    from hermes.benchmarks.baseline import add_base_options, base_tree

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--socket", help="an already running hermes serve (no baseline then)")
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    add_base_options(p)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    base = None if args.socket else base_tree(args)
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    for _ in range(max(1, args.rounds)):
        if base is not None:
            theirs.append(_baseline_round(base, args.quick))
        ours.append(_one_round(args.socket, args.quick))
    figures = _best(ours)
    if args.json:
        print(json.dumps(figures))
        return 0
    before = _best(theirs) if theirs else None
    head = f"{'':26s} {'this tree':>10s}" + (f" {'baseline':>10s}" if before else "")
    print(head)
    for name, value in figures.items():
        op, target = TARGETS[name]
        line = f"{name:26s} {value:10.2f}"
        if before is not None:
            line += f" {before[name]:10.2f}"
        if target:
            ok = value <= target if op == "<=" else value >= target
            line += f"   target {op} {target:<4g}  {'ok' if ok else 'MISSED'}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

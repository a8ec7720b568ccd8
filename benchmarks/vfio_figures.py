"""vfio-user figures: 4-byte register read round trip, Run Program round trip, 1 MiB DMA rate.

Usage: python benchmarks/vfio_figures.py [--socket PATH] [--quick]
Without --socket it starts ``hermes serve`` on a temporary socket (and stops it at the end).
Targets: register read <= 50 us median, Run Program <= 100 us median, 1 MiB DMA >= 1 GB/s.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import hermes.driver
from hermes import regs
from hermes.engine.asm import assemble_program
from hermes.transport.vfio_user import VfioUserTransport

MiB = 1 << 20


def _median_us(fn, n: int, warmup: int = 50) -> float:
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
    """The three figures against the server at ``path``."""
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
        buf.free()
        f.close()
    finally:
        drv.close()
    return {"register read (us)": reg, "Run Program (us)": run,
            "H2C 1 MiB (GB/s)": MiB / h2c / 1e3, "C2H 1 MiB (GB/s)": MiB / c2h / 1e3}


def main(argv: list[str] | None = None) -> int:
    """Print the figures and whether each meets its target."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", help="an already running hermes serve")
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    args = p.parse_args(argv)
    proc = None
    tmp = None
    path = args.socket
    if path is None:
        tmp = tempfile.mkdtemp()
        path = os.path.join(tmp, "hermes.sock")
        proc = _start_server(path)
    try:
        figures = measure(path, args.quick)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            os.rmdir(tmp)
    targets = {"register read (us)": ("<=", 50), "Run Program (us)": ("<=", 100),
               "H2C 1 MiB (GB/s)": (">=", 1), "C2H 1 MiB (GB/s)": (">=", 1)}
    for name, value in figures.items():
        op, target = targets[name]
        ok = value <= target if op == "<=" else value >= target
        print(f"{name:22s} {value:9.2f}   target {op} {target:<4}  {'ok' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

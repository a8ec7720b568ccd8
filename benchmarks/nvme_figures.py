"""NVMe CP/SLM controller figures in process: Execute Program latency and 1 MiB Memory Write/Read rate.

Usage: python benchmarks/nvme_figures.py [--quick]
Prints the median Execute Program round trip of a 2-instruction program (MSI-X and polling
completion) and the 1 MiB Memory Write / Memory Read throughput, through a registered DMA buffer
(no bounce copy) and through the driver's bounce buffer (medians).
"""
from __future__ import annotations

import argparse
import statistics

from hermes.benchmarks.device import _best_rate, _samples
from hermes.device.nvme import NvmeController
from hermes.driver.nvme import NvmeHost
from hermes.engine import Program
from hermes.transport.inproc import InProcessTransport

MiB = 1 << 20
TINY = Program.from_asm("mov r0, 7\nexit").code


def measure(use_irq: bool, n: int) -> dict[str, float]:
    """Figures of one completion mode on a fresh in-process controller."""
    t = InProcessTransport(NvmeController(), owns_device=True)
    host = NvmeHost(t, use_irq=use_irq)
    try:
        host.enable()
        host.load_program(0, TINY)
        host.activate(0)
        assert host.execute(0) == 7
        ns = host.memory_namespaces[0].nsid
        buf = t.dma_alloc(MiB)
        buf.view[:] = bytes(range(256)) * (MiB // 256)
        data = bytes(buf.view)
        reps = max(5, n // 20)
        out = {"execute_us": statistics.median(_samples(lambda: host.execute(0), n, 50))}
        out["write_registered"] = _best_rate(
            lambda: host.mem_write(ns, 0, buffer=(buf, 0, MiB)), MiB, reps)
        out["read_registered"] = _best_rate(
            lambda: host.mem_read(ns, 0, MiB, buffer=(buf, 0)), MiB, reps)
        out["write_bounce"] = _best_rate(lambda: host.mem_write(ns, 0, data), MiB, reps)
        out["read_bounce"] = _best_rate(lambda: host.mem_read(ns, 0, MiB), MiB, reps)
        assert host.mem_read(ns, 0, MiB) == data
        return out
    finally:
        host.close()
        t.close()


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    n = 200 if ap.parse_args().quick else 2000
    for mode, irq in (("MSI-X", True), ("polling", False)):
        f = measure(irq, n)
        print(f"[{mode}] Execute Program (2 instructions) median {f['execute_us']:.1f} us")
        print(f"[{mode}] 1 MiB Memory Write {f['write_registered']:.0f} MiB/s registered, "
              f"{f['write_bounce']:.0f} MiB/s bounce; Memory Read {f['read_registered']:.0f} "
              f"MiB/s registered, {f['read_bounce']:.0f} MiB/s bounce (medians)")


if __name__ == "__main__":
    main()

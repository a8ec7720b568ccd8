"""NVMe CP/SLM figures in process and over vfio-user: Execute Program latency, 1 MiB SLM rates.

Usage: python benchmarks/nvme_figures.py [--quick]
Prints, for the controller in this process and in a ``hermes serve --device nvme-cp`` process
(vfio-user), the median Execute Program round trip of a 2-instruction program (MSI-X and polling
completion) and the 1 MiB Memory Write / Memory Read throughput, through a registered DMA buffer
(no bounce copy) and through the driver's bounce buffer (best of several).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from hermes.benchmarks.device import _best_rate, _samples
from hermes.device.nvme import NvmeController
from hermes.driver.nvme import NvmeHost
from hermes.engine.asm import assemble_program
from hermes.nvme_regs import PCI_DEVICE_ID, PCI_VENDOR_ID
from hermes.transport.inproc import InProcessTransport
from hermes.transport.vfio_user import VfioUserTransport

MiB = 1 << 20
TINY = assemble_program("mov r0, 7\nexit").code


def measure(t, use_irq: bool, n: int) -> dict[str, float]:
    """Figures of one completion mode on the fresh controller behind transport ``t``."""
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


def _serve(path: str) -> subprocess.Popen:
    """``hermes serve --device nvme-cp`` on ``path``, once it listens (bounded wait)."""
    proc = subprocess.Popen([sys.executable, "-m", "hermes.cli", "serve", "--device", "nvme-cp",
                             "--socket", path], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("hermes serve --device nvme-cp did not start")
        time.sleep(0.05)
    return proc


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    n = 200 if ap.parse_args().quick else 2000
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nvme.sock")
        server = _serve(path)
        try:
            places = (("in process", lambda: InProcessTransport(NvmeController(),
                                                                owns_device=True)),
                      ("vfio-user", lambda: VfioUserTransport(
                          path, pci_id=(PCI_VENDOR_ID, PCI_DEVICE_ID))))
            for where, make in places:
                for mode, irq in (("MSI-X", True), ("polling", False)):
                    f = measure(make(), irq, n)
                    print(f"[{where}, {mode}] Execute Program (2 instructions) median "
                          f"{f['execute_us']:.1f} us")
                    print(f"[{where}, {mode}] 1 MiB Memory Write {f['write_registered']:.0f} "
                          f"MiB/s registered, {f['write_bounce']:.0f} MiB/s bounce; Memory Read "
                          f"{f['read_registered']:.0f} MiB/s registered, "
                          f"{f['read_bounce']:.0f} MiB/s bounce")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()

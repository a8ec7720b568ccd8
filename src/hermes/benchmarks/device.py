"""``hermes bench --device SPEC``: command round trip, DMA throughput and runs/s of a device."""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

from ..cli import add_executor_option
from ..engine.asm import assemble_program

#: The 2-instruction program of the round-trip figure.
TWO_INSNS = assemble_program("mov r0, 0\nexit")
MiB = 1 << 20
#: Targets the figures are compared against (printed next to them).
RTT_TARGET_US = 30.0
DMA_TARGET_RATIO = 0.5


def _parse(args: argparse.Namespace | Sequence[str] | None) -> argparse.Namespace:
    if isinstance(args, argparse.Namespace):
        ns = argparse.Namespace(device="emu", executor=None, quick=False, repeat=None)
        ns.__dict__.update({k: v for k, v in vars(args).items() if v is not None})
        return ns
    p = argparse.ArgumentParser(prog="hermes bench --device")
    p.add_argument("--device", default="emu", help="device spec (emu, cpu, vfio-user:PATH...)")
    add_executor_option(p, "executor the device runs programs with (interp, jit)")
    p.add_argument("--quick", action="store_true", help="few iterations (smoke test)")
    p.add_argument("--repeat", type=int, help="unused (accepted for hermes bench)")
    return p.parse_args(list(args or []))


def _samples(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    """Per-call wall times of ``fn`` in microseconds."""
    for _ in range(warmup):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000)
    return out


def _best_rate(fn: Callable[[], object], nbytes: int, n: int) -> float:
    """Median throughput of ``fn`` moving ``nbytes`` per call, in MiB/s."""
    times = _samples(fn, n, warmup=3)
    return nbytes / MiB / (statistics.median(times) / 1e6)


def _fmt_us(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20) if len(samples) >= 20 else [min(samples)] * 19
    return (f"median {statistics.median(samples):7.1f} us   p5 {q[0]:6.1f}   p95 {q[18]:7.1f}   "
            f"(n={len(samples)})")


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run the device benchmark and print its figures; returns the exit status."""
    from ..lib import DriverDevice, DriverSession, open_device
    ns = _parse(args)
    quick = bool(ns.quick)
    options = {"executor": ns.executor} if ns.executor else {}
    n_rtt = 200 if quick else 5000
    dev = open_device(ns.device, **options)
    try:
        print(f"device {ns.device}: {dev.engines} engines")
        # --- 1. round trip ------------------------------------------------------------------
        print("\nRun Program round trip, 2-instruction program (target <= "
              f"{RTT_TARGET_US:g} us for the command):")
        with dev.session() as s:
            s.load(TWO_INSNS)
            s.write(bytes(8))
            if isinstance(s, DriverSession):
                f = s.file  # the driver file under the session: the bare command round trip
                print(f"  driver Run Program   {_fmt_us(_samples(f.run, n_rtt))}")
            print(f"  s.run(read=0)        {_fmt_us(_samples(lambda: s.run(read=0), n_rtt))}")
            def cycle() -> None:
                s.write(b"12345678")
                s.run()  # reads the 8-byte output back

            print(f"  write+run+read 8 B   {_fmt_us(_samples(cycle, n_rtt // 2))}")
        whole = _samples(lambda: dev.run(TWO_INSNS, b"1234"), n_rtt // 5)
        print(f"  device.run()         {_fmt_us(whole)}\n"
              "                       (= open, load, write, run, read, close)")

        # --- 2. DMA throughput ----------------------------------------------------------------
        n_dma = 5 if quick else 50
        src = bytes(range(256)) * (MiB // 256)
        dst = bytearray(MiB)
        copy = _best_rate(lambda: memoryview(dst).__setitem__(slice(None), src), MiB, n_dma * 4)
        print(f"\nDMA throughput, 1 MiB transfers (target >= {DMA_TARGET_RATIO:.0%} of a plain "
              f"memoryview copy, {copy:,.0f} MiB/s here):")
        if isinstance(dev, DriverDevice):
            drv = dev.driver
            off = drv.geometry.data_slot_offset
            rows = []
            rows.append(("H2C dma_write(bytes)", _best_rate(lambda: drv.dma_write(off, src),
                                                           MiB, n_dma)))
            rows.append(("C2H dma_read_into(bytearray)",
                         _best_rate(lambda: drv.dma_read_into(off, dst), MiB, n_dma)))
            buf = drv.dma_alloc(MiB)
            try:
                buf.view[:] = src
                rows.append(("H2C zero-copy DmaBuffer", _best_rate(lambda: drv.dma_write(off, buf),
                                                                  MiB, n_dma)))
                rows.append(("C2H zero-copy DmaBuffer",
                             _best_rate(lambda: drv.dma_read_into(off, buf), MiB, n_dma)))
            finally:
                buf.free()
            for name, rate in rows:
                print(f"  {name:<30} {rate:9,.0f} MiB/s   {rate / copy:5.0%} of copy")
        with dev.session() as s:
            s.load(TWO_INSNS)
            s.write(src)
            w = _best_rate(lambda: s.write(src), MiB, n_dma)
            r = _best_rate(lambda: s.read(MiB), MiB, n_dma)
            print(f"  {'session.write(1 MiB)':<30} {w:9,.0f} MiB/s   {w / copy:5.0%} of copy")
            print(f"  {'session.read(1 MiB)':<30} {r:9,.0f} MiB/s   {r / copy:5.0%} of copy")

        # --- 3. runs/s with k engines busy ----------------------------------------------------
        items = [i.to_bytes(8, "little") for i in range(300 if quick else 4000)]
        print("\nruns/s via device.map (write 8 B, run, read 8 B per item), k workers = k engines"
              " busy:")
        base = None
        for k in range(1, dev.engines + 1):
            list(dev.map(TWO_INSNS, items[:50], workers=k))  # warm: sessions, program cache
            t0 = time.perf_counter()
            n = sum(1 for _ in dev.map(TWO_INSNS, items, workers=k))
            rate = n / (time.perf_counter() - t0)
            base = base or rate
            print(f"  {k} engine{'s' if k > 1 else ' '}  {rate:9,.0f} runs/s   x{rate / base:4.2f}")
    finally:
        dev.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))

"""Guest figures: 1 MiB write+read and the fsync round trip of a 2-instruction program.

``python -m tests.vm.bench devfile /dev/hermes0`` (the kernel driver's file) or
``python -m tests.vm.bench vfio BDF`` (the Python driver over the guest kernel's VFIO). Both go
through the same file interface (download, pwrite, pread, fsync); medians of many rounds.
"""
from __future__ import annotations

import statistics
import sys
import time

from hermes.engine.asm import assemble_program

MiB = 1 << 20
#: mov r0, 0; exit
TWO_INSTRUCTIONS = assemble_program("mov r0, 0\nexit").to_bytes()


def median_us(fn, rounds: int) -> float:
    """Median wall time of ``fn()`` in microseconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def figures(f, label: str, rounds: int) -> None:
    """Print the figures for an open file ``f``."""
    f.download_program(TWO_INSTRUCTIONS)
    block = bytes(range(256)) * (MiB // 256)

    def write_read() -> None:
        assert f.pwrite(block, 0) == MiB
        assert len(f.pread(MiB, 0)) == MiB

    wr = median_us(write_read, max(5, rounds // 10))
    fs = median_us(f.fsync, rounds)
    print(f"bench {label}: 1 MiB write+read {wr / 1000:.1f} ms median; "
          f"fsync of a 2-instruction program {fs / 1000:.2f} ms median ({rounds} rounds)")


def main(argv: list[str]) -> int:
    """Entry point."""
    if len(argv) < 2 or argv[0] not in ("devfile", "vfio"):
        print("usage: python -m tests.vm.bench devfile PATH | vfio BDF [ROUNDS]")
        return 2
    rounds = int(argv[2]) if len(argv) > 2 else 200
    if argv[0] == "devfile":
        from tests.vm.devfile import DevFile
        f = DevFile(argv[1])
        try:
            figures(f, f"{argv[1]} (kernel driver)", rounds)
        finally:
            f.close()
        return 0
    import hermes.driver
    from hermes.transport.vfio import VfioTransport
    driver = hermes.driver.attach(VfioTransport(argv[1]))
    try:
        with driver.open() as f:
            figures(f, f"vfio:{argv[1]} (Python driver over VFIO)", rounds)
        t = driver.transport
        from hermes import regs
        reg = median_us(lambda: t.read(regs.BAR_REGS, regs.EHVER, 4), rounds)
        print(f"bench vfio:{argv[1]}: 4-byte BAR0 read {reg:.0f} us median")
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

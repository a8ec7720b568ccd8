"""Resource bounds: peak host memory of the worst-case helper call, ELF object and program cache.

Usage: python benchmarks/resource_bounds.py
Each case runs in a fresh Python process and prints its resident-set figures (MiB):
- memset: a 5-instruction program asks hermes_memset for 1 GB at the start of a 1 MiB data slot
  (it must fail at once, without touching host memory), on the interpreter and on the JIT;
- bss: 12 distinct 800-byte objects with a 64 MiB .bss run on the emulated device (refused:
  larger than the 1 MiB program slot), then the device is closed;
- cache: 12 distinct objects with a 900 KiB .bss (they fit the slot: each is loaded and cached),
  then the device is closed.
"""
from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / (1 << 20)


def _peak_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memset(engine_name: str) -> str:
    from hermes import engine
    from hermes.engine.asm import assemble_program
    prog = assemble_program("mov r2, 0\nlddw r3, 1000000000\ncall 0x1000\nmov r0, 0\nexit")
    exe = engine.load(prog, executor=engine_name)
    before = _rss_mib()
    try:
        exe.run(bytearray(1 << 20))
        outcome = "ran"
    except Exception as exc:  # the expected refusal; its first words say which
        outcome = f"{type(exc).__name__}: {str(exc)[:60]}..."
    return (f"memset 1 GB on {engine_name:6}: rss {before:.0f} -> peak {_peak_mib():.0f} MiB; "
            f"{outcome}")


def _objects(bss: int) -> str:
    import hermes
    from hermes.engine.clang import compile_c
    from hermes.lib import DriverDevice
    from hermes.transport.inproc import InProcessTransport
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bss.c"
        src.write_text(f"char big[{bss}];\nint f(char *p) {{ big[p[0]] = 1; return big[p[1]]; }}\n")
        obj = compile_c(src, Path(tmp) / "bss.o").read_bytes()
    transport = InProcessTransport.create(executor="interp")
    model = transport.device
    dev = DriverDevice.from_transport(transport)
    start = _rss_mib()
    refused = 0
    for i in range(12):
        try:
            dev.run(obj + bytes(8 * i), b"\0\0")
        except hermes.ProgramRejected:
            refused += 1
    loaded = _rss_mib()
    cached, cache_bytes = len(model._cache), model._cache.bytes
    dev.close()
    gc.collect()
    return (f"12 objects, {len(obj)}-byte file, .bss {bss >> 10} KiB: {refused} refused, "
            f"{cached} cached ({cache_bytes / (1 << 20):.1f} MiB estimated); rss {start:.0f} -> "
            f"{loaded:.0f} MiB, after close {_rss_mib():.0f} MiB (cache {len(model._cache)})")


CASES = {
    "memset-interp": lambda: _memset("interp"),
    "memset-jit": lambda: _memset("jit"),
    "bss": lambda: _objects(64 << 20),
    "cache": lambda: _objects(900 << 10),
}


def main() -> int:
    """Run every case in its own process (or the one named by argv[1]) and print its line."""
    if len(sys.argv) > 1:
        print(CASES[sys.argv[1]]())
        return 0
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True,
                             timeout=600)
        print(out.stdout.strip() or f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

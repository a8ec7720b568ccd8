"""The C examples in the guest: objects built on the host by clang, run on the guest's device.

``python -m tests.vm.examples vfio BDF OBJDIR`` runs each example through ``hermes run --device
vfio:BDF`` (the CLI a user would type); ``python -m tests.vm.examples devfile /dev/hermes0 OBJDIR``
runs it through the kernel driver's file (ioctl download, pwrite, fsync, pread). Results are
checked against examples/reference.py. The kernel driver runs the legacy way (no run context,
specs/run-contract.md section 1): the program sees the whole zeroed slot as its input and no
arguments, so there each case is checked as the reference computes that legacy run (an example
whose output does not fit a whole-slot input, the histogram, is skipped). The file interface has
no r0 either: fsync fails with ENOEXEC for any r0 other than 0, so there a non-zero expected r0 is
checked as that ENOEXEC and the output bytes carry the check.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from hermes.cli.demo import find_examples_dir, load_reference
from hermes.driver import HERMES_DOWNLOAD_PROG_IOCTL

#: Payload sizes tried per example (small, and large enough for several DMA descriptors).
SIZES = (100, 65536)
SEED = 2024


def run_cli(spec: str, obj: Path, case: object) -> tuple[int | None, bytes]:
    """``hermes run --device SPEC`` on an example's case; (r0, the run's output)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.bin"), Path(tmp, "out.bin")
        src.write_bytes(case.data)
        options = [f"--arg={a}" for a in case.args]
        if case.size is not None:
            options += ["--size", str(case.size)]
        r = subprocess.run([sys.executable, "-m", "hermes.cli", "run", str(obj), "--device", spec,
                            "--input", str(src), "--output", str(dst), *options],
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(f"hermes run exited {r.returncode}: {r.stderr.strip()}")
        r0 = int(r.stdout.split("=", 1)[1].split()[0], 0)
        return r0, dst.read_bytes()


def run_devfile(path: str, obj: Path, data: bytes, read: int) -> tuple[int | None, bytes]:
    """Through the device file; r0 is 0 when fsync succeeded, None when it said ENOEXEC."""
    elf = obj.read_bytes()
    buf = ctypes.create_string_buffer(elf, len(elf))
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.ioctl(fd, HERMES_DOWNLOAD_PROG_IOCTL,
                    struct.pack("=I4xQI4x", len(elf), ctypes.addressof(buf), 0))
        os.pwrite(fd, data if data else b"\0", 0)
        try:
            os.fsync(fd)
            r0 = 0
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            r0 = None
        return r0, os.pread(fd, read, 0)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """Run every example on the given path; exit 1 on any mismatch."""
    if len(argv) != 3 or argv[0] not in ("vfio", "devfile"):
        print("usage: python -m tests.vm.examples vfio BDF OBJDIR | devfile DEVICE OBJDIR")
        return 2
    how, target, objdir = argv[0], argv[1], Path(argv[2])
    ref = load_reference(find_examples_dir())
    rng = random.Random(SEED)
    bad = runs = 0
    for ex in ref.EXAMPLES:
        obj = objdir / f"{ex.name}.o"
        if not obj.exists():
            print(f"{ex.name:10} no object {obj} (clang missing on the host?)")
            bad += 1
            continue
        if how == "devfile" and ex.max_input < ref.SLOT_SIZE:
            print(f"{ex.name:10} skipped: its output needs a window larger than a legacy run's")
            continue
        for size in SIZES:
            case = ex.make_case(rng, min(size, ex.max_input))
            data = case.data
            if how == "devfile":
                case = ref.Case(data.ljust(ref.SLOT_SIZE, b"\0"), tuple(0 for _ in case.args))
            r0_exp, out_exp = ex.expected(case)
            runs += 1
            try:
                if how == "vfio":
                    r0, got = run_cli(f"vfio:{target}", obj, case)
                    r0_ok = r0 == r0_exp
                else:
                    r0, got = run_devfile(target, obj, data, len(out_exp))
                    r0_ok = (r0 == 0) == (r0_exp == 0)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{ex.name:10} {len(data):>7} ERROR {exc}")
                bad += 1
                continue
            out_ok = got == out_exp
            shown = "ENOEXEC" if r0 is None else f"{r0:#x}"
            status = "OK" if r0_ok and out_ok else (
                f"MISMATCH (r0 {shown}, expected {r0_exp:#x})" if not r0_ok
                else "MISMATCH (output)")
            bad += status != "OK"
            print(f"{ex.name:10} {len(data):>7} r0 {shown:>18}  {status}")
    print(f"examples over {how}: {runs} runs, {runs - bad} OK, {bad} failed")
    return 1 if bad or not runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

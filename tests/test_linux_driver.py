"""Host-side checks of the Linux kernel driver (drivers/linux): shared constants, clean builds.

The driver's behaviour is tested in the guest (``./dev vm run kdriver``, vm/guest/jobs/kdriver.sh);
here: its register header is the one hermes.regs gives, its uapi header matches the ioctl the
Python side defines, and the module and its C test program build without a warning.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hermes.driver import HERMES_DOWNLOAD_PROG_IOCTL

CHECKOUT = Path(__file__).resolve().parent.parent
KDIR = CHECKOUT / "drivers" / "linux"
CACHE = Path(os.environ.get("HERMES_VM_CACHE", "/var/cache/hermes-vm"))
#: The driver is written for this kernel and newer (Debian trixie's).
MIN_KERNEL = (6, 12)


def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def test_regs_header_is_generated_from_hermes_regs():
    r = subprocess.run([sys.executable, str(KDIR / "gen_regs_h.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_uapi_header_gives_the_python_ioctl_and_layout(tmp_path):
    src = tmp_path / "uapi.c"
    src.write_text(
        '#include <stddef.h>\n#include <stdio.h>\n#include "hermes_uapi.h"\n'
        "int main(void) { printf(\"%lu %zu %zu %zu %zu\\n\", "
        "(unsigned long)HERMES_DOWNLOAD_PROG_IOCTL, "
        "sizeof(struct hermes_download_prog_ioctl_argp), "
        "offsetof(struct hermes_download_prog_ioctl_argp, len), "
        "offsetof(struct hermes_download_prog_ioctl_argp, prog), "
        "offsetof(struct hermes_download_prog_ioctl_argp, flags)); return 0; }\n")
    exe = tmp_path / "uapi"
    subprocess.run([_cc(), "-Wall", "-Werror", f"-I{KDIR}", "-o", str(exe), str(src)],
                   check=True, timeout=120)
    number, size, *offsets = map(int, subprocess.run([str(exe)], capture_output=True, text=True,
                                                     check=True, timeout=30).stdout.split())
    assert number == HERMES_DOWNLOAD_PROG_IOCTL
    assert (size, offsets) == (24, [0, 8, 16])


def test_c_test_program_builds_without_warnings(tmp_path):
    out = tmp_path / "hermes_test"
    r = subprocess.run([_cc(), "-O2", "-Wall", "-Wextra", "-Werror", f"-I{KDIR}", "-o", str(out),
                        str(KDIR / "tests" / "hermes_test.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def _version(name: str) -> tuple[int, int]:
    m = re.search(r"(\d+)\.(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _kernel_trees() -> list[tuple[Path, str]]:
    """(root, headers path as seen from that root) for kernels >= MIN_KERNEL: the guest roots
    of the VM harness first, then this host's running kernel."""
    found = [(root, "/" + str(h.relative_to(root)))
             for root in sorted(CACHE.glob("roots/*/root"))
             for h in sorted(root.glob("usr/src/linux-headers-*-amd64"))
             if _version(h.name) >= MIN_KERNEL]
    build = Path("/lib/modules") / os.uname().release / "build"
    if build.exists() and _version(os.uname().release) >= MIN_KERNEL:
        found.append((Path("/"), str(build)))
    return found


def test_module_builds_with_w1_and_no_warnings(tmp_path):
    trees = _kernel_trees()
    if not trees:
        pytest.skip(f"no kernel headers >= {'.'.join(map(str, MIN_KERNEL))} here or in a guest "
                    f"root under {CACHE} (./dev vm build makes one)")
    root, headers = trees[0]
    chrooted = root != Path("/")
    if chrooted and os.geteuid() != 0:
        pytest.skip("building in the guest root needs chroot (root)")
    build = (root / "tmp" if chrooted else tmp_path) / f"hermes-kmod-test-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(KDIR, build, ignore=shutil.ignore_patterns(
        "*.o", "*.ko", "*.mod*", ".*.cmd", "Module.symvers", "modules.order", "tests",
        "__pycache__"))
    cmd = ["make", "-C", headers, f"M={'/' + str(build.relative_to(root)) if chrooted else build}",
           "W=1", "modules"]
    # W=1 also runs scripts/kernel-doc, which needs perl's Pod::Usage; a minimal root lacks it.
    # The driver has no kernel-doc comments, so that check has nothing to look at there.
    if not list(root.glob("usr/share/perl/*/Pod/Usage.pm")):
        cmd.append("cmd_checkdoc=:")
    if chrooted:
        cmd = ["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
               *cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        built = (build / "hermes.ko").exists()
    finally:
        shutil.rmtree(build, ignore_errors=True)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output[-4000:]
    assert built
    assert "warning:" not in output, output[-4000:]

"""Boots a Debian guest under QEMU with `hermes serve` attached by vfio-user and runs a job in it.

``./dev vm build | run JOB | test | bench | clean`` (see specs/vm.md). The guest root is built
once from Debian's archive by vm/build-root.sh and cached under /var/cache/hermes-vm/ keyed by a
hash of its inputs; the checkout's code reaches the guest on every run through a 9p share, so a
code change never rebuilds the root. QEMU runs chrooted in that root (its C library is trixie's),
the device model runs on the host from the checkout.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
CACHE = Path(os.environ.get("HERMES_VM_CACHE", "/var/cache/hermes-vm"))
#: Inputs of the root: any change to these files gives a new cache key (and a rebuild).
RECIPE = [HERE / "build-root.sh", HERE / "guest" / "init"]
#: Test extras the guest needs besides the runtime dependencies (no RTL, no xdist in the guest).
GUEST_TEST_EXTRAS = ("pytest", "hypothesis")
#: Host tools the build needs (Debian package names in parentheses).
HOST_TOOLS = {"debootstrap": "debootstrap", "mke2fs": "e2fsprogs", "chroot": "coreutils"}
#: Seconds from QEMU's start until the guest's init speaks; then until the job must be done.
BOOT_TIMEOUT = float(os.environ.get("HERMES_VM_BOOT_TIMEOUT", "240"))
JOB_TIMEOUTS = {"smoke": 300, "test": 2400, "bench": 900, "driver": 1200, "lib": 1800,
                "examples": 600, "nvme": 1200}
#: `hermes serve` options of jobs that attach another device than the Hermes one.
JOB_SERVE_ARGS = {"nvme": ["--device", "nvme-cp"]}
#: Guest paths where the host's run folder and the root image appear (bind mounts in the root).
ROOT_RUN = "/mnt/run"
ROOT_IMAGE = "/mnt/rootfs.ext4"
KEEP_RUNS = 5
#: QEMU's machine: TCG (no usable KVM on this machine class), guest RAM a shared memfd so the
#: vfio-user server can map it for DMA.
GUEST_MEMORY = "1G"


class VmError(Exception):
    """The harness cannot go on (the message says why and what to do)."""


class Skip(Exception):
    """The VM suites cannot run on this machine (one line says why)."""


def log(text: str) -> None:
    """One harness line on stderr."""
    print(f"vm: {text}", file=sys.stderr, flush=True)


# --- the root and its cache key -----------------------------------------------------------------

def guest_requirements() -> list[str]:
    """pip requirements of the guest: the project's dependencies and the test tools it runs."""
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).get("test", [])
    wanted = [r for r in extras if re.match(r"[A-Za-z0-9_.-]+", r).group(0) in GUEST_TEST_EXTRAS]
    return list(project.get("dependencies", [])) + wanted


def cache_key() -> str:
    """Hash of everything the root is built from (recipe files and the pip requirements)."""
    h = hashlib.sha256()
    for path in RECIPE:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\n".join(guest_requirements()).encode())
    return h.hexdigest()[:16]


class Root:
    """One cached guest root: the tree QEMU runs in and the ext4 image the guest boots."""

    def __init__(self, key: str):
        self.dir = CACHE / "roots" / key
        self.tree = self.dir / "root"
        self.image = self.dir / "rootfs.ext4"
        self.stamp = self.dir / "built.json"

    def ready(self) -> bool:
        """True when a complete build of this key is in the cache."""
        return self.stamp.exists() and self.image.exists()

    def info(self) -> dict:
        """What the build recorded (seconds, sizes)."""
        return json.loads(self.stamp.read_text())

    def kernel_version(self) -> str:
        """The guest kernel's version (the one its headers are for)."""
        return os.readlink(self.tree / "boot" / "vmlinuz").removeprefix("vmlinuz-")


def check_host() -> None:
    """Raise Skip when this machine cannot build or boot the guest."""
    if os.geteuid() != 0:
        raise Skip("not root (debootstrap, chroot and bind mounts need root)")
    if not shutil.which("apt-get") and not shutil.which("debootstrap"):
        raise Skip("no apt-get and no debootstrap: not a Debian machine")


def ensure_host_tools() -> None:
    """Install debootstrap and e2fsprogs from the archive when missing."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, timeout=900)
        if r.returncode:
            raise Skip(f"cannot install {' '.join(missing)}: {r.stderr.strip()[-200:]}")


@contextlib.contextmanager
def locked(name: str):
    """Hold CACHE/name.lock: one build and one guest at a time on this machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another {name} on this machine (at most 1 hour)")
            deadline = time.monotonic() + 3600
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise VmError(f"{CACHE}/{name}.lock held for an hour") from None
                    time.sleep(2)
        yield


def build(force: bool = False) -> Root:
    """The root for the current inputs, built (about 5-10 min cold) when it is not cached."""
    root = Root(cache_key())
    with locked("build"):
        if root.ready() and not force:
            return root
        ensure_host_tools()
        shutil.rmtree(root.dir, ignore_errors=True)
        root.dir.mkdir(parents=True)
        reqs = root.dir / "requirements.txt"
        reqs.write_text("\n".join(guest_requirements()) + "\n")
        build_log = root.dir / "build.log"
        log(f"building the guest root {root.dir} (log: {build_log})")
        start = time.monotonic()
        with open(build_log, "w") as out:
            proc = subprocess.Popen(["bash", str(HERE / "build-root.sh"), str(root.tree),
                                     str(root.image), str(reqs)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if line.startswith("build-root:"):
                    log(line.strip())
            try:
                rc = proc.wait(timeout=3600)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise VmError("the root build took over an hour") from None
        if rc:
            tail = build_log.read_text().splitlines()[-25:]
            raise VmError(f"the root build failed (exit {rc}); last lines of {build_log}:\n"
                          + "\n".join(tail))
        seconds = time.monotonic() - start
        info = {"seconds": round(seconds), "image_bytes": root.image.stat().st_size,
                "tree_bytes": _du(root.tree), "kernel": root.kernel_version()}
        root.stamp.write_text(json.dumps(info, indent=1))
        log(f"root built in {seconds / 60:.1f} min: image {info['image_bytes'] >> 20} MiB, "
            f"kernel {info['kernel']}")
        prune_roots(keep=root)
    return root


def prune_roots(keep: Root) -> None:
    """Remove the roots of older inputs (about 3 GB each) unless a guest still uses one (the
    caller holds the guest lock, so a guest that is not running yet will build its own)."""
    with open("/proc/self/mounts") as f:
        mounted = [line.split()[1] for line in f]
    for old in (CACHE / "roots").iterdir():
        if old == keep.dir or any(m.startswith(f"{old}/") for m in mounted):
            continue
        log(f"removing the root of older inputs {old}")
        shutil.rmtree(old, ignore_errors=True)


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, timeout=300)
    return int(out.stdout.split()[0]) if out.returncode == 0 else 0


# --- mounts -------------------------------------------------------------------------------------

def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, timeout=60)


def unmount_all(tree: Path) -> None:
    """Take every mount under ``tree`` down (innermost first); tolerate leftovers of a kill."""
    prefix = str(tree) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], timeout=60)


@contextlib.contextmanager
def root_mounts(root: Root, run_dir: Path):
    """/proc, /sys, /dev, the run folder and the image, bind-mounted into the root for QEMU."""
    tree = root.tree
    unmount_all(tree)
    (tree / ROOT_RUN.lstrip("/")).mkdir(parents=True, exist_ok=True)
    image_point = tree / ROOT_IMAGE.lstrip("/")
    image_point.touch()
    try:
        _mount("-t", "proc", "proc", str(tree / "proc"))
        _mount("-t", "sysfs", "sysfs", str(tree / "sys"))
        _mount("--bind", "/dev", str(tree / "dev"))
        _mount("--bind", str(run_dir), str(tree / ROOT_RUN.lstrip("/")))
        _mount("--bind", str(root.image), str(image_point))
        yield
    finally:
        unmount_all(tree)


def in_root(root: Root, cmd: list[str], *, timeout: float, log_path: Path) -> int:
    """Run ``cmd`` chrooted in the root (mounts must be up); output to ``log_path``."""
    with open(log_path, "a") as out:
        try:
            return subprocess.run(["chroot", str(root.tree), "/usr/bin/env", "-i",
                                   "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", *cmd],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n{cmd[0]}: timed out after {timeout:g} s\n")
            return 124


# --- one run ------------------------------------------------------------------------------------

def new_run_dir() -> Path:
    """A fresh folder for one run (older runs beyond the last few are removed)."""
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted(runs.iterdir())
    for stale in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    run = runs / time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while run.exists():
        n += 1
        run = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    (run / "xfer" / "out").mkdir(parents=True)
    (run / "sock").mkdir()
    return run


def job_script(job: str) -> Path:
    """vm/guest/jobs/JOB.sh; VmError naming the jobs there are when it does not exist."""
    script = HERE / "guest" / "jobs" / f"{job}.sh"
    if not script.is_file():
        jobs = sorted(p.stem for p in (HERE / "guest" / "jobs").glob("*.sh"))
        raise VmError(f"no job {job!r}; jobs: {', '.join(jobs)}")
    return script


def stage(run: Path, job: str) -> None:
    """Put the checkout's code, the job scripts and the host-built C examples on the share."""
    xfer = run / "xfer"
    caches = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests", "examples", "vm"):
        shutil.copytree(CHECKOUT / name, xfer / name, ignore=caches)
    if any((CHECKOUT / "drivers" / "linux" / name).exists() for name in ("Kbuild", "Makefile")):
        # The module is rebuilt against the guest kernel: leave any host build products behind.
        products = shutil.ignore_patterns("*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd",
                                          "Module.symvers", "modules.order")
        shutil.copytree(CHECKOUT / "drivers" / "linux", xfer / "kmod", ignore=products)
    shared = CHECKOUT.parent / "shared"
    if shared.is_dir():   # beside the checkout, as the test suite expects it
        for name in ("conformance", "bench"):
            if (shared / name).is_dir():
                shutil.copytree(shared / name, xfer / "shared" / name)
    job_script(job)
    (xfer / "job.sh").write_text(
        f"JOB={job}\n. /x/vm/guest/common.sh\n. /x/vm/guest/jobs/{job}.sh\n")
    compile_examples(xfer / "bpf")


def compile_examples(out: Path) -> None:
    """examples/*.c and drivers/linux/tests/*.bpf.c, compiled by clang on the host."""
    sys.path.insert(0, str(CHECKOUT / "src"))
    from hermes.engine import clang
    if clang.find_clang() is None:
        log("clang not found: the C examples will be skipped in the guest")
        return
    out.mkdir()
    for src in sorted((CHECKOUT / "examples").glob("*.c")):
        clang.compile_c(src, out / f"{src.stem}.o")
    # The kernel driver's own test programs (drivers/linux/tests/NAME.bpf.c -> NAME.bpf.o).
    for src in sorted((CHECKOUT / "drivers" / "linux" / "tests").glob("*.bpf.c")):
        clang.compile_c(src, out / f"{src.stem}.o")
    # The library-behaviour suite's programs (tests/test_contract.py, $HERMES_CONTRACT_OBJECTS).
    (out / "contract").mkdir()
    for src in sorted((CHECKOUT / "tests" / "data" / "contract").glob("*.c")):
        clang.compile_c(src, out / "contract" / f"{src.stem}.o")


def build_module(root: Root, run: Path) -> None:
    """Build the kernel driver in the root against the guest kernel's headers, when present."""
    kmod = run / "xfer" / "kmod"
    if not any((kmod / name).exists() for name in ("Kbuild", "Makefile")):
        return
    headers = f"/usr/src/linux-headers-{root.kernel_version()}"
    rc = in_root(root, ["make", "-C", headers, f"M={ROOT_RUN}/xfer/kmod", "modules"],
                 timeout=600, log_path=run / "kmod-build.log")
    if rc:
        log(f"the kernel module did not build (exit {rc}); see {run / 'kmod-build.log'}:")
        print((run / "kmod-build.log").read_text()[-3000:], file=sys.stderr)
        (kmod / "BUILD-FAILED").write_text(f"exit {rc}\n")
    else:
        log("kernel module built against " + headers)


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Block until the server at ``path`` accepts connections (or fail when it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VmError(f"hermes serve exited with {proc.returncode} before listening")
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.05)
    raise VmError(f"hermes serve did not listen on {path} within {timeout:g} s")


def host_info(sock: Path) -> dict:
    """The device's geometry as the host library reads it over vfio-user (before QEMU attaches),
    with the raw bytes of BAR0's geometry registers (``bar0``, hex) for the guest to compare."""
    for path in (CHECKOUT / "src", CHECKOUT):
        sys.path.insert(0, str(path))
    import hermes
    from hermes import regs
    from tests.vm.smoke import GEOMETRY_BYTES
    with hermes.open(f"vfio-user:{sock}") as dev:
        info = dev.info()
        info["bar0"] = dev.driver.transport.read_block(regs.BAR_REGS, 0, GEOMETRY_BYTES).hex()
    return info


def qemu_command(root: Root, sock: str, extra: list[str]) -> list[str]:
    """The QEMU command line (paths as seen inside the root)."""
    device = json.dumps({"driver": "vfio-user-pci", "id": "hermes0",
                         "socket": {"path": sock, "type": "unix"}})
    append = "root=/dev/vda rw console=ttyS0 init=/sbin/hermes-init panic=-1 quiet intel_iommu=on"
    return ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2",
            "-m", GUEST_MEMORY,
            "-object", f"memory-backend-memfd,id=mem,size={GUEST_MEMORY},share=on",
            "-machine", "q35,memory-backend=mem",
            "-kernel", "/boot/vmlinuz", "-initrd", "/boot/initrd.img", "-append", append,
            "-drive", f"file={ROOT_IMAGE},if=virtio,format=raw,snapshot=on",
            "-fsdev", f"local,id=fs0,path={ROOT_RUN}/xfer,security_model=none",
            "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=xfer",
            # A vIOMMU, so vfio-pci in the guest gets a type-1 container (Debian's kernel has no
            # VFIO no-IOMMU mode); caching mode makes the guest report every mapping to QEMU,
            # which passes it to the server as DMA_MAP.
            "-device", "intel-iommu,caching-mode=on,intremap=on",
            "-device", device,
            "-display", "none", "-vga", "none", "-nic", "none", "-no-reboot",
            "-monitor", "none", "-serial", f"file:{ROOT_RUN}/console.log", *extra]


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_job(job: str, *, timeout: float | None = None, serve_args: list[str] | None = None,
            qemu_extra: list[str] | None = None) -> int:
    """Boot the guest for one job, print its results; returns the job's exit status."""
    job_script(job)
    if serve_args is None:
        serve_args = JOB_SERVE_ARGS.get(job)
    with locked("guest"):
        root = build()   # under the guest lock: no other guest is between build and boot
        run = new_run_dir()
        stage(run, job)
        log(f"run folder {run}")
        sock = run / "sock" / "hermes.sock"
        serve_log = open(run / "serve.log", "w")
        python = CHECKOUT / ".venv" / "bin" / "python"
        server = qemu = None
        try:
            with root_mounts(root, run):
                build_module(root, run)
                server = subprocess.Popen([str(python if python.exists() else sys.executable),
                                           "-m", "hermes.cli", "serve", "--socket", str(sock),
                                           *(serve_args or [])],
                                          stdout=serve_log, stderr=subprocess.STDOUT,
                                          cwd=CHECKOUT, env=dict(os.environ,
                                                                 PYTHONPATH=str(CHECKOUT / "src")))
                wait_for_socket(sock, server, 30)
                if job not in JOB_SERVE_ARGS:   # the Hermes device's geometry, for smoke
                    (run / "xfer" / "host-info.json").write_text(json.dumps(host_info(sock)))
                limit = timeout or JOB_TIMEOUTS.get(job, 1800)
                cmd = qemu_command(root, f"{ROOT_RUN}/sock/hermes.sock", qemu_extra or [])
                (run / "qemu.cmd").write_text(shlex.join(cmd) + "\n")
                start = time.monotonic()
                with open(run / "qemu.log", "w") as qlog:
                    qemu = subprocess.Popen(["chroot", str(root.tree), *cmd], stdout=qlog,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                boot = _wait_boot(run, qemu, start)
                log(f"guest init after {boot:.1f} s (QEMU start to init)")
                try:
                    qemu.wait(max(1.0, limit - (time.monotonic() - start)))
                except subprocess.TimeoutExpired:
                    stop(qemu)
                    raise VmError(f"job {job!r} still running after {limit:g} s; "
                                  "QEMU killed") from None
                total = time.monotonic() - start
        except VmError as exc:
            stop(qemu)
            _report_failure(run, str(exc))
            return 1
        finally:
            stop(qemu)
            stop(server)
            serve_log.close()
        return _report(run, job, boot, total)


def _wait_boot(run: Path, qemu: subprocess.Popen, start: float) -> float:
    """Seconds until the guest's init printed its first line (bounded by BOOT_TIMEOUT)."""
    console = run / "console.log"
    while True:
        elapsed = time.monotonic() - start
        if console.exists() and "hermes-init: kernel up" in console.read_text(errors="replace"):
            return elapsed
        if qemu.poll() is not None:
            raise VmError(f"QEMU exited with {qemu.returncode} before the guest's init ran:\n"
                          + tail(run / "qemu.log", 20))
        if elapsed > BOOT_TIMEOUT:
            raise VmError(f"the guest did not reach its init within {BOOT_TIMEOUT:g} s")
        time.sleep(0.2)


def _report_failure(run: Path, why: str) -> None:
    log(f"FAILED: {why}")
    for name, what in (("console.log", "guest console"), ("xfer/job.log", "job output"),
                       ("serve.log", "hermes serve log")):
        text = tail(run / name)
        if text:
            print(f"--- {what} (last lines of {run / name}) ---\n{text}", file=sys.stderr)


def _report(run: Path, job: str, boot: float, total: float) -> int:
    """Print the job's output and results; its exit status (1 when it left none)."""
    xfer = run / "xfer"
    rc_file = xfer / "rc"
    output = (xfer / "job.log").read_text(errors="replace") if (xfer / "job.log").exists() else ""
    print(output, end="" if output.endswith("\n") else "\n")
    kernel_up = _kernel_uptime(run / "console.log")
    log(f"boot: {boot:.1f} s QEMU start to init (guest kernel uptime {kernel_up}); "
        f"QEMU start to power-off {total:.1f} s")
    if not rc_file.exists():
        _report_failure(run, f"job {job!r} left no exit status (guest crashed or powered off)")
        return 1
    rc = int(rc_file.read_text().strip() or 1)
    if rc:
        _report_failure(run, f"job {job!r} exited {rc}")
    else:
        log(f"job {job!r} passed; results in {xfer / 'out'}")
    return rc


def _kernel_uptime(console: Path) -> str:
    for line in tail(console, 400).splitlines():
        if "hermes-init: kernel up at" in line:
            return line.split("kernel up at", 1)[1].strip()
    return "?"


# --- commands -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``./dev vm`` entry point."""
    p = argparse.ArgumentParser(prog="./dev vm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="build (or reuse) the cached guest root")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    r = sub.add_parser("run", help="boot the guest and run one job (vm/guest/jobs/JOB.sh)")
    r.add_argument("job")
    r.add_argument("--timeout", type=float, help="seconds the job may take")
    sub.add_parser("test", help="the VM suites (what CI runs); skips on machines that cannot")
    sub.add_parser("bench", help="guest figures: DMA and fsync through /dev/hermes0 and vfio")
    sub.add_parser("clean", help="remove the cached roots and runs")
    args = p.parse_args(argv)
    try:
        if args.cmd in (None, "test", "bench", "run", "build"):
            check_host()
            # A CI timeout's SIGTERM unwinds like an error: QEMU and the server are stopped and
            # the mounts taken down on the way out.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        if args.cmd == "build":
            with locked("guest"):
                root = build(force=args.force)
            info = root.info()
            log(f"root {root.dir}: image {info['image_bytes'] >> 20} MiB, built in "
                f"{info['seconds'] / 60:.1f} min, kernel {info['kernel']}")
            return 0
        if args.cmd == "run":
            return run_job(args.job, timeout=args.timeout)
        if args.cmd == "bench":
            return run_job("bench")
        if args.cmd == "clean":
            for name in ("roots", "runs"):
                for tree in (CACHE / name).glob("*/root") if name == "roots" else []:
                    unmount_all(tree)
                shutil.rmtree(CACHE / name, ignore_errors=True)
            log(f"removed {CACHE}/roots and {CACHE}/runs")
            return 0
        return run_job("test")
    except Skip as exc:
        print(f"vm: skipped: {exc}")
        return 0
    except VmError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""vfio-user and VFIO device fixtures (a pytest plugin beside ``tests.devices``).

Registers two more specs with ``tests.devices.register_driver_factory`` so every driver and
library test also runs over them:

* ``vfio-user``: the device runs in a ``hermes serve`` subprocess (one per distinct set of device
  options, started on first use and kept for the session; a server busy with another client of
  the same test makes a new one); the driver talks to it through ``VfioUserTransport``.
* ``vfio``: ``VfioTransport`` against ``tests.support.fake_kernel`` (a real HermesDevice behind
  fake VFIO ioctls, pread/pwrite and sysfs files).

Also offers ``ServerProcess`` and ``ThreadServer`` helpers for the vfio tests.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import hermes.driver

try:
    from tests.devices import register_driver_factory, split_options
except ImportError:  # pragma: no cover - running without B's fixture module
    register_driver_factory = None
    split_options = None

#: ``hermes serve`` flags for HermesDevice options.
_FLAGS = {"engines": "--engines", "program_slots": "--program-slots", "data_slots": "--data-slots",
          "program_slot_size": "--program-slot-size", "data_slot_size": "--data-slot-size",
          "budget": "--budget", "executor": "--executor",
          "interface_version": "--interface-version"}


def wait_for_socket(path: str, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Block until something listens at ``path`` (fails if ``proc`` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"hermes serve exited with {proc.returncode}: "
                               f"{proc.stderr.read() if proc.stderr else ''}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.01)
    raise TimeoutError(f"no server at {path}")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives a run."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


class ServerProcess:
    """``python -m hermes.cli serve --socket PATH ...`` as a subprocess."""

    def __init__(self, path: str, *args: str, verbose: bool = False):
        self.path = path
        cmd = [sys.executable, "-m", "hermes.cli", "serve", "--socket", path, *args]
        if verbose:
            cmd.append("--verbose")
        self.log_path = path + ".log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        try:
            wait_for_socket(path, self.proc)
        except BaseException:
            self.stop()
            raise
        self.in_use = 0

    @classmethod
    def with_options(cls, path: str, **device_options: object) -> ServerProcess:
        """A server whose device has these HermesDevice options."""
        args: list[str] = []
        for key, value in device_options.items():
            if key == "run_context" and value is False:
                args.append("--no-run-context")
                continue
            if key not in _FLAGS:
                raise KeyError(f"hermes serve has no flag for device option {key!r}")
            args += [_FLAGS[key], str(value)]
        return cls(path, *args)

    def log(self) -> str:
        """What the server printed so far."""
        if not self._log.closed:
            self._log.flush()
        return Path(self.log_path).read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the server and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class ThreadServer:
    """A vfio-user server in a thread of this process (fast to start; same code as the CLI)."""

    def __init__(self, path: str, **device_options: object):
        from hermes.server.function import VfioFunction
        from hermes.server.vfio_user import Server
        self.path = path
        self.lines: list[str] = []

        class _Log:
            def write(inner, text: str) -> None:
                """Keep a log line."""
                self.lines.append(text)

            def flush(inner) -> None:
                """Nothing buffered."""

        self.server = Server(path, VfioFunction.create(**device_options), log_file=_Log(),
                             factory=lambda: VfioFunction.create(**device_options))
        self.server.bind()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def function(self) -> object:
        """The VfioFunction currently served."""
        return self.server.function

    def log(self) -> str:
        """The server's log so far."""
        return "".join(self.lines)

    def stop(self) -> None:
        """Stop and wait for the server thread."""
        self.server.stop()
        self.thread.join(10)


# --- driver factories for tests.devices --------------------------------------------------------

_TMP = tempfile.mkdtemp(prefix="hermes-vfio-")
_SERVERS: dict[tuple, list[ServerProcess]] = {}
_LOCK = threading.Lock()


@atexit.register
def _shutdown() -> None:
    with _LOCK:
        servers = [s for pool in _SERVERS.values() for s in pool]
        _SERVERS.clear()
    for s in servers:
        s.stop()
    shutil.rmtree(_TMP, ignore_errors=True)


def pytest_unconfigure(config: object) -> None:
    """Stop the session's servers when pytest finishes (xdist workers may skip atexit)."""
    _shutdown()


def _server_for(device_options: dict) -> ServerProcess:
    key = tuple(sorted(device_options.items()))
    with _LOCK:
        pool = _SERVERS.setdefault(key, [])
        for s in pool:
            if not s.in_use and s.proc.poll() is None:
                s.in_use += 1
                return s
        path = os.path.join(_TMP, f"s{sum(map(len, _SERVERS.values()))}.sock")
        s = ServerProcess.with_options(path, **device_options)
        s.in_use += 1
        pool.append(s)
        return s


def vfio_user_driver(**options: object) -> tuple:
    """A driver over vfio-user to a server subprocess with these device options."""
    from hermes.transport.vfio_user import VfioUserTransport
    device_options, driver_options = split_options(options)
    device_options.pop("bar4", None)
    server = _server_for(device_options)

    def release() -> None:
        """The test is done with this server: the next one may use it."""
        server.in_use -= 1

    try:
        transport = VfioUserTransport(server.path)
        driver = hermes.driver.attach(transport, **driver_options)
    except BaseException:
        release()
        raise
    return driver, [release]


def vfio_driver(**options: object) -> tuple:
    """A driver over VFIO to the fake kernel (a HermesDevice behind fake ioctls)."""
    from hermes.transport.vfio import VfioTransport

    from .support.fake_kernel import FakeVfioKernel
    device_options, driver_options = split_options(options)
    device_options.pop("bar4", None)
    root = tempfile.mkdtemp(prefix="fake-vfio-", dir=_TMP)
    kernel = FakeVfioKernel(root, **device_options)
    try:
        transport = VfioTransport(kernel.bdf, sysfs_root=kernel.sysfs_root,
                                  dev_root=kernel.dev_root, ioctl=kernel.ioctl,
                                  pread=kernel.pread, pwrite=kernel.pwrite)
        driver = hermes.driver.attach(transport, **driver_options)
    except BaseException:
        kernel.close()
        raise
    return driver, [kernel.close, lambda: shutil.rmtree(root, ignore_errors=True)]


if not os.environ.get("HERMES_TEST_NO_VFIO"):
    register_driver_factory("vfio-user", vfio_user_driver)
    register_driver_factory("vfio", vfio_driver)

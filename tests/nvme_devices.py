"""Fixtures for the NVMe CP/SLM suites: a connected host driver per transport (in process, and
over vfio-user to a ``hermes serve --device nvme-cp`` process)."""
from __future__ import annotations

import atexit
import os
import tempfile
import threading

import pytest

from hermes import nvme_regs as N
from hermes.device.nvme import NvmeController
from hermes.driver.nvme import NvmeHost, NvmeStatusError
from hermes.transport.inproc import InProcessTransport

#: Memory namespaces every rig has: 16 MiB (NSID 2) and 1 MiB (NSID 3).
MEMORY_SIZES = (16 << 20, 1 << 20)
#: A budget no test program reaches, so only Abort (or reset) stops an endless loop.
ENDLESS_BUDGET = 1 << 62


def _inproc(use_irq: bool) -> tuple[NvmeHost, InProcessTransport]:
    ctrl = NvmeController(MEMORY_SIZES, budget=ENDLESS_BUDGET)
    t = InProcessTransport(ctrl, owns_device=True)
    return NvmeHost(t, use_irq=use_irq, timeout=10.0), t


_TMP = tempfile.mkdtemp(prefix="hermes-nvme-")
_SERVERS: list = []
_LOCK = threading.Lock()


@atexit.register
def _stop_servers() -> None:
    with _LOCK:
        servers = list(_SERVERS)
        _SERVERS.clear()
    for s in servers:
        s.stop()


def serve_args() -> list[str]:
    """``hermes serve`` flags of a controller like the in-process rig's."""
    args = ["--device", "nvme-cp", "--budget", str(ENDLESS_BUDGET)]
    for size in MEMORY_SIZES:
        args += ["--memory-size", str(size)]
    return args


def _server():
    """A ``hermes serve --device nvme-cp`` process no test uses now (each client gets a fresh
    controller: the server makes a new one per connection)."""
    from tests.vfio_devices import ServerProcess
    with _LOCK:
        for s in _SERVERS:
            if not s.in_use and s.proc.poll() is None:
                s.in_use = 1
                return s
        s = ServerProcess(os.path.join(_TMP, f"nvme{len(_SERVERS)}.sock"), *serve_args())
        s.in_use = 1
        _SERVERS.append(s)
        return s


class _Release:
    """Closes the transport, then gives the server back to the pool."""

    def __init__(self, transport: object, server: object):
        self.transport, self.server = transport, server

    def close(self) -> None:
        try:
            self.transport.close()  # type: ignore[attr-defined]
        finally:
            self.server.in_use = 0  # type: ignore[attr-defined]


def _vfio_user(use_irq: bool) -> tuple:
    from hermes.transport.vfio_user import VfioUserTransport
    server = _server()
    try:
        t = VfioUserTransport(server.path, pci_id=(N.PCI_VENDOR_ID, N.PCI_DEVICE_ID))
    except BaseException:
        server.in_use = 0
        raise
    return NvmeHost(t, use_irq=use_irq, timeout=10.0), _Release(t, server)


TRANSPORTS = {"inproc": _inproc, "vfio-user": _vfio_user}


@pytest.fixture(params=[(name, irq) for name in TRANSPORTS for irq in (True, False)],
                ids=lambda p: f"{p[0]}-{'irq' if p[1] else 'poll'}")
def nvme(request) -> NvmeHost:
    """An enabled host driver on a fresh controller (MSI-X and polling completion)."""
    name, irq = request.param
    host, t = TRANSPORTS[name](irq)
    host.enable()
    yield host
    try:
        host.close()
    finally:
        t.close()


@pytest.fixture(params=list(TRANSPORTS))
def nvme_raw(request) -> NvmeHost:
    """A host driver on a fresh controller that is not enabled yet (MSI-X completion)."""
    host, t = TRANSPORTS[request.param](True)
    yield host
    try:
        host.close()
    finally:
        t.close()


def expect(status: N.Status, fn, *args, **kw) -> NvmeStatusError:
    """Run ``fn`` and check it fails with exactly ``status``."""
    with pytest.raises(NvmeStatusError) as info:
        fn(*args, **kw)
    assert info.value.named == status, f"expected {status}, got {info.value.named}"
    return info.value


#: Options of ``hermes.open("nvme-emu")`` among the device options a library test may ask for
#: (the controller has one engine and its own program size limit, so ``engines`` and
#: ``program_slot_size`` do not apply).
_NVME_EMU_OPTIONS = ("executor", "budget", "data_slot_size")


def nvme_emu_lib(**options: object) -> tuple:
    """A library backend factory for ``tests.devices.LIB_BACKENDS``: ``hermes.open("nvme-emu")``."""
    import hermes
    return hermes.open("nvme-emu", **{k: v for k, v in options.items()
                                      if k in _NVME_EMU_OPTIONS}), []


def nvme_passthru_lib(**options: object) -> tuple:
    """``hermes.open("nvme:$HERMES_NVME_DEVICE")``: a controller the Linux nvme driver owns (the
    VM guest's), as a library backend (the window size and the budget are the device options
    it takes)."""
    import hermes
    keep = {k: v for k, v in options.items() if k in ("data_slot_size", "budget")}
    return hermes.open(f"nvme:{os.environ['HERMES_NVME_DEVICE']}", **keep), []


#: The NVMe library backends for ``tests.devices.LIB_BACKENDS``: the in-process controller
#: always, the passthrough one where $HERMES_NVME_DEVICE names a CP namespace (/dev/ngXnY).
LIB_BACKENDS = {"nvme-emu": nvme_emu_lib}
if os.environ.get("HERMES_NVME_DEVICE"):
    LIB_BACKENDS["nvme"] = nvme_passthru_lib

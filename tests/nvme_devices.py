"""Fixtures for the NVMe CP/SLM suites: a connected host driver per transport (in process so far)."""
from __future__ import annotations

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


TRANSPORTS = {"inproc": _inproc}


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

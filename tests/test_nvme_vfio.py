"""The NVMe CP/SLM controller as a vfio-user PCI function: identity, BARs, MSI-X, the CLI."""
from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

from hermes import nvme_regs as N
from hermes.driver.nvme import NvmeHost
from hermes.engine.asm import assemble_program
from hermes.server.function import VfioFunction
from hermes.server.vfio_user import Server
from hermes.transport.vfio_user import VfioUserTransport
from hermes.vfio import pci
from tests.nvme_devices import _server


@pytest.fixture
def served():
    """A ``hermes serve --device nvme-cp`` process (from the pool the conformance suite uses)."""
    server = _server()
    yield server
    server.in_use = 0


def test_function_identity_bars_and_msix(served):
    t = VfioUserTransport(served.path, pci_id=(N.PCI_VENDOR_ID, N.PCI_DEVICE_ID))
    try:
        assert t.config_read(pci.PCI_VENDOR_ID, 2) == N.PCI_VENDOR_ID
        assert t.config_read(pci.PCI_DEVICE_ID, 2) == N.PCI_DEVICE_ID
        klass = t.config_read(pci.PCI_CLASS_PROG, 4) & 0xFFFFFF
        assert klass == N.PCI_CLASS_NVME
        assert t.regions[0].size == 0x4000
        assert all(t.regions[i].size == 0 for i in range(1, 6))
        cap = pci.find_capability(
            lambda off, n: t.config_read(off, n).to_bytes(n, "little"), pci.PCI_CAP_ID_MSIX)
        assert cap is not None
        ctrl, table, pba = struct.unpack("<HII", t.config_read(cap + 2, 2).to_bytes(2, "little")
                                         + t.config_read(cap + 4, 4).to_bytes(4, "little")
                                         + t.config_read(cap + 8, 4).to_bytes(4, "little"))
        assert (ctrl & pci.PCI_MSIX_FLAGS_QSIZE) + 1 == t.num_vectors == 32
        assert table == N.MSIX_TABLE_OFFSET | N.MSIX_BAR and pba == N.MSIX_PBA_OFFSET | N.MSIX_BAR
        assert t.read(0, N.REG_VS, 4) == N.NVME_VERSION
    finally:
        t.close()


def test_hermes_client_refuses_the_nvme_function(served):
    with pytest.raises(OSError) as info:
        VfioUserTransport(served.path)
    assert info.value.errno == errno.ENODEV and "1de5:3100" in str(info.value)


@pytest.mark.parametrize("args, text", [
    (["--slots", "4"], "--slots configures the Hermes device"),
    (["--memory-size", "12"], "a size must be a positive multiple of 8"),
])
def test_serve_refuses_options_of_the_other_device(tmp_path, args, text):
    cmd = [sys.executable, "-m", "hermes.cli", "serve", "--socket", str(tmp_path / "s.sock"),
           "--device", "nvme-cp", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert text in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "s.sock")


def test_a_departed_clients_controller_is_stopped_and_closed(tmp_path):
    lines: list[str] = []

    class Log:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    path = str(tmp_path / "s.sock")
    server = Server(path, VfioFunction.create_nvme(budget=1 << 62), log_file=Log(),
                    factory=lambda: VfioFunction.create_nvme(budget=1 << 62))
    server.bind()
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        first = server.function
        t = VfioUserTransport(path, pci_id=(N.PCI_VENDOR_ID, N.PCI_DEVICE_ID))
        host = NvmeHost(t, timeout=5)
        host.enable()
        host.load_program(0, assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").code)
        host.activate(0)
        cmd, buf = host.execute_command(0)
        host.io_queue(1).submit(cmd)      # a runaway program the client leaves behind
        t.flush()
        t.close()
        deadline = time.monotonic() + 10
        while server.function is first and time.monotonic() < deadline:
            time.sleep(0.05)
        server.wait_retired(10)
        assert first.device._stop, "".join(lines)
        assert not any("error while" in line for line in lines), "".join(lines)
    finally:
        server.stop()
        th.join(10)

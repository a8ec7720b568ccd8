"""In the VM guest: the NVMe CP/SLM controller bound to Linux's stock nvme driver, as nvme-cli
shows it, driven by hand with nvme-cli's passthru commands (specs/nvme-cp.md) and through the
library's passthrough backend, with the same results as on ``cpu``.

Runs where $HERMES_NVME_DEVICE names the compute namespace's /dev/ngXnY (the ``nvme`` VM job).
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

import hermes
from hermes import nvme_regs as N
from hermes.driver.nvme.passthru import controller_device, namespace_devices
from hermes.engine import Program
from hermes.engine.asm import assemble_program
from tests.test_nvme_cp import INC_RANGE

DEV = os.environ.get("HERMES_NVME_DEVICE", "")
pytestmark = pytest.mark.skipif(not DEV, reason="needs $HERMES_NVME_DEVICE (the VM's nvme job)")
#: A byte offset of the memory namespace the library's sessions never use (their windows start
#: at 0 and there are at most 15 of 1 MiB in the served 16 MiB).
BY_HAND = 15 << 20
RET_ARGS = assemble_program("mov r0, r3\nadd r0, r4\nadd r0, r5\nadd r0, r2\nexit")


def nvme(*args: str, binary: bool = False) -> str | bytes:
    """Run nvme-cli (bounded); its stdout, or AssertionError with what it printed."""
    done = subprocess.run(["nvme", *args], capture_output=True, timeout=60)
    if done.returncode:
        kernel = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
        raise AssertionError(f"nvme {' '.join(args)}: exit {done.returncode}\n"
                             f"{done.stdout[-2000:]!r}\n{done.stderr[-2000:]!r}\n"
                             f"kernel: {kernel[-1500:]}")
    # nvme-cli prints a passthru command's result on stderr
    return done.stdout if binary else (done.stdout + done.stderr).decode()


def controller() -> str:
    """/dev/nvmeX of the namespace device /dev/ngXnY."""
    return controller_device(DEV)


def ns_dev(nsid: int) -> str:
    """The generic char device of namespace ``nsid`` (the kernel numbers them in set-up order)."""
    return namespace_devices(DEV)[nsid]


def result(out: str) -> int:
    """The completion DW0 nvme-cli prints for a passthru command."""
    m = re.search(r"result:\s*(?:0x)?([0-9a-fA-F]+)", out)
    assert m, out
    return int(m.group(1), 16)


def test_the_stock_nvme_driver_binds_the_controller():
    found = []
    for d in Path("/sys/bus/pci/devices").iterdir():
        if (d / "vendor").read_text().strip() == "0x1de5" and \
                (d / "device").read_text().strip() == "0x3100":
            found.append(d)
    assert len(found) == 1
    d = found[0]
    assert (d / "class").read_text().strip() == "0x010802"
    assert os.path.basename(os.readlink(d / "driver")) == "nvme"
    assert os.path.exists(ns_dev(1)) and os.path.exists(ns_dev(2))


def test_nvme_list_shows_the_controller():
    out = nvme("list", "-v")
    assert "HERMESCP0001" in out and "Hermes NVMe CP/SLM controller" in out, out


def test_id_ctrl_fields():
    c = json.loads(nvme("id-ctrl", controller(), "-o", "json"))
    assert c["vid"] == N.PCI_VENDOR_ID and c["ssvid"] == N.PCI_VENDOR_ID
    assert c["sn"].strip() == "HERMESCP0001"
    assert c["mn"].strip() == "Hermes NVMe CP/SLM controller"
    assert c["ver"] == N.NVME_VERSION and c["mdts"] == 8 and c["nn"] == 2
    assert c["cntrltype"] == 1 and c["lpa"] & N.LPA_EFFECTS


def test_id_ns_fields():
    # `nvme id-ns` asks for the NVM structure (CNS 00h), which namespaces of the CP and SLM
    # command sets do not have; the command-set independent one and the descriptors they do.
    for nsid, csi in ((1, N.Csi.CP), (2, N.Csi.SLM)):
        ind = json.loads(nvme("cmdset-ind-id-ns", controller(), "-n", str(nsid), "-o", "json"))
        assert ind["nstat"] & N.NSTAT_READY
        raw = nvme("ns-descs", controller(), "-n", str(nsid), "-b", binary=True)
        assert N.parse_ns_descriptors(raw)[N.NIDT_CSI] == bytes([csi])
    cp = nvme("admin-passthru", controller(), "--opcode=0x06", "--namespace-id=1",
              f"--cdw10={N.Cns.CSI_NAMESPACE}", f"--cdw11={N.Csi.CP << 24}",
              f"--data-len={N.IDENTIFY_SIZE}", "--read", "--raw-binary", binary=True)
    lim = N.ID_NS_CP.unpack(cp[:N.IDENTIFY_SIZE])
    assert (lim["maxact"], lim["maxmemr"], lim["mrsg"], lim["numpi"]) == (8, 16, 3, 16)
    slm = nvme("admin-passthru", controller(), "--opcode=0x06", "--namespace-id=2",
               f"--cdw10={N.Cns.CSI_NAMESPACE}", f"--cdw11={N.Csi.SLM << 24}",
               f"--data-len={N.IDENTIFY_SIZE}", "--read", "--raw-binary", binary=True)
    assert N.ID_NS_SLM.unpack(slm[:N.IDENTIFY_SIZE])["msz"] == 16 << 20


def test_nvme_cli_loads_activates_and_executes_a_program_by_hand(tmp_path):
    pind, data = 5, bytes(range(16))
    prog = tmp_path / "inc.bin"
    prog.write_bytes(INC_RANGE)
    inp = tmp_path / "in.bin"
    inp.write_bytes(data)
    ranges = tmp_path / "ranges.bin"
    ranges.write_bytes(N.MemoryRange(2, BY_HAND, len(data)).pack())
    ctrl, n = controller(), len(INC_RANGE)
    # Load Program (85h): PIND 5, PTYPE C0h (eBPF); the whole program in one chunk.
    nvme("admin-passthru", ctrl, "--opcode=0x85", "--namespace-id=1",
         f"--cdw10={pind | N.PTYPE_EBPF << 16}", f"--cdw11={n}", f"--cdw14={n}", "--cdw15=0",
         f"--data-len={n}", f"--input-file={prog}", "--write")
    # Program Activation Management (88h): SEL 1 = activate.
    nvme("admin-passthru", ctrl, "--opcode=0x88", "--namespace-id=1",
         f"--cdw10={pind | N.ACT_SEL_ACTIVATE << 16}")
    try:
        # Memory Write (05h) of the input into memory namespace 2.
        nvme("io-passthru", ns_dev(2), "--opcode=0x05", "--namespace-id=2",
             f"--cdw10={BY_HAND}", f"--cdw12={len(data)}", f"--data-len={len(data)}",
             f"--input-file={inp}", "--write")
        # Execute Program (01h): one inline range, CPARAM1 = input length, DLEN (CDW15) = 32.
        out = nvme("io-passthru", ns_dev(1), "--opcode=0x01", "--namespace-id=1",
                   f"--cdw2={pind}", "--cdw3=1", f"--cdw10={len(data)}", f"--cdw15={N.RANGE_SIZE}",
                   f"--data-len={N.RANGE_SIZE}", f"--input-file={ranges}", "--write")
        # Memory Read (02h) of the window.
        back = nvme("io-passthru", ns_dev(2), "--opcode=0x02", "--namespace-id=2",
                    f"--cdw10={BY_HAND}", f"--cdw12={len(data)}", f"--data-len={len(data)}",
                    "--read", "--raw-binary", binary=True)
    finally:
        nvme("admin-passthru", ctrl, "--opcode=0x88", "--namespace-id=1",
             f"--cdw10={pind | N.ACT_SEL_DEACTIVATE << 16}")
        nvme("admin-passthru", ctrl, "--opcode=0x85", "--namespace-id=1",
             f"--cdw10={pind | N.PTYPE_EBPF << 16 | N.LOAD_SEL_UNLOAD << 24}")
    with hermes.open("cpu") as cpu:
        want = cpu.run(Program.from_bytes(INC_RANGE), data)
    assert result(out) == want.return_value == len(data)
    assert back[:len(data)] == bytes(want.data)


def test_the_passthrough_backend_returns_what_cpu_returns():
    cases = [(Program.from_bytes(INC_RANGE), b"hello world", {}),
             (Program.from_bytes(INC_RANGE), b"abc", {"size": 64, "read": 64}),
             (RET_ARGS, b"12345", {"args": (1 << 40, 7, -1)})]
    with hermes.open(f"nvme:{DEV}") as dev, hermes.open("cpu") as cpu:
        assert dev.info()["backend"] == "nvme-passthru"
        for prog, data, kw in cases:
            got, want = dev.run(prog, data, **kw), cpu.run(prog, data, **kw)
            assert (got.return_value, bytes(got.data), got.instructions) == (
                want.return_value, bytes(want.data), want.instructions)
        words = struct.pack("<4Q", 1, 2, 3, 1 << 50)
        assert [r.return_value for r in dev.map(RET_ARGS, [words] * 3)] == [32] * 3

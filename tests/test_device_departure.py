"""`hermes serve` as a process: a client that dies mid-run leaves nothing running; serve options."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import hermes
from hermes import regs
from hermes.engine.asm import assemble_program
from hermes.transport.vfio_user import VfioUserTransport
from tests.vfio_devices import ServerProcess

#: Runs until stopped: a budget of 2^62 instructions takes centuries.
ENDLESS_BUDGET = 1 << 62
RUNAWAYS = 2
#: A killed client's runaway programs, if left running, slow the next client's tiny run to 0.5-1 s
#: (indefinitely with this budget); an idle device answers in milliseconds.
TINY_RUN_BOUND = 0.5
#: CPU seconds an idle server may spend in one second of wall time (its idle ticks).
IDLE_CPU_BOUND = 0.1

_CLIENT = textwrap.dedent("""
    import sys, threading
    import hermes.driver
    from hermes.engine.asm import assemble_program
    from hermes.transport.vfio_user import VfioUserTransport
    loop = assemble_program("mov r0, 0\\nloop:\\nadd r0, 1\\nja loop").to_bytes()
    drv = hermes.driver.attach(VfioUserTransport(sys.argv[1]), timeout=600)
    files = [drv.open() for _ in range(int(sys.argv[2]))]
    for f in files:
        f.download_program(loop)
        f.pwrite(b"x", 0)
    for f in files:
        threading.Thread(target=f.fsync, daemon=True).start()
    print("running", flush=True)
    threading.Event().wait()
""")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(str(tmp_path / "hermes.sock"), "--budget", str(ENDLESS_BUDGET))
    yield s
    s.stop()


def test_killed_clients_runaway_programs_are_stopped(server):
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, server.path, str(RUNAWAYS)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "running"
        before = cpu_seconds(server.proc.pid)
        time.sleep(1.0)
        busy = cpu_seconds(server.proc.pid) - before
        assert busy > IDLE_CPU_BOUND, f"the runaways are not running ({busy:.2f} s of CPU)"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    tiny = assemble_program("mov r0, 7\nexit")
    deadline = time.monotonic() + 30
    while True:   # the server may still be cleaning up the dead client's connection
        try:
            dev = hermes.open(f"vfio-user:{server.path}")
            break
        except hermes.HermesError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        dev.run(tiny, b"warm")
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            assert dev.run(tiny, b"x").return_value == 7
            times.append(time.monotonic() - t0)
        assert min(times) < TINY_RUN_BOUND, times
    finally:
        dev.close()
    # Nothing keeps running on the departed client's device: the idle server uses no CPU.
    time.sleep(0.5)
    before = cpu_seconds(server.proc.pid)
    time.sleep(1.0)
    used = cpu_seconds(server.proc.pid) - before
    assert used < IDLE_CPU_BOUND, f"idle server used {used:.2f} s of CPU in 1 s"
    assert "error:" not in server.log(), server.log()


@pytest.mark.parametrize("mode,interrupts", [(None, True), ("legacy", True), ("xdma", False)])
def test_serve_irq_compat_option(tmp_path, mode, interrupts):
    args = ["--irq-compat", mode] if mode else []
    s = ServerProcess(str(tmp_path / "irq.sock"), *args)
    try:
        t = VfioUserTransport(s.path)
        try:
            # A driver that never writes the user interrupt mask issues a Request Slot.
            t.write(regs.BAR_REGS, regs.cmdreq(0) + 8, 1, regs.SLOT_DATA)
            t.write(regs.BAR_REGS, regs.cmdctrl(0), 1, 1)
            assert t.irq_wait(regs.engine_vector(0), 2.0 if interrupts else 0.3) == interrupts
            assert t.read(regs.BAR_REGS, regs.cmdctrl(0), 2) == 0x0100
        finally:
            t.close()
    finally:
        s.stop()

"""Fault injection between vfio-user clients and real ``hermes serve`` processes: servers stopped,
killed and restarted under a client; clients killed in the middle of DMA and of a run.

Every wait must end within its timeout plus a small slack, and nothing of one client's session
may reach the next. ``pytest tests/test_faults.py -s`` prints how long each failure took to be
detected.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import hermes
from hermes.engine.asm import assemble_program
from hermes.server.vfio_user import BUSY_GRACE
from tests.vfio_devices import ServerProcess, _die_with_parent

#: The reply timeout (and command timeout) the clients here use.
T = 1.0
#: What a detection may take beyond the timeout: the liveness probe interval plus scheduling on a
#: loaded machine.
SLACK = 1.0
#: Any call on a connection already known to be dead, and a close.
QUICK = 0.5

RETURN7 = assemble_program("mov r0, 7\nexit")
INC_U64 = assemble_program("ldxdw r2, [r1]\nadd r2, 1\nstxdw [r1], r2\nmov r0, 0\nexit")
#: Stores its 8-byte argument into the data slot forever (only the huge budget would stop it).
STORE_FOREVER = "lddw r3, {:#x}\nloop:\nstxdw [r1], r3\nja loop\nexit"
RUNAWAY_BUDGET = str(1 << 62)


@pytest.fixture
def servers(tmp_path):
    """Starts ``hermes serve`` processes; each is resumed and stopped at the end."""
    started: list[ServerProcess] = []

    def start(name: str = "s.sock", *args: str) -> ServerProcess:
        s = ServerProcess(str(tmp_path / name), "--engines", "2", "--slots", "4",
                          "--slot-size", "256K", *args)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGCONT)
        s.stop(timeout=5)


def open_dev(path: str, **options: object) -> hermes.Device:
    """A client with the short timeouts under test."""
    return hermes.open(f"vfio-user:{path}", **{"timeout": T, "dma_timeout": T, **options})


def open_patient(path: str) -> hermes.Device:
    """A client whose checks are not about time (the default timeouts: a loaded machine or a
    server still retiring the previous client's device must not fail it)."""
    return hermes.open(f"vfio-user:{path}")


def report(what: str, seconds: float) -> None:
    """One line of the detection figures (shown with ``pytest -s``)."""
    print(f"\n[faults] {what}: {seconds * 1000:.0f} ms")


def fails_within(call, exc_type: type, limit: float) -> tuple[BaseException, float]:
    """Run ``call``; it must raise ``exc_type`` within ``limit`` seconds. Returns (exc, elapsed)."""
    t0 = time.monotonic()
    with pytest.raises(exc_type) as info:
        call()
    elapsed = time.monotonic() - t0
    assert elapsed < limit, f"{exc_type.__name__} after {elapsed:.2f} s, limit {limit:g} s"
    return info.value, elapsed


def assert_dead_quickly(dev: hermes.Device, exc_type: type = hermes.DeviceError) -> None:
    """A device whose connection failed: every call fails at once, close is quick."""
    for call in (lambda: dev.run(RETURN7, b"x"), lambda: dev.session().load(RETURN7)):
        fails_within(call, exc_type, QUICK)
    t0 = time.monotonic()
    dev.close()
    dev.close()
    assert time.monotonic() - t0 < QUICK


def signal_during(server: ServerProcess, fn, sig: int) -> tuple[BaseException | None, float]:
    """Run ``fn`` in a thread, send ``sig`` to the server 0.3 s into it; returns what ``fn``
    raised and how long after the signal it returned."""
    out: dict = {}

    def body() -> None:
        try:
            fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc
        out["at"] = time.monotonic()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    time.sleep(0.3)
    server.proc.send_signal(sig)
    sent = time.monotonic()
    thread.join(T + SLACK + 5)
    assert "at" in out, f"still waiting {T + SLACK + 5:g} s after the signal"
    return out.get("error"), out["at"] - sent


def runaway_session(dev: hermes.Device, value: int) -> hermes.Session:
    s = dev.session()
    s.load(assemble_program(STORE_FOREVER.format(value)))
    s.write(bytes(8))
    return s


# --- the server stops or dies under a client ------------------------------------------------------

def test_server_stopped_mid_run_times_out_naming_the_socket(servers):
    s = servers("stop.sock", "--budget", RUNAWAY_BUDGET)
    dev = open_dev(s.path)
    session = runaway_session(dev, 1)
    err, took = signal_during(s, session.run, signal.SIGSTOP)
    report(f"server SIGSTOPped mid-run -> DeviceTimeout (timeouts {T:g} s)", took)
    assert isinstance(err, hermes.DeviceTimeout), repr(err)
    assert s.path in str(err) and "did not answer" in str(err)
    assert took < T + SLACK
    session.close()
    assert_dead_quickly(dev, hermes.DeviceTimeout)
    # The client dropped the connection: once resumed, the server serves the next client.
    s.proc.send_signal(signal.SIGCONT)
    with open_patient(s.path) as dev2:
        assert dev2.run(RETURN7, b"x").return_value == 7


@pytest.mark.parametrize("dma_fds", [True, False], ids=["memfd-dma", "message-dma"])
def test_server_stopped_mid_dma_times_out(servers, dma_fds):
    s = servers("dma.sock")
    dev = open_dev(s.path, dma_fds=dma_fds)
    pattern = bytes(range(256)) * 1024        # 256 KiB: the whole data slot

    def stream() -> None:
        with dev.session() as sess:
            sess.load(INC_U64)
            while True:
                sess.write(pattern)
                assert sess.read(len(pattern)) == pattern

    err, took = signal_during(s, stream, signal.SIGSTOP)
    report(f"server SIGSTOPped mid-DMA ({'memfds' if dma_fds else 'DMA messages'}) -> "
           f"DeviceTimeout (timeouts {T:g} s)", took)
    assert isinstance(err, hermes.DeviceTimeout), repr(err)
    assert s.path in str(err)
    assert took < T + SLACK
    assert_dead_quickly(dev, hermes.DeviceTimeout)


def test_register_read_of_a_stopped_server_times_out(servers):
    s = servers("reg.sock")
    dev = open_dev(s.path)
    s.proc.send_signal(signal.SIGSTOP)
    err, took = fails_within(lambda: dev.run(RETURN7, b"x"), hermes.DeviceTimeout, T + SLACK)
    report(f"server SIGSTOPped before a call -> DeviceTimeout (timeouts {T:g} s)", took)
    # The run's first unanswered exchange is a register read, the liveness probe of an
    # interrupt wait when the first access was a posted write, or the DMA_MAP of a buffer the
    # run's session maps: whichever it is is named.
    assert s.path in str(err)
    assert any(what in str(err) for what in ("REGION_READ", "liveness probe", "DMA_MAP")), \
        str(err)
    assert_dead_quickly(dev, hermes.DeviceTimeout)


def test_server_killed_mid_run_is_reported_promptly(servers):
    s = servers("kill.sock", "--budget", RUNAWAY_BUDGET)
    dev = open_dev(s.path, timeout=30)      # the kill, not a timeout, must end the wait
    session = runaway_session(dev, 2)
    err, took = signal_during(s, session.run, signal.SIGKILL)
    report("server SIGKILLed mid-run -> DeviceError", took)
    assert isinstance(err, hermes.DeviceError), repr(err)
    assert not isinstance(err, hermes.DeviceTimeout), repr(err)
    assert "went away" in str(err) and s.path in str(err)
    assert took < QUICK
    session.close()
    assert_dead_quickly(dev)


def test_server_restarted_on_the_same_path(servers):
    s = servers("again.sock")
    old = open_dev(s.path)
    assert old.run(RETURN7, b"x").return_value == 7
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(5)
    s2 = servers("again.sock")                # replaces the stale socket file
    with open_patient(s2.path) as new:
        assert new.run(INC_U64, (41).to_bytes(8, "little")).data == (42).to_bytes(8, "little")
        err, _ = fails_within(lambda: old.run(RETURN7, b"x"), hermes.DeviceError, QUICK)
        assert "went away" in str(err)
        assert_dead_quickly(old)
        assert new.run(RETURN7, b"y").return_value == 7


def test_busy_or_silent_server_fails_within_the_connect_timeout(servers):
    s = servers("busy.sock")
    with open_dev(s.path) as first:
        # The server answers EBUSY once the first client has held on for its grace period.
        err, took = fails_within(lambda: open_dev(s.path, connect_timeout=BUSY_GRACE + 2),
                                 hermes.DeviceBusy, BUSY_GRACE + SLACK)
        report("second client while the first is served -> DeviceBusy", took)
        assert s.path in str(err) and "busy" in str(err)
        err, took = fails_within(lambda: open_dev(s.path, connect_timeout=0.5),
                                 hermes.DeviceTimeout, 0.5 + SLACK)
        assert s.path in str(err)   # a connect timeout shorter than the grace period
        assert first.run(RETURN7, b"x").return_value == 7
    s.proc.send_signal(signal.SIGSTOP)        # accepts (the kernel does) but never answers VERSION
    err, took = fails_within(lambda: open_dev(s.path, connect_timeout=0.5),
                             hermes.DeviceTimeout, 0.5 + SLACK)
    report("VERSION to a stopped server -> DeviceTimeout", took)
    assert s.path in str(err) and "VERSION" in str(err)


# --- a client dies in the middle of its work ------------------------------------------------------

CLIENT = r"""
import sys
import hermes
from hermes.engine.asm import assemble_program

path, mode, byte = sys.argv[1], sys.argv[2], int(sys.argv[3])
dev = hermes.open("vfio-user:" + path, timeout=60)
s = dev.session()
pattern = bytes([byte]) * (256 << 10)
if mode == "dma":
    s.load(assemble_program("mov r0, 0\nexit"))
    s.write(pattern)
    print("ready", flush=True)
    while True:
        s.write(pattern)
        s.read(len(pattern))
else:
    s.load(assemble_program(sys.argv[4]))
    s.write(pattern)
    print("ready", flush=True)
    s.run()
"""


def kill_client_while(path: str, mode: str, byte: int) -> None:
    """Start a client process that fills its data slot with ``byte`` and then streams DMA or runs
    a program storing ``byte`` forever; SIGKILL it in the middle of that."""
    args = [sys.executable, "-c", CLIENT, path, mode, str(byte),
            STORE_FOREVER.format(int.from_bytes(bytes([byte]) * 8, "little"))]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)


def assert_own_data(dev: hermes.Device, byte: int) -> None:
    """A fresh session sees its own bytes, zeros past them, and nothing of earlier clients."""
    mine = bytes([byte]) * 1000 + (7).to_bytes(8, "little")
    with dev.session() as s:
        s.load(INC_U64)
        s.write(mine)
        before = s.read(256 << 10)
        assert before[:len(mine)] == mine and not any(before[len(mine):])
        assert s.run().return_value == 0
        after = s.read(len(mine))
        assert after[:8] == (int.from_bytes(mine[:8], "little") + 1).to_bytes(8, "little")
        assert after[8:] == mine[8:]


def small_run_seconds(dev: hermes.Device) -> float:
    """Median time of a 2-instruction run."""
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        assert dev.run(RETURN7, b"x").return_value == 7
        times.append(time.monotonic() - t0)
    return sorted(times)[2]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_client_killed_mid_dma_leaves_nothing_behind(servers):
    s = servers("cdma.sock")
    for n, byte in enumerate((0xA1, 0xA2)):
        kill_client_while(s.path, "dma", byte)
        t0 = time.monotonic()
        with open_patient(s.path) as dev:
            if n == 0:
                report("next client connected after a client SIGKILLed mid-DMA",
                       time.monotonic() - t0)
            assert_own_data(dev, 0x50 + n)
    assert s.proc.poll() is None


def test_client_killed_mid_run_leaves_nothing_behind(servers):
    s = servers("crun.sock", "--budget", RUNAWAY_BUDGET)
    kill_client_while(s.path, "run", 0xB1)
    t0 = time.monotonic()
    with open_patient(s.path) as dev:
        report("next client connected after a client SIGKILLed mid-run", time.monotonic() - t0)
        assert_own_data(dev, 0x60)
    kill_client_while(s.path, "run", 0xB2)
    with open_patient(s.path) as dev:
        assert_own_data(dev, 0x61)


def test_next_client_after_a_killed_runaway_is_fast(servers):
    # The interpreter engine: a runaway holds the server's GIL half the time, so a program left
    # running shows in the next client's run time as well as in the idle server's CPU use.
    s = servers("fast.sock", "--budget", RUNAWAY_BUDGET, "--executor", "interp")
    with open_patient(s.path) as dev:
        baseline = small_run_seconds(dev)
    kill_client_while(s.path, "run", 0xC1)
    time.sleep(0.2)
    c0 = cpu_seconds(s.proc.pid)
    time.sleep(1.0)
    idle_cpu = cpu_seconds(s.proc.pid) - c0
    with open_patient(s.path) as dev:
        took = small_run_seconds(dev)
    report(f"2-instruction run after a killed runaway (before: {baseline * 1000:.1f} ms)", took)
    report("CPU time the idle server used in the second after a killed runaway", idle_cpu)
    assert idle_cpu < 0.15
    assert took < max(0.01, 5 * baseline)

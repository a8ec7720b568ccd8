"""vfio-user fast path: a short Run Program completes before the server answers the reads sent
with its start, so a command is one system call each way; everything else as before."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading

import pytest

import hermes.driver
from hermes import regs
from hermes.driver import RunArgs
from hermes.engine import Cancel
from hermes.engine.asm import assemble_program
from hermes.transport.vfio_user import VfioUserTransport
from tests.test_driver import expect_errno
from tests.vfio_devices import ThreadServer

RET0 = assemble_program("mov r0, 0\nexit").to_bytes()
RET5 = assemble_program("mov r0, 5\nexit").to_bytes()
LOOP = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").to_bytes()
ENDLESS_BUDGET = 1 << 62


class _Counting:
    """A socket stand-in that counts the calls made through it (sends and receives)."""

    def __init__(self, sock: object):
        self._sock = sock
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._sock, name)
        if not callable(attr):
            return attr

        def counted(*args: object, **kwargs: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def served():
    """A ThreadServer with two engines, a budget that allows endless loops, and its socket."""
    tmp = tempfile.mkdtemp(prefix="hermes-fast-")
    path = os.path.join(tmp, "s.sock")
    server = ThreadServer(path, engines=2, budget=ENDLESS_BUDGET)
    try:
        yield server, path
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(tmp)


@contextlib.contextmanager
def _file(path: str, program: bytes, **attach: object):
    """A driver over vfio-user with ``program`` downloaded and 8 bytes of input written."""
    drv = hermes.driver.attach(VfioUserTransport(path), **attach)
    try:
        with drv.open() as f:
            f.download_program(program)
            f.pwrite(bytes(8), 0)
            yield drv, f
    finally:
        drv.close()


def _where_runs(function: object) -> list[str]:
    """Names of the threads the served device's runs happen on, appended as they run."""
    dev = function.device  # type: ignore[attr-defined]
    seen: list[str] = []
    run = dev._run_on_slots

    def spy(*args: object) -> bytes:
        seen.append(threading.current_thread().name)
        return run(*args)

    dev._run_on_slots = spy
    return seen


def test_a_short_run_is_one_send_and_runs_on_the_connection_thread(served):
    server, path = served
    with _file(path, RET0) as (drv, f):
        f.fsync()   # the first run loads the program on the worker
        seen = _where_runs(server.function)
        t = drv.transport
        t.reply_spin = 0.0   # the poll before a receive peeks many times; count the receives
        counting = _Counting(t.sock)
        t.sock = counting
        try:
            for _ in range(5):
                f.fsync()
        finally:
            t.sock = counting._sock
        assert counting.calls.get("send", 0) + counting.calls.get("sendmsg", 0) == 5
        # both replies in a look and a receive (four receives when each is taken on its own)
        assert counting.calls.get("recv", 0) <= 15
        assert len(seen) == 5 and not any(name.startswith("hermes-engine") for name in seen)


def test_run_context_out_fields_are_read_with_the_start(served):
    _, path = served
    with _file(path, RET5) as (drv, f):
        for _ in range(3):   # the first run with a context learns the OUT read
            out = f.run_ex(RunArgs(0, 8))
            assert out.r0 == 5 and out.instructions == 2
        t = drv.transport
        counting = _Counting(t.sock)
        t.sock = counting
        try:
            out = f.run_ex(RunArgs(0, 8))
        finally:
            t.sock = counting._sock
        assert out.r0 == 5 and out.instructions == 2
        assert counting.calls.get("send", 0) == 1


def test_an_abort_sent_with_the_start_stops_a_short_run(served):
    # The cancel is set before the run: the abort written right after EXEC must reach the
    # command before it runs, as with a start on the engine's worker.
    _, path = served
    with _file(path, RET5) as (_, f):
        assert f.run_ex(RunArgs(0, 8)).r0 == 5
        already = Cancel()
        already.set()
        expect_errno(errno.ECANCELED, f.run_ex, RunArgs(0, 8), cancel=already)
        assert f.run_ex(RunArgs(0, 8)).r0 == 5


def test_a_long_run_still_runs_on_the_worker_and_times_out(served):
    server, path = served
    with _file(path, LOOP, timeout=0.3) as (drv, f):
        seen = _where_runs(server.function)
        expect_errno(errno.ETIMEDOUT, f.fsync)
        assert seen and all(name.startswith("hermes-engine") for name in seen)
        assert drv.transport._kept is None


def test_kept_reads_are_dropped_by_any_later_message(served):
    _, path = served
    with _file(path, RET0) as (drv, f):
        f.fsync()
        t = drv.transport
        engine = 0   # the only engine a lone caller's commands use (the pool's first)
        ctrl = regs.cmdctrl(engine)
        word1 = t.read(0, regs.cmdreq(engine) + 8, 8)   # the fsync's Run Program request
        t.write(0, regs.cmdreq(engine), 8, regs.CMD_RUN_PROGRAM | 0x77 << 16)
        t.write(0, regs.cmdreq(engine) + 8, 8, word1)
        assert t.execute(ctrl, engine, lambda e: None)
        assert t._kept is not None
        t.write(0, regs.cmdreq(engine), 8, 0)   # any message to the server drops them
        assert t._kept is None
        assert t.read(0, ctrl, 2) == 0x0100
        state, res = t.read_many(0, [(ctrl, 2), (regs.cmdres(engine), regs.EHCMDRES_LEN)])
        assert int.from_bytes(state, "little") == 0x0100
        assert int.from_bytes(res[:2], "little") == 0x77

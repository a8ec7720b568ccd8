"""In-process fast path: short Run Programs run in the waiting thread, everything else as before."""
from __future__ import annotations

import contextlib
import errno
import random
import threading
import time

import pytest

import hermes.driver
import hermes.engine
from hermes import regs
from hermes.device import HermesDevice, commands as C
from hermes.device.model import INLINE_WORK
from hermes.driver import RunArgs, engines, protocol as P
from hermes.engine.asm import assemble_program
from hermes.transport.inproc import InProcessTransport, Watchdog
from tests.test_driver import expect_errno

RET7 = assemble_program("mov r0, 7\nexit").to_bytes()
#: Adds data[0] to 1 and stores it back, then returns it (a loop-free read-modify-write).
INC = assemble_program("ldxdw r0, [r1]\nadd r0, 1\nstxdw [r1], r0\nexit").to_bytes()
#: Loops forever (only a budget or an abort ends it).
LOOP = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").to_bytes()
#: Reads past the 8-byte window: an out-of-bounds fault.
FAULT = assemble_program("ldxdw r0, [r1 + 64]\nexit").to_bytes()
ENDLESS_BUDGET = 1 << 62


def _where_runs(dev: HermesDevice) -> list[str]:
    """Names of the threads the device's runs happen on, appended as they run."""
    seen: list[str] = []
    run = dev._run_on_slots

    def spy(*args: object) -> bytes:
        seen.append(threading.current_thread().name)
        return run(*args)  # type: ignore[arg-type]

    dev._run_on_slots = spy  # type: ignore[method-assign]
    return seen


@pytest.fixture
def dev():
    device = HermesDevice(engines=2)
    yield device
    device.close(abort=True)


@contextlib.contextmanager
def _file(dev, program: bytes, **attach):
    """A driver file on ``dev`` with ``program`` downloaded and 8 bytes of input written."""
    drv = hermes.driver.attach(dev, **attach)
    try:
        with drv.open() as f:
            f.download_program(program)
            f.pwrite(bytes(8), 0)
            yield f
    finally:
        drv.close()


def test_a_short_cached_run_runs_in_the_callers_thread(dev):
    seen = _where_runs(dev)
    with _file(dev, RET7) as f:
        assert [f.run(), f.run(), f.run_ex(RunArgs(8, 8)).r0] == [7, 7, 7]
    me = threading.current_thread().name
    # the first run loads the program: on the worker; the cached ones run here
    assert seen[0].startswith("hermes-engine-") and seen[1:] == [me, me]
    assert dev.stats["cache_misses"] == 1 and dev.stats["cache_hits"] == 2


def test_a_short_run_looks_at_its_abort_flag_only_at_its_start(dev, monkeypatch):
    # A short inline run is not watched (an abort during it finds it as good as done): its
    # executable gets no flag, unless an abort is pending at its start, which stops it there.
    flags: list[object] = []
    run = hermes.engine.jit.JitExecutable.run

    def spy(self, *args, **kw):  # type: ignore[no-untyped-def]
        flags.append(kw.get("cancel"))
        return run(self, *args, **kw)

    monkeypatch.setattr(hermes.engine.jit.JitExecutable, "run", spy)
    seen = _where_runs(dev)
    with _file(dev, RET7) as f:
        f.run()   # loads the program on the worker, which watches the flag
        assert f.run() == 7 and flags[-1] is None
        cancel = hermes.engine.Cancel()
        cancel.set()
        expect_errno(errno.ECANCELED, f.run_ex, RunArgs(8, 8), cancel=cancel)
        assert flags[-1] is not None and flags[-1].is_set()  # type: ignore[attr-defined]
        assert f.run() == 7   # the engine serves the next run as before
    me = threading.current_thread().name
    assert flags[0] is not None and seen[1:] == [me, me, me]
    assert dev.stats["aborted"] == 1


def test_unbounded_runs_and_short_timeouts_use_the_worker(dev):
    seen = _where_runs(dev)
    with _file(dev, RET7, timeout=engines.INLINE_MIN_TIMEOUT / 2) as f:
        f.run()
        f.run()   # cached, but the timeout is too short for the fast path
    with _file(dev, LOOP) as f:
        for budget in (INLINE_WORK + 1, INLINE_WORK + 1, 1 << 20):
            expect_errno(errno.ENOEXEC, f.run_ex, RunArgs(8, 8, budget=budget))
    assert all(name.startswith("hermes-engine-") for name in seen), seen


def test_a_small_budget_bounds_a_loop_enough_for_the_fast_path(dev):
    seen = _where_runs(dev)
    with _file(dev, LOOP) as f:
        for _ in range(2):
            exc = expect_errno(errno.ENOEXEC, f.run_ex, RunArgs(8, 8, budget=1000))
            assert exc.outcome.budget == 1000 and exc.outcome.instructions <= 1000
    assert seen[1] == threading.current_thread().name


def test_two_long_runs_on_two_engines_still_overlap(dev):
    drv = hermes.driver.attach(dev, timeout=30)
    results: list[object] = []

    def long_run(f: hermes.driver.HermesFile) -> None:
        t0 = time.monotonic()
        try:
            f.run_ex(RunArgs(8, 8, budget=ENDLESS_BUDGET, timeout=0.5))
        except OSError as exc:
            results.append((exc.errno, time.monotonic() - t0))

    try:
        a, b = drv.open(), drv.open()
        for f in (a, b):
            f.download_program(LOOP)
            f.pwrite(bytes(8), 0)
        t0 = time.monotonic()
        threads = [threading.Thread(target=long_run, args=(f,)) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        # each times out after 0.5 s; run one after the other they would take 1 s
        assert [r[0] for r in results] == [errno.ETIMEDOUT] * 2
        assert time.monotonic() - t0 < 0.95
        a.close()
        b.close()
    finally:
        drv.close()


def _in_thread(fn):
    """``fn()`` in a thread other than the main one: its value, or the exception it raised."""
    out: list = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:   # handed to the test
            out.append(exc)

    t = threading.Thread(target=body, name="fast-path-host")
    t.start()
    t.join(30)
    assert not t.is_alive()
    return out[0]


def test_a_long_run_from_another_thread_runs_there_and_its_timeout_aborts_it(dev):
    seen = _where_runs(dev)
    with _file(dev, LOOP, timeout=0.3) as f:
        expect_errno(errno.ENOEXEC, f.run_ex, RunArgs(8, 8, budget=10))   # loads it, on the worker

        def timed() -> tuple[object, float]:
            t0 = time.monotonic()
            try:
                return f.run_ex(RunArgs(8, 8, budget=ENDLESS_BUDGET)), 0.0
            except OSError as exc:
                return exc, time.monotonic() - t0

        exc, took = _in_thread(timed)
        assert isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT, exc
        assert "did not complete within 0.3 s; the command was aborted; the engine is idle" \
            in str(exc)
        # the watchdog fires at most a tick late; the run stops within its bounded work
        assert 0.3 <= took < 0.3 + 1.0
        assert seen[1:] == ["fast-path-host"]
        assert dev.stats["aborted"] == 1 and dev.busy_slots() == ([], [])
        # a run's own timeout: the driver's message for it, the pc the abort stopped it at
        exc = _in_thread(lambda: f.run_ex(RunArgs(8, 8, budget=ENDLESS_BUDGET, timeout=0.2)))
        assert isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT, exc
        assert "exceeded its timeout of 0.2 s and was aborted at pc" in str(exc)
        assert seen[2:] == ["fast-path-host"]
        # the engine serves the next command at once
        assert _in_thread(lambda: f.run_ex(RunArgs(8, 8, budget=100))).errno == errno.ENOEXEC


def test_a_cancel_from_another_thread_stops_a_long_run_in_its_host_thread(dev):
    seen = _where_runs(dev)
    with _file(dev, LOOP, timeout=30) as f:
        expect_errno(errno.ENOEXEC, f.run_ex, RunArgs(8, 8, budget=10))
        flag = hermes.engine.Cancel()
        threading.Timer(0.2, flag.set).start()
        t0 = time.monotonic()
        exc = _in_thread(lambda: f.run_ex(RunArgs(8, 8, budget=ENDLESS_BUDGET), cancel=flag))
        assert isinstance(exc, OSError) and exc.errno == errno.ECANCELED, exc
        assert time.monotonic() - t0 < 10
        assert seen[1:] == ["fast-path-host"]


def test_the_main_thread_keeps_long_runs_on_the_worker(dev):
    # Only the main thread takes Ctrl-C: it waits in slices (R21) while the worker runs.
    seen = _where_runs(dev)
    with _file(dev, LOOP, timeout=0.3) as f:
        expect_errno(errno.ENOEXEC, f.run_ex, RunArgs(8, 8, budget=10))
        expect_errno(errno.ETIMEDOUT, f.run_ex, RunArgs(8, 8, budget=ENDLESS_BUDGET))
    assert all(name.startswith("hermes-engine-") for name in seen), seen


def test_an_idle_watchdog_sleeps_and_wakes_for_the_next_deadline():
    fired: list[int] = []
    dog = Watchdog(fired.append)
    dog.IDLE = 0.05   # type: ignore[misc]
    try:
        dog.disarm(dog.arm(1, 10))
        time.sleep(0.2)   # past IDLE with nothing armed: the thread sleeps untimed
        assert dog._sleeping
        dog.arm(2, 0.05)
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fired == [2]
        token = dog.arm(3, 0.05)
        dog.disarm(token)
        time.sleep(0.2)
        assert fired == [2]   # a disarmed deadline never fires
    finally:
        dog.close()


@pytest.mark.volume
@pytest.mark.parametrize("executor", ["jit", "interp"])
def test_timeouts_and_cancels_in_host_threads_never_reach_other_commands(executor):
    # Four threads mix short runs with long ones that time out or are cancelled, on two
    # engines: every short run still answers (no late abort hits it), every long one stops.
    device = HermesDevice(engines=2, executor=executor)
    drv = hermes.driver.attach(device, timeout=0.5)
    wrong: list[str] = []
    stopped: list[int] = []

    def host(seed: int) -> None:
        rng = random.Random(seed)
        with drv.open() as looping, drv.open() as short:
            looping.download_program(LOOP)
            looping.pwrite(bytes(8), 0)
            short.download_program(RET7)
            short.pwrite(bytes(8), 0)
            end = time.monotonic() + 4
            while time.monotonic() < end:
                k = rng.random()
                try:
                    if k < 0.1:
                        looping.run_ex(RunArgs(8, 8, budget=ENDLESS_BUDGET))
                        wrong.append("an endless run finished")
                    elif k < 0.15:
                        flag = hermes.engine.Cancel()
                        threading.Timer(rng.random() * 0.05, flag.set).start()
                        looping.run_ex(RunArgs(8, 8, budget=ENDLESS_BUDGET), cancel=flag)
                        wrong.append("a cancelled endless run finished")
                    elif short.run() != 7:
                        wrong.append("a short run returned another r0")
                except OSError as exc:
                    if k >= 0.15:
                        wrong.append(f"a short run failed: {exc}")
                    stopped.append(exc.errno)

    try:
        threads = [threading.Thread(target=host, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not wrong, wrong[:5]
        assert stopped and set(stopped) <= {errno.ETIMEDOUT, errno.ECANCELED}
        assert device.busy_slots() == ([], [])
    finally:
        drv.close()
        device.close(abort=True)


def _outcomes(inline: bool) -> tuple[list, dict, bytes]:
    """Results, device counters and BAR0 command registers of one sequence of commands run with
    or without the fast path."""
    dev = HermesDevice(engines=1)
    transport = InProcessTransport(dev, owns_device=True)
    if not inline:
        transport._execute = None
    drv = hermes.driver.attach(transport)
    out: list = []
    try:
        with drv.open() as f:
            for prog, run in ((RET7, RunArgs(8, 8)), (INC, RunArgs(8, 8)), (INC, None),
                              (FAULT, RunArgs(8, 8)), (LOOP, RunArgs(8, 8, budget=50)),
                              (RET7, RunArgs(8, 8, args=(1, 2, 3)))):
                f.download_program(prog)
                f.pwrite((41).to_bytes(8, "little"), 0)
                for _ in range(2):   # the first run loads the program, the second is cached
                    try:
                        if run is None:
                            out.append(f.run())
                        else:
                            o = f.run_ex(run)
                            out.append((o.r0, o.instructions, o.output_len, o.trace))
                    except OSError as exc:
                        out.append((exc.errno, exc.status))
                    out.append(f.pread(8, 0))
            flag = hermes.engine.Cancel()
            flag.set()
            exc = expect_errno(errno.ECANCELED, f.run_ex, RunArgs(8, 8), cancel=flag)
            out.append(exc.status)
        stats = dev.stats
        base = regs.EHCMDREQ_BASE
        registers = bytes(transport.read_block(0, base, regs.EHCMD_STRIDE))
        registers += transport.read_block(0, regs.cmdctx(0) + regs.CTX_INSNS, 8)
    finally:
        drv.close()
    return out, stats, registers


def test_the_fast_path_changes_no_result_counter_or_register():
    assert _outcomes(inline=True) == _outcomes(inline=False)


def test_an_interruption_during_an_inline_run_completes_it_as_aborted(dev):
    transport = InProcessTransport(dev)
    drv = hermes.driver.attach(transport)
    try:
        with drv.open() as f:
            f.download_program(RET7)
            f.pwrite(bytes(8), 0)
            f.run()   # loads the program
            p, d = f.program_slot, f.data_slot
            base = regs.cmdreq(1)
            transport.write(0, base, 8, regs.CMD_RUN_PROGRAM | 0x77 << 16)
            transport.write(0, base + 8, 8, P.run_word(p, d, len(RET7)))

            def interrupted(engine: int) -> None:
                raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                dev.exec_inline(1, interrupted)
            assert transport.read(0, regs.cmdctrl(1), 2) == 0x0100   # idle, DONE
            response = regs.Response.unpack(transport.read_block(0, regs.cmdres(1), 16))
            assert (response.cmd_id, response.status) == (0x77, regs.STATUS_ABORTED)
            assert dev.busy_slots() == ([], [])
            assert dev.stats["aborted"] == 1
            assert f.run() == 7   # the engines serve the next commands
    finally:
        drv.close()


def test_block_writes_are_the_4_byte_writes_they_replace():
    a, b = HermesDevice(engines=2), HermesDevice(engines=2)
    try:
        blob = bytes(range(1, 49))
        for at, data in ((regs.cmdreq(1), blob[:32]), (regs.cmdreq(0) + 8, blob[:16]),
                         (regs.cmdctx(1), blob), (regs.cmdreq(0) + 16, blob[:32]),
                         (regs.cmdctx(0) + 40, blob[:16]), (0x10, blob[:8])):
            a.bar_write_block(0, at, data)
            for i in range(0, len(data), 4):
                b.bar_write(0, at + i, 4, int.from_bytes(data[i:i + 4], "little"))
        assert a.bar_read_block(0, 0, 0x3000) == b.bar_read_block(0, 0, 0x3000)
        assert a.stats == b.stats and a.stats["ro_writes"] > 0
    finally:
        a.close()
        b.close()


def test_the_fast_forms_of_the_codecs_agree_with_them():
    for args in ((1, 0, 7), (0xFFFF, 0x05, (1 << 64) - 1), (0x1_0002, 0x1FF, 1 << 64)):
        assert C.response(*args) == regs.Response(*args).pack()
    fields = (5, regs.CTX_NO_OUTPUT, 3, 1234, 0x1000_0008, 8, 1, 2, 10**9)
    assert C.out_fields(*fields) == regs.RunContextOut(*fields).pack()
    assert regs.RunContextOut.fields(regs.RunContextOut(*fields).pack()) == fields
    ctx = regs.RunContextIn(3, 8, (1, 2, (1 << 64) - 1), 99, 4, 0)
    raw = bytearray(8) + ctx.pack()
    assert C.context_in(raw, 8) == (3, 8, (1, 2, (1 << 64) - 1), 99, 4, 0)
    words = regs.RunContextIn.words(3, 8, 1, 2, -1, 99, 4)
    assert b"".join(w.to_bytes(8, "little") for w in words) == ctx.pack()


@pytest.mark.parametrize(("source", "bound"), [
    ("mov r0, 7\nexit", (2, 0)),
    ("lddw r0, 0x1122334455667788\njeq r0, 0, out\ncall 0x1000\nout:\nexit", (5, 1)),
    ("l:\nja l", (None, 0)),
    ("mov r0, 1\njne r0, 0, -2\nexit", (None, 0)),
    ("call local f\nexit\nf:\nmov r0, 1\nexit", (None, 0)),
])
def test_work_bound(source, bound):
    assert C.work_bound(assemble_program(source)) == bound


def test_work_bound_of_what_is_not_a_program():
    assert C.work_bound(None) == (None, 0)
    assert C.work_bound(7) == (None, 0)


def test_run_outcome_parse_reads_what_the_codec_reads():
    response = regs.Response(3, regs.STATUS_SUCCESS, 9)
    outs = [regs.RunContextOut(5, regs.CTX_NO_OUTPUT, 0, 77, 0, 0, 0, 0, 0),
            regs.RunContextOut(5, 12, 3, 77, 0, 0, 0, 1, 1000),
            regs.RunContextOut(5, 12, 3, 77, 0x1000_0040, 8, 0x201, 0, 1000)]
    for ctx in outs:
        got = P.RunOutcome.parse(response, ctx.pack(), b"abc")
        faulted = ctx.fault_size != 0
        assert (got.instructions, got.output_len, got.run_ns, got.trace_dropped,
                got.budget) == (ctx.instructions, None if ctx.output_len ==
                                    regs.CTX_NO_OUTPUT else ctx.output_len, ctx.run_ns,
                                    ctx.trace_dropped, ctx.run_budget or None)
        assert (got.fault_address, got.fault_size, got.fault_write, got.fault_depth) == (
            (ctx.fault_address, ctx.fault_size, ctx.fault_write, ctx.fault_depth) if faulted
            else (None, None, None, None))
    assert got.fault_write is True and got.fault_depth == 2

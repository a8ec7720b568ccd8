"""Driver: a run past its timeout is aborted before its slots are reused; unstoppable runs
quarantine their slots."""
from __future__ import annotations

import errno
import threading
import time

import pytest

import hermes.driver
from hermes import regs
from hermes.device import HermesDevice
from hermes.engine.asm import assemble_program
from tests.test_driver import expect_errno

#: Stores A's marker into data[0..8] forever (a budget of centuries: only an abort ends it).
ENDLESS_A = assemble_program(
    "lddw r3, 0xAAAAAAAAAAAAAAAA\nloop:\nstxdw [r1], r3\nja loop").to_bytes()
#: Returns data[0..8].
READ_FIRST = assemble_program("ldxdw r0, [r1]\nexit").to_bytes()
B_VALUE = 0x0B0B0B0B0B0B0B0B
ENDLESS_BUDGET = 1 << 62


def test_timed_out_run_does_not_corrupt_the_next_session(make_driver):
    drv = make_driver(engines=2, budget=ENDLESS_BUDGET, timeout=0.2)
    a = drv.open()
    a.download_program(ENDLESS_A)
    a.pwrite(bytes(8), 0)
    t0 = time.monotonic()
    exc = expect_errno(errno.ETIMEDOUT, a.fsync)
    assert "aborted" in exc.strerror and exc.command_stopped is True
    assert time.monotonic() - t0 < 0.2 + drv.abort_timeout + 1
    a.close()
    b = drv.open()
    b.download_program(READ_FIRST)
    b.pwrite(B_VALUE.to_bytes(8, "little"), 0)
    time.sleep(0.1)   # time for a runaway program to overwrite the input
    assert b.run() == B_VALUE
    assert b.pread(8, 0) == B_VALUE.to_bytes(8, "little")
    b.close()


def test_aborted_engine_serves_the_next_command_at_once(make_driver):
    drv = make_driver(engines=1, budget=ENDLESS_BUDGET, timeout=0.2)
    with drv.open() as a:
        a.download_program(ENDLESS_A)
        a.pwrite(bytes(8), 0)
        expect_errno(errno.ETIMEDOUT, a.fsync)
        # The file keeps its slots and works again (its one engine is idle, not set aside).
        a.download_program(READ_FIRST)
        a.pwrite((5).to_bytes(8, "little"), 0)
        assert a.run() == 5


@pytest.fixture
def old_device():
    """A device without EHCAP_ABORT (as the published hardware): timed-out runs keep going."""
    dev = HermesDevice(budget=ENDLESS_BUDGET, can_abort=False)
    yield dev
    dev.close(abort=True)


def test_unstoppable_run_quarantines_its_slots(old_device):
    drv = hermes.driver.attach(old_device, timeout=0.1, abort_timeout=0.1)
    try:
        a = drv.open()
        a.download_program(ENDLESS_A)
        a.pwrite(bytes(8), 0)
        p, d = a.program_slot, a.data_slot
        exc = expect_errno(errno.ETIMEDOUT, a.fsync)
        assert exc.command_stopped is False
        assert f"program slot {p} and data slot {d} are quarantined" in exc.strerror
        assert drv.quarantined() == [(regs.SLOT_PROGRAM, p), (regs.SLOT_DATA, d)]
        err = expect_errno(errno.EIO, a.pread, 8, 0)
        assert "quarantined" in err.strerror
        a.close()
        assert old_device.slots_in_use() == ([p], [d])   # never released while it may run
        with drv.open() as b:
            b.download_program(READ_FIRST)
            b.pwrite(B_VALUE.to_bytes(8, "little"), 0)
            assert (b.program_slot, b.data_slot) != (p, d)
            assert b.run() == B_VALUE
            old_device.abort()   # the device is reset-like stopped: the engine reads idle
            deadline = time.monotonic() + 5
            while drv.quarantined() and time.monotonic() < deadline:
                b.run()          # a command takes an engine: the idle one is reclaimed
                time.sleep(0.01)
            assert drv.quarantined() == []
        with drv.open() as c:    # the quarantined slots are released and handed out again
            c.download_program(READ_FIRST)
            c.pwrite(bytes(8), 0)
            assert (c.program_slot, c.data_slot) == (p, d)
            assert c.run() == 0
    finally:
        drv.close()


def test_run_aborted_by_the_device_is_ecanceled():
    with HermesDevice(budget=ENDLESS_BUDGET) as dev:
        drv = hermes.driver.attach(dev, timeout=30)
        try:
            with drv.open() as f:
                f.download_program(ENDLESS_A)
                f.pwrite(bytes(8), 0)
                threading.Timer(0.1, dev.abort).start()
                exc = expect_errno(errno.ECANCELED, f.fsync)
                assert exc.response.status == regs.STATUS_ABORTED
                assert "aborted" in exc.strerror
        finally:
            drv.close()


def test_probe_reads_the_capabilities(make_driver):
    assert make_driver().geometry.capabilities & regs.EHCAP_ABORT
    drv = hermes.driver.attach(dev := HermesDevice(can_abort=False))
    try:
        assert drv.info()["capabilities"] == regs.EHCAP_RUNCTX
    finally:
        drv.close()
        dev.close()


def test_bad_abort_timeout_rejected():
    with HermesDevice() as dev, pytest.raises(ValueError, match="abort_timeout"):
        hermes.driver.attach(dev, abort_timeout=-1)

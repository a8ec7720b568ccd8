"""Device model: host-allocated slots beside Request/Release Slot, busy slots, abort, INTx."""
from __future__ import annotations

import contextlib
import time

import pytest

from hermes import regs as R
from hermes.device import HermesDevice
from hermes.device.model import DEVICE_OWNED, FREE, HOST_OWNED
from hermes.engine.asm import assemble_program
from tests.test_device import IRQ, RET7, Regs

#: Runs until stopped (the devices below have budgets of centuries), storing 0xAA into data[0].
ENDLESS = assemble_program("mov r3, 0xAA\nloop:\nstxb [r1], r3\nja loop").code
#: Generous bound for an aborted command to complete (the engines notice within milliseconds).
ABORT_BOUND = 5.0
ENGINES = ["interp", "jit"]


@contextlib.contextmanager
def stopping(device: HermesDevice):
    """``device``, closed with abort at the end (a failed test must not leave a runaway run)."""
    try:
        yield device
    finally:
        device.close(abort=True)


@pytest.fixture
def dev():
    d = HermesDevice(budget=1 << 62)
    yield d
    d.close(abort=True)


@pytest.fixture
def regs(dev):
    return Regs(dev)


def host_load(dev: HermesDevice, pslot: int, dslot: int, code: bytes, data: bytes = b"") -> None:
    """What a host-allocating driver does: DMA into slots it chose itself (BAR4 writes here)."""
    dev.program_slot(pslot)[:len(code)] = code
    dev.data_slot(dslot)[:len(data)] = data


def wait_done(r: Regs, n: int, timeout: float = ABORT_BOUND) -> tuple[int, int, int]:
    return r.finish(n, timeout=timeout)


# --- host-allocated slots ------------------------------------------------------------------------
def test_run_program_on_host_allocated_slots(dev):
    r = Regs(dev)
    host_load(dev, 3, 5, RET7, b"input")
    assert r.run(3, 5, len(RET7)) == (R.STATUS_SUCCESS, 7)
    owners = dev.slot_owners()
    assert owners[0][3] == HOST_OWNED and owners[1][5] == HOST_OWNED
    assert dev.stats["host_slot_claims"] == 2
    assert dev.data_slot(5)[:5].tobytes() == b"input"     # a host-owned slot is never zeroed
    # Request Slot never hands out what the host allocator chose, and zeroes what it hands out.
    got = [r.request(R.SLOT_DATA) for _ in range(15)]
    assert got == [(R.STATUS_SUCCESS, i) for i in range(16) if i != 5]
    assert r.request(R.SLOT_DATA) == (R.STATUS_NO_SPACE, 0)
    assert dev.slot_owners()[1][0] == DEVICE_OWNED
    # A Run on a slot handed out by Request Slot works as before.
    assert r.run(3, 0, len(RET7)) == (R.STATUS_SUCCESS, 7)
    # A host-owned slot can be given back; then it is free (and a second release is refused).
    assert r.release(R.SLOT_DATA, 5) == R.STATUS_SUCCESS
    assert r.release(R.SLOT_DATA, 5) == R.STATUS_INVALID_DATA_SLOT
    assert r.request(R.SLOT_DATA) == (R.STATUS_SUCCESS, 5)
    assert not any(dev.data_slot(5))
    # Slots that do not exist are still refused.
    assert r.run(16, 0, 16)[0] == R.STATUS_INVALID_PROG_SLOT
    assert r.run(3, 16, 16)[0] == R.STATUS_INVALID_DATA_SLOT
    dev.reset()
    assert dev.slots_in_use() == ([], [])
    assert set(dev.slot_owners()[0]) == {FREE}


def test_host_slots_shared_by_engines(dev):
    r = Regs(dev)
    host_load(dev, 0, 0, RET7)
    for n in range(4):
        assert r.run(0, 0, len(RET7), n=n) == (R.STATUS_SUCCESS, 7)
    assert dev.stats["host_slot_claims"] == 2   # claimed once, by the first run


# --- busy slots are never handed out -------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_released_busy_slot_is_not_handed_out_until_idle(engine):
    with stopping(HermesDevice(budget=1 << 62, executor=engine)) as dev:
        r = Regs(dev)
        p, d = r.load(ENDLESS, b"")
        r.start(3, R.CMD_RUN_PROGRAM, r.run_payload(p, d, len(ENDLESS)))
        assert r.ctrl(3) == (1, 0)
        # The owner gives up (a driver that timed out): the release succeeds at once...
        assert r.release(R.SLOT_PROGRAM, p) == R.STATUS_SUCCESS
        assert r.release(R.SLOT_DATA, d) == R.STATUS_SUCCESS
        assert r.release(R.SLOT_DATA, d) == R.STATUS_INVALID_DATA_SLOT   # it is free now
        assert dev.busy_slots() == ([p], [d])
        # ...but the next owner gets other slots while the program still writes into d.
        assert r.request(R.SLOT_PROGRAM) == (R.STATUS_SUCCESS, p + 1)
        assert r.request(R.SLOT_DATA) == (R.STATUS_SUCCESS, d + 1)
        time.sleep(0.05)
        assert not any(dev.data_slot(d + 1))
        dev.bar_write(0, R.cmdctrl(3) + R.EHCMDABORT, 1, 1)
        assert wait_done(r, 3)[1] == R.STATUS_ABORTED
        assert dev.busy_slots() == ([], [])
        # Idle now: the deferred free is complete, and the slot comes back zeroed.
        assert r.request(R.SLOT_DATA) == (R.STATUS_SUCCESS, d)
        assert not any(dev.data_slot(d))


def test_request_slot_skips_slots_of_running_host_runs(dev):
    r = Regs(dev)
    host_load(dev, 0, 0, ENDLESS)
    r.start(1, R.CMD_RUN_PROGRAM, r.run_payload(0, 0, len(ENDLESS)))
    assert r.request(R.SLOT_DATA) == (R.STATUS_SUCCESS, 1)
    assert r.release(R.SLOT_DATA, 0) == R.STATUS_SUCCESS   # given back while still running
    assert r.request(R.SLOT_DATA) == (R.STATUS_SUCCESS, 2)
    dev.abort()
    assert wait_done(r, 1)[1] == R.STATUS_ABORTED
    assert r.request(R.SLOT_DATA) == (R.STATUS_SUCCESS, 0)


# --- abort ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_abort_stops_the_running_command(engine):
    with stopping(HermesDevice(budget=1 << 62, executor=engine)) as dev:
        r = Regs(dev)
        assert dev.bar_read(0, R.EHCAP, 1) & R.EHCAP_ABORT
        p, d = r.load(ENDLESS)
        cid = r.start(2, R.CMD_RUN_PROGRAM, r.run_payload(p, d, len(ENDLESS)))
        time.sleep(0.05)
        assert r.ctrl(2) == (1, 0)
        t0 = time.monotonic()
        dev.bar_write(0, R.cmdctrl(2) + R.EHCMDABORT, 1, 1)
        assert dev.bar_read(0, R.cmdctrl(2) + R.EHCMDABORT, 1) in (0, 1)
        rcid, status, value = wait_done(r, 2)
        elapsed = time.monotonic() - t0
        assert (rcid, status) == (cid, R.STATUS_ABORTED) and elapsed < ABORT_BOUND
        assert value < len(ENDLESS) // 8                      # the pc where it stopped
        assert dev.bar_read(0, R.cmdctrl(2), 4) == 0x0100      # EXEC 0, DONE 1, ABORT 0
        assert dev.data_slot(d)[0] == 0xAA
        stats = dev.stats
        assert stats["aborted"] >= 1 and stats["abort_requests"] >= 1
        dev.program_slot(p)[:len(RET7)] = RET7
        assert r.run(p, d, len(RET7), n=2) == (R.STATUS_SUCCESS, 7)   # the engine is free


def test_abort_of_an_idle_engine_is_ignored(regs, dev):
    dev.bar_write(0, R.cmdctrl(0) + R.EHCMDABORT, 1, 1)
    assert dev.stats["idle_aborts"] == 1 and regs.irqs == []
    assert dev.bar_read(0, R.cmdctrl(0), 4) == 0
    # A slot command completes inside the EXEC write: an abort after it finds the engine idle.
    assert regs.request(R.SLOT_DATA) == (0, 0)
    dev.bar_write(0, R.cmdctrl(0) + R.EHCMDABORT, 1, 1)
    assert dev.stats["idle_aborts"] == 2
    assert regs.ctrl(0) == (0, 1)


def test_abort_through_wide_control_writes(regs, dev):
    p, d = regs.load(ENDLESS)
    payload = regs.run_payload(p, d, len(ENDLESS))
    regs.start(0, R.CMD_RUN_PROGRAM, payload)
    dev.bar_write(0, R.cmdctrl(0), 4, 1 << 16)              # byte 2 of a 4-byte write
    assert wait_done(regs, 0)[1] == R.STATUS_ABORTED
    regs.start(0, R.CMD_RUN_PROGRAM, payload)
    # abort + EXEC in one 8-byte write: the running command stops, the start counts as busy
    dev.bar_write(0, R.cmdctrl(0), 8, 1 << 16 | 1)
    assert wait_done(regs, 0)[1] == R.STATUS_ABORTED
    assert dev.stats["busy_exec_writes"] == 1
    regs.start(0, R.CMD_RUN_PROGRAM, payload)
    dev.bar_write(0, R.cmdctrl(0) + R.EHCMDABORT, 2, 0x0001)   # 2-byte write at byte 2
    assert wait_done(regs, 0)[1] == R.STATUS_ABORTED


def test_device_without_abort_capability():
    with stopping(HermesDevice(budget=1 << 62, can_abort=False)) as dev:
        r = Regs(dev)
        assert dev.bar_read(0, R.EHCAP, 1) == R.EHCAP_RUNCTX
        p, d = r.load(ENDLESS)
        r.start(0, R.CMD_RUN_PROGRAM, r.run_payload(p, d, len(ENDLESS)))
        dev.bar_write(0, R.cmdctrl(0) + R.EHCMDABORT, 1, 1)
        assert dev.stats["ro_writes"] == 1 and dev.stats["abort_requests"] == 0
        time.sleep(0.05)
        assert r.ctrl(0) == (1, 0)                 # still running
        dev.reset()                                # a reset still stops it
        assert r.irqs[-1] == R.engine_vector(0)


def test_reset_stops_running_commands(regs, dev):
    p, d = regs.load(ENDLESS)
    for n in (0, 3):
        regs.start(n, R.CMD_RUN_PROGRAM, regs.run_payload(p, d, len(ENDLESS)))
    t0 = time.monotonic()
    dev.reset()
    assert time.monotonic() - t0 < ABORT_BOUND
    assert sorted(regs.irqs[-2:]) == [R.engine_vector(0), R.engine_vector(3)]  # before it returned
    assert dev.stats["aborted"] == 2
    assert dev.slots_in_use() == ([], []) and dev.busy_slots() == ([], [])
    assert [regs.ctrl(n) for n in range(4)] == [(0, 0)] * 4


def test_close_with_abort_stops_runaway_programs():
    d = HermesDevice(budget=1 << 62)
    r = Regs(d)
    p, ds = r.load(ENDLESS)
    for n in range(4):
        r.start(n, R.CMD_RUN_PROGRAM, r.run_payload(p, ds, len(ENDLESS)))
    threads = [e.thread for e in d._engines]
    t0 = time.monotonic()
    d.close(abort=True)
    assert time.monotonic() - t0 < ABORT_BOUND
    assert not any(t.is_alive() for t in threads)
    assert d.stats["aborted"] == 4


# --- engine interrupts for drivers that never program the user mask ------------------------------
def test_legacy_interrupts_until_the_user_mask_is_written(dev):
    r = Regs(dev, enable_irqs=False)               # a driver that never writes the user mask
    p, d = r.load(RET7)
    assert r.run(p, d, len(RET7), n=1) == (0, 7)   # completions interrupt all the same
    assert dev.stats["legacy_interrupts"] == 3 and dev.stats["interrupts_masked"] == 0
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_MASK, 4) == 0       # the register is faithful
    assert dev.bar_read(2, IRQ + R.XDMA_IRQ_USER_PENDING, 4) == 0
    # The first write to any user mask register (even one leaving it 0) selects XDMA gating.
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK_W1C, 4, 0xFFFF_FFFF)
    r.start(1, R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]))
    assert r.ctrl(1) == (0, 1) and dev.stats["interrupts_masked"] == 1
    assert r.irqs.count(R.engine_vector(1)) == 1
    dev.bar_write(2, IRQ + R.XDMA_IRQ_USER_MASK_W1S, 4, 0b10)
    assert r.command(R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]), n=1)[0] == 0
    r.start(0, R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]))
    assert dev.stats["interrupts_masked"] == 2      # engine 0 is still masked
    # A reset returns to power-on: legacy delivery again until the mask is written.
    dev.reset()
    assert r.command(R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]), n=2) == (0, 0)


def test_xdma_interrupt_mode_is_exact_from_power_on():
    with HermesDevice(irq_compat="xdma") as dev:
        r = Regs(dev, enable_irqs=False)
        r.start(0, R.CMD_REQUEST_SLOT, bytes([R.SLOT_DATA]))
        assert r.irqs == [] and dev.stats["interrupts_masked"] == 1
        assert dev.stats["legacy_interrupts"] == 0


@pytest.mark.parametrize("bad", ["auto", "", None, 1])
def test_bad_irq_compat_rejected(bad):
    with pytest.raises(ValueError, match="irq_compat"):
        HermesDevice(irq_compat=bad)

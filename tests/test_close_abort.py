"""Closing an owned device stops the programs still running on it (its only user is leaving)."""
from __future__ import annotations

import time

import pytest

from hermes import regs as R
from hermes.transport.inproc import InProcessTransport
from tests.test_device import Regs
from tests.test_device_slots import ABORT_BOUND, ENDLESS


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_owning_transport_close_stops_runaway_programs(engine):
    """InProcessTransport.close() of its own device returns within the abort bound, not budget."""
    t = InProcessTransport.create(executor=engine, engines=2, budget=1 << 62)
    dev = t.device
    r = Regs(dev)
    p, ds = r.load(ENDLESS)
    for n in range(2):
        r.start(n, R.CMD_RUN_PROGRAM, r.run_payload(p, ds, len(ENDLESS)))
    threads = [e.thread for e in dev._engines]
    t0 = time.monotonic()
    t.close()
    assert time.monotonic() - t0 < ABORT_BOUND
    assert not any(th.is_alive() for th in threads)
    assert dev.stats["aborted"] == 2

"""Driver: ``HermesFile.run_context`` (run_ex for a caller that checked its fields) and the
``RunArgs``/``RunOutcome`` classes (fast construction, the same dataclass behaviour)."""
from __future__ import annotations

import dataclasses
import enum
import errno
import pickle

import pytest

from hermes import regs
from hermes.driver import RunArgs, RunOutcome
from tests.test_driver import expect_errno
from tests.test_driver_runctx import ENTRY_REGS, OUTPUT_AND_PRINT, ready


def _same(a: RunOutcome, b: RunOutcome) -> None:
    """Equal outcomes but for the run's time and its command id."""
    assert dataclasses.replace(a, run_ns=0, response=a.response._replace(cmd_id=0)) == \
        dataclasses.replace(b, run_ns=0, response=b.response._replace(cmd_id=0))


def test_run_context_is_run_ex(hermes_file):
    ready(hermes_file, ENTRY_REGS)
    _same(hermes_file.run_context(100, 200, (1, 2, 3), 0, 0, None),
          hermes_file.run_ex(RunArgs(100, 200, (1, 2, 3))))
    _same(hermes_file.run_context(8, 8, (0, 0, 0), 500, 0, 5.0),
          hermes_file.run_ex(RunArgs(8, 8, budget=500, timeout=5.0)))
    # fields are taken modulo their widths, as RunArgs.context_words takes a negative argument
    assert hermes_file.run_context(0, 0, (-1, 0, 0), 0, 0, None).r0 == (1 << 64) - 256


def test_run_context_outcome_and_text(hermes_file):
    ready(hermes_file, OUTPUT_AND_PRINT)
    out = hermes_file.run_context(8, 64, (40, 0, 0), 0, 0, None)
    _same(out, hermes_file.run_ex(RunArgs(8, 64, (40,))))
    assert out.output_len == 40 and out.trace == b"n=40\n"


def test_run_context_errors(hermes_file, make_driver):
    expect_errno(errno.EBADFD, hermes_file.run_context, 0, 0, (0, 0, 0), 0, 0, None)
    hermes_file.download_program(ENTRY_REGS)
    expect_errno(errno.EBADFD, hermes_file.run_context, 0, 0, (0, 0, 0), 0, 0, None)
    hermes_file.pwrite(bytes(8), 0)
    # unchecked fields: the device refuses an input past the window (status 0x08)
    exc = expect_errno(errno.EINVAL, hermes_file.run_context, 9, 8, (0, 0, 0), 0, 0, None)
    assert exc.status == regs.STATUS_INVALID_CONTEXT
    assert hermes_file.run_context(1, 8, (0, 0, 0), 0, 0, None).r0 == 1
    hermes_file.close()
    expect_errno(errno.EBADF, hermes_file.run_context, 0, 0, (0, 0, 0), 0, 0, None)
    drv = make_driver(run_context=False)
    with drv.open() as f:
        ready(f, ENTRY_REGS)
        exc = expect_errno(errno.EOPNOTSUPP, f.run_context, 0, 8, (0, 0, 0), 0, 0, None)
        assert "EHCAP_RUNCTX" in exc.strerror


class Small(enum.IntEnum):
    EIGHT = 8


@pytest.mark.parametrize("run", [
    RunArgs(Small.EIGHT, Small.EIGHT), RunArgs(8, 8, [1, 2]), RunArgs(8, 8, (1,)),
    RunArgs(8, 8, (-1, -(1 << 63), (1 << 64) - 1)), RunArgs(8, 8, timeout=3),
    RunArgs(8, 8, budget=(1 << 64) - 1, entry=0xFFFF_FFFF, timeout=float("inf")),
])
def test_context_words_accept_what_the_checks_accept(run):
    # the common case passes one combined test; anything else goes through the checks, which
    # accept these too: the words are the codec's either way
    a = (tuple(run.args) + (0, 0, 0))[:3]
    assert run.context_words(1 << 20) == regs.RunContextIn.words(
        run.input_len, run.window, *a, run.budget, run.entry)


@pytest.mark.parametrize("run, what", [
    (RunArgs(8.0, 8), "input length"), (RunArgs(8, 8, (1.0, 0, 0)), "args"),
    (RunArgs(8, 8, (True, 0, 0)), "args"), (RunArgs(8, 8, (1 << 64, 0, 0)), "args"),
    (RunArgs(8, 8, timeout=float("nan")), "timeout"), (RunArgs(8, 8, timeout=True), "timeout"),
    (RunArgs(8, 8, budget=1 << 64), "budget"), (RunArgs(8, 8, "abc"), "args"),
    (RunArgs(8, 8, timeout=-1.0), "timeout"), (RunArgs(8, 1 << 21), "window"),
])
def test_context_words_refuse_what_the_checks_refuse(run, what):
    with pytest.raises(OSError) as info:
        run.context_words(1 << 20)
    assert info.value.errno == errno.EINVAL and what in info.value.strerror


def test_run_args_and_outcome_stay_frozen_dataclasses(hermes_file):
    run = RunArgs(8, 16, budget=5)
    assert run == RunArgs(input_len=8, window=16, args=(), budget=5, entry=0, timeout=None)
    assert hash(run) == hash(RunArgs(8, 16, (), 5))
    assert repr(run) == "RunArgs(input_len=8, window=16, args=(), budget=5, entry=0, timeout=None)"
    assert dataclasses.replace(run, window=32).window == 32
    assert pickle.loads(pickle.dumps(run)) == run
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.window = 1  # type: ignore[misc]
    ready(hermes_file, ENTRY_REGS)
    out = hermes_file.run_ex(RunArgs(8, 8))
    assert [f.name for f in dataclasses.fields(out)] == [
        "r0", "instructions", "output_len", "run_ns", "trace", "trace_dropped", "fault_address",
        "fault_size", "fault_write", "response", "fault_depth", "budget"]
    assert out == pickle.loads(pickle.dumps(out))
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.r0 = 1  # type: ignore[misc]
    assert RunOutcome(1, 2, None, 3, b"", 0, None, None, None, out.response) == \
        RunOutcome(r0=1, instructions=2, output_len=None, run_ns=3, trace=b"", trace_dropped=0,
                   fault_address=None, fault_size=None, fault_write=None,
                   response=out.response, fault_depth=None, budget=None)

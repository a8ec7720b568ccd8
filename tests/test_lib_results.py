"""Library: ``Result`` and ``RunInfo`` keep the behaviour of frozen dataclasses (attributes,
keyword construction, equality without the measurements, hash, repr, replace, pickling)."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

import hermes
from hermes import Result
from hermes.engine.asm import assemble_program
from hermes.lib.api import RunInfo


def test_result_is_a_frozen_dataclass():
    r = Result(7, b"abc", 2, 1.5e-6, "hi", offset=4, index=1, trace_dropped=3)
    assert (r.return_value, r.data, r.instructions, r.elapsed, r.trace, r.offset, r.index,
            r.trace_dropped) == (7, b"abc", 2, 1.5e-6, "hi", 4, 1, 3)
    assert [f.name for f in dataclasses.fields(r)] == [
        "return_value", "data", "instructions", "elapsed", "trace", "offset", "index",
        "trace_dropped"]
    # the measurements take no part in equality (nor in the hash)
    same = Result(7, b"abc", 99, 2.0, "hi", 4, 1, 3)
    assert r == same and hash(r) == hash(same)
    assert r != Result(7, b"abd", 2, 1.5e-6, "hi", offset=4, index=1, trace_dropped=3)
    assert Result(1, b"") == Result(return_value=1, data=b"", instructions=None, elapsed=None,
                                    trace="", offset=None, index=None, trace_dropped=0)
    assert repr(r) == ("Result(r0=7, data=3 bytes, instructions=2, elapsed=1.5us, "
                       "trace=2 chars, trace_dropped=3, index=1, offset=4)")
    moved = dataclasses.replace(r, offset=8, index=2)
    assert (moved.offset, moved.index, moved.data) == (8, 2, b"abc")
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.return_value = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Result(7)  # type: ignore[call-arg]


def test_run_info_is_a_frozen_dataclass():
    info = RunInfo(1, 2, None, 0.5)
    assert (info.return_value, info.instructions, info.output_length, info.elapsed,
            info.trace, info.trace_dropped) == (1, 2, None, 0.5, "", 0)
    assert info == RunInfo(return_value=1, instructions=2, output_length=None, elapsed=0.5)
    assert dataclasses.replace(info, trace="x").trace == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.trace = "y"  # type: ignore[misc]


def test_session_results_compare_as_before():
    prog = assemble_program("mov r0, 7\nexit")
    with hermes.open("emu") as dev, dev.session() as s:
        s.load(prog)
        s.write(b"abcdefgh")
        r = s.run()
        assert r == Result(7, b"abcdefgh") and r.instructions == 2 and r.elapsed > 0
        assert s.run(read=0) == Result(7, b"")

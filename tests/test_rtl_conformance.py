"""The conformance corpus on the RTL core (Amaranth simulation) matches the interpreter."""
from __future__ import annotations

import pytest

from hermes import engine
from hermes.conformance import load_corpus
from hermes.engine.helpers import CONFORMANCE_HELPERS
from hermes.errors import ExecutionError, ProgramError
from hermes.regs import EBPF_ERR_UNSUPPORTED

from .conftest import CONFORMANCE

pytest.importorskip("amaranth")
from hermes.rtl.sim import RtlSession  # noqa: E402

#: ELF cases test the host loader only; asm+raw cases test the assembler's encoding only.
CASES = [c for c in load_corpus([CONFORMANCE])
         if c.pyelf is None and not (c.asm is not None and c.raw is not None)] \
    if CONFORMANCE else []
#: The same budget for both engines, so a runaway program fails the same way on both.
BUDGET = 20_000


@pytest.fixture(scope="module", params=[False, True], ids=["2-cycle-loads", "forward-loads"])
def session(request):
    """One simulator per core variant for every case: elaborating once keeps the suite fast."""
    s = RtlSession(imem_depth=1024, dmem_bytes=4096, forward_loads=request.param)
    yield s
    s.close()


def _calls_helper(program) -> bool:
    return any(insn is not None and insn.op.form in ("call", "callx") for insn in program.insns)


@pytest.mark.parametrize("case", CASES, ids=[str(c.path.relative_to(CONFORMANCE)) for c in CASES])
def test_case_on_rtl(case, session):
    try:
        program = case.program()
        engine.load(program, helpers=CONFORMANCE_HELPERS, executor="interp")
    except ProgramError as exc:
        # the device's loader refuses it (status 0x05, load error) before the core starts
        assert case.expect_error, f"a valid program was rejected at load: {exc}"
        return
    memory = None if case.memory is None else bytes(case.memory)
    got = session.run(program, memory, budget=BUDGET, max_cycles=40 * BUDGET)
    assert not got.timeout
    if _calls_helper(program):
        # helpers live on the host: the core stops with the documented "unsupported" code,
        # at the first helper call it reaches (if it reaches one)
        if got.error is not None:
            assert got.error & 0xFF == EBPF_ERR_UNSUPPORTED, got.error_kind
        return
    try:
        want = engine.run(program, None if memory is None else bytearray(memory),
                          helpers=CONFORMANCE_HELPERS, budget=BUDGET, executor="interp")
    except ExecutionError as exc:
        assert got.error is not None, \
            f"interpreter failed ({exc}), RTL returned {got.return_value:#x}"
        assert got.error_kind == {"call_depth": "call_depth", "budget": "budget",
                                  "out_of_bounds": "out_of_bounds"}.get(exc.kind, got.error_kind)
        if exc.kind != "budget":   # the interpreter charges budget a basic block at a time
            assert got.error_pc == exc.pc
        return
    assert got.error is None, f"RTL failed ({got.error_kind} at pc {got.error_pc}), " \
                              f"interpreter returned {want.return_value:#x}"
    assert got.return_value == want.return_value
    if memory is not None:
        assert bytes(got.memory) == bytes(want.memory)
    assert got.instructions == want.instructions


def test_most_of_the_corpus_runs_on_rtl():
    """Guard against the skip list silently growing."""
    assert len(CASES) > 200

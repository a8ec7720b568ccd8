"""JIT calls: per-run state reused across runs, threads and nested runs, on both call paths."""
from __future__ import annotations

import threading

import pytest

import hermes.engine.jit as jit
from hermes.engine import Cancel, Program
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import CONFORMANCE_HELPERS, Helper, HelperRegistry, StopRun
from hermes.engine.jit import JitExecutable
from hermes.engine.memory import RODATA_BASE, RWDATA_BASE, Segment
from hermes.errors import BudgetExceeded, Cancelled, ExecutionError

BUDGET = 10_000_000
# r0 = sum 1..mem[0] (a loop) + r3; mem[8] = r0
SUM = ("mov r0, 0\nldxdw r6, [r1]\nloop:\nadd r0, r6\nsub r6, 1\njne r6, 0, loop\n"
       "add r0, r3\nstxdw [r1+8], r0\nexit")


def exe_of(text: str, helpers: HelperRegistry = CONFORMANCE_HELPERS, **kw) -> JitExecutable:
    return JitExecutable(assemble_program(text), helpers=helpers, budget=BUDGET, **kw)


@pytest.fixture(params=["native", "ctypes"])
def call_path(request, monkeypatch):
    """Every test runs through the native call and through its ctypes equivalent."""
    exe_of("mov r0, 0\nexit")  # picks the process's call function
    if request.param == "ctypes":
        monkeypatch.setattr(jit, "_call", jit._ctypes_call)
    return request.param


def test_the_native_call_is_in_use():
    exe_of("mov r0, 0\nexit")
    assert jit._call is not jit._ctypes_call


def test_four_threads_run_one_executable_with_different_inputs(call_path):
    exe = exe_of(SUM)
    errors: list[str] = []
    start = threading.Barrier(4)

    def work(k: int) -> None:
        start.wait(timeout=30)
        for i in range(200):
            n = 100 * k + i + 1
            mem = bytearray(n.to_bytes(8, "little") + bytes(8))
            result = exe.run(mem, args=(k,))
            want = n * (n + 1) // 2 + k
            if (result.return_value, int.from_bytes(mem[8:], "little")) != (want, want) \
                    or result.memory is not mem or result.instructions != 3 * n + 5:
                errors.append(f"thread {k} run {i}: {result}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors


def test_every_run_starts_with_a_zeroed_stack(call_path):
    exe = exe_of("ldxdw r0, [r10-8]\nmov r2, 99\nstxdw [r10-8], r2\nexit")
    assert [exe.run().return_value for _ in range(3)] == [0, 0, 0]


def test_writable_segments_start_fresh_and_read_only_ones_are_shared(call_path):
    ro = Segment(".rodata", RODATA_BASE, b"\x2a\0\0\0", False)
    rw = Segment(".data", RWDATA_BASE, b"\x05\0\0\0", True)
    code = assemble_program(f"lddw r1, {RODATA_BASE}\nldxw r0, [r1]\nlddw r2, {RWDATA_BASE}\n"
                            "ldxw r3, [r2]\nadd r0, r3\nadd r3, 1\nstxw [r2], r3\nexit")
    exe = JitExecutable(Program(code.to_bytes(), segments=(ro, rw)), helpers=CONFORMANCE_HELPERS,
                        budget=BUDGET)
    assert [exe.run().return_value for _ in range(3)] == [47, 47, 47]


def test_arguments_and_lengths_belong_to_their_run(call_path):
    exe = exe_of("mov r0, r3\nadd r0, r4\nadd r0, r5\nadd r0, r2\nexit")
    assert exe.run(args=(1, 2, 3)).return_value == 6
    assert exe.run().return_value == 0
    assert exe.run(bytearray(8), length=5, args=(7,)).return_value == 12
    assert exe.run(bytearray(8)).return_value == 8


def test_a_run_after_a_failed_one_is_unaffected(call_path):
    exe = exe_of("ldxdw r0, [r1+8]\nexit")
    with pytest.raises(ExecutionError) as info:
        exe.run(bytearray(8))
    assert info.value.kind == "out_of_bounds"
    mem = bytearray(16)
    mem[8] = 3
    assert exe.run(mem).return_value == 3
    with pytest.raises(BudgetExceeded):
        exe.run(mem, budget=0)
    assert exe.run(mem).instructions == 2


def test_helper_records_belong_to_their_run(call_path):
    def stop_or_note(ctx, a, b, c, d, e):
        if a:
            raise StopRun(a)
        ctx.run.emit(b"note")
        ctx.run.output_length = 4
        return 0
    helpers = HelperRegistry([Helper(9, "note", stop_or_note)])
    exe = exe_of("mov r1, r3\ncall 9\nmov r0, 7\nexit", helpers)
    first = exe.run(args=(0,))
    assert (first.return_value, first.trace, first.output_length) == (7, b"note", 4)
    stopped = exe.run(args=(5,))
    assert (stopped.return_value, stopped.trace, stopped.output_length) == (5, b"", None)
    assert stopped.instructions == first.instructions
    again = exe.run(args=(0,))
    assert (again.trace, again.trace_dropped, again.output_length) == (b"note", 0, 4)


def test_a_helper_may_run_the_same_executable_again(call_path):
    box: dict[str, JitExecutable] = {}

    def nested(ctx, a, b, c, d, e):
        return box["exe"].run(args=(a - 1,)).return_value + 100 if a else 0
    helpers = HelperRegistry([Helper(9, "nested", nested)])
    mem = bytearray(8)
    exe = box["exe"] = exe_of("mov r6, r3\nmov r1, r3\ncall 9\nadd r0, r6\nexit", helpers)
    # 3 -> 2 -> 1 -> 0: each level adds 100 and its own r3
    assert exe.run(mem, args=(3,)).return_value == 3 * 100 + 3 + 2 + 1
    assert exe.run(mem, args=(0,)).return_value == 0


def test_a_cancelled_run_leaves_the_next_one_its_budget(call_path):
    exe = exe_of("mov r0, 1\nloop:\nadd r0, 1\nja loop")
    flag = Cancel()
    flag.set()
    with pytest.raises(Cancelled):
        exe.run(cancel=flag)
    with pytest.raises(BudgetExceeded) as info:
        exe.run(budget=1000)
    assert "budget of 1000" in str(info.value)


def test_a_late_cancellation_hook_does_not_stop_a_later_run():
    exe = exe_of("mov r0, 5\nexit")
    flag = Cancel()
    assert exe.run(cancel=flag).return_value == 5
    state = exe._free[-1]
    flag.set()
    state.stop()  # as the flag's hook firing after its run ended
    assert exe.run().return_value == 5
    other = Cancel()
    state.cancel = other
    state.stop()  # ... or while a later run of the state watches another flag, still unset
    state.cancel = None
    assert exe.run(cancel=other).return_value == 5


def test_the_data_window_is_released_after_a_failed_run(call_path):
    exe = exe_of("ldxdw r0, [r1+64]\nexit")
    mem = bytearray(8)
    with pytest.raises(ExecutionError) as info:
        exe.run(mem)
    assert info.value.kind == "out_of_bounds"
    mem.extend(b"grown")  # no buffer export outlives the run, even with its traceback alive


def test_buffers_other_than_bytearray_and_memoryview_run_in_place(call_path):
    import array
    exe = exe_of("stb [r1], 7\nmov r0, r2\nexit")
    buf = array.array("B", bytes(4))
    result = exe.run(buf)
    assert result.memory is buf and buf[0] == 7 and result.return_value == 4

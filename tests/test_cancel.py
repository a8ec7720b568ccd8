"""Cancellation: a run given a ``Cancel`` flag stops soon after another thread sets it."""
from __future__ import annotations

import threading
import time

import pytest

from hermes.engine import Cancel, load
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c, find_clang
from hermes.engine.elf import load_elf
from hermes.engine.helpers import CONFORMANCE_HELPERS, DEVICE_HELPERS
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable
from hermes.engine.program import Program
from hermes.errors import Cancelled, ExecutionError

#: Budget large enough that only cancellation can end the endless loops below.
ENDLESS = (1 << 63) - 1
ENGINES = ("interp", "jit-quick", "jit-full")

# a two-block loop that never ends (the `ja -1` self-loop itself is rejected at load)
SPIN = "mov r0, 0\nspin:\nadd r0, 1\nja back\nback:\nja spin\nexit"
# an endless loop with memory traffic that the JIT runs as a check-free fast loop in chunks
WALK = """mov r0, 0
mov r6, 0
loop:
mov r3, r6
and r3, 63
add r3, r1
ldxb r4, [r3]
add r0, r4
stxb [r3], r0
add r6, 1
jne r6, 0, loop
exit
"""
# the same loop as a local function called from the entry function (cancel at depth 1)
DEEP = "mov r0, 0\ncall local f\nexit\nf:\nmov r0, 0\nloop:\nstxdw [r10-8], r0\nadd r0, 1\n" \
       "ja loop\nexit\n"


def executable(program: Program, engine: str):
    """The program prepared for one engine: the interpreter or one JIT tier."""
    if engine == "interp":
        return Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=ENDLESS)
    return JitExecutable(program, helpers=CONFORMANCE_HELPERS, budget=ENDLESS,
                         tier=engine.removeprefix("jit-"))


def cancel_after(exe, memory, delay: float) -> tuple[BaseException | None, float]:
    """Run ``exe`` in a thread, set the flag after ``delay``; (exception, seconds to stop)."""
    flag = Cancel()
    out: list = []

    def target() -> None:
        try:
            exe.run(memory, cancel=flag)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out.append(exc)
        else:
            out.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    time.sleep(delay)
    t0 = time.perf_counter()
    flag.set()
    thread.join(10)
    stopped = time.perf_counter() - t0
    assert not thread.is_alive(), "the run did not stop within 10 s of cancellation"
    return out[0], stopped


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("text", [SPIN, WALK, DEEP], ids=["spin", "walk", "depth"])
def test_endless_loop_stops_within_a_second(engine, text):
    exe = executable(assemble_program(text), engine)
    exc, stopped = cancel_after(exe, bytearray(64), 0.3)
    assert isinstance(exc, Cancelled) and isinstance(exc, ExecutionError)
    assert exc.kind == "cancelled" and exc.pc is not None and f"at pc {exc.pc}" in str(exc)
    assert stopped < 1.0


# an endless loop of long helper calls (hermes_memset over 1 MiB): few instructions, much time
HELPER_LOOP = "mov r6, r1\nloop:\nmov r1, r6\nmov r2, 0\nmov r3, 1048576\ncall 4096\nja loop\nexit"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_loop_of_long_helper_calls_stops_within_a_second(engine):
    """Polling counts instructions; a cancelled run also stops at its next helper call."""
    program = assemble_program(HELPER_LOOP)
    if engine == "interp":
        exe = Interpreter(program, helpers=DEVICE_HELPERS, budget=ENDLESS)
    else:
        exe = JitExecutable(program, helpers=DEVICE_HELPERS, budget=ENDLESS,
                            tier=engine.removeprefix("jit-"))
    exc, stopped = cancel_after(exe, bytearray(1 << 20), 0.3)
    assert isinstance(exc, Cancelled) and exc.pc == 4
    assert stopped < 1.0


C_ENDLESS = r"""
unsigned long spin(unsigned char *mem, unsigned long len)
{
    unsigned long i = 0, acc = 0;
    while (1) {
        acc = acc * 31 + mem[i % len];
        mem[(i * 7) % len] = (unsigned char)acc;
        i++;
    }
    return acc;
}
"""


@pytest.mark.skipif(find_clang() is None, reason="clang not found: apt-get install clang")
@pytest.mark.parametrize("engine", ENGINES)
def test_clang_while_true_with_memory_traffic_stops(engine, tmp_path):
    src = tmp_path / "spin.c"
    src.write_text(C_ENDLESS)
    program = load_elf(compile_c(src, tmp_path / "spin.o"))
    exc, stopped = cancel_after(executable(program, engine), bytearray(256), 0.3)
    assert isinstance(exc, Cancelled), exc
    assert stopped < 1.0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_flag_set_before_the_run_stops_it_at_the_start(engine):
    flag = Cancel()
    flag.set()
    flag.set()  # idempotent
    exe = executable(assemble_program(SPIN), engine)
    with pytest.raises(Cancelled) as info:
        exe.run(None, cancel=flag)
    assert info.value.pc == 0 and info.value.instructions == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_an_unset_flag_changes_nothing(engine):
    """Same r0, memory, count and errors as a run without a flag, also at the budget's edge."""
    text = WALK.replace("jne r6, 0, loop", "jne r6, 300000, loop")
    program = assemble_program(text)
    exe = executable(program, engine)
    for budget in (None, 7, 2_000_000, 2_400_002, 2_400_003):
        outcomes = []
        for flag in (None, Cancel()):
            mem = bytearray(range(64))
            try:
                res = exe.run(mem, budget, cancel=flag)
                outcomes.append((res.return_value, res.instructions, bytes(mem)))
            except ExecutionError as exc:
                outcomes.append((type(exc), exc.kind, exc.pc, exc.instructions, bytes(mem)))
        assert outcomes[0] == outcomes[1], budget
    ref = Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=ENDLESS).run(bytearray(64))
    assert ref.instructions == 300000 * 8 + 3


def test_one_flag_stops_every_run_it_was_given():
    program = assemble_program(SPIN)
    exes = [executable(program, e) for e in ENGINES]
    flag = Cancel()
    errors: list = []

    def target(exe) -> None:
        try:
            exe.run(None, cancel=flag)
        except Cancelled as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(exe,), daemon=True) for exe in exes * 2]
    for t in threads:
        t.start()
    time.sleep(0.3)
    flag.set()
    for t in threads:
        t.join(5)
    assert len(errors) == len(threads)


def test_load_and_run_accept_cancel_for_every_engine():
    from hermes.engine import executor_names, run
    for name in executor_names():
        exe = load(assemble_program("mov r0, 5\nexit"), executor=name)
        assert exe.run(None, None, cancel=Cancel()).return_value == 5
        assert run(assemble_program("mov r0, 6\nexit"), executor=name,
                   cancel=Cancel()).return_value == 6


def test_watch_hooks_run_once_and_unwatch_stops_them():
    flag = Cancel()
    calls: list[str] = []
    a = flag.watch(lambda: calls.append("a"))
    b = flag.watch(lambda: calls.append("b"))
    flag.unwatch(b)
    flag.unwatch(12345)
    flag.set()
    flag.set()
    assert calls == ["a"] and flag.is_set()
    flag.watch(lambda: calls.append("late"))  # already set: called at once
    assert calls == ["a", "late"]
    flag.unwatch(a)

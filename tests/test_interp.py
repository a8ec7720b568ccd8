"""Reference interpreter: sandbox, errors, budget, calls, helpers, program data, threads."""
from __future__ import annotations

import threading

import pytest

from hermes import BudgetExceeded, ExecutionError, Program, ProgramError
from hermes.engine import CONFORMANCE_HELPERS, load, run
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import Helper, HelperRegistry
from hermes.engine.interp import bswap, sdiv, smod
from hermes.engine.memory import DATA_BASE, RODATA_BASE, RWDATA_BASE, STACK_TOP, Segment


def asm(text: str) -> Program:
    return assemble_program(text)


def test_r1_r2_describe_the_input_region():
    r = run(asm("mov r0, r2\nexit"), bytearray(37))
    assert r.return_value == 37
    assert run(asm("mov r0, r1\nexit"), b"x").return_value == DATA_BASE
    assert run(asm("mov r0, r1\nadd r0, r2\nexit")).return_value == 0


def test_writable_memory_is_changed_in_place_and_bytes_are_copied():
    buf = bytearray(8)
    r = run(asm("stdw [r1], -1\nmov r0, 0\nexit"), buf)
    assert buf == b"\xff" * 8 and r.memory is buf
    src = bytes(8)
    r = run(asm("stdw [r1], -1\nmov r0, 0\nexit"), src)
    assert src == bytes(8) and bytes(r.memory) == b"\xff" * 8


def test_memoryview_of_a_larger_buffer_only_exposes_the_view():
    big = bytearray(16)
    view = memoryview(big)[4:8]
    with pytest.raises(ExecutionError):
        run(asm("stw [r1+4], 1\nmov r0, 0\nexit"), view)
    run(asm("stw [r1], 0x01020304\nmov r0, 0\nexit"), view)
    assert big[4:8] == bytes([4, 3, 2, 1]) and big[:4] == bytes(4) and big[8:] == bytes(8)


@pytest.mark.parametrize("text, address, size", [
    ("ldxw r0, [r1+6]\nexit", DATA_BASE + 6, 4),
    ("stb [r1+8], 1\nmov r0, 0\nexit", DATA_BASE + 8, 1),
    ("ldxdw r0, [r10]\nexit", STACK_TOP, 8),
    ("ldxdw r0, [r10-520]\nexit", STACK_TOP - 520, 8),
    ("mov r2, 0\nldxb r0, [r2]\nexit", 0, 1),
])
def test_out_of_bounds_accesses_report_pc_address_size(text, address, size):
    with pytest.raises(ExecutionError) as info:
        run(asm(text), bytearray(8))
    e = info.value
    assert e.kind == "out_of_bounds" and e.address == address and e.size == size
    assert e.pc == text.count("\n", 0, text.index("[")) and "data [" in e.regions


def test_failed_store_leaves_memory_untouched():
    buf = bytearray(b"abcdefgh")
    with pytest.raises(ExecutionError):
        run(asm("stb [r1], 0x41\nstdw [r1+4], 0\nmov r0, 0\nexit"), buf)
    assert buf == b"Abcdefgh"  # the first store happened, the faulting one did not


def test_budget_stops_a_loop_with_a_clear_error():
    p = asm("mov r0, 0\nl: add r0, 1\nja l")
    with pytest.raises(BudgetExceeded, match="budget of 1000"):
        run(p, budget=1000)


def test_self_jump_is_rejected_at_load():
    with pytest.raises(ProgramError, match="infinite loop"):
        run(asm("mov r0, 0\nja -1\nexit"))


def test_instruction_count_counts_lddw_once():
    r = run(asm("lddw r0, 5\nmov r1, 2\nexit"))
    assert r.instructions == 3


def test_local_calls_get_fresh_frames_and_keep_callee_saved_registers():
    p = asm("""
        mov r6, 7
        stdw [r10-8], 11
        mov r1, 5
        call local f
        ldxdw r2, [r10-8]
        add r0, r2
        add r0, r6
        exit
    f:  stdw [r10-8], 100
        mov r6, 1000
        mov r0, r1
        mov r3, r10
        exit
    """)
    assert run(p).return_value == 5 + 11 + 7


def test_call_depth_is_limited():
    p = asm("mov r0, 0\ncall local f\nexit\nf: call local f\nexit")
    with pytest.raises(ExecutionError, match="call depth") as info:
        run(p)
    assert info.value.kind == "call_depth"


def test_r10_is_read_only_at_load():
    with pytest.raises(ProgramError, match="r10"):
        run(asm("mov r10, 1\nmov r0, 0\nexit"))


def test_uninitialised_r0_at_exit_is_rejected():
    with pytest.raises(ProgramError, match="r0") as info:
        run(asm("jeq r1, 0, +1\nmov r0, 1\nexit"))
    assert info.value.index == 2


def test_fall_through_off_the_end_is_rejected():
    with pytest.raises(ProgramError, match="fall through"):
        run(asm("mov r0, 0"))


def test_unknown_helper_is_rejected_at_load_and_callx_at_run_time():
    with pytest.raises(ProgramError, match="unknown helper id 99"):
        run(asm("call 99\nexit"), helpers=CONFORMANCE_HELPERS)
    with pytest.raises(ExecutionError, match="unknown helper id 99"):
        run(asm("mov r3, 99\ncallx r3\nexit"), helpers=CONFORMANCE_HELPERS)


def test_helpers_get_bounds_checked_memory():
    buf = bytearray(b"\x01\x02\x03")
    r = run(asm("mov r2, 3\ncall 1\nexit"), buf, helpers=CONFORMANCE_HELPERS)
    assert r.return_value == 0 and buf == bytes([1 ^ 42, 2 ^ 42, 3 ^ 42])
    with pytest.raises(ExecutionError, match="out-of-bounds") as info:
        run(asm("mov r2, 4\ncall 1\nexit"), buf, helpers=CONFORMANCE_HELPERS)
    assert info.value.pc == 1


def test_a_failing_helper_is_an_execution_error():
    def boom(ctx, *args):
        raise ValueError("nope")
    reg = HelperRegistry([Helper(7, "boom", boom)])
    with pytest.raises(ExecutionError, match="helper boom failed: nope"):
        run(asm("call 7\nexit"), helpers=reg)


def test_program_data_segments():
    ro = Segment(".rodata", RODATA_BASE, b"\x2a\0\0\0", False)
    rw = Segment(".data", RWDATA_BASE, b"\x05\0\0\0", True)
    code = assemble_program(f"""
        lddw r1, {RODATA_BASE}
        ldxw r0, [r1]
        lddw r2, {RWDATA_BASE}
        ldxw r3, [r2]
        add r0, r3
        add r3, 1
        stxw [r2], r3
        exit
    """).to_bytes()
    p = Program(code, segments=(ro, rw))
    exe = load(p)
    assert exe.run().return_value == 47
    assert exe.run().return_value == 47  # .data starts fresh on every run
    bad = Program(assemble_program(f"lddw r1, {RODATA_BASE}\nstw [r1], 1\nmov r0, 0\nexit")
                  .to_bytes(), segments=(ro,))
    with pytest.raises(ExecutionError, match="read-only .rodata"):
        run(bad)


def test_one_executable_runs_in_many_threads():
    exe = load(asm("""
        mov r0, 0
        mov r3, 0
    l:  ldxb r4, [r1]
        add r0, r4
        add r3, 1
        jlt r3, 2000, l
        exit
    """))
    results = {}

    def worker(k: int) -> None:
        results[k] = exe.run(bytearray([k])).return_value

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: k * 2000 for k in range(8)}


@pytest.mark.parametrize("a, b, bits, q, r", [
    (7, 2, 64, 3, 1),
    ((-7) & (2**64 - 1), 2, 64, (-3) & (2**64 - 1), (-1) & (2**64 - 1)),
    (7, (-2) & (2**64 - 1), 64, (-3) & (2**64 - 1), 1),
    (1 << 63, (2**64 - 1), 64, 1 << 63, 0),
    (1 << 31, 0xFFFFFFFF, 32, 1 << 31, 0),
    (5, 0, 32, 0, 5),
])
def test_signed_division_follows_rfc9669(a, b, bits, q, r):
    assert sdiv(a, b, bits) == q
    assert smod(a, b, bits) == r


def test_bswap():
    assert bswap(0x1122334455667788, 16) == 0x8877
    assert bswap(0x1122334455667788, 32) == 0x88776655
    assert bswap(0x1122334455667788, 64) == 0x8877665544332211


def _same_as_reference(program: Program, memory: bytes, budget: int) -> None:
    """interp and the reference agree on r0, memory and count, or on the error and its count."""
    from hermes.engine.interp import Interpreter
    from hermes.engine.reference import Reference
    outcomes = []
    for cls in (Interpreter, Reference):
        exe = cls(program, helpers=CONFORMANCE_HELPERS, budget=budget)
        buf = bytearray(memory)
        try:
            r = exe.run(buf)
            outcomes.append(("ok", r.return_value, r.instructions, bytes(buf)))
        except ExecutionError as e:
            outcomes.append((e.kind, e.pc, e.instructions, getattr(e, "address", None),
                             getattr(e, "size", None), bytes(buf)))
    assert outcomes[0] == outcomes[1]


def test_programs_of_several_chunks_match_the_reference():
    # a loop and a call that cross chunk boundaries, with every budget cut in the loop
    from hermes.engine.interp import CHUNK
    pad = "\n".join(["add r0, 1"] * (CHUNK + 5))
    text = (f"mov r0, 0\nmov r6, 0\ntop:\n{pad}\nadd r6, 1\nmov r1, r6\ncall local fn\n"
            f"jlt r6, 3, top\nexit\nfn:\nmov r7, r1\nadd r7, r7\nstxdw [r10-8], r7\n"
            f"ldxdw r0, [r10-8]\n{pad}\nexit")
    program = asm(text)
    _same_as_reference(program, bytes(16), 1 << 20)
    for budget in (CHUNK // 2, CHUNK + 7, 2 * CHUNK + 20, 3 * CHUNK):
        _same_as_reference(program, bytes(16), budget)


@pytest.mark.parametrize("text", [
    "mov r7, r1\nadd r7, r7\nmov r0, r7\nexit",        # a move folded into an op on itself
    "mov r7, r1\nmov r7, r2\nmov r0, r7\nexit",        # a move overwritten by a move
    "mov r0, 2\nmov r7, r1\nadd r0, r7\nmov r0, r7\nsub r0, 5\nexit",  # a move read next
    "mov r0, 0\nsub r0, 1\nadd r0, 2\nlsh r0, 63\nadd r0, r0\nexit",  # wrapping add and sub
    "mov32 r0, -1\nadd32 r0, 1\nmov r3, r0\nadd32 r3, -1\nmov r0, r3\nexit",
])
def test_straight_line_arithmetic_matches_the_reference(text):
    _same_as_reference(asm(text), bytes(8), 100)


def test_budget_cut_inside_an_inlined_loop_matches_the_reference():
    text = ("mov r0, 0\nmov r2, 0\nl: add r2, 1\njgt r2, 50, out\nand r0, 1\n"
            "jeq r0, 0, even\nadd r0, 3\nja l\neven: add r0, 1\nja l\nout: exit")
    for budget in range(1, 120, 7):
        _same_as_reference(asm(text), bytes(8), budget)


def test_folded_alu_chains_match_the_reference():
    # runs of 64-bit steps on one register, written as one expression with one mask
    import random
    rng = random.Random(16)
    ops = ["add", "sub", "mul", "lsh", "rsh", "and", "or", "xor"]
    imms = [0, 1, 7, 63, 64, -1, -4, -4096, 0x7FFFFFFF, -0x80000000]
    for _ in range(60):
        lines = [f"ldxdw r{k}, [r1+{8 * k}]" for k in range(2, 6)]
        for _ in range(rng.randrange(4, 20)):
            d = rng.randrange(2, 6)
            if rng.random() < 0.2:
                lines.append(f"mov r{d}, r{rng.randrange(2, 6)}")
            op = rng.choice(ops)
            if rng.random() < 0.5 and op not in ("lsh", "rsh"):
                lines.append(f"{op} r{d}, {rng.choice(imms)}")
            elif op in ("lsh", "rsh"):
                lines.append(f"{op} r{d}, {rng.randrange(64)}")
            else:
                lines.append(f"{op} r{d}, r{rng.choice([k for k in range(2, 6) if k != d])}")
        lines += ["mov r0, r2", "xor r0, r3", "add r0, r4", "xor r0, r5", "stxdw [r1], r0",
                  "exit"]
        memory = bytes(rng.randrange(256) for _ in range(48))
        _same_as_reference(asm("\n".join(lines)), memory, 1000)


@pytest.mark.parametrize("size, mnem", [(2, "h"), (4, "w"), (8, "dw")])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 6, 7, 8])
def test_aligned_and_unaligned_words_match_the_reference(size, mnem, offset):
    # words of the slot and the stack, through the word views or unpacked, signed or not
    text = (f"mov r6, r1\nadd r6, {offset}\nldx{mnem} r2, [r6+0]\nstx{mnem} [r6+16], r2\n"
            f"st{mnem} [r6+32], -3\nmov r7, r10\nadd r7, -{32 - offset}\n"
            f"stx{mnem} [r7+0], r2\nldx{mnem} r3, [r7+0]\nstx{mnem} [r10-{24 - offset}], r3\n"
            f"ldx{mnem} r4, [r10-{24 - offset}]\n"
            + (f"ldxs{mnem} r5, [r6+32]\n" if size < 8 else "mov r5, 0\n")
            + "mov r0, r2\nadd r0, r3\nadd r0, r4\nxor r0, r5\nexit")
    memory = bytes((0x80 + 37 * k) & 0xFF for k in range(48))
    _same_as_reference(asm(text), memory, 100)


def test_every_budget_cut_in_a_trace_matches_the_reference():
    # the trace of the loop tests its limit once, for all its inlined blocks: any budget must
    # still stop at the block the reference stops at
    text = ("mov r0, 0\nmov r2, 0\nl: add r2, 1\njgt r2, 20, out\nstxb [r1+1], r2\n"
            "jset r2, 1, odd\nadd r0, 3\nldxb r3, [r1+1]\nadd r0, r3\nja l\n"
            "odd: add r0, 1\nja l\nout: exit")
    for budget in range(0, 160):
        _same_as_reference(asm(text), bytes(8), budget)


def test_the_slot_can_be_resized_after_a_run():
    # the word views of the slot are released at the end of a run, a failed one too
    buf = bytearray(16)
    run(asm("stdw [r1], 1\nmov r0, 0\nexit"), buf, executor="interp")
    buf.extend(bytes(8))
    with pytest.raises(ExecutionError) as info:
        run(asm("ldxdw r0, [r1+24]\nexit"), buf, executor="interp")
    buf.extend(bytes(8))  # while the error, and its traceback's frames, are still alive
    assert len(buf) == 32 and info.value.kind == "out_of_bounds"


@pytest.mark.parametrize("steps, a, b", [
    ("mov r5, r4\nadd r5, r1\nadd r5, r6", 1 << 63, (1 << 63) + 2),    # wraps into the slot
    ("mov r5, r4\nadd r5, r1\nadd r5, r6", 1 << 63, (1 << 63) + (1 << 40)),  # wraps, faults
    ("mov r5, r1\nsub r5, 8", 0, 0),                                    # below, then back in
    ("mov r5, r4\nsub r5, r6", 5, 9),                                   # negative: faults
    ("mov r5, r4\nmul r5, r6\nadd r5, r1", 1 << 40, 1 << 30),           # product wraps to 0
])
def test_a_load_through_an_address_it_overwrites_matches_the_reference(steps, a, b):
    # the address of "ldxb r5, [r5+off]" after a run of steps on r5 is used without masking
    text = f"ldxdw r4, [r1+0]\nldxdw r6, [r1+8]\n{steps}\nldxb r5, [r5+9]\nmov r0, r5\nexit"
    memory = a.to_bytes(8, "little") + b.to_bytes(8, "little") + bytes(range(1, 17))
    _same_as_reference(asm(text), memory, 100)

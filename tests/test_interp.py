"""Reference interpreter: sandbox, errors, budget, calls, helpers, program data, threads."""
from __future__ import annotations

import threading

import pytest

from hermes import BudgetExceeded, ExecutionError, Program, ProgramError
from hermes.engine import CONFORMANCE_HELPERS, load, run
from hermes.engine.asm import assemble_program
from hermes.engine.helpers import Helper, HelperRegistry
from hermes.engine.interp import _chunk_source, bswap, sdiv, smod
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


def _random_block_program(rng, n: int) -> str:
    """Random straight-line and branching code over r0..r9: 64- and 32-bit ALU steps (moves
    between registers among them), loads and stores through r1-based pointers (some out of
    the slot), forward branches and one backward one (a loop that only the budget may end)."""
    ops64 = ["add", "sub", "mul", "lsh", "rsh", "and", "or", "xor", "mov", "arsh", "div", "mod",
             "neg"]
    imms = [0, 1, 2, 7, 32, 63, -1, -4, -4096, 0x7FFFFFFF, -0x80000000, 255]
    lines = ["ldxdw r2, [r1+0]", "ldxdw r3, [r1+8]", "ldxw r4, [r1+16]", "ldxb r5, [r1+20]",
             "mov r6, r1", "mov r7, 0", "mov r8, -1", "mov r9, 3", "mov r0, 0", "top:"]
    labels = 0
    for k in range(n):
        d = rng.randrange(0, 10)
        d = 6 if d == 1 else d  # r1 stays the slot's address
        roll = rng.random()
        if roll < 0.55:
            op = rng.choice(ops64) + ("32" if rng.random() < 0.25 else "")
            if op.startswith("neg"):
                lines.append(f"{op} r{d}")
            elif op.startswith(("lsh", "rsh", "arsh")) and rng.random() < 0.6:
                lines.append(f"{op} r{d}, {rng.randrange(64 if '32' not in op else 32)}")
            elif rng.random() < 0.5:
                lines.append(f"{op} r{d}, {rng.choice(imms)}")
            else:
                lines.append(f"{op} r{d}, r{rng.randrange(0, 10)}")
        elif roll < 0.65:
            lines.append(f"lddw r{d}, {rng.choice([1 << 63, (1 << 64) - 3, 0x1_0000_0000])}")
        elif roll < 0.75:
            size = rng.choice(["b", "h", "w", "dw"])
            base = rng.choice(["r1", "r6"])
            lines.append(f"ldx{size} r{d}, [{base}+{rng.randrange(-2, 30)}]")
        elif roll < 0.85:
            size = rng.choice(["b", "h", "w", "dw"])
            base = rng.choice(["r1", "r6"])
            lines.append(f"stx{size} [{base}+{rng.randrange(-2, 30)}], r{rng.randrange(0, 10)}")
        elif roll < 0.97:
            labels += 1
            cond = rng.choice(["jeq", "jne", "jgt", "jlt", "jsgt", "jsle", "jset", "jeq32"])
            lines.append(f"{cond} r{d}, {rng.choice(imms)}, L{labels}")
            lines += [f"add r{rng.randrange(2, 10)}, 1", f"L{labels}:"]
        else:
            lines += ["sub r9, 1", "jne r9, 0, top"]
        if k == n // 2:
            lines.append("mov r6, r1")  # the pointer back into the slot
    lines += ["xor r0, r2", "add r0, r3", "xor r0, r4", "add r0, r5", "xor r0, r7",
              "add r0, r8", "stxdw [r1+24], r0", "exit"]
    return "\n".join(lines)


def test_random_blocks_match_the_reference_with_every_kind_of_stop():
    # pending values, liveness, ranges and merged budget updates against the reference: results,
    # faults (their pc, address and count) and budgets stopping anywhere
    import random
    rng = random.Random(1969)
    for _ in range(150):
        text = _random_block_program(rng, rng.randrange(4, 30))
        memory = bytes(rng.randrange(256) for _ in range(rng.choice((24, 32, 40))))
        program = asm(text)
        _same_as_reference(program, memory, 2000)
        for budget in rng.sample(range(1, 120), 4):
            _same_as_reference(program, memory, budget)


@pytest.mark.parametrize("text", [
    # a pending address read by the fault report (the value is never written)
    "mov r5, r1\nadd r5, 100\nldxb r0, [r5+0]\nexit",
    "mov r5, r1\nlsh r5, 1\nsub r5, r1\nadd r5, -9\nldxb r0, [r5+3]\nexit",
    # a store whose pending value and address fold, then a fault
    "mov r2, r1\nadd r2, 8\nmov r3, 7\nmul r3, 3\nstxb [r2+0], r3\nldxdw r0, [r2+8]\nexit",
    # a dead value, then a fault at a register that wraps past 2**64 into the slot
    "lddw r4, 0xffffffffffffffff\nmov r7, r4\nadd r7, r1\nmov r7, 5\nadd r4, r1\n"
    "ldxb r0, [r4+1]\nldxb r0, [r4+100]\nexit",
])
def test_folded_values_seen_by_faults_match_the_reference(text):
    _same_as_reference(asm(text), bytes(16), 100)


@pytest.mark.parametrize("text", [
    "mov r3, r1\nmov r1, r2\nmov r2, r3\nmov r0, r1\nsub r0, r2\nexit",  # a swap by moves
    # values that read each other's locals, written when a 32-bit op overwrites one
    "mov r2, 5\nmov r3, 9\nmov r4, r2\nmov r2, r3\nmov r3, r4\nadd32 r4, r2\n"
    "mov r0, r2\nlsh r0, 8\nor r0, r3\nlsh r0, 8\nor r0, r4\nexit",
    "mov r2, r1\nadd r2, r2\nmov r3, r2\nmul r3, r3\nmov r0, r3\nxor r0, r2\nexit",
    # (x << k) >> k of a loaded word, and a 32-bit op on a pending 64-bit value
    "ldxdw r2, [r1+0]\nlsh r2, 40\nrsh r2, 40\nmov r3, r2\nadd r3, -1\nadd32 r3, 1\n"
    "mov r0, r3\nadd r0, r2\nexit",
    # values known in range: a byte plus a constant, an address plus one, a sum of words
    "ldxb r2, [r1+0]\nadd r2, 0x7fffffff\nmov r3, r1\nldxb r4, [r3+1]\nadd r3, 1\n"
    "sub r3, r1\nldxw r5, [r1+4]\nldxw r6, [r1+8]\nadd r5, r6\nmov r0, r2\nadd r0, r3\n"
    "add r0, r4\nadd r0, r5\nexit",
    # a store and a load at one address (one _i), then the base moves and they repeat
    "mov r7, r1\nldxw r8, [r7+4]\nadd r8, 1\nstxw [r7+4], r8\nadd r7, 2\nldxw r8, [r7+4]\n"
    "add r8, 1\nstxw [r7+4], r8\nldxdw r0, [r1+0]\nexit",
    # a pending copy of a register a load then overwrites
    "ldxb r3, [r1+1]\nmov r2, r3\nldxb r3, [r1+0]\nmov r0, r2\nlsh r0, 8\nor r0, r3\nexit",
    "ldxb r3, [r1+1]\nmov r2, r3\nadd r2, 5\nmov r4, r2\nldxb r2, [r1+2]\nmov r0, r4\n"
    "lsh r0, 8\nor r0, r2\nexit",
    # ranges carried into a block only earlier blocks jump to: the widest of them
    "ldxb r2, [r1+0]\njgt r2, 100, big\nadd r2, 1\nja join\nbig:\nldxh r2, [r1+2]\njoin:\n"
    "add r2, -1\nmov r0, r2\nexit",
    "ldxb r2, [r1+0]\njgt r2, 100, big\nja join\nbig:\nldxdw r2, [r1+8]\njoin:\n"
    "add r2, 1\nmov r0, r2\nexit",
    # a shift whose range reaches 2**64 exactly: 256 << 56 wraps to 0
    "ldxb r2, [r1+0]\nadd r2, 1\nlsh r2, 56\nmov r0, r2\nrsh r0, 1\nexit",
])
def test_pending_values_and_ranges_match_the_reference(text):
    memory = bytes([0xFF, 0x80, 0xFE, 0xFF]) + bytes(range(240, 244)) + bytes([0xFF]) * 8
    _same_as_reference(asm(text), memory, 100)


def test_registers_live_after_a_call_match_the_reference():
    # the callee's r0 is live at its exit; its r6..r9 come back from the frame, so the
    # callee's own values there are dead
    text = ("mov r6, 11\nmov r1, 3\nmov r7, 4\ncall local fn\nadd r0, r6\nadd r0, r7\n"
            "exit\n"
            "fn:\nmov r6, r1\nadd r6, 100\nmov r7, 1\nmov r2, r1\nmul r2, 3\nmov r1, 40\n"
            "mov r0, r2\nadd r0, r6\nexit")
    _same_as_reference(asm(text), bytes(8), 100)
    for budget in range(1, 20):
        _same_as_reference(asm(text), bytes(8), budget)


def test_budget_stops_in_blocks_counted_together_match_the_reference():
    # ALU-only blocks that jump straight on are counted by one update; a budget may stop
    # before any of them, and a fault after them reports the full count
    text = ("mov r0, 0\nmov r2, 0\nl: add r2, 1\nja +0\nadd r0, r2\nja +0\nmul r0, 3\n"
            "jlt r2, 9, l\nldxb r0, [r1+99]\nexit")
    for budget in range(0, 80):
        _same_as_reference(asm(text), bytes(8), budget)
    # a block that may fail is never counted together with the one after it
    text = "mov r0, 0\nldxb r0, [r1+99]\nja +0\nadd r0, 1\nexit"
    for budget in range(0, 6):
        _same_as_reference(asm(text), bytes(8), budget)


def test_wrapping_adds_and_subs_match_the_reference():
    lines = ["ldxdw r2, [r1+0]", "ldxdw r3, [r1+8]", "ldxb r4, [r1+16]"]
    lines += ["mov r5, r2", "add r5, r3", "mov r6, r4", "sub r6, r3", "mov r7, r4",
              "sub r7, 300", "mov r8, r2", "add r8, -1", "mov r9, r3", "add r9, r4",
              "mov r0, r5", "xor r0, r6", "xor r0, r7", "xor r0, r8", "xor r0, r9", "exit"]
    text = "\n".join(lines)
    for a, b, c in [(0, 0, 0), ((1 << 64) - 1, 1, 255), (1 << 63, 1 << 63, 1), (5, 9, 2),
                    ((1 << 64) - 1, (1 << 64) - 1, 255)]:
        memory = a.to_bytes(8, "little") + b.to_bytes(8, "little") + bytes([c]) + bytes(7)
        _same_as_reference(asm(text), memory, 100)


@pytest.mark.parametrize("cond", ["jgt r3, r2", "jge r3, r2", "jlt r2, r3", "jle r2, r3",
                                  "jne r2, r3", "jgt r3, -2", "jge r3, -1", "jne r2, 0",
                                  "jeq r2, r3"])
@pytest.mark.parametrize("start", [0, 5, (1 << 64) - 6, (1 << 64) - 1])
def test_loop_counters_near_2_64_match_the_reference(cond, start):
    # the back edge's compare narrows the counter's range at the loop's head: a step past
    # 2**64 - 1 must still wrap
    text = (f"ldxdw r2, [r1+0]\nldxdw r3, [r1+8]\nmov r0, 0\nloop:\nadd r0, 1\nadd r2, 1\n"
            f"mov r4, r2\nadd r4, 1\nstxdw [r1+16], r4\njgt r0, 12, out\n{cond}, loop\n"
            "out:\nmov r0, r2\nexit")
    end = (start + 4) % (1 << 64)
    memory = start.to_bytes(8, "little") + end.to_bytes(8, "little") + bytes(8)
    _same_as_reference(asm(text), memory, 1000)


def test_ranges_after_compares_match_the_reference():
    # every unsigned compare, against a register or a constant, with values at its boundary:
    # on each edge a range one too narrow would store 16 << 60 (2**64) or 17 - 18 unwrapped
    m = (1 << 64) - 1
    edge = ("mov r4, r2\nlsh r4, 60\nstxdw [r1+16], r4\nmov r5, r3\nlsh r5, 60\n"
            "stxdw [r1+24], r5\nmov r6, r2\nsub r6, 17\nstxdw [r1+32], r6\nmov r7, r3\n"
            "sub r7, 16\nstxdw [r1+40], r7\nmov r0, r2\nadd r0, -16\nrsh r0, 1\n")
    for cond in ("jgt", "jge", "jlt", "jle", "jeq", "jne"):
        for c in (15, 16, 17):
            for x in (c - 1, c, c + 1):
                for against in ("r3", str(c)):
                    text = (f"ldxdw r2, [r1+0]\nldxdw r3, [r1+8]\nmov r0, 0\n"
                            f"{cond} r2, {against}, t\n{edge}ja out\nt:\n{edge}"
                            "add r0, 1\nout:\nexit")
                    memory = (x & m).to_bytes(8, "little") + c.to_bytes(8, "little")
                    _same_as_reference(asm(text), memory + bytes(32), 100)


@pytest.mark.parametrize("cond", ["jne", "jeq"])
@pytest.mark.parametrize("c", [0, 1, 254, 255])
@pytest.mark.parametrize("x", [0, 1, 254, 255])
def test_ranges_after_equality_compares_match_the_reference(cond, c, x):
    # x != c with c at an end of x's range [0, 255] leaves [1, 255] or [0, 254]: a range one
    # too narrow would store -1 or 256 unwrapped, or unmasked
    edge = ("mov r4, r2\nsub r4, 1\nstxdw [r1+8], r4\nmov r5, r2\nadd r5, 1\nlsh r5, 56\n"
            "stxdw [r1+16], r5\nmov r6, r2\nsub r6, r3\nstxdw [r1+24], r6\n")
    for against in ("r3", str(c)):
        text = (f"ldxb r2, [r1+0]\nldxb r3, [r1+1]\nmov r0, 0\n{cond} r2, {against}, t\n"
                f"{edge}ja out\nt:\n{edge}add r0, 1\nout:\nexit")
        _same_as_reference(asm(text), bytes([x, c]) + bytes(30), 100)


def _has_fast_loop(program: Program) -> bool:
    from hermes.engine.interp import Interpreter
    exe = Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=1000)
    return any("_v = r" in line for arms in exe._arms for arm in arms.values()
               for _ind, line in arm)


_POINTER_LOOP = """ldxdw r5, [r1+0]
ldxdw r6, [r1+8]
mov r0, 0
loop:
ldx{w} r7, [r5+{pre}]
xor r0, r7
mul r0, 31
{step}
ldxb r7, [r5+{post}]
add r0, r7
stxb [r5+{post}], r0
{cond} r5, r6, loop
exit"""


@pytest.mark.parametrize("step, cond", [
    ("add r5, 1", "jlt"), ("add r5, 1", "jne"), ("add r5, 2", "jlt"), ("add r5, 3", "jle"),
    ("sub r5, -1", "jle"), ("add r5, -1", "jgt"), ("sub r5, 1", "jne"), ("sub r5, 2", "jge"),
    ("sub r5, 3", "jgt"),
])
@pytest.mark.parametrize("w, pre, post", [("b", 0, 0), ("h", 1, -1), ("w", 0, 3), ("dw", 2, 0)])
def test_pointer_loops_match_the_reference_in_and_out_of_the_slot(step, cond, w, pre, post):
    # a loop of one block moving a pointer runs its fast version when every pass stays in the
    # slot and the budget covers them; partly out of it, it faults at the reference's pc and
    # address, and a budget running out stops where the reference stops
    text = _POINTER_LOOP.format(w=w, pre=pre, post=post, step=step, cond=cond)
    program = asm(text)
    assert _has_fast_loop(program)
    down = "-" in step.split(",")[1] if step.startswith("add") else "-" not in step
    size = 96
    for a, z in [(16, 60), (16, 17), (24, 24), (40, 16), (0, 80), (-3, 30), (30, size - 2),
                 (30, size + 5), (size - 9, size), (60, 2), (60, -4), (70, 100)]:
        if down:
            a, z = z, a
        memory = ((DATA_BASE + a) % (1 << 64)).to_bytes(8, "little") + \
            ((DATA_BASE + z) % (1 << 64)).to_bytes(8, "little")
        memory += bytes((37 * k + 5) & 0xFF for k in range(size - 16))
        _same_as_reference(program, memory, 10_000)
        for budget in (1, 4, 5, 11, 12, 13, 40, 41, 97, 150):
            _same_as_reference(program, memory, budget)


@pytest.mark.parametrize("step, branch", [
    ("add r3, 1", "jlt r3, r4"), ("add r3, 1", "jne r3, r4"), ("add r3, 5", "jle r3, r4"),
    ("sub r3, 1", "jne r3, 0"), ("sub r3, 1", "jgt r3, r4"), ("sub r3, 4", "jge r3, r4"),
    ("add r3, 7", "jlt r3, -7"), ("add r3, 1", "jle r3, -2"), ("sub r3, 2", "jgt r3, 1"),
    ("add r3, 7", "jlt r3, -6"), ("add r3, 1", "jle r3, -1"),  # these two could wrap
    ("sub r3, 2", "jge r3, 2"), ("add r3, 1", "jgt r4, r3"), ("add r3, 2", "jge r4, r3"),
    ("sub r3, 1", "jlt r4, r3"), ("sub r3, 3", "jle r4, r3"), ("add r3, 1", "jne r4, r3"),
    ("add r3, 3", "jge r3, r4"),  # the last one leaves the loop when taken
])
@pytest.mark.parametrize("start, end", [(0, 9), (5, 5), (9, 0), ((1 << 64) - 9, (1 << 64) - 1),
                                        ((1 << 64) - 1, (1 << 64) - 9), ((1 << 64) - 2, 3),
                                        (3, (1 << 64) - 2), (1, 0), (2, 1)])
def test_counted_loops_match_the_reference_near_0_and_2_64(step, branch, start, end):
    # the fast version's guard must reject every start from which the counter could wrap, and
    # charge exactly the passes made; a budget may run out before, inside or after the loop
    flip = branch.startswith("jge r3") and step.startswith("add")
    text = (f"ldxdw r3, [r1+0]\nldxdw r4, [r1+8]\nmov r0, 0\nloop:\nadd r0, r3\nmul r0, 3\n"
            f"{step}\n{branch}, {'out' if flip else 'loop'}\n"
            + ("ja loop\n" if flip else "") + "out:\nstxdw [r1+16], r3\nexit")
    program = asm(text)
    # every form has one: a bound near 2**64 is the guard's to reject when the counter could
    # wrap, and the loop that leaves when taken is one of two blocks (``_cycle_version``)
    assert _has_fast_loop(program)
    memory = start.to_bytes(8, "little") + end.to_bytes(8, "little") + bytes(8)
    for budget in (1, 3, 4, 7, 8, 20, 21, 22, 50, 5000):
        _same_as_reference(program, memory, budget)


def test_a_pointer_loop_entered_again_from_its_exit_matches_the_reference():
    # the path out of the loop goes back to it, through the guard again: the range grows each
    # time until it leaves the slot and the load faults
    assert _has_fast_loop(asm(_POINTER_LOOP.format(w="b", pre=0, post=0, step="add r5, 1",
                                                   cond="jlt")))
    text = ("mov r0, 0\nmov r8, 0\nmov r5, r1\nmov r6, r1\nadd r6, 4\nloop:\nldxb r7, [r5+0]\n"
            "add r0, r7\nadd r5, 1\njlt r5, r6, loop\nadd r6, 9\nadd r8, 1\njlt r8, 9, loop\n"
            "exit")
    program = asm(text)
    assert _has_fast_loop(program)
    memory = bytes(range(1, 41))
    for budget in [10_000] + list(range(0, 200, 3)):
        _same_as_reference(program, memory, budget)
    _same_as_reference(program, memory + bytes(60), 10_000)


def test_random_pointer_loops_match_the_reference():
    # loops of one block stepping a pointer or counter through, around and out of the slot,
    # with loads, stores and stack accesses, ALU work and every kind of bound: results,
    # faults and budget stops against the reference, on the fast version's and on the
    # checked path
    import random
    rng = random.Random(2718)
    fast = 0
    for _ in range(120):
        c = rng.choice([1, 1, 2, 3, 8, -1, -1, -2, -4])
        up = c > 0
        cond = rng.choice(["jlt", "jle", "jne"] if up else ["jgt", "jge", "jne"])
        swapped = rng.random() < 0.3
        bound = "r6"
        branch = (f"{ {'jlt': 'jgt', 'jle': 'jge', 'jgt': 'jlt', 'jge': 'jle', 'jne': 'jne'}[cond]}"
                  f" {bound}, r5" if swapped else f"{cond} r5, {bound}")
        step = f"add r5, {c}" if rng.random() < 0.5 else f"sub r5, {-c}"
        body = []
        for _k in range(rng.randrange(1, 5)):
            w = rng.choice(["b", "h", "w", "dw"])
            roll = rng.random()
            if roll < 0.4:
                body.append(f"ldx{w} r7, [r5+{rng.randrange(-3, 9)}]")
                body.append(rng.choice(["xor r0, r7", "add r0, r7", "mul r0, r7"]))
            elif roll < 0.6:
                body.append(f"stx{w} [r5+{rng.randrange(-3, 9)}], r0")
            elif roll < 0.75:
                body.append(f"stx{w} [r10-{rng.randrange(8, 40)}], r0")
                body.append(f"ldx{w} r8, [r10-{rng.randrange(8, 40)}]")
            else:
                body.append(rng.choice(["mul r0, 31", "add r0, r5", "lsh r0, 3", "rsh r0, 1",
                                        "add32 r0, 7"]))
        at = rng.randrange(len(body) + 1)
        body.insert(at, step)
        text = ("ldxdw r5, [r1+0]\nldxdw r6, [r1+8]\nmov r0, 0\nstdw [r10-48], 0\n"
                "stdw [r10-40], 0\nstdw [r10-32], 0\nstdw [r10-24], 0\nstdw [r10-16], 0\n"
                "stdw [r10-8], 0\nloop:\n" + "\n".join(body) + f"\n{branch}, loop\nexit")
        program = asm(text)
        fast += _has_fast_loop(program)
        size = rng.choice([32, 64, 100])
        a = rng.choice([16, 20, 24, size - 9, size - 1, size, size + 3, -2, 0, 40])
        n = rng.choice([0, 1, 2, 5, 17, 33, -3])
        z = a + n * (1 if up else -1)
        if rng.random() < 0.15:
            a, z = rng.choice([((1 << 64) - DATA_BASE - 5, 3), (-DATA_BASE + 2, 40)])
        memory = ((DATA_BASE + a) % (1 << 64)).to_bytes(8, "little") + \
            ((DATA_BASE + z) % (1 << 64)).to_bytes(8, "little")
        memory += bytes(rng.randrange(256) for _ in range(size - 16))
        for budget in [5000] + rng.sample(range(1, 300), 6):
            _same_as_reference(program, memory, budget)
    assert fast > 60


def _fast_passes(program: Program, memory: bytes, budget: int, monkeypatch) -> int:
    """How often a run of ``program`` entered a loop's fast version."""
    from hermes.engine import interp
    entries: list[int] = []
    monkeypatch.setattr(interp, "_chunk_source", lambda *a: _chunk_source(*a).replace(
        "_v = r", "FAST.append(1); _v = r"))
    monkeypatch.setitem(interp._BOUND, "FAST", entries)
    try:
        interp.Interpreter(program, helpers=CONFORMANCE_HELPERS, budget=budget).run(
            bytearray(memory))
    except ExecutionError:
        pass
    return len(entries)


@pytest.mark.parametrize("w, step", [("dw", 8), ("w", 4), ("h", 2), ("dw", 24)])
def test_a_loop_up_to_the_last_word_of_the_slot_runs_fast(w, step, monkeypatch):
    # the guard bounds the last address by the last pass's, not the bound's: a loop of word
    # stores ending at the slot's last word runs its fast version; one word more faults
    text = (f"mov r5, r1\nmov r6, r1\nadd r6, r2\nmov r0, 0\nloop:\nst{w} [r5+0], 7\n"
            f"add r5, {step}\njlt r5, r6, loop\nldxdw r0, [r1+0]\nexit")
    program = asm(text)
    size = {"dw": 8, "w": 4, "h": 2}[w]
    memory = bytes(step * 6)
    assert _fast_passes(program, memory, 1000, monkeypatch) == 1
    _same_as_reference(program, memory, 1000)
    # the budget exactly covers the loop and the block after it, or one less
    for budget in range(13, 23):
        _same_as_reference(program, memory, budget)
    assert _fast_passes(program, memory, 4 + 3 * 6 + 2, monkeypatch) == 1
    assert _fast_passes(program, memory, 4 + 3 * 6 + 1, monkeypatch) == 0
    short = asm(text.replace("add r6, r2", f"add r6, r2\nadd r6, {step - size + 1}"))
    assert _fast_passes(short, memory, 1000, monkeypatch) == 0
    _same_as_reference(short, memory, 1000)


def _bench_c(name: str) -> Program:
    """The clang-compiled bench kernel ``name`` (skipped without clang)."""
    from pathlib import Path

    from hermes.engine.clang import compile_c, find_clang
    from hermes.engine.elf import load_elf
    src = Path("/work/shared/bench") / f"{name}.c"
    if not src.exists() or find_clang() is None:
        pytest.skip("no bench sources or clang")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return load_elf(compile_c(src, Path(tmp) / f"{name}.o"))


# a loop of one block addressing the slot as base + (index << s), with its bound on a value
# derived from the index
_INDEX_LOOP = """ldxdw r4, [r1+0]
ldxdw r6, [r1+8]
mov r0, 0
loop:
mov r5, r4
{shift}
add r5, r1
ldx{w} r7, [r5+{pre}]
xor r0, r7
mul r0, 31
{step}
mov r8, r4
add r8, {k}
stxb [r5+{post}], r0
{cond} r8, r6, loop
exit"""


@pytest.mark.parametrize("step, cond", [
    ("add r4, 1", "jlt"), ("add r4, 1", "jne"), ("add r4, 2", "jlt"), ("add r4, 3", "jle"),
    ("add r4, -1", "jgt"), ("sub r4, 1", "jne"), ("sub r4, 2", "jge"),
])
@pytest.mark.parametrize("w, shift, pre, post", [("b", "", 0, 0), ("h", "lsh r5, 1", 1, -1),
                                                 ("w", "lsh r5, 2", 0, 3),
                                                 ("dw", "mul r5, 8", 2, 0)])
@pytest.mark.parametrize("k", [0, -3, 5])
def test_index_loops_match_the_reference_in_and_out_of_the_slot(step, cond, w, shift, pre,
                                                                 post, k):
    # base + scaled index addresses and a bound on index + k: the fast version runs when
    # every pass stays in the slot; partly out of it at either end the access faults at the
    # reference's pc and address, and a budget stops where the reference's does
    text = _INDEX_LOOP.format(w=w, shift=shift, pre=pre, post=post, step=step, cond=cond, k=k)
    program = asm(text)
    assert _has_fast_loop(program)
    down = "-" in step.split(",")[1] if step.startswith("add") else "-" not in step
    scale = {"b": 1, "h": 2, "w": 4, "dw": 8}[w]
    size = 160
    for a, z in [(3, 9), (3, 4), (9, 9), (12, 5), (0, 30), (-2, 6), (2, size // scale - 1),
                 (2, size // scale + 3), (size // scale - 2, size // scale), (8, -2),
                 (1 << 63, (1 << 63) + 5), ((1 << 64) - 4, (1 << 64) - 1), (1, (1 << 64) - 2)]:
        if down:
            a, z = z, a
        memory = (a % (1 << 64)).to_bytes(8, "little") + ((z + k) % (1 << 64)).to_bytes(
            8, "little") + bytes((29 * n + 3) & 0xFF for n in range(size - 16))
        for budget in (10_000, 1, 5, 6, 16, 17, 40, 41, 97, 150):
            _same_as_reference(program, memory, budget)


def test_loops_leaving_in_the_middle_match_the_reference(monkeypatch):
    # clang's form of a counted loop: the test on index + 1 against n leaves from the first
    # block, the one against the slot's size from the second, both on a value derived from
    # the index; every budget cut around the loop and every n up to and past the slot
    text = """ldxdw r3, [r1+0]
mov r2, 40
mov r0, 0
mov r4, 8
loop:
mov r5, r1
add r5, r4
ldxb r5, [r5+0]
add r0, r5
mov r5, r4
add r5, -7
jge r5, r3, out
add r4, 1
jgt r2, r5, loop
out:
exit"""
    program = asm(text)
    assert _has_fast_loop(program)
    for n in (0, 1, 2, 5, 31, 32, 33, 39, 40, 41, 60):
        memory = n.to_bytes(8, "little") + bytes(range(1, 40))
        for budget in [10_000] + list(range(0, 30)) + list(range(4 + 9 * min(n, 32) - 12,
                                                             4 + 9 * min(n, 32) + 12)):
            _same_as_reference(program, memory, max(budget, 0))
    # in the slot and with the budget for all of it, the fast version runs once
    memory = (20).to_bytes(8, "little") + bytes(range(1, 40))
    assert _fast_passes(program, memory, 10_000, monkeypatch) == 1
    # a slot that ends before the last pass's byte: the checked loop faults as the reference
    wide = asm(text.replace("mov r2, 40", "mov r2, 60"))
    short = ((25).to_bytes(8, "little") + bytes(range(1, 40)))[:30]
    assert _fast_passes(wide, short, 10_000, monkeypatch) == 0
    _same_as_reference(wide, short, 10_000)
    assert _fast_passes(wide, short + bytes(3), 10_000, monkeypatch) == 1


@pytest.mark.parametrize("name", ["sum_bytes", "fnv1a", "histogram"])
def test_clang_kernels_run_fast_and_match_the_reference(name, monkeypatch):
    # the C kernels' loops (two blocks, a derived counter, base + index and, for histogram,
    # a store through a loaded byte) get fast versions; any n, slot and budget agree
    program = _bench_c(name)
    assert _has_fast_loop(program)
    for n, extra in [(0, 0), (1, 0), (7, 7), (50, 50), (50, 49), (50, 20), (300, 300)]:
        memory = n.to_bytes(8, "little") + bytes(4088) + bytes(
            (97 * k + 13) & 0xFF for k in range(extra))
        _same_as_reference(program, memory, 1 << 30)
        for budget in (1, 300, 400, 1000, 1100, 2000, 2100, 3500):
            _same_as_reference(program, memory, budget)
    memory = (300).to_bytes(8, "little") + bytes(4088) + bytes(range(256)) + bytes(44)
    assert _fast_passes(program, memory, 1 << 30, monkeypatch) >= 1


def test_stores_through_a_loaded_byte_match_the_reference():
    # histogram's shape: the bin's address is base + (byte << 2), anywhere in a range of 1 KiB
    # the guard puts in the slot whatever the byte; a slot too short for the last bin faults
    text = """ldxdw r4, [r1+0]
mov r3, r1
add r3, 8
mov r5, 64
loop:
mov r0, r1
add r0, r5
ldxb r0, [r0+0]
lsh r0, 2
mov r6, r3
add r6, r0
ldxw r0, [r6+0]
add r0, 1
stxw [r6+0], r0
mov r0, r5
add r0, -63
jge r0, r4, out
add r5, 1
ja loop
out:
mov r0, r5
exit"""
    program = asm(text)
    assert _has_fast_loop(program)
    for n in (1, 2, 10, 40):
        for fill in (0, 255, 7):
            body = bytes([fill] * n) if fill != 7 else bytes((k * 37) & 0xFF for k in range(n))
            for size in (64 + n, 1032, 1031, 1040 + n):
                memory = (n.to_bytes(8, "little") + bytes(56) + body + bytes(2000))[:size]
                for budget in (10_000, 30, 31, 100, 13 * n, 13 * n + 5):
                    _same_as_reference(program, memory, budget)


def test_random_loops_of_several_blocks_match_the_reference():
    # loops of one to three blocks stepping an index, with derived counters, base + index
    # addresses, loaded bytes, exits from any block and bounds near 0 and 2**64: results,
    # faults and budget stops against the reference on the fast and on the checked path
    import random
    rng = random.Random(31337)
    fast = 0
    for _ in range(150):
        c = rng.choice([1, 1, 2, 3, -1, -1, -2])
        up = c > 0
        step = f"add r4, {c}" if rng.random() < 0.5 else f"sub r4, {-c}"
        parts: list[list[str]] = [[] for _ in range(rng.randrange(1, 4))]
        step_at = rng.randrange(len(parts))
        parts[step_at].append(step)
        for part in parts:
            for _k in range(rng.randrange(0, 4)):
                w = rng.choice(["b", "h", "w", "dw"])
                sh = rng.choice(["", "lsh r5, 1", "lsh r5, 3", "mul r5, 4"])
                roll = rng.random()
                addr = ["mov r5, r4", sh, rng.choice(["add r5, r1", "add r5, r9"])]
                if roll < 0.35:
                    part += addr + [f"ldx{w} r7, [r5+{rng.randrange(-4, 9)}]",
                                    rng.choice(["xor r0, r7", "add r0, r7", "mul r0, r7"])]
                elif roll < 0.55:
                    part += addr + [f"stx{w} [r5+{rng.randrange(-4, 9)}], r0"]
                elif roll < 0.7:
                    part += ["mov r5, r4", "add r5, r1", "ldxb r7, [r5+0]", "lsh r7, 2",
                             "mov r8, r9", "add r8, r7", f"stx{w} [r8+0], r0"]
                else:
                    part.append(rng.choice(["mul r0, 31", "add r0, r4", "rsh r0, 1",
                                            f"stxdw [r10-{8 * rng.randrange(1, 4)}], r0"]))
        lines = ["ldxdw r4, [r1+0]", "ldxdw r6, [r1+8]", "mov r9, r1", "add r9, 24",
                 "mov r0, 0", "mov r7, 0", "stdw [r10-8], 0", "stdw [r10-16], 0",
                 "stdw [r10-24], 0", "loop:"]
        for n, part in enumerate(parts):
            lines += part
            k = rng.choice([0, 0, 1, -1, 7, -4095])
            lines += ["mov r8, r4", f"add r8, {k}"]
            cond = rng.choice(["jlt", "jle", "jne", "jgt", "jge"])
            bound = rng.choice(["r6", str(rng.choice([5, 40, -3]))])
            if n == len(parts) - 1:
                lines.append(f"{cond} r8, {bound}, loop")
            else:
                lines.append(f"{cond} r8, {bound}, out")
        lines += ["out:", "exit"]
        program = asm("\n".join(lines))
        fast += _has_fast_loop(program)
        size = rng.choice([48, 100, 200])
        a = rng.choice([0, 1, 3, 10, size - 30, size, (1 << 64) - 3, (1 << 63)])
        z = a + rng.choice([0, 1, 2, 5, 17, 40, -3]) * (1 if up else -1)
        memory = (a % (1 << 64)).to_bytes(8, "little") + (z % (1 << 64)).to_bytes(8, "little")
        memory += bytes(rng.randrange(256) if rng.random() < 0.5 else rng.randrange(8)
                        for _ in range(size - 16))
        for budget in [5000] + rng.sample(range(1, 300), 6):
            _same_as_reference(program, memory, budget)
    assert fast > 40


def test_loops_leaving_on_loaded_data_match_the_reference(monkeypatch):
    # insertion sort's inner loop: three blocks, a bound on the moving pointer in the first
    # and a compare of loaded data leaving from the second, which most passes end on; sorted,
    # reversed and random arrays, slots cut short and budgets cut anywhere
    import random
    from pathlib import Path

    from hermes.engine.frontends import read_program
    src = Path("/work/shared/bench/asm/insertion_sort.asm")
    if not src.exists():
        pytest.skip("no bench sources")
    program = read_program(src)
    assert _has_fast_loop(program)
    rng = random.Random(99)
    for n in (0, 1, 2, 3, 9, 24):
        for order in ("up", "down", "random"):
            words = sorted(rng.randrange(1 << 32) for _ in range(n))
            if order == "down":
                words.reverse()
            elif order == "random":
                rng.shuffle(words)
            payload = b"".join(w.to_bytes(4, "little") for w in words)
            memory = (4 * n).to_bytes(8, "little") + bytes(4088) + payload
            _same_as_reference(program, memory, 1 << 20)
            for budget in rng.sample(range(1, 40 + 12 * n * n), 8):
                _same_as_reference(program, memory, budget)
    memory = (4 * 24).to_bytes(8, "little") + bytes(4088) + bytes(range(96, 0, -1))
    assert _fast_passes(program, memory, 1 << 20, monkeypatch) >= 1


def test_a_32_bit_add_of_a_negative_pending_value_matches_the_reference():
    # ``sub r0, r4`` stays pending and may be negative as a Python int: the 32-bit add that
    # reads it must mask, not only correct a result above 2**32
    head = "ldxb r3, [r1+0]\nldxb r4, [r1+1]\nldxb r0, [r1+2]\n"
    for tail in ("sub r0, r4\nadd32 r0, r3", "mov r5, r3\nsub r5, r4\nadd32 r0, r5",
                 "sub r0, r4\nadd32 r0, r3\nadd r0, 1"):
        for memory in (bytes([2, 9, 0]), bytes([9, 2, 5]), bytes([0, 255, 1])):
            _same_as_reference(asm(head + tail + "\nexit"), memory, 100)

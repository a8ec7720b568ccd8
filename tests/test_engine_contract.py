"""The engine side of the run contract: entry registers, window, arguments, results, helpers,
the one load contract and fault messages, identical on every engine."""
from __future__ import annotations

from functools import partial

import pytest

from hermes.conformance import load_corpus
from hermes.engine import DATA_BASE, Program, RunResult, check, load, run
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c, find_clang
from hermes.engine.elf import load_elf
from hermes.engine.helpers import (
    CONFORMANCE_HELPERS,
    DEVICE_HELPERS,
    HELPER_SET_OUTPUT,
    HELPER_TRACE_PRINTK,
    TRACE_LIMIT,
    merged,
)
from hermes.engine.interp import Interpreter
from hermes.engine.jit import JitExecutable
from hermes.engine.memory import MASK64, describe_regions, out_of_bounds
from hermes.errors import (
    DataTooLarge,
    ExecutionError,
    ExecutionFailed,
    HermesError,
    ProgramError,
    UsageError,
    VerifierError,
)

from .conftest import CONFORMANCE

BUDGET = 1 << 20
#: Every way a program is prepared for running: the interpreter and each JIT tier.
ENGINES = ("interp", "jit-quick", "jit-full", "jit-auto")
ALL = merged(CONFORMANCE_HELPERS, DEVICE_HELPERS)


def prepare(program: Program, engine: str, helpers=ALL):
    """``program`` loaded on one engine (raises what that engine's load raises)."""
    if engine == "interp":
        return Interpreter(program, helpers=helpers, budget=BUDGET)
    return JitExecutable(program, helpers=helpers, budget=BUDGET,
                         tier=engine.removeprefix("jit-"))


def asm(text: str) -> Program:
    return assemble_program(text)


# -- 1. entry registers, window and arguments ---------------------------------------------------

ENTRY = asm("""
stxdw [r1+0], r1
stxdw [r1+8], r2
stxdw [r1+16], r3
stxdw [r1+24], r4
stxdw [r1+32], r5
mov r0, r3
exit
""")


def _words(mem) -> list[int]:
    return [int.from_bytes(mem[k:k + 8], "little") for k in range(0, 40, 8)]


@pytest.mark.parametrize("engine", ENGINES)
def test_entry_registers_are_window_length_and_arguments(engine):
    exe = prepare(ENTRY, engine)
    mem = bytearray(48)
    result = exe.run(mem, length=7, args=(1, -2, 1 << 64 | 5))
    assert _words(mem) == [DATA_BASE, 7, 1, (-2) & MASK64, 5]
    assert result.return_value == 1
    # defaults: r2 = the window's length, arguments 0
    exe.run(mem)
    assert _words(mem) == [DATA_BASE, 48, 0, 0, 0]


def test_load_many_takes_length_and_arguments():
    for exe in JitExecutable.load_many([ENTRY, ENTRY], helpers=ALL, budget=BUDGET):
        mem = bytearray(40)
        exe.run(mem, length=0, args=[9])
        assert _words(mem) == [DATA_BASE, 0, 9, 0, 0]


@pytest.mark.parametrize("engine", ("interp", "jit"))
def test_engine_run_passes_length_and_arguments(engine):
    mem = bytearray(40)
    run(ENTRY, mem, executor=engine, helpers=ALL, length=3, args=(4, 5, 6))
    assert _words(mem) == [DATA_BASE, 3, 4, 5, 6]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bad, error, words", [
    ((1, 2, 3, 4), UsageError, "at most 3 arguments"),
    (("1",), UsageError, "argument 0 must be an integer, not str"),
    ((0, 1.5), UsageError, "argument 1 must be an integer, not float"),
    ((True,), UsageError, "not bool"),
    (5, UsageError, "args must be a tuple"),
])
def test_bad_arguments_are_usage_errors(engine, bad, error, words):
    exe = prepare(ENTRY, engine)
    mem = bytearray(40)
    with pytest.raises(error, match=words):
        exe.run(mem, args=bad)
    assert mem == bytearray(40)  # refused before anything ran


@pytest.mark.parametrize("engine", ENGINES)
def test_length_past_the_window_is_data_too_large(engine):
    exe = prepare(ENTRY, engine)
    with pytest.raises(DataTooLarge, match="input length 41 is larger than the data window") \
            as info:
        exe.run(bytearray(40), length=41)
    assert (info.value.size, info.value.limit) == (41, 40)
    with pytest.raises(UsageError, match="length must be >= 0"):
        exe.run(bytearray(40), length=-1)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_window_is_exactly_the_memory_given(engine):
    # bytes between the input length and the window's end are the program's; one past is not
    probe = asm("mov r0, r1\nadd r0, r3\nldxb r0, [r0]\nexit")
    exe = prepare(probe, engine)
    mem = bytearray(range(16))
    assert exe.run(mem, length=4, args=(15,)).return_value == 15
    with pytest.raises(ExecutionError) as info:
        exe.run(mem, length=4, args=(16,))
    assert info.value.kind == "out_of_bounds" and info.value.address == DATA_BASE + 16


# -- 2. RunResult ---------------------------------------------------------------------------------

def test_run_result_keeps_its_first_three_fields_positional():
    result = RunResult(1, bytearray(2), 3)
    assert (result.return_value, result.memory, result.instructions) == (1, bytearray(2), 3)
    assert (result.output_length, result.trace, result.trace_dropped, result.elapsed_ns) == \
        (None, b"", 0, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_run_result_carries_instructions_and_run_time(engine):
    result = prepare(ENTRY, engine).run(bytearray(40))
    assert result.instructions == 7
    assert result.elapsed_ns > 0
    assert result.output_length is None and result.trace == b"" and result.trace_dropped == 0


# -- 3. the helpers of the contract --------------------------------------------------------------

# declares r3 as the output length unless r3 is 0
SET_OUTPUT = asm(f"mov r0, 7\njeq r3, 0, +2\nmov r1, r3\ncall {HELPER_SET_OUTPUT}\nexit")


@pytest.mark.parametrize("engine", ENGINES)
def test_set_output_declares_the_output_length(engine):
    exe = prepare(SET_OUTPUT, engine)
    result = exe.run(bytearray(32), length=4, args=(20,))
    assert result.output_length == 20 and result.return_value == 0
    assert exe.run(bytearray(32), args=(32,)).output_length == 32
    # the declaration belongs to its run: the next run declares nothing
    result = exe.run(bytearray(32))
    assert result.output_length is None and result.return_value == 7


@pytest.mark.parametrize("engine", ENGINES)
def test_set_output_past_the_window_is_a_helper_fault(engine):
    exe = prepare(SET_OUTPUT, engine)
    with pytest.raises(ExecutionError) as info:
        exe.run(bytearray(32), args=(33,))
    err = info.value
    assert err.kind == "helper" and err.pc == 3
    assert "hermes_set_output: output length 33 is larger than the data window (32 bytes)" \
        in str(err)


def _printk(fmt: bytes, *values: int, strings: bytes = b"") -> Program:
    """A program that prints ``fmt`` (from the stack) with ``values``; r0 = the return value.
    ``strings`` go into the data window at offset 0 (an argument 's' means r1 there)."""
    fmt = fmt + b"\0"
    fmt += b"\0" * (-len(fmt) % 8)
    lines = []
    for k in range(0, len(fmt), 8):
        word = int.from_bytes(fmt[k:k + 8], "little")
        lines += [f"lddw r6, {word:#x}", f"stxdw [r10-{len(fmt) - k}], r6"]
    for reg, value in zip((3, 4, 5), values, strict=False):
        lines.append(f"mov r{reg}, r1" if value == "s" else f"lddw r{reg}, {value & MASK64:#x}")
    lines += ["mov r1, r10", f"add r1, -{len(fmt)}", f"mov r2, {len(fmt)}",
              f"call {HELPER_TRACE_PRINTK}", "exit"]
    return asm("\n".join(lines))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fmt, values, text", [
    (b"plain\n", (), b"plain\n"),
    (b"%d %i %u", (-5, 7, -1), b"-5 7 4294967295"),
    (b"%x %X %p", (0xABCDEF, 0xABCDEF, 0x100000000), b"abcdef ABCDEF 0x100000000"),
    (b"%ld %lu %lx", (-5, -1, 1 << 40), b"-5 18446744073709551615 10000000000"),
    (b"%lld %llu %llx", (-(1 << 40), 1 << 63, MASK64), b"-1099511627776 9223372036854775808 "
                                                       b"ffffffffffffffff"),
    (b"[%c%c] 100%%", (ord("o"), ord("k")), b"[ok] 100%"),
    (b"s=%s!", ("s",), b"s=hello!"),
])
def test_trace_printk_formats_like_linux(engine, fmt, values, text):
    exe = prepare(_printk(fmt, *values), engine)
    result = exe.run(bytearray(b"hello\0xx"))
    assert result.trace == text and result.return_value == len(text)
    assert result.trace_dropped == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fmt, values, words", [
    (b"%q", (), "unknown conversion '%q' at byte 0"),
    (b"ok %5d", (1,), "unknown conversion '%5d' at byte 3"),
    (b"%d%d%d%d", (1, 2, 3), "more than 3 conversions"),
])
def test_trace_printk_refuses_what_it_cannot_print(engine, fmt, values, words):
    with pytest.raises(ExecutionError, match="bpf_trace_printk: " + words) as info:
        prepare(_printk(fmt, *values), engine).run(bytearray(8))
    assert info.value.kind == "helper" and info.value.pc is not None


@pytest.mark.parametrize("engine", ENGINES)
def test_trace_printk_bad_pointers_fault_naming_the_operand(engine):
    bad_string = asm(f"mov r3, 0\nmov r1, r10\nadd r1, -8\nstdw [r10-8], 0x7325\n"
                     f"mov r2, 8\ncall {HELPER_TRACE_PRINTK}\nexit")
    with pytest.raises(ExecutionError, match="bpf_trace_printk string argument out of bounds"):
        prepare(bad_string, engine).run(bytearray(8))
    bad_format = asm(f"mov r2, 9\ncall {HELPER_TRACE_PRINTK}\nexit")
    with pytest.raises(ExecutionError, match="bpf_trace_printk format out of bounds") as info:
        prepare(bad_format, engine).run(bytearray(8))
    assert info.value.kind == "out_of_bounds" and info.value.size == 9


@pytest.mark.parametrize("engine", ENGINES)
def test_trace_is_bounded_and_counts_what_it_drops(engine):
    # print the 8-byte window's first 7 bytes 1000 times: 7000 bytes, 4096 kept
    loop = asm(f"""
        mov r6, r1
        mov r7, 0
        mov r8, 0
    again:
        mov r1, r6
        mov r2, 8
        call {HELPER_TRACE_PRINTK}
        add r8, r0
        add r7, 1
        jlt r7, 1000, again
        mov r0, r8
        exit
    """)
    result = prepare(loop, engine).run(bytearray(b"abcdefg\0"))
    assert len(result.trace) == TRACE_LIMIT == 4096
    assert result.trace == (b"abcdefg" * 1000)[:TRACE_LIMIT]
    assert result.trace_dropped == 7000 - TRACE_LIMIT
    assert result.return_value == TRACE_LIMIT  # each call returns the bytes it kept


# -- 4. one load contract ------------------------------------------------------------------------

#: Programs some engine once judged differently, and every kind of refusal.
HAND_WRITTEN = {
    "args are initialised": "mov r0, r3\nadd r0, r4\nadd r0, r5\nexit",
    "uninitialised r6": "mov r0, r6\nexit",
    "uninitialised r9 on one path": "mov r0, 0\njeq r2, 0, +1\nmov r9, 1\nadd r0, r9\nexit",
    "r1 clobbered by a helper call": "mov r0, 0\ncall 2\nmov r0, r1\nexit",
    "unknown helper": "mov r0, 0\ncall 99\nexit",
    "bad jump": "mov r0, 0\njeq r1, 0, +2\ncall local f\nexit\nf:\nmov r0, 1\nexit",
    "r0 unset at exit": "mov r1, 0\nexit",
    "falls through": "mov r0, 0",
    "writes r10": "mov r10, 0\nmov r0, 0\nexit",
    "self loop": "mov r0, 0\nja -1\nexit",
    "jump out of a function": "mov r0, 0\ncall local f\nexit\nf:\nja +2\nexit\nexit\nmov r0, 1\n"
                              "exit",
    "callee reads r6": "mov r0, 0\ncall local f\nexit\nf:\nmov r0, r6\nexit",
    "recursion (run-time depth check)": "mov r0, 0\ncall local f\nexit\nf:\ncall local f\nexit",
}


def _verdict(make) -> tuple | None:
    """None when ``make()`` loads, else (class, index, message) of what it raised."""
    try:
        make()
    except HermesError as exc:
        return type(exc), getattr(exc, "index", None), str(exc)
    return None


def _contract_programs() -> list[tuple[str, Program]]:
    out = [(name, asm(text)) for name, text in HAND_WRITTEN.items()]
    for case in load_corpus([CONFORMANCE]) if CONFORMANCE else []:
        try:
            program = case.program()
        except ProgramError:
            continue  # refused while decoding: no engine ever sees it
        out.append((case.name, program))
    clang = find_clang()
    if clang:
        import tempfile
        from pathlib import Path
        src = Path(__file__).parent / "data" / "increment.c"
        with tempfile.TemporaryDirectory() as tmp:
            out.append(("increment.c", load_elf(compile_c(src, Path(tmp) / "i.o"))))
    return out


def test_every_engine_gives_every_program_the_same_verdict():
    programs = _contract_programs()
    assert len(programs) > 200
    accepted = []
    refused = 0
    for name, program in programs:
        expected = _verdict(partial(check, program, ALL))
        assert _verdict(partial(Interpreter, program, helpers=ALL, budget=BUDGET)) == expected, name
        if expected is None:
            accepted.append(program)
            continue
        refused += 1
        assert expected[0] is VerifierError, name
        for engine in ENGINES[1:]:
            assert _verdict(partial(prepare, program, engine)) == expected, (name, engine)
        assert _verdict(partial(load, program, helpers=ALL, executor="jit")) == expected, name
        assert _verdict(partial(load, program, helpers=ALL, executor="interp")) == expected, name
    assert refused >= 10
    # accepted programs: compiled (both tiers, as load_many does for many programs at once)
    for tier in ("quick", "full"):
        loaded = JitExecutable.load_many(accepted, helpers=ALL, budget=BUDGET, tier=tier)
        assert all(isinstance(exe, JitExecutable) for exe in loaded)


def test_refused_program_names_index_instruction_and_register():
    for engine in ENGINES:
        with pytest.raises(VerifierError) as info:
            prepare(asm("mov r0, 0\nmov r1, r7\nexit"), engine)
        assert info.value.index == 1 and info.value.insn_text == "mov r1, r7"
        assert "read of uninitialised register r7" in str(info.value)


def test_load_many_reports_the_same_refusal():
    bad = asm("mov r0, r6\nexit")
    out = JitExecutable.load_many([bad], helpers=ALL, budget=BUDGET)
    assert _verdict(lambda: (_ for _ in ()).throw(out[0])) == _verdict(lambda: check(bad, ALL))


def test_check_defaults_to_the_device_helpers():
    check(asm(f"mov r1, 0\ncall {HELPER_SET_OUTPUT}\nexit"))
    with pytest.raises(VerifierError, match="unknown helper id 2"):
        check(asm("call 2\nexit"))


# -- 5. faults --------------------------------------------------------------------------------

FAULTS = {
    "load past the window": ("ldxw r0, [r1+6]\nexit", DATA_BASE + 6, 4, False),
    "store below the window": ("mov r0, 0\nstb [r1-1], 1\nexit", DATA_BASE - 1, 1, True),
    "store below the frame": ("mov r0, 0\nstdw [r10-520], 1\nexit", (1 << 34) - 520, 8, True),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", FAULTS)
def test_faults_are_worded_once_and_rebuildable_from_their_fields(engine, name):
    text, address, size, write = FAULTS[name]
    program = asm(text)
    with pytest.raises(ExecutionError) as info:
        prepare(program, engine).run(bytearray(8))
    err = info.value
    assert (err.kind, err.address, err.size, err.write) == ("out_of_bounds", address, size, write)
    # what a library rebuilds from a device's fault fields (address, size, write, window)
    again = out_of_bounds(err.pc, address, size, write, 8, program.segments,
                          instructions=err.instructions, cls=ExecutionFailed, code=0x1)
    assert str(again) == str(err) and again.regions == describe_regions(8)
    assert ("store" if write else "load") in str(err)


def test_store_to_read_only_data_is_named_on_every_engine():
    clang = find_clang()
    if not clang:
        pytest.skip("needs clang")
    # built without C: a read-only segment from the assembler is not available, so use ELF
    import tempfile
    from pathlib import Path
    src = "static const char msg[] = \"hello\";\n" \
          "int f(char *d) { *(volatile char *)&msg[d[0]] = 1; return 0; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ro.c"
        path.write_text(src)
        program = load_elf(compile_c(path, Path(tmp) / "ro.o"))
    messages = set()
    for engine in ENGINES:
        with pytest.raises(ExecutionError) as info:
            prepare(program, engine).run(bytearray(8))
        assert info.value.write is True
        assert "store to read-only .rodata" in str(info.value)
        messages.add(str(info.value))
    assert len(messages) == 1


# -- 6. entry points of ELF objects --------------------------------------------------------------

TWO_FUNCTIONS = """
__attribute__((section("prog1"))) unsigned long first(unsigned char *d, unsigned long n)
{ return n + 1; }
__attribute__((section("prog2"))) unsigned long second(unsigned char *d, unsigned long n,
                                                        unsigned long a)
{ return d[0] + n * 2 + a; }
"""


@pytest.fixture(scope="module")
def two_functions(tmp_path_factory) -> bytes:
    if not find_clang():
        pytest.skip("needs clang")
    tmp = tmp_path_factory.mktemp("elf")
    src = tmp / "two.c"
    src.write_text(TWO_FUNCTIONS)
    return compile_c(src, tmp / "two.o").read_bytes()


def _symbol_index(data: bytes, name: str) -> int:
    from hermes.engine.elf import ElfObject
    obj = ElfObject(data)
    return next(y.index for y in obj.symbols(obj.symtab_index()) if y.name == name)


def test_the_entry_chosen_by_name_section_or_index_is_the_same_program(two_functions):
    index = _symbol_index(two_functions, "second")
    assert index > 0
    by_name = load_elf(two_functions, function="second")
    by_section = load_elf(two_functions, section="prog2")
    by_index = load_elf(two_functions, entry_symbol=index)
    for p in (by_name, by_section, by_index):
        assert p.entry_symbol == index and p.name == "second"
        assert (p.code, p.segments) == (by_name.code, by_name.segments)
        assert run(p, bytearray([5, 0]), length=1, args=(3,)).return_value == 5 + 2 + 3
    first = load_elf(two_functions, function="first")
    assert first.entry_symbol == _symbol_index(two_functions, "first") != index
    assert run(first, bytearray(4)).return_value == 5


def test_the_default_rule_is_entry_symbol_zero(increment_object):
    assert load_elf(increment_object).entry_symbol == 0
    assert load_elf(increment_object, entry_symbol=0).code == \
        load_elf(increment_object).code
    assert Program.from_bytes(asm("mov r0, 0\nexit").code).entry_symbol == 0


@pytest.fixture(scope="module")
def increment_object(tmp_path_factory) -> bytes:
    if not find_clang():
        pytest.skip("needs clang")
    from pathlib import Path
    src = Path(__file__).parent / "data" / "increment.c"
    return compile_c(src, tmp_path_factory.mktemp("inc") / "i.o").read_bytes()


def test_a_bad_entry_symbol_is_an_elf_error_naming_it(two_functions):
    from hermes.errors import ElfError
    with pytest.raises(ElfError, match="entry symbol 999 does not exist"):
        load_elf(two_functions, entry_symbol=999)
    with pytest.raises(ElfError, match=r"entry symbol 1 \(.*\) is not a function"):
        load_elf(two_functions, entry_symbol=1)  # the file symbol
    with pytest.raises(UsageError, match="not both"):
        load_elf(two_functions, function="first", entry_symbol=2)
    with pytest.raises(UsageError, match="non-negative integer"):
        load_elf(two_functions, entry_symbol=-1)
    with pytest.raises(ElfError, match="several functions could be the entry point"):
        load_elf(two_functions)


# -- fault details: call depth and the text printed before a failure ---------------------------

#: Prints "v=7\n", then calls a function that stores 4 bytes at data + 16 (one call deep).
PRINT_THEN_FAULT_DEEP = asm(
    f"mov r9, r1\nlddw r6, {int.from_bytes(b'v=%d' + bytes([10, 0, 0, 0]), 'little'):#x}\n"
    "stxdw [r10-8], r6\nmov r1, r10\nadd r1, -8\nmov r2, 6\nmov r3, 7\ncall 6\nmov r1, r9\n"
    "call local f\nexit\nf:\nmov r0, 0\nstxw [r1+16], r0\nexit")


def _loaded(program: Program, engine: str):
    if engine == "reference":
        from hermes.engine.reference import Reference
        return Reference(program, helpers=ALL, budget=BUDGET)
    return prepare(program, engine)


@pytest.mark.parametrize("engine", ENGINES + ("reference",))
def test_fault_carries_its_call_depth_and_the_printed_text(engine):
    import pickle
    with pytest.raises(ExecutionError) as info:
        _loaded(PRINT_THEN_FAULT_DEEP, engine).run(bytearray(16))
    err = info.value
    assert err.kind == "out_of_bounds" and err.depth == 1
    assert err.regions == describe_regions(16, 1)
    assert err.trace == "v=7\n" and err.trace_dropped == 0
    again = pickle.loads(pickle.dumps(err))
    assert (again.depth, again.trace, str(again)) == (1, "v=7\n", str(err))


@pytest.mark.parametrize("engine", ENGINES + ("reference",))
def test_budget_overrun_carries_the_printed_text(engine):
    loop = asm(f"lddw r6, {int.from_bytes(b'x' + bytes(7), 'little'):#x}\nstxdw [r10-8], r6\n"
               "loop:\nmov r1, r10\nadd r1, -8\nmov r2, 2\ncall 6\nja loop")
    with pytest.raises(ExecutionError) as info:
        _loaded(loop, engine).run(bytearray(0), budget=200)
    err = info.value
    assert err.kind == "budget" and err.trace and set(err.trace) == {"x"}
    assert err.depth == 0

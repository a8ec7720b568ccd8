"""Random programs agree on the RTL core (simulated) and the reference interpreter (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, note, settings, strategies as st

from hermes import engine
from hermes.engine import isa
from hermes.engine.disasm import disassemble_insns
from hermes.engine.isa import encode_slot
from hermes.engine.program import Program
from hermes.errors import ExecutionError
from tests.volume import examples

pytest.importorskip("amaranth")
from hermes.rtl.sim import RtlSession  # noqa: E402

#: Examples per hypothesis test (simulation is slower than the JIT, so fewer than for it).
EXAMPLES = examples("HERMES_RTL_EXAMPLES", 25, 200)
MEM_LEN = 64
BUDGET = 2_000

SCRATCH = [0, 2, 3, 4, 5, 6, 7, 8]   # r1 keeps the data address, r9 a copy of it, r10 is read-only
#: A call clobbers r1..r5 (the load contract refuses reading them after one): the caller
#: restores r1 from r9 and gives r2..r5 fresh values.
AFTER_CALL = ([(isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_X, 1, 9, 0, 0)]
              + [(isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_K, r, 0, 0, 0x1000 + r)
                 for r in range(2, 6)])
ALU_ROWS = [op for op in isa.OPS if op.form in ("alu_k", "alu_x", "unary", "end")]
JMP_ROWS = [op for op in isa.OPS if op.form in ("jcond_k", "jcond_x")]
LDX_ROWS = [op for op in isa.OPS if op.form == "ldx"]
ST_ROWS = [op for op in isa.OPS if op.form in ("st", "stx")]
ATOMIC_ROWS = [op for op in isa.OPS if op.form == "atomic"]

_sessions: dict[bool, RtlSession] = {}


def session(forward_loads: bool = False) -> RtlSession:
    """One simulator per core variant shared by every example (elaboration once)."""
    if forward_loads not in _sessions:
        _sessions[forward_loads] = RtlSession(imem_depth=256, dmem_bytes=MEM_LEN,
                                              forward_loads=forward_loads)
    return _sessions[forward_loads]


def _fields(op: isa.Op, **given_fields: int) -> dict[str, int]:
    f = {"dst": 0, "src": 0, "off": 0, "imm": 0, **given_fields}
    f.update(dict(op.match))
    return f


interesting = st.one_of(
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.sampled_from([0, 1, -1, 2, 7, 31, 32, 63, 64, -(1 << 31), (1 << 31) - 1, 0x7F, 0x80]),
)


@st.composite
def memory_operand(draw, width: int):
    """A base register and offset that usually, not always, land inside the data or stack."""
    base = draw(st.sampled_from([1, 1, 1, 10]))
    if base == 1:
        off = draw(st.integers(-4, MEM_LEN + 2 - width))
    else:
        # a called function may address its caller's frame above r10
        off = draw(st.one_of(st.integers(-512 - 2, -width + 2), st.integers(-width, 520)))
    return base, off


@st.composite
def body_insn(draw, n_left: int, allow_call: bool, n_before: int = 0):
    """One slot of the body: ALU, jump, load, store, atomic or local call.

    Jumps go forward, or (rarely) back to one of the ``n_before`` slots before this one or to
    itself: such loops may run until the budget stops them.
    """
    kind = draw(st.sampled_from(["alu"] * 6 + ["jmp"] * 2 + ["ldx", "st", "atomic"]
                                + (["call"] if allow_call else [])))
    if kind == "alu":
        op = draw(st.sampled_from(ALU_ROWS))
        src = draw(st.sampled_from(SCRATCH + [1, 10])) if op.form == "alu_x" else 0
        imm = draw(interesting) if op.form == "alu_k" else 0
        f = _fields(op, dst=draw(st.sampled_from(SCRATCH)), src=src, imm=imm)
        return ("insn", op.opcode, f)
    if kind == "jmp":
        op = draw(st.sampled_from(JMP_ROWS))
        f = _fields(op, dst=draw(st.sampled_from(SCRATCH + [1])),
                    src=draw(st.sampled_from(SCRATCH)), imm=draw(interesting))
        if op.form == "jcond_k":
            f["src"] = 0
        else:
            f["imm"] = 0
        if n_before and draw(st.integers(0, 9)) == 0:
            return ("jump", op.opcode, f, draw(st.integers(-n_before - 1, -1)))
        return ("jump", op.opcode, f, draw(st.integers(0, n_left)))
    if kind == "ldx":
        op = draw(st.sampled_from(LDX_ROWS))
        base, off = draw(memory_operand(op.width))
        return ("insn", op.opcode,
                _fields(op, dst=draw(st.sampled_from(SCRATCH)), src=base, off=off))
    if kind == "st":
        op = draw(st.sampled_from(ST_ROWS))
        base, off = draw(memory_operand(op.width))
        f = _fields(op, dst=base, off=off, src=draw(st.sampled_from(SCRATCH)),
                    imm=draw(interesting))
        if op.form == "st":
            f["src"] = 0
        else:
            f["imm"] = 0
        return ("insn", op.opcode, f)
    if kind == "atomic":
        op = draw(st.sampled_from(ATOMIC_ROWS))
        base, off = draw(memory_operand(op.width))
        return ("insn", op.opcode,
                _fields(op, dst=base, off=off, src=draw(st.sampled_from(SCRATCH))))
    return ("call",)


@st.composite
def programs(draw):
    """A verifier-clean program: set every register, a random body, exit; maybe a local function."""
    slots: list[bytes] = [encode_slot(isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_X, 9, 1, 0, 0)]
    for r in SCRATCH:
        value = draw(st.one_of(st.integers(0, (1 << 64) - 1),
                               interesting.map(lambda v: v & ((1 << 64) - 1))))
        lo, hi = value & 0xFFFFFFFF, value >> 32
        slots.append(encode_slot(isa.OPCODE_LDDW, r, 0, 0, lo))
        slots.append(encode_slot(0, 0, 0, 0, hi))
    with_func = draw(st.booleans())
    n = draw(st.integers(1, 30))
    body = [draw(body_insn(n - i - 1, with_func, i)) for i in range(n)]
    func = []
    if with_func:
        m = draw(st.integers(0, 6))
        # a function starts with r1..r5 and r10 only: it sets r0 and r6..r8 before its body
        func = [("insn", isa.CLS_ALU64 | isa.ALU_MOV | isa.SRC_K,
                 {"dst": r, "src": 0, "off": 0, "imm": draw(interesting)}) for r in (0, 6, 7, 8)]
        func += [draw(body_insn(m - i - 1, False)) for i in range(m)]
    start = len(slots)
    # the epilogue folds every scratch register into r0 so that no result goes unobserved
    epilogue = []
    for r in SCRATCH[1:]:
        epilogue.append(encode_slot(isa.CLS_ALU64 | isa.ALU_MUL | isa.SRC_K, 0, 0, 0, 0x3B9ACA07))
        epilogue.append(encode_slot(isa.CLS_ALU64 | isa.ALU_XOR | isa.SRC_X, 0, r, 0, 0))
    def width(item) -> int:
        return 1 + len(AFTER_CALL) if item[0] == "call" else 1

    func_start = start + sum(map(width, body)) + len(epilogue) + 1

    def emit(items, first):
        out = []
        for item in items:
            here = first + len(out)
            if item[0] == "insn":
                _, opc, f = item
                out.append(encode_slot(opc, f["dst"], f["src"], f["off"], f["imm"]))
            elif item[0] == "jump":
                _, opc, f, skip = item
                out.append(encode_slot(opc, f["dst"], f["src"], skip, f["imm"]))
            else:
                out.append(encode_slot(isa.CLS_JMP | isa.JMP_CALL, 0, 1, 0, func_start - here - 1))
                out += [encode_slot(*fields) for fields in AFTER_CALL]
        return out

    slots += emit(body, start)
    slots += epilogue
    slots.append(encode_slot(isa.CLS_JMP | isa.JMP_EXIT, 0, 0, 0, 0))
    if with_func:
        slots += emit(func, func_start)
        slots.append(encode_slot(isa.CLS_JMP | isa.JMP_EXIT, 0, 0, 0, 0))
    return Program.from_bytes(b"".join(slots))


@settings(max_examples=EXAMPLES, deadline=None)
@given(program=programs(), memory=st.binary(min_size=MEM_LEN, max_size=MEM_LEN))
def test_random_programs_match_interpreter(program, memory):
    note(disassemble_insns(program.insns))
    try:
        want = engine.run(program, bytearray(memory), budget=BUDGET, executor="interp")
        want_err = None
    except ExecutionError as exc:
        want, want_err = None, exc
    for forward_loads in (False, True):
        got = session(forward_loads).run(program, memory, budget=BUDGET, max_cycles=100 * BUDGET)
        check(got, want, want_err)


def check(got, want, want_err) -> None:
    """The core's result agrees with the interpreter's result or error."""
    assert not got.timeout
    if want_err is not None:
        assert got.error is not None, f"interpreter: {want_err}; RTL r0={got.return_value:#x}"
        if want_err.kind == "budget" or got.error_kind == "budget":
            # the interpreter charges the budget a basic block at a time, so it may stop at the
            # start of a block in which the core still reaches another error first
            return
        assert got.error_kind == want_err.kind
        assert got.error_pc == want_err.pc
        return
    assert got.error_kind != "budget"
    assert got.error is None, f"RTL {got.error_kind} at pc {got.error_pc}"
    assert got.return_value == want.return_value
    assert bytes(got.memory) == bytes(want.memory)
    assert got.instructions == want.instructions

"""The RTL core's parts alone in Amaranth's simulator, against the ISA table and the interpreter."""
from __future__ import annotations

import random

import pytest

from hermes import engine
from hermes.engine import isa
from hermes.engine.isa import encode_slot
from hermes.engine.memory import DATA_BASE, MAX_CALL_DEPTH, STACK_SIZE, STACK_TOP
from hermes.engine.program import Program

pytest.importorskip("amaranth")
from amaranth.sim import Simulator  # noqa: E402

from hermes.rtl.alu import Alu, AtomicAlu, Divider  # noqa: E402
from hermes.rtl.callstack import CallStack  # noqa: E402
from hermes.rtl.decode import Decoder  # noqa: E402
from hermes.rtl.fetch import Branch, Fetch  # noqa: E402
from hermes.rtl.lsu import STACK_BYTES, STACK_LO, LoadStore  # noqa: E402

MASK64 = (1 << 64) - 1
#: 64-bit operands that reach the corner cases: signs, widths, zero, one, all ones.
WIDE = [0, 1, 2, 7, 63, 64, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x1_0000_0001,
        0x8000_0000_0000_0000, MASK64, MASK64 - 6, 0x0123_4567_89AB_CDEF]
#: 32-bit immediates (sign-extended by the core, as the ISA says).
IMMS = [0, 1, -1, 3, -7, 31, 32, 63, 0x7FFFFFFF, -(1 << 31)]


def simulate(dut, bench, *, clock: bool = True) -> None:
    """Run ``bench(ctx)`` against ``dut``, with a clock when the part has registers."""
    sim = Simulator(dut)
    if clock:
        sim.add_clock(4e-9)
    sim.add_testbench(bench)
    sim.run()


def lddw(dst: int, value: int) -> bytes:
    """The two slots of ``lddw dst, value``."""
    value &= MASK64
    return (encode_slot(isa.OPCODE_LDDW, dst, 0, 0, value & 0xFFFFFFFF)
            + encode_slot(0, 0, 0, 0, value >> 32))


EXIT = encode_slot(isa.CLS_JMP | isa.JMP_EXIT, 0, 0, 0, 0)


def interp(code: bytes, memory: bytes | None = None) -> int:
    """r0 of ``code`` run on the interpreter (the software semantics the core must match)."""
    return engine.run(Program.from_bytes(code), None if memory is None else bytearray(memory),
                      executor="interp").return_value


def sext32(imm: int) -> int:
    """``imm`` sign-extended to 64 bits, as the core's second operand."""
    return imm & MASK64 if imm >= 0 else (imm + (1 << 64)) & MASK64


def fields(op: isa.Op, **given: int) -> dict[str, int]:
    """The slot fields of ``op`` with the values that select its table row."""
    f = {"dst": 0, "src": 0, "off": 0, "imm": 0, **given}
    f.update(dict(op.match))
    return f


def test_decoder_fields_and_validity_follow_the_table():
    """Every table row (with legal and illegal registers) and random slots: the fields are the
    slot's bits and ``valid`` holds exactly when a row of the opcode matches its selecting field,
    both registers exist and r10 is not written."""
    rng = random.Random(15)
    slots = []
    for op in isa.OPS:
        for _ in range(3):
            f = fields(op, dst=rng.choice([0, 3, 10, 11]), src=rng.choice([0, 1, 10, 15]),
                       off=rng.choice([0, -1, 5]), imm=rng.choice([0, 16, -3]))
            f.update(dict(op.match))
            slots.append((op.opcode, f["dst"], f["src"], f["off"], f["imm"]))
        for name, value in op.match:   # the selecting field one off its value
            f = fields(op)
            f[name] = value + 1
            slots.append((op.opcode, f["dst"], f["src"], f["off"], f["imm"]))
    slots += [(rng.randrange(256), rng.randrange(16), rng.randrange(16),
               rng.randrange(-(1 << 15), 1 << 15), rng.randrange(-(1 << 31), 1 << 31))
              for _ in range(300)]
    writers = (isa.CLS_ALU, isa.CLS_ALU64, isa.CLS_LDX, isa.CLS_LD)

    def expected_valid(opcode, dst, src, off, imm) -> bool:
        given = {"dst": dst, "src": src, "off": off, "imm": imm}
        row = any(all(given[n] == v for n, v in row.match) for row in isa.BY_OPCODE.get(opcode, ()))
        return row and dst <= 10 and src <= 10 and not (opcode & 7 in writers and dst == 10)

    dut = Decoder()

    async def bench(ctx):
        for opcode, dst, src, off, imm in slots:
            ctx.set(dut.insn, int.from_bytes(encode_slot(opcode, dst, src, off, imm), "little"))
            got = {name: ctx.get(getattr(dut, name)) for name in
                   ("opcode", "dst", "src", "off", "imm", "cls", "srcx", "op", "mode", "size",
                    "nbytes", "valid")}
            assert got == {
                "opcode": opcode, "dst": dst, "src": src, "off": off, "imm": imm,
                "cls": opcode & 7, "srcx": opcode >> 3 & 1, "op": opcode >> 4,
                "mode": opcode >> 5, "size": opcode >> 3 & 3,
                "nbytes": isa.SIZE_BYTES[opcode & 0x18],
                "valid": expected_valid(opcode, dst, src, off, imm)}, hex(opcode)

    simulate(dut, bench, clock=False)


ALU_ROWS = [op for op in isa.OPS if op.form in ("alu_k", "alu_x", "unary", "end")]


def _alu_cases():
    """(row, a, b, imm) for every ALU row: operands negative at both widths with a small second
    operand, a zero second operand, and a random sample."""
    rng = random.Random(4)
    for op in ALU_ROWS:
        pairs = [(MASK64 - 6, 3), (0x8000_0000_8000_0000, 1), (0x0123_4567_89AB_CDEF, 0)]
        pairs += [(rng.choice(WIDE), None) for _ in range(4)]
        for a, small in pairs:
            if op.form == "alu_x":
                yield op, a, rng.choice(WIDE) if small is None else small, 0
            elif op.form == "alu_k":
                imm = rng.choice(IMMS) if small is None else small
                yield op, a, sext32(imm), imm
            else:
                yield op, a, 0, dict(op.match).get("imm", 0)


def _alu_program(op: isa.Op, a: int, b: int, imm: int) -> bytes:
    """r0 = a, r1 = b, then the row's instruction on r0 (and r1), then exit."""
    f = fields(op, dst=0, src=1 if op.form == "alu_x" else 0, imm=imm)
    return lddw(0, a) + lddw(1, b) + encode_slot(op.opcode, f["dst"], f["src"], f["off"],
                                                 f["imm"]) + EXIT


def test_alu_matches_the_interpreter():
    """Each ALU row on sampled operands gives the interpreter's r0; a divide or modulo by a
    non-zero divisor is handed to the divider (``divides``), by zero it is the ALU's."""
    cases = list(_alu_cases())
    dut = Alu()

    async def bench(ctx):
        for op, a, b, imm in cases:
            f = fields(op, imm=imm)
            for port, value in (("op", op.opcode >> 4), ("wide", op.cls == isa.CLS_ALU64),
                                ("srcx", op.opcode >> 3 & 1), ("off", f["off"] & 0xFFFF),
                                ("imm", f["imm"] & 0xFFFFFFFF), ("a", a), ("b", b)):
                ctx.set(getattr(dut, port), value)
            divisor = b if op.width == 64 else b & 0xFFFFFFFF
            divides = op.sem in ("div", "mod", "sdiv", "smod") and divisor != 0
            assert ctx.get(dut.divides) == divides, op.mnemonic
            if not divides:
                want = interp(_alu_program(op, a, b, imm))
                assert ctx.get(dut.result) == want, (op.mnemonic, hex(a), hex(b), imm)

    simulate(dut, bench, clock=False)


def test_divider_matches_the_interpreter_in_its_cycle_count():
    """Signed and unsigned divide and modulo at both widths: the interpreter's result, after 32
    cycles (64-bit) or 16 (32-bit)."""
    rows = [op for op in ALU_ROWS if op.sem in ("div", "mod", "sdiv", "smod")]
    rng = random.Random(9)
    cases = []
    for op in rows:
        for _ in range(3):
            a = rng.choice(WIDE)
            if op.form == "alu_x":
                b, imm = rng.choice([w for w in WIDE if w & 0xFFFFFFFF]), 0
            else:
                imm = rng.choice([i for i in IMMS if i])
                b = sext32(imm)
            cases.append((op, a, b, imm))
    dut = Divider()

    async def bench(ctx):
        for op, a, b, imm in cases:
            wide = op.cls == isa.CLS_ALU64
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.wide, wide)
            ctx.set(dut.signed, op.sem in ("sdiv", "smod"))
            ctx.set(dut.mod, op.sem in ("mod", "smod"))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.a, 0)   # the operands are latched at start
            ctx.set(dut.b, 0)
            steps = 0
            while ctx.get(dut.busy):
                await ctx.tick()
                steps += 1
            assert steps == (32 if wide else 16)
            want = interp(_alu_program(op, a, b, imm))
            assert ctx.get(dut.result) == want, (op.mnemonic, hex(a), hex(b), imm)

    simulate(dut, bench)


def test_atomic_values_match_the_interpreter():
    """Each atomic row at both widths: the stored value the interpreter leaves in memory."""
    rows = [op for op in isa.OPS if op.form == "atomic"]
    rng = random.Random(3)
    dut = AtomicAlu()
    cases = []
    for op in rows:
        for _ in range(3):
            old, operand = rng.choice(WIDE), rng.choice(WIDE)
            r0 = rng.choice([old, old ^ (1 << 40), rng.choice(WIDE)])
            cases.append((op, old, operand, r0))

    async def bench(ctx):
        for op, old, operand, r0 in cases:
            word = op.width == 4
            mask = 0xFFFFFFFF if word else MASK64
            size = isa.SIZE_W if word else isa.SIZE_DW
            # the old value at [r10-8], the operation, then the memory read back into r0
            code = (lddw(2, old)
                    + encode_slot(isa.CLS_STX | isa.MODE_MEM | isa.SIZE_DW, 10, 2, -8, 0)
                    + lddw(0, r0) + lddw(3, operand)
                    + encode_slot(op.opcode, 10, 3, -8, dict(op.match)["imm"])
                    + encode_slot(isa.CLS_LDX | isa.MODE_MEM | size, 0, 10, -8, 0) + EXIT)
            ctx.set(dut.op, dict(op.match)["imm"])
            ctx.set(dut.old, old & mask)
            ctx.set(dut.operand, operand)
            ctx.set(dut.expected, r0)
            ctx.set(dut.word, word)
            assert ctx.get(dut.new) & mask == interp(code), op.mnemonic

    simulate(dut, bench, clock=False)


def test_branch_conditions_and_targets():
    """Each conditional jump row on sampled operands is taken when the interpreter takes it;
    targets are pc + 1 + off, or pc + 1 + imm for a call and the JMP32 ``ja``."""
    rows = [op for op in isa.OPS if op.form in ("jcond_k", "jcond_x")]
    rng = random.Random(5)
    dut = Branch(pc_bits=10)

    async def bench(ctx):
        for op in rows:
            for _ in range(4):
                a = rng.choice(WIDE)
                if op.form == "jcond_x":
                    b, imm = rng.choice([a, a ^ 1, *WIDE]), 0
                else:
                    imm = rng.choice(IMMS)
                    b = sext32(imm)
                # r0 = 1 when the jump over "mov r0, 0" is taken
                code = (lddw(2, a) + lddw(3, b)
                        + encode_slot(isa.CLS_ALU64 | isa.ALU_MOV, 0, 0, 0, 1)
                        + encode_slot(op.opcode, 2, 3 if op.form == "jcond_x" else 0, 1, imm)
                        + encode_slot(isa.CLS_ALU64 | isa.ALU_MOV, 0, 0, 0, 0) + EXIT)
                ctx.set(dut.op, op.opcode >> 4)
                ctx.set(dut.jmp32, op.cls == isa.CLS_JMP32)
                ctx.set(dut.a, a)
                ctx.set(dut.b, b)
                assert ctx.get(dut.taken) == interp(code), (op.mnemonic, hex(a), hex(b))
        for opcode, off, imm, want in (
                (isa.CLS_JMP | isa.JMP_JEQ, -3, 100, 7 + 1 - 3),
                (isa.CLS_JMP | isa.JMP_JA, 40, -5, 7 + 1 + 40),
                (isa.CLS_JMP32 | isa.JMP_JA, 40, -5, 7 + 1 - 5),
                (isa.CLS_JMP | isa.JMP_CALL, 2, 9, 7 + 1 + 9),
                (isa.CLS_JMP | isa.JMP_JNE, -20, 0, 7 + 1 - 20)):
            ctx.set(dut.op, opcode >> 4)
            ctx.set(dut.jmp32, opcode & 7 == isa.CLS_JMP32)
            ctx.set(dut.pc, 7)
            ctx.set(dut.off, off)
            ctx.set(dut.imm, imm)
            assert (ctx.get(dut.next), ctx.get(dut.target)) == (8, want), hex(opcode)

    simulate(dut, bench, clock=False)


def test_fetch_reads_a_slot_a_cycle_after_its_address():
    code = b"".join(encode_slot(isa.CLS_ALU64 | isa.ALU_MOV, 0, 0, 0, i) for i in range(4))
    dut = Fetch(depth=8, code=code)

    async def bench(ctx):
        ctx.set(dut.waddr, 5)
        ctx.set(dut.wdata, 0xABCD)
        ctx.set(dut.we, 1)
        await ctx.tick()
        ctx.set(dut.we, 0)
        for addr in (2, 0, 5, 3):
            ctx.set(dut.addr, addr)
            await ctx.tick()
            want = 0xABCD if addr == 5 else int.from_bytes(code[8 * addr:8 * addr + 8], "little")
            assert ctx.get(dut.insn) == want

    simulate(dut, bench)


def test_call_stack_push_pop_depth_and_frame():
    """Entries come back in reverse order with their saved registers; ``full`` one call before
    the limit; ``frame`` (r10) moves down one frame a call; ``clear`` empties it."""
    dut = CallStack(pc_bits=10)

    async def bench(ctx):
        def state():
            return ctx.get(dut.depth), ctx.get(dut.full), ctx.get(dut.frame)

        assert state() == (0, 0, STACK_TOP)
        for d in range(MAX_CALL_DEPTH - 1):
            ctx.set(dut.ret, 100 + d)
            ctx.set(dut.saved, (d + 1) * 0x0101_0101_0101_0101 << 64)   # r7 = d + 1 repeated
            ctx.set(dut.push, 1)
            await ctx.tick()
            ctx.set(dut.push, 0)
            assert state() == (d + 1, d + 2 == MAX_CALL_DEPTH, STACK_TOP - (d + 1) * STACK_SIZE)
            assert ctx.get(dut.top_ret) == 100 + d
        for d in reversed(range(1, MAX_CALL_DEPTH - 1)):
            ctx.set(dut.pop, 1)
            await ctx.tick()
            ctx.set(dut.pop, 0)
            assert state()[0] == d
            assert ctx.get(dut.top_ret) == 100 + d - 1
            assert ctx.get(dut.top_saved) >> 64 & MASK64 == d * 0x0101_0101_0101_0101
        ctx.set(dut.push, 1)
        await ctx.tick()
        ctx.set(dut.push, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert state() == (0, 0, STACK_TOP)

    simulate(dut, bench)


def test_load_store_byte_lanes_bounds_and_stack():
    """Stores and loads of every width at every byte offset of the data memory and the stack
    match a byte-array model (unaligned ones straddle the two banks); sign-extending loads;
    the bounds check at the ends of the data region and of the frames in use; the stack reads
    zero after ``clear``; the host port reads what the core stored."""
    dmem = 64
    dut = LoadStore(dmem_bytes=dmem, data=bytes(range(dmem)))
    model = {"data": bytearray(range(dmem)), "stack": bytearray(STACK_BYTES)}
    rng = random.Random(6)

    async def access(ctx, base: int, nbytes: int, *, store: int | None = None, sx: bool = False):
        ctx.set(dut.base, base)
        ctx.set(dut.off, 0)
        ctx.set(dut.nbytes, nbytes)
        inside = ctx.get(dut.in_bounds)
        if store is not None:
            ctx.set(dut.wdata, store)
            ctx.set(dut.store, 1)
            await ctx.tick()
            ctx.set(dut.store, 0)
            return inside, None
        ctx.set(dut.sign_extend, sx)
        ctx.set(dut.latch, 1)
        await ctx.tick()
        ctx.set(dut.latch, 0)
        return inside, ctx.get(dut.loaded)

    async def bench(ctx):
        ctx.set(dut.data_len, dmem)
        ctx.set(dut.depth, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        frame_lo = STACK_BYTES - STACK_SIZE   # the entry function's frame
        regions = (("data", DATA_BASE, 0, dmem), ("stack", STACK_LO, frame_lo, STACK_BYTES))
        for name, vbase, lo, hi in regions:
            mem = model[name]
            for nbytes in (1, 2, 4, 8):
                for offset in list(range(lo, lo + 17)) + [hi - nbytes]:
                    value = rng.getrandbits(64)
                    inside, _ = await access(ctx, vbase + offset, nbytes, store=value)
                    assert inside
                    mem[offset:offset + nbytes] = (value & ((1 << 8 * nbytes) - 1)).to_bytes(
                        nbytes, "little")
                    for sx in (False, True):
                        at = rng.randrange(lo, hi - nbytes + 1)
                        inside, got = await access(ctx, vbase + at, nbytes, sx=sx)
                        want = int.from_bytes(mem[at:at + nbytes], "little",
                                              signed=sx) & MASK64
                        assert inside and got == want, (name, at, nbytes, sx)
            for offset, nbytes in ((hi - 3, 4), (hi, 1), (lo - 1, 1), (lo - 8, 8)):
                inside, _ = await access(ctx, vbase + offset, nbytes)
                assert not inside, (name, offset, nbytes)
        # a deeper call sees the frames below; a new run's stack reads as zeros
        ctx.set(dut.depth, 1)
        assert (await access(ctx, STACK_LO + frame_lo - 8, 8))[0]
        ctx.set(dut.depth, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert (await access(ctx, STACK_LO + frame_lo + 4, 8)) == (1, 0)
        ctx.set(dut.host, 1)
        for word in range(dmem // 8):
            ctx.set(dut.host_addr, word)
            await ctx.tick()
            assert ctx.get(dut.host_rdata) == int.from_bytes(model["data"][8 * word:8 * word + 8],
                                                             "little")

    simulate(dut, bench)

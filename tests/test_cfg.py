"""The control-flow module: targets, successors, functions, blocks, register use, dataflow."""
from __future__ import annotations

import operator

from hermes.engine import cfg
from hermes.engine.asm import assemble
from hermes.engine.isa import decode

CALLS = """\
mov r0, 0
lddw r6, 0x100000000
jeq r1, 0, skip
call local f
skip:
exit
f:
mov r0, 1
ja done
done:
exit
"""


def insns(text: str):
    return decode(assemble(text))


def one(text: str):
    return insns(text + "\nexit")[0]


def test_register_use():
    assert cfg.writes(one("add r3, 1")) == 1 << 3
    assert cfg.reads(one("add r3, 1")) == 1 << 3
    assert cfg.reads(one("mov r3, 1")) == 0
    assert cfg.reads(one("mov r3, r4")) == 1 << 4
    assert cfg.reads(one("sub r3, r4")) == 1 << 3 | 1 << 4
    assert cfg.reads(one("jgt r1, r2, +0")) == 0b110 and cfg.writes(one("jgt r1, r2, +0")) == 0
    assert cfg.reads(one("ldxw r2, [r1+4]")) == 1 << 1
    assert cfg.writes(one("ldxw r2, [r1+4]")) == 1 << 2
    assert cfg.reads(one("stw [r1+4], 7")) == 1 << 1
    assert cfg.reads(one("stxw [r1+4], r2")) == 0b110
    assert cfg.writes(one("stxw [r1+4], r2")) == 0
    assert cfg.writes(one("lock cmpxchg [r1+0], r2")) == cfg.R0
    assert cfg.reads(one("lock cmpxchg [r1+0], r2")) == 0b111
    assert cfg.writes(one("lock fetch add [r1+0], r2")) == 1 << 2
    assert cfg.writes(one("lock add [r1+0], r2")) == 0
    assert cfg.writes(one("call 1")) == cfg.R0 and cfg.reads(one("call 1")) == 0
    assert cfg.reads(one("callx r3")) == 1 << 3
    assert cfg.reads(one("exit")) == cfg.R0
    assert cfg.writes(one("lddw r4, 5")) == 1 << 4


def test_successors_and_targets():
    code = insns(CALLS)  # slot 2 is the second half of the lddw
    assert [cfg.successors(code[i], i) for i in (0, 1, 4, 5, 6, 7, 8)] == \
        [[1], [3], [5], [], [7], [8], []]
    assert cfg.successors(code[3], 3) == [4, 5]  # fall through first, then the target
    assert cfg.targets(code) == {5, 6, 8}
    assert cfg.targets(code, 0, 5) == {5, 6}
    assert cfg.local_call_targets(code) == {6}


def test_functions_blocks_and_last_slot():
    code = insns(CALLS)
    assert cfg.functions(code) == [cfg.Function(0, 6), cfg.Function(6, 9)]
    # after the branch (3), the local call (4), each exit and the jump (7); at every target
    assert cfg.block_leaders(code) == [0, 4, 5, 6, 8]
    straight = insns("mov r0, 0\nmov r0, 1\nexit")
    assert cfg.block_leaders(straight) == [0]
    assert cfg.block_leaders(straight, [cfg.Function(0, 1), cfg.Function(1, 3)]) == [0, 1]
    assert cfg.last_slot(code, 3) == 1  # an lddw's second half is skipped
    assert cfg.last_slot(code, 5) == 4


def test_forward_dataflow_joins_paths_and_stops_at_dead_ends():
    code = insns("mov r0, 0\njeq r1, 0, +1\nmov r2, 1\nmov r3, 1\nexit")
    f = cfg.Function(0, len(code))
    state = cfg.forward(code, f, 0, lambda insn, s: s | cfg.writes(insn), operator.and_)
    assert state == {0: 0, 1: 1, 2: 1, 3: 1, 4: 1 | 1 << 3}  # r2 is written on one path only
    state = cfg.forward(code, f, 0, lambda insn, s: s | cfg.writes(insn), operator.and_,
                        dead_ends={2})
    assert state[3] == 1 and 4 in state


def test_forward_stays_inside_the_function():
    code = insns(CALLS)
    f = cfg.functions(code)[1]
    seen = cfg.forward(code, f, (), lambda insn, s: s + (insn.op.mnemonic,),
                       lambda a, b: a if len(a) <= len(b) else b)
    assert sorted(seen) == [6, 7, 8]
    assert seen[8] == ("mov", "ja")

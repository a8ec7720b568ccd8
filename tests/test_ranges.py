"""Device memory and runs over several ranges (``hermes.lib.memory``), the same on every backend.

Parametrised over ``tests.devices.LIB_BACKENDS``: on the NVMe CP backends the ranges are
Subsystem Local Memory the controller reads itself; elsewhere host memory copied through the
session's data slot. The results, errors and what ends up in memory must not differ.
"""
from __future__ import annotations

import errno
import struct

import pytest

import hermes
from hermes.engine.asm import assemble_program
from hermes.lib.memory import MAX_RANGES

#: r0 = the u64 at window offset r3; stores r2 (the input length) at window offset r4.
PEEK_POKE = assemble_program("mov r6, r1\nadd r6, r3\nldxdw r0, [r6]\n"
                             "mov r7, r1\nadd r7, r4\nstxdw [r7], r2\nexit")
#: r0 = the sum of the window's bytes [0, r2).
SUM = assemble_program("mov r0, 0\nmov r3, 0\nloop:\njge r3, r2, done\nmov r4, r1\nadd r4, r3\n"
                       "ldxb r5, [r4]\nadd r0, r5\nadd r3, 1\nja loop\ndone:\nexit")
#: Stores 0x11 at window offset 0, then loads at window offset r3 (a fault when outside).
STORE_THEN_LOAD = assemble_program("mov r5, 0x11\nstxb [r1], r5\nmov r6, r1\nadd r6, r3\n"
                                   "ldxb r0, [r6]\nexit")
#: Declares an output of r3 bytes.
DECLARE = assemble_program("mov r1, r3\ncall 0x1002\nmov r0, 0\nexit")
LOOP = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop")
ARGS = assemble_program("stxdw [r1], r3\nstxdw [r1+8], r4\nstxdw [r1+16], r5\nmov r0, r2\nexit")


def u64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


@pytest.fixture
def dev(make_backend):
    return make_backend()


@pytest.fixture
def sess(dev):
    with dev.session() as s:
        yield s


def test_memory_is_zeroed_and_moves_bytes(dev):
    with dev.memory(64) as m:
        assert m.size == 64 and not m.closed
        assert m.read(64) == bytes(64)
        assert m.write(b"hello", 3) == 5
        assert m.read(8) == b"\0\0\0hello"
        buf = bytearray(6)
        assert m.readinto(buf, 2) == 6 and bytes(buf) == b"\0hello"
        m.fill(0xEE, 1, 9)
        assert m.read(12) == b"\0" + b"\xee" * 9 + b"\0\0"
        m.fill()
        assert m.read(64) == bytes(64)
    assert m.closed
    assert "closed" in repr(m)


def test_memory_bounds_and_closed(dev):
    m = dev.memory(16)
    with pytest.raises(hermes.DataTooLarge, match="past the end of the memory"):
        m.write(b"x" * 17)
    with pytest.raises(hermes.DataTooLarge):
        m.read(8, 9)
    with pytest.raises(hermes.UsageError, match="size"):
        dev.memory(0)
    with pytest.raises(hermes.UsageError, match="value"):
        m.fill(256)
    m.close()
    m.close()
    with pytest.raises(hermes.DeviceError) as exc:
        m.read(1)
    assert exc.value.errno == errno.EBADF


def test_a_new_region_never_shows_old_bytes(dev):
    m = dev.memory(4096)
    m.write(b"\xff" * 4096)
    m.close()
    with dev.memory(4096) as again:
        assert again.read(4096) == bytes(4096)


def test_window_is_the_ranges_back_to_back(dev, sess):
    a, b = dev.memory(16), dev.memory(8)
    a.write(u64(5, 6))
    b.write(u64(9))
    sess.load(PEEK_POKE)
    # range 0 = a[8:16] (window 0..8), range 1 = b (window 8..16): r0 = window[8] = b[0]
    r = sess.run(ranges=[a.range(8, 8), b], args=(8, 0))
    assert r.return_value == 9
    assert r.data == u64(16, 9)            # output = the input length (the whole window)
    assert a.read(16) == u64(5, 16)        # the store at window 0 landed in a[8]
    assert b.read(8) == u64(9)
    # a (memory, offset, length) tuple is a range too
    assert sess.run(ranges=[(a, 0, 8), b], args=(0, 8)).return_value == 5
    assert b.read(8) == u64(16)


def test_sum_over_ranges_equals_the_concatenation(dev, sess):
    parts = [bytes(range(i, i + 24)) for i in (0, 50, 100)]
    mems = [dev.memory(24) for _ in parts]
    for m, p in zip(mems, parts, strict=True):
        m.write(p)
    sess.load(SUM)
    r = sess.run(ranges=mems)
    assert r.return_value == sum(b"".join(parts))
    # length cuts the input: bytes past it are zero at entry and in memory after
    r = sess.run(ranges=mems, length=30)
    assert r.return_value == sum(b"".join(parts)[:30])
    assert mems[1].read(24) == parts[1][:6] + bytes(18)
    assert mems[2].read(24) == bytes(24)


def test_size_cuts_the_window(dev, sess):
    a, b = dev.memory(8), dev.memory(8)
    b.write(b"\x07" * 8)
    sess.load(STORE_THEN_LOAD)
    with pytest.raises(hermes.ExecutionFailed) as exc:
        sess.run(ranges=[a, b], size=12, length=0, args=(12,))
    assert exc.value.kind == "out_of_bounds"
    assert a.read(1) == b"\x11"            # stored before the fault: it stays
    assert b.read(8) == bytes(4) + b"\x07" * 4   # zeroed up to the window's end only


def test_output_precedence(dev, sess):
    a = dev.memory(16)
    a.write(bytes(range(16)))
    sess.load(DECLARE)
    assert sess.run(ranges=[a], args=(5,)).data == bytes(range(5))
    assert sess.run(ranges=[a], args=(5,), read=9).data == bytes(range(9))
    with pytest.raises(hermes.DataTooLarge, match="read of 17 bytes"):
        sess.run(ranges=[a], read=17)


def test_args_budget_and_the_data_slot_afterwards(dev, sess):
    a = dev.memory(24)
    sess.load(ARGS)
    r = sess.run(ranges=[a], args=(1, 2, 3))
    assert r.return_value == 24 and a.read(24) == u64(1, 2, 3)
    with pytest.raises(hermes.DeviceError) as exc:
        sess.read(8)                       # the slot holds nothing of this run
    assert exc.value.errno == errno.ENODATA
    sess.load(LOOP)
    with pytest.raises(hermes.BudgetExceeded):
        sess.run(ranges=[a], budget=1000)


@pytest.mark.parametrize("ranges, error, text", [
    (lambda m, n: [], hermes.UsageError, "at least one"),
    (lambda m, n: [m] * (MAX_RANGES + 1), hermes.UsageError, "at most 16"),
    (lambda m, n: m, hermes.UsageError, "must be a list"),
    (lambda m, n: [(m, 4, 8)], hermes.UsageError, "not a multiple of 8"),
    (lambda m, n: [(m, 0, 12), n], hermes.UsageError, "every range but the last"),
    (lambda m, n: [(m, 0, 16), (m, 8, 8)], hermes.UsageError, "ranges 0 and 1 overlap"),
    (lambda m, n: [(m, 16, 24)], hermes.DataTooLarge, "past the end of its memory"),
    (lambda m, n: [(m, 0, 0)], hermes.UsageError, "range 0 is empty"),
    (lambda m, n: ["x"], hermes.UsageError, "range 0 must be"),
])
def test_bad_ranges_are_refused_before_anything_runs(dev, sess, ranges, error, text):
    m, n = dev.memory(32), dev.memory(8)
    m.write(b"\xaa" * 32)
    sess.load(PEEK_POKE)
    with pytest.raises(error, match=text):
        sess.run(ranges=ranges(m, n))
    assert m.read(32) == b"\xaa" * 32     # nothing ran, nothing changed


def test_window_sizes_are_checked(dev, sess):
    m = dev.memory(16)
    sess.load(PEEK_POKE)
    with pytest.raises(hermes.DataTooLarge, match="size of 17 bytes"):
        sess.run(ranges=[m], size=17)
    with pytest.raises(hermes.DataTooLarge, match="input of 20 bytes"):
        sess.run(ranges=[m], length=20)
    with pytest.raises(hermes.UsageError, match="smaller than the input length"):
        sess.run(ranges=[m], length=12, size=8)


def test_memory_of_another_device_or_closed(dev, sess):
    # (a second device on the same controller would claim its memory too: take a cpu one)
    with hermes.open("cpu") as other:
        foreign = other.memory(8)
        sess.load(PEEK_POKE)
        with pytest.raises(hermes.UsageError, match="another device"):
            sess.run(ranges=[foreign])
    m = dev.memory(8)
    m.close()
    with pytest.raises(hermes.DeviceError) as exc:
        sess.run(ranges=[m])
    assert exc.value.errno == errno.EBADF


def test_closing_the_device_closes_its_memory(make_backend):
    d = make_backend()
    m = d.memory(8)
    d.close()
    with pytest.raises(hermes.DeviceError) as exc:
        m.read(8)
    assert exc.value.errno == errno.ENODEV
    with pytest.raises(hermes.DeviceError):
        d.memory(8)


def test_program_stores_reach_memory_on_every_range(dev, sess):
    """Every byte of the window is writable and lands in its own memory, in order."""
    fill = assemble_program("mov r3, 0\nloop:\njge r3, r2, done\nmov r4, r1\nadd r4, r3\n"
                            "stxb [r4], r3\nadd r3, 1\nja loop\ndone:\nmov r0, 0\nexit")
    mems = [dev.memory(8), dev.memory(16), dev.memory(5)]
    sess.load(fill)
    sess.run(ranges=mems)
    assert [m.read(m.size) for m in mems] == [bytes(range(0, 8)), bytes(range(8, 24)),
                                              bytes(range(24, 29))]

"""CP/SLM conformance: every Computational Programs and Subsystem Local Memory command, field and
status code the controller implements, including malformed commands, through the host driver."""
from __future__ import annotations

import struct
import time

import pytest

from hermes import nvme_regs as N
from hermes.engine import Program
from hermes.engine.clang import compile_c, find_clang

from tests.nvme_devices import expect, nvme  # noqa: F401

R = N.MemoryRange
RET_PARAMS = Program.from_asm("ldxdw r0, [r1+0]\nldxdw r2, [r1+8]\nadd r0, r2\nexit").code
#: Adds 1 to every byte of range 1 in place; returns its length.
INC_RANGE = Program.from_asm("""
ldxdw r3, [r1+32]
ldxdw r0, [r1+40]
mov r4, r1
add r4, r3
mov r5, r4
add r5, r0
loop:
jge r4, r5, done
ldxb r2, [r4]
add r2, 1
stxb [r4], r2
add r4, 1
ja loop
done:
exit
""").code
ENDLESS = Program.from_asm("mov r0, 0\nloop:\nadd r0, 1\nja loop").code
OUT_OF_BOUNDS = Program.from_asm("ldxdw r0, [r1-8]\nexit").code


def limits(host) -> dict:
    return N.ID_NS_CP.unpack(host.identify(N.Cns.CSI_NAMESPACE, host.compute_nsid, csi=N.Csi.CP))


def ready(host, pind: int, code: bytes) -> None:
    host.load_program(pind, code)
    host.activate(pind)


def load_cmd(host, pind: int, *, psize: int, numb: int, loff: int = 0,
             ptype: int = N.PTYPE_EBPF, sel: int = N.LOAD_SEL_LOAD, nsid: int | None = None,
             data: bytes | None = None):
    cmd = N.Command(N.AdminOpcode.LOAD_PROGRAM, nsid=host.compute_nsid if nsid is None else nsid,
                    cdw10=N.load_program_cdw10(pind, ptype, sel), cdw11=psize, cdw14=numb,
                    cdw15=loff)
    return host.admin_command(cmd, data=data if data is not None else bytes(max(numb, 4)))


# --- Load Program ---------------------------------------------------------------------------------
def test_load_activate_execute_returns_64_bits(nvme):
    ready(nvme, 0, RET_PARAMS)
    assert nvme.execute(0, cparam1=0x1_0000_0001, cparam2=(7 << 40)) == 0x1_0000_0001 + (7 << 40)


def test_chunked_load_of_small_chunks(nvme):
    nvme.load_program(1, INC_RANGE, chunk=8)
    nvme.activate(1)
    nvme.mem_write(2, 0, bytes(range(16)))
    assert nvme.execute(1, ranges=[R(2, 0, 16)]) == 16
    assert nvme.mem_read(2, 0, 16) == bytes(range(1, 17))


@pytest.mark.skipif(find_clang() is None, reason="needs clang -target bpf")
def test_clang_compiled_program_sees_context_ranges_and_extra_data(nvme, tmp_path):
    src = tmp_path / "cp.c"
    src.write_text("""
struct range { unsigned long long off, len; };
struct ctx { unsigned long long p1, p2; unsigned int numr, extra; unsigned long long rsvd;
             struct range r[]; };
unsigned long long run(struct ctx *c, unsigned long long size) {
    unsigned long long total = c->p1 * 1000 + c->numr * 100 + c->extra;
    for (unsigned int i = 0; i < c->numr; i++) {
        unsigned char *p = (unsigned char *)c + c->r[i].off;
        for (unsigned long long k = 0; k < c->r[i].len; k++) total += p[k];
    }
    return total;
}
""")
    obj = tmp_path / "cp.o"
    compile_c(src, obj)
    ready(nvme, 2, obj.read_bytes())
    nvme.mem_write(2, 8, bytes([1] * 8))
    nvme.mem_write(3, 0, bytes([2] * 16))
    got = nvme.execute(2, ranges=[R(2, 8, 8), R(3, 0, 16)], cparam1=3, data=b"xyz")
    assert got == 3000 + 200 + 3 + 8 + 32


def test_load_program_errors(nvme):
    lim = limits(nvme)
    last = lim["numpi"] - 1
    expect(N.INVALID_PROGRAM_TYPE, load_cmd, nvme, 0, psize=8, numb=8, ptype=0x01)
    expect(N.INVALID_PROGRAM_INDEX, load_cmd, nvme, lim["numpi"], psize=8, numb=8)
    expect(N.PROGRAM_NOT_DOWNLOADABLE, load_cmd, nvme, last, psize=8, numb=8)
    expect(N.INVALID_PROGRAM_DATA, load_cmd, nvme, 0, psize=0, numb=4)
    expect(N.INVALID_PROGRAM_DATA, load_cmd, nvme, 0, psize=6, numb=4)
    expect(N.PROGRAM_TOO_BIG, load_cmd, nvme, 0, psize=64 << 20, numb=4)
    expect(N.INVALID_NAMESPACE, load_cmd, nvme, 0, psize=8, numb=8, nsid=2)
    expect(N.INVALID_FIELD, load_cmd, nvme, 0, psize=8, numb=0)
    load_cmd(nvme, 0, psize=16, numb=8, data=RET_PARAMS[:8])
    expect(N.INVALID_PROGRAM_DATA, load_cmd, nvme, 0, psize=16, numb=4, loff=12)  # gap
    expect(N.PROGRAM_TOO_BIG, load_cmd, nvme, 0, psize=16, numb=16, loff=8)       # past PSIZE
    expect(N.INVALID_PROGRAM_DATA, load_cmd, nvme, 0, psize=24, numb=8, loff=8)   # other PSIZE
    expect(N.INVALID_PROGRAM_DATA, nvme.activate, 0)                             # partial
    load_cmd(nvme, 0, psize=len(RET_PARAMS), numb=8, data=RET_PARAMS[:8])        # restart
    load_cmd(nvme, 0, psize=len(RET_PARAMS), numb=len(RET_PARAMS) - 8, loff=8,
             data=RET_PARAMS[8:])
    expect(N.PROGRAM_IN_USE, load_cmd, nvme, 0, psize=8, numb=8)                 # occupied


def test_program_bytes_limit_counts_downloads_in_progress(nvme):
    lim = limits(nvme)
    total = lim["maxpb"] << 20
    each = 1 << 20
    n = total // each
    for i in range(n):
        load_cmd(nvme, i, psize=each, numb=4)
    expect(N.MAX_PROGRAM_BYTES_EXCEEDED, load_cmd, nvme, n, psize=each, numb=4)


def test_rejected_program_leaves_the_index_empty(nvme):
    bad = struct.pack("<Q", 0xFF)   # opcode ff
    e = expect(N.INVALID_PROGRAM_DATA, nvme.load_program, 3, bad)
    assert e.completion.dw0 & 0xFF != 0   # the Hermes load error code
    expect(N.NO_PROGRAM, nvme.activate, 3)


def test_unload(nvme):
    expect(N.NO_PROGRAM, nvme.unload_program, 0)
    ready(nvme, 0, RET_PARAMS)
    expect(N.PROGRAM_IN_USE, nvme.unload_program, 0)
    nvme.activate(0, False)
    nvme.unload_program(0)
    expect(N.NO_PROGRAM, nvme.execute, 0)
    expect(N.PROGRAM_NOT_DOWNLOADABLE, nvme.unload_program, limits(nvme)["numpi"] - 1)


# --- Program Activation Management ----------------------------------------------------------------
def test_activation(nvme):
    lim = limits(nvme)
    expect(N.NO_PROGRAM, nvme.activate, 0)
    expect(N.INVALID_PROGRAM_INDEX, nvme.activate, lim["numpi"])
    nvme.load_program(0, RET_PARAMS)
    cmd = N.Command(N.AdminOpcode.PROGRAM_ACTIVATION, nsid=1, cdw10=N.activation_cdw10(0, 5))
    expect(N.INVALID_FIELD, nvme.admin_command, cmd)
    expect(N.PROGRAM_NOT_ACTIVATED, nvme.execute, 0)
    nvme.activate(0)
    nvme.activate(0)                      # activating twice is a no-op
    nvme.activate(0, False)
    nvme.activate(0, False)
    expect(N.PROGRAM_NOT_ACTIVATED, nvme.execute, 0)
    nvme.activate(0)
    for i in range(1, lim["maxact"]):
        ready(nvme, i, RET_PARAMS)
    nvme.load_program(lim["maxact"], RET_PARAMS)
    expect(N.MAX_PROGRAMS_ACTIVATED, nvme.activate, lim["maxact"])


# --- Memory Range Set Management ------------------------------------------------------------------
def test_range_sets(nvme):
    lim = limits(nvme)
    g = 1 << lim["mrsg"]
    rsid = nvme.create_range_set([R(2, 0, g), R(3, 0, 2 * g)])
    assert rsid >= 1
    expect(N.MAX_MEMORY_RANGES_EXCEEDED, nvme.create_range_set, [])
    expect(N.MAX_MEMORY_RANGES_EXCEEDED, nvme.create_range_set,
           [R(2, i * g, g) for i in range(lim["maxmemr"] + 1)])
    expect(N.OVERLAPPING_MEMORY_RANGES, nvme.create_range_set, [R(2, 0, 2 * g), R(2, g, g)])
    expect(N.INVALID_MEMORY_RANGE_SET, nvme.create_range_set, [R(3, 1 << 20, g)])
    expect(N.INVALID_MEMORY_RANGE_SET, nvme.create_range_set, [R(2, 1, g)])
    expect(N.INVALID_MEMORY_RANGE_SET, nvme.create_range_set, [R(2, 0, 0)])
    expect(N.INVALID_MEMORY_NAMESPACE, nvme.create_range_set, [R(1, 0, g)])
    expect(N.INVALID_MEMORY_NAMESPACE, nvme.create_range_set, [R(77, 0, g)])
    expect(N.INVALID_MEMORY_RANGE_SET_ID, nvme.delete_range_set, rsid + 100)
    cmd = N.Command(N.AdminOpcode.MEMORY_RANGE_SET, nsid=1, cdw10=N.mrs_cdw10(7), cdw11=1)
    expect(N.INVALID_FIELD, nvme.admin_command, cmd, data=R(2, 0, g).pack())
    nvme.delete_range_set(rsid)
    sets = [nvme.create_range_set([R(2, i * g, g)]) for i in range(lim["maxmemrs"])]
    assert len(set(sets)) == len(sets)
    expect(N.MAX_MEMORY_RANGE_SETS_EXCEEDED, nvme.create_range_set, [R(3, 0, g)])


# --- Execute Program ---------------------------------------------------------------------------------
def test_execute_with_a_range_set_and_inline_ranges(nvme):
    ready(nvme, 1, INC_RANGE)
    nvme.mem_write(3, 64, bytes(8))
    rsid = nvme.create_range_set([R(3, 64, 8)])
    assert nvme.execute(1, rsid=rsid) == 8
    assert nvme.execute(1, ranges=[R(3, 64, 8)]) == 8
    assert nvme.mem_read(3, 64, 8) == bytes([2] * 8)


def test_device_defined_program_sums_range_one(nvme):
    last = limits(nvme)["numpi"] - 1
    nvme.activate(last)
    words = [3, 1 << 40, 77]
    nvme.mem_write(2, 256, struct.pack("<3Q", *words) + bytes(8))
    assert nvme.execute(last, ranges=[R(2, 256, 32)]) == sum(words)
    assert nvme.execute(last) == 0


def test_execute_errors(nvme):
    lim = limits(nvme)
    g = 1 << lim["mrsg"]
    expect(N.INVALID_PROGRAM_INDEX, nvme.execute, lim["numpi"])
    expect(N.NO_PROGRAM, nvme.execute, 0)
    nvme.load_program(0, RET_PARAMS)
    expect(N.PROGRAM_NOT_ACTIVATED, nvme.execute, 0)
    nvme.activate(0)
    rsid = nvme.create_range_set([R(2, 0, g)])
    expect(N.INVALID_FIELD, nvme.execute, 0, rsid=rsid, ranges=[R(2, 0, g)])
    expect(N.INVALID_MEMORY_RANGE_SET_ID, nvme.execute, 0, rsid=rsid + 1)
    expect(N.MAX_MEMORY_RANGES_EXCEEDED, nvme.execute, 0,
           ranges=[R(2, i * g, g) for i in range(lim["maxmemr"] + 1)])
    expect(N.OVERLAPPING_MEMORY_RANGES, nvme.execute, 0, ranges=[R(2, 0, g), R(2, 0, g)])
    expect(N.INVALID_MEMORY_RANGE_SET, nvme.execute, 0, ranges=[R(3, 1 << 20, g)])
    cmd, buf = nvme.execute_command(0, ranges=[R(2, 0, g)])
    cmd.mptr = 16                           # DLEN shorter than the one descriptor
    expect(N.INVALID_FIELD, nvme.io_command, cmd, data=buf)


def test_program_fault_is_reported_with_its_error_code(nvme):
    ready(nvme, 0, OUT_OF_BOUNDS)
    e = expect(N.PROGRAM_FAILED, nvme.execute, 0)
    assert e.completion.dw0 != 0


def test_busy_program_and_range_set_then_abort(nvme):
    ready(nvme, 0, ENDLESS)
    rsid = nvme.create_range_set([R(2, 0, 8)])
    cmd, buf = nvme.execute_command(0, rsid=rsid)
    qp = nvme.io_queue(1)
    cid = qp.submit(cmd)
    time.sleep(0.2)
    expect(N.PROGRAM_IN_USE, nvme.activate, 0, False)
    expect(N.MEMORY_RANGE_SET_IN_USE, nvme.delete_range_set, rsid)
    cqe = nvme.admin_command(N.Command(N.AdminOpcode.ABORT, cdw10=1 | (cid << 16)))[0]
    assert cqe.dw0 & 1 == 0
    done = qp.wait(cid, 10)
    assert done.named_status is N.ABORT_REQUESTED
    nvme.delete_range_set(rsid)
    nvme.activate(0, False)


# --- Subsystem Local Memory ------------------------------------------------------------------------
def test_memory_read_write_fill(nvme):
    nvme.mem_write(3, 1020, b"abcdefgh")
    assert nvme.mem_read(3, 1020, 8) == b"abcdefgh"
    nvme.mem_fill(3, 1024, 12, 0x11223344)
    assert nvme.mem_read(3, 1020, 16) == b"abcd" + bytes.fromhex("44332211") * 3
    size = nvme.memory_namespaces[1].size
    expect(N.INVALID_FIELD, nvme.mem_read, 3, 2, 4)
    expect(N.INVALID_FIELD, nvme.mem_read, 3, 0, 6)
    expect(N.INVALID_FIELD, nvme.mem_read, 3, size - 4, 8)
    expect(N.INVALID_FIELD, nvme.mem_write, 3, size, b"1234")
    expect(N.INVALID_FIELD, nvme.mem_fill, 3, 0, 0)
    expect(N.INVALID_FIELD, nvme.mem_fill, 3, 0, size + 4)


def test_memory_copy(nvme):
    S = N.CopySource
    nvme.mem_write(2, 0, b"0123456789abcdef")
    nvme.mem_write(3, 0, b"ZZZZ")
    nvme.mem_copy(2, 4096, [S(2, 8, 8), S(3, 0, 4), S(2, 0, 4)])
    assert nvme.mem_read(2, 4096, 16) == b"89abcdefZZZZ0123"
    expect(N.OVERLAPPING_IO_RANGE, nvme.mem_copy, 2, 4, [S(2, 0, 8)])
    expect(N.INCOMPATIBLE_NAMESPACE, nvme.mem_copy, 2, 0, [S(1, 0, 4)])
    expect(N.INVALID_FIELD, nvme.mem_copy, 2, 0, [S(3, 1 << 20, 4)])
    cmd = N.Command(N.SlmOpcode.MEMORY_COPY, nsid=2, cdw2=8, cdw12=0)   # format 0h
    expect(N.INVALID_FIELD, nvme.io_command, cmd, data=S(3, 0, 8).pack())
    cmd = N.Command(N.SlmOpcode.MEMORY_COPY, nsid=2, cdw2=12,
                    cdw12=N.COPY_FORMAT_SLM << N.COPY_FORMAT_SHIFT)   # LENGTH != sources
    expect(N.INVALID_FIELD, nvme.io_command, cmd, data=S(3, 0, 8).pack())
    cmd = N.Command(N.SlmOpcode.MEMORY_COPY, nsid=2, cdw2=0, cdw3=1,
                    cdw12=N.COPY_FORMAT_SLM << N.COPY_FORMAT_SHIFT)   # 4 GiB
    expect(N.COMMAND_SIZE_LIMIT_EXCEEDED, nvme.io_command, cmd, data=S(3, 0, 8).pack())


def test_one_mebibyte_write_read_round_trip(nvme):
    data = bytes((i * 31) & 0xFF for i in range(1 << 20))
    nvme.mem_write(2, 1 << 20, data)
    assert nvme.mem_read(2, 1 << 20, 1 << 20) == data
    expect(N.INVALID_FIELD, nvme.mem_read, 2, 0, (1 << 20) + 4)

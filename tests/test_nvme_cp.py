"""CP/SLM conformance: every Computational Programs and Subsystem Local Memory command, field and
status code the controller implements, including malformed commands, through the host driver."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from hermes import nvme_regs as N, regs
from hermes.engine import DATA_BASE
from hermes.engine.asm import assemble_program
from hermes.engine.clang import compile_c, find_clang
from tests.nvme_devices import expect, nvme  # noqa: F401

R = N.MemoryRange
#: Returns arg 0 + arg 1 + arg 2 (r3 = CPARAM2, r4/r5 from the run parameters).
RET_PARAMS = assemble_program("mov r0, r3\nadd r0, r4\nadd r0, r5\nexit").code
#: Adds 1 to every input byte (r1, r2) in place; returns the input length.
INC_RANGE = assemble_program("""
mov r0, r2
mov r4, r1
mov r5, r1
add r5, r2
loop:
jge r4, r5, done
ldxb r3, [r4]
add r3, 1
stxb [r4], r3
add r4, 1
ja loop
done:
exit
""").code
ENDLESS = assemble_program("mov r0, 0\nloop:\nadd r0, 1\nja loop").code
OUT_OF_BOUNDS = assemble_program("ldxdw r0, [r1-8]\nexit").code
#: Returns the byte at r1 + arg 0 (r3).
READ_AT_R3 = assemble_program("add r1, r3\nldxb r0, [r1]\nexit").code


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
    got = nvme.execute(0, cparam2=0x1_0000_0001, data=N.exec_params(7 << 40, 5))
    assert got == 0x1_0000_0001 + (7 << 40) + 5
    assert nvme.execute(0, cparam2=-1, data=N.exec_params(2)) == 1     # modulo 2^64


def test_chunked_load_of_small_chunks(nvme):
    nvme.load_program(1, INC_RANGE, chunk=8)
    nvme.activate(1)
    nvme.mem_write(2, 0, bytes(range(16)))
    assert nvme.execute(1, ranges=[R(2, 0, 16)], cparam1=16) == 16
    assert nvme.mem_read(2, 0, 16) == bytes(range(1, 17))


def test_window_past_the_input_reads_zero_and_accesses_past_it_fault(nvme):
    ready(nvme, 1, INC_RANGE)
    nvme.mem_write(2, 0, bytes([9] * 32))
    assert nvme.execute(1, ranges=[R(2, 0, 32)], cparam1=4) == 4
    assert nvme.mem_read(2, 0, 32) == bytes([10] * 4) + bytes(28)
    # a window shorter than the range: bytes past it are outside the program's reach
    ready(nvme, 0, READ_AT_R3)
    nvme.mem_write(2, 0, bytes(range(1, 33)))
    assert nvme.execute(0, ranges=[R(2, 0, 32)], cparam1=16, cparam2=15,
                        data=N.exec_params(window=16)) == 16
    e = expect(N.PROGRAM_FAILED, nvme.execute, 0, ranges=[R(2, 0, 32)], cparam1=16,
               cparam2=16, data=N.exec_params(window=16))
    assert e.completion.dw0 & 0xFF == regs.EBPF_ERR_OUT_OF_BOUNDS
    expect(N.INVALID_FIELD, nvme.execute, 0, ranges=[R(2, 0, 32)], cparam1=17,
           data=N.exec_params(window=16))                        # input longer than the window
    expect(N.INVALID_FIELD, nvme.execute, 0, ranges=[R(2, 0, 32)],
           data=N.exec_params(window=40))                        # window past the ranges


def test_several_ranges_are_one_window_back_to_back(nvme):
    ready(nvme, 1, INC_RANGE)
    nvme.mem_write(2, 64, bytes([1] * 8))
    nvme.mem_write(3, 8, bytes([5] * 16))
    assert nvme.execute(1, ranges=[R(2, 64, 8), R(3, 8, 16)], cparam1=24) == 24
    assert nvme.mem_read(2, 64, 8) == bytes([2] * 8)
    assert nvme.mem_read(3, 8, 16) == bytes([6] * 16)


def test_execution_record_log_page(nvme):
    ready(nvme, 3, INC_RANGE)
    nvme.mem_write(2, 0, bytes(8))
    nvme.execute(3, ranges=[R(2, 0, 8)], cparam1=8)
    raw = nvme.get_log_page(N.LOG_EXECUTION_RECORD, N.EXEC_RECORD_SIZE,
                            offset=3 * N.EXEC_RECORD_SIZE)
    rec = N.EXEC_RECORD.unpack(raw[:N.EXEC_RECORD_HEADER])
    assert rec["instructions"] == 4 + 8 * 6 + 2 and rec["sequence"] == 1
    assert rec["output_length"] == N.NO_OUTPUT_LENGTH and rec["trace_length"] == 0
    ready(nvme, 0, OUT_OF_BOUNDS)
    expect(N.PROGRAM_FAILED, nvme.execute, 0)
    rec = N.EXEC_RECORD.unpack(nvme.get_log_page(N.LOG_EXECUTION_RECORD, N.EXEC_RECORD_HEADER)
                               [:N.EXEC_RECORD_HEADER])
    assert (rec["fault_address"], rec["fault_size"], rec["fault_write"]) == (
        DATA_BASE - 8, 8, 0)


@pytest.mark.skipif(find_clang() is None, reason="needs clang -target bpf")
def test_execution_record_of_a_failed_run_has_its_call_depth_and_printed_text(nvme, tmp_path):
    # faults.c prints, then loads data[arg 0] two calls deep (or loops arg 0 steps with arg 1).
    faults = compile_c(Path(__file__).parent / "data/contract/faults.c", tmp_path / "faults.o")
    ready(nvme, 1, faults.read_bytes())

    def record() -> tuple[dict, bytes]:
        raw = nvme.get_log_page(N.LOG_EXECUTION_RECORD, N.EXEC_RECORD_SIZE,
                                offset=N.EXEC_RECORD_SIZE)
        rec = N.EXEC_RECORD.unpack(raw[:N.EXEC_RECORD_HEADER])
        return rec, raw[N.EXEC_RECORD_HEADER:N.EXEC_RECORD_HEADER + rec["trace_length"]]

    nvme.mem_write(2, 0, bytes(8))
    expect(N.PROGRAM_FAILED, nvme.execute, 1, ranges=[R(2, 0, 8)], cparam1=8, cparam2=100)
    rec, text = record()
    assert (rec["fault_size"], rec["fault_depth"]) == (1, 2)
    assert text == b"start\nload at 100\n" and rec["trace_dropped"] == 0
    expect(N.PROGRAM_FAILED, nvme.execute, 1, cparam2=1 << 40,
           data=N.exec_params(1, budget=1000))                      # out of budget
    rec, text = record()
    assert (rec["fault_size"], rec["fault_depth"], text) == (0, 0, b"start\n")


@pytest.mark.skipif(find_clang() is None, reason="needs clang -target bpf")
def test_clang_compiled_program_sees_the_window_length_and_arguments(nvme, tmp_path):
    src = tmp_path / "cp.c"
    src.write_text("""
unsigned long long run(unsigned char *data, unsigned long long len, unsigned long long a0,
                       unsigned long long a1, unsigned long long a2) {
    unsigned long long total = a0 * 1000 + a1 * 100 + a2;
    for (unsigned long long k = 0; k < len; k++) total += data[k];
    return total;
}
""")
    obj = tmp_path / "cp.o"
    compile_c(src, obj)
    ready(nvme, 2, obj.read_bytes())
    nvme.mem_write(2, 8, bytes([1] * 8))
    nvme.mem_write(3, 0, bytes([2] * 16))
    got = nvme.execute(2, ranges=[R(2, 8, 8), R(3, 0, 16)], cparam1=24, cparam2=3,
                       data=N.exec_params(2, 7))
    assert got == 3000 + 200 + 7 + 8 + 32


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


# --- Execute Program ------------------------------------------------------------------------------
def test_execute_with_a_range_set_and_inline_ranges(nvme):
    ready(nvme, 1, INC_RANGE)
    nvme.mem_write(3, 64, bytes(8))
    rsid = nvme.create_range_set([R(3, 64, 8)])
    assert nvme.execute(1, rsid=rsid, cparam1=8) == 8
    assert nvme.execute(1, ranges=[R(3, 64, 8)], cparam1=8) == 8
    assert nvme.mem_read(3, 64, 8) == bytes([2] * 8)


def test_device_defined_program_sums_its_input(nvme):
    last = limits(nvme)["numpi"] - 1
    nvme.activate(last)
    words = [3, 1 << 40, 77]
    nvme.mem_write(2, 256, struct.pack("<3Q", *words) + bytes(8))
    assert nvme.execute(last, ranges=[R(2, 256, 32)], cparam1=28) == sum(words[:3])
    assert nvme.execute(last, ranges=[R(2, 256, 32)], cparam1=20) == sum(words[:2])
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
    cmd.cdw15 = 16                          # DLEN shorter than the one descriptor
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
    nvme.t.flush()                          # the doorbell reaches the controller now
    time.sleep(0.2)
    expect(N.PROGRAM_IN_USE, nvme.activate, 0, False)
    expect(N.MEMORY_RANGE_SET_IN_USE, nvme.delete_range_set, rsid)
    cqe = nvme.admin_command(N.Command(N.AdminOpcode.ABORT, cdw10=1 | (cid << 16)))[0]
    assert cqe.dw0 & 1 == 0
    done = qp.wait(cid, 10)
    assert done.named_status is N.ABORT_REQUESTED
    nvme.delete_range_set(rsid)
    nvme.activate(0, False)


# --- Subsystem Local Memory -----------------------------------------------------------------------
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


def test_abort_by_program_index_stops_its_execute_wherever_it_runs(nvme):
    ready(nvme, 2, ENDLESS)
    cmd, buf = nvme.execute_command(2)
    qp = nvme.io_queue(3)
    cid = qp.submit(cmd)
    nvme.t.flush()
    assert not nvme.abort_program(1)            # another index: nothing aborted
    deadline = time.monotonic() + 10
    while not nvme.abort_program(2):            # until the command reached the controller
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert qp.wait(cid, 10).named_status is N.ABORT_REQUESTED
    assert not nvme.abort_program(2)            # nothing runs any more

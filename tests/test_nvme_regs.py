"""The NVMe controller header: entry layouts, status encoding, and PRP building/walking agreeing."""
from __future__ import annotations

import pytest

from hermes import nvme_regs as N
from hermes.device.nvme import NvmeController
from hermes.device.nvme.prp import TransferError, prp_runs
from hermes.driver.nvme import build_prps
from hermes.transport.inproc import InProcessTransport


def test_command_round_trip_is_64_bytes():
    cmd = N.Command(0x85, nsid=1, cid=0xBEEF, flags=0x41, cdw2=2, cdw3=3, mptr=0x1_0000_0004,
                    prp1=0x1000, prp2=0x2000, cdw10=10, cdw11=11, cdw12=12, cdw13=13, cdw14=14,
                    cdw15=15)
    raw = cmd.pack()
    assert len(raw) == N.SQE_SIZE
    assert raw[0] == 0x85 and raw[1] == 0x41 and raw[2:4] == b"\xef\xbe"
    assert N.Command.unpack(raw) == cmd
    assert cmd.cdw4 == 4


def test_completion_status_fields():
    half = N.status_halfword(N.PROGRAM_NOT_ACTIVATED, phase=1, dnr=True)
    cqe = N.Completion(7, 9, sqhd=3, sqid=1, cid=5, status=half)
    back = N.Completion.unpack(cqe.pack())
    assert len(cqe.pack()) == N.CQE_SIZE
    assert (back.phase, back.sct, back.sc, back.dnr) == (1, 1, 0x98, True)
    assert back.named_status is N.PROGRAM_NOT_ACTIVATED
    assert back.result64 == 7 | (9 << 32)


def test_status_codes_are_unique_and_cp_codes_run_8a_to_9b():
    assert len(N.STATUSES) == len({s.name for s in N.STATUSES.values()})
    cp = sorted(sc for (sct, sc) in N.STATUSES if sct == 1 and 0x8A <= sc <= 0x9B)
    assert cp == list(range(0x8A, 0x9C))
    assert N.status_of(1, 0x7F).name == "Unknown Status"


def test_memory_range_descriptor_layout():
    raw = N.MemoryRange(2, 0x1122334455, 0x100).pack()
    assert len(raw) == N.RANGE_SIZE == 32
    assert raw[:4] == (2).to_bytes(4, "little") and raw[4:8] == (0x100).to_bytes(4, "little")
    assert raw[8:16] == (0x1122334455).to_bytes(8, "little") and raw[16:] == bytes(16)
    assert N.unpack_ranges(raw * 2, 2) == [N.MemoryRange(2, 0x1122334455, 0x100)] * 2


def test_layout_rejects_fields_past_the_end():
    with pytest.raises(ValueError, match="runs past"):
        N.Layout(4, {"x": (2, "I")})


def test_exec_params_round_trip_and_default_to_zero():
    raw = N.exec_params(-1, 2, window=24, budget=99)
    assert len(raw) == 32 and N.unpack_exec_params(raw) == (N.MASK64, 2, 24, 99)
    assert N.unpack_exec_params(raw[:8]) == (N.MASK64, 0, 0, 0)
    assert N.unpack_exec_params(b"") == (0, 0, 0, 0)


@pytest.fixture
def transport():
    t = InProcessTransport(NvmeController(), owns_device=True)
    yield t
    t.close()


@pytest.mark.parametrize("offset,length", [(0, 4), (0, 4096), (4092, 8), (8, 8192), (0, 12288),
                                           (100, 1 << 20), (0, 3 << 20), (4, (2 << 20) + 4)])
def test_host_prps_walk_back_to_the_same_bytes(transport, offset, length):
    buf = transport.dma_alloc(offset + length)
    prp1, prp2, lst = build_prps(transport, buf.bus_addr + offset, length)
    try:
        runs = prp_runs(transport.host, prp1, prp2, length, 4096)
    finally:
        if lst is not None:
            lst.free()
    assert runs == [(buf.bus_addr + offset, length)]


def test_prp_walker_rejects_misaligned_entries(transport):
    buf = transport.dma_alloc(4 * 4096)
    with pytest.raises(TransferError) as e:
        prp_runs(transport.host, buf.bus_addr + 2, 0, 16, 4096)
    assert e.value.status is N.INVALID_PRP_OFFSET
    with pytest.raises(TransferError) as e:
        prp_runs(transport.host, buf.bus_addr, buf.bus_addr + 4096 + 8, 8192, 4096)
    assert e.value.status is N.INVALID_PRP_OFFSET
    with pytest.raises(TransferError) as e:
        prp_runs(transport.host, buf.bus_addr, 0x10, 3 * 4096, 4096)   # list not mapped
    assert e.value.status is N.DATA_TRANSFER_ERROR

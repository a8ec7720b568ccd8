"""Base NVMe mechanics of the CP/SLM controller, driven through the host driver and raw commands:
registers, enable/reset/shutdown, queues and the phase bit, PRPs, MSI-X, identify, features,
log pages, Abort and Asynchronous Events."""
from __future__ import annotations

import errno
import struct
import time

import pytest

from hermes import nvme_regs as N
from hermes.driver.nvme import NvmeHost
from tests.nvme_devices import MEMORY_SIZES, expect, nvme, nvme_raw  # noqa: F401

A = N.AdminOpcode


def admin(host: NvmeHost, opcode: int, **fields) -> N.Completion:
    """A raw admin command without data; returns the completion (no status check)."""
    return host.admin_command(N.Command(opcode, **fields), check=False)[0]


# --- registers and bring-up ---------------------------------------------------------------------
def test_capabilities_and_version(nvme_raw):
    t = nvme_raw.t
    cap = t.read(0, N.REG_CAP, 8)
    assert cap & N.CAP_MQES_MASK >= 1 and cap & N.CAP_CQR
    css = N.cap_field(cap, N.CAP_CSS_SHIFT, 0xFF)
    assert css & N.CAP_CSS_NVM and css & N.CAP_CSS_IOCS
    assert N.cap_field(cap, N.CAP_DSTRD_SHIFT, 0xF) == 0
    assert N.cap_field(cap, N.CAP_MPSMIN_SHIFT, 0xF) == 0
    assert N.cap_field(cap, N.CAP_TO_SHIFT, 0xFF) > 0
    assert t.read(0, N.REG_CAP, 4) | (t.read(0, N.REG_CAP + 4, 4) << 32) == cap
    assert t.read(0, N.REG_VS, 4) >= 0x0002_0000
    assert t.read(0, N.REG_CSTS, 4) & N.CSTS_RDY == 0


def test_enable_selects_all_io_command_sets_and_becomes_ready(nvme_raw):
    nvme_raw.enable()
    t = nvme_raw.t
    cc = t.read(0, N.REG_CC, 4)
    assert (cc >> N.CC_CSS_SHIFT) & N.CC_CSS_MASK == N.CC_CSS_IOCS
    assert t.read(0, N.REG_CSTS, 4) & N.CSTS_RDY
    assert [(n.nsid, n.csi) for n in nvme_raw.namespaces] == [(1, N.Csi.CP), (2, N.Csi.SLM),
                                                              (3, N.Csi.SLM)]
    assert [n.size for n in nvme_raw.memory_namespaces] == list(MEMORY_SIZES)


def test_enable_with_misaligned_admin_queue_is_controller_fatal(nvme_raw):
    t = nvme_raw.t
    buf = t.dma_alloc(8192)
    t.write(0, N.REG_AQA, 4, 7 | (7 << 16))
    t.write(0, N.REG_ASQ, 8, buf.bus_addr + 64)
    t.write(0, N.REG_ACQ, 8, buf.bus_addr + 4096)
    t.write(0, N.REG_CC, 4, N.CC_EN | (6 << 16) | (4 << 20))
    csts = t.read(0, N.REG_CSTS, 4)
    assert csts & N.CSTS_CFS and not csts & N.CSTS_RDY
    t.write(0, N.REG_CC, 4, 0)
    assert t.read(0, N.REG_CSTS, 4) & (N.CSTS_CFS | N.CSTS_RDY) == 0
    nvme_raw.enable()       # a correct configuration works afterwards
    assert nvme_raw.id_ctrl["nn"] == 3


def test_admin_queue_registers_are_fixed_while_enabled(nvme):
    t = nvme.t
    asq = t.read(0, N.REG_ASQ, 8)
    t.write(0, N.REG_ASQ, 8, 0x1234_5000)
    assert t.read(0, N.REG_ASQ, 8) == asq
    nvme.identify(N.Cns.CONTROLLER)


def test_shutdown_reports_complete(nvme):
    nvme.shutdown()
    assert (nvme.reg32(N.REG_CSTS) >> N.CSTS_SHST_SHIFT) & 3 == N.SHST_COMPLETE


def test_reset_drops_queues_and_keeps_namespace_contents(nvme):
    ns = nvme.memory_namespaces[0].nsid
    nvme.mem_write(ns, 64, b"keep" * 2)
    old = nvme.io[1]
    nvme.t.write(0, N.REG_CC, 4, 0)                    # controller reset
    assert not nvme.reg32(N.REG_CSTS) & N.CSTS_RDY
    old.submit(N.Command(N.SlmOpcode.MEMORY_FILL, nsid=ns, cdw12=8))   # doorbell ignored
    time.sleep(0.05)
    assert old.take(0) is None
    nvme.enable()
    assert nvme.mem_read(ns, 64, 8) == b"keep" * 2


# --- identify -----------------------------------------------------------------------------------
def test_identify_controller(nvme):
    c = nvme.id_ctrl
    assert c["vid"] == N.PCI_VENDOR_ID and c["ver"] == N.NVME_VERSION and c["cntrltype"] == 1
    assert c["sn"].strip() and c["mn"].startswith(b"Hermes NVMe")
    assert (c["sqes"], c["cqes"]) == (0x66, 0x44) and c["nn"] == 3 and c["sgls"] == 0
    assert c["mdts"] > 0 and c["subnqn"].startswith(b"nqn.")
    assert c["lpa"] & N.LPA_EFFECTS


def test_identify_namespace_structures(nvme):
    assert N.parse_id_list(nvme.identify(N.Cns.ACTIVE_NS_LIST)) == [1, 2, 3]
    assert N.parse_id_list(nvme.identify(N.Cns.ACTIVE_NS_LIST, 1)) == [2, 3]
    assert N.parse_id_list(nvme.identify(N.Cns.CSI_ACTIVE_NS_LIST, csi=N.Csi.SLM)) == [2, 3]
    for nsid, csi in ((1, N.Csi.CP), (2, N.Csi.SLM)):
        desc = N.parse_ns_descriptors(nvme.identify(N.Cns.NS_DESCRIPTORS, nsid))
        assert desc[N.NIDT_CSI] == bytes([csi]) and len(desc[N.NIDT_UUID]) == 16
        ind = N.ID_NS_INDEPENDENT.unpack(nvme.identify(N.Cns.INDEPENDENT_NAMESPACE, nsid))
        assert ind["nstat"] & N.NSTAT_READY
    cp = N.ID_NS_CP.unpack(nvme.identify(N.Cns.CSI_NAMESPACE, 1, csi=N.Csi.CP))
    assert cp["maxact"] and cp["maxmemrs"] and cp["maxmemr"] and cp["numpi"] and cp["maxpb"]
    slm = N.ID_NS_SLM.unpack(nvme.identify(N.Cns.CSI_NAMESPACE, 3, csi=N.Csi.SLM))
    assert slm["msz"] == MEMORY_SIZES[1]
    vec = struct.unpack_from("<Q", nvme.identify(N.Cns.IO_COMMAND_SETS))[0]
    assert vec == N.IOCS_NVM | N.IOCS_SLM | N.IOCS_CP
    assert nvme.identify(N.Cns.CSI_CONTROLLER, csi=N.Csi.NVM) == bytes(4096)


def test_identify_errors(nvme):
    expect(N.INVALID_IOCS, nvme.identify, N.Cns.NAMESPACE, 1)
    expect(N.INVALID_IOCS, nvme.identify, N.Cns.CSI_NAMESPACE, 2, csi=N.Csi.CP)
    expect(N.INVALID_NAMESPACE, nvme.identify, N.Cns.NS_DESCRIPTORS, 9)
    expect(N.INVALID_FIELD, nvme.identify, 0x55)


# --- features and log pages (what Linux asks at probe) -------------------------------------------
def test_number_of_queues_and_features(nvme):
    dw0 = nvme.set_features(N.Feature.NUMBER_OF_QUEUES, 3 | (3 << 16))
    assert dw0 == 3 | (3 << 16)
    assert nvme.get_features(N.Feature.NUMBER_OF_QUEUES) == dw0
    nvme.set_features(N.Feature.TEMPERATURE_THRESHOLD, 0x160)
    assert nvme.get_features(N.Feature.TEMPERATURE_THRESHOLD) == 0x160
    assert nvme.get_features(N.Feature.TEMPERATURE_THRESHOLD, sel=N.FEAT_SEL_DEFAULT) == 0x157
    supported = nvme.get_features(N.Feature.ARBITRATION, sel=N.FEAT_SEL_SUPPORTED)
    assert supported & N.FEAT_CAP_CHANGEABLE
    nvme.set_features(N.Feature.IO_COMMAND_SET_PROFILE, 0)
    expect(N.IOCS_COMBINATION_REJECTED, nvme.set_features, N.Feature.IO_COMMAND_SET_PROFILE, 1)
    expect(N.INVALID_FIELD, nvme.set_features, 0x7F, 0)
    expect(N.INVALID_FIELD, nvme.set_features, N.Feature.NUMBER_OF_QUEUES, 0xFFFF)
    expect(N.FEATURE_NOT_SAVEABLE, nvme.set_features, N.Feature.ARBITRATION | N.FEAT_SV, 0)


def test_log_pages(nvme):
    smart = N.SMART_LOG.unpack(nvme.get_log_page(N.LogPage.SMART, 512))
    assert smart["temperature"] > 273 and smart["avail_spare"] == 100
    fw = N.FIRMWARE_SLOT_LOG.unpack(nvme.get_log_page(N.LogPage.FIRMWARE_SLOT, 512))
    assert fw["afi"] == 1
    eff = nvme.get_log_page(N.LogPage.COMMAND_EFFECTS, 4096, csi=N.Csi.CP)
    for op in (A.IDENTIFY, A.LOAD_PROGRAM, A.PROGRAM_ACTIVATION, A.MEMORY_RANGE_SET):
        assert struct.unpack_from("<I", eff, 4 * op)[0] & N.EFFECT_CSUPP
    assert struct.unpack_from("<I", eff, N.EFFECTS_IO_OFFSET + 4)[0] & N.EFFECT_CSUPP
    expect(N.INVALID_LOG_PAGE, nvme.get_log_page, 0x70, 512)
    expect(N.INVALID_FIELD, nvme.get_log_page, N.LogPage.SMART, 512, offset=4096)


def test_error_log_records_failed_commands(nvme):
    cqe = admin(nvme, 0x7E)
    assert cqe.named_status is N.INVALID_OPCODE and cqe.dnr
    entry = N.ERROR_LOG_ENTRY.unpack(nvme.get_log_page(N.LogPage.ERROR_INFO, 64))
    assert (entry["sqid"], entry["cid"]) == (0, cqe.cid)
    assert entry["status"] >> 1 == N.INVALID_OPCODE.field and entry["error_count"] >= 1


def test_invalid_opcodes_and_namespaces(nvme):
    assert admin(nvme, 0x7E).named_status is N.INVALID_OPCODE
    expect(N.INVALID_OPCODE, nvme.io_command, N.Command(0x7C, nsid=1))
    expect(N.INVALID_OPCODE, nvme.io_command, N.Command(0x03, nsid=2))
    expect(N.INVALID_NAMESPACE, nvme.io_command, N.Command(N.SlmOpcode.MEMORY_FILL, nsid=9))
    expect(N.INVALID_FIELD, nvme.admin_command, N.Command(A.IDENTIFY, cdw10=1, flags=1))
    expect(N.INVALID_FIELD, nvme.admin_command, N.Command(A.IDENTIFY, cdw10=1,
                                                          flags=1 << N.PSDT_SHIFT))


# --- I/O queues -----------------------------------------------------------------------------------
def test_create_and_delete_queue_errors(nvme):
    nvme.io_queue(1)
    buf = nvme.t.dma_alloc(4 * 4096)
    base = buf.bus_addr
    cq = lambda qid, size=8, flags=N.CQ_PC, prp1=base, vec=0: admin(  # noqa: E731
        nvme, A.CREATE_IO_CQ, prp1=prp1, cdw10=qid | ((size - 1) << 16), cdw11=flags | (vec << 16))
    sq = lambda qid, cqid, size=8, prp1=base + 8192: admin(  # noqa: E731
        nvme, A.CREATE_IO_SQ, prp1=prp1, cdw10=qid | ((size - 1) << 16),
        cdw11=N.SQ_PC | (cqid << 16))
    assert cq(0).named_status is N.INVALID_QUEUE_ID
    assert cq(1).named_status is N.INVALID_QUEUE_ID            # exists (the driver's queue 1)
    assert cq(999).named_status is N.INVALID_QUEUE_ID
    assert cq(5, size=1).named_status is N.INVALID_QUEUE_SIZE
    assert cq(5, size=1 << 16).named_status is N.INVALID_QUEUE_SIZE
    assert cq(5, flags=0).named_status is N.INVALID_FIELD
    assert cq(5, vec=500).named_status is N.INVALID_INTERRUPT_VECTOR
    assert cq(5, prp1=base + 16).named_status is N.INVALID_PRP_OFFSET
    assert cq(5).ok
    assert sq(5, 6).named_status is N.COMPLETION_QUEUE_INVALID
    assert sq(5, 0).named_status is N.COMPLETION_QUEUE_INVALID
    assert sq(5, 5).ok
    assert admin(nvme, A.DELETE_IO_CQ, cdw10=5).named_status is N.INVALID_QUEUE_DELETION
    assert admin(nvme, A.DELETE_IO_SQ, cdw10=5).ok
    assert admin(nvme, A.DELETE_IO_SQ, cdw10=5).named_status is N.INVALID_QUEUE_ID
    assert admin(nvme, A.DELETE_IO_CQ, cdw10=5).ok
    assert admin(nvme, A.DELETE_IO_CQ, cdw10=0).named_status is N.INVALID_QUEUE_ID


def test_phase_bit_over_many_wraps(nvme):
    nvme.create_io_queue(2, depth=4)
    ns = nvme.memory_namespaces[0].nsid
    for i in range(50):
        nvme.mem_fill(ns, 0, 8, i, qid=2)
        assert nvme.mem_read(ns, 0, 4, qid=2) == struct.pack("<I", i)
    nvme.delete_io_queue(2)


def test_full_submission_queue_is_refused_by_the_driver(nvme):
    qp = nvme.create_io_queue(3, depth=2)
    qp.submit(N.Command(N.SlmOpcode.MEMORY_FILL, nsid=2, cdw12=8), ring=False)
    with pytest.raises(OSError) as e:
        qp.submit(N.Command(N.SlmOpcode.MEMORY_FILL, nsid=2, cdw12=8))
    assert e.value.errno == errno.EAGAIN
    qp.ring_doorbell()
    assert qp.wait(0, 5).ok


def ring(t, doorbell: int, value: int) -> None:
    """Write a doorbell and deliver it now (the test then watches host memory, not a register)."""
    t.write(0, doorbell, 4, value)
    t.flush()


def test_full_completion_queue_holds_completions_until_the_host_frees_entries(nvme):
    t = nvme.t
    sq_mem, cq_mem = t.dma_alloc(8 * 64), t.dma_alloc(2 * 16)
    assert admin(nvme, A.CREATE_IO_CQ, prp1=cq_mem.bus_addr, cdw10=6 | (1 << 16),
                 cdw11=N.CQ_PC).ok
    assert admin(nvme, A.CREATE_IO_SQ, prp1=sq_mem.bus_addr, cdw10=6 | (7 << 16),
                 cdw11=N.SQ_PC | (6 << 16)).ok
    for i in range(3):
        sq_mem.view[i * 64:(i + 1) * 64] = N.Command(N.SlmOpcode.MEMORY_FILL, nsid=2, cid=i,
                                                     cdw12=8).pack()
    ring(t, N.sq_doorbell(6), 3)
    time.sleep(0.1)
    first = N.Completion.unpack(cq_mem.view[0:16])
    assert first.cid == 0 and first.phase == 1
    assert N.Completion.unpack(cq_mem.view[16:32]).phase == 0     # one slot stays free
    ring(t, N.cq_doorbell(6), 1)
    time.sleep(0.1)
    assert N.Completion.unpack(cq_mem.view[16:32]).cid == 1
    ring(t, N.cq_doorbell(6), 0)
    time.sleep(0.1)
    third = N.Completion.unpack(cq_mem.view[0:16])
    assert third.cid == 2 and third.phase == 0        # wrapped: the phase inverted
    ring(t, N.cq_doorbell(6), 1)
    assert admin(nvme, A.DELETE_IO_SQ, cdw10=6).ok and admin(nvme, A.DELETE_IO_CQ, cdw10=6).ok


def test_msix_vector_per_completion_queue_and_masking(nvme):
    if not nvme.use_irq:
        pytest.skip("the polling driver creates its queues without interrupts")
    t = nvme.t
    qp = nvme.create_io_queue(4, depth=8, vector=7)
    t.irq_clear(7)
    cid = qp.submit(N.Command(N.SlmOpcode.MEMORY_FILL, nsid=2, cdw12=8))
    assert t.irq_wait(7, 5)
    assert qp.wait(cid, 5).ok
    t.write(0, N.REG_INTMS, 4, 1 << 7)
    cid = qp.submit(N.Command(N.SlmOpcode.MEMORY_FILL, nsid=2, cdw12=8))
    assert not t.irq_wait(7, 0.2)
    t.write(0, N.REG_INTMC, 4, 1 << 7)
    assert t.irq_wait(7, 5)
    assert qp.wait(cid, 5).ok


# --- data pointers --------------------------------------------------------------------------------
def test_transfers_of_one_two_and_many_pages(nvme):
    ns = nvme.memory_namespaces[0].nsid
    for n in (4, 4096, 8192, 12288, 1 << 20):
        data = bytes((i * 7 + n) & 0xFF for i in range(n))
        nvme.mem_write(ns, 4096, data)
        assert nvme.mem_read(ns, 4096, n) == data


def test_bad_prps(nvme):
    t = nvme.t
    buf = t.dma_alloc(4 * 4096)
    read = lambda prp1, prp2, n: nvme.io_command(  # noqa: E731
        N.Command(N.SlmOpcode.MEMORY_READ, nsid=2, prp1=prp1, prp2=prp2, cdw12=n), check=False)[0]
    assert read(buf.bus_addr + 2, 0, 8).named_status is N.INVALID_PRP_OFFSET
    assert read(0x10, 0, 8).named_status is N.DATA_TRANSFER_ERROR
    assert read(buf.bus_addr, buf.bus_addr + 4096 + 512, 8192).named_status is N.INVALID_PRP_OFFSET
    struct.pack_into("<QQ", buf.view, 0, buf.bus_addr + 4096, buf.bus_addr + 8192 + 8)
    assert read(buf.bus_addr + 4096, buf.bus_addr, 3 * 4096).named_status is N.INVALID_PRP_OFFSET
    assert read(buf.bus_addr, 0, (1 << 20) + 4096).named_status is N.INVALID_FIELD   # > MDTS


# --- Abort and Asynchronous Events ----------------------------------------------------------------
def test_abort_of_a_command_not_running_is_reported_not_aborted(nvme):
    cqe = admin(nvme, A.ABORT, cdw10=1 | (0x4321 << 16))
    assert cqe.ok and cqe.dw0 & 1


def test_async_events_are_held_then_report_doorbell_misuse(nvme):
    nvme.io_queue(1)
    qp = nvme.admin
    cids = [qp.submit(N.Command(A.ASYNC_EVENT_REQUEST)) for _ in range(4)]
    time.sleep(0.1)
    assert all(qp.take(c) is None for c in cids)            # held without completion
    assert admin(nvme, A.ASYNC_EVENT_REQUEST).named_status is N.AER_LIMIT_EXCEEDED
    t = nvme.t
    t.write(0, N.sq_doorbell(9), 4, 1)                     # queue 9 does not exist
    cqe = qp.wait(cids[0], 5)
    assert cqe.ok and cqe.dw0 == N.async_event_dw0(0, N.AsyncErrorInfo.INVALID_DOORBELL_REGISTER,
                                                   N.LogPage.ERROR_INFO)
    t.write(0, N.sq_doorbell(1), 4, 5000)                  # beyond the queue's size
    cqe = qp.wait(cids[1], 5)
    assert cqe.dw0 >> 8 & 0xFF == N.AsyncErrorInfo.INVALID_DOORBELL_VALUE
    t.write(0, N.cq_doorbell(1), 4, 7)                     # head over entries never posted
    cqe = qp.wait(cids[2], 5)
    assert cqe.dw0 >> 8 & 0xFF == N.AsyncErrorInfo.INVALID_DOORBELL_VALUE
    ns = nvme.memory_namespaces[0].nsid
    nvme.mem_fill(ns, 0, 8)                                # the queues still work

"""The NVMe CP/SLM controller's interface: registers, queue entries, opcodes, statuses, layouts.

This is the "header file" of the emulated NVMe controller, in the role ``hermes.regs`` plays for
the Hermes device: the model (``hermes.device.nvme``) implements it and the host driver
(``hermes.driver.nvme``) programs against it; neither imports the other. Every value here is
either from the NVMe base specification (2.0) or a decision recorded in ``specs/nvme-cp.md``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from . import regs as _hermes_regs

# --- PCI identity ------------------------------------------------------------------------------
PCI_VENDOR_ID = _hermes_regs.PCI_VENDOR_ID   #: same vendor as the Hermes device
PCI_DEVICE_ID = 0x3100                       #: Hermes NVMe CP/SLM controller
PCI_REVISION = 1
#: Class code 01h/08h/02h: mass storage, non-volatile memory controller, NVM Express I/O controller.
PCI_CLASS_NVME = 0x010802
#: MSI-X table and PBA, in BAR0 past the doorbells of every queue pair the controller offers
#: (the layout many NVMe drives use; a hypervisor emulates the table, so the model never sees it).
MSIX_BAR = 0
MSIX_TABLE_OFFSET = 0x3000
MSIX_PBA_OFFSET = 0x3800

# --- BAR0 controller registers ------------------------------------------------------------------
REG_CAP = 0x00      #: Controller Capabilities (64-bit)
REG_VS = 0x08       #: Version
REG_INTMS = 0x0C    #: Interrupt Mask Set
REG_INTMC = 0x10    #: Interrupt Mask Clear
REG_CC = 0x14       #: Controller Configuration
REG_CSTS = 0x1C     #: Controller Status
REG_NSSR = 0x20     #: NVM Subsystem Reset
REG_AQA = 0x24      #: Admin Queue Attributes
REG_ASQ = 0x28      #: Admin Submission Queue base (64-bit)
REG_ACQ = 0x30      #: Admin Completion Queue base (64-bit)
REG_CRTO = 0x68     #: Controller Ready Timeouts
REG_DBS = 0x1000    #: first doorbell

#: Version 2.0.0: Linux then uses the I/O command set independent Identify Namespace (CNS 08h).
NVME_VERSION = 0x0002_0000

# CAP fields (bit positions)
CAP_MQES_MASK = 0xFFFF          #: bits 15:0, maximum queue entries, 0's based
CAP_CQR = 1 << 16               #: contiguous queues required
CAP_TO_SHIFT = 24               #: bits 31:24, ready timeout in 500 ms units
CAP_DSTRD_SHIFT = 32            #: bits 35:32, doorbell stride 2^(2+DSTRD) bytes
CAP_NSSRS = 1 << 36
CAP_CSS_SHIFT = 37              #: bits 44:37, command sets supported
CAP_CSS_NVM = 1 << 0            #: CSS bit: NVM command set
CAP_CSS_IOCS = 1 << 6           #: CSS bit: one or more I/O command sets (CC.CSS = 110b allowed)
CAP_MPSMIN_SHIFT = 48           #: bits 51:48, minimum page size 2^(12+MPSMIN)
CAP_MPSMAX_SHIFT = 52           #: bits 55:52
CAP_CRWMS = 1 << 59             #: controller ready with media support (CRTO is valid)

# CC fields
CC_EN = 1 << 0
CC_CSS_SHIFT, CC_CSS_MASK = 4, 0x7
CC_CSS_NVM = 0b000
CC_CSS_IOCS = 0b110             #: all supported I/O command sets
CC_MPS_SHIFT, CC_MPS_MASK = 7, 0xF
CC_AMS_SHIFT, CC_AMS_MASK = 11, 0x7
CC_SHN_SHIFT, CC_SHN_MASK = 14, 0x3
CC_IOSQES_SHIFT, CC_IOCQES_SHIFT = 16, 20
CC_CRIME = 1 << 24
#: Queue entry sizes as log2: 64-byte SQEs, 16-byte CQEs (the only ones supported).
SQES_LOG2, CQES_LOG2 = 6, 4

# CSTS fields
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_SHIFT, CSTS_SHST_MASK = 2, 0x3
SHST_NORMAL, SHST_OCCURRING, SHST_COMPLETE = 0, 1, 2

# AQA fields (0's based sizes)
AQA_ASQS_MASK = 0xFFF
AQA_ACQS_SHIFT = 16

SQE_SIZE = 1 << SQES_LOG2
CQE_SIZE = 1 << CQES_LOG2
IDENTIFY_SIZE = 4096


def sq_doorbell(qid: int, dstrd: int = 0) -> int:
    """BAR0 offset of the submission queue tail doorbell of queue ``qid``."""
    return REG_DBS + (2 * qid) * (4 << dstrd)


def cq_doorbell(qid: int, dstrd: int = 0) -> int:
    """BAR0 offset of the completion queue head doorbell of queue ``qid``."""
    return REG_DBS + (2 * qid + 1) * (4 << dstrd)


def cap_field(cap: int, shift: int, mask: int) -> int:
    """Field of a register value: ``(value >> shift) & mask``."""
    return (cap >> shift) & mask


# --- command sets -------------------------------------------------------------------------------
class Csi(IntEnum):
    """Command Set Identifiers."""

    NVM = 0x00
    KV = 0x01
    ZNS = 0x02
    SLM = 0x03   #: Subsystem Local Memory: a memory namespace
    CP = 0x04    #: Computational Programs: a compute namespace


#: Bits of an I/O command set combination vector (Identify CNS 1Ch).
IOCS_NVM, IOCS_SLM, IOCS_CP = 1 << 0, 1 << 3, 1 << 4


# --- opcodes ------------------------------------------------------------------------------------
class AdminOpcode(IntEnum):
    """Admin command opcodes (base specification plus the CP admin commands)."""

    DELETE_IO_SQ = 0x00
    CREATE_IO_SQ = 0x01
    GET_LOG_PAGE = 0x02
    DELETE_IO_CQ = 0x04
    CREATE_IO_CQ = 0x05
    IDENTIFY = 0x06
    ABORT = 0x08
    SET_FEATURES = 0x09
    GET_FEATURES = 0x0A
    ASYNC_EVENT_REQUEST = 0x0C
    LOAD_PROGRAM = 0x85
    PROGRAM_ACTIVATION = 0x88
    MEMORY_RANGE_SET = 0x89


class CpOpcode(IntEnum):
    """I/O opcodes of the Computational Programs command set (CSI 04h)."""

    EXECUTE_PROGRAM = 0x01


class SlmOpcode(IntEnum):
    """I/O opcodes of the Subsystem Local Memory command set (CSI 03h)."""

    MEMORY_COPY = 0x01
    MEMORY_READ = 0x02
    MEMORY_FILL = 0x04
    MEMORY_WRITE = 0x05


class Cns(IntEnum):
    """Identify Controller or Namespace Structure values this controller answers."""

    NAMESPACE = 0x00
    CONTROLLER = 0x01
    ACTIVE_NS_LIST = 0x02
    NS_DESCRIPTORS = 0x03
    CSI_NAMESPACE = 0x05
    CSI_CONTROLLER = 0x06
    CSI_ACTIVE_NS_LIST = 0x07
    INDEPENDENT_NAMESPACE = 0x08
    IO_COMMAND_SETS = 0x1C


class Feature(IntEnum):
    """Feature identifiers supported by Get/Set Features."""

    ARBITRATION = 0x01
    POWER_MANAGEMENT = 0x02
    TEMPERATURE_THRESHOLD = 0x04
    ERROR_RECOVERY = 0x05
    NUMBER_OF_QUEUES = 0x07
    INTERRUPT_COALESCING = 0x08
    INTERRUPT_VECTOR_CONFIG = 0x09
    WRITE_ATOMICITY = 0x0A
    ASYNC_EVENT_CONFIG = 0x0B
    IO_COMMAND_SET_PROFILE = 0x19


class LogPage(IntEnum):
    """Log page identifiers supported by Get Log Page."""

    ERROR_INFO = 0x01
    SMART = 0x02
    FIRMWARE_SLOT = 0x03
    COMMAND_EFFECTS = 0x05


class AsyncEventType(IntEnum):
    """Asynchronous event types (completion DW0 bits 2:0)."""

    ERROR = 0


class AsyncErrorInfo(IntEnum):
    """Asynchronous event information for error status events (DW0 bits 15:8)."""

    INVALID_DOORBELL_REGISTER = 0x00
    INVALID_DOORBELL_VALUE = 0x01


def async_event_dw0(etype: int, info: int, log_page: int) -> int:
    """Completion DW0 of an Asynchronous Event Request: type, information, associated log page."""
    return (etype & 7) | ((info & 0xFF) << 8) | ((log_page & 0xFF) << 16)


# --- status codes -------------------------------------------------------------------------------
class Sct(IntEnum):
    """Status Code Types."""

    GENERIC = 0
    COMMAND_SPECIFIC = 1
    MEDIA = 2
    PATH = 3
    VENDOR = 7


@dataclass(frozen=True)
class Status:
    """One completion status: type, code and its name (for messages)."""

    sct: int
    sc: int
    name: str

    @property
    def field(self) -> int:
        """The 15-bit status field without DNR/M/CRD (bits 11:1 of the CQE status halfword >> 1)."""
        return (self.sct << 8) | self.sc

    def __str__(self) -> str:
        return f"{self.name} (SCT {self.sct:#x}, SC {self.sc:#04x})"


def _s(sct: int, sc: int, name: str) -> Status:
    return Status(sct, sc, name)


G, C, V = Sct.GENERIC, Sct.COMMAND_SPECIFIC, Sct.VENDOR
SUCCESS = _s(G, 0x00, "Successful Completion")
INVALID_OPCODE = _s(G, 0x01, "Invalid Command Opcode")
INVALID_FIELD = _s(G, 0x02, "Invalid Field in Command")
DATA_TRANSFER_ERROR = _s(G, 0x04, "Data Transfer Error")
INTERNAL_ERROR = _s(G, 0x06, "Internal Error")
ABORT_REQUESTED = _s(G, 0x07, "Command Abort Requested")
ABORTED_SQ_DELETION = _s(G, 0x08, "Command Aborted due to SQ Deletion")
INVALID_NAMESPACE = _s(G, 0x0B, "Invalid Namespace or Format")
DATA_SGL_LENGTH_INVALID = _s(G, 0x0F, "Data SGL Length Invalid")
INVALID_PRP_OFFSET = _s(G, 0x13, "PRP Offset Invalid")
INVALID_IOCS = _s(G, 0x2C, "Invalid I/O Command Set")
# command specific, base specification (admin)
COMPLETION_QUEUE_INVALID = _s(C, 0x00, "Completion Queue Invalid")
INVALID_QUEUE_ID = _s(C, 0x01, "Invalid Queue Identifier")
INVALID_QUEUE_SIZE = _s(C, 0x02, "Invalid Queue Size")
ABORT_LIMIT_EXCEEDED = _s(C, 0x03, "Abort Command Limit Exceeded")
AER_LIMIT_EXCEEDED = _s(C, 0x05, "Asynchronous Event Request Limit Exceeded")
INVALID_INTERRUPT_VECTOR = _s(C, 0x08, "Invalid Interrupt Vector")
INVALID_LOG_PAGE = _s(C, 0x09, "Invalid Log Page")
INVALID_QUEUE_DELETION = _s(C, 0x0C, "Invalid Queue Deletion")
FEATURE_NOT_SAVEABLE = _s(C, 0x0D, "Feature Identifier Not Saveable")
IOCS_COMBINATION_REJECTED = _s(C, 0x2B, "I/O Command Set Combination Rejected")
# command specific, SLM (the NVM Copy codes, reused)
COMMAND_SIZE_LIMIT_EXCEEDED = _s(C, 0x83, "Command Size Limit Exceeded")
INCOMPATIBLE_NAMESPACE = _s(C, 0x85, "Incompatible Namespace or Format")
FAST_COPY_NOT_POSSIBLE = _s(C, 0x86, "Fast Copy Not Possible")
OVERLAPPING_IO_RANGE = _s(C, 0x87, "Overlapping I/O Range")
NAMESPACE_NOT_REACHABLE = _s(C, 0x88, "Namespace Not Reachable")
# command specific, CP
INSUFFICIENT_PROGRAM_RESOURCES = _s(C, 0x8A, "Insufficient Program Resources")
INVALID_MEMORY_NAMESPACE = _s(C, 0x8B, "Invalid Memory Namespace")
INVALID_MEMORY_RANGE_SET = _s(C, 0x8C, "Invalid Memory Range Set")
INVALID_MEMORY_RANGE_SET_ID = _s(C, 0x8D, "Invalid Memory Range Set Identifier")
INVALID_PROGRAM_DATA = _s(C, 0x8E, "Invalid Program Data")
INVALID_PROGRAM_INDEX = _s(C, 0x8F, "Invalid Program Index")
INVALID_PROGRAM_TYPE = _s(C, 0x90, "Invalid Program Type")
MAX_MEMORY_RANGES_EXCEEDED = _s(C, 0x91, "Maximum Memory Ranges Exceeded")
MAX_MEMORY_RANGE_SETS_EXCEEDED = _s(C, 0x92, "Maximum Memory Range Sets Exceeded")
MAX_PROGRAMS_ACTIVATED = _s(C, 0x93, "Maximum Programs Activated")
MAX_PROGRAM_BYTES_EXCEEDED = _s(C, 0x94, "Maximum Program Bytes Exceeded")
MEMORY_RANGE_SET_IN_USE = _s(C, 0x95, "Memory Range Set In Use")
NO_PROGRAM = _s(C, 0x96, "No Program")
OVERLAPPING_MEMORY_RANGES = _s(C, 0x97, "Overlapping Memory Ranges")
PROGRAM_NOT_ACTIVATED = _s(C, 0x98, "Program Not Activated")
PROGRAM_IN_USE = _s(C, 0x99, "Program In Use")
PROGRAM_NOT_DOWNLOADABLE = _s(C, 0x9A, "Program Index Not Downloadable")
PROGRAM_TOO_BIG = _s(C, 0x9B, "Program Too Big")
#: Vendor specific: the program faulted or ran out of budget; DW0 holds the Hermes error code
#: (kind in bits 7:0, instruction index above), DW1 0.
PROGRAM_FAILED = _s(V, 0xC0, "Program Execution Failed")
del G, C, V

#: Every status above by (sct, sc), for decoding completions.
STATUSES: dict[tuple[int, int], Status] = {
    (s.sct, s.sc): s for s in list(globals().values()) if isinstance(s, Status)}


def status_of(sct: int, sc: int) -> Status:
    """The named status for (sct, sc), or an "unknown" one carrying the numbers."""
    return STATUSES.get((sct, sc)) or Status(sct, sc, "Unknown Status")


# --- queue entries ------------------------------------------------------------------------------
_SQE = struct.Struct("<BBHIIIQQQ6I")
_CQE = struct.Struct("<IIHHHH")
PSDT_SHIFT = 6        #: bits 7:6 of the flags byte (PSDT); 00b = PRPs
FUSE_MASK = 0x3


@dataclass
class Command:
    """A 64-byte submission queue entry."""

    opcode: int
    nsid: int = 0
    cid: int = 0
    flags: int = 0            #: FUSE (bits 1:0) and PSDT (bits 7:6)
    cdw2: int = 0
    cdw3: int = 0
    mptr: int = 0             #: CDW4-5
    prp1: int = 0
    prp2: int = 0
    cdw10: int = 0
    cdw11: int = 0
    cdw12: int = 0
    cdw13: int = 0
    cdw14: int = 0
    cdw15: int = 0

    def pack(self) -> bytes:
        """The 64 bytes of the entry."""
        return _SQE.pack(self.opcode & 0xFF, self.flags & 0xFF, self.cid & 0xFFFF,
                         self.nsid & 0xFFFF_FFFF, self.cdw2 & 0xFFFF_FFFF,
                         self.cdw3 & 0xFFFF_FFFF, self.mptr & MASK64, self.prp1 & MASK64,
                         self.prp2 & MASK64, *(v & 0xFFFF_FFFF for v in self.dwords_10_15()))

    @property
    def cdw4(self) -> int:
        """CDW4, the low half of MPTR (Execute Program's DLEN)."""
        return self.mptr & 0xFFFF_FFFF

    def dwords_10_15(self) -> tuple[int, int, int, int, int, int]:
        """CDW10..CDW15."""
        return (self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> Command:
        """Decode 64 bytes."""
        op, fl, cid, nsid, c2, c3, mptr, p1, p2, *rest = _SQE.unpack(raw)
        return cls(op, nsid, cid, fl, c2, c3, mptr, p1, p2, *rest)


MASK64 = 0xFFFF_FFFF_FFFF_FFFF
CQE_PHASE = 1 << 0
CQE_DNR = 1 << 15
CQE_MORE = 1 << 14


@dataclass
class Completion:
    """A 16-byte completion queue entry (``status`` is the upper halfword with the phase bit)."""

    dw0: int = 0
    dw1: int = 0
    sqhd: int = 0
    sqid: int = 0
    cid: int = 0
    status: int = 0

    def pack(self) -> bytes:
        """The 16 bytes of the entry."""
        return _CQE.pack(self.dw0 & 0xFFFF_FFFF, self.dw1 & 0xFFFF_FFFF, self.sqhd, self.sqid,
                         self.cid, self.status)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> Completion:
        """Decode 16 bytes."""
        return cls(*_CQE.unpack(raw))

    @property
    def phase(self) -> int:
        """The phase tag."""
        return self.status & CQE_PHASE

    @property
    def sct(self) -> int:
        """Status code type."""
        return (self.status >> 9) & 0x7

    @property
    def sc(self) -> int:
        """Status code."""
        return (self.status >> 1) & 0xFF

    @property
    def dnr(self) -> bool:
        """Do Not Retry."""
        return bool(self.status & CQE_DNR)

    @property
    def ok(self) -> bool:
        """True for a successful completion."""
        return self.sct == 0 and self.sc == 0

    @property
    def named_status(self) -> Status:
        """The status as a ``Status``."""
        return status_of(self.sct, self.sc)

    @property
    def result64(self) -> int:
        """DW0 | DW1 << 32 (Execute Program's 64-bit return value)."""
        return self.dw0 | (self.dw1 << 32)


def status_halfword(status: Status, phase: int, dnr: bool) -> int:
    """The CQE status halfword for ``status``: phase bit 0, SC 8:1, SCT 11:9, DNR 15."""
    return (phase & 1) | (status.sc << 1) | (status.sct << 9) | (CQE_DNR if dnr else 0)


# --- admin command fields -----------------------------------------------------------------------
#: Create I/O CQ CDW11 bits: physically contiguous, interrupts enabled, vector in 31:16.
CQ_PC, CQ_IEN = 1 << 0, 1 << 1
#: Create I/O SQ CDW11: physically contiguous (bit 0, as for a CQ), priority (2:1), CQID (31:16).
SQ_PC = CQ_PC
#: Get/Set Features: CDW10 SEL (Get, bits 10:8) and SV (Set, bit 31).
FEAT_SEL_SHIFT = 8
FEAT_SV = 1 << 31
FEAT_SEL_CURRENT, FEAT_SEL_DEFAULT, FEAT_SEL_SAVED, FEAT_SEL_SUPPORTED = 0, 1, 2, 3
#: Supported-capabilities bits of a Get Features with SEL = 3.
FEAT_CAP_CHANGEABLE = 1 << 2


def get_log_page_dwords(lid: int, nbytes: int, offset: int = 0, csi: int = 0,
                        rae: bool = False) -> tuple[int, int, int, int, int]:
    """CDW10..CDW14 of a Get Log Page of ``nbytes`` (a multiple of 4) at byte ``offset``."""
    numd = nbytes // 4 - 1
    cdw10 = (lid & 0xFF) | ((1 << 15) if rae else 0) | ((numd & 0xFFFF) << 16)
    return cdw10, numd >> 16, offset & 0xFFFF_FFFF, offset >> 32, (csi & 0xFF) << 24


# --- CP admin command fields --------------------------------------------------------------------
#: Load Program CDW10: PIND 15:0, PTYPE 23:16, SEL 24 (0 load, 1 unload), PIT 27:25.
LOAD_SEL_LOAD, LOAD_SEL_UNLOAD = 0, 1
#: Program type of an eBPF program (vendor specific range C0h-FFh; see specs/nvme-cp.md).
PTYPE_EBPF = 0xC0
PIT_NONE, PIT_PID = 0, 1
#: PIT 7 (this controller's use of a reserved value): the PID is the ELF symbol table index of
#: the entry function (the run contract's entry choice; specs/nvme-cp.md).
PIT_ENTRY_SYMBOL = 7
#: Abort CDW10 SQID of this controller's extension: no queue has it, and the CID field names a
#: program index whose Execute Program in progress is aborted (specs/nvme-cp.md).
ABORT_BY_PROGRAM = 0xFFFF
#: Program Activation Management CDW10: PIND 15:0, SEL 19:16.
ACT_SEL_DEACTIVATE, ACT_SEL_ACTIVATE = 0, 1
#: Memory Range Set Management CDW10: SEL 3:0, RSID 31:16; CDW11: NUMR 7:0.
MRS_SEL_CREATE, MRS_SEL_DELETE = 0, 1


def load_program_cdw10(pind: int, ptype: int = PTYPE_EBPF, sel: int = LOAD_SEL_LOAD,
                       pit: int = PIT_NONE) -> int:
    """CDW10 of Load Program."""
    return (pind & 0xFFFF) | ((ptype & 0xFF) << 16) | ((sel & 1) << 24) | ((pit & 7) << 25)


def activation_cdw10(pind: int, sel: int) -> int:
    """CDW10 of Program Activation Management."""
    return (pind & 0xFFFF) | ((sel & 0xF) << 16)


def mrs_cdw10(sel: int, rsid: int = 0) -> int:
    """CDW10 of Memory Range Set Management."""
    return (sel & 0xF) | ((rsid & 0xFFFF) << 16)


#: Memory Range Descriptor: MNSID (u32), length (u32), starting byte (u64), 16 reserved bytes.
_RANGE = struct.Struct("<IIQ16x")
RANGE_SIZE = _RANGE.size


@dataclass(frozen=True)
class MemoryRange:
    """One memory range: ``length`` bytes at ``start`` of memory namespace ``nsid``."""

    nsid: int
    start: int
    length: int

    def pack(self) -> bytes:
        """The 32-byte Memory Range Descriptor."""
        return _RANGE.pack(self.nsid, self.length, self.start)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> MemoryRange:
        """Decode one 32-byte descriptor."""
        nsid, length, start = _RANGE.unpack(raw)
        return cls(nsid, start, length)

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + self.length


def pack_ranges(ranges: list[MemoryRange] | tuple[MemoryRange, ...]) -> bytes:
    """Descriptors of ``ranges``, back to back."""
    return b"".join(r.pack() for r in ranges)


def unpack_ranges(raw: bytes | memoryview, count: int) -> list[MemoryRange]:
    """``count`` descriptors from ``raw``."""
    return [MemoryRange.unpack(raw[i * RANGE_SIZE:(i + 1) * RANGE_SIZE]) for i in range(count)]


# --- Execute Program and the program's view -----------------------------------------------------
#: Execute Program: CDW2 PIND 15:0 and RSID 31:16; CDW3 NUMR; CDW10-11 CPARAM1; CDW12-13
#: CPARAM2; CDW15 DLEN (not CDW4: CDW4-5 is the metadata pointer, which Linux's passthrough
#: ioctls set themselves). The data buffer holds NUMR descriptors, then program-specific data.
def execute_dwords(pind: int, rsid: int, numr: int, dlen: int) -> tuple[int, int, int]:
    """CDW2, CDW3 and CDW15 of Execute Program."""
    return (pind & 0xFFFF) | ((rsid & 0xFFFF) << 16), numr & 0xFFFF_FFFF, dlen & 0xFFFF_FFFF


#: The program's view follows the run contract (specs/run-contract.md, specs/nvme-cp.md): the
#: data window is the bytes of the ranges back to back (r1 = its start), r2 = CPARAM1 (the input
#: length; the window past it reads as zero), r3 = CPARAM2, and r4, r5 and the run's limits come
#: from these parameters at the start of the extra program data (each u64, missing ones 0):
#: arg 1 (r4), arg 2 (r5), the window length (0 = every range), the budget (0 = the controller's).
EXEC_PARAMS = struct.Struct("<QQQQ")


def exec_params(arg1: int = 0, arg2: int = 0, window: int = 0, budget: int = 0) -> bytes:
    """The run parameters of an Execute Program's extra data."""
    return EXEC_PARAMS.pack(arg1 & MASK64, arg2 & MASK64, window, budget)


def unpack_exec_params(extra: bytes | memoryview) -> tuple[int, int, int, int]:
    """(arg 1, arg 2, window length, budget) of an Execute Program's extra data."""
    raw = bytes(extra[:EXEC_PARAMS.size]).ljust(EXEC_PARAMS.size, b"\0")
    return EXEC_PARAMS.unpack(raw)


#: Log page C0h (vendor specific): one Execution Record per program index, at byte offset
#: ``pind * EXEC_RECORD_SIZE``, describing the last Execute Program of that index: instructions
#: executed, nanoseconds on the engine, the output length the program declared (all ones: none),
#: the fault of a failed run (address, size, store, call depth), the printed text's length
#: (of a failed or aborted run too) and the bytes dropped past it, the number of runs of the index,
#: the pc a failed or aborted run stopped at;
#: the text itself follows the 64-byte header.
LOG_EXECUTION_RECORD = 0xC0
EXEC_RECORD_HEADER = 64
EXEC_RECORD_TRACE = 4096
EXEC_RECORD_SIZE = EXEC_RECORD_HEADER + EXEC_RECORD_TRACE
NO_OUTPUT_LENGTH = MASK64
#: The largest call depth an Execution Record holds (its u8 field; deeper faults read as this).
EXEC_RECORD_DEPTH_MAX = 0xFF


# --- SLM command fields -------------------------------------------------------------------------
#: Memory Read/Write/Fill: CDW10-11 starting byte, CDW12 length in bytes, CDW13 fill pattern.
#: Memory Copy: CDW2-3 total length, CDW10-11 destination byte, CDW12 NR 7:0 (0's based) and
#: descriptor format 11:8.
COPY_FORMAT_SLM = 0x4
COPY_FORMAT_SHIFT = 8
_COPY_SRC = struct.Struct("<I4xQI12x")
COPY_DESC_SIZE = _COPY_SRC.size


@dataclass(frozen=True)
class CopySource:
    """A Memory Copy source (descriptor format 4h): ``length`` bytes at ``start`` of ``nsid``."""

    nsid: int
    start: int
    length: int

    def pack(self) -> bytes:
        """The 32-byte source range descriptor."""
        return _COPY_SRC.pack(self.nsid, self.start, self.length)

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> CopySource:
        """Decode one descriptor."""
        return cls(*_COPY_SRC.unpack(raw))


# --- data structures returned by Identify and Get Log Page ---------------------------------------
class Layout:
    """A fixed-size little-endian structure: named fields at byte offsets, the rest zero."""

    def __init__(self, size: int, spec: dict[str, tuple[int, str]]):
        self.size = size
        self.fields = {name: (off, struct.Struct("<" + fmt)) for name, (off, fmt) in spec.items()}
        for name, (off, st) in self.fields.items():
            if off + st.size > size:
                raise ValueError(f"field {name} runs past the {size}-byte structure")

    def pack(self, **values: object) -> bytes:
        """The structure with ``values`` set (``bytes`` fields are NUL-padded by ``struct``; use
        ``ascii_field`` for the space-padded Identify strings)."""
        out = bytearray(self.size)
        for name, value in values.items():
            off, st = self.fields[name]
            out[off:off + st.size] = st.pack(value)
        return bytes(out)

    def unpack(self, raw: bytes | memoryview) -> dict[str, Any]:
        """Every field of ``raw``: an int, or bytes for a string field (as ``struct`` gives)."""
        return {name: st.unpack_from(raw, off)[0] for name, (off, st) in self.fields.items()}


def ascii_field(text: str, size: int) -> bytes:
    """An Identify string field: ASCII, padded with spaces to ``size`` bytes."""
    raw = text.encode("ascii")[:size]
    return raw + b" " * (size - len(raw))


#: Identify Controller (CNS 01h), the fields this controller fills.
ID_CTRL = Layout(IDENTIFY_SIZE, {
    "vid": (0, "H"), "ssvid": (2, "H"), "sn": (4, "20s"), "mn": (24, "40s"), "fr": (64, "8s"),
    "rab": (72, "B"), "cmic": (76, "B"), "mdts": (77, "B"), "cntlid": (78, "H"),
    "ver": (80, "I"), "oaes": (92, "I"), "ctratt": (96, "I"), "cntrltype": (111, "B"),
    "oacs": (256, "H"), "acl": (258, "B"), "aerl": (259, "B"), "frmw": (260, "B"),
    "lpa": (261, "B"), "elpe": (262, "B"), "npss": (263, "B"), "apsta": (265, "B"),
    "wctemp": (266, "H"), "cctemp": (268, "H"), "kas": (320, "H"), "sqes": (512, "B"),
    "cqes": (513, "B"), "maxcmd": (514, "H"), "nn": (516, "I"), "oncs": (520, "H"),
    "fuses": (522, "H"), "fna": (524, "B"), "vwc": (525, "B"), "awun": (526, "H"),
    "awupf": (528, "H"), "sgls": (536, "I"), "mnan": (540, "I"), "subnqn": (768, "256s"),
    "psd0_mp": (2048, "H"),
})
#: LPA bit 1: the Commands Supported and Effects log page is supported.
LPA_EFFECTS = 1 << 1

#: I/O Command Set Independent Identify Namespace (CNS 08h).
ID_NS_INDEPENDENT = Layout(IDENTIFY_SIZE, {
    "nsfeat": (0, "B"), "nmic": (1, "B"), "rescap": (2, "B"), "fpi": (3, "B"),
    "anagrpid": (4, "I"), "nsattr": (8, "B"), "nvmsetid": (10, "H"), "endgid": (12, "H"),
    "nstat": (14, "B"),
})
NSTAT_READY = 1 << 0

#: CP Identify Namespace (CNS 05h, CSI 04h); ``numpi`` (number of program indexes) is this
#: controller's own field in reserved bytes (see specs/nvme-cp.md).
ID_NS_CP = Layout(IDENTIFY_SIZE, {
    "maxact": (0, "H"), "maxmemrs": (2, "H"), "mrsg": (4, "H"), "maxmemr": (6, "B"),
    "maxpb": (8, "Q"), "lpg": (16, "B"), "numpi": (32, "H"),
})
#: SLM Identify Namespace (CNS 05h, CSI 03h): the size in bytes (this controller's layout).
ID_NS_SLM = Layout(IDENTIFY_SIZE, {"msz": (0, "Q"), "mcl": (8, "Q"), "msrc": (16, "H")})
#: The header of an Execution Record (log page C0h).
EXEC_RECORD = Layout(EXEC_RECORD_HEADER, {
    "instructions": (0, "Q"), "elapsed_ns": (8, "Q"), "output_length": (16, "Q"),
    "fault_address": (24, "Q"), "fault_size": (32, "I"), "fault_write": (36, "B"),
    "fault_depth": (37, "B"), "trace_length": (40, "I"), "trace_dropped": (44, "I"),
    "sequence": (48, "Q"), "pc": (56, "I"),
})

#: Namespace Identification Descriptor types (CNS 03h).
NIDT_UUID, NIDT_CSI = 0x03, 0x04


def ns_descriptor(nidt: int, value: bytes) -> bytes:
    """One Namespace Identification Descriptor: type, length, 2 reserved bytes, value."""
    return bytes([nidt, len(value), 0, 0]) + value


def parse_ns_descriptors(raw: bytes | memoryview) -> dict[int, bytes]:
    """Namespace Identification Descriptors of a CNS 03h page, by type."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(raw) and raw[pos]:
        nidt, nidl = raw[pos], raw[pos + 1]
        out[nidt] = bytes(raw[pos + 4:pos + 4 + nidl])
        pos += 4 + nidl
    return out


def parse_id_list(raw: bytes | memoryview) -> list[int]:
    """The non-zero 32-bit identifiers of a namespace list page."""
    out = []
    for (v,) in struct.iter_unpack("<I", bytes(raw)):
        if v == 0:
            break
        out.append(v)
    return out


#: Error Information log entry (64 bytes).
ERROR_LOG_ENTRY = Layout(64, {
    "error_count": (0, "Q"), "sqid": (8, "H"), "cid": (10, "H"), "status": (12, "H"),
    "param_loc": (14, "H"), "lba": (16, "Q"), "nsid": (24, "I"), "csi": (30, "B"),
})
#: SMART / Health Information log page (512 bytes); the counters are 128-bit, the low 64 set.
SMART_LOG = Layout(512, {
    "critical_warning": (0, "B"), "temperature": (1, "H"), "avail_spare": (3, "B"),
    "spare_thresh": (4, "B"), "percent_used": (5, "B"), "data_units_read": (32, "Q"),
    "data_units_written": (48, "Q"), "host_reads": (64, "Q"), "host_writes": (80, "Q"),
    "power_cycles": (112, "Q"), "unsafe_shutdowns": (144, "Q"), "error_entries": (176, "Q"),
})
FIRMWARE_SLOT_LOG = Layout(512, {"afi": (0, "B"), "frs1": (8, "8s")})
#: Commands Supported and Effects: 256 admin then 256 I/O 32-bit entries; bit 0 = supported.
EFFECTS_SIZE = 4096
EFFECTS_IO_OFFSET = 1024
EFFECT_CSUPP = 1 << 0

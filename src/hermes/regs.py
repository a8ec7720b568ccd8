"""The Hermes device's published interface: registers, commands, statuses and layout codecs.

This is the contract the device model implements and the driver programs against (the equivalent
of a hardware header file); both import it, neither imports the other. Besides the numbers it
holds every layout both sides encode or decode: the BAR0 header and the ``Geometry`` it
describes, the command response, the run context's IN and OUT fields and the eBPF error kinds
with their status-0x05 codes, each with its ``pack`` and ``unpack``.
"""
from __future__ import annotations

import enum
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

# --- PCI identity ------------------------------------------------------------------------------
PCI_VENDOR_ID = 0x1DE5       #: Eideticom
PCI_DEVICE_ID = 0x3000       #: Hermes eBPF accelerator
PCI_REVISION = 1
PCI_CLASS_OTHER = 0xFF0000   #: class code "other" (base class 0xff)
MSIX_VECTORS = 32
MSIX_TABLE_OFFSET = 0x8000   #: in BAR2
MSIX_PBA_OFFSET = 0x8FE0     #: in BAR2

# --- BARs --------------------------------------------------------------------------------------
BAR_REGS = 0                 #: BAR0: Hermes registers
BAR_DMA = 2                  #: BAR2: XDMA block + MSI-X table
BAR_MEM = 4                  #: BAR4: program slots then data slots
BAR0_SIZE = 32 << 20
BAR2_SIZE = 64 << 10

# --- BAR0 registers ----------------------------------------------------------------------------
EHVER = 0x00       #: u32 RO interface version
EHBLD = 0x04       #: 48 bytes RO build string, NUL padded
EHBLD_LEN = 48
EHENG = 0x34       #: u8 RO number of engines
EHPSLOT = 0x35     #: u8 RO number of program slots
EHDSLOT = 0x36     #: u8 RO number of data slots
EHCAP = 0x37       #: u8 RO capability bits (reserved, reading 0, on devices without any)
EHCAP_ABORT = 1 << 0   #: EHCMDABORT stops a running command (status STATUS_ABORTED)
EHCAP_RUNCTX = 1 << 1  #: Run Program takes a run context (EHCMDCTXn) and fills its results
EHPSOFF = 0x38     #: u32 RO BAR4 offset of program slot 0
EHPSSZE = 0x3C     #: u32 RO program slot size
EHDSOFF = 0x40     #: u32 RO BAR4 offset of data slot 0
EHDSSZE = 0x44     #: u32 RO data slot size
# Interface version 2 (64-bit offsets, for BAR4s past 4 GiB).
EHPSOFF_V2 = 0x38  #: u64
EHPSSZE_V2 = 0x40  #: u32
EHDSOFF_V2 = 0x44  #: u64
EHDSSZE_V2 = 0x4C  #: u32
INTERFACE_VERSIONS = (1, 2)

EHCMDREQ_BASE = 0x1000   #: engine n's 32-byte request at EHCMDREQ_BASE + EHCMD_STRIDE * n
EHCMDRES_BASE = 0x1020   #: engine n's 16-byte response at EHCMDRES_BASE + EHCMD_STRIDE * n
EHCMD_STRIDE = 48
EHCMDREQ_LEN = 32
EHCMDRES_LEN = 16
EHCMDCTRL_BASE = 0x2000  #: engine n's 8-byte control at EHCMDCTRL_BASE + 8 * n
EHCMDCTRL_STRIDE = 8
EHCMDEXEC = 0            #: byte of EHCMDCTRL: host writes 1 to start, device clears when done
EHCMDDONE = 1            #: byte of EHCMDCTRL: cleared at start, set at the end (RO)
#: Byte of EHCMDCTRL (devices with EHCAP_ABORT): host writes 1 to stop the running command, which
#: then completes with STATUS_ABORTED; reads 1 from that write until the completion. Abort is a
#: control bit rather than an opcode because a command needs an idle engine, and the engines that
#: need stopping are exactly the busy ones (every engine may be).
EHCMDABORT = 2


def cmdreq(n: int) -> int:
    """BAR0 offset of engine ``n``'s command request."""
    return EHCMDREQ_BASE + EHCMD_STRIDE * n


def cmdres(n: int) -> int:
    """BAR0 offset of engine ``n``'s command response."""
    return EHCMDRES_BASE + EHCMD_STRIDE * n


def cmdctrl(n: int) -> int:
    """BAR0 offset of engine ``n``'s command control register."""
    return EHCMDCTRL_BASE + EHCMDCTRL_STRIDE * n


# --- Run context (EHCAP_RUNCTX devices; specs/run-contract.md, specs/device.md 4.6) ----------
# Engine n's 128-byte run context. The host writes the IN fields before EXEC and sets
# RUN_FLAG_CTX in the Run Program request; the device copies them at EXEC like the request and
# writes the OUT fields before DONE (after every Run Program, with or without the flag).
EHCMDCTX_BASE = 0x3000
EHCMDCTX_STRIDE = 128
EHCMDCTX_LEN = 128
CTX_INPUT_LEN = 0x00     #: u32 IN  input length: the program's r2
CTX_WINDOW = 0x04        #: u32 IN  bytes of the data slot the program may touch (>= input length)
CTX_ARG0 = 0x08          #: u64 IN  r3
CTX_ARG1 = 0x10          #: u64 IN  r4
CTX_ARG2 = 0x18          #: u64 IN  r5
CTX_ARGS = 3
CTX_BUDGET = 0x20        #: u64 IN  instruction budget of this run (0: the device's own)
CTX_ENTRY = 0x28         #: u32 IN  ELF symbol table index of the entry function (0: default)
CTX_IN_RESERVED = 0x2C   #: u32 IN  reserved, must be 0
CTX_INSNS = 0x30         #: u64 OUT instructions executed
CTX_OUTPUT_LEN = 0x38    #: u32 OUT length declared by hermes_set_output, CTX_NO_OUTPUT if none
CTX_TRACE_LEN = 0x3C     #: u32 OUT bytes of printed text in EHTRACEn
CTX_RUN_NS = 0x40        #: u64 OUT nanoseconds the program ran
CTX_FAULT_ADDR = 0x48    #: u64 OUT virtual address of the faulting access (out_of_bounds)
CTX_FAULT_SIZE = 0x50    #: u32 OUT bytes of the faulting access
CTX_FAULT_FLAGS = 0x54   #: u32 OUT bit 0: the faulting access was a store; bits 15..8: call depth
CTX_TRACE_DROPPED = 0x58  #: u32 OUT printed bytes dropped past TRACE_LIMIT
CTX_RUN_BUDGET = 0x60    #: u64 OUT the instruction budget the run had (the context's or device's)
CTX_OUT_FIELDS = (CTX_INSNS, CTX_RUN_BUDGET + 8)  #: [start, end) of the OUT fields (read-only)
CTX_NO_OUTPUT = 0xFFFF_FFFF
FAULT_WRITE = 1 << 0
#: CTX_FAULT_FLAGS bits 15..8: the call depth of the faulting access (0: the entry function).
CTX_FAULT_DEPTH_SHIFT = 8
CTX_FAULT_DEPTH_MASK = 0xFF
#: Engine n's printed text (bpf_trace_printk) of its last run, TRACE_LIMIT bytes, read-only.
EHTRACE_BASE = 0x10000
EHTRACE_STRIDE = 0x1000
TRACE_LIMIT = 4096
#: Bit of Run Program request byte 10: take this run's parameters from EHCMDCTXn.
RUN_FLAG_CTX = 1 << 0


def cmdctx(n: int) -> int:
    """BAR0 offset of engine ``n``'s run context."""
    return EHCMDCTX_BASE + EHCMDCTX_STRIDE * n


def trace_buffer(n: int) -> int:
    """BAR0 offset of engine ``n``'s printed-text buffer."""
    return EHTRACE_BASE + EHTRACE_STRIDE * n


# --- Commands ----------------------------------------------------------------------------------
CMD_REQUEST_SLOT = 0x00  #: req[8] slot type -> res[8..15] slot id
CMD_RELEASE_SLOT = 0x01  #: req[8] slot type, req[9] slot id
CMD_RUN_PROGRAM = 0x80   #: req[8] prog slot, req[9] data slot, req[10] flags, req[12..15] length
RUN_FLAGS_BYTE = 10      #: Run Program request byte holding RUN_FLAG_* (reserved, 0, before)
SLOT_PROGRAM = 0
SLOT_DATA = 1

STATUS_SUCCESS = 0x00
STATUS_NO_SPACE = 0x01
STATUS_INVALID_PROG_SLOT = 0x02
STATUS_INVALID_DATA_SLOT = 0x03
STATUS_INVALID_ADDRESS = 0x04
STATUS_EBPF_ERROR = 0x05
STATUS_INVALID_OPCODE = 0x06
STATUS_ABORTED = 0x07    #: the command was stopped by EHCMDABORT (or a device reset / close)
STATUS_INVALID_CONTEXT = 0x08  #: RUN_FLAG_CTX with a bad run context (window, reserved bits)
STATUS_NAMES = {
    STATUS_SUCCESS: "success",
    STATUS_NO_SPACE: "not enough space",
    STATUS_INVALID_PROG_SLOT: "invalid program slot",
    STATUS_INVALID_DATA_SLOT: "invalid data slot",
    STATUS_INVALID_ADDRESS: "invalid address",
    STATUS_EBPF_ERROR: "eBPF error",
    STATUS_INVALID_OPCODE: "invalid opcode",
    STATUS_ABORTED: "aborted",
    STATUS_INVALID_CONTEXT: "invalid run context",
}

# --- BAR2: XDMA block --------------------------------------------------------------------------
XDMA_TARGET_H2C = 0x0
XDMA_TARGET_C2H = 0x1
XDMA_TARGET_IRQ = 0x2
XDMA_TARGET_CONFIG = 0x3
XDMA_TARGET_H2C_SGDMA = 0x4
XDMA_TARGET_C2H_SGDMA = 0x5
XDMA_TARGET_SGDMA_COMMON = 0x6
XDMA_TARGET_MSIX = 0x8
XDMA_H2C_CHANNELS = 4
XDMA_C2H_CHANNELS = 4
XDMA_ID_MAGIC = 0x1FC     #: identifier bits 31..20
XDMA_VERSION = 0x05


def xdma_offset(target: int, channel: int, reg: int) -> int:
    """BAR2 offset of register ``reg`` of ``channel`` in register group ``target``."""
    return (target << 12) | (channel << 8) | reg


# channel registers (target H2C / C2H)
XDMA_CH_IDENTIFIER = 0x00
XDMA_CH_CONTROL = 0x04
XDMA_CH_CONTROL_W1S = 0x08
XDMA_CH_CONTROL_W1C = 0x0C
XDMA_CH_STATUS = 0x40        #: bit 0 busy; bits 23..1 error/event bits, RW1C
XDMA_CH_STATUS_RC = 0x44     #: status, clear on read
XDMA_CH_COMPLETED = 0x48     #: completed descriptor count
XDMA_CH_ALIGNMENTS = 0x4C
XDMA_CH_IRQ_MASK = 0x90
XDMA_CH_IRQ_MASK_W1S = 0x94
XDMA_CH_IRQ_MASK_W1C = 0x98
XDMA_CTRL_RUN = 1 << 0
XDMA_STAT_BUSY = 1 << 0
XDMA_STAT_DESC_STOPPED = 1 << 1
XDMA_STAT_DESC_COMPLETED = 1 << 2
XDMA_STAT_MAGIC_STOPPED = 1 << 4
XDMA_STAT_INVALID_LEN = 1 << 5     #: project decision: length past BAR4 / host memory end
XDMA_STAT_READ_ERROR = 1 << 9      #: source address not readable
XDMA_STAT_WRITE_ERROR = 1 << 14    #: destination address not writable
XDMA_STAT_DESC_ERROR = 1 << 19     #: chain too long / looping / unreadable descriptor
# SGDMA registers (target H2C_SGDMA / C2H_SGDMA)
XDMA_SG_DESC_LO = 0x80
XDMA_SG_DESC_HI = 0x84
XDMA_SG_DESC_ADJ = 0x88
# IRQ block registers (target IRQ, channel 0)
XDMA_IRQ_USER_MASK = 0x04
XDMA_IRQ_USER_MASK_W1S = 0x08
XDMA_IRQ_USER_MASK_W1C = 0x0C
XDMA_IRQ_CHANNEL_MASK = 0x10
XDMA_IRQ_CHANNEL_MASK_W1S = 0x14
XDMA_IRQ_CHANNEL_MASK_W1C = 0x18
XDMA_IRQ_USER_REQUEST = 0x40
XDMA_IRQ_CHANNEL_REQUEST = 0x44
XDMA_IRQ_USER_PENDING = 0x48
XDMA_IRQ_CHANNEL_PENDING = 0x4C
XDMA_IRQ_USER_VECTOR = 0x80     #: 0x80..0x8C, four vector numbers a register
XDMA_IRQ_CHANNEL_VECTOR = 0xA0  #: 0xA0..0xA4

# descriptors (32 bytes in host memory)
DESC_MAGIC = 0xAD4B
DESC_SIZE = 32
DESC_STOP = 1 << 0
DESC_COMPLETED = 1 << 1
DESC_EOP = 1 << 4
MAX_DESC_CHAIN = 4096
#: Longest transfer one descriptor may describe (XDMA's 28-bit length field).
DESC_MAX_LEN = (1 << 28) - 1


def desc_control(adjacent: int = 0, *, stop: bool = False, eop: bool = False,
                 completed: bool = False) -> int:
    """The control word of a descriptor (magic, adjacent count, flags)."""
    return ((DESC_MAGIC << 16) | ((adjacent & 0x3F) << 8) | (DESC_EOP if eop else 0)
            | (DESC_COMPLETED if completed else 0) | (DESC_STOP if stop else 0))


def h2c_vector(channel: int) -> int:
    """MSI-X vector of H2C channel ``channel``."""
    return channel


def c2h_vector(channel: int) -> int:
    """MSI-X vector of C2H channel ``channel``."""
    return XDMA_H2C_CHANNELS + channel


def engine_vector(engine: int) -> int:
    """MSI-X vector of engine ``engine`` (after the DMA channels)."""
    return XDMA_H2C_CHANNELS + XDMA_C2H_CHANNELS + engine


# --- eBPF error codes carried by status 0x05 (response bytes 8..15) ---------------------------
# Low 8 bits: the kind; the rest: detail (e.g. the faulting pc << 8 for run-time faults).
EBPF_ERR_LOAD = 0x01           #: program failed to load (bad length, opcode, jump); detail = index
EBPF_ERR_OUT_OF_BOUNDS = 0x02  #: memory access outside the program's regions; detail = pc
EBPF_ERR_BUDGET = 0x03         #: instruction budget exhausted; detail = pc
EBPF_ERR_CALL_DEPTH = 0x04     #: call depth limit exceeded; detail = pc
EBPF_ERR_HELPER = 0x05         #: helper failed or unknown; detail = pc
EBPF_ERR_UNSUPPORTED = 0x06    #: instruction the engine cannot execute; detail = pc
EBPF_ERR_INTERNAL = 0x7F       #: anything else


# Not enum.StrEnum: that needs Python 3.11, the package supports 3.10.
class ErrorKind(str, enum.Enum):  # noqa: UP042
    """The kind of a status-0x05 eBPF error: its name (the value, also ``ExecutionError.kind``),
    its code in the low 8 bits of the error code, and its text for messages."""

    code: int
    text: str

    def __new__(cls, name: str, code: int, text: str) -> ErrorKind:
        member = str.__new__(cls, name)
        member._value_ = name
        member.code = code
        member.text = text
        return member

    LOAD = ("load", EBPF_ERR_LOAD, "program failed to load")
    OUT_OF_BOUNDS = ("out_of_bounds", EBPF_ERR_OUT_OF_BOUNDS, "memory access out of bounds")
    BUDGET = ("budget", EBPF_ERR_BUDGET, "instruction budget exhausted")
    CALL_DEPTH = ("call_depth", EBPF_ERR_CALL_DEPTH, "call depth limit exceeded")
    HELPER = ("helper", EBPF_ERR_HELPER, "helper call failed")
    UNSUPPORTED = ("unsupported", EBPF_ERR_UNSUPPORTED, "instruction not supported by the engine")
    INTERNAL = ("internal", EBPF_ERR_INTERNAL, "internal engine error")

    # The name, not ``ErrorKind.X``, in messages and f-strings (as a plain ``str`` kind reads).
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)

    @classmethod
    def of(cls, name: str) -> ErrorKind:
        """The kind called ``name``; INTERNAL for a name the device has no code for."""
        return _KINDS_BY_NAME.get(name, cls.INTERNAL)

    @classmethod
    def of_code(cls, code: int) -> ErrorKind | None:
        """The kind whose code is the low byte of ``code``; None for a code no kind has."""
        return _KINDS_BY_CODE.get(code & 0xFF)

    def pack(self, detail: int | None = 0) -> int:
        """The status-0x05 error code: this kind's code in bits 7..0, ``detail`` (a pc, or an
        instruction index for LOAD; None counts as 0) above."""
        return (self.code | (detail or 0) << 8) & _u64_mask

    @classmethod
    def unpack(cls, code: int) -> tuple[ErrorKind | None, int]:
        """(kind, detail) of a status-0x05 error code; the kind is None for an unknown code."""
        return cls.of_code(code), code >> 8


#: What the codecs decode: any buffer of the block's bytes (a BAR0 slice is a bytearray).
BytesLike = bytes | bytearray | memoryview
# Lower case: drivers/linux/gen_regs_h.py publishes every upper-case integer of this module.
_u64_mask = (1 << 64) - 1
_KINDS_BY_CODE = {kind.code: kind for kind in ErrorKind}
_KINDS_BY_NAME = {kind.value: kind for kind in ErrorKind}


class Layout:
    """Little-endian integer (and byte-string) fields at fixed offsets of a register block."""

    _FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}

    def __init__(self, start: int, end: int, fields: tuple[tuple[str, int, int | str], ...]):
        """Fields are (name, offset, size) rows in offset order; a size given as ``"48s"`` is a
        byte string. Gaps between fields are reserved bytes (packed as 0)."""
        fmt, pos = "<", start
        for name, offset, size in fields:
            if offset < pos:
                raise ValueError(f"field {name} at {offset:#x} overlaps the one before it")
            fmt += f"{offset - pos}x" if offset > pos else ""
            fmt += size if isinstance(size, str) else self._FORMATS[size]
            pos = offset + (int(size[:-1]) if isinstance(size, str) else size)
        if pos > end:
            raise ValueError(f"fields end at {pos:#x}, past the block end {end:#x}")
        self.start, self.end = start, end
        self.names = tuple(name for name, _, _ in fields)
        #: Per field: the mask of an integer field's width, None for a byte string.
        self._masks = tuple(None if isinstance(size, str) else (1 << 8 * size) - 1
                            for _, _, size in fields)
        self._ints = None not in self._masks
        self._struct = struct.Struct(fmt + (f"{end - pos}x" if end > pos else ""))

    @property
    def size(self) -> int:
        """Bytes of the block."""
        return self.end - self.start

    def pack(self, *values: int | bytes) -> bytes:
        """The block's bytes from the field values in field order; an integer keeps the low
        bits its field holds, as a register does."""
        if len(values) != len(self._masks):
            raise ValueError(f"{len(values)} values for {len(self._masks)} fields")
        try:  # on the path of every command: values in range need no masking
            return self._struct.pack(*values)
        except struct.error:
            pass
        if self._ints:
            return self._struct.pack(*map(operator.and_, values, self._masks))
        return self._struct.pack(*(v if m is None else v & m  # type: ignore[operator]
                                   for v, m in zip(values, self._masks, strict=True)))

    def overflowing(self, *values: int | bytes) -> list[str]:
        """Names of the integer fields whose value (in field order) is outside their width."""
        return [name for name, v, m in zip(self.names, values, self._masks, strict=True)
                if m is not None and not 0 <= v <= m]  # type: ignore[operator]

    def unpack(self, data: BytesLike, offset: int = 0) -> tuple:
        """The field values (in field order) of the block's bytes at ``offset`` of ``data``."""
        return self._struct.unpack_from(data, offset)


# --- the 16-byte command response ------------------------------------------------------------
_RESPONSE = Layout(0, EHCMDRES_LEN, (("cmd_id", 0, 2), ("status", 2, 1), ("reserved", 3, "5s"),
                                     ("value", 8, 8)))


class Response(NamedTuple):
    """A command response: the echoed command id, the status byte and response bytes 8..15
    (``reserved`` holds bytes 3..7, normally 0)."""

    cmd_id: int
    status: int
    value: int = 0
    reserved: int = 0

    @classmethod
    def unpack(cls, raw: BytesLike) -> Response:
        """Decode the 16 response bytes."""
        cmd_id, status, reserved, value = _RESPONSE.unpack(raw)
        return cls(cmd_id, status, value, int.from_bytes(reserved, "little"))

    def pack(self) -> bytes:
        """The 16 response bytes (command id and value taken modulo their widths)."""
        return _RESPONSE.pack(self.cmd_id, self.status, self.reserved.to_bytes(5, "little"),
                              self.value)

    @staticmethod
    def pack_fields(cmd_id: int, status: int, value: int = 0) -> bytes:
        """What ``Response(cmd_id, status, value).pack()`` gives (reserved bytes 0), without
        the tuple: the fast form for the device's every completion."""
        return _RESPONSE.pack(cmd_id, status, b"", value)

    @classmethod
    def parse(cls, raw: BytesLike) -> Response:
        """``unpack`` under the name the driver's users know."""
        return cls.unpack(raw)

    @property
    def raw(self) -> bytes:
        """``pack()`` under the name the driver's users know."""
        return self.pack()

    @property
    def status_name(self) -> str:
        """The status byte's name from the interface definition."""
        return STATUS_NAMES.get(self.status, f"unknown status {self.status:#04x}")

    @property
    def error_kind(self) -> ErrorKind | None:
        """For status 0x05, the eBPF error kind (None otherwise, or for a code no kind has)."""
        return ErrorKind.of_code(self.value) if self.status == STATUS_EBPF_ERROR else None

    @property
    def error_detail(self) -> int | None:
        """For status 0x05, the detail of the error code (pc, or instruction index for loads)."""
        return self.value >> 8 if self.status == STATUS_EBPF_ERROR else None


# --- the BAR0 header (capability registers) and the geometry it describes --------------------
@dataclass(frozen=True)
class Geometry:
    """What a Hermes device is: what its BAR0 header says (version through data slot size) and
    the XDMA channels of BAR2. The model builds its header from one; the driver's probe returns
    one."""

    version: int
    build: str
    engines: int
    program_slots: int
    data_slots: int
    program_slot_offset: int
    program_slot_size: int
    data_slot_offset: int
    data_slot_size: int
    capabilities: int = 0
    h2c_channels: int = XDMA_H2C_CHANNELS
    c2h_channels: int = XDMA_C2H_CHANNELS
    #: Bytes of BAR4 the slots span (the end of whichever slot area ends last).
    bar4_size: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bar4_size", max(
            self.program_slot_offset + self.program_slots * self.program_slot_size,
            self.data_slot_offset + self.data_slots * self.data_slot_size))

    def program_slot(self, slot: int) -> int:
        """BAR4 offset of program slot ``slot``."""
        return self.program_slot_offset + slot * self.program_slot_size

    def data_slot(self, slot: int) -> int:
        """BAR4 offset of data slot ``slot``."""
        return self.data_slot_offset + slot * self.data_slot_size


class InterfaceVersionError(ValueError):
    """EHVER holds a version this interface definition has no header layout for."""

    def __init__(self, version: int):
        self.version = version
        super().__init__(f"unsupported Hermes interface version {version:#x}; supported: "
                         f"{', '.join(map(str, INTERFACE_VERSIONS))}")


_HEADER_COMMON = (("version", EHVER, 4), ("build", EHBLD, f"{EHBLD_LEN}s"), ("engines", EHENG, 1),
                  ("program_slots", EHPSLOT, 1), ("data_slots", EHDSLOT, 1),
                  ("capabilities", EHCAP, 1))


class Header:
    """The BAR0 header of each interface version: which capability registers it has, where."""

    #: Interface version -> its header layout; version 2 widens the slot offsets to 64 bits.
    LAYOUTS = {
        1: Layout(0, EHDSSZE + 4, _HEADER_COMMON + (
            ("program_slot_offset", EHPSOFF, 4), ("program_slot_size", EHPSSZE, 4),
            ("data_slot_offset", EHDSOFF, 4), ("data_slot_size", EHDSSZE, 4))),
        2: Layout(0, EHDSSZE_V2 + 4, _HEADER_COMMON + (
            ("program_slot_offset", EHPSOFF_V2, 8), ("program_slot_size", EHPSSZE_V2, 4),
            ("data_slot_offset", EHDSOFF_V2, 8), ("data_slot_size", EHDSSZE_V2, 4))),
    }

    @classmethod
    def layout(cls, version: int) -> Layout:
        """The header layout of interface ``version``; InterfaceVersionError if there is none."""
        try:
            return cls.LAYOUTS[version]
        except KeyError:
            raise InterfaceVersionError(version) from None

    @classmethod
    def end(cls, version: int) -> int:
        """BAR0 offset just past the header of interface ``version``."""
        return cls.layout(version).end

    @classmethod
    def pack(cls, geometry: Geometry) -> bytes:
        """The header bytes (BAR0 offset 0 on) describing ``geometry``, in its version's layout.

        The build string is UTF-8, NUL padded to EHBLD_LEN bytes; ValueError if it is longer or
        a field does not fit its register."""
        build = geometry.build.encode("utf-8")
        if len(build) > EHBLD_LEN:
            raise ValueError(f"build string is {len(build)} bytes; EHBLD holds {EHBLD_LEN}")
        layout = cls.layout(geometry.version)
        values = [build if name == "build" else getattr(geometry, name) for name in layout.names]
        wide = layout.overflowing(*values)
        if wide:
            raise ValueError(f"{', '.join(wide)} of the geometry do not fit the registers of "
                             f"interface version {geometry.version}")
        return layout.pack(*values)

    @classmethod
    def unpack(cls, read: Callable[[int, int], bytes], *, h2c_channels: int = XDMA_H2C_CHANNELS,
               c2h_channels: int = XDMA_C2H_CHANNELS) -> Geometry:
        """The geometry a BAR0 header describes. ``read(offset, length)`` returns BAR0 bytes
        (lengths are multiples of 4): first EHVER, then the whole header of that version.
        InterfaceVersionError when EHVER names no known version; the build string is read up to
        its first NUL, as ASCII."""
        version = int.from_bytes(read(EHVER, 4), "little")
        layout = cls.layout(version)
        values = dict(zip(layout.names, layout.unpack(read(0, layout.end)), strict=True))
        values["build"] = values["build"].split(b"\0", 1)[0].decode("ascii", "replace")
        return Geometry(**values, h2c_channels=h2c_channels, c2h_channels=c2h_channels)


# --- the run context: IN fields (host -> device) and OUT fields (device -> host) ---------------
_CTX_IN = Layout(0, CTX_OUT_FIELDS[0], (
    ("input_len", CTX_INPUT_LEN, 4), ("window", CTX_WINDOW, 4), ("arg0", CTX_ARG0, 8),
    ("arg1", CTX_ARG1, 8), ("arg2", CTX_ARG2, 8), ("budget", CTX_BUDGET, 8),
    ("entry", CTX_ENTRY, 4), ("reserved", CTX_IN_RESERVED, 4)))
_CTX_OUT = Layout(CTX_OUT_FIELDS[0], CTX_OUT_FIELDS[1], (
    ("instructions", CTX_INSNS, 8), ("output_len", CTX_OUTPUT_LEN, 4),
    ("trace_len", CTX_TRACE_LEN, 4), ("run_ns", CTX_RUN_NS, 8),
    ("fault_address", CTX_FAULT_ADDR, 8), ("fault_size", CTX_FAULT_SIZE, 4),
    ("fault_flags", CTX_FAULT_FLAGS, 4), ("trace_dropped", CTX_TRACE_DROPPED, 4),
    ("run_budget", CTX_RUN_BUDGET, 8)))


#: The IN fields seen as the 64-bit words a host writes them in.
_CTX_IN_WORDS = struct.Struct(f"<{_CTX_IN.size // 8}Q")
#: The OUT fields of a RunContextOut in layout order (its attributes are named as the fields).
_CTX_OUT_VALUES = operator.attrgetter(*_CTX_OUT.names)


@dataclass(frozen=True, slots=True)
class RunContextIn:
    """EHCMDCTXn's IN fields, which the host writes before a Run Program with RUN_FLAG_CTX:
    ``input_len`` (r2), the ``window`` of the data slot, three ``args`` (r3..r5), the ``budget``
    (0: the device's), the ELF ``entry`` symbol index (0: default) and ``reserved`` (must be 0)."""

    input_len: int
    window: int
    args: tuple[int, ...] = (0, 0, 0)
    budget: int = 0
    entry: int = 0
    reserved: int = 0

    #: Bytes of the IN fields (EHCMDCTXn offset 0 on).
    SIZE: ClassVar[int] = _CTX_IN.size

    def pack(self) -> bytes:
        """The IN fields' bytes, EHCMDCTXn offset 0 on (``args`` padded with 0 to three)."""
        args = tuple(self.args) + (0,) * (CTX_ARGS - len(self.args))
        return _CTX_IN.pack(self.input_len, self.window, *args, self.budget, self.entry,
                            self.reserved)

    @classmethod
    def unpack(cls, raw: BytesLike) -> RunContextIn:
        """The IN fields from their bytes (EHCMDCTXn offset 0 on)."""
        input_len, window, a0, a1, a2, budget, entry, reserved = _CTX_IN.unpack(raw)
        return cls(input_len, window, (a0, a1, a2), budget, entry, reserved)

    @staticmethod
    def fields(raw: BytesLike, offset: int = 0) -> tuple[int, ...]:
        """What ``unpack`` reads, as the plain tuple (input_len, window, arg0, arg1, arg2,
        budget, entry, reserved), from the bytes at ``offset`` of ``raw`` (the fast form)."""
        return _CTX_IN.unpack(raw, offset)

    @staticmethod
    def words(input_len: int, window: int, a0: int, a1: int, a2: int, budget: int,
              entry: int) -> tuple[int, ...]:
        """The IN fields as the little-endian 64-bit words the host writes (reserved 0), each
        field taken modulo its width."""
        return _CTX_IN_WORDS.unpack(_CTX_IN.pack(input_len, window, a0, a1, a2, budget, entry, 0))


@dataclass(frozen=True, slots=True)
class RunContextOut:
    """EHCMDCTXn's OUT fields, which the device writes before DONE after every Run Program.

    ``output_len`` is CTX_NO_OUTPUT when the program declared none; ``fault_*`` describe an
    out-of-bounds access (0 otherwise; ``fault_flags`` holds FAULT_WRITE and the call depth);
    ``run_budget`` is the instruction budget the run had."""

    instructions: int = 0
    output_len: int = CTX_NO_OUTPUT
    trace_len: int = 0
    run_ns: int = 0
    fault_address: int = 0
    fault_size: int = 0
    fault_flags: int = 0
    trace_dropped: int = 0
    run_budget: int = 0

    #: Bytes of the OUT fields (EHCMDCTXn offset CTX_INSNS on).
    SIZE: ClassVar[int] = _CTX_OUT.size

    def pack(self) -> bytes:
        """The OUT fields' bytes, EHCMDCTXn offset CTX_INSNS on."""
        return _CTX_OUT.pack(*_CTX_OUT_VALUES(self))

    @classmethod
    def unpack(cls, raw: BytesLike) -> RunContextOut:
        """The OUT fields from their bytes (EHCMDCTXn offset CTX_INSNS on)."""
        return cls(*_CTX_OUT.unpack(raw))

    @staticmethod
    def fields(raw: BytesLike) -> tuple[int, ...]:
        """What ``unpack`` reads, as the plain tuple of the fields in order (the fast form)."""
        return _CTX_OUT.unpack(raw)

    @staticmethod
    def pack_fields(*values: int) -> bytes:
        """What ``pack`` writes, from the fields' values in order (the fast form)."""
        return _CTX_OUT.pack(*values)

    @property
    def fault_write(self) -> bool:
        """Whether the faulting access was a store."""
        return bool(self.fault_flags & FAULT_WRITE)

    @property
    def fault_depth(self) -> int:
        """The call depth of the faulting access (0: the entry function)."""
        return self.fault_flags >> CTX_FAULT_DEPTH_SHIFT & CTX_FAULT_DEPTH_MASK

    @staticmethod
    def fault_flags_of(write: bool, depth: int) -> int:
        """CTX_FAULT_FLAGS for a fault that was a store (``write``) at call ``depth`` (capped
        at what the field holds)."""
        return (FAULT_WRITE if write else 0) | min(depth, CTX_FAULT_DEPTH_MASK) << \
            CTX_FAULT_DEPTH_SHIFT

"""The Hermes device's published interface as constants: BARs, registers, commands, statuses.

This is the contract the device model implements and the driver programs against (the equivalent
of a hardware header file); both import it, neither imports the other.
"""
from __future__ import annotations

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
CTX_RUN_BUDGET = 0x60    #: u64 OUT the instruction budget the run had (the context's or the device's)
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
EBPF_ERR_LOAD = 0x01           #: program failed to load (bad length, opcode, jump...); detail = index
EBPF_ERR_OUT_OF_BOUNDS = 0x02  #: memory access outside the program's regions; detail = pc
EBPF_ERR_BUDGET = 0x03         #: instruction budget exhausted; detail = pc
EBPF_ERR_CALL_DEPTH = 0x04     #: call depth limit exceeded; detail = pc
EBPF_ERR_HELPER = 0x05         #: helper failed or unknown; detail = pc
EBPF_ERR_UNSUPPORTED = 0x06    #: instruction the engine cannot execute; detail = pc
EBPF_ERR_INTERNAL = 0x7F       #: anything else

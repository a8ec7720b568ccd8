"""The eBPF instruction set (RFC 9669): one table of opcodes, forms and semantics, and its codec.

Everything that encodes, decodes, assembles, disassembles, verifies, interprets or compiles eBPF
reads this table; nothing else in the project spells an opcode number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from ..errors import ProgramError

# --- Instruction classes (low 3 bits of the opcode) -------------------------------------------
CLS_LD = 0x00     #: non-standard loads: only ``lddw`` (mode IMM); ABS/IND are legacy and rejected
CLS_LDX = 0x01    #: load into a register from memory
CLS_ST = 0x02     #: store an immediate to memory
CLS_STX = 0x03    #: store a register to memory, and atomics
CLS_ALU = 0x04    #: 32-bit arithmetic; results are zero-extended to 64 bits
CLS_JMP = 0x05    #: 64-bit comparisons, calls and exit
CLS_JMP32 = 0x06  #: 32-bit comparisons (and ``gotol``)
CLS_ALU64 = 0x07  #: 64-bit arithmetic

# --- Source bit of ALU/JMP opcodes --------------------------------------------------------------
SRC_K = 0x00  #: operand is the sign-extended 32-bit immediate
SRC_X = 0x08  #: operand is the source register

# --- Size field of load/store opcodes (bits 4..3) ----------------------------------------------
SIZE_W = 0x00   #: 4 bytes
SIZE_H = 0x08   #: 2 bytes
SIZE_B = 0x10   #: 1 byte
SIZE_DW = 0x18  #: 8 bytes
SIZE_BYTES = {SIZE_W: 4, SIZE_H: 2, SIZE_B: 1, SIZE_DW: 8}
SIZE_SUFFIX = {SIZE_W: "w", SIZE_H: "h", SIZE_B: "b", SIZE_DW: "dw"}

# --- Mode field of load/store opcodes (bits 7..5) ----------------------------------------------
MODE_IMM = 0x00     #: 64-bit immediate (``lddw``)
MODE_ABS = 0x20     #: legacy packet access (rejected)
MODE_IND = 0x40     #: legacy packet access (rejected)
MODE_MEM = 0x60     #: regular memory access
MODE_MEMSX = 0x80   #: sign-extending load
MODE_ATOMIC = 0xC0  #: atomic read-modify-write (STX only)

# --- ALU operation codes (bits 7..4) -------------------------------------------------------------
ALU_ADD = 0x00   #: dst += src
ALU_SUB = 0x10   #: dst -= src
ALU_MUL = 0x20   #: dst *= src
ALU_DIV = 0x30   #: dst /= src (offset 1: signed); x / 0 = 0
ALU_OR = 0x40    #: dst |= src
ALU_AND = 0x50   #: dst &= src
ALU_LSH = 0x60   #: dst <<= src, shift masked to the width
ALU_RSH = 0x70   #: dst >>= src, logical, masked
ALU_NEG = 0x80   #: dst = -dst
ALU_MOD = 0x90   #: dst %= src (offset 1: signed); x % 0 = x
ALU_XOR = 0xA0   #: dst ^= src
ALU_MOV = 0xB0   #: dst = src (offset 8/16/32: sign-extending movsx)
ALU_ARSH = 0xC0  #: dst >>= src, arithmetic, masked
ALU_END = 0xD0   #: byte swap (ALU: to le/be; ALU64: unconditional bswap)

# --- JMP operation codes (bits 7..4) -------------------------------------------------------------
JMP_JA = 0x00    #: pc += 1 + off (JMP32 class: ``gotol``, pc += 1 + imm)
JMP_JEQ = 0x10   #: jump if dst == src
JMP_JGT = 0x20   #: jump if dst > src, unsigned
JMP_JGE = 0x30   #: jump if dst >= src, unsigned
JMP_JSET = 0x40  #: jump if dst & src != 0
JMP_JNE = 0x50   #: jump if dst != src
JMP_JSGT = 0x60  #: jump if dst > src, signed
JMP_JSGE = 0x70  #: jump if dst >= src, signed
JMP_CALL = 0x80  #: src 0: helper imm; src 1: local function at pc + 1 + imm; X: helper id in dst
JMP_EXIT = 0x90  #: return r0 to the caller or end the program
JMP_JLT = 0xA0   #: jump if dst < src, unsigned
JMP_JLE = 0xB0   #: jump if dst <= src, unsigned
JMP_JSLT = 0xC0  #: jump if dst < src, signed
JMP_JSLE = 0xD0  #: jump if dst <= src, signed

# --- Atomic operations (imm of an ATOMIC STX) ----------------------------------------------------
ATOMIC_ADD = 0x00      #: *addr += src
ATOMIC_OR = 0x40       #: *addr |= src
ATOMIC_AND = 0x50      #: *addr &= src
ATOMIC_XOR = 0xA0      #: *addr ^= src
ATOMIC_FETCH = 0x01    #: flag: the old value is written back to src
ATOMIC_XCHG = 0xE1     #: src = xchg(*addr, src)
ATOMIC_CMPXCHG = 0xF1  #: r0 = cmpxchg(*addr, r0, src)

# --- lddw source variants (src field of opcode 0x18) --------------------------------------------
LDDW_SRC = {
    0: "64-bit immediate",
    1: "map by file descriptor (BPF_PSEUDO_MAP_FD)",
    2: "map value address (BPF_PSEUDO_MAP_VALUE)",
    3: "kernel variable by BTF id (BPF_PSEUDO_BTF_ID)",
    4: "address of a function (BPF_PSEUDO_FUNC)",
    5: "map by index (BPF_PSEUDO_MAP_IDX)",
    6: "map value by index (BPF_PSEUDO_MAP_IDX_VALUE)",
}

OPCODE_LDDW = CLS_LD | MODE_IMM | SIZE_DW  #: 0x18, the only two-slot instruction
MAX_REG = 10     #: r0..r10
#: Largest program the bare engine accepts, in 64-bit slots.
MAX_PROGRAM_SLOTS = 65536

class Form(str, Enum):  # noqa: UP042 - not StrEnum: the package supports Python 3.10
    """An operand form: how an instruction's fields are written in assembly (``FORMS``) and, through
    the ``Op`` properties, what kind of instruction it is. A ``str`` enum that compares and hashes
    as its value, so ``op.form == "ldx"`` holds."""

    ALU_K = "alu_k"            #: dst op= imm
    ALU_X = "alu_x"            #: dst op= src
    UNARY = "unary"            #: neg dst
    END = "end"                #: byte swap of dst
    JA = "ja"                  #: pc += 1 + off
    GOTOL = "gotol"            #: pc += 1 + imm
    JCOND_K = "jcond_k"        #: if dst cmp imm: pc += 1 + off
    JCOND_X = "jcond_x"        #: if dst cmp src: pc += 1 + off
    CALL = "call"              #: helper imm
    CALL_LOCAL = "call_local"  #: local function at pc + 1 + imm
    CALLX = "callx"            #: helper whose id is in dst
    EXIT = "exit"              #: return r0
    LDDW = "lddw"              #: dst = imm64 (two slots)
    LDX = "ldx"                #: dst = *(src + off)
    ST = "st"                  #: *(dst + off) = imm
    STX = "stx"                #: *(dst + off) = src
    ATOMIC = "atomic"          #: read-modify-write of *(dst + off) with src

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__


# How each form is written in assembly and which fields must be 0.
#   form             syntax (after the mnemonic)    fields that must be zero
FORMS: dict[Form, tuple[str, tuple[str, ...]]] = {
    Form.ALU_K:      ("dst, imm",          ("src", "off")),
    Form.ALU_X:      ("dst, src",          ("imm", "off")),
    Form.UNARY:      ("dst",               ("src", "off", "imm")),
    Form.END:        ("dst",               ("src", "off")),
    Form.JA:         ("off",               ("dst", "src", "imm")),
    Form.GOTOL:      ("imm_target",        ("dst", "src", "off")),
    Form.JCOND_K:    ("dst, imm, off",     ("src",)),
    Form.JCOND_X:    ("dst, src, off",     ("imm",)),
    Form.CALL:       ("imm",               ("dst", "off")),
    Form.CALL_LOCAL: ("local imm_target",  ("dst", "off")),
    Form.CALLX:      ("dst",               ("src", "off", "imm")),
    Form.EXIT:       ("",                  ("dst", "src", "off", "imm")),
    Form.LDDW:       ("dst, imm64",        ("off",)),
    Form.LDX:        ("dst, [src+off]",    ("imm",)),
    Form.ST:         ("[dst+off], imm",    ("src",)),
    Form.STX:        ("[dst+off], src",    ("imm",)),
    Form.ATOMIC:     ("[dst+off], src",    ()),
}

# What each form is, for the Op properties below.
_ALU = frozenset((Form.ALU_K, Form.ALU_X, Form.UNARY, Form.END))
_JUMPS = frozenset((Form.JA, Form.GOTOL))
_BRANCHES = frozenset((Form.JCOND_K, Form.JCOND_X))
_CALLS = frozenset((Form.CALL, Form.CALLX, Form.CALL_LOCAL))
_BLOCK_ENDS = _JUMPS | _BRANCHES | {Form.EXIT, Form.CALL_LOCAL}
_TARGET_FIELD = {Form.JA: "off", Form.JCOND_K: "off", Form.JCOND_X: "off",
                 Form.GOTOL: "imm", Form.CALL_LOCAL: "imm"}
_MEM_BASE = {Form.LDX: "src", Form.ST: "dst", Form.STX: "dst", Form.ATOMIC: "dst"}
_SOURCE_X = frozenset((Form.ALU_X, Form.JCOND_X, Form.STX))


@dataclass(frozen=True)
class Op:
    """One row of the instruction table.

    ``match`` fixes fields beyond the opcode byte that select this row (``off`` for sdiv/smod and
    movsx, ``imm`` for byte swaps and atomics, ``src`` for call kinds and lddw). ``sem`` names the
    operation for the engines (``add``, ``jsgt``, ``ldx``, ``atomic_add``...), ``width`` is the
    operand width in bits for ALU/JMP rows and the access size in bytes for memory rows.

    The properties say what kind of instruction a row is; they are the one place where a form's
    meaning is spelt out, and what the engines, the verifier and the control-flow analysis
    (``cfg``) ask instead of comparing forms.
    """

    opcode: int
    mnemonic: str
    form: Form
    sem: str
    width: int
    doc: str
    match: tuple[tuple[str, int], ...] = field(default=())
    signed: bool = False

    @property
    def cls(self) -> int:
        """Instruction class (low three bits of the opcode)."""
        return self.opcode & 0x07

    @property
    def source_x(self) -> bool:
        """True when the operand is the source register rather than the immediate: the register
        forms of ALU operations and conditional jumps, and ``stx`` (the stored value)."""
        return self.form in _SOURCE_X

    @property
    def slots(self) -> int:
        """Number of 64-bit slots the instruction occupies: 2 for ``lddw``, else 1."""
        return 2 if self.form is Form.LDDW else 1

    @property
    def is_alu(self) -> bool:
        """An arithmetic, negation or byte-swap instruction: it computes dst from dst (and src or
        imm) and has no other effect."""
        return self.form in _ALU

    @property
    def is_lddw(self) -> bool:
        """The two-slot 64-bit immediate load."""
        return self.form is Form.LDDW

    @property
    def is_jump(self) -> bool:
        """An unconditional jump (``ja``, ``gotol``): one successor, its target."""
        return self.form in _JUMPS

    @property
    def is_branch(self) -> bool:
        """A conditional jump: two successors, the target and the next slot."""
        return self.form in _BRANCHES

    @property
    def is_call(self) -> bool:
        """A call of any kind (helper, helper by register, local function): it defines r0 and
        leaves r1..r5 undefined."""
        return self.form in _CALLS

    @property
    def is_local_call(self) -> bool:
        """A bpf-to-bpf call; its target starts a function."""
        return self.form is Form.CALL_LOCAL

    @property
    def is_exit(self) -> bool:
        """``exit``: return r0 to the caller, or end the program. No successors."""
        return self.form is Form.EXIT

    @property
    def is_load(self) -> bool:
        """A load from memory into dst (``ldx``, ``ldxs``)."""
        return self.form is Form.LDX

    @property
    def is_store(self) -> bool:
        """A plain store to memory (``st``: imm, ``stx``: src); atomics are ``is_atomic``."""
        return self.form in (Form.ST, Form.STX)

    @property
    def is_atomic(self) -> bool:
        """An atomic read-modify-write of memory at dst + off."""
        return self.form is Form.ATOMIC

    @property
    def mem_base(self) -> str | None:
        """The field holding the base register of a memory access (``"src"`` for loads,
        ``"dst"`` for stores and atomics; the address is base + off), or None."""
        return _MEM_BASE.get(self.form)

    @property
    def has_target(self) -> bool:
        """A jump, conditional jump or local call: it names a slot (``jump_target``)."""
        return self.form in _TARGET_FIELD

    @property
    def target_field(self) -> str | None:
        """The field holding the target's displacement from the next slot (``"off"`` for
        ``ja`` and conditional jumps, ``"imm"`` for ``gotol`` and local calls), or None."""
        return _TARGET_FIELD.get(self.form)

    @property
    def ends_block(self) -> bool:
        """The pc after this instruction is not (always) the next slot: jumps, conditional
        jumps, exit and local calls end a basic block (a helper call returns to the next slot,
        so it does not)."""
        return self.form in _BLOCK_ENDS


def _build_table() -> list[Op]:
    ops: list[Op] = []
    alu = [
        (ALU_ADD, "add", "dst += src"), (ALU_SUB, "sub", "dst -= src"),
        (ALU_MUL, "mul", "dst *= src"), (ALU_DIV, "div", "dst /= src, unsigned; x/0 = 0"),
        (ALU_OR, "or", "dst |= src"), (ALU_AND, "and", "dst &= src"),
        (ALU_LSH, "lsh", "dst <<= src & (width-1)"),
        (ALU_RSH, "rsh", "dst >>= src & (width-1), logical"),
        (ALU_MOD, "mod", "dst %= src, unsigned; x%0 = x"), (ALU_XOR, "xor", "dst ^= src"),
        (ALU_MOV, "mov", "dst = src"),
        (ALU_ARSH, "arsh", "dst >>= src & (width-1), arithmetic"),
    ]
    for cls, suffix, width in ((CLS_ALU64, "", 64), (CLS_ALU, "32", 32)):
        for code, name, doc in alu:
            ops.append(Op(cls | code | SRC_K, name + suffix, Form.ALU_K, name, width,
                          f"{doc} ({width}-bit, immediate)", (("off", 0),)))
            ops.append(Op(cls | code | SRC_X, name + suffix, Form.ALU_X, name, width,
                          f"{doc} ({width}-bit, register)", (("off", 0),)))
        for code, name, doc in ((ALU_DIV, "sdiv", "dst /= src, signed; x/0 = 0, MIN/-1 = MIN"),
                                (ALU_MOD, "smod", "dst %= src, signed; x%0 = x, MIN%-1 = 0")):
            ops.append(Op(cls | code | SRC_K, name + suffix, Form.ALU_K, name, width,
                          f"{doc} ({width}-bit, immediate)", (("off", 1),), signed=True))
            ops.append(Op(cls | code | SRC_X, name + suffix, Form.ALU_X, name, width,
                          f"{doc} ({width}-bit, register)", (("off", 1),), signed=True))
        ops.append(Op(cls | ALU_NEG | SRC_K, "neg" + suffix, Form.UNARY, "neg", width,
                      f"dst = -dst ({width}-bit)"))
        for bits in (8, 16, 32):
            if bits == 32 and width == 32:
                continue
            ops.append(Op(cls | ALU_MOV | SRC_X, f"movsx{bits}{width}", Form.ALU_X, "movsx", width,
                          f"dst = sign-extend the low {bits} bits of src to {width} bits",
                          (("off", bits),), signed=True))
    for bits in (16, 32, 64):
        ops.append(Op(CLS_ALU | ALU_END | SRC_K, f"le{bits}", Form.END, "le", bits,
                      f"dst = htole{bits}(dst), zero-extended from {bits} bits", (("imm", bits),)))
        ops.append(Op(CLS_ALU | ALU_END | SRC_X, f"be{bits}", Form.END, "be", bits,
                      f"dst = htobe{bits}(dst), zero-extended from {bits} bits", (("imm", bits),)))
        ops.append(Op(CLS_ALU64 | ALU_END | SRC_K, f"bswap{bits}", Form.END, "bswap", bits,
                      f"dst = bswap{bits}(dst), zero-extended from {bits} bits", (("imm", bits),)))
    ops.append(Op(CLS_JMP | JMP_JA, "ja", Form.JA, "ja", 64, "pc += 1 + off"))
    ops.append(Op(CLS_JMP32 | JMP_JA, "gotol", Form.GOTOL, "ja", 32, "pc += 1 + imm (long jump)"))
    conds = [
        (JMP_JEQ, "jeq", "=="), (JMP_JGT, "jgt", "> unsigned"), (JMP_JGE, "jge", ">= unsigned"),
        (JMP_JSET, "jset", "& != 0"), (JMP_JNE, "jne", "!="), (JMP_JSGT, "jsgt", "> signed"),
        (JMP_JSGE, "jsge", ">= signed"), (JMP_JLT, "jlt", "< unsigned"),
        (JMP_JLE, "jle", "<= unsigned"), (JMP_JSLT, "jslt", "< signed"),
        (JMP_JSLE, "jsle", "<= signed"),
    ]
    for cls, suffix, width in ((CLS_JMP, "", 64), (CLS_JMP32, "32", 32)):
        for code, name, doc in conds:
            signed = name.startswith("js") and name != "jset"
            ops.append(Op(cls | code | SRC_K, name + suffix, Form.JCOND_K, name, width,
                          f"if dst {doc} imm ({width}-bit): pc += 1 + off", signed=signed))
            ops.append(Op(cls | code | SRC_X, name + suffix, Form.JCOND_X, name, width,
                          f"if dst {doc} src ({width}-bit): pc += 1 + off", signed=signed))
    ops.append(Op(CLS_JMP | JMP_CALL, "call", Form.CALL, "call", 64,
                  "call helper imm; r1..r5 arguments, r0 result", (("src", 0),)))
    ops.append(Op(CLS_JMP | JMP_CALL, "call", Form.CALL_LOCAL, "call_local", 64,
                  "call the local function at pc + 1 + imm with a fresh stack frame",
                  (("src", 1),)))
    ops.append(Op(CLS_JMP | JMP_CALL | SRC_X, "callx", Form.CALLX, "callx", 64,
                  "call the helper whose id is in dst (uBPF extension)"))
    ops.append(Op(CLS_JMP | JMP_EXIT, "exit", Form.EXIT, "exit", 64,
                  "return r0 to the caller, or end the program with r0"))
    ops.append(Op(OPCODE_LDDW, "lddw", Form.LDDW, "lddw", 64,
                  "dst = imm64 (two slots; the second slot's imm is the upper half)",
                  (("src", 0),)))
    for size, nbytes in SIZE_BYTES.items():
        sfx = SIZE_SUFFIX[size]
        ops.append(Op(CLS_LDX | MODE_MEM | size, "ldx" + sfx, Form.LDX, "ldx", nbytes,
                      f"dst = *(u{nbytes * 8} *)(src + off)"))
        ops.append(Op(CLS_ST | MODE_MEM | size, "st" + sfx, Form.ST, "st", nbytes,
                      f"*(u{nbytes * 8} *)(dst + off) = imm"))
        ops.append(Op(CLS_STX | MODE_MEM | size, "stx" + sfx, Form.STX, "stx", nbytes,
                      f"*(u{nbytes * 8} *)(dst + off) = src"))
        if nbytes != 8:
            ops.append(Op(CLS_LDX | MODE_MEMSX | size, "ldxs" + sfx, Form.LDX, "ldxs", nbytes,
                          f"dst = *(s{nbytes * 8} *)(src + off), sign-extended to 64 bits",
                          signed=True))
    atomics = [
        (ATOMIC_ADD, "add"), (ATOMIC_OR, "or"), (ATOMIC_AND, "and"), (ATOMIC_XOR, "xor"),
    ]
    for size, suffix, nbytes in ((SIZE_DW, "", 8), (SIZE_W, "32", 4)):
        opcode = CLS_STX | MODE_ATOMIC | size
        for imm, name in atomics:
            ops.append(Op(opcode, f"lock {name}{suffix}", Form.ATOMIC, f"atomic_{name}", nbytes,
                          f"*(u{nbytes * 8} *)(dst + off) {name}= src, atomically",
                          (("imm", imm),)))
            ops.append(Op(opcode, f"lock fetch {name}{suffix}", Form.ATOMIC, f"atomic_fetch_{name}",
                          nbytes, f"src = fetch_{name}((u{nbytes * 8} *)(dst + off), src)",
                          (("imm", imm | ATOMIC_FETCH),)))
        ops.append(Op(opcode, f"lock xchg{suffix}", Form.ATOMIC, "atomic_xchg", nbytes,
                      f"src = xchg((u{nbytes * 8} *)(dst + off), src)",
                      (("imm", ATOMIC_XCHG),)))
        ops.append(Op(opcode, f"lock cmpxchg{suffix}", Form.ATOMIC, "atomic_cmpxchg", nbytes,
                      f"r0 = cmpxchg((u{nbytes * 8} *)(dst + off), r0, src)",
                      (("imm", ATOMIC_CMPXCHG),)))
    return ops


#: The table. Each row is one (opcode, variant) pair of RFC 9669 plus uBPF's ``callx``.
OPS: tuple[Op, ...] = tuple(_build_table())

#: Rows by opcode byte (several rows share an opcode when ``match`` selects among them).
BY_OPCODE: dict[int, tuple[Op, ...]] = {}
#: Rows by mnemonic and form (a mnemonic with an immediate and a register form has two rows).
BY_MNEMONIC: dict[str, tuple[Op, ...]] = {}
for _op in OPS:
    BY_OPCODE[_op.opcode] = BY_OPCODE.get(_op.opcode, ()) + (_op,)
    BY_MNEMONIC[_op.mnemonic] = BY_MNEMONIC.get(_op.mnemonic, ()) + (_op,)
del _op

#: Alternative spellings accepted by the assembler.
ALIASES = {
    "ja32": "gotol",
    **{f"swap{b}": f"bswap{b}" for b in (16, 32, 64)},
    **{f"lock {n}64": f"lock {n}" for n in ("add", "or", "and", "xor", "xchg", "cmpxchg")},
    **{f"lock fetch {n}64": f"lock fetch {n}" for n in ("add", "or", "and", "xor")},
    "mov64": "mov",
}


class Insn(NamedTuple):
    """A decoded instruction. For ``lddw`` ``imm`` is the full 64-bit value (unsigned)."""

    op: Op
    dst: int
    src: int
    off: int
    imm: int

    @property
    def slots(self) -> int:
        """Number of 64-bit slots this instruction occupies (2 for lddw)."""
        return self.op.slots

    @property
    def base_reg(self) -> int | None:
        """The base register of a memory access (``Op.mem_base``), or None for others."""
        base = self.op.mem_base
        return None if base is None else getattr(self, base)


def encode_slot(opcode: int, dst: int, src: int, off: int, imm: int) -> bytes:
    """Encode one 64-bit instruction slot (little-endian, dst in the low nibble)."""
    return bytes((opcode & 0xFF, (dst & 0xF) | ((src & 0xF) << 4))) + \
        (off & 0xFFFF).to_bytes(2, "little") + (imm & 0xFFFFFFFF).to_bytes(4, "little")


def decode_slot(data: bytes | memoryview, index: int) -> tuple[int, int, int, int, int]:
    """Split slot ``index`` of ``data`` into (opcode, dst, src, off, imm) with signed off/imm."""
    base = index * 8
    opcode = data[base]
    regs = data[base + 1]
    off = int.from_bytes(data[base + 2:base + 4], "little", signed=True)
    imm = int.from_bytes(data[base + 4:base + 8], "little", signed=True)
    return opcode, regs & 0xF, regs >> 4, off, imm


def encode(insn: Insn) -> bytes:
    """Encode a decoded instruction back to its one or two slots."""
    if insn.op.opcode == OPCODE_LDDW:
        value = insn.imm & 0xFFFFFFFFFFFFFFFF
        return (encode_slot(OPCODE_LDDW, insn.dst, insn.src, insn.off, value & 0xFFFFFFFF)
                + encode_slot(0, 0, 0, 0, value >> 32))
    return encode_slot(insn.op.opcode, insn.dst, insn.src, insn.off, insn.imm)


def decode(code: bytes, max_slots: int = MAX_PROGRAM_SLOTS) -> list[Insn | None]:
    """Decode and structurally validate ``code``; returns one entry per slot (None for lddw halves).

    Raises ``ProgramError`` naming the instruction index for: a length that is not a multiple of 8,
    an empty or oversized program, an unknown opcode, non-zero reserved fields, an invalid register,
    a truncated or malformed lddw, a legacy packet load, and jump targets outside the program or
    into the second half of an lddw.
    """
    if len(code) % 8:
        raise ProgramError(f"program length {len(code)} bytes is not a multiple of 8")
    nslots = len(code) // 8
    if nslots == 0:
        raise ProgramError("program is empty (0 instructions)")
    if nslots > max_slots:
        raise ProgramError(f"program has {nslots} instructions, more than the limit of {max_slots}")
    out: list[Insn | None] = [None] * nslots
    i = 0
    while i < nslots:
        opcode, dst, src, off, imm = decode_slot(code, i)
        insn = _decode_one(code, i, nslots, opcode, dst, src, off, imm)
        out[i] = insn
        i += insn.slots
    _check_jumps(out)
    return out


def _decode_one(code: bytes, i: int, nslots: int, opcode: int, dst: int, src: int, off: int,
                imm: int) -> Insn:
    rows = BY_OPCODE.get(opcode)
    if rows is None:
        cls = opcode & 7
        mode = opcode & 0xE0
        if cls in (CLS_LD, CLS_LDX) and mode in (MODE_ABS, MODE_IND):
            raise ProgramError(f"legacy packet load (opcode {opcode:#04x}, LD_ABS/LD_IND) is "
                               "deprecated by RFC 9669 and not supported", i)
        raise ProgramError(f"unknown opcode {opcode:#04x}", i)
    fields = {"dst": dst, "src": src, "off": off, "imm": imm}
    op = None
    for row in rows:
        if all(fields[name] == value for name, value in row.match):
            op = row
            break
    if op is None:
        if opcode == OPCODE_LDDW:
            what = LDDW_SRC.get(src)
            if what is None:
                raise ProgramError(f"invalid source register {src} for lddw", i)
            raise ProgramError(f"lddw with src={src} ({what}) needs maps, BTF or code "
                               "addresses, which a Hermes device does not have", i)
        name, _ = rows[0].match[0]
        if rows[0].form is Form.END:
            raise ProgramError(f"invalid endian immediate {imm} (must be 16, 32 or 64)", i)
        raise ProgramError(f"invalid {name} field {fields[name]} for opcode {opcode:#04x}", i)
    if dst > MAX_REG:
        raise ProgramError(f"invalid destination register r{dst}", i)
    if src > MAX_REG:
        raise ProgramError(f"invalid source register r{src}", i)
    _, zero = FORMS[op.form]
    matched = {name for name, _ in op.match}
    for name in zero:
        if name not in matched and fields[name] != 0:
            raise ProgramError(f"reserved field {name} must be 0 for {op.mnemonic}, "
                               f"found {fields[name]}", i)
    if opcode == OPCODE_LDDW:
        if i + 1 >= nslots:
            raise ProgramError("incomplete lddw: the second slot is missing", i)
        op2, dst2, src2, off2, imm2 = decode_slot(code, i + 1)
        if op2:
            raise ProgramError(f"incomplete lddw: slot {i + 1} holds another instruction "
                               f"(opcode {op2:#04x}) instead of the upper 32 bits", i)
        if dst2 or src2 or off2:
            raise ProgramError("invalid lddw second half: opcode, registers and offset must be 0",
                               i + 1)
        imm = (imm & 0xFFFFFFFF) | ((imm2 & 0xFFFFFFFF) << 32)
    return Insn(op, dst, src, off, imm)


def jump_target(insn: Insn, index: int) -> int | None:
    """The slot a jump or local call at ``index`` goes to, or None for other instructions."""
    name = insn.op.target_field
    return None if name is None else index + 1 + getattr(insn, name)


def _check_jumps(insns: list[Insn | None]) -> None:
    n = len(insns)
    for i, insn in enumerate(insns):
        if insn is None:
            continue
        target = jump_target(insn, i)
        if target is None:
            continue
        what = "call" if insn.op.is_local_call else "jump"
        if not 0 <= target < n:
            raise ProgramError(f"{what} out of bounds: target {target} is outside the program "
                               f"(0..{n - 1})", i)
        if insns[target] is None:
            raise ProgramError(f"{what} to the middle of lddw at instruction {target}", i)

"""Wire formats the driver speaks: command requests/responses, error codes and driver errors."""
from __future__ import annotations

import errno
from typing import NamedTuple

from .. import regs

#: ``_IOW('H', 0x50, struct {u32 len; u64 prog; u32 flags})``: download a program into the file.
HERMES_DOWNLOAD_PROG_IOCTL = 0x40184850

# pwritev2/preadv2 flags (Linux values; os.RWF_* where the platform has them).
RWF_HIPRI = 0x01
RWF_DSYNC = 0x02
RWF_SYNC = 0x04
RWF_NOWAIT = 0x08
RWF_APPEND = 0x10
_RWF_NAMES = {RWF_HIPRI: "RWF_HIPRI", RWF_DSYNC: "RWF_DSYNC", RWF_SYNC: "RWF_SYNC",
              RWF_NOWAIT: "RWF_NOWAIT", RWF_APPEND: "RWF_APPEND"}

#: Names of the eBPF error kinds in the low byte of a status-0x05 error code.
EBPF_ERROR_KINDS = {
    regs.EBPF_ERR_LOAD: "load",
    regs.EBPF_ERR_OUT_OF_BOUNDS: "out_of_bounds",
    regs.EBPF_ERR_BUDGET: "budget",
    regs.EBPF_ERR_CALL_DEPTH: "call_depth",
    regs.EBPF_ERR_HELPER: "helper",
    regs.EBPF_ERR_UNSUPPORTED: "unsupported",
    regs.EBPF_ERR_INTERNAL: "internal",
}
#: Human-readable text of each error kind.
ERROR_KIND_TEXT = {
    "load": "program failed to load",
    "out_of_bounds": "memory access out of bounds",
    "budget": "instruction budget exhausted",
    "call_depth": "call depth limit exceeded",
    "helper": "helper call failed",
    "unsupported": "instruction not supported by the engine",
    "internal": "internal engine error",
}


def flag_names(flags: int) -> str:
    """``RWF_*`` names of the bits set in ``flags`` (unknown bits in hex)."""
    names = [name for bit, name in _RWF_NAMES.items() if flags & bit]
    rest = flags & ~sum(_RWF_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def decode_error_code(code: int) -> tuple[str, int]:
    """Split a status-0x05 error code into (kind name, detail): the detail is a pc or an index."""
    return EBPF_ERROR_KINDS.get(code & 0xFF, f"unknown({code & 0xFF:#x})"), code >> 8


def describe_error_code(code: int) -> str:
    """Human-readable text for a status-0x05 error code."""
    kind, detail = decode_error_code(code)
    text = ERROR_KIND_TEXT.get(kind, f"eBPF error of unknown kind {code & 0xFF:#x}")
    where = "instruction" if kind == "load" else "pc"
    return f"{text} at {where} {detail} (device error code {code:#x})"


class Response(NamedTuple):
    """A command response: the echoed command id, the status byte and response bytes 8..15
    (``reserved`` holds bytes 3..7, normally 0)."""

    cmd_id: int
    status: int
    value: int
    reserved: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> "Response":
        """Decode the 16 response bytes."""
        return cls(int.from_bytes(raw[0:2], "little"), raw[2], int.from_bytes(raw[8:16], "little"),
                   int.from_bytes(raw[3:8], "little"))

    @property
    def raw(self) -> bytes:
        """The 16 response bytes."""
        return ((self.cmd_id | self.status << 16 | self.reserved << 24).to_bytes(8, "little")
                + self.value.to_bytes(8, "little"))

    @property
    def status_name(self) -> str:
        """The status byte's name from the interface definition."""
        return regs.STATUS_NAMES.get(self.status, f"unknown status {self.status:#04x}")

    @property
    def error_kind(self) -> str | None:
        """For status 0x05, the eBPF error kind (``"load"``, ``"out_of_bounds"``...)."""
        return decode_error_code(self.value)[0] if self.status == regs.STATUS_EBPF_ERROR else None

    @property
    def error_detail(self) -> int | None:
        """For status 0x05, the detail of the error code (pc, or instruction index for loads)."""
        return decode_error_code(self.value)[1] if self.status == regs.STATUS_EBPF_ERROR else None


#: errno a failing status turns into (the driver interface table).
STATUS_ERRNO = {
    regs.STATUS_NO_SPACE: errno.ENOSPC,
    regs.STATUS_INVALID_PROG_SLOT: errno.EBADFD,
    regs.STATUS_INVALID_DATA_SLOT: errno.EBADFD,
    regs.STATUS_EBPF_ERROR: errno.ENOEXEC,
    regs.STATUS_INVALID_OPCODE: errno.EINVAL,
    regs.STATUS_ABORTED: errno.ECANCELED,
}


class DriverError(OSError):
    """An ``OSError`` from the driver; ``response`` is the device's answer when there was one.

    For a command that timed out, ``engine`` is the engine it ran on and ``command_stopped`` says
    whether the driver saw that engine idle afterwards (aborted, or finished late): True means the
    command's slots are safe to reuse, False that it may still be running.
    """

    def __init__(self, err: int, message: str, response: Response | None = None, *,
                 engine: int | None = None, command_stopped: bool | None = None):
        super().__init__(err, message)
        self.response = response
        self.engine = engine
        self.command_stopped = command_stopped

    @property
    def status(self) -> int | None:
        """The device status byte behind the error, if a response caused it."""
        return self.response.status if self.response is not None else None


def error(err: int, message: str, response: Response | None = None) -> DriverError:
    """A ``DriverError`` with ``err`` (an errno) and a message naming what was wrong."""
    return DriverError(err, message, response)


def status_error(what: str, response: Response) -> DriverError:
    """The error for a failing ``response`` to the command described by ``what``."""
    err = STATUS_ERRNO.get(response.status, errno.EIO)
    if response.status == regs.STATUS_EBPF_ERROR:
        detail = describe_error_code(response.value)
    else:
        detail = f"device status {response.status:#04x} ({response.status_name})"
    return DriverError(err, f"{what}: {detail}", response)

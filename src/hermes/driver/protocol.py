"""Wire formats the driver speaks: command requests/responses, error codes and driver errors."""
from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from .. import regs

#: ``_IOW('H', 0x50, struct {u32 len; u64 prog; u32 flags})``: download a program into the file.
HERMES_DOWNLOAD_PROG_IOCTL = 0x40184850

#: ``struct hermes_run`` of ``HERMES_RUN_IOCTL`` (specs/driver.md section 6.1), natural alignment:
#: IN input_len u32, window u32, args u64[3], budget u64, entry u32, timeout_ms u32, trace u64
#: (address of a TRACE_LIMIT-byte buffer); OUT r0, instructions, run_ns, fault_address (u64),
#: output_len, trace_len, trace_dropped, fault_size, fault_flags, status (u32).
HERMES_RUN_STRUCT = struct.Struct("=II3QQIIQ4Q6I")
_IOC_WRITE, _IOC_READ = 1, 2


def ioc(direction: int, kind: str, number: int, size: int) -> int:
    """A Linux ioctl request number: ``_IOC(direction, kind, number, size)``."""
    return direction << 30 | size << 16 | ord(kind) << 8 | number


#: ``_IOWR('H', 0x51, struct hermes_run)``: run the file's program with a run context.
HERMES_RUN_IOCTL = ioc(_IOC_READ | _IOC_WRITE, "H", 0x51, HERMES_RUN_STRUCT.size)

# pwritev2/preadv2 flags (Linux values; os.RWF_* where the platform has them).
RWF_HIPRI = 0x01
RWF_DSYNC = 0x02
RWF_SYNC = 0x04
RWF_NOWAIT = 0x08
RWF_APPEND = 0x10
_RWF_NAMES = {RWF_HIPRI: "RWF_HIPRI", RWF_DSYNC: "RWF_DSYNC", RWF_SYNC: "RWF_SYNC",
              RWF_NOWAIT: "RWF_NOWAIT", RWF_APPEND: "RWF_APPEND"}

def flag_names(flags: int) -> str:
    """``RWF_*`` names of the bits set in ``flags`` (unknown bits in hex)."""
    names = [name for bit, name in _RWF_NAMES.items() if flags & bit]
    rest = flags & ~sum(_RWF_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def decode_error_code(code: int) -> tuple[str, int]:
    """Split a status-0x05 error code into (kind name, detail): the detail is a pc or an index;
    a kind the interface does not define reads ``unknown(0x..)``."""
    kind, detail = regs.ErrorKind.unpack(code)
    return (kind if kind is not None else f"unknown({code & 0xFF:#x})"), detail


def describe_error_code(code: int) -> str:
    """Human-readable text for a status-0x05 error code."""
    kind, detail = regs.ErrorKind.unpack(code)
    text = kind.text if kind is not None else f"eBPF error of unknown kind {code & 0xFF:#x}"
    where = "instruction" if kind is regs.ErrorKind.LOAD else "pc"
    return f"{text} at {where} {detail} (device error code {code:#x})"


#: The command response codec (one home: the interface definition).
Response = regs.Response
#: Each error kind's text by its name, a view of ``regs.ErrorKind`` for the driver's users.
ERROR_KIND_TEXT = {kind.value: kind.text for kind in regs.ErrorKind}


#: errno a failing status turns into (the driver interface table).
STATUS_ERRNO = {
    regs.STATUS_NO_SPACE: errno.ENOSPC,
    regs.STATUS_INVALID_PROG_SLOT: errno.EBADFD,
    regs.STATUS_INVALID_DATA_SLOT: errno.EBADFD,
    regs.STATUS_EBPF_ERROR: errno.ENOEXEC,
    regs.STATUS_INVALID_OPCODE: errno.EINVAL,
    regs.STATUS_ABORTED: errno.ECANCELED,
    regs.STATUS_INVALID_CONTEXT: errno.EINVAL,
}


class DriverError(OSError):
    """An ``OSError`` from the driver; ``response`` is the device's answer when there was one.

    For a command that timed out, ``engine`` is the engine it ran on and ``command_stopped`` says
    whether the driver saw that engine idle afterwards (aborted, or finished late): True means the
    command's slots are safe to reuse, False that it may still be running. A failed
    ``HermesFile.run_ex`` sets ``outcome`` (a ``RunOutcome``: fault fields, instructions) when the
    device reported one.
    """

    def __init__(self, err: int, message: str, response: Response | None = None, *,
                 engine: int | None = None, command_stopped: bool | None = None,
                 outcome: object | None = None):
        super().__init__(err, message)
        self.response = response
        self.engine = engine
        self.command_stopped = command_stopped
        self.outcome = outcome

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


def run_word(prog_slot: int, data_slot: int, length: int, flags: int = 0) -> int:
    """Bytes 8..15 of a Run Program request as one little-endian word."""
    return ((prog_slot & 0xFF) | (data_slot & 0xFF) << 8 | (flags & 0xFF) << 8 * (
        regs.RUN_FLAGS_BYTE - 8) | (length & 0xFFFFFFFF) << 32)


_MASK64 = (1 << 64) - 1
_MIN64 = -(1 << 63)


def _int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


@dataclass(frozen=True, init=False)
class RunArgs:
    """The argument of ``HERMES_RUN_IOCTL`` / ``HermesFile.run_ex``: a run with a run context.

    ``input_len`` bytes of input (the program's r2) in a window of ``window`` bytes of the data
    slot (the device zeroes ``[input_len, window)`` first), up to three 64-bit ``args`` (r3..r5;
    a negative value is taken modulo 2^64), an instruction ``budget`` (0: the device's), the ELF
    ``entry`` symbol index (0: the default entry) and a ``timeout`` in seconds (None: the
    driver's) after which the run is aborted.
    """

    input_len: int
    window: int
    args: tuple = ()
    budget: int = 0
    entry: int = 0
    timeout: float | None = None

    def __init__(self, input_len: int, window: int, args: tuple = (), budget: int = 0,
                 entry: int = 0, timeout: float | None = None) -> None:
        # Stores into the instance dict: a frozen dataclass's own __init__ sets each field
        # through object.__setattr__, at three times the cost, and the library builds one per run.
        d = self.__dict__
        d["input_len"] = input_len
        d["window"] = window
        d["args"] = args
        d["budget"] = budget
        d["entry"] = entry
        d["timeout"] = timeout

    def context_words(self, slot_size: int) -> tuple[int, ...]:
        """The six little-endian words of EHCMDCTXn's IN fields; EINVAL naming what is wrong."""
        input_len, window, args, budget, entry = (self.input_len, self.window, self.args,
                                                  self.budget, self.entry)
        t = self.timeout
        # What the library sends (plain ints in range, three args or none, a float timeout or
        # None) passes in one test; anything else goes through the checks one by one, which
        # accept it too or name what is wrong.
        if (type(input_len) is int and type(window) is int and type(budget) is int
                and type(entry) is int and 0 <= input_len <= window <= slot_size
                and 0 <= budget <= _MASK64 and 0 <= entry <= 0xFFFF_FFFF
                and (t is None or type(t) is float and t > 0) and type(args) is tuple):
            if not args:
                return regs.RunContextIn.words(input_len, window, 0, 0, 0, budget, entry)
            if len(args) == 3:
                a0, a1, a2 = args
                if (type(a0) is int and type(a1) is int and type(a2) is int
                        and _MIN64 <= a0 <= _MASK64 and _MIN64 <= a1 <= _MASK64
                        and _MIN64 <= a2 <= _MASK64):
                    return regs.RunContextIn.words(input_len, window, a0, a1, a2, budget,
                                                   entry)
        self._check(slot_size)
        a0, a1, a2 = (tuple(args) + (0, 0, 0))[:3]
        return regs.RunContextIn.words(input_len, window, a0, a1, a2, budget, entry)

    def _check(self, slot_size: int) -> None:
        """EINVAL naming the first field that is out of its range (none: nothing raised)."""
        if not _int_in(self.window, 0, slot_size):
            raise error(errno.EINVAL, f"window {self.window!r} must be 0..{slot_size} bytes "
                        "(the data slot size)")
        if not _int_in(self.input_len, 0, self.window):
            raise error(errno.EINVAL, f"input length {self.input_len!r} must be 0..{self.window} "
                        "bytes (the window)")
        args = self.args
        if not isinstance(args, (tuple, list)) or len(args) > regs.CTX_ARGS or not all(
                _int_in(a, _MIN64, _MASK64) for a in args):
            raise error(errno.EINVAL, f"args {args!r} must be at most {regs.CTX_ARGS} integers "
                        "in -2^63..2^64-1")
        if not _int_in(self.budget, 0, _MASK64):
            raise error(errno.EINVAL, f"budget {self.budget!r} must be 0..2^64-1 instructions "
                        "(0: the device's)")
        if not _int_in(self.entry, 0, 0xFFFF_FFFF):
            raise error(errno.EINVAL, f"entry symbol {self.entry!r} must be 0..2^32-1")
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not t > 0):
            raise error(errno.EINVAL, f"timeout {t!r} must be a number of seconds > 0, or None")


@dataclass(frozen=True, init=False)
class RunOutcome:
    """What ``run_ex`` returns (and a failed run's ``DriverError.outcome`` carries): r0, the OUT
    fields of the run context and the printed text. ``output_len`` is None when the program
    declared none; the fault fields are None unless the run faulted out of bounds
    (``fault_depth``: the call depth of the faulting access, 0 for the entry function);
    ``budget`` is the instruction budget the run had (the request's, else the device's own)."""

    r0: int
    instructions: int
    output_len: int | None
    run_ns: int
    trace: bytes
    trace_dropped: int
    fault_address: int | None
    fault_size: int | None
    fault_write: bool | None
    response: Response
    fault_depth: int | None = None
    budget: int | None = None

    def __init__(self, r0: int, instructions: int, output_len: int | None, run_ns: int,
                 trace: bytes, trace_dropped: int, fault_address: int | None,
                 fault_size: int | None, fault_write: bool | None, response: Response,
                 fault_depth: int | None = None, budget: int | None = None) -> None:
        # Stores into the instance dict, as ``RunArgs`` does (one per run).
        d = self.__dict__
        d["r0"] = r0
        d["instructions"] = instructions
        d["output_len"] = output_len
        d["run_ns"] = run_ns
        d["trace"] = trace
        d["trace_dropped"] = trace_dropped
        d["fault_address"] = fault_address
        d["fault_size"] = fault_size
        d["fault_write"] = fault_write
        d["response"] = response
        d["fault_depth"] = fault_depth
        d["budget"] = budget

    @classmethod
    def parse(cls, response: Response, out: bytes, trace: bytes) -> RunOutcome:
        """From the response and EHCMDCTXn's OUT bytes (read from ``CTX_INSNS`` on)."""
        insns, output_len, _, run_ns, address, size, _, dropped, budget = \
            regs.RunContextOut.fields(out)
        r0 = response.value if response.status == regs.STATUS_SUCCESS else 0
        declared = None if output_len == regs.CTX_NO_OUTPUT else output_len
        if not size:   # the fault fields mean something only after a fault
            return cls(r0, insns, declared, run_ns, bytes(trace), dropped, None, None, None,
                       response, None, budget or None)
        fault = regs.RunContextOut.unpack(out)   # (their decoding: the codec's)
        return cls(r0, insns, declared, run_ns, bytes(trace), dropped, address, size,
                   fault.fault_write, response, fault.fault_depth, budget or None)

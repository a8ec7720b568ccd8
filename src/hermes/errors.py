"""The one exception hierarchy of the Hermes library, shared by the layers above the driver file."""
from __future__ import annotations


def _rebuild(cls: type[HermesError], args: tuple) -> HermesError:
    exc = cls.__new__(cls)
    exc.args = args
    return exc


class HermesError(Exception):
    """Base class of every error the Hermes library raises on purpose."""

    def __reduce__(self) -> tuple:
        # Rebuilt without __init__, whose signature differs per class: every error crosses a
        # process boundary (pickle, dask workers) with its message and attributes intact.
        return (_rebuild, (type(self), self.args), self.__dict__)


class ProgramError(HermesError):
    """A program was rejected before it ran (bad bytes, bad instruction, bad object file).

    ``index`` is the instruction index (slot number) the problem is at, or ``None`` when the
    problem is not tied to one instruction (an empty program, a bad ELF header...).
    """

    def __init__(self, reason: str, index: int | None = None, insn_text: str | None = None):
        self.reason = reason
        self.index = index
        self.insn_text = insn_text
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"instruction {self.index}" if self.index is not None else "program"
        text = f" ({self.insn_text})" if self.insn_text else ""
        return f"{where}{text}: {self.reason}"


class AssemblerError(ProgramError):
    """Assembly text could not be assembled; ``line`` is the 1-based source line."""

    def __init__(self, reason: str, line: int | None = None, source: str | None = None):
        self.line = line
        self.source = source
        self.reason = reason
        self.index = None
        self.insn_text = source
        where = f"line {line}" if line is not None else "assembly"
        src = f" ({source.strip()!r})" if source else ""
        HermesError.__init__(self, f"{where}{src}: {reason}")


class VerifierError(ProgramError):
    """The verifier proved a program unsafe or malformed (index, instruction text, reason)."""


class ElfError(ProgramError):
    """An ELF object could not be loaded as a program."""

    def _format(self) -> str:
        if self.index is None:
            return f"ELF object: {self.reason}"
        return super()._format()


class ExecutionError(HermesError):
    """A program failed while running (bad memory access, budget exhausted, helper failure...).

    ``kind`` is a short machine-readable name (``"out_of_bounds"``, ``"budget"``,
    ``"call_depth"``, ``"helper"``, ``"unsupported"``); ``pc`` the instruction index;
    ``address``, ``size`` and ``write`` (a store rather than a load) describe a faulting memory
    access when there is one, ``depth`` the call depth it happened at (0: the entry function).
    ``trace`` is the text the run printed with ``bpf_trace_printk`` before it stopped
    (``trace_dropped`` bytes past the limit were dropped), set by the engine and every backend.
    """

    #: Class defaults, so errors built without them (and older pickles) still have the fields.
    depth: int = 0
    trace: str = ""
    trace_dropped: int = 0

    def __init__(self, kind: str, message: str, pc: int | None = None,
                 address: int | None = None, size: int | None = None,
                 regions: str | None = None, instructions: int | None = None,
                 write: bool | None = None, depth: int = 0):
        self.kind = kind
        self.depth = depth
        self.write = write
        self.message = message
        self.pc = pc
        self.address = address
        self.size = size
        self.regions = regions
        self.instructions = instructions
        parts = [message]
        if pc is not None:
            parts.append(f"at pc {pc}")
        if address is not None:
            parts.append(f"address {address:#x}")
        if size is not None:
            parts.append(f"size {size}")
        text = ", ".join(parts)
        if regions:
            text += f"; mapped regions: {regions}"
        super().__init__(text)


# --- device and library errors (a device, its driver or the library refused or failed) ----------
class DeviceError(HermesError):
    """A device (or its driver) failed a request.

    ``errno`` is the driver's errno when the failure came from the driver interface, ``status``
    the device's command status byte when a command response caused it.
    """

    def __init__(self, message: str, errno: int | None = None, status: int | None = None):
        self.errno = errno
        self.status = status
        super().__init__(message)


class SlotsExhausted(DeviceError):
    """No free program or data slot: every one is owned by an open session or file."""


class DeviceTimeout(DeviceError):
    """The device did not complete a command or DMA transfer within the timeout."""


class DeviceProtocolError(DeviceError):
    """The device broke the command protocol (a response with another command id, a stale
    completion flag, an interrupt without completion)."""


class ProgramTooLarge(ProgramError):
    """The program's bytes do not fit in one program slot of the device."""

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(f"program is {size} bytes, larger than a program slot ({limit} bytes)")


class ProgramRejected(ProgramError):
    """The device refused to load the program (its status 0x05 load error); ``code`` is the
    device's error code and ``index`` the instruction it names."""

    def __init__(self, reason: str, index: int | None = None, code: int | None = None):
        self.code = code
        super().__init__(reason, index)


class ExecutionFailed(ExecutionError):
    """A run failed on a device or backend; ``code`` is the platform error code (for a Hermes
    device the status 0x05 response value: kind in bits 7..0, pc above)."""

    def __init__(self, kind: str, message: str, pc: int | None = None, *, code: int | None = None,
                 address: int | None = None, size: int | None = None,
                 regions: str | None = None, instructions: int | None = None,
                 write: bool | None = None, depth: int = 0):
        self.code = code
        super().__init__(kind, message, pc, address, size, regions, instructions, write, depth)

    @classmethod
    def of_kind(cls, kind: str, message: str, pc: int | None = None,
                **fields: object) -> ExecutionFailed:
        """The most specific class for ``kind``: ``BudgetExceeded`` for ``"budget"``,
        ``Cancelled`` for ``"cancelled"``, else ``ExecutionFailed`` (every backend raises
        through this, so a name always means the same failure)."""
        sub = {"budget": BudgetExceeded, "cancelled": Cancelled}.get(kind, cls)
        return sub(kind, message, pc, **fields)  # type: ignore[arg-type]


class BudgetExceeded(ExecutionFailed):
    """The run executed more instructions than its budget allows (kind ``"budget"``)."""


class Cancelled(ExecutionFailed):
    """The run was stopped because it was cancelled: its ``Cancel`` flag was set, its
    ``run_async`` task was cancelled, or a KeyboardInterrupt arrived (kind ``"cancelled"``);
    ``pc`` is where the engine stopped, when known."""


class UsageError(HermesError, ValueError):
    """The library or a tool was called wrongly: an argument of the wrong type or out of its
    range, an unknown executor, device spec or option. Also a ``ValueError``, so code written
    against Python's convention for bad arguments keeps catching it."""


class DataTooLarge(UsageError):
    """Data does not fit where it was to go: an input longer than the data slot or window, a
    ``size`` past the slot, a read or write past the window or slot (``size``, ``limit``)."""

    def __init__(self, message: str, size: int | None = None, limit: int | None = None):
        self.size = size
        self.limit = limit
        super().__init__(message)


class RunTimeout(DeviceTimeout, Cancelled):
    """A run did not finish within its ``timeout`` and was stopped (``timeout`` in seconds)."""

    def __init__(self, message: str, timeout: float, pc: int | None = None,
                 errno: int | None = None):
        Cancelled.__init__(self, "cancelled", message, pc)
        self.errno = errno
        self.status = None
        self.timeout = timeout


class DeviceBusy(DeviceError):
    """The device serves another client and cannot take this one now (``EBUSY``), e.g. a
    vfio-user server that serves one client at a time."""

"""The one exception hierarchy of the Hermes library, shared by every layer above the driver file interface."""
from __future__ import annotations


class HermesError(Exception):
    """Base class of every error the Hermes library raises on purpose."""


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


class ExecutionError(HermesError):
    """A program failed while running (bad memory access, budget exhausted, helper failure...).

    ``kind`` is a short machine-readable name (``"out_of_bounds"``, ``"budget"``,
    ``"call_depth"``, ``"helper"``, ``"unsupported"``); ``pc`` the instruction index;
    ``address`` and ``size`` describe a faulting memory access when there is one.
    """

    def __init__(self, kind: str, message: str, pc: int | None = None,
                 address: int | None = None, size: int | None = None,
                 regions: str | None = None, instructions: int | None = None):
        self.kind = kind
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


class BudgetExceeded(ExecutionError):
    """The run executed more instructions than its budget allows."""

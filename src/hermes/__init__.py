"""Hermes: offload eBPF programs to eBPF-capable devices (emulated Hermes PCIe device, CPU, ...)."""
from __future__ import annotations

from .engine import Cancel, Program, RunResult
from .errors import (
                     AssemblerError,
                     BudgetExceeded,
                     Cancelled,
                     DataTooLarge,
                     DeviceBusy,
                     DeviceError,
                     DeviceProtocolError,
                     DeviceTimeout,
                     ElfError,
                     ExecutionError,
                     ExecutionFailed,
                     HermesError,
                     ProgramError,
                     ProgramRejected,
                     ProgramTooLarge,
                     RunTimeout,
                     SlotsExhausted,
                     UsageError,
                     VerifierError,
)
from .lib import Device, Memory, Range, Result, Session, open_device, register_backend

#: Open a device by spec (``"emu"``, ``"cpu"``, ...): see ``hermes.lib.open_device``.
open = open_device  # noqa: A001

__version__ = "0.1.0"

__all__ = [
    "AssemblerError", "BudgetExceeded", "ElfError", "ExecutionError", "HermesError",
    "Program", "ProgramError", "RunResult", "VerifierError", "__version__",
    # library (device access)
    "Cancel", "Cancelled", "DataTooLarge", "Device", "DeviceBusy", "DeviceError",
    "DeviceProtocolError", "DeviceTimeout", "ExecutionFailed", "Memory", "ProgramRejected",
    "ProgramTooLarge", "Range", "Result", "RunTimeout", "Session", "SlotsExhausted", "UsageError",
    "open", "register_backend",
]

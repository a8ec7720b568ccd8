"""Hermes: offload eBPF programs to eBPF-capable devices (emulated Hermes PCIe device, CPU, ...)."""
from __future__ import annotations

from .errors import (AssemblerError, BudgetExceeded, ElfError, ExecutionError, HermesError,
                     ProgramError, VerifierError)
from .engine import Program, RunResult

__version__ = "0.1.0"

__all__ = [
    "AssemblerError", "BudgetExceeded", "ElfError", "ExecutionError", "HermesError",
    "Program", "ProgramError", "RunResult", "VerifierError", "__version__",
]

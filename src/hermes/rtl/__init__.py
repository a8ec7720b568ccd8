"""The Hermes eBPF engine as RTL (Amaranth HDL): processor core, command block, simulation."""
from __future__ import annotations

from .core import EbpfCore
from .sim import RtlSession, SimResult, simulate

__all__ = ["EbpfCore", "RtlSession", "SimResult", "simulate"]

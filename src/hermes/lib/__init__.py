"""The Hermes library: open a device (emulated Hermes, CPU, ...) and run eBPF programs on data."""
from __future__ import annotations

from .api import BACKENDS, Device, Result, Session, open_device, program_bytes, register_backend
from .cpu import CpuDevice, CpuSession
from .driver_device import DriverDevice, DriverSession
from .errors import from_execution_error, from_os_error
from .memory import Memory, Range

#: ``hermes.open``: the library's entry point (a name that does not shadow the builtin here).
open = open_device  # noqa: A001

__all__ = [
    "BACKENDS", "CpuDevice", "CpuSession", "Device", "DriverDevice", "DriverSession", "Memory",
    "Range", "Result", "Session", "from_execution_error", "from_os_error", "open", "open_device",
    "program_bytes", "register_backend",
]

"""The CPU backend: programs run on hermes.engine directly, with a Hermes device's memory view."""
from __future__ import annotations

import errno
import os

from .. import engine as _engine
from ..engine.cache import DEFAULT_CACHE_BYTES, LoadedCache
from ..errors import DeviceError, ExecutionError, ProgramTooLarge, UsageError
from .api import (Buffer, Device, ProgramLike, Session, as_program, check_buffer,
                  check_options, check_size, program_bytes)
from .errors import from_execution_error

#: Default data slot (and program slot) size: the Hermes device's.
DEFAULT_SLOT_SIZE = 1 << 20
#: Prepared programs kept per CPU device (at most, and at most ``DEFAULT_CACHE_BYTES`` of them).
_CACHE_SIZE = 64


class CpuSession(Session):
    """A session on the CPU: a private data slot of ``slot_size`` bytes (zeros, then your data).

    Same rules as a driver file: write/read need a loaded program (EBADFD), read needs a prior
    write (ENODATA), transfers are truncated at the slot's end.
    """

    def __init__(self, device: "CpuDevice"):
        self._device = device
        self._exe: object | None = None
        self._data: bytearray | None = None
        self.closed = False

    def _check(self, what: str) -> None:
        if self.closed:
            raise DeviceError("the session is closed", errno.EBADF)
        if self._exe is None:
            raise DeviceError(f"{what} before a program was loaded", errno.EBADFD)

    def load(self, program: "ProgramLike | object") -> None:
        """Check and prepare ``program`` for the engine (ProgramError when it cannot run)."""
        if self.closed:
            raise DeviceError("the session is closed", errno.EBADF)
        self._exe = self._device.prepare(program)

    def write(self, data: Buffer, offset: int = 0) -> int:
        """Copy ``data`` into the data slot at ``offset`` (slot allocated on the first write)."""
        self._check("write")
        view = check_buffer(data)
        check_size("offset", offset)
        if self._data is None:
            self._data = bytearray(self._device.slot_size)
        n = max(0, min(len(view), len(self._data) - offset))
        self._data[offset:offset + n] = view[:n]
        return n

    def run(self) -> int:
        """Run on the data slot (r1 = its address, r2 = its size); returns r0."""
        self._check("run")
        if self._data is None:
            raise DeviceError("run before any data was written", errno.EBADFD)
        try:
            result = self._exe.run(self._data, self._device.budget)  # type: ignore[attr-defined]
        except ExecutionError as exc:
            raise from_execution_error(exc) from None
        return result.return_value

    def read(self, size: int, offset: int = 0) -> bytes:
        """Up to ``size`` bytes of the data slot at ``offset``."""
        self._check("read")
        check_size("size", size)
        check_size("offset", offset)
        if self._data is None:
            raise DeviceError("read before any data was written", errno.ENODATA)
        return bytes(self._data[offset:offset + size])

    def close(self) -> None:
        """Drop the data slot."""
        self.closed = True
        self._exe = None
        self._data = None


class CpuDevice(Device):
    """Runs programs in this process with ``hermes.engine`` (interpreter or JIT)."""

    def __init__(self, *, engine: str | None = None, data_slot_size: int = DEFAULT_SLOT_SIZE,
                 program_slot_size: int = DEFAULT_SLOT_SIZE, budget: int | None = None,
                 engines: int | None = None, slot_size: int | None = None):
        if slot_size is not None:  # the older name of data_slot_size
            data_slot_size = slot_size
        options = {"engine": engine, "data_slot_size": data_slot_size,
                   "program_slot_size": program_slot_size, "budget": budget}
        if engines is not None:
            options["engines"] = engines
        check_options(options)
        self.engine_name = engine or _engine.DEFAULT_ENGINE
        self.slot_size = data_slot_size
        self.program_slot_size = program_slot_size
        self.budget = budget if budget is not None else _engine.DEFAULT_BUDGET
        self._engines = engines or os.cpu_count() or 1
        self._cache = LoadedCache(_CACHE_SIZE, DEFAULT_CACHE_BYTES)

    @property
    def engines(self) -> int:
        """Worker threads ``map`` uses by default."""
        return self._engines

    def info(self) -> dict:
        """Backend description (no BAR0 here; the slot geometry the programs see)."""
        return {"spec": self.spec, "backend": "cpu", "engine": self.engine_name,
                "engines": self._engines, "data_slot_size": self.slot_size,
                "program_slot_size": self.program_slot_size, "budget": self.budget}

    def prepare(self, program: "ProgramLike | object") -> object:
        """An executable for ``program`` (cached by program digest; executables are reentrant)."""
        if hasattr(program, "run") and hasattr(program, "program"):
            return program  # already prepared
        size = len(program_bytes(program)) if not isinstance(program, _engine.Program) else (
            len(getattr(program, "elf_bytes", None) or program.to_bytes()))
        if size > self.program_slot_size:
            raise ProgramTooLarge(size, self.program_slot_size)
        # Code + data must fit the program slot too, as on a device (checked before an object's
        # .bss is allocated; a Program built elsewhere is checked on what it holds).
        prog = as_program(program, max_size=self.program_slot_size)  # type: ignore[arg-type]
        image = len(prog.code) + sum(len(seg.data) for seg in prog.segments)
        if image > self.program_slot_size:
            raise ProgramTooLarge(image, self.program_slot_size)
        key = prog.digest
        exe = self._cache.get(key)
        if exe is None:
            exe = _engine.load(prog, engine=self.engine_name, budget=self.budget)
            self._cache.put(key, exe, prog.host_bytes)
        return exe

    def close(self) -> None:
        """Drop the prepared programs (and the async pool)."""
        super().close()
        self._cache.clear()

    def session(self) -> CpuSession:
        """A new CPU session."""
        return CpuSession(self)


def open_cpu(address: str = "", **options: object) -> CpuDevice:
    """``hermes.open("cpu", **options)``."""
    if address:
        raise DeviceError(f"the cpu device takes no address (got 'cpu:{address}')", errno.EINVAL)
    unknown = sorted(set(options) - set(CPU_OPTIONS))
    if unknown:
        raise UsageError(f"unknown cpu options: {', '.join(unknown)} (the cpu backend takes "
                         f"{', '.join(CPU_OPTIONS)})")
    return CpuDevice(**options)  # type: ignore[arg-type]


#: Options ``hermes.open("cpu", ...)`` takes (``slot_size`` is the older name of data_slot_size).
CPU_OPTIONS = ("engine", "data_slot_size", "program_slot_size", "budget", "engines", "slot_size")

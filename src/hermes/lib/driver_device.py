"""Devices reached through the Hermes driver: the in-process emulator and any other Transport."""
from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass

from .. import engine as _engine, regs
from ..driver import Driver, HermesFile, Transport, attach
from ..engine.cache import DEFAULT_CACHE_BYTES, LoadedCache
from ..errors import DeviceError, ProgramTooLarge
from .api import Device, ProgramLike, RunInfo, Session, as_program, program_bytes, run_guarded
from .errors import from_os_error, run_cancelled, run_failure, run_timeout, with_trace

#: ``hermes.open("emu", ...)`` options that configure the driver; the rest go to HermesDevice.
DRIVER_OPTIONS = ("timeout", "dma_timeout", "dma_chunk", "bounce_size")
#: Checked programs kept per device (by content), so a program is checked once, not per load.
_CACHE_SIZE = 64


@dataclass(frozen=True)
class Prepared:
    """A program checked on the host and ready to send: the bytes the device loads, the entry
    function's ELF symbol index (0: the default rule) and its data segments (for fault texts)."""

    code: bytes
    entry: int
    segments: tuple


def check_program(program: ProgramLike | Prepared, limit: int,
                  cache: LoadedCache[Prepared]) -> Prepared:
    """``program`` checked on the host for a device whose programs hold at most ``limit`` bytes
    (``ProgramTooLarge``, ``ProgramError``/``VerifierError`` as on the CPU backend); ``cache``
    keeps checked programs by content."""
    if isinstance(program, Prepared):
        return program
    key: tuple
    if isinstance(program, _engine.Program):
        key = ("program", program.digest, getattr(program, "entry_symbol", 0))
    else:
        raw = program_bytes(program)
        key = ("bytes", hashlib.sha256(raw).hexdigest())
    prepared = cache.get(key)
    if prepared is not None:
        return prepared
    code = program_bytes(program)
    if len(code) > limit:
        raise ProgramTooLarge(len(code), limit)
    prog = as_program(program, max_size=limit)
    _engine.check(prog, _engine.DEVICE_HELPERS)
    prepared = Prepared(code, getattr(prog, "entry_symbol", 0) or 0, tuple(prog.segments))
    cache.put(key, prepared, len(code))
    return prepared


class DriverSession(Session):
    """A session backed by one driver file (one program slot, one data slot)."""

    _device: DriverDevice

    def __init__(self, device: DriverDevice, file: HermesFile):
        super().__init__()
        self._device = device
        self.file = file
        self._prepared: Prepared | None = None

    def _check_open(self) -> None:
        self._device.check_open()
        if self.file.closed:
            raise DeviceError("the session is closed", errno.EBADF)

    def _load(self, program: object) -> None:
        prepared = self._device.prepare(program)  # type: ignore[arg-type]
        try:
            self.file.download_program(prepared.code)
        except OSError as exc:
            raise from_os_error(exc) from None
        self._prepared = prepared

    def _write(self, view: memoryview, offset: int) -> None:
        try:
            self.file.pwrite(view, offset)
        except OSError as exc:
            raise from_os_error(exc) from None

    def _readinto(self, view: memoryview, offset: int) -> None:
        try:
            self.file.preadv([view], offset)
        except OSError as exc:
            raise from_os_error(exc) from None

    def _read(self, size: int, offset: int) -> bytes:
        try:
            return self.file.pread(size, offset)   # one copy, out of the DMA buffer
        except OSError as exc:
            raise from_os_error(exc) from None

    def _execute(self, length: int, size: int, args: tuple[int, int, int], budget: int | None,
                 timeout: float | None, cancel: _engine.Cancel | None) -> RunInfo:
        prepared = self._prepared
        assert prepared is not None
        try:
            # Session._run has checked every field (what run_ex would check again).
            outcome = run_guarded(self, lambda: self.file.run_context(
                length, size, args, budget or 0, prepared.entry, timeout, cancel=cancel))
        except OSError as exc:
            self._device.check_open()  # stopped by the device's close
            out = getattr(exc, "outcome", None)
            response = getattr(exc, "response", None) or getattr(out, "response", None)
            stopped_at = response.value if response is not None \
                and response.status == regs.STATUS_ABORTED else None
            if exc.errno == errno.ETIMEDOUT and timeout is not None:
                raise with_trace(run_timeout(timeout, stopped_at), out) from None
            if exc.errno == errno.ECANCELED:
                raise with_trace(run_cancelled(stopped_at, getattr(out, "instructions", None)),
                                 out) from None
            if exc.errno == errno.ENOEXEC and response is not None:
                raise run_failure(response.value, outcome=out, window=size,
                                  budget=budget,
                                  segments=prepared.segments) from None
            raise from_os_error(exc) from None
        trace = outcome.trace
        return RunInfo(outcome.r0, outcome.instructions, outcome.output_len,
                       outcome.run_ns / 1e9, trace.decode("utf-8", "replace") if trace else "",
                       outcome.trace_dropped)

    def abort(self) -> None:
        """Abort this file's run in progress (EHCMDABORT on its engine)."""
        try:
            self.file.abort()
        except OSError:  # nothing to stop on a file whose device went away
            pass

    def close(self) -> None:
        """Release the slots (nothing to release when the device went away with them)."""
        try:
            self.file.close()
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise from_os_error(exc) from None


class DriverDevice(Device):
    """A Hermes device driven by ``hermes.driver`` over any transport.

    Backends for other transports (vfio-user, VFIO) build one with ``DriverDevice.from_transport``.
    """

    def __init__(self, driver: Driver, *, on_close: list | None = None):
        self.driver = driver
        self._on_close = list(on_close or [])
        self._checked: LoadedCache[Prepared] = LoadedCache(_CACHE_SIZE, DEFAULT_CACHE_BYTES)

    @classmethod
    def from_transport(cls, transport: Transport, **driver_options: object) -> DriverDevice:
        """Probe the device behind ``transport`` (closed with the device)."""
        try:
            return cls(attach(transport, **driver_options))
        except OSError as exc:
            transport.close()
            raise from_os_error(exc) from None

    @property
    def engines(self) -> int:
        """Engines of the device (from EHENG)."""
        return self.driver.geometry.engines

    @property
    def data_slot_size(self) -> int:
        """Bytes of one data slot (EHDSZ)."""
        return self.driver.geometry.data_slot_size

    def info(self) -> dict:
        """Spec plus the geometry the driver probed."""
        self.check_open()
        return {"spec": self.spec, "backend": "hermes-driver", **self.driver.info()}

    def _session(self) -> DriverSession:
        try:
            return DriverSession(self, self.driver.open())
        except OSError as exc:
            raise from_os_error(exc) from None

    def prepare(self, program: ProgramLike | Prepared) -> Prepared:
        """``program`` checked on the host with the engines' load checks (``ProgramError`` /
        ``VerifierError`` worded as on the CPU backend), cached by content."""
        self.check_open()
        return check_program(program, self.driver.geometry.program_slot_size, self._checked)

    def close(self) -> None:
        """Abort the runs in progress, close the driver (releasing every slot), then whatever
        the backend attached."""
        if self._closed and not self._on_close:
            return
        super().close()
        self.driver.close()
        for fn in self._on_close:
            fn()
        self._on_close.clear()


def open_emu(address: str = "", **options: object) -> DriverDevice:
    """``hermes.open("emu", **options)``: a new in-process HermesDevice behind the driver.

    The library never touches the device itself: the in-process transport builds and owns it,
    exactly as the vfio-user transport reaches a device owned by a server process.
    """
    from ..transport.inproc import InProcessTransport
    if address:
        raise DeviceError(f"the emu device takes no address (got 'emu:{address}')")
    driver_options = {k: options.pop(k) for k in DRIVER_OPTIONS if k in options}
    transport = InProcessTransport.create(**options)
    try:
        return DriverDevice.from_transport(transport, **driver_options)
    except BaseException:
        transport.close()
        raise

"""Devices reached through the Hermes driver: the in-process emulator and any other Transport."""
from __future__ import annotations

import errno

from ..driver import Driver, HermesFile, Transport, attach
from .api import Buffer, Device, ProgramLike, Session, check_buffer, check_size, program_bytes
from .errors import from_os_error

#: ``hermes.open("emu", ...)`` options that configure the driver; the rest go to HermesDevice.
DRIVER_OPTIONS = ("timeout", "dma_timeout", "dma_chunk", "bounce_size")


class DriverSession(Session):
    """A session backed by one driver file (one program slot, one data slot)."""

    def __init__(self, device: "DriverDevice", file: HermesFile):
        self._device = device
        self.file = file

    def load(self, program: ProgramLike) -> None:
        """Download the program (ELF objects as their bytes; the device loads ELF itself)."""
        code = program_bytes(program)
        limit = self._device.driver.geometry.program_slot_size
        if len(code) > limit:
            from ..errors import ProgramTooLarge
            raise ProgramTooLarge(len(code), limit)
        try:
            self.file.download_program(code)
        except OSError as exc:
            raise from_os_error(exc) from None

    def write(self, data: Buffer, offset: int = 0) -> int:
        """Copy ``data`` into the data slot at ``offset`` by DMA."""
        view = check_buffer(data)
        check_size("offset", offset)
        try:
            return self.file.pwrite(view, offset)
        except OSError as exc:
            raise from_os_error(exc) from None

    def run(self) -> int:
        """Run Program on this session's slots; returns r0."""
        try:
            return self.file.run()
        except OSError as exc:
            raise from_os_error(exc) from None

    def read(self, size: int, offset: int = 0) -> bytes:
        """Read the data slot by DMA."""
        check_size("size", size)
        check_size("offset", offset)
        try:
            return self.file.pread(size, offset)
        except OSError as exc:
            raise from_os_error(exc) from None

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

    def __init__(self, driver: Driver, *, on_close: "list | None" = None):
        self.driver = driver
        self._on_close = list(on_close or [])

    @classmethod
    def from_transport(cls, transport: Transport, **driver_options: object) -> "DriverDevice":
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

    def info(self) -> dict:
        """Spec plus the geometry the driver probed."""
        return {"spec": self.spec, "backend": "hermes-driver", **self.driver.info()}

    def session(self) -> DriverSession:
        """A new driver file wrapped as a session."""
        try:
            return DriverSession(self, self.driver.open())
        except OSError as exc:
            raise from_os_error(exc) from None

    def prepare(self, program: ProgramLike) -> bytes:
        """The program's bytes (converted once for ``map``)."""
        return program_bytes(program)

    def close(self) -> None:
        """Close the driver (releasing every slot), then whatever the backend attached."""
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
    from ..errors import DeviceError
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

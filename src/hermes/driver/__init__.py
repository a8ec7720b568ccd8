"""The Hermes host driver: probes a device over a Transport and offers /dev/hermesX-like files."""
from __future__ import annotations

from ..transport.base import DmaBuffer, Transport
from .core import Driver
from .dma import DEFAULT_BOUNCE_SIZE, DEFAULT_DMA_CHUNK, DEFAULT_DMA_TIMEOUT
from .engines import DEFAULT_TIMEOUT
from .file import DownloadProg, HermesFile
from .probe import Geometry
from .protocol import (
    ERROR_KIND_TEXT,
    HERMES_DOWNLOAD_PROG_IOCTL,
    HERMES_RUN_IOCTL,
    HERMES_RUN_STRUCT,
    RWF_APPEND,
    RWF_DSYNC,
    RWF_HIPRI,
    RWF_NOWAIT,
    RWF_SYNC,
    DriverError,
    Response,
    RunArgs,
    RunOutcome,
    decode_error_code,
    describe_error_code,
)


def attach(target: object, **options: object) -> Driver:
    """Probe ``target`` and return its driver.

    ``target`` is any ``Transport`` or an in-process ``hermes.device.HermesDevice`` (wrapped in
    an ``InProcessTransport``; this is the only place the driver knows about the in-process case,
    and it imports that transport lazily so the driver never depends on the device model).
    ``options`` go to ``Driver`` (``timeout``, ``dma_timeout``, ``dma_chunk``, ``bounce_size``,
    ``owns_transport``). Closing the driver closes the transport.
    """
    if isinstance(target, Transport):
        transport = target
    else:
        from ..transport import inproc
        if not isinstance(target, inproc.HermesDevice):
            raise TypeError(f"attach() takes a Transport or a HermesDevice, not "
                            f"{type(target).__name__}")
        transport = inproc.InProcessTransport(target)
    try:
        return Driver(transport, **options)  # type: ignore[arg-type]
    except BaseException:
        if transport is not target:
            transport.close()
        raise


__all__ = [
    "DEFAULT_BOUNCE_SIZE", "DEFAULT_DMA_CHUNK", "DEFAULT_DMA_TIMEOUT", "DEFAULT_TIMEOUT",
    "DmaBuffer", "DownloadProg", "Driver", "DriverError", "ERROR_KIND_TEXT", "Geometry",
    "HERMES_DOWNLOAD_PROG_IOCTL", "HERMES_RUN_IOCTL", "HERMES_RUN_STRUCT",
    "HermesFile", "RWF_APPEND", "RWF_DSYNC", "RWF_HIPRI", "RWF_NOWAIT", "RWF_SYNC", "Response",
    "RunArgs", "RunOutcome", "Transport", "attach", "decode_error_code", "describe_error_code",
]

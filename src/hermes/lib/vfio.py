"""Library backends ``vfio-user:PATH`` and ``vfio:BDF``: a DriverDevice over the vfio transports.

``hermes.lib.api.BACKENDS`` names these functions; they are imported on first use.
"""
from __future__ import annotations

from ..errors import DeviceError, UsageError
from .driver_device import DRIVER_OPTIONS, DriverDevice
from .errors import from_os_error


def _split(options: dict) -> tuple[dict, dict]:
    driver = {k: options.pop(k) for k in DRIVER_OPTIONS if k in options}
    return driver, options


def open_vfio_user(address: str = "", **options: object) -> DriverDevice:
    """``hermes.open("vfio-user:/path/to.sock")``: the device a ``hermes serve`` process serves.

    Options: driver options (``timeout``...), plus ``dma_fds`` (False: DMA through messages),
    ``reply_timeout`` (seconds the server may take to answer one message) and
    ``connect_timeout`` (seconds for connecting and the set-up). ``timeout`` caps both, so that
    no call waits longer than it on a server that stopped answering.
    """
    from ..transport import vfio_user
    if not address:
        raise DeviceError("vfio-user needs a socket path: 'vfio-user:/path/to.sock'")
    driver_options, rest = _split(dict(options))
    transport_options = {k: rest.pop(k) for k in ("dma_fds", "connect_timeout") if k in rest}
    if "reply_timeout" in rest:
        transport_options["timeout"] = rest.pop("reply_timeout")
    if rest:
        raise DeviceError(f"unknown vfio-user options: {', '.join(sorted(rest))} (the device's "
                          f"geometry is the server's; see `hermes serve --help`)")
    try:
        for name, value in (("timeout", driver_options.get("timeout")),
                            ("reply_timeout", transport_options.get("timeout")),
                            ("connect_timeout", transport_options.get("connect_timeout"))):
            if value is not None:
                vfio_user.check_seconds(name, value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cap = driver_options.get("timeout")
    if cap is not None:
        transport_options.setdefault("timeout", min(vfio_user.DEFAULT_TIMEOUT, cap))
        transport_options.setdefault("connect_timeout",
                                     min(vfio_user.DEFAULT_CONNECT_TIMEOUT, cap))
    try:
        transport = vfio_user.VfioUserTransport(address, **transport_options)
    except OSError as exc:
        raise from_os_error(exc) from None
    return DriverDevice.from_transport(transport, **driver_options)


def open_vfio(address: str = "", **options: object) -> DriverDevice:
    """``hermes.open("vfio:0000:3b:00.0")``: a real device bound to vfio-pci.

    Options: driver options, plus the VfioTransport's ``sysfs_root``, ``dev_root``, ``ioctl``,
    ``pread``, ``pwrite`` (the kernel boundary, replaceable for tests).
    """
    from ..transport.vfio import VfioTransport
    if not address:
        raise DeviceError("vfio needs a PCI address: 'vfio:0000:3b:00.0'")
    driver_options, rest = _split(dict(options))
    known = ("sysfs_root", "dev_root", "ioctl", "pread", "pwrite", "iommu_type")
    transport_options = {k: rest.pop(k) for k in known if k in rest}
    if rest:
        raise DeviceError(f"unknown vfio options: {', '.join(sorted(rest))}")
    try:
        transport = VfioTransport(address, **transport_options)
    except OSError as exc:
        raise from_os_error(exc) from None
    return DriverDevice.from_transport(transport, **driver_options)

"""Turning driver OSErrors and engine errors into the one HermesError hierarchy of the library."""
from __future__ import annotations

import errno as _errno

from .. import regs
from ..errors import (DeviceBusy, DeviceError, DeviceProtocolError, DeviceTimeout, ExecutionError,
                      ExecutionFailed, HermesError, ProgramRejected, SlotsExhausted)

#: Engine ExecutionError.kind -> the device's error kind (so CPU errors carry a device-style code).
_KIND_CODES = {
    "out_of_bounds": regs.EBPF_ERR_OUT_OF_BOUNDS,
    "budget": regs.EBPF_ERR_BUDGET,
    "call_depth": regs.EBPF_ERR_CALL_DEPTH,
    "helper": regs.EBPF_ERR_HELPER,
    "unsupported": regs.EBPF_ERR_UNSUPPORTED,
}


def from_os_error(exc: OSError) -> HermesError:
    """The library exception for a driver ``OSError`` (keeps errno, status and error code)."""
    from ..driver import ERROR_KIND_TEXT, decode_error_code, describe_error_code
    response = getattr(exc, "response", None)
    message = exc.strerror or str(exc)
    err = exc.errno
    status = response.status if response is not None else None
    if response is not None and response.status == regs.STATUS_EBPF_ERROR:
        kind, detail = decode_error_code(response.value)
        if kind == "load":
            return ProgramRejected(f"the device could not load the program: "
                                   f"{describe_error_code(response.value)}", detail,
                                   code=response.value)
        text = ERROR_KIND_TEXT.get(kind, f"eBPF error of kind {response.value & 0xFF:#x}")
        return ExecutionFailed(kind, f"{text} (device error code {response.value:#x})", detail,
                               code=response.value)
    cls = {_errno.ENOSPC: SlotsExhausted, _errno.ETIMEDOUT: DeviceTimeout,
           _errno.EBADE: DeviceProtocolError, _errno.EBUSY: DeviceBusy}.get(err or 0, DeviceError)
    if cls is DeviceError and err == _errno.EIO and "EHCMDDONE" in message:
        cls = DeviceProtocolError
    name = _errno.errorcode.get(err or 0)
    return cls(f"{message} ({name})" if name else message, err, status)


def from_execution_error(exc: ExecutionError) -> ExecutionFailed:
    """An engine ``ExecutionError`` as ``ExecutionFailed`` with a device-style error code."""
    if isinstance(exc, ExecutionFailed):
        return exc
    kind_code = _KIND_CODES.get(exc.kind, regs.EBPF_ERR_INTERNAL)
    code = kind_code | ((exc.pc or 0) << 8)
    failed = ExecutionFailed(exc.kind, exc.message, exc.pc, code=code, address=exc.address,
                             size=exc.size, regions=exc.regions, instructions=exc.instructions)
    return failed

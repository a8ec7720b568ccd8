"""The driver-interface cases over a real device file: ``/dev/hermesN`` of the Linux kernel driver.

``DevFile`` offers the methods of ``hermes.driver.HermesFile`` through system calls only
(os.open, os.pread/pwrite, os.preadv/pwritev(2), fcntl.ioctl, os.fsync, os.lseek), so the cases of
tests/test_driver*.py run unchanged against the kernel. ``DevDevice`` stands in for the driver
object the fixtures hand out (``open()``). Registered as device spec ``devfile`` by
``tests.vm.backends`` when ``$HERMES_VM_DEVFILE`` names the device file.

A failing call raises ``DevFileError`` (an OSError with the kernel's errno) whose message adds the
lines the kernel logged during the call, so cases that check for a reason in the message hold the
kernel driver to naming it in its log.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Iterable

import pytest

from hermes.driver import HERMES_DOWNLOAD_PROG_IOCTL, DownloadProg

#: struct hermes_download_prog_ioctl_argp {u32 len; u64 prog; u32 flags;} with C padding (24 bytes).
_DOWNLOAD = struct.Struct("=I4xQI4x")


class DevFileError(OSError):
    """A system call on the device file failed; ``strerror`` carries the kernel's log lines."""

    @property
    def response(self) -> object:
        """The Python driver's response record has no kernel counterpart."""
        pytest.skip("the kernel file interface reports an errno, not the device's response record")


class KernelLog:
    """Lines appended to the kernel log (/dev/kmsg) since the last ``mark``."""

    def __init__(self) -> None:
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self.fd = -1
        self.mark()

    def mark(self) -> None:
        """Forget everything logged so far."""
        if self.fd >= 0:
            os.lseek(self.fd, 0, os.SEEK_END)

    def new_lines(self) -> list[str]:
        """Messages logged since the mark (one record a read; the mark moves past them)."""
        lines = []
        while self.fd >= 0:
            try:
                record = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:   # records overwritten while we were not reading
                    continue
                break
            lines.append(record.split(";", 1)[-1].strip())
        return lines

    def close(self) -> None:
        """Close /dev/kmsg."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _no_position_offset(offset: int) -> None:
    """Offset -1 of pwritev2/preadv2 is Linux's "at the file position": the VFS turns it into
    writev/readv before any driver sees it, so a driver cannot refuse it as the interface table
    asks; the case belongs to the Python driver."""
    if offset == -1:
        pytest.skip("pwritev2/preadv2 at offset -1 reach a kernel driver as writev/readv at the "
                    "file position (the VFS decides; no driver can answer EOPNOTSUPP)")


class DevFile:
    """One open of the kernel driver's device file, with ``HermesFile``'s methods."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.closed = False
        self._log = KernelLog()

    def _call(self, fn, *args):
        self._log.mark()
        try:
            return fn(*args)
        except OSError as exc:
            said = "; ".join(self._log.new_lines())
            text = exc.strerror or os.strerror(exc.errno or 0)
            raise DevFileError(exc.errno, f"{text} [kernel: {said}]" if said else text) from None

    # --- download --------------------------------------------------------------------------------
    def ioctl(self, request: int, arg: object) -> int:
        """``HERMES_DOWNLOAD_PROG_IOCTL`` (or any request number) with a ``DownloadProg``."""
        if not isinstance(arg, DownloadProg):
            pytest.skip("argument type checks belong to the Python API; the kernel sees a pointer")
        prog = bytes(arg.prog)
        buf = ctypes.create_string_buffer(prog, len(prog)) if prog else None
        addr = ctypes.addressof(buf) if buf is not None else 0
        packed = bytearray(_DOWNLOAD.pack(len(prog), addr, arg.flags))
        return self._call(fcntl.ioctl, self.fd, request, packed, True)

    def download_program(self, prog: bytes, flags: int = 0) -> int:
        """Copy ``prog`` into this file's program slot."""
        return self.ioctl(HERMES_DOWNLOAD_PROG_IOCTL, DownloadProg(prog, flags))

    # --- data -------------------------------------------------------------------------------------
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """pwrite(2)."""
        return self._call(os.pwrite, self.fd, data, offset)

    def pread(self, size: int, offset: int) -> bytes:
        """pread(2); a negative count is what read(2) sees as a huge one: EINVAL here."""
        if size < 0:
            raise DevFileError(errno.EINVAL, f"negative read size {size}")
        return self._call(os.pread, self.fd, size, offset)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """write(2) at the file position."""
        return self._call(os.write, self.fd, data)

    def read(self, size: int) -> bytes:
        """read(2) at the file position."""
        return self._call(os.read, self.fd, size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """lseek(2)."""
        return self._call(os.lseek, self.fd, offset, whence)

    def tell(self) -> int:
        """The file position."""
        return self._call(os.lseek, self.fd, 0, os.SEEK_CUR)

    def pwritev(self, buffers: Iterable[bytes | bytearray | memoryview], offset: int,
                flags: int = 0) -> int:
        """pwritev2(2) (RWF_SYNC runs the program after the write)."""
        _no_position_offset(offset)
        return self._call(os.pwritev, self.fd, list(buffers), offset, flags)

    def preadv(self, buffers: Iterable[bytearray | memoryview], offset: int,
               flags: int = 0) -> int:
        """preadv2(2). Python refuses read-only buffers before the call; the kernel would fault on
        them, so that is EFAULT here."""
        _no_position_offset(offset)
        views = [memoryview(b) for b in buffers]
        if any(v.readonly for v in views):
            raise DevFileError(errno.EFAULT, "preadv buffer is not writable")
        return self._call(os.preadv, self.fd, views, offset, flags)

    # --- running ----------------------------------------------------------------------------------
    def fsync(self) -> None:
        """fsync(2): runs the program on the data slot."""
        self._call(os.fsync, self.fd)

    def run(self) -> int:
        """The Python driver's r0-returning run has no system call."""
        pytest.skip("the kernel file interface runs only through fsync/RWF_SYNC (no r0)")

    @property
    def last_response(self) -> object:
        """The Python driver's response record has no kernel counterpart."""
        pytest.skip("the kernel file interface keeps no response record")

    def close(self) -> None:
        """close(2) (idempotent)."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)
            self._log.close()

    def __enter__(self) -> DevFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> object:
        # Slot numbers and other HermesFile internals are not visible through the file.
        if name.startswith("__"):
            raise AttributeError(name)
        pytest.skip(f"HermesFile.{name} is the Python driver's, not the device file's")


class DevDevice:
    """What the device fixtures return for ``devfile``: opens of one device file."""

    def __init__(self, path: str):
        self.path = path
        self._files: list[DevFile] = []
        self.closed = False

    def open(self) -> DevFile:
        """A new open of the device file."""
        if self.closed:
            pytest.skip("closing the Python driver object has no device-file form (the kernel "
                        "driver's unbind with files open is its own guest test)")
        f = DevFile(self.path)
        self._files.append(f)
        return f

    def __getattr__(self, name: str) -> object:
        # Raw DMA, geometry and the other driver-object calls have no file-interface form.
        if name.startswith("__"):
            raise AttributeError(name)
        pytest.skip(f"driver.{name} is the Python driver's API, not the device file's")

    def close(self) -> None:
        """Close every file still open (the fixtures' teardown)."""
        self.closed = True
        for f in self._files:
            f.close()

"""The NVMe CP/SLM host calls through Linux's NVMe passthrough ioctls on generic character devices.

A CP controller bound to the kernel's nvme driver shows each namespace as ``/dev/ngXnY`` (namespaces
of command sets the kernel has no block driver for get only this char device). Commands go through
``NVME_IOCTL_ADMIN64_CMD`` and ``NVME_IOCTL_IO64_CMD`` with ``struct nvme_passthru_cmd64`` of
``linux/nvme_ioctl.h``; the kernel builds the submission entry (PRPs, CID, metadata pointer) and
returns the completion's status and its 64-bit DW0/DW1. ``PassthroughHost`` offers the same CP
and SLM calls as ``NvmeHost`` (it reuses them: only the two submission paths differ).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import mmap
import os
import threading

from ... import nvme_regs as N
from .host import DEFAULT_TIMEOUT, Namespace, NvmeHost, NvmeStatusError


class nvme_passthru_cmd64(ctypes.Structure):
    """``struct nvme_passthru_cmd64`` (linux/nvme_ioctl.h): 80 bytes, native alignment.

    ``addr``/``data_len`` name the user buffer the kernel maps for the data transfer (its
    direction follows the opcode's bits 1:0); ``metadata`` fields stay 0 (CDW4-5 is then 0);
    ``timeout_ms`` 0 means the kernel's default I/O or admin timeout; ``result`` is completion
    DW0 | DW1 << 32 on return.
    """

    _fields_ = [("opcode", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("rsvd1", ctypes.c_uint16), ("nsid", ctypes.c_uint32),
                ("cdw2", ctypes.c_uint32), ("cdw3", ctypes.c_uint32),
                ("metadata", ctypes.c_uint64), ("addr", ctypes.c_uint64),
                ("metadata_len", ctypes.c_uint32), ("data_len", ctypes.c_uint32),
                ("cdw10", ctypes.c_uint32), ("cdw11", ctypes.c_uint32),
                ("cdw12", ctypes.c_uint32), ("cdw13", ctypes.c_uint32),
                ("cdw14", ctypes.c_uint32), ("cdw15", ctypes.c_uint32),
                ("timeout_ms", ctypes.c_uint32), ("rsvd2", ctypes.c_uint32),
                ("result", ctypes.c_uint64)]


def _iowr(nr: int, size: int) -> int:
    """``_IOWR('N', nr, size)`` of asm-generic/ioctl.h."""
    return (3 << 30) | (size << 16) | (ord("N") << 8) | nr


#: The ioctl numbers of linux/nvme_ioctl.h that this module uses.
NVME_IOCTL_ID = (ord("N") << 8) | 0x40
NVME_IOCTL_ADMIN64_CMD = _iowr(0x47, ctypes.sizeof(nvme_passthru_cmd64))
NVME_IOCTL_IO64_CMD = _iowr(0x48, ctypes.sizeof(nvme_passthru_cmd64))
assert ctypes.sizeof(nvme_passthru_cmd64) == 80

#: Largest data transfer of one passthrough command: the kernel refuses a user buffer above the
#: queue's max_hw_sectors (often 128 KiB behind a vIOMMU or swiotlb), so transfers are split.
PASSTHRU_CHUNK = 128 << 10


def namespace_devices(path: str) -> dict[int, str]:
    """NSID -> generic char device of every namespace of the controller ``path`` belongs to
    (``/dev/ng0n1`` -> ``/dev/ng0n*``), asked with NVME_IOCTL_ID."""
    base = os.path.basename(path)
    if not base.startswith("ng") or "n" not in base[2:]:
        raise OSError(errno.EINVAL, f"{path} is not an NVMe generic character device "
                                    "(/dev/ngXnY)")
    if not os.path.exists(path):
        raise OSError(errno.ENOENT, f"{path}: no such NVMe generic character device")
    prefix = os.path.join(os.path.dirname(path), base[:base.index("n", 2) + 1])
    found = {}
    for dev in sorted(glob.glob(prefix + "*")):
        if not dev[len(prefix):].isdigit():
            continue
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        try:
            found[fcntl.ioctl(fd, NVME_IOCTL_ID)] = dev
        finally:
            os.close(fd)
    return found


def controller_device(path: str) -> str:
    """The controller char device of a namespace's generic device: /dev/ng0n1 -> /dev/nvme0."""
    base = os.path.basename(path)
    return os.path.join(os.path.dirname(path), "nvme" + base[2:base.index("n", 2)])


class _Buffer:
    """Page-aligned user memory for one transfer (the kernel maps it without a bounce copy)."""

    def __init__(self, n: int):
        self.mm = mmap.mmap(-1, max(n, 1))
        self.view = memoryview(self.mm)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))

    def close(self) -> None:
        self.view.release()
        try:
            self.mm.close()
        except BufferError:
            pass


class PassthroughHost(NvmeHost):
    """The ``NvmeHost`` CP/SLM calls on a controller the Linux nvme driver owns.

    ``path`` is the compute namespace's ``/dev/ngXnY``; the controller's other namespaces are
    found beside it. Admin commands go to the controller's char device ``/dev/nvmeX`` (the
    kernel refuses, on a namespace's device, any NSID but its own, admin commands included),
    I/O commands to the device of their namespace.
    Every command is bounded: ``timeout`` seconds go to the kernel as ``timeout_ms``, and on
    expiry the kernel aborts the command (or resets the controller) itself.
    """

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.path = path
        self.timeout = timeout
        self.use_irq = True
        self._fds: dict[int, int] = {}
        self._admin_fd = -1
        try:
            devices = namespace_devices(path)
            for nsid, dev in devices.items():
                self._fds[nsid] = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            self._admin_fd = os.open(controller_device(path), os.O_RDWR | os.O_CLOEXEC)
            self.id_ctrl = N.ID_CTRL.unpack(self.identify(N.Cns.CONTROLLER))
            self.max_transfer = min(PASSTHRU_CHUNK, 4096 << (self.id_ctrl["mdts"] or 8))
            self.namespaces = self._scan()
        except BaseException:
            self.close()
            raise
        cp = [n.nsid for n in self.namespaces if n.csi == N.Csi.CP]
        if not cp or cp[0] != self._nsid_of(path):
            self.close()
            raise OSError(errno.ENODEV, f"{path} is not a Computational Programs namespace")
        self.compute_nsid = cp[0]
        self.admin = None
        self.io = {}

    def _nsid_of(self, path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return fcntl.ioctl(fd, NVME_IOCTL_ID)
        finally:
            os.close(fd)

    def _scan(self) -> list[Namespace]:
        found = []
        for nsid in sorted(self._fds):
            desc = N.parse_ns_descriptors(self.identify(N.Cns.NS_DESCRIPTORS, nsid))
            csi = desc.get(N.NIDT_CSI, b"\0")[0]
            size = 0
            if csi == N.Csi.SLM:
                size = N.ID_NS_SLM.unpack(self.identify(N.Cns.CSI_NAMESPACE, nsid,
                                                        csi=N.Csi.SLM))["msz"]
            found.append(Namespace(nsid, csi, size))
        return found

    # --- the two submission paths -----------------------------------------------------------------
    def _passthru(self, fd: int, request: int, cmd: N.Command, data: bytes | None,
                  data_len: int, what: str | None, check: bool,
                  timeout: float | None) -> tuple[N.Completion, bytes]:
        n = len(data) if data is not None else data_len
        buf = _Buffer(n) if n else None
        try:
            if buf is not None and data is not None:
                buf.view[:n] = data
            c = nvme_passthru_cmd64(opcode=cmd.opcode, flags=cmd.flags, nsid=cmd.nsid,
                                    cdw2=cmd.cdw2, cdw3=cmd.cdw3,
                                    addr=buf.addr if buf is not None else 0, data_len=n,
                                    cdw10=cmd.cdw10, cdw11=cmd.cdw11, cdw12=cmd.cdw12,
                                    cdw13=cmd.cdw13, cdw14=cmd.cdw14, cdw15=cmd.cdw15,
                                    timeout_ms=int(1000 * (self.timeout if timeout is None
                                                           else timeout)))
            # The GIL is released during ioctl, so sessions in other threads run meanwhile.
            status = self._ioctl(fd, request, c, cmd)
            out = b""
            if buf is not None and data is None:
                out = bytes(buf.view[:n])
        finally:
            if buf is not None:
                buf.close()
        # The ioctl returns the completion's status field shifted right by one (SC 7:0,
        # SCT 10:8, DNR 14), as the phase-less halfword the Completion type holds << 1.
        cqe = N.Completion(c.result & 0xFFFF_FFFF, c.result >> 32, 0, 0, 0, (status & 0x7FFF) << 1)
        if check and not cqe.ok:
            raise NvmeStatusError(what or f"opcode {cmd.opcode:#04x}", cqe)
        return cqe, out

    def _ioctl(self, fd: int, request: int, c: nvme_passthru_cmd64, cmd: N.Command) -> int:
        """The ioctl; an Execute Program waits in a helper thread so that a KeyboardInterrupt
        reaches the caller, which aborts the run (by its program index) and waits for it."""
        if cmd.opcode != N.CpOpcode.EXECUTE_PROGRAM or request != NVME_IOCTL_IO64_CMD:
            return fcntl.ioctl(fd, request, c)
        out: list = []

        def call() -> None:
            try:
                out.append(fcntl.ioctl(fd, request, c))
            except BaseException as exc:  # handed to the waiting thread
                out.append(exc)

        t = threading.Thread(target=call, name="hermes-nvme-passthru", daemon=True)
        t.start()
        try:
            while t.is_alive():
                t.join(0.05)
        except KeyboardInterrupt:
            self.abort_program(cmd.cdw2 & 0xFFFF)
            t.join(self.timeout)
            raise
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def admin_command(self, cmd: N.Command, *, data: bytes | None = None, data_len: int = 0,
                      what: str | None = None, check: bool = True,
                      timeout: float | None = None, **_: object) -> tuple[N.Completion, bytes]:
        """One admin command through NVME_IOCTL_ADMIN64_CMD."""
        return self._passthru(self._admin_fd, NVME_IOCTL_ADMIN64_CMD, cmd, data, data_len, what,
                              check, timeout)

    def io_command(self, cmd: N.Command, qid: int = 1, *, data: bytes | None = None,
                   data_len: int = 0, what: str | None = None, check: bool = True,
                   timeout: float | None = None, buffer: object = None,
                   **_: object) -> tuple[N.Completion, bytes]:
        """One I/O command through NVME_IOCTL_IO64_CMD on its namespace's device (the kernel
        chooses the queue; ``qid`` is ignored, ``buffer`` must be None)."""
        if buffer is not None:
            raise ValueError("the passthrough host transfers through its own buffers")
        fd = self._fds.get(cmd.nsid)
        if fd is None:
            raise OSError(errno.ENODEV, f"namespace {cmd.nsid} has no generic character device "
                                        f"beside {self.path}")
        return self._passthru(fd, NVME_IOCTL_IO64_CMD, cmd, data, data_len, what, check,
                              timeout)

    def drain_queue(self, qid: int) -> None:
        """Nothing: a passthrough ioctl returns only once its command completed."""

    def enable(self, admin_depth: int = 32) -> None:
        """The kernel enabled the controller already."""

    def close(self) -> None:
        """Close the namespace devices (the controller stays with the kernel)."""
        fds, self._fds = self._fds, {}
        if self._admin_fd >= 0:
            fds[-1] = self._admin_fd
            self._admin_fd = -1
        for fd in fds.values():
            os.close(fd)

    def __repr__(self) -> str:
        return f"<PassthroughHost {self.path}>"

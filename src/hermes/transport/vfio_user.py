"""vfio-user client transport: a Hermes device in another process, reached over a UNIX socket.

Pure standard library: messages with SCM_RIGHTS (sendmsg/recvmsg), BAR4 and DMA memory shared
through memfds (mmap), MSI-X vectors as eventfds. Imports nothing of the device model.
"""
from __future__ import annotations

import bisect
import errno
import itertools
import mmap
import os
import select
import socket
import struct
import threading
import time

from .. import regs
from ..vfio import mmio, pci, uapi
from ..vfio import protocol as P
from .base import close_mapping, DmaBuffer, MappedDmaBuffer, Transport

#: Where the first DMA buffer goes on the device's bus; buffers follow with a guard page between.
DMA_BASE = 0x1_0000_0000
PAGE = mmap.PAGESIZE
_ACCESS = P.REGION_ACCESS
_HEADER = P.HEADER
_WAITALL = socket.MSG_WAITALL
#: Posted writes queued before they are sent anyway.
POSTED_BATCH = 16


def _page_round(n: int) -> int:
    return max(PAGE, -(-n // PAGE) * PAGE)


class VfioUserBuffer(MappedDmaBuffer):
    """DMA memory shared with the server: a memfd mapped here and registered with DMA_MAP."""


class VfioUserTransport(Transport):
    """Transport to a ``hermes serve`` (or any vfio-user server of a Hermes function).

    ``dma_fds=False`` registers DMA memory without fds, so the server must reach it with
    DMA_READ/DMA_WRITE messages (the protocol's fallback; slow, for tests and odd servers).
    """

    def __init__(self, path: str, *, timeout: float = 30.0, dma_fds: bool = True,
                 connect_timeout: float = 10.0):
        self.path = path
        self.timeout = timeout
        self.dma_fds = dma_fds
        self._lock = threading.Lock()          # one request/reply exchange at a time
        self._posted: list[bytes] = []         # posted writes not sent yet
        self._ids = itertools.count(1)
        self._closed = False
        self._buffers: dict[int, VfioUserBuffer] = {}
        self._buf_starts: list[int] = []
        self._buf_lock = threading.Lock()
        self._next_bus = DMA_BASE
        self._maps: dict[int, mmap.mmap] = {}
        self._eventfds: list[int] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(connect_timeout)
            self.sock.connect(path)
            self.sock.settimeout(None)
            self._setup()
        except BaseException:
            self.close()
            raise

    # --- set-up --------------------------------------------------------------------------------
    def _setup(self) -> None:
        caps = {"max_msg_fds": P.MAX_FDS_ACCEPTED,
                "max_data_xfer_size": P.DEFAULT_MAX_DATA_XFER_SIZE,
                "pgsizes": P.DEFAULT_PGSIZE, "max_dma_maps": P.DEFAULT_MAX_DMA_MAPS}
        reply = self._call(P.VERSION, P.encode_version(P.VERSION_MAJOR, P.VERSION_MINOR, caps))
        major, minor, scaps = P.decode_version(reply.payload)
        if major != P.VERSION_MAJOR or minor > P.VERSION_MINOR:
            raise P.ProtocolError(f"server answered version {major}.{minor} to 0.{P.VERSION_MINOR}")
        self.version = (major, minor)
        self.server_caps = scaps
        self.max_fds = max(1, int(scaps.get("max_msg_fds", P.DEFAULT_MAX_MSG_FDS)))
        self.max_xfer = int(scaps.get("max_data_xfer_size", P.DEFAULT_MAX_DATA_XFER_SIZE))

        info = self._call(P.DEVICE_GET_INFO, bytes(uapi.vfio_device_info(16, 0, 0, 0, 0))[:16])
        flags, self.num_regions, self.num_irqs = struct.unpack_from("<III", info.payload, 4)
        self.device_flags = flags
        if not flags & uapi.VFIO_DEVICE_FLAGS_PCI or self.num_regions <= uapi.VFIO_PCI_CONFIG_REGION_INDEX:
            raise P.ProtocolError("server's device is not a PCI function")
        self.regions: dict[int, uapi.vfio_region_info] = {}
        for index in range(self.num_regions):
            self.regions[index] = self._region_info(index)
        vendor, device = struct.unpack("<HH", self._region_read(uapi.VFIO_PCI_CONFIG_REGION_INDEX, 0, 4))
        if (vendor, device) != (regs.PCI_VENDOR_ID, regs.PCI_DEVICE_ID):
            raise P.ProtocolError(f"server's device is {vendor:04x}:{device:04x}, not a Hermes device")

        irq = uapi.vfio_irq_info.decode(self._call(
            P.DEVICE_GET_IRQ_INFO,
            bytes(uapi.vfio_irq_info(16, 0, uapi.VFIO_PCI_MSIX_IRQ_INDEX, 0))).payload)
        self.num_vectors = irq.count
        self._eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC | os.EFD_SEMAPHORE)
                          for _ in range(self.num_vectors)]
        self._pollers = []
        for fd in self._eventfds:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not self.dma_fds:   # the server may need us to answer DMA_READ/WRITE meanwhile
                poller.register(self.sock, select.POLLIN | select.POLLRDHUP)
            else:                  # only a hang-up: a dead server must not leave us waiting
                poller.register(self.sock, select.POLLRDHUP)
            self._pollers.append(poller)
        flags = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
        for start in range(0, self.num_vectors, self.max_fds):
            fds = self._eventfds[start:start + self.max_fds]
            hdr = uapi.vfio_irq_set(20, flags, uapi.VFIO_PCI_MSIX_IRQ_INDEX, start, len(fds))
            self._call(P.DEVICE_SET_IRQS, bytes(hdr), fds)
        # Memory decode and bus mastering on, as a PCI driver's enable step does.
        cmd = struct.unpack("<H", self._region_read(uapi.VFIO_PCI_CONFIG_REGION_INDEX, pci.PCI_COMMAND, 2))[0]
        cmd |= pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER
        self._region_write(uapi.VFIO_PCI_CONFIG_REGION_INDEX, pci.PCI_COMMAND, struct.pack("<H", cmd))

    def _region_info(self, index: int) -> uapi.vfio_region_info:
        argsz = 32 + 256
        while True:
            reply = self._call(P.DEVICE_GET_REGION_INFO,
                               bytes(uapi.vfio_region_info(argsz, 0, index, 0, 0, 0)))
            info = uapi.vfio_region_info.decode(reply.payload)
            fd = reply.fds[0] if reply.fds else None
            for extra in reply.fds[1:]:
                os.close(extra)
            if info.argsz > argsz and info.argsz <= 1 << 16:
                if fd is not None:
                    os.close(fd)
                argsz = info.argsz
                continue
            break
        try:
            if fd is not None and info.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP and info.size:
                areas = [(0, info.size)]
                if info.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS and info.cap_offset:
                    caps = uapi.parse_caps(reply.payload, info.cap_offset)
                    if uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP in caps:
                        areas = uapi.parse_sparse_mmap(caps[uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP][1])
                # Only a fully mappable region is mapped; partial ones stay on messages.
                if areas == [(0, info.size)]:
                    self._maps[index] = mmap.mmap(fd, info.size, mmap.MAP_SHARED,
                                                  mmap.PROT_READ | mmap.PROT_WRITE,
                                                  offset=info.offset)
        finally:
            if fd is not None:
                os.close(fd)
        return info

    # --- messaging -----------------------------------------------------------------------------
    def _call(self, cmd: int, payload: bytes = b"", fds: list[int] | tuple = ()) -> P.Message:
        """Send a command and wait for its reply (fds included), serving server commands meanwhile."""
        with self._lock:
            if self._closed:
                raise OSError(errno.ENOTCONN, "vfio-user transport is closed")
            msg_id = next(self._ids) & 0xFFFF
            try:
                self._flush_locked()
                P.send_message(self.sock, P.Message(msg_id, cmd, P.TYPE_COMMAND, 0, payload, list(fds)))
                reply = self._await(msg_id, cmd, True)
            except (OSError, P.ProtocolError, P.MessageTooBig) as exc:
                raise self._lost(exc) from None
        if reply.is_error:
            reply.close_fds()
            raise self._remote_error(cmd, reply.error_no)
        return reply

    def _await(self, msg_id: int, cmd: int, with_fds: bool) -> P.Message:
        """Receive until the reply to ``msg_id`` (lock held). Only replies that carry fds need
        recvmsg; the register fast path reads plain bytes."""
        sock = self.sock
        while True:
            if with_fds:
                got = P.recv_header(sock)
                if got is None:
                    raise ConnectionResetError(errno.ECONNRESET, "vfio-user server closed the connection")
                (rid, rcmd, size, flags, err), fds = got
            else:
                hdr = sock.recv(P.HEADER_SIZE, socket.MSG_WAITALL)
                if len(hdr) < P.HEADER_SIZE:
                    raise ConnectionResetError(errno.ECONNRESET, "vfio-user server closed the connection")
                rid, rcmd, size, flags, err = _HEADER.unpack(hdr)
                fds = []
            msg = P.recv_body(sock, rid, rcmd, size, flags, err, fds)
            if (flags & P.FLAG_TYPE_MASK) != P.TYPE_REPLY:
                self._serve(msg)
            elif rid == msg_id and rcmd == cmd:
                return msg
            else:
                msg.close_fds()   # a stale reply (e.g. after a timed-out exchange)

    def _lost(self, exc: BaseException) -> OSError:
        if isinstance(exc, OSError) and exc.errno not in (errno.ECONNRESET, errno.EPIPE,
                                                          errno.ENOTCONN, None):
            return exc
        self._closed = True
        return OSError(errno.ENOTCONN, f"vfio-user connection to {self.path} lost: {exc}")

    @staticmethod
    def _remote_error(cmd: int, err: int) -> OSError:
        err = err or errno.EIO
        return P.RemoteError(err, f"vfio-user {P.COMMAND_NAMES.get(cmd, cmd)} failed: "
                                  f"{os.strerror(err)}")

    def _region_read_fast(self, region: int, offset: int, count: int) -> bytes:
        """One REGION_READ exchange without fds (the register hot path)."""
        with self._lock:
            if self._closed:
                raise OSError(errno.ENOTCONN, "vfio-user transport is closed")
            msg_id = next(self._ids) & 0xFFFF
            try:
                msg = _HEADER.pack(msg_id, P.REGION_READ, 32, 0, 0) + _ACCESS.pack(offset, region, count)
                if self._posted:   # posted writes go first, in the same system call
                    self._posted.append(msg)
                    msg = b"".join(self._posted)
                    self._posted.clear()
                sock = self.sock
                sock.sendall(msg)
                hdr = sock.recv(16, _WAITALL)
                if len(hdr) == 16:
                    rid, rcmd, size, flags, err = _HEADER.unpack(hdr)
                    if flags == P.TYPE_REPLY and rid == msg_id and size == 32 + count:
                        body = sock.recv(16 + count, _WAITALL)   # the expected reply: no parsing
                        if len(body) == 16 + count:
                            return body[16:]
                        raise ConnectionResetError(errno.ECONNRESET, "short REGION_READ reply")
                    # Anything else (an error, a server command first): the general path.
                    first = P.recv_body(sock, rid, rcmd, size, flags, err, [])
                    if (flags & P.FLAG_TYPE_MASK) == P.TYPE_REPLY and rid == msg_id and rcmd == P.REGION_READ:
                        reply = first
                    else:
                        if (flags & P.FLAG_TYPE_MASK) != P.TYPE_REPLY:
                            self._serve(first)
                        reply = self._await(msg_id, P.REGION_READ, False)
                else:
                    raise ConnectionResetError(errno.ECONNRESET, "vfio-user server closed the connection")
            except (OSError, P.ProtocolError, P.MessageTooBig) as exc:
                raise self._lost(exc) from None
        if reply.is_error:
            raise self._remote_error(P.REGION_READ, reply.error_no)
        data = reply.payload[_ACCESS.size:]
        if len(data) != count:
            raise P.ProtocolError(f"REGION_READ returned {len(data)} bytes, asked {count}")
        return data

    def _region_write_posted(self, region: int, offset: int, data: bytes) -> None:
        """REGION_WRITE with NO_REPLY: a posted write, as PCI memory writes are.

        Posted writes are queued and sent together with the next message, before any wait for
        an interrupt, or when POSTED_BATCH of them are queued; the server handles messages in
        order, so every later read or interrupt wait sees them done. The access was
        range-checked here since no error can come back.
        """
        with self._lock:
            if self._closed:
                raise OSError(errno.ENOTCONN, "vfio-user transport is closed")
            msg_id = next(self._ids) & 0xFFFF
            self._posted.append(_HEADER.pack(msg_id, P.REGION_WRITE, 32 + len(data), P.FLAG_NO_REPLY, 0)
                                + _ACCESS.pack(offset, region, len(data)) + data)
            if len(self._posted) >= POSTED_BATCH or len(data) > 4096:
                self._flush_locked()

    def _flush_locked(self) -> None:
        """Send queued posted writes (lock held)."""
        if self._posted:
            data = b"".join(self._posted)
            self._posted.clear()
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise self._lost(exc) from None

    def flush(self) -> None:
        """Send queued posted writes now."""
        with self._lock:
            if not self._closed:
                self._flush_locked()

    def _serve(self, msg: P.Message) -> None:
        """Answer a server-to-client command (DMA_READ/DMA_WRITE on memory mapped without fd)."""
        msg.close_fds()
        try:
            if msg.cmd == P.DMA_READ and len(msg.payload) == P.DMA_ACCESS.size:
                addr, count = P.DMA_ACCESS.unpack_from(msg.payload)
                data = bytes(self._dma_view(addr, count))
                reply = P.reply_to(msg, P.encode_dma_access(addr, count, data))
            elif msg.cmd == P.DMA_WRITE and len(msg.payload) >= P.DMA_ACCESS.size:
                addr, count = P.DMA_ACCESS.unpack_from(msg.payload)
                data = msg.payload[P.DMA_ACCESS.size:]
                if len(data) != count:
                    raise OSError(errno.EINVAL, "DMA_WRITE size mismatch")
                self._dma_view(addr, count)[:] = data
                reply = P.reply_to(msg, P.DMA_WRITE_REPLY.pack(addr, count))
            else:
                raise OSError(errno.EINVAL, f"unexpected {msg.name} from the server")
        except OSError as exc:
            reply = P.error_reply(msg, exc.errno or errno.EINVAL)
        if not msg.flags & P.FLAG_NO_REPLY:
            P.send_message(self.sock, reply)

    def _dma_view(self, addr: int, count: int) -> memoryview:
        with self._buf_lock:
            i = bisect.bisect_right(self._buf_starts, addr) - 1
            if i >= 0:
                buf = self._buffers[self._buf_starts[i]]
                off = addr - buf.bus_addr
                if off + count <= buf.mapped and buf._view is not None:
                    return memoryview(buf._mm)[off:off + count]
        raise OSError(errno.EFAULT, f"no DMA buffer at {addr:#x}+{count}")

    def _pump(self) -> None:
        """Serve whatever server commands are waiting (non-blocking); used by irq_wait."""
        if not self._lock.acquire(timeout=0.05):
            return   # another thread is mid-exchange and serves them
        try:
            while not self._closed:
                r, _, _ = select.select([self.sock], [], [], 0)
                if not r:
                    return
                msg = P.recv_message(self.sock)
                if msg is None:
                    self._closed = True
                    return
                if msg.is_reply:
                    msg.close_fds()
                else:
                    self._serve(msg)
        except (OSError, P.ProtocolError, P.MessageTooBig):
            self._closed = True
        finally:
            self._lock.release()

    def _region_read(self, region: int, offset: int, count: int) -> bytes:
        out = []
        pos = 0
        while pos < count or not out:
            n = min(count - pos, self.max_xfer)
            out.append(self._region_read_fast(region, offset + pos, n))
            pos += n
            if count == 0:
                break
        return b"".join(out)

    def _region_write(self, region: int, offset: int, data: bytes) -> None:
        pos = 0
        while True:
            chunk = data[pos:pos + self.max_xfer]
            self._call(P.REGION_WRITE, _ACCESS.pack(offset + pos, region, len(chunk)) + chunk)
            pos += len(chunk)
            if pos >= len(data):
                break

    # --- Transport -----------------------------------------------------------------------------
    def read(self, bar: int, offset: int, size: int) -> int:
        """One ``size``-byte read of BAR ``bar`` (a message unless the BAR is mapped)."""
        mm = self._maps.get(bar)
        if mm is not None:
            return mmio.load(mm, offset, size)
        self._check(bar, offset, size)
        return int.from_bytes(self._region_read_fast(bar, offset, size), "little")

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        """One ``size``-byte write of BAR ``bar``."""
        mm = self._maps.get(bar)
        if mm is not None:
            mmio.store(mm, offset, size, value)
            return
        self._check(bar, offset, size)
        self._region_write_posted(bar, offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def _check(self, bar: int, offset: int, size: int) -> None:
        """ValueError for an access outside the BAR or of an unsupported width (as the
        in-process model raises), checked here because posted writes get no reply."""
        info = self.regions.get(bar)
        if info is None or not info.size or bar > uapi.VFIO_PCI_BAR5_REGION_INDEX:
            raise ValueError(f"the Hermes device has no BAR {bar}")
        if size not in (1, 2, 4, 8):
            raise ValueError(f"access size must be 1, 2, 4 or 8, not {size}")
        if offset < 0 or offset + size > info.size:
            raise ValueError(f"access of {size} bytes at {offset:#x} is outside BAR{bar} "
                             f"({info.size:#x} bytes)")

    def read_block(self, bar: int, offset: int, length: int) -> bytes:
        """``length`` bytes of a BAR in one message (the server splits into 4-byte accesses)."""
        mm = self._maps.get(bar)
        if mm is not None:
            return bytes(mm[offset:offset + length])
        return self._region_read(bar, offset, length)

    def write_block(self, bar: int, offset: int, data: bytes) -> None:
        """Write ``data`` to a BAR in one message (the server splits into 4-byte accesses)."""
        mm = self._maps.get(bar)
        if mm is not None:
            mm[offset:offset + len(data)] = data
            return
        data = bytes(data)
        self._check(bar, offset, 1)
        self._check(bar, offset + len(data) - 1 if data else offset, 1)
        for pos in range(0, len(data), self.max_xfer):
            self._region_write_posted(bar, offset + pos, data[pos:pos + self.max_xfer])

    def map_bar(self, bar: int) -> memoryview | None:
        """BAR4 is mapped (shared memfd); BAR0/BAR2 are trapped, so None for them."""
        mm = self._maps.get(bar)
        return memoryview(mm) if mm is not None else None

    def dma_alloc(self, size: int) -> DmaBuffer:
        """A memfd-backed buffer registered with DMA_MAP at a bus address chosen here."""
        if size <= 0:
            raise ValueError("DMA buffer size must be positive")
        mapped = _page_round(size)
        with self._buf_lock:
            bus = self._next_bus
            self._next_bus += mapped + PAGE   # guard page: an overrun faults on the device side
        if self.dma_fds:
            fd = os.memfd_create("hermes-dma", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, mapped)
                mm = mmap.mmap(fd, mapped, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                req = P.DmaMap(32, P.DMA_FLAG_READ | P.DMA_FLAG_WRITE, 0, bus, mapped)
                buf = VfioUserBuffer(self, bus, size, mapped, mm)
                with self._buf_lock:
                    self._insert(buf)
                try:
                    self._call(P.DMA_MAP, bytes(req), [fd])
                except BaseException:
                    with self._buf_lock:
                        self._remove(buf)
                    raise
            finally:
                os.close(fd)
        else:
            mm = mmap.mmap(-1, mapped)
            buf = VfioUserBuffer(self, bus, size, mapped, mm)
            with self._buf_lock:
                self._insert(buf)
            try:
                self._call(P.DMA_MAP, bytes(P.DmaMap(32, P.DMA_FLAG_READ | P.DMA_FLAG_WRITE, 0,
                                                     bus, mapped)))
            except BaseException:
                with self._buf_lock:
                    self._remove(buf)
                raise
        return buf

    def _insert(self, buf: VfioUserBuffer) -> None:
        bisect.insort(self._buf_starts, buf.bus_addr)
        self._buffers[buf.bus_addr] = buf

    def _remove(self, buf: VfioUserBuffer) -> None:
        if self._buffers.pop(buf.bus_addr, None) is not None:
            self._buf_starts.remove(buf.bus_addr)

    def _unmap(self, buf: VfioUserBuffer) -> None:
        try:
            if not self._closed:
                self._call(P.DMA_UNMAP, bytes(uapi.vfio_iommu_type1_dma_unmap(24, 0, buf.bus_addr,
                                                                             buf.mapped)))
        finally:
            with self._buf_lock:
                self._remove(buf)

    def irq_wait(self, vector: int, timeout: float | None) -> bool:
        """Wait for and consume one interrupt of ``vector`` (semaphore eventfd, as the in-process
        transport counts them); serves server DMA requests while waiting."""
        if not 0 <= vector < len(self._eventfds):
            raise ValueError(f"vector {vector} out of range 0..{len(self._eventfds) - 1}")
        fd = self._eventfds[vector]
        if self._posted:
            self.flush()   # the interrupt may be the answer to a queued write
        try:
            os.eventfd_read(fd)
            return True
        except BlockingIOError:
            pass
        if timeout is not None and timeout <= 0:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = self._pollers[vector]
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = poller.poll(None if left is None else left * 1000)
            for efd, ev in events:
                if efd == fd:
                    try:
                        os.eventfd_read(fd)
                        return True
                    except BlockingIOError:
                        pass
                elif ev & select.POLLIN:
                    self._pump()
                elif ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    self._closed = True
            if self._closed:
                raise OSError(errno.ENOTCONN, "vfio-user connection lost while waiting for an interrupt")
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def irq_clear(self, vector: int) -> None:
        """Drop pending interrupts of ``vector``."""
        fd = self._eventfds[vector]
        try:
            while True:   # semaphore eventfd: each read consumes one interrupt
                os.eventfd_read(fd)
        except BlockingIOError:
            pass

    def reset(self) -> None:
        """DEVICE_RESET: the device frees every slot and stops DMA (mappings stay)."""
        self._call(P.DEVICE_RESET)

    def config_read(self, offset: int, size: int) -> int:
        """Read PCI config space (region 7)."""
        return int.from_bytes(self._region_read(uapi.VFIO_PCI_CONFIG_REGION_INDEX, offset, size), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write PCI config space (region 7)."""
        self._region_write(uapi.VFIO_PCI_CONFIG_REGION_INDEX, offset, value.to_bytes(size, "little"))

    def close(self) -> None:
        """Disconnect (the server unmaps our memory and resets the device) and free everything."""
        with self._lock:
            if not self._closed:
                try:
                    self._flush_locked()
                except OSError:
                    pass
            self._closed = True
            try:
                self.sock.close()
            except OSError:
                pass
        with self._buf_lock:
            bufs = list(self._buffers.values())
            self._buffers.clear()
            self._buf_starts.clear()
        for buf in bufs:
            if buf._view is not None:
                buf._view.release()
                buf._view = None
                close_mapping(buf._mm)
        for mm in self._maps.values():
            close_mapping(mm)
        self._maps.clear()
        for fd in self._eventfds:
            os.close(fd)
        self._eventfds = []

    def __repr__(self) -> str:
        return f"VfioUserTransport({self.path!r})"


def open_transport(spec: str) -> VfioUserTransport:
    """``vfio-user:PATH`` -> a connected transport."""
    path = spec.split(":", 1)[1] if spec.startswith("vfio-user:") else spec
    return VfioUserTransport(path)

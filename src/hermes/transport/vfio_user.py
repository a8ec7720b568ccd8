"""vfio-user client transport: a Hermes device in another process, reached over a UNIX socket.

Pure standard library: messages with SCM_RIGHTS (sendmsg/recvmsg), BAR4 and DMA memory shared
through memfds (mmap), MSI-X vectors as eventfds. Imports nothing of the device model.

Every wait on the server has a deadline: a server that does not answer a message within the
reply timeout (or the set-up within the connect timeout) is declared unresponsive, the
connection is dropped and every later call fails at once with the same ``ETIMEDOUT`` error.
"""
from __future__ import annotations

import array
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
from collections.abc import Callable, Sequence

from .. import regs
from ..vfio import mmio, protocol as P, uapi
from .base import DmaBuffer, MappedDmaBuffer, close_mapping
from .pci import PciTransport, map_region, mappable_areas, take_one

_ACCESS = P.REGION_ACCESS
_HEADER = P.HEADER
_MESSAGE = P.REGION_MESSAGE
#: Posted writes queued before they are sent anyway.
POSTED_BATCH = 16
#: Seconds the client polls for a reply before it sleeps in the receive: the server answers a
#: register access or a short Run Program within tens of microseconds, about what waking a
#: sleeping thread costs (more on a virtual machine whose vCPU idles meanwhile).
REPLY_SPIN = 100e-6
#: Seconds the server may take to answer one message. A healthy server answers in microseconds
#: (its session thread runs only programs bounded to about 1.5 ms, inside their start), so this
#: only has to absorb scheduling delays.
DEFAULT_TIMEOUT = 10.0
#: Seconds for connecting and the whole set-up (VERSION, region and IRQ info, SET_IRQS).
DEFAULT_CONNECT_TIMEOUT = 10.0
#: During an interrupt wait the server is asked this often (a 2-byte config-space read) whether it
#: still answers, so a stopped server fails the wait within the reply timeout plus this.
PROBE_INTERVAL = 0.1
_HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
_DONTWAIT = int(socket.MSG_DONTWAIT)
_PEEK = int(socket.MSG_PEEK)
_WAITALL = int(socket.MSG_WAITALL)
_SIZES = (1, 2, 4, 8)
_MASKS = {n: (1 << (8 * n)) - 1 for n in _SIZES}
#: An engine's EHCMDEXEC and EHCMDDONE bytes (a 2-byte read of its control) once its command has
#: completed.
_DONE_STATE = 0x0100
#: The byte written to EHCMDEXEC to start a command.
_EXEC = b"\x01"


def check_seconds(name: str, value: object) -> float:
    """``value`` as a positive number of seconds (ValueError naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class VfioUserBuffer(MappedDmaBuffer):
    """DMA memory shared with the server: a memfd mapped here and registered with DMA_MAP."""


class VfioUserTransport(PciTransport):
    """Transport to a ``hermes serve`` (or any vfio-user server of a Hermes function).

    ``timeout`` bounds every exchange (the server's answer to one message); ``connect_timeout``
    bounds connecting plus the whole set-up. A server that misses either is declared unresponsive
    (``ETIMEDOUT``); one that closes the connection has gone away (``ENOTCONN``); one that serves
    another client answers VERSION with ``EBUSY``. After any of these the transport is unusable:
    every call fails at once with the same error, and ``close`` is quick.

    ``dma_fds=False`` registers DMA memory without fds, so the server must reach it with
    DMA_READ/DMA_WRITE messages (the protocol's fallback; slow, for tests and odd servers).
    """

    #: A block write is one posted REGION_WRITE, as one register write is (the server splits it
    #: into the 4-byte writes it stands for).
    cheap_block_writes = True

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT, dma_fds: bool = True,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 pci_id: tuple[int, int] = (regs.PCI_VENDOR_ID, regs.PCI_DEVICE_ID)):
        super().__init__()
        self.path = path
        #: (vendor, device) the served function must have (another device's driver passes its own).
        self.pci_id = pci_id
        self.timeout = check_seconds("timeout", timeout)
        self.connect_timeout = check_seconds("connect_timeout", connect_timeout)
        self.dma_fds = dma_fds
        #: Seconds to poll for a reply before sleeping in the receive (0: sleep at once).
        self.reply_spin = REPLY_SPIN
        self._lock = threading.Lock()          # one request/reply exchange at a time
        self._posted: list[bytes] = []         # posted writes not sent yet
        #: (thread id, {(offset, length): bytes}) of BAR0 reads that ``execute`` sent with a
        #: start, kept for that thread's next ``read``/``read_many`` of them; any message to the
        #: server drops them (see ``execute``).
        self._kept: tuple[int, dict[tuple[int, int], bytes]] | None = None
        #: Per engine control offset: the BAR0 reads ``execute`` sends with a start (those the
        #: host made after the last start there, learnt when they were not all kept).
        self._after_start: dict[int, list[tuple[int, int]]] = {}
        #: ``execute`` saw its command completed: its interrupt is most likely pending (a hint
        #: for the next ``irq_wait``, which then reads the eventfd without a poll first).
        self._irq_likely = False
        self._ids = itertools.count(1)
        self._closed = False
        #: (errno, message) once the connection failed; every later call raises it.
        self._broken: tuple[int, str] | None = None
        #: (msg_id, time sent) of the liveness probe the server has not answered yet.
        self._probe: tuple[int, float] | None = None
        #: End of the set-up (connect timeout); None once set up.
        self._open_deadline: float | None = time.monotonic() + self.connect_timeout
        self._buffers: dict[int, VfioUserBuffer] = {}
        self._buf_starts: list[int] = []
        self._buf_lock = threading.Lock()
        self._maps: dict[int, mmap.mmap] = {}
        self._bar_sizes: dict[int, int] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Used with the exchange lock held: readiness waits with a deadline.
        self._readable = select.poll()
        self._readable.register(self.sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self.sock, select.POLLOUT)
        try:
            self._connect()
            self._setup()
            # The kernel bounds blocking receives by the reply timeout too (see _recv_reply).
            whole, frac = divmod(self.timeout, 1.0)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 struct.pack("ll", int(whole), int(frac * 1e6)))
        except (ValueError, struct.error) as exc:   # a reply too short or malformed to decode
            self.close()
            raise OSError(errno.EPROTO, f"vfio-user server at {path} sent a malformed reply "
                          f"during set-up: {exc}") from None
        except BaseException:
            self.close()
            raise
        finally:
            self._open_deadline = None

    # --- set-up --------------------------------------------------------------------------------
    def _connect(self) -> None:
        deadline = self._open_deadline
        assert deadline is not None  # the set-up in __init__ sets it
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            self.sock.connect(self.path)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, f"vfio-user server at {self.path} did not accept the "
                          f"connection within the {self.connect_timeout:g} s connect "
                          "timeout") from None
        except BlockingIOError:   # AF_UNIX: the listen queue is full, nothing to wait for
            raise OSError(errno.EAGAIN, f"cannot connect to the vfio-user server at {self.path}: "
                          "its queue of pending connections is full (the server is stopped "
                          "or not accepting)") from None
        except OSError as exc:
            raise OSError(exc.errno, f"cannot connect to a vfio-user server at {self.path}: "
                          f"{exc.strerror or exc}") from None
        finally:
            self.sock.settimeout(None)   # blocking fd; every call below says MSG_DONTWAIT

    def _setup(self) -> None:
        caps = {"max_msg_fds": P.MAX_FDS_ACCEPTED,
                "max_data_xfer_size": P.DEFAULT_MAX_DATA_XFER_SIZE,
                "pgsizes": P.DEFAULT_PGSIZE, "max_dma_maps": P.DEFAULT_MAX_DMA_MAPS}
        try:
            reply = self._call(P.VERSION, P.encode_version(P.VERSION_MAJOR, P.VERSION_MINOR, caps))
        except P.RemoteError as exc:
            if exc.errno == errno.EBUSY:
                raise OSError(errno.EBUSY, f"vfio-user server at {self.path} is busy with another "
                              "client") from None
            raise
        try:
            major, minor, scaps = P.decode_version(reply.payload)
            if major != P.VERSION_MAJOR or minor > P.VERSION_MINOR:
                raise ValueError(f"it answered version {major}.{minor} to 0.{P.VERSION_MINOR}")
            self.max_fds = max(1, int(scaps.get("max_msg_fds", P.DEFAULT_MAX_MSG_FDS)))
            self.max_xfer = int(scaps.get("max_data_xfer_size", P.DEFAULT_MAX_DATA_XFER_SIZE))
            if not 0 < self.max_xfer <= P.DEFAULT_MAX_DATA_XFER_SIZE:
                raise ValueError(f"max_data_xfer_size {self.max_xfer} is out of range")
        except (ValueError, TypeError) as exc:
            raise OSError(errno.EPROTO, f"vfio-user server at {self.path} sent a bad VERSION "
                          f"reply: {exc}") from None
        self.version = (major, minor)

        info = self._call(P.DEVICE_GET_INFO, bytes(uapi.vfio_device_info(16, 0, 0, 0, 0))[:16])
        flags, self.num_regions, self.num_irqs = struct.unpack_from("<III", info.payload, 4)
        self.device_flags = flags
        if (not flags & uapi.VFIO_DEVICE_FLAGS_PCI
                or self.num_regions <= uapi.VFIO_PCI_CONFIG_REGION_INDEX):
            raise OSError(errno.ENODEV, f"vfio-user server at {self.path} serves a device that is "
                          "not a PCI function")
        self.regions: dict[int, uapi.vfio_region_info] = {}
        for index in range(self.num_regions):
            self.regions[index] = self._region_info(index)
        #: Sizes of the BARs, for the range check of every register access.
        self._bar_sizes = {i: info.size for i, info in self.regions.items()
                           if i <= uapi.VFIO_PCI_BAR5_REGION_INDEX and info.size}
        vendor, device = self._identity()
        if (vendor, device) != self.pci_id:
            raise OSError(errno.ENODEV, f"vfio-user server at {self.path} serves a "
                          f"{vendor:04x}:{device:04x} device, not a Hermes device "
                          f"({self.pci_id[0]:04x}:{self.pci_id[1]:04x})")

        irq = uapi.vfio_irq_info.decode(self._call(
            P.DEVICE_GET_IRQ_INFO,
            bytes(uapi.vfio_irq_info(16, 0, uapi.VFIO_PCI_MSIX_IRQ_INDEX, 0))).payload)
        self.num_vectors = irq.count
        self._open_eventfds(self.num_vectors)
        # Per vector: a poller for plain waits and one that also wakes on the server's messages
        # (always needed when the server may send DMA_READ/WRITE; else only while a probe is out).
        # Without that, an idle waiter would wake on every reply another thread is receiving.
        quiet = select.POLLIN | select.POLLRDHUP if not self.dma_fds else select.POLLRDHUP
        self._pollers = [self._poller(fd, quiet) for fd in self._eventfds]
        self._probe_pollers = [self._poller(fd, select.POLLIN | select.POLLRDHUP)
                               for fd in self._eventfds]
        flags = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
        for start in range(0, self.num_vectors, self.max_fds):
            fds = self._eventfds[start:start + self.max_fds]
            hdr = uapi.vfio_irq_set(20, flags, uapi.VFIO_PCI_MSIX_IRQ_INDEX, start, len(fds))
            self._call(P.DEVICE_SET_IRQS, bytes(hdr), fds)
        self._enable()

    def _poller(self, eventfd: int, sock_events: int) -> select.poll:
        poller = select.poll()
        poller.register(eventfd, select.POLLIN)
        poller.register(self.sock, sock_events)
        return poller

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
            # Only a fully mappable region is mapped; partial ones stay on messages.
            if fd is not None and mappable_areas(info, reply.payload) == [(0, info.size)]:
                self._maps[index] = map_region(fd, info.offset, info.size)
        finally:
            if fd is not None:
                os.close(fd)
        return info

    # --- failure and deadlines --------------------------------------------------------------------
    def _limit(self) -> str:
        """The timeout that bounds the current exchange, for messages."""
        if self._open_deadline is not None:
            return f"the {self.connect_timeout:g} s connect timeout"
        return f"the {self.timeout:g} s reply timeout"

    def _deadline(self) -> float:
        """When the exchange starting now must be done: during the set-up, the end of the connect
        timeout; afterwards the reply timeout from now, but no later than the reply timeout
        after an unanswered probe."""
        if self._open_deadline is not None:
            return self._open_deadline
        deadline = time.monotonic() + self.timeout
        probe = self._probe
        if probe is not None:
            deadline = min(deadline, probe[1] + self.timeout)
        return deadline

    def _unusable(self) -> OSError:
        if self._broken is not None:
            return OSError(*self._broken)
        return OSError(errno.ENOTCONN, f"vfio-user transport to {self.path} is closed")

    def _fail(self, err: int, text: str) -> OSError:
        """Mark the connection unusable (the first cause is kept) and return its error. The socket
        is shut down at once, so the server sees this client leave and waiters here wake up."""
        if self._broken is None:
            self._broken = (err, text)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return OSError(*self._broken)

    def _lost(self, exc: BaseException, op: str) -> OSError:
        """The error for an exchange ``op`` that failed with ``exc`` (the connection is dropped)."""
        if self._broken is not None or self._closed:
            return self._unusable()
        if isinstance(exc, TimeoutError):
            return self._fail(errno.ETIMEDOUT, f"vfio-user server at {self.path} did not answer "
                              f"{op} within {exc}; the connection is dropped")
        if isinstance(exc, P.ProtocolError):
            return self._fail(errno.EPROTO, f"vfio-user server at {self.path} broke the protocol "
                              f"during {op}: {exc}")
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return self._fail(errno.ENOTCONN, f"vfio-user server at {self.path} went away during "
                          f"{op} ({why})")

    def _begin(self, op: str, deadline: bool = True) -> float:
        """Take the exchange lock for ``op`` (a holder stuck on a dead server gives it up by its
        own deadline); returns this exchange's deadline (0 unless ``deadline``: an exchange that
        may not wait), with the lock held."""
        if not self._lock.acquire(False):
            if not self._lock.acquire(timeout=max(0.0, self._deadline() - time.monotonic())):
                raise self._lost(TimeoutError(self._limit()), op)
        self._kept = None   # a message goes to the server: what was read before may change
        if self._broken is not None or self._closed:
            self._lock.release()
            raise self._unusable()
        return self._deadline() if deadline else 0.0

    # --- framed I/O with deadlines (exchange lock held) -------------------------------------------
    def _wait(self, poller: select.poll, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError(self._limit())

    def _send(self, data: bytes, deadline: float, fds: list[int] | tuple = ()) -> None:
        """Send all of ``data`` (``fds`` ride with its first byte) by ``deadline``."""
        if not fds:
            try:
                sent = self.sock.send(data, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return   # the usual case: all of it at once
            data = data[sent:]
        view = memoryview(data)
        anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
               if fds else None)
        sent = 0
        while sent < len(view):
            try:
                if anc is not None:
                    sent = self.sock.sendmsg([view], anc, _DONTWAIT)
                    anc = None
                else:
                    sent += self.sock.send(view[sent:], _DONTWAIT)
            except BlockingIOError:
                self._wait(self._writable, deadline)

    def _recv_exact(self, n: int, deadline: float, ready: bool = False) -> bytearray:
        """Exactly ``n`` bytes by ``deadline`` (``ready``: data is expected to be there already)."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            if not ready:
                self._wait(self._readable, deadline)
            ready = False
            try:
                k = self.sock.recv_into(view[got:], n - got, _DONTWAIT)
            except BlockingIOError:
                continue
            if not k:
                raise ConnectionResetError(errno.ECONNRESET, "the connection was closed")
            got += k
        return buf

    def _recv_reply(self, n: int, deadline: float) -> bytes:
        """The first ``n`` bytes of the reply to a request just sent. When the deadline is the
        whole reply timeout from now, one blocking receive bounded by SO_RCVTIMEO (which is that
        timeout) saves the poll of ``_recv_exact`` on the register hot path."""
        if self._probe is not None or self._open_deadline is not None:
            return bytes(self._recv_exact(n, deadline))
        data = P.recv_spinning(self.sock, n, self.reply_spin) if self.reply_spin else None
        if data is None:
            try:
                data = self.sock.recv(n, _WAITALL)
            except BlockingIOError:   # SO_RCVTIMEO expired with nothing received
                raise TimeoutError(self._limit()) from None
        if len(data) == n:
            return data
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "the connection was closed")
        return data + self._recv_exact(n - len(data), deadline)

    def _recv_rest(self, n: int, deadline: float) -> bytes:
        """``n`` bytes of a message whose header has arrived (normally all there already)."""
        try:
            data = self.sock.recv(n, _DONTWAIT)
        except BlockingIOError:
            data = b""
        else:
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "the connection was closed")
        return data if len(data) == n else data + self._recv_exact(n - len(data), deadline)

    def _recv_message(self, deadline: float, with_fds: bool) -> P.Message:
        """One whole message by ``deadline``. Only replies that carry fds need recvmsg."""
        fds: list[int] = []
        head = b""
        if with_fds:
            while True:
                self._wait(self._readable, deadline)
                try:
                    head, fds, _, _ = socket.recv_fds(self.sock, P.HEADER_SIZE, P.MAX_FDS_ACCEPTED)
                    break
                except BlockingIOError:
                    continue
            if not head:
                raise ConnectionResetError(errno.ECONNRESET, "the connection was closed")
        else:
            head = b""
        try:
            if len(head) < P.HEADER_SIZE:
                head += self._recv_exact(P.HEADER_SIZE - len(head), deadline)
            msg_id, cmd, size, flags, err = _HEADER.unpack(head)
            return self._recv_body(msg_id, cmd, size, flags, err, fds, deadline)
        except BaseException:
            P.Message(0, 0, fds=fds).close_fds()
            raise

    def _recv_body(self, msg_id: int, cmd: int, size: int, flags: int, err: int,
                   fds: list[int], deadline: float) -> P.Message:
        if not P.HEADER_SIZE <= size <= P.MAX_MESSAGE_SIZE:
            raise P.ProtocolError(f"a message of {size} bytes")
        body = (self._recv_exact(size - P.HEADER_SIZE, deadline, True) if size > P.HEADER_SIZE
                else b"")
        return P.Message(msg_id, cmd, flags, err, bytes(body), fds)

    def _other(self, msg: P.Message, deadline: float) -> None:
        """A message that is not the awaited reply: serve a server command; drop a reply (the
        probe's, which proves the server alive, or one to an exchange that gave up)."""
        if not msg.is_reply:
            self._serve(msg, deadline)
            return
        msg.close_fds()
        probe = self._probe
        if probe is not None and msg.msg_id == probe[0] and msg.cmd == P.REGION_READ:
            self._probe = None

    # --- messaging -----------------------------------------------------------------------------
    def _call(self, cmd: int, payload: bytes = b"", fds: list[int] | tuple = ()) -> P.Message:
        """Send a command and wait for its reply (fds included), serving the server's meanwhile."""
        op = P.COMMAND_NAMES.get(cmd, f"command {cmd}")
        deadline = self._begin(op)
        try:
            msg_id = next(self._ids) & 0xFFFF
            data = P.Message(msg_id, cmd, P.TYPE_COMMAND, 0, payload).encode()
            if fds:   # fds go with the first byte of their own message
                self._flush_locked(deadline)
            elif self._posted:
                self._posted.append(data)
                data = b"".join(self._posted)
                self._posted.clear()
            self._send(data, deadline, fds)
            while True:
                reply = self._recv_message(deadline, True)
                if reply.is_reply and reply.msg_id == msg_id and reply.cmd == cmd:
                    break
                self._other(reply, deadline)
        except (OSError, P.ProtocolError) as exc:
            raise self._lost(exc, op) from None
        finally:
            self._lock.release()
        if reply.is_error:
            reply.close_fds()
            raise self._remote_error(cmd, reply.error_no)
        return reply

    @staticmethod
    def _remote_error(cmd: int, err: int) -> OSError:
        err = err or errno.EIO
        return P.RemoteError(err, f"vfio-user {P.COMMAND_NAMES.get(cmd, cmd)} failed: "
                                  f"{os.strerror(err)}")

    def _region_read_fast(self, region: int, offset: int, count: int) -> bytes:
        """One REGION_READ exchange (the register hot path: the expected reply is not parsed)."""
        deadline = self._begin("REGION_READ")
        try:
            msg_id = next(self._ids) & 0xFFFF
            msg = _MESSAGE.pack(msg_id, P.REGION_READ, 32, 0, 0, offset, region, count)
            if self._posted:   # posted writes go first, in the same system call
                self._posted.append(msg)
                msg = b"".join(self._posted)
                self._posted.clear()
            self._send(msg, deadline)
            reply = self._await_read(msg_id, count, deadline)
        except (OSError, P.ProtocolError) as exc:
            raise self._lost(exc, "REGION_READ") from None
        finally:
            self._lock.release()
        return reply if type(reply) is bytes else self._read_data(reply, count)

    def _region_reads(self, region: int, reads: Sequence[tuple[int, int]],
                      keep: bool = False) -> list[bytes]:
        """Several REGION_READs sent in one system call (after any posted writes), then their
        replies received in turn: one wait for the server instead of one per read. ``keep``:
        the data of plain replies becomes ``_kept`` for this thread (see ``execute``)."""
        deadline = self._begin("REGION_READ")
        try:
            ids = []
            msgs = self._posted
            counter = self._ids
            for offset, count in reads:
                msg_id = next(counter) & 0xFFFF
                ids.append(msg_id)
                msgs.append(_MESSAGE.pack(msg_id, P.REGION_READ, 32, 0, 0, offset, region, count))
            data = b"".join(msgs)
            msgs.clear()
            self._send(data, deadline)
            plain = self._plain_replies(ids, reads)
            if len(plain) == len(reads):
                if keep and int.from_bytes(plain[0], "little") == _DONE_STATE:
                    # Kept only for a completed command (``execute``): the first read is its
                    # state.
                    self._kept = (threading.get_ident(), dict(zip(reads, plain, strict=True)))
                return plain
            replies: list[bytes | P.Message] = [*plain]
            replies += [self._await_read(msg_id, count, deadline)
                        for msg_id, (_, count) in zip(ids[len(replies):], reads[len(replies):],
                                                      strict=True)]
            if (keep and all(type(reply) is bytes for reply in replies)
                    and int.from_bytes(replies[0], "little") == _DONE_STATE):   # type: ignore[arg-type]
                self._kept = (threading.get_ident(),
                              dict(zip(reads, replies, strict=True)))  # type: ignore[arg-type]
        except (OSError, P.ProtocolError) as exc:
            raise self._lost(exc, "REGION_READ") from None
        finally:
            self._lock.release()
        return [reply if type(reply) is bytes else self._read_data(reply, count)
                for reply, (_, count) in zip(replies, reads, strict=True)]

    def _plain_replies(self, ids: list[int], reads: Sequence[tuple[int, int]]) -> list[bytes]:
        """The data of the plain successful replies to REGION_READs ``ids`` that have arrived,
        in order, taken in two system calls: a look at what is there (waiting, bounded by
        SO_RCVTIMEO, for its first byte), then a receive of exactly those replies. It stops at
        the first reply not there whole, or anything else, which stays unread for
        ``_await_read``. Nothing when a probe is out or during the set-up (their own waits)."""
        if self._probe is not None or self._open_deadline is not None:
            return []
        want = 0
        for _, count in reads:
            want += 32 + count
        seen = (P.recv_spinning(self.sock, want, self.reply_spin, _PEEK) if self.reply_spin
                else None)
        if seen is None:
            try:
                seen = self.sock.recv(want, _PEEK)
            except BlockingIOError:   # SO_RCVTIMEO expired with nothing received
                raise TimeoutError(self._limit()) from None
        if not seen:
            raise ConnectionResetError(errno.ECONNRESET, "the connection was closed")
        out = []
        pos = 0
        for msg_id, (_, count) in zip(ids, reads, strict=True):
            end = pos + 32 + count
            if end > len(seen):
                break
            rid, rcmd, size, flags, _ = _HEADER.unpack_from(seen, pos)
            if (rid != msg_id or rcmd != P.REGION_READ or flags != P.TYPE_REPLY
                    or size != 32 + count):
                break
            out.append(seen[pos + 32:end])
            pos = end
        if not pos:
            return []
        # Those bytes are all there (they were just seen): receive them, as seen.
        if len(self.sock.recv(pos, _DONTWAIT)) != pos:
            raise P.ProtocolError("the received bytes changed between a look and their receive")
        return out

    def _await_read(self, msg_id: int, count: int, deadline: float) -> bytes | P.Message:
        """The reply to REGION_READ ``msg_id`` of ``count`` bytes (lock held): the data of a plain
        success without parsing it, else the whole reply; what arrives before it is handled."""
        while True:
            rid, rcmd, size, flags, err = _HEADER.unpack(self._recv_reply(16, deadline))
            if (rid == msg_id and rcmd == P.REGION_READ
                    and flags & P.FLAG_TYPE_MASK == P.TYPE_REPLY):
                if flags == P.TYPE_REPLY and size == 32 + count:
                    return self._recv_rest(16 + count, deadline)[16:]
                return self._recv_body(rid, rcmd, size, flags, err, [], deadline)
            # Anything else (a server command, the probe's reply) first.
            self._other(self._recv_body(rid, rcmd, size, flags, err, [], deadline), deadline)

    def _read_data(self, reply: bytes | P.Message, count: int) -> bytes:
        """The ``count`` bytes a REGION_READ reply carries (an error reply raises its error)."""
        if isinstance(reply, bytes):
            return reply
        if reply.is_error:
            raise self._remote_error(P.REGION_READ, reply.error_no)
        data = reply.payload[_ACCESS.size:]
        if len(data) != count:
            raise self._fail(errno.EPROTO, f"vfio-user server at {self.path} returned {len(data)} "
                             f"bytes to a REGION_READ of {count}")
        return data

    def _region_write_posted(self, region: int, offset: int, data: bytes) -> None:
        """REGION_WRITE with NO_REPLY: a posted write, as PCI memory writes are.

        Posted writes are queued and sent together with the next message, before any wait for
        an interrupt, or when POSTED_BATCH of them are queued; the server handles messages in
        order, so every later read or interrupt wait sees them done. The access was
        range-checked here since no error can come back.
        """
        self._begin("REGION_WRITE", False)
        try:
            n = len(data)
            posted = self._posted
            posted.append(_MESSAGE.pack(next(self._ids) & 0xFFFF, P.REGION_WRITE, 32 + n,
                                        P.FLAG_NO_REPLY, 0, offset, region, n) + data)
            if len(posted) >= POSTED_BATCH or n > 4096:
                self._flush_locked(self._deadline())
        except OSError as exc:
            raise self._lost(exc, "REGION_WRITE") from None
        finally:
            self._lock.release()

    def _flush_locked(self, deadline: float) -> None:
        """Send queued posted writes (lock held)."""
        if self._posted:
            data = b"".join(self._posted)
            self._posted.clear()
            self._send(data, deadline)

    def flush(self) -> None:
        """Send queued posted writes now."""
        deadline = self._begin("REGION_WRITE")
        try:
            self._flush_locked(deadline)
        except OSError as exc:
            raise self._lost(exc, "REGION_WRITE") from None
        finally:
            self._lock.release()

    def _serve(self, msg: P.Message, deadline: float) -> None:
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
            self._send(reply.encode(), deadline)

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
        """Receive whatever the server sent (used by irq_wait): serve its commands, note the
        probe's reply. Failures mark the connection broken for the waiter to report."""
        if not self._lock.acquire(timeout=0.05):
            return   # another thread is mid-exchange and receives them
        try:
            if self._broken is not None or self._closed:
                return
            deadline = self._deadline()
            while self._readable.poll(0):
                self._other(self._recv_message(deadline, False), deadline)
        except (OSError, P.ProtocolError) as exc:
            self._lost(exc, "an interrupt wait")
        finally:
            self._lock.release()

    def _send_probe(self) -> None:
        """Ask the server whether it still answers: a config-space read whose reply any receiver
        notes. Skipped while another thread is mid-exchange (that exchange has its own deadline)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._broken is not None or self._closed or self._probe is not None:
                return
            self._kept = None
            msg_id = next(self._ids) & 0xFFFF
            self._probe = (msg_id, time.monotonic())
            self._send(_MESSAGE.pack(msg_id, P.REGION_READ, 32, 0, 0, 0,
                                     uapi.VFIO_PCI_CONFIG_REGION_INDEX, 2), self._deadline())
        except OSError as exc:
            self._lost(exc, "a liveness probe")
        finally:
            self._lock.release()

    def _region_read(self, region: int, offset: int, count: int) -> bytes:
        out: list[bytes] = []
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
        if self._kept is not None and bar == 0:
            got = self._take_kept(((offset, size),))
            if got is not None:
                return int.from_bytes(got[0], "little")
        if not (size in _SIZES and 0 <= offset <= self._bar_sizes.get(bar, 0) - size):
            self._check(bar, offset, size)
        return int.from_bytes(self._region_read_fast(bar, offset, size), "little")

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        """One ``size``-byte write of BAR ``bar``."""
        mm = self._maps.get(bar)
        if mm is not None:
            mmio.store(mm, offset, size, value)
            return
        if not (size in _SIZES and 0 <= offset <= self._bar_sizes.get(bar, 0) - size):
            self._check(bar, offset, size)   # raises the error the access deserves
        raw = (value & _MASKS[size]).to_bytes(size, "little")
        self._region_write_posted(bar, offset, raw)

    def _bar_size(self, bar: int) -> int:
        info = self.regions.get(bar)
        return info.size if info is not None else 0

    def _config_bytes(self, offset: int, size: int) -> bytes:
        return self._region_read(uapi.VFIO_PCI_CONFIG_REGION_INDEX, offset, size)

    def _config_put(self, offset: int, data: bytes) -> None:
        self._region_write(uapi.VFIO_PCI_CONFIG_REGION_INDEX, offset, data)

    def read_block(self, bar: int, offset: int, length: int) -> bytes:
        """``length`` bytes of a BAR in one message (the server splits into 4-byte accesses)."""
        mm = self._maps.get(bar)
        if mm is not None:
            return bytes(mm[offset:offset + length])
        return self._region_read(bar, offset, length)

    def read_many(self, bar: int, reads: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several reads of a BAR (see ``Transport.read_many``): the REGION_READs that ``read`` and
        ``read_block`` send, sent together."""
        mm = self._maps.get(bar)
        if mm is not None:
            return [bytes(mm[offset:offset + length]) for offset, length in reads]
        kept = self._kept
        if kept is not None and bar == 0:
            got = self._take_kept(reads)
            if got is not None:
                return got
        limit = self.max_xfer
        for offset, length in reads:
            if not 0 < length <= limit:
                return super().read_many(bar, reads)
            if length in _SIZES and not 0 <= offset <= self._bar_sizes.get(bar, 0) - length:
                self._check(bar, offset, length)
        if (kept is not None and kept[0] == threading.get_ident() and bar == 0
                and reads and reads[0] in kept[1]):
            # The host reads more after a start than was sent with it: send all of it next time.
            self._after_start[reads[0][0]] = list(reads)
        return self._region_reads(bar, reads)

    def _take_kept(self, reads: Sequence[tuple[int, int]]) -> list[bytes] | None:
        """The kept data of ``reads`` when this thread's ``execute`` read all of them (they are
        dropped then: each is served once), else None."""
        kept = self._kept
        if kept is None or kept[0] != threading.get_ident():
            return None
        try:
            got = [*map(kept[1].__getitem__, reads)]
        except (KeyError, TypeError):
            return None
        self._kept = None
        return got

    def execute(self, ctrl: int, engine: int, started: Callable[[int], None],
                timeout: float | None = None) -> bool:
        """Start engine ``engine``'s command for a host that waits for it: the posted request
        writes, the EXEC write and reads of the engine's state and response (and of whatever
        else the host read after its last start there, a run context's OUT fields) go in one
        system call, ``started(engine)`` being called before it. ``hermes serve`` runs a short
        Run Program to completion before it answers the reads (specs/vfio-user.md), so True
        when the state read shows the command completed; then the data read is kept for this
        thread's next ``read``/``read_many`` of it, which sends nothing, until any message goes
        to the server: the registers of an engine whose command has completed change only
        through the host's messages. False (the command runs on): nothing is kept. ``timeout``
        changes nothing here: the server runs only short commands inside the start."""
        if 0 in self._maps:
            return super().execute(ctrl, engine, started, timeout)
        if not 0 <= ctrl < self._bar_sizes.get(0, 0):
            self._check(0, ctrl, 1)   # raises the error the access deserves
        self._region_write_posted(0, ctrl, _EXEC)
        started(engine)
        reads = self._after_start.get(ctrl)
        if reads is None:
            reads = self._after_start[ctrl] = [(ctrl, 2), (regs.cmdres(engine),
                                                           regs.EHCMDRES_LEN)]
        got = self._region_reads(0, reads, keep=True)
        done = int.from_bytes(got[0], "little") == _DONE_STATE
        # The server raises the interrupt of a command it completed before it answers the
        # reads: the interrupt wait that follows can take it without asking first.
        self._irq_likely = done
        return done

    def write_block(self, bar: int, offset: int, data: bytes) -> None:
        """Write ``data`` to a BAR in one message (the server splits into 4-byte accesses)."""
        mm = self._maps.get(bar)
        if mm is not None:
            mm[offset:offset + len(data)] = data
            return
        data = bytes(data)
        n = len(data)
        if 0 < n <= self.max_xfer and 0 <= offset <= self._bar_sizes.get(bar, 0) - n:
            self._region_write_posted(bar, offset, data)   # the usual case: one message
            return
        self._check(bar, offset, 1)
        self._check(bar, offset + n - 1 if data else offset, 1)
        for pos in range(0, n, self.max_xfer):
            self._region_write_posted(bar, offset + pos, data[pos:pos + self.max_xfer])

    def map_bar(self, bar: int) -> memoryview | None:
        """BAR4 is mapped (shared memfd); BAR0/BAR2 are trapped, so None for them."""
        mm = self._maps.get(bar)
        return memoryview(mm) if mm is not None else None

    def dma_alloc(self, size: int) -> DmaBuffer:
        """A memfd-backed buffer registered with DMA_MAP at a bus address chosen here."""
        bus, mapped = self._bus_range(size)
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
            if not self._closed and self._broken is None:
                self._call(P.DMA_UNMAP, bytes(uapi.vfio_iommu_type1_dma_unmap(24, 0, buf.bus_addr,
                                                                             buf.mapped)))
        finally:
            with self._buf_lock:
                self._remove(buf)

    def irq_wait(self, vector: int, timeout: float | None) -> bool:
        """Wait for and consume one interrupt of ``vector`` (semaphore eventfd, as the in-process
        transport counts them); serves server DMA requests while waiting.

        While it waits, the server is probed every PROBE_INTERVAL: a probe unanswered for the
        reply timeout fails the wait with ETIMEDOUT (also past ``timeout``, so that a stopped
        server is reported as such rather than as a slow command); a closed connection fails it
        with ENOTCONN.
        """
        if self._closed:
            raise self._unusable()
        fd = self._eventfd(vector)
        if self._posted:
            self.flush()   # the interrupt may be the answer to a queued write
        if self._irq_likely:
            self._irq_likely = False
            if take_one(fd):
                return True
        elif self._pending_polls[vector].poll(0) and take_one(fd):
            return True
        if self._broken is not None or self._closed:
            raise self._unusable()
        if timeout is not None and timeout <= 0:
            return False
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        next_probe = now + PROBE_INTERVAL
        while True:
            if self._probe is None and now >= next_probe and (deadline is None or now < deadline):
                self._send_probe()
            probe = self._probe
            if probe is not None:
                wake, poller = probe[1] + self.timeout, self._probe_pollers[vector]
            else:
                wake, poller = next_probe, self._pollers[vector]
            if deadline is not None:
                wake = min(wake, deadline)
            for efd, ev in poller.poll(max(0.0, wake - time.monotonic()) * 1000):
                if efd == fd:
                    if take_one(fd):
                        return True
                elif ev & select.POLLIN:
                    self._pump()
                elif ev & _HANGUP:
                    self._lost(ConnectionResetError(errno.ECONNRESET, "the connection was closed"),
                               "an interrupt wait")
            if self._broken is not None or self._closed:
                raise self._unusable()
            now = time.monotonic()
            if probe is not None and self._probe is None:
                next_probe = now + PROBE_INTERVAL
            elif probe is not None and now >= probe[1] + self.timeout:
                raise self._lost(TimeoutError(self._limit()), "a liveness probe during an "
                                 "interrupt wait")
            if deadline is not None and now >= deadline and self._probe is None:
                return False

    def reset(self) -> None:
        """DEVICE_RESET: the device frees every slot and stops DMA (mappings stay)."""
        self._call(P.DEVICE_RESET)

    def close(self) -> None:
        """Disconnect (the server unmaps our memory and resets the device) and free everything.

        Quick and safe in every state: queued posted writes are sent only to a connection that
        has not failed, and only within the reply timeout."""
        locked = self._lock.acquire(timeout=self.timeout)
        try:
            if not self._closed and self._broken is None and self._posted:
                try:
                    self._flush_locked(self._deadline())
                except OSError:
                    pass
            self._closed = True
            try:
                self.sock.close()
            except OSError:
                pass
        finally:
            if locked:
                self._lock.release()
        with self._buf_lock:
            bufs = list(self._buffers.values())
            self._buffers.clear()
            self._buf_starts.clear()
        for buf in bufs:
            if buf._view is not None:
                buf._view.release()
                buf._view = None
                close_mapping(buf._mm)
        self._release(list(self._maps.values()))
        self._maps.clear()

    def __repr__(self) -> str:
        return f"VfioUserTransport({self.path!r})"

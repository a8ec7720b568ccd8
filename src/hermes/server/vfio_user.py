"""vfio-user server: one HermesDevice served over a UNIX stream socket to one client at a time.

BAR0 and BAR2 are trapped (every access is a REGION_READ/WRITE message); BAR4 lives in a memfd the
client mmaps; DMA goes through memfds the client registers with DMA_MAP (a memory copy here) or,
for mappings without an fd, through DMA_READ/DMA_WRITE messages to the client; interrupts are
eventfd writes. Malformed input gets an error reply and never stops the server; every wait on a
peer is bounded and ends when the server is asked to stop. A client arriving while another holds
the device gets EBUSY. Only the server's user, root (or a chosen group) may connect.
"""
from __future__ import annotations

import array
import ctypes
import errno
import itertools
import mmap
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from .. import regs
from ..device import DmaFault
from ..device.nvme import NvmeController
from ..errors import DeviceError
from ..vfio import protocol as P, uapi
from .function import CallbackBackend, MmapBackend, VfioFunction, vfio_error

#: Receive timeout of a client's socket: how often an idle connection checks for a stop request.
IDLE_TICK = 0.2
#: Seconds a device thread waits for the client to answer a DMA_READ/DMA_WRITE.
DMA_REPLY_TIMEOUT = 10.0
#: Seconds the server waits at shutdown for the device's running programs.
CLOSE_TIMEOUT = 2.0
#: Most fds the server accepts per message (advertised as max_msg_fds): QEMU's client refuses a
#: server that advertises more than 16 (its VFIO_USER_MAX_MAX_FDS), and 16 is plenty here (the
#: clients send MSI-X eventfds in chunks of this size).
SERVER_MAX_MSG_FDS = 16
#: Seconds a connection that arrives while another client holds the device waits for it to go
#: (a client that just closed is still being cleaned up) before it is answered EBUSY.
BUSY_GRACE = 2.0
#: Connections handled at once (one owns the device, the others are answered EBUSY or wait for
#: their first message); more are closed at once so that a connection flood costs no threads.
MAX_CONNECTIONS = 8
#: Mode of the socket file: owner only, or owner and group with ``socket_group``.
SOCKET_MODE = 0o600
SOCKET_MODE_GROUP = 0o660
#: getsockopt(SO_PEERGROUPS) (Linux >= 4.13): the connecting process's supplementary groups.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid


#: Seconds a connection polls its socket for the client's next message before it sleeps: a
#: driver's next access usually follows a reply within tens of microseconds, and a thread put to
#: sleep in between costs as much again to wake (more on a virtual machine whose vCPU idles). It
#: costs that much CPU after the last message of a burst, never while the client is quiet.
RECEIVE_SPIN = 100e-6
#: Longest BAR0 block access the register fast path serves (a request, a run context, a response).
_BLOCK_MAX = 4096
_MESSAGE = P.REGION_MESSAGE
#: Size of a REGION_READ/WRITE message without data (the header and the fixed part).
_ACCESS_SIZE = P.REGION_MESSAGE.size
#: Widths of a plain register access.
_WORDS = frozenset((1, 2, 4, 8))


class _ClientGone(Exception):
    """The client closed or broke the socket; the connection ends."""


class _Reply:
    """A server-to-client DMA request waiting for its reply (``msg`` None: the client left)."""

    __slots__ = ("done", "msg")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.msg: P.Message | None = None


class Connection:
    """One client connection: message dispatch, server-to-client DMA requests, cleanup."""

    def __init__(self, server: Server, sock: socket.socket, number: int):
        self.server = server
        self.fn: VfioFunction | None = None        # the device, once this connection holds it
        self.sock = sock
        self.number = number
        self.negotiated = False
        self.client_max_xfer = P.DEFAULT_MAX_DATA_XFER_SIZE
        self.client_max_fds = P.DEFAULT_MAX_MSG_FDS
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Reply] = {}      # msg_id -> the request waiting for it
        self._waiters_lock = threading.Lock()
        self._backlog: list[P.Message] = []        # commands received while pumping
        #: Replies of the register fast path not sent yet: the replies to one burst of requests
        #: go out in one system call, once no further request is buffered (connection thread).
        self._pending: list[bytes] = []
        self._rx = P.Receiver(sock, max_fds=SERVER_MAX_MSG_FDS,
                              stall_timeout=server.stall_timeout, stop=server.stop_requested,
                              spin=server.spin)
        self._thread: threading.Thread | None = None   # the thread running ``run``
        self.claimed = False                       # this connection holds the server's device
        self.closed = False
        self.stats = {"commands": 0, "errors": 0, "dma_messages": 0}

    # --- sending -------------------------------------------------------------------------------
    @property
    def _held(self) -> VfioFunction:
        """The device this connection holds (the handlers that use it run only then)."""
        assert self.fn is not None
        return self.fn

    def send(self, msg: P.Message) -> None:
        """Send ``msg`` (thread-safe); a dead socket ends the connection later, not here."""
        if self.server.verbose:
            self.server.log(f"client {self.number}: -> {P.describe(msg)}")
        self._send_bytes(msg.encode(), msg.fds)

    def _send_bytes(self, data: bytes, fds: list[int] | tuple = ()) -> None:
        """Send ``data`` (fds with its first byte). A client that stops reading gets
        ``stall_timeout`` seconds to make room, less if the server is asked to stop; then the
        connection is over (the socket's SO_SNDTIMEO of IDLE_TICK lets this loop look at both)."""
        deadline = None
        with self._send_lock:
            if not fds and not self.closed:
                try:
                    sent = self.sock.send(data)
                except (BlockingIOError, TimeoutError):
                    sent = 0
                except OSError:
                    self.closed = True
                    return
                if sent == len(data):
                    return   # the usual case: all of it at once
                data = data[sent:]
            view = memoryview(data)
            while view and not self.closed:
                try:
                    if fds:
                        rights = array.array("i", fds).tobytes()
                        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)]
                        n = self.sock.sendmsg([view], anc)
                        fds = ()
                    else:
                        n = self.sock.send(view)
                    view = view[n:]
                    deadline = None
                except (BlockingIOError, TimeoutError):
                    now = time.monotonic()
                    deadline = deadline or now + self.server.stall_timeout
                    if now > deadline or self.server.stop_requested():
                        why = "stopping" if self.server.stop_requested() else \
                            f"the client read nothing for {self.server.stall_timeout:g} s"
                        self.server.log(f"client {self.number}: error: cannot send a reply "
                                        f"({why}); closing the connection")
                        self.closed = True
                except OSError:
                    self.closed = True

    # --- server-to-client DMA (mappings without an fd) -----------------------------------------
    def _remote(self, cmd: int, payload: bytes) -> P.Message:
        if self.closed:
            raise ConnectionError("client gone")
        msg_id = next(self._ids) & 0xFFFF
        slot = _Reply()
        with self._waiters_lock:
            self._waiters[msg_id] = slot
        if self._pending and threading.current_thread() is self._thread:
            self._flush_pending()   # the client may be waiting for them
        try:
            self.stats["dma_messages"] += 1
            self.send(P.Message(msg_id, cmd, P.TYPE_COMMAND, 0, payload))
            if threading.current_thread() is self._thread:
                # The model runs DMA inside the register write, i.e. on this connection thread,
                # which is also the only reader of the socket: receive here until the reply
                # comes, keeping commands that arrive meanwhile for later (in order).
                deadline = time.monotonic() + DMA_REPLY_TIMEOUT
                while not slot.done.is_set():
                    if self.closed or self.server.stop_requested() or time.monotonic() > deadline:
                        raise ConnectionError("no DMA reply from the client")
                    try:
                        msg = self._recv_within(0.05)
                    except _ClientGone:
                        self.closed = True
                        raise ConnectionError("client gone") from None
                    if msg is None:
                        continue
                    if msg.is_reply:
                        self._deliver_reply(msg)
                    else:
                        self._backlog.append(msg)
            elif not slot.done.wait(DMA_REPLY_TIMEOUT):
                raise ConnectionError("no DMA reply from the client")
            if slot.msg is None:
                raise ConnectionError("client gone")
            return slot.msg
        finally:
            with self._waiters_lock:
                self._waiters.pop(msg_id, None)

    def dma_read(self, addr: int, n: int) -> bytes:
        """Read client memory with DMA_READ messages (each at most the client's transfer size)."""
        out = bytearray()
        try:
            while len(out) < n:
                count = min(n - len(out), self.client_max_xfer)
                a = addr + len(out)
                reply = self._remote(P.DMA_READ, P.encode_dma_access(a, count))
                if reply.is_error or len(reply.payload) != P.DMA_ACCESS.size + count:
                    raise DmaFault(a, count)
                out += reply.payload[P.DMA_ACCESS.size:]
        except ConnectionError:
            raise DmaFault(addr, n) from None
        return bytes(out)

    def dma_write(self, addr: int, data: bytes) -> None:
        """Write client memory with DMA_WRITE messages."""
        pos = 0
        try:
            while pos < len(data):
                chunk = data[pos:pos + self.client_max_xfer]
                access = P.encode_dma_access(addr + pos, len(chunk), chunk)
                reply = self._remote(P.DMA_WRITE, access)
                if reply.is_error:
                    raise DmaFault(addr + pos, len(chunk))
                pos += len(chunk)
        except ConnectionError:
            raise DmaFault(addr, len(data)) from None

    def _deliver_reply(self, msg: P.Message) -> None:
        with self._waiters_lock:
            slot = self._waiters.get(msg.msg_id)
        if slot is None or msg.cmd not in (P.DMA_READ, P.DMA_WRITE):
            self.server.log(f"client {self.number}: unexpected reply {P.describe(msg)}; ignored")
            msg.close_fds()
            return
        slot.msg = msg
        slot.done.set()

    def _fail_waiters(self) -> None:
        with self._waiters_lock:
            slots = list(self._waiters.values())
        for slot in slots:
            slot.done.set()

    # --- receiving -----------------------------------------------------------------------------
    def _wait(self) -> bool:
        """Receive until a whole message is buffered: True then; False when the client stayed
        idle for IDLE_TICK. Raises _ClientGone when the connection is over (a message too big
        to read is answered E2BIG first)."""
        try:
            if self._rx.wait():
                return True
        except BlockingIOError:
            return False   # idle tick (SO_RCVTIMEO): lets the loop notice a stop request
        except P.MessageTooBig as exc:
            # Nothing of it is read: the stream cannot be resynced, so the connection ends.
            self.server.log(f"client {self.number}: error: {exc}; closing the connection")
            self.stats["errors"] += 1
            if not exc.header.is_reply:
                self.send(P.error_reply(exc.header, errno.E2BIG))
            raise _ClientGone() from None
        except P.ProtocolError as exc:
            self.stats["errors"] += 1
            self.server.log(f"client {self.number}: error: {exc}; closing the connection")
            raise _ClientGone() from None
        except OSError as exc:
            raise _ClientGone(str(exc)) from None
        raise _ClientGone()

    def _recv(self) -> P.Message | None:
        """The next message; None when the client stayed idle for IDLE_TICK. Raises _ClientGone
        when the connection is over."""
        if not self._wait():
            return None
        msg = self._rx.recv()   # whole already: no wait
        assert msg is not None
        if self.server.verbose:
            self.server.log(f"client {self.number}: <- {P.describe(msg)}")
        return msg

    def _recv_within(self, timeout: float) -> P.Message | None:
        if not self._rx.buffered():
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return None
        return self._recv()

    def run(self) -> None:
        """Serve until the client disconnects or the server is asked to stop.

        The device is claimed when the first message arrives (which must come within the stall
        timeout); if another client holds it beyond BUSY_GRACE, that message is answered EBUSY
        and the connection closed."""
        self._thread = threading.current_thread()
        tick = struct.pack("ll", 0, int(IDLE_TICK * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tick)
        # A client that stops reading must not hang the server in a send.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tick)
        try:
            first = self._first_message()
            if first is None:
                return
            if not self.server.claim(self):
                self._refuse_busy(first)
                return
            self._backlog.append(first)
            rx = self._rx
            # --verbose logs every message, so it takes them all through the full path.
            in_place = not self.server.verbose
            while not self.server.stop_requested() and not self.closed:
                if self._backlog:
                    msg = self._backlog.pop(0)
                else:
                    if (in_place and self.negotiated and not rx.fd_reads
                            and self._serve_registers()):
                        continue   # commands received during a DMA to the client go first
                    if not rx.has_message():
                        if self._pending:
                            self._flush_pending()   # before waiting for the client
                        self._wait()
                        continue
                    got = self._recv()
                    if got is None:
                        continue
                    msg = got
                if self._pending:
                    self._flush_pending()   # in order with the replies of the full path
                if msg.is_reply:
                    self._deliver_reply(msg)
                else:
                    self.handle(msg)
            if self._pending:
                self._flush_pending()
        except _ClientGone:
            pass
        finally:
            self.closed = True
            self._fail_waiters()
            self._cleanup()

    def _first_message(self) -> P.Message | None:
        """The connection's first message, or None (logged) when none comes in time."""
        deadline = time.monotonic() + self.server.stall_timeout
        while not self.server.stop_requested():
            msg = self._recv()
            if msg is not None:
                return msg
            if time.monotonic() > deadline:
                self.stats["errors"] += 1
                self.server.log(f"client {self.number}: error: sent nothing for "
                                f"{self.server.stall_timeout:g} s; closing the connection")
                return None
        return None

    def _refuse_busy(self, msg: P.Message) -> None:
        msg.close_fds()
        self.stats["errors"] += 1
        self.server.log(f"client {self.number}: error: busy: another client holds the device; "
                        f"{msg.name} answered EBUSY and the connection closed")
        if not msg.is_reply and not msg.flags & P.FLAG_NO_REPLY:
            self.send(P.error_reply(msg, errno.EBUSY))

    def _serve_registers(self) -> bool:
        """Serve the plain register accesses at the head of the receive buffer in place: 1/2/4/8
        byte BAR0/BAR2 accesses and aligned BAR0 block accesses (the hot path of every driver
        command), straight from the received bytes to the device, no ``Message`` built. It
        stops at the first message that is not whole or not such an access (a reply, fds,
        other flags, a size or range the full path must judge): ``handle`` takes that one.
        Replies join ``_pending``. True when the device's work received messages meanwhile (a
        DMA to the client): the caller looks again before it parses anything."""
        rx = self._rx
        buf = rx.buf
        pos = rx.pos
        end = len(buf)
        if end - pos < _ACCESS_SIZE:
            return False
        fn = self._held
        dev = fn.device
        bars = fn.register_bars
        starts = fn.exec_bytes
        start = fn.start_inline
        pending = self._pending
        served = 0
        try:
            while end - pos >= _ACCESS_SIZE:
                msg_id, cmd, size, flags, _, offset, region, count = _MESSAGE.unpack_from(buf, pos)
                if flags & ~P.FLAG_NO_REPLY or size > end - pos:
                    return False
                limit = bars.get(region)
                if limit is None or offset + count > limit:
                    return False
                word = count in _WORDS and not offset % count and (region != regs.BAR_DMA
                                                                    or count == 4)
                if not word and (region != regs.BAR_REGS or (offset | count) & 3
                                 or not 0 < count <= _BLOCK_MAX):
                    return False
                # Each access is consumed before the device sees it: an access may DMA to the
                # client, whose messages are then received from here on (see _remote).
                if cmd == P.REGION_READ:
                    if size != _ACCESS_SIZE:
                        return False
                    if word:
                        rx.pos = pos + size
                        data = dev.bar_read(region, offset, count).to_bytes(count, "little")
                    else:
                        # BAR0 reads have no side effects: a block is one copy.
                        block = getattr(dev, "bar_read_block", None)
                        if block is None:
                            return False
                        rx.pos = pos + size
                        data = block(region, offset, count)
                    if not flags:
                        pending.append(_MESSAGE.pack(msg_id, cmd, size + count, P.TYPE_REPLY, 0,
                                                     offset, region, count) + data)
                elif cmd == P.REGION_WRITE and size == _ACCESS_SIZE + count:
                    if word:
                        value = int.from_bytes(buf[pos + _ACCESS_SIZE:pos + size], "little")
                        rx.pos = pos + size
                        engine = (starts.get(offset) if count == 1 and value & 1
                                  and region == regs.BAR_REGS else None)
                        if (engine is not None and start is not None
                                and not self._control_write_follows(offset)):
                            start(engine)
                        else:
                            dev.bar_write(region, offset, count, value)
                    else:
                        # The model's block write is the 4-byte writes it stands for, in order.
                        put = getattr(dev, "bar_write_block", None)
                        if put is None:
                            return False
                        data = bytes(buf[pos + _ACCESS_SIZE:pos + size])
                        rx.pos = pos + size
                        put(region, offset, data)
                    if not flags:
                        pending.append(_MESSAGE.pack(msg_id, cmd, _ACCESS_SIZE, P.TYPE_REPLY, 0,
                                                     offset, region, count))
                else:
                    return False
                served += 1
                pos += size
                if pos != rx.pos or self._backlog or rx.fd_reads or self.closed:
                    # A DMA to the client received more meanwhile (commands may wait in the
                    # backlog, fds may have come): the loop decides what is next.
                    return True
                end = len(buf)
        finally:
            self.stats["commands"] += served
        return False

    def _control_write_follows(self, ctrl: int) -> bool:
        """Whether the next message, already received, writes BAR0's control register at
        ``ctrl`` (an abort sent right after a start): the start then goes to the engine's
        worker, so that the abort reaches the command before it runs as it would on hardware,
        rather than after a run in this thread."""
        rx = self._rx
        if len(rx.buf) - rx.pos < _ACCESS_SIZE:
            return False
        _, cmd, _, _, _, offset, region, count = _MESSAGE.unpack_from(rx.buf, rx.pos)
        return (cmd == P.REGION_WRITE and region == regs.BAR_REGS
                and offset < ctrl + regs.EHCMDCTRL_STRIDE and ctrl < offset + count)

    def _flush_pending(self) -> None:
        """Send the fast path's queued replies in one system call."""
        data = b"".join(self._pending)
        self._pending.clear()
        self._send_bytes(data)

    def _cleanup(self) -> None:
        # The client's memory and eventfds go at once; the device reset may have to wait for a
        # running program, so with a device factory it happens in the background (the next
        # client gets a new device meanwhile), otherwise here.
        try:
            if self.fn is not None:
                self.fn.detach_client()
                if self.server.factory is None:
                    self.fn.disconnect()
        except Exception as exc:  # the server must outlive any device failure
            self.server.log(f"client {self.number}: error while resetting the device: {exc!r}")
        try:
            self.sock.close()
        except OSError:
            pass
        for msg in self._backlog:
            msg.close_fds()
        self._rx.close()

    def _pumping(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (which may wait for device threads) while still receiving DMA replies."""
        done = threading.Event()
        err: list[BaseException] = []

        def work() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in the connection thread
                err.append(exc)
            finally:
                done.set()

        t = threading.Thread(target=work, name="hermes-vfio-user-reset", daemon=True)
        t.start()
        while not done.wait(0.0005):
            if self.server.stop_requested():
                raise _ClientGone()
            try:
                msg = self._recv_within(0.01)
            except _ClientGone:
                self.closed = True
                self._fail_waiters()
                done.wait()
                raise
            if msg is None:
                continue
            if msg.is_reply:
                self._deliver_reply(msg)
            else:
                self._backlog.append(msg)
        if err:
            raise err[0]

    # --- dispatch ------------------------------------------------------------------------------
    def handle(self, msg: P.Message) -> None:
        """Execute one command and reply; errors become error replies."""
        self.stats["commands"] += 1
        handler = self.HANDLERS.get(msg.cmd)
        try:
            if handler is None:
                raise vfio_error(errno.ENOSYS, f"unknown command {msg.cmd}")
            if not self.negotiated and msg.cmd != P.VERSION:
                raise vfio_error(errno.EINVAL, f"{msg.name} before VERSION")
            if -1 in msg.fds:   # the receiver saw more fds than it had room for
                raise vfio_error(errno.EINVAL, f"more than {SERVER_MAX_MSG_FDS} fds in one message")
            payload, fds = handler(self, msg)
        except OSError as exc:
            msg.close_fds()
            self.stats["errors"] += 1
            err = exc.errno or errno.EINVAL
            self.server.log(f"client {self.number}: error: {msg.name}: {exc.strerror or exc} "
                            f"({errno.errorcode.get(err, err)})")
            if not msg.flags & P.FLAG_NO_REPLY:
                self.send(P.error_reply(msg, err))
            if msg.cmd == P.VERSION and not self.negotiated:
                raise _ClientGone() from None
            return
        except _ClientGone:
            raise
        except Exception as exc:  # a bug must not take the server down: report it as EIO
            msg.close_fds()
            self.stats["errors"] += 1
            self.server.log(f"client {self.number}: internal error in {msg.name}: {exc!r}")
            if not msg.flags & P.FLAG_NO_REPLY:
                self.send(P.error_reply(msg, errno.EIO))
            return
        if not msg.flags & P.FLAG_NO_REPLY:
            self.send(P.reply_to(msg, payload, fds))

    @staticmethod
    def _no_fds(msg: P.Message) -> None:
        if msg.fds:
            raise vfio_error(errno.EINVAL, f"{msg.name} carries {len(msg.fds)} unexpected fds")

    @staticmethod
    def _fixed(msg: P.Message, size: int, reply_size: int | None = None) -> None:
        """Check that the payload holds the ``size``-byte request structure and that its argsz
        (its first u32) leaves room for the ``reply_size``-byte fixed reply (default: ``size``):
        EINVAL otherwise, as the kernel and libvfio-user answer."""
        if len(msg.payload) < size:
            raise vfio_error(errno.EINVAL, f"{msg.name} payload of {len(msg.payload)} bytes is "
                                           f"shorter than {size}")
        argsz = int.from_bytes(msg.payload[:4], "little")
        need = size if reply_size is None else reply_size
        if argsz < need:
            raise vfio_error(errno.EINVAL, f"{msg.name} argsz {argsz} is smaller than the "
                                           f"{need} bytes it needs")

    def _version(self, msg: P.Message):
        self._no_fds(msg)
        if self.negotiated:
            raise vfio_error(errno.EINVAL, "VERSION sent twice")
        try:
            major, minor, caps = P.decode_version(msg.payload)
            fds = P.json_uint(caps, "max_msg_fds", P.DEFAULT_MAX_MSG_FDS, 0, 1024)
            xfer = P.json_uint(caps, "max_data_xfer_size", P.DEFAULT_MAX_DATA_XFER_SIZE, 8, 1 << 32)
        except ValueError as exc:
            raise vfio_error(errno.EINVAL, str(exc)) from None
        if major != P.VERSION_MAJOR:
            raise vfio_error(errno.ENOTSUP, f"protocol major version {major} (we speak 0)")
        self.client_max_fds = fds
        self.client_max_xfer = min(xfer, P.DEFAULT_MAX_DATA_XFER_SIZE)
        # Every value is within what QEMU's client accepts (max_msg_fds <= 16, max_data_xfer_size
        # <= 64 MiB, pgsizes a multiple of 4096, max_dma_maps <= 65535).
        ours = {"max_msg_fds": SERVER_MAX_MSG_FDS,
                "max_data_xfer_size": P.DEFAULT_MAX_DATA_XFER_SIZE,
                "max_dma_maps": self._held.dma.max_maps, "pgsizes": P.DEFAULT_PGSIZE}
        # The reply's capabilities must be a subset of the proposed ones.
        reply_caps = {k: v for k, v in ours.items() if k in caps}
        self.negotiated = True
        return P.encode_version(major, min(minor, P.VERSION_MINOR), reply_caps), []

    def _dma_map(self, msg: P.Message):
        self._fixed(msg, ctypes.sizeof(P.DmaMap))
        req = P.DmaMap.decode(msg.payload)
        if len(msg.fds) > 1:
            raise vfio_error(errno.EINVAL, "DMA_MAP with more than one fd")
        if req.flags & ~(P.DMA_FLAG_READ | P.DMA_FLAG_WRITE | 0xC):
            raise vfio_error(errno.EINVAL, f"DMA_MAP flags {req.flags:#x}")
        if req.size == 0 or req.addr + req.size > 1 << 64:
            raise vfio_error(errno.EINVAL, f"DMA_MAP range {req.addr:#x}+{req.size:#x}")
        flags = req.flags & (P.DMA_FLAG_READ | P.DMA_FLAG_WRITE)
        if msg.fds:
            fd = msg.fds[0]
            prot = (mmap.PROT_READ if flags & P.DMA_FLAG_READ else 0) | \
                   (mmap.PROT_WRITE if flags & P.DMA_FLAG_WRITE else 0)
            try:
                if req.offset % mmap.ALLOCATIONGRANULARITY:
                    raise vfio_error(errno.EINVAL,
                                     f"DMA_MAP offset {req.offset:#x} not page aligned")
                mm = mmap.mmap(fd, req.size, mmap.MAP_SHARED, prot or mmap.PROT_READ,
                               offset=req.offset)
            except ValueError as exc:   # e.g. the fd is shorter than offset + size
                raise vfio_error(errno.EINVAL, f"DMA_MAP fd: {exc}") from None
            finally:
                msg.close_fds()
            backend: MmapBackend | CallbackBackend = MmapBackend(mm)
        else:
            backend = CallbackBackend(req.addr, self.dma_read, self.dma_write)
        try:
            self._held.dma.map(req.addr, req.size, flags, backend)
        except OSError:
            backend.close()
            raise
        return b"", []

    def _dma_unmap(self, msg: P.Message):
        self._no_fds(msg)
        self._fixed(msg, ctypes.sizeof(P.DmaUnmap))
        req = P.DmaUnmap.decode(msg.payload)
        if req.flags & uapi.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            raise vfio_error(errno.ENOTSUP, "dirty page tracking is not supported")
        if req.flags & ~uapi.VFIO_DMA_UNMAP_FLAG_ALL:
            raise vfio_error(errno.EINVAL, f"DMA_UNMAP flags {req.flags:#x}")
        if req.flags & uapi.VFIO_DMA_UNMAP_FLAG_ALL:
            if req.iova or req.size:
                raise vfio_error(errno.EINVAL, "DMA_UNMAP ALL with an address or size")
            self._held.dma.unmap_all()
        else:
            req.size = self._held.dma.unmap(req.iova, req.size)
        req.argsz = ctypes.sizeof(P.DmaUnmap)
        return bytes(req), []

    def _device_info(self, msg: P.Message):
        self._no_fds(msg)
        self._fixed(msg, P.DEVICE_INFO_SIZE)
        flags, nreg, nirq = self._held.device_info()
        return bytes(uapi.vfio_device_info(P.DEVICE_INFO_SIZE, flags, nreg, nirq, 0))[:16], []

    def _region_info(self, msg: P.Message):
        self._no_fds(msg)
        self._fixed(msg, ctypes.sizeof(uapi.vfio_region_info))
        req = uapi.vfio_region_info.decode(msg.payload)
        return self._held.region_info(req.index).encode(req.argsz)

    def _irq_info(self, msg: P.Message):
        self._no_fds(msg)
        self._fixed(msg, ctypes.sizeof(uapi.vfio_irq_info))
        req = uapi.vfio_irq_info.decode(msg.payload)
        flags, count = self._held.irq_info(req.index)
        return bytes(uapi.vfio_irq_info(16, flags, req.index, count)), []

    def _set_irqs(self, msg: P.Message):
        self._fixed(msg, ctypes.sizeof(uapi.vfio_irq_set))
        req = uapi.vfio_irq_set.decode(msg.payload)
        fds, msg.fds = msg.fds, []
        self._held.set_irqs(req.flags, req.index, req.start, req.count, msg.payload[20:], fds)
        return b"", []

    def _region_access(self, msg: P.Message, write: bool):
        self._no_fds(msg)
        if len(msg.payload) < P.REGION_ACCESS.size:
            raise vfio_error(errno.EINVAL, f"{msg.name} payload shorter than 16 bytes")
        offset, region, count = P.REGION_ACCESS.unpack_from(msg.payload)
        if count > P.DEFAULT_MAX_DATA_XFER_SIZE:
            raise vfio_error(errno.EINVAL, f"{msg.name} count {count} exceeds max_data_xfer_size")
        head = msg.payload[:P.REGION_ACCESS.size]
        if write:
            data = msg.payload[P.REGION_ACCESS.size:]
            if len(data) != count:
                raise vfio_error(errno.EINVAL,
                                 f"REGION_WRITE count {count} but {len(data)} data bytes")
            self._held.region_write(region, offset, data)
            return head, []
        if len(msg.payload) != P.REGION_ACCESS.size:
            raise vfio_error(errno.EINVAL, "REGION_READ with trailing data")
        return head + self._held.region_read(region, offset, count), []

    def _region_read(self, msg: P.Message):
        return self._region_access(msg, False)

    def _region_write(self, msg: P.Message):
        return self._region_access(msg, True)

    def _reset(self, msg: P.Message):
        self._no_fds(msg)
        self._pumping(self._held.reset)
        return b"", []

    def _unsupported(self, msg: P.Message):
        msg.close_fds()
        raise vfio_error(errno.ENOTSUP, f"{msg.name} is not supported")

    def _server_only(self, msg: P.Message):
        raise vfio_error(errno.EINVAL, f"{msg.name} goes from server to client")

    HANDLERS: dict[int, Callable] = {
        P.VERSION: _version, P.DMA_MAP: _dma_map, P.DMA_UNMAP: _dma_unmap,
        P.DEVICE_GET_INFO: _device_info, P.DEVICE_GET_REGION_INFO: _region_info,
        P.DEVICE_GET_IRQ_INFO: _irq_info, P.DEVICE_SET_IRQS: _set_irqs,
        P.REGION_READ: _region_read, P.REGION_WRITE: _region_write, P.DEVICE_RESET: _reset,
        P.DEVICE_GET_REGION_IO_FDS: _unsupported, P.REGION_WRITE_MULTI: _unsupported,
        P.DEVICE_FEATURE: _unsupported, P.DMA_READ: _server_only, P.DMA_WRITE: _server_only,
    }


class Server:
    """Listens on ``path`` and serves a device to one client at a time.

    ``function`` is the device served to the first client. With ``factory`` (a callable making a
    new VfioFunction), each later client gets a freshly powered-on device: nothing a previous
    client left (slots, BAR4 contents, a BAR4 mapping it kept) reaches the next one. A client
    that connects while another holds the device waits up to BUSY_GRACE for it, then its first
    message is answered EBUSY and it is disconnected. The socket file is created with mode 0600,
    or 0660 owned by ``socket_group`` (a gid); peers are checked with SO_PEERCRED.
    """

    def __init__(self, path: str, function: VfioFunction, *, verbose: bool = False,
                 log_file: TextIO | None = None,
                 factory: Callable[[], VfioFunction] | None = None,
                 socket_group: int | None = None, stall_timeout: float = P.STALL_TIMEOUT,
                 spin: float = RECEIVE_SPIN):
        self.path = path
        #: Seconds a connection polls for the client's next message before it sleeps.
        self.spin = spin
        self.function = function
        self.factory = factory
        self._retiring: list[threading.Thread] = []
        self.verbose = verbose
        self._log_file = log_file or sys.stderr
        self._stop = False
        self.wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.listener: socket.socket | None = None
        self.connections = 0
        self.socket_group = socket_group
        self.stall_timeout = stall_timeout
        self._cond = threading.Condition()
        self._active: Connection | None = None     # the connection holding the device
        self._threads: set[threading.Thread] = set()

    def log(self, text: str) -> None:
        """One line on the log (stderr by default)."""
        try:
            print(f"hermes serve: {text}", file=self._log_file, flush=True)
        except (OSError, ValueError):
            pass

    def stop_requested(self) -> bool:
        """True once ``stop()`` was called (e.g. from a signal handler)."""
        return self._stop

    def stop(self) -> None:
        """Ask the server to finish; safe from signal handlers and other threads."""
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def bind(self) -> None:
        """Create the listening socket (a stale socket file from a dead server is replaced).

        The file is created with mode 0600 whatever the umask (bind applies the umask, so it is
        narrowed around the call: the file never exists with a wider mode); with
        ``socket_group`` it is then given to that group and only then opened to it (0660)."""
        if os.path.exists(self.path):
            st = os.stat(self.path)
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(errno.EEXIST, "exists and is not a socket", self.path)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)   # nobody listens: stale
            else:
                probe.close()
                raise OSError(errno.EADDRINUSE, "another server is listening there", self.path)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o777 & ~SOCKET_MODE)
            try:
                sock.bind(self.path)
            finally:
                os.umask(old_umask)
            if self.socket_group is not None:
                os.chown(self.path, -1, self.socket_group)
                os.chmod(self.path, SOCKET_MODE_GROUP)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, exc.strerror, self.path) from None
        self.listener = sock

    # --- who may connect -----------------------------------------------------------------------
    def peer_refusal(self, conn: socket.socket) -> str | None:
        """Why the process at the other end of ``conn`` may not connect, or None if it may: it
        must run as the server's user or root, or (with ``socket_group``) be in that group."""
        try:
            pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         _UCRED.size))
        except OSError as exc:
            return f"its credentials are unknown ({exc})"
        if uid in (0, os.geteuid()):
            return None
        who = f"pid {pid} uid {uid} gid {gid}"
        if self.socket_group is None:
            return f"{who} is neither the server's user (uid {os.geteuid()}) nor root"
        if gid == self.socket_group or self.socket_group in _peer_groups(conn):
            return None
        return (f"{who} is neither the server's user (uid {os.geteuid()}), root nor in "
                f"group {self.socket_group}")

    # --- the device: one holder at a time ------------------------------------------------------
    def claim(self, connection: Connection) -> bool:
        """Give the device to ``connection`` if nobody holds it within BUSY_GRACE seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._active is None or self._stop, BUSY_GRACE)
            if self._active is not None or self._stop:
                return False
            self._active = connection
            connection.fn = self.function
            connection.claimed = True
            return True

    def release(self, connection: Connection) -> None:
        """``connection`` has ended: the next client gets a fresh device (if there is a factory)."""
        try:
            if self.factory is not None and not self._stop:
                self._power_cycle()
        finally:
            with self._cond:
                if self._active is connection:
                    self._active = None
                self._cond.notify_all()

    def _serve_connection(self, connection: Connection) -> None:
        t0 = time.monotonic()
        try:
            connection.run()
        except Exception as exc:  # keep serving whatever one connection did
            self.log(f"client {connection.number}: internal error: {exc!r}")
        self.log(f"client {connection.number} disconnected after {time.monotonic() - t0:.3f} s "
                 f"({connection.stats['commands']} commands, {connection.stats['errors']} errors)")
        if connection.claimed:
            self.release(connection)
        with self._cond:
            self._threads.discard(threading.current_thread())

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.log(f"accept failed: {exc}")
            return
        self.connections += 1
        number = self.connections
        why = self.peer_refusal(conn)
        if why is not None:
            self.log(f"client {number} refused: {why}")
            conn.close()
            return
        with self._cond:
            if len(self._threads) >= MAX_CONNECTIONS:
                self.log(f"client {number} refused: {MAX_CONNECTIONS} connections are open already")
                conn.close()
                return
            self.log(f"client {number} connected")
            t = threading.Thread(target=self._serve_connection,
                                 args=(Connection(self, conn, number),),
                                 name=f"hermes-serve-client-{number}", daemon=True)
            self._threads.add(t)
        t.start()

    def serve_forever(self) -> None:
        """Accept clients until ``stop()``, each on its own thread (one holds the device, the
        others are refused); removes the socket file at the end."""
        if self.listener is None:
            self.bind()
        assert self.listener is not None
        try:
            while not self._stop:
                # A signal may be delivered to any thread, and Python runs its handler on the
                # main thread only when that thread next runs: the timeout bounds the wait.
                waits: list[socket.socket | int] = [self.listener, self.wake_r]
                r, _, _ = select.select(waits, [], [], IDLE_TICK)
                if self._stop:
                    break
                if self.listener in r:
                    self._accept()
        finally:
            # Every connection notices the stop within an IDLE_TICK of receiving or sending.
            deadline = time.monotonic() + CLOSE_TIMEOUT
            with self._cond:
                self._cond.notify_all()
                threads = list(self._threads)
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.close()

    def _power_cycle(self) -> None:
        """Replace the device by a new one; the old one is reset and closed in the background
        (a runaway program the last client left running must not delay the next client)."""
        assert self.factory is not None
        old = self.function
        try:
            fresh = self.factory()
        except Exception as exc:  # keep serving the old device, reset, rather than dying
            self.log(f"error: cannot create a fresh device ({exc!r}); resetting the old one")
            try:
                old.disconnect()
            except Exception as exc2:
                self.log(f"error while resetting the device: {exc2!r}")
            return
        self.function = fresh

        def retire() -> None:
            try:
                # Stop what the departed client left running first: its runaway programs would
                # otherwise keep a core busy until their budgets end, slowing the next client.
                old.device.abort()
                old.disconnect()
                old.close()
            except Exception as exc:
                self.log(f"error while retiring the previous device: {exc!r}")

        t = threading.Thread(target=retire, name="hermes-serve-retire", daemon=True)
        self._retiring.append(t)
        t.start()

    def wait_retired(self, timeout: float | None = None) -> None:
        """Wait until previous clients' devices are reset and closed (for tests)."""
        for t in list(self._retiring):
            t.join(timeout)
        self._retiring = [t for t in self._retiring if t.is_alive()]

    def close(self) -> None:
        """Stop listening and remove the socket file (the device is closed too)."""
        if self.listener is not None:
            try:
                self.listener.close()
            finally:
                self.listener = None
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        for fd in (self.wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        # Closing the device waits for running programs; a runaway one must not hold up the
        # shutdown, so wait a bounded time (engine threads are daemons and die with the process).
        closer = threading.Thread(target=self.function.close, name="hermes-serve-close",
                                  daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT)
        if closer.is_alive():
            self.log(f"a program is still running after {CLOSE_TIMEOUT:g} s; exiting anyway")


def _peer_groups(conn: socket.socket) -> list[int]:
    """Supplementary groups of the process at the other end of ``conn`` (SO_PEERGROUPS)."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
    except OSError:
        return []
    groups = array.array("I")
    groups.frombytes(raw[:len(raw) - len(raw) % 4])
    return list(groups)


def serve(path: str, *, verbose: bool = False, log_file: TextIO | None = None,
          install_signals: bool = True, ready: Callable[[], None] | None = None,
          socket_group: int | None = None, stall_timeout: float = P.STALL_TIMEOUT,
          spin: float = RECEIVE_SPIN, device: str = "hermes", **device_kwargs: Any) -> None:
    """Build a device with ``device_kwargs`` and serve it at ``path`` until SIGINT/SIGTERM.

    ``device`` is ``"hermes"`` (a HermesDevice) or ``"nvme-cp"`` (the NVMe CP/SLM controller,
    ``NvmeController`` arguments). A device option the model refuses raises DeviceError naming
    it (before anything listens)."""
    makers = {"hermes": VfioFunction.create, "nvme-cp": VfioFunction.create_nvme}
    if device not in makers:
        raise DeviceError(f"unknown device type {device!r}; choose one of {', '.join(makers)}")
    make = makers[device]
    try:
        function = make(**device_kwargs)
    except (ValueError, TypeError) as exc:
        raise DeviceError(f"bad device option: {exc}") from None
    server = Server(path, function, verbose=verbose, log_file=log_file,
                    factory=lambda: make(**device_kwargs),
                    socket_group=socket_group, stall_timeout=stall_timeout, spin=spin)
    try:
        server.bind()
    except BaseException:
        server.close()
        raise
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: server.stop())
    dev = function.device
    if isinstance(dev, NvmeController):
        sizes = ", ".join(f"{ns.size >> 20} MiB" for ns in dev.memory.values())
        server.log(f"serving NVMe CP/SLM controller (memory namespaces {sizes}) on {path}")
    else:
        server.log(f"serving Hermes device ({dev.bar_size(4) >> 20} MiB BAR4) on {path}")
    if ready is not None:
        ready()
    server.serve_forever()
    server.log("stopped")

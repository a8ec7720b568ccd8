"""vfio-user wire format: the 16-byte header, command numbers, payload layouts, framed socket I/O.

Both ends (``hermes.server.vfio_user`` and ``hermes.transport.vfio_user``) use this module; it
imports nothing of the device model. Host byte order (little-endian on supported hosts).
"""
from __future__ import annotations

import array
import ctypes
import errno
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import uapi

# --- socket flags as plain ints (arithmetic on the socket module's enums runs Python code) -----
_DONTWAIT = int(socket.MSG_DONTWAIT)
_CTRUNC = int(socket.MSG_CTRUNC)

# --- header ------------------------------------------------------------------------------------
HEADER = struct.Struct("<HHIII")   #: msg_id, cmd, msg_size, flags, error_no
HEADER_SIZE = HEADER.size

FLAG_TYPE_MASK = 0xF
TYPE_COMMAND = 0
TYPE_REPLY = 1
FLAG_NO_REPLY = 0x10
FLAG_ERROR = 0x20

# --- commands ----------------------------------------------------------------------------------
VERSION = 1
DMA_MAP = 2
DMA_UNMAP = 3
DEVICE_GET_INFO = 4
DEVICE_GET_REGION_INFO = 5
DEVICE_GET_REGION_IO_FDS = 6
DEVICE_GET_IRQ_INFO = 7
DEVICE_SET_IRQS = 8
REGION_READ = 9
REGION_WRITE = 10
DMA_READ = 11
DMA_WRITE = 12
DEVICE_RESET = 13
REGION_WRITE_MULTI = 15
DEVICE_FEATURE = 16

COMMAND_NAMES = {
    VERSION: "VERSION", DMA_MAP: "DMA_MAP", DMA_UNMAP: "DMA_UNMAP",
    DEVICE_GET_INFO: "DEVICE_GET_INFO", DEVICE_GET_REGION_INFO: "DEVICE_GET_REGION_INFO",
    DEVICE_GET_REGION_IO_FDS: "DEVICE_GET_REGION_IO_FDS",
    DEVICE_GET_IRQ_INFO: "DEVICE_GET_IRQ_INFO",
    DEVICE_SET_IRQS: "DEVICE_SET_IRQS", REGION_READ: "REGION_READ", REGION_WRITE: "REGION_WRITE",
    DMA_READ: "DMA_READ", DMA_WRITE: "DMA_WRITE", DEVICE_RESET: "DEVICE_RESET",
    REGION_WRITE_MULTI: "REGION_WRITE_MULTI", DEVICE_FEATURE: "DEVICE_FEATURE",
}

# --- version negotiation -----------------------------------------------------------------------
VERSION_MAJOR = 0
VERSION_MINOR = 2
VERSION_HEAD = struct.Struct("<HH")
DEFAULT_MAX_MSG_FDS = 1
DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20
DEFAULT_MAX_DMA_MAPS = 65535
DEFAULT_PGSIZE = 4096
#: Largest message (header included) either side accepts: a maximal data transfer plus room for
#: its fixed part and region-info capabilities. A header announcing more is not skipped: a peer
#: that sends one is broken or hostile, and reading gigabytes to stay in sync would let it hold
#: the receiver, so the connection is closed.
MAX_MESSAGE_SIZE = DEFAULT_MAX_DATA_XFER_SIZE + 4096
#: Most fds one message may carry on this implementation's receive side.
MAX_FDS_ACCEPTED = 64
#: Largest VERSION capabilities document accepted (bytes, NUL included); real peers send < 300.
MAX_VERSION_JSON = 4096
#: Deepest nesting of objects/arrays accepted in that document (the spec's deepest is 3).
MAX_VERSION_JSON_DEPTH = 8

# --- DMA_MAP flags (vfio-user) -----------------------------------------------------------------
DMA_FLAG_READ = 1
DMA_FLAG_WRITE = 2


class DmaMap(uapi._Struct):
    """DMA_MAP request payload (32 bytes): ``offset`` into the attached fd, bus ``addr``, size."""

    _fields_ = [("argsz", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("offset", ctypes.c_uint64), ("addr", ctypes.c_uint64), ("size", ctypes.c_uint64)]


#: DMA_UNMAP payload: same layout as the kernel's.
DmaUnmap = uapi.vfio_iommu_type1_dma_unmap

#: REGION_READ/WRITE fixed part: offset u64, region u32, count u32.
REGION_ACCESS = struct.Struct("<QII")
#: A REGION_READ/WRITE message's first 32 bytes, the header and the fixed part in one struct
#: (msg_id, cmd, msg_size, flags, error_no, offset, region, count): a hot-path access is one
#: unpack, its reply one pack.
REGION_MESSAGE = struct.Struct(HEADER.format + REGION_ACCESS.format[1:])
#: DMA_READ request / reply fixed part and DMA_WRITE request fixed part: address u64, count u64.
DMA_ACCESS = struct.Struct("<QQ")
#: DMA_WRITE reply (spec table): address u64, count u32.
DMA_WRITE_REPLY = struct.Struct("<QI")
#: DEVICE_GET_INFO payload in vfio-user (no cap_offset).
DEVICE_INFO_SIZE = 16


class ProtocolError(Exception):
    """The peer broke the framing or the negotiation (the connection cannot continue)."""


class RemoteError(OSError):
    """The peer answered a command with an error reply (``errno`` set from the reply)."""


@dataclass(slots=True)
class Message:
    """One framed message: header fields, payload bytes and the fds that travelled with it."""

    msg_id: int
    cmd: int
    flags: int = TYPE_COMMAND
    error_no: int = 0
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        """True for a reply, False for a command."""
        return (self.flags & FLAG_TYPE_MASK) == TYPE_REPLY

    @property
    def is_error(self) -> bool:
        """True for an error reply."""
        return bool(self.flags & FLAG_ERROR)

    @property
    def name(self) -> str:
        """The command's name (or its number)."""
        return COMMAND_NAMES.get(self.cmd, f"cmd#{self.cmd}")

    def encode(self) -> bytes:
        """Header plus payload."""
        return encode_header(self.msg_id, self.cmd, HEADER_SIZE + len(self.payload), self.flags,
                             self.error_no) + self.payload

    def close_fds(self) -> None:
        """Close every fd this message brought (they are ours once received)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def encode_header(msg_id: int, cmd: int, msg_size: int, flags: int = TYPE_COMMAND,
                  error_no: int = 0) -> bytes:
    """Pack a 16-byte header."""
    return HEADER.pack(msg_id & 0xFFFF, cmd, msg_size, flags, error_no)


def decode_header(buf: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int]:
    """Unpack a 16-byte header: ``(msg_id, cmd, msg_size, flags, error_no)``."""
    if len(buf) < HEADER_SIZE:
        raise ProtocolError(f"short header: {len(buf)} bytes")
    return HEADER.unpack_from(buf)


def encode_version(major: int, minor: int, caps: dict | None) -> bytes:
    """VERSION payload: major, minor and (if given) the NUL-terminated capabilities JSON."""
    tail = b"" if caps is None else json.dumps({"capabilities": caps}).encode() + b"\0"
    return VERSION_HEAD.pack(major, minor) + tail


def _json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def decode_version(payload: bytes) -> tuple[int, int, dict]:
    """Parse a VERSION payload into ``(major, minor, capabilities dict)``.

    Raises ValueError naming what is wrong for anything but a NUL-terminated UTF-8 JSON object
    of at most MAX_VERSION_JSON bytes and MAX_VERSION_JSON_DEPTH levels whose "capabilities"
    member (if present) is an object. The size and depth are checked before parsing, so a
    hostile document cannot make the parser recurse or allocate without bound.
    """
    if len(payload) < VERSION_HEAD.size:
        raise ValueError("VERSION payload shorter than 4 bytes")
    major, minor = VERSION_HEAD.unpack_from(payload)
    text = payload[VERSION_HEAD.size:]
    if not text:
        return major, minor, {}
    if len(text) > MAX_VERSION_JSON:
        raise ValueError(f"capabilities JSON of {len(text)} bytes exceeds {MAX_VERSION_JSON}")
    if not text.endswith(b"\0"):
        raise ValueError("capabilities JSON is not NUL-terminated")
    try:
        body = text[:-1].decode()
    except UnicodeDecodeError:
        raise ValueError("capabilities JSON is not UTF-8") from None
    depth = _json_depth(body)
    if depth > MAX_VERSION_JSON_DEPTH:
        raise ValueError(f"capabilities JSON nests {depth} levels deep "
                         f"(at most {MAX_VERSION_JSON_DEPTH})")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"capabilities are not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("capabilities", {}), dict):
        raise ValueError("capabilities JSON must be an object with a 'capabilities' object")
    return major, minor, doc.get("capabilities", {})


def json_uint(caps: dict, key: str, default: int, lo: int, hi: int) -> int:
    """Capability ``key`` of a VERSION document as an integer in ``lo..hi`` (``default`` when
    absent); ValueError naming the key otherwise (JSON true/false and floats are not numbers
    here, as in QEMU's and libvfio-user's parsers)."""
    value = caps.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"capability {key} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def encode_region_access(offset: int, region: int, count: int, data: bytes = b"") -> bytes:
    """REGION_READ/WRITE payload."""
    return REGION_ACCESS.pack(offset, region, count) + data


def encode_dma_access(address: int, count: int, data: bytes = b"") -> bytes:
    """DMA_READ/WRITE payload."""
    return DMA_ACCESS.pack(address, count) + data


# --- framed socket I/O -------------------------------------------------------------------------

def send_message(sock: socket.socket, msg: Message) -> None:
    """Send one message; its fds ride as SCM_RIGHTS with the first byte."""
    data = msg.encode()
    if msg.fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", msg.fds).tobytes())]
        sent = sock.sendmsg([data], anc)
        if sent < len(data):
            sock.sendall(memoryview(data)[sent:])
    else:
        sock.sendall(data)


#: Seconds a peer may stall in the middle of a message (sockets with SO_RCVTIMEO set).
STALL_TIMEOUT = 10.0


def _recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    deadline = None
    while got < len(view):
        try:
            n = sock.recv_into(view[got:])
        except BlockingIOError:   # SO_RCVTIMEO expired mid-message: allow a bounded stall
            deadline = deadline or time.monotonic() + STALL_TIMEOUT
            if time.monotonic() > deadline:
                raise ProtocolError("peer stalled in the middle of a message") from None
            continue
        if n == 0:
            raise ConnectionResetError(errno.ECONNRESET, "peer closed the connection mid-message")
        got += n


def _received_fds(anc: list[tuple[int, int, bytes]], mflags: int, fds: list[int]) -> list[int]:
    """``fds`` extended by the descriptors a ``recvmsg`` passed in ``anc``; ``[-1]`` (all of
    them closed) when ``mflags`` says some were cut off, so the caller rejects the message."""
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[:len(data) - len(data) % 4])
            fds.extend(arr)
    if mflags & _CTRUNC:
        close_fds(fds)
        return [-1]
    return fds


def close_fds(fds: list[int]) -> None:
    """Close every valid fd of ``fds`` (fds received with a message nobody will own)."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def recv_header(sock: socket.socket, max_fds: int = MAX_FDS_ACCEPTED
                ) -> tuple[tuple, list[int]] | None:
    """Receive a header and the fds sent with it; None on a clean EOF before any byte.

    On a socket with SO_RCVTIMEO, BlockingIOError propagates only when no byte has arrived (the
    caller is idle); a stall after the first byte is retried up to STALL_TIMEOUT. When more fds
    arrived than ``max_fds`` the list holds a -1 (the caller must reject the message).
    """
    buf = bytearray(HEADER_SIZE)
    fds: list[int] = []
    got = 0
    deadline = None
    ancsize = socket.CMSG_SPACE(max_fds * 4)
    while got < HEADER_SIZE:
        try:
            n, anc, mflags, _ = sock.recvmsg_into([memoryview(buf)[got:]], ancsize)
        except BlockingIOError:
            if got == 0:
                raise
            deadline = deadline or time.monotonic() + STALL_TIMEOUT
            if time.monotonic() > deadline:
                close_fds(fds)
                raise ProtocolError("peer stalled in the middle of a header") from None
            continue
        fds = _received_fds(anc, mflags, fds)
        if n == 0:
            close_fds(fds)
            if got == 0:
                return None
            raise ConnectionResetError(errno.ECONNRESET, "peer closed the connection mid-header")
        got += n
    return decode_header(buf), fds


def recv_message(sock: socket.socket, max_size: int = MAX_MESSAGE_SIZE) -> Message | None:
    """Receive one whole message; None on EOF at a message boundary.

    Raises ProtocolError when the header's size is impossible: below the header size, or
    MessageTooBig (a ProtocolError) above ``max_size``. Either way the connection cannot go on.
    """
    got = recv_header(sock)
    if got is None:
        return None
    (msg_id, cmd, size, flags, error_no), fds = got
    return recv_body(sock, msg_id, cmd, size, flags, error_no, fds, max_size)


def recv_body(sock: socket.socket, msg_id: int, cmd: int, size: int, flags: int, error_no: int,
              fds: list[int], max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """The rest of a message whose header was received (see ``recv_message``)."""
    if size < HEADER_SIZE:
        close_fds(fds)
        raise ProtocolError(f"message size {size} is smaller than the header")
    body_len = size - HEADER_SIZE
    if size > max_size:
        close_fds(fds)
        raise MessageTooBig(Message(msg_id, cmd, flags, error_no), size, max_size)
    body = bytearray(body_len)
    if body_len:
        try:
            _recv_exact_into(sock, memoryview(body))
        except BaseException:
            close_fds(fds)
            raise
    return Message(msg_id, cmd, flags, error_no, bytes(body), fds)


class MessageTooBig(ProtocolError):
    """A header announced a message larger than the receiver accepts (the connection must close)."""

    def __init__(self, header: Message, size: int, limit: int = MAX_MESSAGE_SIZE):
        self.header = header
        self.size = size
        super().__init__(f"{header.name} message of {size} bytes exceeds the limit of {limit}")


def reply_to(msg: Message, payload: bytes = b"", fds: list[int] | None = None) -> Message:
    """A success reply to ``msg``."""
    return Message(msg.msg_id, msg.cmd, TYPE_REPLY, 0, payload, list(fds or []))


def error_reply(msg: Message, err: int) -> Message:
    """An error reply (header only) to ``msg`` carrying ``err``."""
    return Message(msg.msg_id, msg.cmd, TYPE_REPLY | FLAG_ERROR, err)


def describe(msg: Message) -> str:
    """A one-line trace of a message (for --verbose)."""
    kind = "reply" if msg.is_reply else "cmd"
    extra = ""
    if msg.cmd in (REGION_READ, REGION_WRITE) and len(msg.payload) >= REGION_ACCESS.size:
        off, region, count = REGION_ACCESS.unpack_from(msg.payload)
        extra = f" region={region} offset={off:#x} count={count}"
    elif msg.cmd in (DMA_READ, DMA_WRITE) and len(msg.payload) >= DMA_ACCESS.size:
        addr, count = DMA_ACCESS.unpack_from(msg.payload)
        extra = f" addr={addr:#x} count={count}"
    err = f" error={errno.errorcode.get(msg.error_no, msg.error_no)}" if msg.is_error else ""
    fds = f" fds={len(msg.fds)}" if msg.fds else ""
    size = HEADER_SIZE + len(msg.payload)
    return f"{kind} {msg.name} id={msg.msg_id} size={size}{extra}{fds}{err}"


def recv_spinning(sock: socket.socket, n: int, seconds: float, flags: int = 0) -> bytes | None:
    """``sock.recv(n, flags)`` without sleeping: non-blocking receives retried for at most
    ``seconds`` until one finds data (or the end of the stream: b""); None when nothing came,
    for the caller's blocking receive. Polling with the receive itself, rather than with a look
    before it, makes data that arrives during the spin cost one system call."""
    flags |= _DONTWAIT
    end = time.perf_counter() + seconds
    while True:
        try:
            return sock.recv(n, flags)
        except BlockingIOError:
            if time.perf_counter() >= end:
                return None


class Receiver:
    """Buffered message reader: one recvmsg can bring many messages (posted writes arrive in
    bursts), so a burst costs one system call instead of two per message.

    fds: the kernel attaches SCM_RIGHTS to the first byte of the sendmsg that carried them and
    stops a read right after the segment holding them, so the fds of a read belong to the last
    message that starts inside that read (one message per fd-carrying sendmsg, as the protocol
    uses them).

    ``spin``: seconds to poll the socket without sleeping before a read blocks (0: never). A
    peer that answers within it is read without the thread being put to sleep and woken again,
    which on a virtual machine with idle vCPUs costs tens of microseconds per wake-up. The polls
    are the reads themselves (non-blocking), so data that arrives during the spin costs one
    system call.

    In-place parsing: ``buf[pos:]`` holds the bytes received and not consumed. While
    ``fd_reads`` is empty no fd waits for a message, and a consumer may decode whole messages
    straight from ``buf`` and advance ``pos`` past them (a hot path that builds no ``Message``);
    ``wait`` receives until a whole message is there.
    """

    CHUNK = 256 << 10

    def __init__(self, sock: socket.socket, *, max_size: int = MAX_MESSAGE_SIZE,
                 max_fds: int = MAX_FDS_ACCEPTED, stall_timeout: float = STALL_TIMEOUT,
                 stop: Callable[[], bool] | None = None, spin: float = 0.0):
        self.sock = sock
        self.max_size = max_size
        self.stall_timeout = stall_timeout
        self.stop = stop
        self.spin = spin
        self._ancsize = socket.CMSG_SPACE(max_fds * 4)
        #: Received bytes; ``buf[pos:]`` is not consumed yet.
        self.buf = bytearray()
        self.pos = 0
        self._base = 0                # stream offset of buf[0]
        #: (start, end, fds) of reads that brought fds not handed out yet.
        self.fd_reads: list[tuple[int, int, list[int]]] = []
        self._iov = [memoryview(bytearray(self.CHUNK))]   # reused: no allocation per read

    def _read(self) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        """One recvmsg into the chunk, after polling with non-blocking ones for ``spin``."""
        if self.spin:
            end = time.perf_counter() + self.spin
            while True:
                try:
                    return self.sock.recvmsg_into(self._iov, self._ancsize, _DONTWAIT)
                except BlockingIOError:
                    if time.perf_counter() >= end:
                        break
        return self.sock.recvmsg_into(self._iov, self._ancsize)

    def _fill(self) -> None:
        """One read (blocking, or SO_RCVTIMEO-bounded); EOFError at the end of the stream."""
        n, anc, mflags, _ = self._read()
        fds = _received_fds(anc, mflags, []) if anc or mflags else []
        if n == 0:
            close_fds(fds)
            raise EOFError
        buf = self.buf
        pos = self.pos
        if pos and (pos == len(buf) or pos > (1 << 20)):
            del buf[:pos]      # drop consumed bytes (usually all of them)
            self._base += pos
            self.pos = 0
        start = self._base + len(buf)
        buf += self._iov[0][:n]
        if fds:
            self.fd_reads.append((start, start + n, fds))

    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self.buf) - self.pos

    def peek(self, n: int) -> bytes:
        """The next ``n`` received bytes (fewer when fewer are buffered), left unconsumed."""
        return bytes(self.buf[self.pos:self.pos + n])

    def has_message(self) -> bool:
        """Whether a whole message is buffered (``recv`` returns it without a system call)."""
        avail = len(self.buf) - self.pos
        return avail >= HEADER_SIZE and avail >= HEADER.unpack_from(self.buf, self.pos)[2]

    def _take_fds(self, msg_start: int, msg_end: int) -> list[int]:
        out: list[int] = []
        keep = []
        for start, end, fds in self.fd_reads:
            if start <= msg_start < end and msg_end >= end:
                out.extend(fds)
            elif end <= msg_start:
                close_fds(fds)   # a read whose fds matched no message: drop them
            else:
                keep.append((start, end, fds))
        self.fd_reads = keep
        return out

    def wait(self) -> int:
        """Receive until the next message is whole in ``buf[pos:]``; returns its size, 0 on EOF
        at a message boundary. Nothing is consumed.

        BlockingIOError propagates only when nothing of the next message has arrived (an idle
        peer on a socket with SO_RCVTIMEO). Once a message has begun it must be complete within
        ``stall_timeout`` seconds (counted from its first byte, so a peer trickling bytes cannot
        extend it), else ProtocolError; ``stop()`` returning true also ends a wait inside a
        message with ProtocolError. A header announcing more than ``max_size`` bytes raises
        MessageTooBig at once: nothing of such a message is read.
        """
        deadline = None
        while True:
            avail = len(self.buf) - self.pos
            if avail >= HEADER_SIZE:
                msg_id, cmd, size, flags, error_no = HEADER.unpack_from(self.buf, self.pos)
                if size < HEADER_SIZE:
                    raise ProtocolError(f"message size {size} is smaller than the header")
                if size > self.max_size:
                    raise MessageTooBig(Message(msg_id, cmd, flags, error_no), size, self.max_size)
                if avail >= size:
                    return size
            if avail:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.stall_timeout
                elif now > deadline:
                    raise ProtocolError(f"peer stalled for more than {self.stall_timeout:g} s "
                                        f"inside a message ({avail} bytes of it received)")
                if self.stop is not None and self.stop():
                    raise ProtocolError("stopping with a message half received")
            try:
                self._fill()
            except BlockingIOError:
                if avail == 0:
                    raise
            except EOFError:
                if avail == 0:
                    return 0
                raise ConnectionResetError(errno.ECONNRESET,
                                           "peer closed the connection mid-message") from None

    def recv(self) -> Message | None:
        """The next message (see ``wait`` for what ends a wait for it); None on EOF at a message
        boundary."""
        size = self.wait()
        if not size:
            return None
        pos = self.pos
        msg_id, cmd, _, flags, error_no = HEADER.unpack_from(self.buf, pos)
        start = self._base + pos
        payload = bytes(self.buf[pos + HEADER_SIZE:pos + size])
        self.pos = pos + size
        fds = self._take_fds(start, start + size) if self.fd_reads else []
        return Message(msg_id, cmd, flags, error_no, payload, fds)

    def close(self) -> None:
        """Close fds received and never handed out."""
        for _, _, fds in self.fd_reads:
            close_fds(fds)
        self.fd_reads = []

"""Hostile clients against a real ``hermes serve`` process: framing errors, truncated headers,
absurd sizes, stalls, disconnects at every stage, fd abuse, two clients, floods. After each
action the server must answer a well-behaved client (VERSION and a register read) within a
bound, and SIGTERM must stop it within a bound whatever its clients are doing."""
from __future__ import annotations

import errno
import os
import random
import signal
import socket
import struct
import subprocess
import time

import pytest

from hermes import regs
from hermes.engine.asm import assemble_program
from hermes.vfio import protocol as P, uapi
from tests.vfio_devices import ServerProcess

#: Stall timeout given to the server: short, so that every stall test is quick.
STALL = 1.0
#: Bound on a well-behaved client's VERSION + register read after a hostile action. A hostile
#: client still connected may hold the device for one stall timeout plus the busy grace.
RESPONSIVE = STALL + 2.0 + 3.0
#: Bound on SIGTERM to exit.
SIGTERM_BOUND = 5.0

VERSION = P.encode_version(0, 2, {"max_msg_fds": 8})
READ_EHVER = P.encode_region_access(regs.EHVER, 0, 4)
EVENTFD_TRIGGER = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER


def msg(msg_id: int, cmd: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One encoded command."""
    return P.Message(msg_id, cmd, flags, 0, payload).encode()


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    """A connection to ``path`` (a full listen backlog is EAGAIN on UNIX sockets: retried)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def exchange(s: socket.socket, cmd: int, payload: bytes = b"", fds=(), msg_id: int = 1
             ) -> P.Message:
    P.send_message(s, P.Message(msg_id, cmd, 0, 0, payload, list(fds)))
    reply = P.recv_message(s)
    assert reply is not None, "the server closed the connection"
    reply.close_fds()
    return reply


def well_behaved(path: str, bound: float = RESPONSIVE) -> float:
    """A good client's VERSION + BAR0 read succeeds within ``bound`` seconds (retrying while
    the server answers EBUSY, or closes new connections because hostile ones fill its
    connection limit); returns the time it took."""
    t0 = time.monotonic()
    while True:
        s = connect(path)
        try:
            P.send_message(s, P.Message(1, P.VERSION, 0, 0, VERSION))
            reply = P.recv_message(s)
            if reply is not None and not reply.is_error:
                got = exchange(s, P.REGION_READ, READ_EHVER, msg_id=2)
                assert not got.is_error and got.payload[16:] == b"\1\0\0\0"
                return time.monotonic() - t0
            assert reply is None or reply.error_no == errno.EBUSY
        except (ConnectionResetError, BrokenPipeError):
            pass                        # refused at the connection limit
        finally:
            s.close()
        assert time.monotonic() - t0 < bound, "the server stayed busy"
        time.sleep(0.05)


def closed_by_server(s: socket.socket, bound: float) -> float:
    """Seconds until the server closes ``s`` (replies before that are ignored)."""
    t0 = time.monotonic()
    s.settimeout(bound)
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - t0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hostile") / "h.sock")
    server = ServerProcess(path, "--engines", "2", "--budget", "2000000",
                           "--stall-timeout", str(STALL))
    yield server
    server.stop()


@pytest.fixture
def srv(serve):
    """The shared server, checked to be responsive after the test."""
    assert serve.proc.poll() is None
    yield serve
    well_behaved(serve.path)
    assert serve.proc.poll() is None, serve.log()


# --- framing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("junk,closes", [
    (P.encode_header(1, P.VERSION, 3), True),                  # size below the header
    (b"\xff" * 64, True),                                      # garbage
    (P.encode_header(1, P.VERSION, 0xFFFFFFF0), True),         # absurd size before VERSION
    # the wedge
    (msg(1, P.VERSION, VERSION) + P.encode_header(2, P.REGION_WRITE, 0xFFFFFFF0), True),
    (msg(1, P.VERSION, VERSION) + P.encode_header(2, P.REGION_READ, P.MAX_MESSAGE_SIZE + 1), True),
    (msg(1, P.VERSION, VERSION) + P.encode_header(2, 0xFFFF, 16, 0x7), False),  # unknown command
])
def test_framing_errors(srv, junk, closes):
    s = connect(srv.path)
    s.sendall(junk)
    if closes:
        assert closed_by_server(s, 5.0) < 5.0
    else:
        assert not P.recv_message(s).is_error                        # VERSION
        assert P.recv_message(s).error_no == errno.ENOSYS             # the unknown command
        assert exchange(s, P.REGION_READ, READ_EHVER, msg_id=3).payload[16:] == b"\1\0\0\0"
    s.close()


def test_huge_size_after_version_does_not_wedge_the_server(srv):
    """The reproduction: after VERSION, a header announcing ~4 GiB and no body."""
    s = connect(srv.path)
    assert not exchange(s, P.VERSION, VERSION).is_error
    s.sendall(P.encode_header(7, P.REGION_WRITE, 0xFFFFFFF0))
    reply = P.recv_message(s)
    assert reply.is_error and reply.error_no == errno.E2BIG and reply.msg_id == 7
    assert closed_by_server(s, 2.0) < 2.0
    s.close()
    assert "exceeds the limit" in srv.log()


# --- stalls ------------------------------------------------------------------------------------

@pytest.mark.parametrize("negotiate", [False, True])
@pytest.mark.parametrize("cut", ["header", "body"])
def test_stall_inside_a_message_is_detected(srv, negotiate, cut):
    s = connect(srv.path)
    if negotiate:
        assert not exchange(s, P.VERSION, VERSION).is_error
    part = msg(9, P.REGION_WRITE, P.encode_region_access(regs.cmdreq(0), 0, 4, b"abcd"))
    s.sendall(part[:7] if cut == "header" else part[:20])
    detected = closed_by_server(s, STALL + 3)
    assert STALL - 0.1 <= detected < STALL + 1.5, detected
    s.close()


def test_silent_connection_is_dropped(srv):
    s = connect(srv.path)
    assert closed_by_server(s, STALL + 3) < STALL + 1.5
    s.close()


def test_client_that_never_reads_replies_is_dropped(srv):
    """A flood of reads whose replies are never read fills the socket; the server gives up on
    that client after the stall timeout instead of blocking in a send."""
    s = connect(srv.path)
    assert not exchange(s, P.VERSION, VERSION).is_error
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    burst = msg(3, P.REGION_READ, P.encode_region_access(0, 4, 1 << 16)) * 64
    s.settimeout(0.05)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < STALL + 4:
            s.sendall(burst)
    except (TimeoutError, BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass
    deadline = time.monotonic() + STALL + 6
    while "cannot send a reply" not in srv.log():
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.1)
    s.close()


# --- disconnects at every stage ----------------------------------------------------------------

SESSION = (msg(1, P.VERSION, VERSION)
           + msg(2, P.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
           + msg(3, P.DEVICE_GET_REGION_INFO, bytes(uapi.vfio_region_info(32, 0, 4, 0, 0, 0)))
           + msg(4, P.REGION_WRITE, P.encode_region_access(regs.cmdreq(0), 0, 4, b"wxyz"),
                 P.FLAG_NO_REPLY)
           + msg(5, P.REGION_READ, READ_EHVER) + msg(6, P.DEVICE_RESET))


@pytest.mark.parametrize("cut", sorted({0, 1, 15, 16, 17, 20, 30, 31, 32, 40, 48, 64, 100,
                                        len(SESSION) - 1, len(SESSION)}))
def test_disconnect_at_every_stage(srv, cut):
    s = connect(srv.path)
    s.sendall(SESSION[:cut])
    s.close()


def test_disconnect_with_eventfds_dma_and_a_runaway_program(srv):
    """Leaving with interrupts assigned, memory mapped and an endless program running: the next
    client gets the device promptly."""
    import threading

    import hermes.driver
    from hermes.transport.vfio_user import VfioUserTransport
    t = VfioUserTransport(srv.path)
    f = hermes.driver.attach(t).open()
    f.download_program(assemble_program("ja -1\nexit").to_bytes())
    f.pwrite(b"x", 0)
    runner = threading.Thread(target=lambda: pytest.raises(OSError, f.fsync), daemon=True)
    runner.start()
    time.sleep(0.2)
    with t._lock:                       # vanish mid-message without cleaning up
        t.sock.sendall(P.encode_header(9, P.REGION_WRITE, 64)[:8])
        t.sock.shutdown(socket.SHUT_RDWR)
    assert well_behaved(srv.path) < RESPONSIVE
    runner.join(10)
    t.close()


# --- fd abuse ----------------------------------------------------------------------------------

def test_fd_abuse_leaks_nothing(srv):
    s = connect(srv.path)
    before = None
    try:
        assert not exchange(s, P.VERSION, VERSION).is_error
        before = fd_count(srv.proc.pid)
        r, w = os.pipe()
        memfd = os.memfd_create("abuse")
        os.ftruncate(memfd, 4096)
        lsock = socket.socket(socket.AF_UNIX)
        dirfd = os.open("/", os.O_RDONLY)
        closed = os.memfd_create("closed-after-send")
        many = [os.eventfd(0) for _ in range(40)]

        def dma(addr: int) -> bytes:
            return bytes(P.DmaMap(32, 3, 0, addr, 4096))

        cases = [
            (P.DEVICE_SET_IRQS, bytes(uapi.vfio_irq_set(20, EVENTFD_TRIGGER, 2, 0, 40)), many),
            (P.REGION_READ, READ_EHVER, [r, w, memfd]),               # fds on a message taking none
            (P.DMA_MAP, dma(0x10000), [r]),                            # a pipe
            (P.DMA_MAP, dma(0x10000), [lsock.fileno()]),               # a socket
            (P.DMA_MAP, dma(0x10000), [dirfd]),                        # a directory
            (P.DMA_MAP, bytes(P.DmaMap(32, 3, 0, 0x10000, 1 << 20)), [memfd]),   # past its end
            (P.DMA_MAP, dma(0x10000), [memfd, memfd]),                 # two fds
            (P.DEVICE_SET_IRQS, bytes(uapi.vfio_irq_set(20, EVENTFD_TRIGGER, 2, 0, 1)), [memfd]),
            (P.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0), [closed]),
            (P.DEVICE_RESET, b"", [w]),
        ]
        for i, (cmd, payload, fds) in enumerate(cases):
            reply = exchange(s, cmd, payload, fds, msg_id=10 + i)
            assert reply.is_error, (i, P.COMMAND_NAMES[cmd])
            if i == 8:
                os.close(closed)        # the sender's copy goes; the server's must too
        # a valid mapping then its removal: nothing stays open either
        assert not exchange(s, P.DMA_MAP, dma(0x20000), [memfd], msg_id=40).is_error
        unmap = bytes(uapi.vfio_iommu_type1_dma_unmap(24, 0, 0x20000, 4096))
        assert not exchange(s, P.DMA_UNMAP, unmap, msg_id=41).is_error
        # (a retiring device may close its memfd meanwhile)
        assert fd_count(srv.proc.pid) <= before
        for fd in (r, w, memfd, dirfd, *many):
            os.close(fd)
        lsock.close()
    finally:
        s.close()


# --- two clients, floods -----------------------------------------------------------------------

def test_two_clients_at_once(srv):
    a = connect(srv.path)
    assert not exchange(a, P.VERSION, VERSION).is_error
    b = connect(srv.path)
    t0 = time.monotonic()
    reply = exchange(b, P.VERSION, VERSION)
    busy = time.monotonic() - t0
    assert reply.is_error and reply.error_no == errno.EBUSY and busy < 5.0
    assert closed_by_server(b, 2.0) < 2.0
    got = exchange(a, P.REGION_READ, READ_EHVER, msg_id=2)      # the holder still works
    assert got.payload[16:] == b"\1\0\0\0"
    a.close()
    b.close()


def test_connection_flood(srv):
    socks = [connect(srv.path) for _ in range(30)]
    try:
        # the silent ones are dropped after the stall timeout; then a good client gets in
        assert well_behaved(srv.path, STALL + RESPONSIVE) < STALL + RESPONSIVE
    finally:
        for s in socks:
            s.close()
    assert "connections are open already" in srv.log()


def test_flood_of_valid_small_messages(srv):
    s = connect(srv.path)
    assert not exchange(s, P.VERSION, VERSION).is_error
    posted = msg(5, P.REGION_WRITE, P.encode_region_access(regs.cmdreq(0), 0, 4, b"\1\2\3\4"),
                 P.FLAG_NO_REPLY)
    for _ in range(20):
        s.sendall(posted * 500)
    reads = 2000
    s.sendall(msg(6, P.REGION_READ, READ_EHVER) * reads)
    for _ in range(reads):
        reply = P.recv_message(s)
        assert reply is not None and not reply.is_error
    s.close()


def test_a_burst_mixing_register_accesses_with_other_messages_is_answered_in_order(srv):
    """Register accesses served in place, malformed ones and full-path commands in one send:
    each is answered as it would be alone, in order (posted writes and stray replies: none)."""
    s = connect(srv.path)
    assert not exchange(s, P.VERSION, VERSION).is_error
    req = regs.cmdreq(0)
    s.sendall(msg(10, P.REGION_READ, READ_EHVER)
              + msg(11, P.REGION_READ, READ_EHVER + b"x")                  # trailing data
              + msg(12, P.REGION_WRITE, P.encode_region_access(req, 0, 4, b"\1\2\3\4"),
                    P.FLAG_NO_REPLY)
              + msg(13, P.REGION_READ, P.encode_region_access(req, 0, 4))
              + msg(14, P.DEVICE_GET_INFO, bytes(uapi.vfio_device_info(16, 0, 0, 0, 0))[:16])
              + msg(99, P.REGION_READ, READ_EHVER, P.TYPE_REPLY)           # a stray reply
              + msg(15, P.REGION_WRITE, P.encode_region_access(req + 8, 0, 8, bytes(range(8))))
              + msg(16, P.REGION_READ, P.encode_region_access(req, 0, 16))
              + msg(17, P.REGION_READ, P.encode_region_access(regs.EHVER, 99, 4)))  # no region
    replies = [P.recv_message(s) for _ in range(7)]
    assert [r.msg_id for r in replies] == [10, 11, 13, 14, 15, 16, 17]
    assert replies[0].payload[16:] == b"\1\0\0\0"
    assert replies[1].is_error and replies[1].error_no == errno.EINVAL
    assert replies[2].payload[16:] == b"\1\2\3\4"
    assert not replies[3].is_error and len(replies[3].payload) == 16
    assert not replies[4].is_error and replies[4].payload == P.encode_region_access(req + 8, 0, 8)
    assert replies[5].payload[16:] == b"\1\2\3\4" + bytes(4) + bytes(range(8))
    assert replies[6].is_error
    s.close()


@pytest.mark.parametrize("doc", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"capabilities": {"max_msg_fds": true}}',
    b'{"capabilities": {"max_msg_fds": "8"}}',
    b'{"capabilities": {"max_data_xfer_size": 1e400}}',
    b'{"capabilities": []}',
    b'{"capabilities": {"x": "' + b"a" * 9000 + b'"}}',
    b'\xff\xfe{}',
])
def test_odd_version_json_is_a_protocol_error(srv, doc):
    s = connect(srv.path)
    reply = exchange(s, P.VERSION, struct.pack("<HH", 0, 2) + doc + b"\0")
    assert reply.is_error and reply.error_no == errno.EINVAL
    assert closed_by_server(s, 2.0) < 2.0
    s.close()
    assert "internal error" not in srv.log()


# --- SIGTERM whatever the clients do -----------------------------------------------------------

def test_sigterm_with_hostile_clients_connected(tmp_path):
    path = str(tmp_path / "t.sock")
    server = ServerProcess(path, "--engines", "2", "--stall-timeout", "30")
    stalled = connect(path)
    assert not exchange(stalled, P.VERSION, VERSION).is_error
    stalled.sendall(P.encode_header(2, P.REGION_WRITE, 64)[:9])           # mid-header, 30 s stall
    waiting = connect(path)
    waiting.sendall(msg(1, P.VERSION, VERSION))                           # waiting for the device
    silent = connect(path)                                                # says nothing
    time.sleep(0.3)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        rc = server.proc.wait(SIGTERM_BOUND)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        pytest.fail(f"SIGTERM took more than {SIGTERM_BOUND} s: {server.log()}")
    assert rc == 0 and not os.path.exists(path)
    assert time.monotonic() - t0 < SIGTERM_BOUND
    for s in (stalled, waiting, silent):
        s.close()
    server.stop()


# --- randomized volume -------------------------------------------------------------------------

@pytest.mark.volume
def test_random_hostile_sequences(srv):
    """Random mixes of valid messages, cut messages, bad sizes, fds and disconnects."""
    rng = random.Random(int(os.environ.get("HERMES_HOSTILE_SEED", "20261128")))
    pieces = [SESSION, msg(9, P.REGION_READ, READ_EHVER), msg(9, 99), P.encode_header(1, 1, 3),
              P.encode_header(1, P.REGION_WRITE, 0xFFFFFFF0), b"\0" * 16, os.urandom(64)]
    for _ in range(int(os.environ.get("HERMES_HOSTILE_COUNT", "300"))):
        s = connect(srv.path)
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        try:
            s.sendall(data[:rng.randint(0, len(data))])
        except OSError:
            pass
        if rng.random() < 0.3:
            eventfds = [os.eventfd(0) for _ in range(rng.randint(1, 20))]
            try:
                irqs = bytes(uapi.vfio_irq_set(20, EVENTFD_TRIGGER, 2, 0, len(eventfds)))
                P.send_message(s, P.Message(3, rng.choice([P.DEVICE_SET_IRQS, P.REGION_READ]),
                                            payload=irqs, fds=eventfds))
            except OSError:
                pass
            for fd in eventfds:
                os.close(fd)
        s.close()
    well_behaved(srv.path)

"""Commands on a Hermes device's engines: the engine pool, the request/response handshake, timeouts,
aborts, and ``RunControl`` (a run as the threads that may abort it see it)."""
from __future__ import annotations

import errno
import struct
import threading
import time
from collections.abc import Callable

from .. import regs
from ..transport.base import Transport
from .irq import Interrupts
from .protocol import DriverError, Response, error, run_word

#: Seconds a command (a run included) may take before the driver gives up with ETIMEDOUT.
DEFAULT_TIMEOUT = 60.0
#: Seconds to wait, after a command timed out and was aborted, for its engine to read idle.
DEFAULT_ABORT_TIMEOUT = 2.0
_BAR0 = regs.BAR_REGS
#: Shortest timeout under which a command may run in the waiting thread (``Transport.execute``):
#: such a run is bounded to milliseconds, well inside it, so it never needs the timeout's abort.
INLINE_MIN_TIMEOUT = 0.1
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
#: Request bytes 0..15, and 0..31, as one block write.
_REQ_HEAD = struct.Struct("<QQ")
_REQ_WORDS = struct.Struct("<QQQQ")
#: Where CTX_TRACE_LEN (u32) sits in the OUT bytes read from CTX_INSNS on.
_TRACE_LEN_AT = regs.CTX_TRACE_LEN - regs.CTX_INSNS
#: A u32 read in place (``int.from_bytes`` of a slice copies it first).
_U32 = struct.Struct("<I")


#: How a command past its timeout ended when an abort stopped it.
_ABORTED_IDLE = "the command was aborted; the engine is idle"


def _late(engine: int, word0: int, timeout: float) -> str:
    """The start of a timeout's message: which command on which engine, and the timeout."""
    return (f"engine {engine}: command {word0 >> 16:#06x} (opcode {word0 & 0xFF:#04x}) did not "
            f"complete within {timeout:g} s")


def _not_told(engine: int) -> None:
    """``started`` of a command that no ``RunControl`` follows."""


#: The run context's IN words as the bytes of one block write.
_CTX_WORDS = struct.Struct(f"<{regs.RunContextIn.SIZE // 8}Q")
#: Bytes of the OUT fields a run context's results are read in (whole 4-byte reads).
_OUT_READ = (regs.RunContextOut.SIZE + 3) & ~3


class RunControl:
    """One run of a file as the driver and other threads see it.

    The driver records the engine on which the run's command started, so ``abort`` (from any
    thread) writes EHCMDABORT to exactly that engine, and only while the command is there. With a
    run context it carries the IN words to write (``ctx``) and receives the OUT bytes and the
    printed text; ``timeout`` is the run's own timeout (None: the driver's).
    """

    # The state a run starts in is the class's: a run stores only what it changes (this is on
    # the path of every run).
    engine: int | None = None
    #: The engine the command last started on (kept after it ended, for the quarantine).
    last_engine: int | None = None
    aborted = False
    done = False
    #: After an interruption (KeyboardInterrupt...) during the command: whether its engine was
    #: seen idle afterwards.
    stopped: bool | None = None
    out = b""
    trace = b""

    def __init__(self, commands: Commands, ctx: tuple[int, ...] | None = None,
                 timeout: float | None = None):
        self._commands = commands
        self._lock = threading.Lock()
        self.ctx = ctx
        self.timeout = timeout

    def abort(self) -> bool:
        """Stop the run: now if its command runs, at its start if it has not started yet. False
        when the run is over or the device cannot abort commands (no EHCAP_ABORT)."""
        if not self._commands.can_abort:
            return False
        with self._lock:
            if self.done:
                return False
            self.aborted = True
            if self.engine is not None:
                self._commands.abort_engine(self.engine)
            return True

    def started(self, engine: int) -> None:
        """The command was started on ``engine`` (EHCMDEXEC written)."""
        # No lock (this is on the path of every run): ``abort`` stores ``aborted`` before it
        # reads ``engine``, this stores ``engine`` before it reads ``aborted``, so at least one
        # of them sends the abort (both may: the command was to stop either way). ``finished``,
        # which ends the window for aborts, runs after this in the same thread.
        self.engine = self.last_engine = engine
        if self.aborted:
            self._commands.abort_engine(engine)

    def finished(self) -> None:
        """The command is over (its engine is about to serve others): aborts no longer apply."""
        with self._lock:
            self.engine = None
            self.done = True


class _EnginePool:
    """Engines handed out one command at a time; an engine whose command timed out is set aside
    until its EHCMDEXEC byte reads 0 again."""

    def __init__(self, commands: Commands, count: int):
        self._commands = commands
        self._free = list(range(count - 1, -1, -1))
        self._stale: set[int] = set()
        # Entered through its lock (a C-level context manager, cheaper than the Condition's).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: Callers inside ``_cond.wait`` (changed under ``_cond``): a release notifies only then.
        self._waiting = 0
        self.count = count

    def acquire(self, timeout: float) -> int:
        """A free engine's number. Waits as long as it takes while engines run live commands
        (each has its own timeout); when only engines with timed-out commands remain, polls them
        for up to ``timeout`` seconds, then fails with ETIMEDOUT."""
        if not self._stale:
            # A free engine needs no lock: taking one is a single list operation (atomic).
            try:
                return self._free.pop()
            except IndexError:
                pass
        deadline = None
        with self._lock:
            if self._stale:
                # Also when other engines are free: a reclaimed engine ends the quarantine of the
                # slots its timed-out command held.
                self._reclaim()
            while True:
                try:   # (another thread may take the last free engine without the lock)
                    return self._free.pop()
                except IndexError:
                    pass
                if self._commands.closed:
                    raise error(errno.ENODEV, "the driver was closed")
                if self._stale:
                    self._reclaim()
                    if self._free:
                        continue
                if len(self._stale) == self.count:
                    now = time.monotonic()
                    deadline = deadline or now + timeout
                    if now >= deadline:
                        raise error(errno.ETIMEDOUT, f"no engine became free within {timeout:g} s"
                                    ": every engine is still busy with a command that timed out")
                    self._wait(min(0.005, deadline - now))
                else:
                    self._wait(0.005 if self._stale else None)

    def _wait(self, timeout: float | None) -> None:
        self._waiting += 1
        try:
            self._cond.wait(timeout)
        finally:
            self._waiting -= 1

    def _reclaim(self) -> None:
        for n in list(self._stale):
            if not self._commands.engine_busy(n):
                self._stale.discard(n)
                self._commands.engine_reclaimed(n)
                self._free.append(n)

    def release(self, n: int, healthy: bool = True) -> None:
        """Return engine ``n``; an unhealthy one (timed out) is set aside until it is idle."""
        with self._lock:
            if healthy:
                self._free.append(n)
            else:
                self._stale.add(n)
            if self._waiting:
                self._cond.notify()

    def wake_all(self) -> None:
        """Wake every waiter (the driver is closing)."""
        with self._cond:
            self._cond.notify_all()


class Commands:
    """The command path of one device: each command goes to the first free engine (a command
    waits for one), its response is checked, and a command past its timeout is aborted.

    ``on_reclaimed(engine)`` is called when an engine set aside after a timeout reads idle again
    (the slots its command held may be released then).
    """

    def __init__(self, transport: Transport, geometry: regs.Geometry, irq: Interrupts, *,
                 timeout: float = DEFAULT_TIMEOUT, abort_timeout: float = DEFAULT_ABORT_TIMEOUT,
                 on_reclaimed: Callable[[int], None] = lambda engine: None):
        self.transport = transport
        self.geometry = geometry
        self.irq = irq
        self.timeout = timeout
        self.abort_timeout = abort_timeout
        self._on_reclaimed = on_reclaimed
        # A transport with its own read_block (one message for a vfio-user client) gets the
        # 16-byte response in one access; others in two 8-byte reads rather than four 4-byte.
        self._block_reads = type(transport).read_block is not Transport.read_block
        # A transport with its own read_many (vfio-user) reads the state and the response of a
        # completed command in one exchange.
        self._many_reads = type(transport).read_many is not Transport.read_many
        # A transport whose block writes are one cheap call (in-process) gets the request and
        # the run context in one write each rather than one per 8 bytes.
        self._block_writes = bool(getattr(transport, "cheap_block_writes", False))
        n = geometry.engines
        self._req_at = [regs.cmdreq(e) for e in range(n)]
        self._ctrl_at = [regs.cmdctrl(e) for e in range(n)]
        self._ctx_at = [regs.cmdctx(e) for e in range(n)]
        self._res_at = [regs.cmdres(e) for e in range(n)]
        self._pool = _EnginePool(self, geometry.engines)
        #: Request bytes 16..31 last written to each engine (0 after probe, see _execute).
        self._req_rest = [1] * geometry.engines  # unknown at attach: the first command writes them
        self._lock = threading.Lock()
        self._next_id = 1
        self.closed = False

    def close(self) -> None:
        """Refuse every later command and wake the callers waiting for an engine."""
        self.closed = True
        self._pool.wake_all()

    @property
    def can_abort(self) -> bool:
        """Whether the device stops running commands on request (EHCAP_ABORT)."""
        return bool(self.geometry.capabilities & regs.EHCAP_ABORT)

    def next_command_id(self) -> int:
        """A fresh u16 command id for commands issued on the driver's own behalf."""
        with self._lock:
            i = self._next_id
            self._next_id = (i + 1) & 0xFFFF
            return i

    def command(self, opcode: int, payload: bytes = b"", *, cmd_id: int | None = None,
                timeout: float | None = None) -> Response:
        """Run one raw command on a free engine and return its response (status not interpreted).

        ``payload`` is the command-specific part (request bytes 8..31). Raises ETIMEDOUT when the
        engine never completes, EBADE when the response carries another command id, EIO when the
        completion handshake is broken.
        """
        if len(payload) > regs.EHCMDREQ_LEN - 8:
            raise ValueError(f"command payload is {len(payload)} bytes; at most 24 fit")
        if cmd_id is None:
            cmd_id = self.next_command_id()
        body = bytes(payload).ljust(24, b"\0")
        return self._submit(opcode, cmd_id & 0xFFFF, int.from_bytes(body[:8], "little"),
                            int.from_bytes(body[8:], "little"),
                            self.timeout if timeout is None else timeout)

    def run_program(self, prog_slot: int, data_slot: int, length: int, *,
                    cmd_id: int | None = None, timeout: float | None = None,
                    control: RunControl | None = None) -> Response:
        """Run Program; returns the raw response (check ``status`` yourself).

        With a ``control`` whose ``ctx`` is set, the run takes its parameters from the engine's
        run context (RUN_FLAG_CTX) and its OUT fields and text land in ``control``.
        """
        if cmd_id is None:
            cmd_id = self.next_command_id()
        flags = regs.RUN_FLAG_CTX if control is not None and control.ctx is not None else 0
        return self._submit(regs.CMD_RUN_PROGRAM, cmd_id & 0xFFFF,
                            run_word(prog_slot, data_slot, length, flags), 0,
                            self.timeout if timeout is None else timeout, control)

    def abort_engine(self, engine: int) -> None:
        """Write EHCMDABORT to ``engine`` (its running command completes with status 0x07)."""
        self.transport.write(_BAR0, regs.cmdctrl(engine) + regs.EHCMDABORT, 1, 1)

    def engine_busy(self, engine: int) -> bool:
        """Whether ``engine``'s EHCMDEXEC byte reads non-zero (a command is running there)."""
        return bool(self.transport.read(_BAR0, regs.cmdctrl(engine) + regs.EHCMDEXEC, 1))

    def engine_reclaimed(self, engine: int) -> None:
        """``engine``, set aside after a timeout, reads idle: drop the interrupt its command left
        and tell ``on_reclaimed``."""
        self.irq.clear_engine(engine)
        self._on_reclaimed(engine)

    def _submit(self, opcode: int, cmd_id: int, word1: int, rest: int,
                timeout: float, control: RunControl | None = None) -> Response:
        """Send request ``opcode | cmd_id``, ``word1`` (bytes 8..15), ``rest`` (16..31)."""
        if self.closed:
            raise error(errno.ENODEV, "the driver was closed")
        engine = self._pool.acquire(timeout)
        healthy = False
        try:
            response = self._execute(engine, opcode | cmd_id << 16, word1, rest, timeout,
                                     control)
            healthy = True
        except DriverError as exc:
            # An engine seen idle after its command timed out is as good as any other.
            healthy = exc.command_stopped is True
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt...) while the command may still run: stop it before
            # the engine, or the caller's slots, serve anyone else.
            healthy = self._stop_command(engine)[0]
            if control is not None:
                control.stopped = healthy
            raise
        finally:
            if control is not None:
                control.finished()
            self._pool.release(engine, healthy)
        if response.cmd_id != cmd_id:
            raise error(errno.EBADE, f"engine {engine} answered command id {response.cmd_id:#06x}"
                        f" to command {cmd_id:#06x} (opcode {opcode:#04x})", response)
        return response

    def _execute(self, engine: int, word0: int, word1: int, rest: int, timeout: float,
                 control: RunControl | None = None) -> Response:
        """The handshake on one engine (held exclusively by the caller)."""
        t = self.transport
        vector = self.irq.engine_vectors[engine]
        if vector is not None:
            t.irq_clear(vector)  # an interrupt now can only be this command's
        ctx = control.ctx if control is not None else None
        base = self._req_at[engine]
        # Bytes 16..31 are reserved for every command this driver sends: write them only when
        # they change (a raw command with a long payload), saving two accesses per command.
        long_req = rest or self._req_rest[engine]
        if self._block_writes:
            if ctx is not None:
                t.write_block(_BAR0, self._ctx_at[engine], _CTX_WORDS.pack(*ctx))
            t.write_block(_BAR0, base, _REQ_WORDS.pack(word0, word1, rest & _MASK64, rest >> 64)
                          if long_req else _REQ_HEAD.pack(word0, word1))
        else:
            if ctx is not None:
                at = self._ctx_at[engine]
                for k, word in enumerate(ctx):
                    t.write(_BAR0, at + 8 * k, 8, word)
            t.write(_BAR0, base, 8, word0)
            t.write(_BAR0, base + 8, 8, word1)
            if long_req:
                t.write(_BAR0, base + 16, 8, rest & _MASK64)
                t.write(_BAR0, base + 24, 8, rest >> 64)
        if long_req:
            self._req_rest[engine] = rest
        ctrl = self._ctrl_at[engine]
        started = control.started if control is not None else _not_told
        inline = timeout >= INLINE_MIN_TIMEOUT
        begun = time.monotonic() if inline else 0.0
        if inline and t.execute(ctrl, engine, started, timeout):
            # Completed inside the call (an in-process device ran it in this thread): its
            # interrupt is pending already, and EHCMDDONE could not have been stale.
            fired = vector is None or t.irq_wait(vector, 0) or self.irq.wait(vector, timeout)
        else:
            inline = False
            if timeout < INLINE_MIN_TIMEOUT:
                t.write(_BAR0, ctrl, 1, 1)  # EHCMDEXEC
                started(engine)
            state = t.read(_BAR0, ctrl, 2)
            if state == 0x0101:
                # Running but DONE not cleared: a waiter could take the previous result for
                # this one (the upstream stale-DONE bug). Refuse rather than guess.
                raise error(errno.EIO, f"engine {engine}: EHCMDDONE still set after the start "
                            f"of command {word0 >> 16:#06x}; the device did not clear it")
            if vector is not None:
                fired = self.irq.wait(vector, timeout)
            else:
                fired = self._poll_done(engine, timeout)
        if not fired:
            stopped, how = self._stop_command(engine)
            if stopped:
                return self._timed_out(engine, word0, timeout, control, how)
            raise DriverError(errno.ETIMEDOUT, f"{_late(engine, word0, timeout)}; {how}",
                              engine=engine, command_stopped=stopped)
        got = None
        if self._many_reads:
            # State, response (and a run context's OUT fields) in one exchange: BAR0 reads have
            # no side effects, so reading them before the state is checked changes nothing.
            reads = [(ctrl, 2), (regs.cmdres(engine), regs.EHCMDRES_LEN)]
            if ctx is not None:
                reads.append((self._ctx_at[engine] + regs.CTX_INSNS, _OUT_READ))
            head, *got = t.read_many(_BAR0, reads)
            state = int.from_bytes(head, "little")
        else:
            state = t.read(_BAR0, ctrl, 2)
        if state != 0x0100:
            raise error(errno.EIO, f"engine {engine}: interrupt without completion (EHCMDEXEC "
                        f"{state & 0xFF}, EHCMDDONE {state >> 8 & 0xFF})")
        response = self._read_results(engine, control, got)
        if (inline and response.status == regs.STATUS_ABORTED
                and time.monotonic() - begun >= timeout):
            # Run in this thread and stopped at the timeout by the transport (Transport.execute),
            # as _stop_command stops a command run elsewhere.
            return self._timed_out(engine, word0, timeout, control, _ABORTED_IDLE, response)
        return response

    def _read_results(self, engine: int, control: RunControl | None,
                      got: list[bytes] | None = None) -> Response:
        """The response of ``engine``'s completed command, and a run context's OUT fields and
        printed text into ``control`` (``got``: the response and OUT fields read already)."""
        if got:
            raw = got[0]
        elif self._block_reads:   # (a whole number of 4-byte reads: one block read is all)
            raw = self.transport.read_block(_BAR0, self._res_at[engine], regs.EHCMDRES_LEN)
        else:
            raw = self._read_bytes(self._res_at[engine], regs.EHCMDRES_LEN)
        response = Response.unpack(raw)
        if control is not None and control.ctx is not None:
            if got:
                out = got[1][:regs.RunContextOut.SIZE]
            elif self._block_reads:
                out = self.transport.read_block(_BAR0, self._ctx_at[engine] + regs.CTX_INSNS,
                                                _OUT_READ)[:regs.RunContextOut.SIZE]
            else:
                out = self._read_bytes(self._ctx_at[engine] + regs.CTX_INSNS,
                                       regs.RunContextOut.SIZE)
            n = min(_U32.unpack_from(out, _TRACE_LEN_AT)[0], regs.TRACE_LIMIT)
            control.out = out
            control.trace = self._read_bytes(regs.trace_buffer(engine), n) if n else b""
        return response

    def _read_bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes of BAR0 at the 8-aligned ``offset``: one block read where the
        transport has one (a single vfio-user message), else 8-byte reads."""
        t = self.transport
        if self._block_reads:
            return t.read_block(_BAR0, offset, (length + 3) & ~3)[:length]
        return b"".join(t.read(_BAR0, offset + i, 8).to_bytes(8, "little")
                        for i in range(0, length, 8))[:length]

    def _timed_out(self, engine: int, word0: int, timeout: float, control: RunControl | None,
                   how: str, response: Response | None = None) -> Response:
        """A command past its timeout whose engine reads idle again (``how`` says why):
        ETIMEDOUT. A run with a timeout of its own gets its response (a run that finished as
        the abort arrived is simply returned) or the pc it stopped at; ``response``: read
        already."""
        if control is not None and control.timeout is not None:
            if response is None:
                response = self._read_results(engine, control)
            if response.status != regs.STATUS_ABORTED:
                return response
            raise DriverError(errno.ETIMEDOUT, f"the run exceeded its timeout of "
                              f"{control.timeout:g} s and was aborted at pc {response.value}",
                              response, engine=engine, command_stopped=True)
        raise DriverError(errno.ETIMEDOUT, f"{_late(engine, word0, timeout)}; {how}",
                          engine=engine, command_stopped=True)

    def _poll_done(self, engine: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ctrl = regs.cmdctrl(engine)
        delay = 0.00002
        while True:
            state = self.transport.read(_BAR0, ctrl, 2)
            if not state & 0xFF and state >> 8 & 0xFF:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.002)

    def _stop_command(self, engine: int) -> tuple[bool, str]:
        """After a timeout: abort the engine's command if the device can (EHCAP_ABORT) and wait up
        to ``abort_timeout`` for the engine to read idle. Returns (idle, what happened)."""
        can_abort = self.can_abort
        try:
            if can_abort:
                self.abort_engine(engine)
            deadline = time.monotonic() + (self.abort_timeout if can_abort else 0)
            delay = 0.0002
            while self.engine_busy(engine):
                now = time.monotonic()
                if now >= deadline:
                    break
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.01)
            else:
                self.irq.clear_engine(engine)   # the aborted command's completion interrupt
                return True, (_ABORTED_IDLE if can_abort else
                              "the command has finished since; the engine is idle")
        except OSError as exc:
            return False, f"the engine could not be checked ({exc})"
        if can_abort:
            return False, (f"the engine was still busy {self.abort_timeout:g} s after an abort "
                           "request")
        return False, "the device cannot abort commands and the engine is still busy"

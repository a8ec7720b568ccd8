"""One open device file: owns at most one program slot and one data slot, like /dev/hermesX."""
from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from .. import regs
from .dma import SlotDma
from .engines import Commands, RunControl
from .protocol import (
    HERMES_DOWNLOAD_PROG_IOCTL,
    HERMES_RUN_IOCTL,
    RWF_APPEND,
    RWF_DSYNC,
    RWF_HIPRI,
    RWF_NOWAIT,
    RWF_SYNC,
    DriverError,
    Response,
    RunArgs,
    RunOutcome,
    error,
    flag_names,
    status_error,
)
from .slots import SlotAllocator

_UNSUPPORTED_WRITE_FLAGS = RWF_DSYNC | RWF_NOWAIT | RWF_APPEND | RWF_HIPRI
_SEEK_SET, _SEEK_CUR, _SEEK_END = 0, 1, 2
_ELF_MAGIC = b"\x7fELF"
#: Run Program lengths are multiples of this (device rule D8: ELF objects are zero-padded).
_PROGRAM_ALIGN = 8


@dataclass(frozen=True)
class DownloadProg:
    """The argument of ``HERMES_DOWNLOAD_PROG_IOCTL``: the program bytes (raw or ELF) and flags."""

    prog: bytes
    flags: int = 0


class HermesFile:
    """An open file on the device (the ``/dev/hermesX`` semantics of the reference driver).

    Every failure is an ``OSError`` (a ``DriverError``) with the errno of the interface table.
    Calls on one file are serialized; different files work concurrently. ``Driver.open`` makes
    one from the driver's parts: its geometry, the command path that runs its programs, the slot
    allocator and the slot DMA; ``on_close(file)`` is called once the file is closed.
    """

    def __init__(self, geometry: regs.Geometry, commands: Commands, slots: SlotAllocator,
                 dma: SlotDma, *, on_close: Callable[[HermesFile], None] = lambda f: None):
        self._geo = geometry
        self._commands = commands
        self._slots = slots
        self._dma = dma
        self._on_close = on_close
        self._lock = threading.Lock()
        self._prog_slot: int | None = None
        self._prog_len = 0
        self._data_slot: int | None = None
        self._pos = 0
        self._next_id = 1
        self.closed = False
        #: Why the file's slots were taken away (a run that timed out and could not be stopped).
        self._lost: str | None = None
        #: The response of the last command this file sent (for the library's error details).
        self.last_response: Response | None = None
        #: The run in progress, for ``abort`` from other threads (None between runs).
        self._control: RunControl | None = None

    # --- helpers ----------------------------------------------------------------------------------
    def _cmd_id(self) -> int:
        i = self._next_id
        self._next_id = (i + 1) & 0xFFFF
        return i

    def _check_open(self) -> None:
        if self.closed:
            raise error(errno.EBADF, "the file is closed")
        if self._lost is not None:
            raise error(errno.EIO, self._lost)

    def _need_program(self, what: str) -> None:
        if self._prog_slot is None:
            raise error(errno.EBADFD, f"{what} before a program was downloaded")

    def _ensure_data_slot(self) -> int:
        if self._data_slot is None:
            self._data_slot = self._slots.request(regs.SLOT_DATA, cmd_id=self._cmd_id())
        return self._data_slot

    def _clamp(self, offset: int, length: int) -> int:
        """Bytes of a transfer of ``length`` at ``offset`` that fit in the data slot."""
        return max(0, min(length, self._geo.data_slot_size - offset))

    @property
    def program_slot(self) -> int | None:
        """The program slot this file owns, if any."""
        return self._prog_slot

    @property
    def data_slot(self) -> int | None:
        """The data slot this file owns, if any."""
        return self._data_slot

    # --- ioctl ------------------------------------------------------------------------------------
    def ioctl(self, request: int, arg: object) -> int | RunOutcome:
        """``HERMES_DOWNLOAD_PROG_IOCTL`` with a ``DownloadProg`` (returns 0), or
        ``HERMES_RUN_IOCTL`` with a ``RunArgs`` (returns the ``RunOutcome``); any other request
        is EINVAL."""
        with self._lock:
            self._check_open()
            if request == HERMES_RUN_IOCTL:
                return self._run_ex(arg)
            if request != HERMES_DOWNLOAD_PROG_IOCTL:
                raise error(errno.EINVAL, f"unknown ioctl request {request:#x} (the device knows "
                            f"HERMES_DOWNLOAD_PROG_IOCTL {HERMES_DOWNLOAD_PROG_IOCTL:#x} and "
                            f"HERMES_RUN_IOCTL {HERMES_RUN_IOCTL:#x})")
            if not isinstance(arg, DownloadProg):
                raise error(errno.EINVAL, f"HERMES_DOWNLOAD_PROG_IOCTL takes a DownloadProg, "
                            f"not {type(arg).__name__}")
            return self._download(arg.prog, arg.flags)

    def download_program(self, prog: bytes, flags: int = 0) -> int:
        """Copy ``prog`` (raw instructions or an ELF object) into this file's program slot."""
        # the download request's result is always the int 0 (only HERMES_RUN_IOCTL returns an
        # outcome)
        return cast(int, self.ioctl(HERMES_DOWNLOAD_PROG_IOCTL, DownloadProg(prog, flags)))

    def _download(self, prog: bytes, flags: int) -> int:
        if flags != 0:
            raise error(errno.EINVAL, f"download flags must be 0, got {flags:#x}")
        view = memoryview(prog).cast("B")
        size = self._geo.program_slot_size
        if len(view) > size:
            raise error(errno.EINVAL, f"program is {len(view)} bytes, larger than a program slot "
                        f"({size} bytes)")
        if not len(view):
            raise error(errno.EINVAL, "program is empty (0 bytes)")
        pad = -len(view) % _PROGRAM_ALIGN
        if pad and view[:4] == _ELF_MAGIC:
            # The device runs whole multiples of 8 bytes (D8); an ELF object's size is not tied
            # to that, so it is zero-padded (the slot size is a multiple of 8: it still fits).
            view = memoryview(view.tobytes() + bytes(pad))
        if self._prog_slot is None:
            self._prog_slot = self._slots.request(regs.SLOT_PROGRAM, cmd_id=self._cmd_id())
        self._prog_len = 0  # a failed copy leaves no runnable program behind
        self._dma.write_program(self._prog_slot, view)
        self._prog_len = len(view)
        return 0

    # --- data -------------------------------------------------------------------------------------
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Copy ``data`` into the data slot at ``offset`` (truncated at the slot's end)."""
        with self._lock:
            return self._pwrite(memoryview(data).cast("B"), offset)

    def _pwrite(self, view: memoryview, offset: int) -> int:
        self._check_open()
        if offset < 0:
            raise error(errno.EINVAL, f"negative write offset {offset}")
        self._need_program("write")
        slot = self._ensure_data_slot()
        n = self._clamp(offset, len(view))
        if n:
            self._dma.write_data(slot, offset, view[:n])
        return n

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes of the data slot at ``offset`` (truncated at the slot's end)."""
        with self._lock:
            slot, n = self._pread_len(size, offset)
            return self._dma.read_data(slot, offset, n)

    def _pread_len(self, size: int, offset: int) -> tuple[int, int]:
        """(data slot, bytes a read of ``size`` at ``offset`` gets), or the read's errno."""
        self._check_open()
        if offset < 0:
            raise error(errno.EINVAL, f"negative read offset {offset}")
        if size < 0:
            raise error(errno.EINVAL, f"negative read size {size}")
        self._need_program("read")
        if self._data_slot is None:
            raise error(errno.ENODATA, "read before any data was written")
        return self._data_slot, self._clamp(offset, size)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """``pwrite`` at the file position, which advances by the bytes written."""
        with self._lock:
            n = self._pwrite(memoryview(data).cast("B"), self._pos)
            self._pos += n
            return n

    def read(self, size: int) -> bytes:
        """``pread`` at the file position, which advances by the bytes read."""
        with self._lock:
            slot, n = self._pread_len(size, self._pos)
            out = self._dma.read_data(slot, self._pos, n)
            self._pos += n
            return out

    def seek(self, offset: int, whence: int = _SEEK_SET) -> int:
        """Move the file position (SEEK_SET / SEEK_CUR / SEEK_END = the data slot's end)."""
        with self._lock:
            self._check_open()
            base = {_SEEK_SET: 0, _SEEK_CUR: self._pos,
                    _SEEK_END: self._geo.data_slot_size}.get(whence)
            if base is None or base + offset < 0:
                raise error(errno.EINVAL, f"invalid seek (offset {offset}, whence {whence})")
            self._pos = base + offset
            return self._pos

    def tell(self) -> int:
        """The file position."""
        return self._pos

    @staticmethod
    def _check_vec(flags: int, offset: int, unsupported: int, what: str) -> None:
        if flags & unsupported or flags & ~(unsupported | RWF_SYNC):
            raise error(errno.EOPNOTSUPP, f"{what} flags {flag_names(flags)} are not supported")
        if offset == -1:
            raise error(errno.EOPNOTSUPP, f"{what} at offset -1 (the file position) is not "
                        "supported; pass an explicit offset")
        if offset < 0:
            raise error(errno.EINVAL, f"negative {what} offset {offset}")

    def pwritev(self, buffers: Iterable[bytes | bytearray | memoryview], offset: int,
                flags: int = 0) -> int:
        """Gather ``buffers`` into the data slot at ``offset``; with ``RWF_SYNC`` then run.

        Returns the bytes written. With RWF_SYNC a failing run (non-zero r0 included) raises
        ENOEXEC after the data was written.
        """
        self._check_vec(flags, offset, _UNSUPPORTED_WRITE_FLAGS, "pwritev")
        data = b"".join(memoryview(b).cast("B") for b in buffers)
        with self._lock:
            self._check_open()
            if flags & RWF_SYNC:
                # Refuse before writing anything when a run could not happen anyway.
                self._need_program("pwritev with RWF_SYNC")
            n = self._pwrite(memoryview(data), offset)
            if flags & RWF_SYNC:
                self._run_checked()
            return n

    def preadv(self, buffers: Iterable[bytearray | memoryview], offset: int,
               flags: int = 0) -> int:
        """Scatter the data slot at ``offset`` into writable ``buffers``; returns the bytes read."""
        self._check_vec(flags, offset, _UNSUPPORTED_WRITE_FLAGS | RWF_SYNC, "preadv")
        views = [memoryview(b).cast("B") for b in buffers]
        for v in views:
            if v.readonly:
                raise error(errno.EFAULT, "preadv buffer is not writable")
        with self._lock:
            slot, total = self._pread_len(sum(len(v) for v in views), offset)
            pos = 0
            for v in views:
                n = min(len(v), total - pos)
                if n <= 0:
                    break
                # straight into the caller's buffer (one copy, no intermediate bytes)
                self._dma.read_data_into(slot, offset + pos, v[:n])
                pos += n
            return total

    # --- running ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the program on the data slot; returns r0 (any value; see ``fsync`` for the 0 rule).

        Failures: EBADFD without program or data, ENOEXEC when the device reports an eBPF error
        (the response is in ``last_response``), ETIMEDOUT, EBADE, EIO.
        """
        with self._lock:
            return self._run()

    def _run(self) -> int:
        self._check_open()
        self._need_program("run")
        if self._data_slot is None:
            raise error(errno.EBADFD, "run before any data was written")
        control = RunControl(self._commands)
        response = self._send_run(control)
        if response.status != regs.STATUS_SUCCESS:
            raise self._run_error(response, control)
        return response.value

    def run_ex(self, run: RunArgs, *, cancel: object | None = None) -> RunOutcome:
        """Run the program with a run context (``HERMES_RUN_IOCTL``): input length, window,
        arguments, budget, entry symbol and timeout from ``run``; returns the ``RunOutcome``.

        ``cancel``: a flag with ``watch(hook) -> token`` / ``unwatch(token)`` (a
        ``hermes.engine.Cancel``); setting it, even before the run has started, aborts the run
        as ``abort`` does (a flag set already aborts it at its start).

        Failures: EOPNOTSUPP on a device without EHCAP_RUNCTX, EINVAL for bad ``run`` fields
        (before anything is sent), EBADFD without program or data, ENOEXEC when the program
        failed (``DriverError.outcome`` holds the fault fields), ETIMEDOUT past ``run.timeout``
        (the run was aborted), ECANCELED after ``abort``, EBADE, EIO.
        """
        with self._lock:
            self._check_open()
            return self._run_ex(run, cancel)

    def run_context(self, input_len: int, window: int, args: tuple[int, int, int],
                    budget: int, entry: int, timeout: float | None, *,
                    cancel: object | None = None) -> RunOutcome:
        """``run_ex`` for a caller that has checked the run's fields itself, as the library
        does: the same run, outcome and failures, without a ``RunArgs`` to build and check
        again. The fields are those of ``RunArgs`` (``args``: exactly three), each taken modulo
        the width of its register field; the device refuses a window past the data slot or an
        input past the window (EINVAL)."""
        with self._lock:
            self._check_open()
            self._need_runctx()
            a0, a1, a2 = args
            return self._run_words(
                regs.RunContextIn.words(input_len, window, a0, a1, a2, budget, entry),
                timeout, cancel)

    def _need_runctx(self) -> None:
        if not self._geo.capabilities & regs.EHCAP_RUNCTX:
            raise error(errno.EOPNOTSUPP, "the device has no run context (EHCAP_RUNCTX is clear "
                        "in EHCAP): it runs programs only on the whole data slot, without "
                        "arguments")

    def _run_ex(self, run: object, cancel: object | None = None) -> RunOutcome:
        if not isinstance(run, RunArgs):
            raise error(errno.EINVAL, f"HERMES_RUN_IOCTL takes a RunArgs, not "
                        f"{type(run).__name__}")
        self._need_runctx()
        return self._run_words(run.context_words(self._geo.data_slot_size), run.timeout,
                               cancel)

    def _run_words(self, words: tuple[int, ...], timeout: float | None,
                   cancel: object | None) -> RunOutcome:
        """Run with the run context IN ``words`` (checked), under the file's lock."""
        if self._prog_slot is None:
            self._need_program("run")
        if self._data_slot is None:
            raise error(errno.EBADFD, "run before any data was written")
        control = RunControl(self._commands, words, timeout)
        try:
            response = self._send_run(control, cancel)
        except DriverError as exc:
            if control.out and exc.response is not None:
                exc.outcome = RunOutcome.parse(exc.response, control.out, control.trace)
            raise
        outcome = RunOutcome.parse(response, control.out, control.trace)
        if response.status != regs.STATUS_SUCCESS:
            failure = self._run_error(response, control)
            failure.outcome = outcome
            raise failure
        return outcome

    def _send_run(self, control: RunControl, cancel: object | None = None) -> Response:
        """Run Program under ``control`` (published for ``abort``, watched by ``cancel``);
        quarantines the slots when the run may still be going after a timeout or an
        interruption."""
        self._control = control
        token = cancel.watch(control.abort) if cancel is not None else None  # type: ignore
        prog, data = self._prog_slot, self._data_slot
        assert prog is not None and data is not None  # _run_ex refused a file without them
        try:
            response = self._commands.run_program(
                prog, data, self._prog_len,
                cmd_id=self._cmd_id(), timeout=control.timeout, control=control)
        except DriverError as exc:
            if exc.command_stopped is False:
                raise self._quarantine(exc) from None
            raise
        except BaseException:
            if control.stopped is False and control.last_engine is not None:
                self._quarantine_slots(control.last_engine, "was interrupted")
            raise
        finally:
            self._control = None
            if cancel is not None:
                cancel.unwatch(token)  # type: ignore[attr-defined]
        self.last_response = response
        return response

    def _run_error(self, response: Response, control: RunControl) -> DriverError:
        if response.status == regs.STATUS_ABORTED and control.aborted:
            return error(errno.ECANCELED, f"the run was aborted (HermesFile.abort) at pc "
                         f"{response.value}", response)
        return status_error(f"Run Program (program slot {self._prog_slot}, data slot "
                            f"{self._data_slot})", response)

    def abort(self) -> bool:
        """Abort this file's run in progress; callable from any thread while another one is
        inside ``run``/``run_ex``/``fsync`` (it never waits for the file's lock). That call then
        fails with ECANCELED. Returns False when no run is in progress or the device cannot abort
        commands (no EHCAP_ABORT)."""
        control = self._control
        return control.abort() if control is not None else False

    def _quarantine(self, exc: DriverError) -> DriverError:
        """The run may still be using this file's slots after a timeout: quarantine them."""
        held = self._quarantine_slots(exc.engine, "timed out")  # type: ignore[arg-type]
        return DriverError(errno.ETIMEDOUT, f"{exc.strerror}; {held}", engine=exc.engine,
                           command_stopped=False)

    def _quarantine_slots(self, engine: int, why: str) -> str:
        """Hand this file's slots to the driver's quarantine (released only once ``engine``
        reads idle) and fail every later call but close; returns what is held."""
        slots = [(regs.SLOT_PROGRAM, self._prog_slot), (regs.SLOT_DATA, self._data_slot)]
        self._slots.quarantine(engine, slots)  # type: ignore[arg-type]
        self._prog_slot = self._data_slot = None
        held = (f"program slot {slots[0][1]} and data slot {slots[1][1]} are quarantined until "
                f"engine {engine} is idle")
        self._lost = f"{held}: a run on them {why} and could not be stopped"
        return held

    def _run_checked(self) -> None:
        r0 = self._run()
        if r0:
            raise error(errno.ENOEXEC, f"program returned r0 = {r0:#x}; a run must return 0",
                        self.last_response)

    def fsync(self) -> None:
        """Run the program on the data slot; a non-zero r0 fails with ENOEXEC."""
        with self._lock:
            self._run_checked()

    # --- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Release both slots (idempotent). A release that times out (engine wedged) is deferred
        to the driver; any other release error is raised after both tries."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            first: OSError | None = None
            for kind, slot in ((regs.SLOT_PROGRAM, self._prog_slot),
                               (regs.SLOT_DATA, self._data_slot)):
                if slot is None:
                    continue
                try:
                    self._slots.release(kind, slot, cmd_id=self._cmd_id())
                except OSError as exc:
                    if exc.errno == errno.ETIMEDOUT:
                        self._slots.defer_release(kind, slot)  # not lost: retried later
                    else:
                        first = first or exc
            self._prog_slot = self._data_slot = None
        self._on_close(self)
        if first is not None:
            raise first

    def __enter__(self) -> HermesFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ("closed" if self.closed
                 else f"prog slot {self._prog_slot}, data slot {self._data_slot}")
        return f"<HermesFile {state}>"

"""The NVMe controller model: BAR0 registers, doorbells, queues in host memory, admin, MSI-X."""
from __future__ import annotations

import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable

from ... import engine as _engine, nvme_regs as N
from .compute import CommandError, ComputeNamespace, Limits, MemoryCommands, MemoryNamespace, check
from .prp import TransferError, gather, gather_into, prp_runs, scatter

#: BAR0 size: registers, the doorbells at stride 4 from 1000h, the MSI-X table and PBA.
BAR0_SIZE = 0x4000
NUM_VECTORS = 32
#: I/O queue pairs at most: their doorbells must end before the MSI-X table in BAR0.
MAX_IO_QUEUES = (N.MSIX_TABLE_OFFSET - N.REG_DBS) // 8 - 1
#: MDTS: 2^8 minimum pages (1 MiB with 4 KiB pages) per command.
MDTS = 8
#: ACL and AERL (0's based): 4 Aborts and 4 Asynchronous Event Requests outstanding.
ABORT_LIMIT, AER_LIMIT = 3, 3
#: Error log entries kept (ELPE + 1).
ERROR_LOG_ENTRIES = 64
#: CAP.TO and CRTO in 500 ms units: the time a host should allow for ready transitions.
READY_TIMEOUT_UNITS = 10
#: Longest a disable waits for a command in progress (aborted first) to finish, in seconds.
QUIESCE_TIMEOUT = 10.0
COMPUTE_NSID = 1
#: Config space of a PCI function presenting the controller (``hermes.vfio.pci.ConfigSpace``
#: arguments): the identity and MSI-X location of ``hermes.nvme_regs``.
PCI_IDENTITY = dict(vendor=N.PCI_VENDOR_ID, device=N.PCI_DEVICE_ID, revision=N.PCI_REVISION,
                    class_code=N.PCI_CLASS_NVME, msix_vectors=NUM_VECTORS, msix_bar=N.MSIX_BAR,
                    msix_table=N.MSIX_TABLE_OFFSET, msix_pba=N.MSIX_PBA_OFFSET)
_MASKS = {4: 0xFFFF_FFFF, 8: N.MASK64}
_STAT_KEYS = ("commands", "errors", "interrupts", "doorbell_errors", "ignored_writes",
              "bad_size_accesses", "executions", "resets", "fatal", "internal_errors")


class _SQ:
    def __init__(self, qid: int, base: int, size: int, cqid: int):
        self.qid, self.base, self.size, self.cqid = qid, base, size, cqid
        self.head = self.tail = 0


class _CQ:
    def __init__(self, qid: int, base: int, size: int, vector: int, ien: bool):
        self.qid, self.base, self.size, self.vector, self.ien = qid, base, size, vector, ien
        self.head = self.tail = 0
        self.phase = 1
        self.sqs: set[int] = set()


class _Worker:
    """One command processor: the admin queue, or every I/O queue round robin."""

    def __init__(self, name: str):
        self.name = name
        self.wake = threading.Event()
        self.busy = False
        #: (sqid, cid, cancel, command) of the command being processed.
        self.current: tuple[int, int, _engine.Cancel, N.Command] | None = None
        #: ``current`` has been processed; only its completion is still to be posted.
        self.processed = False
        self.thread: threading.Thread | None = None


class NvmeController:
    """Behavioural model of an NVMe I/O controller with one CP and some SLM namespaces.

    Namespace 1 is the compute namespace; namespaces 2.. are memory namespaces of the sizes in
    ``memory_sizes``. The transport interface is that of the Hermes model (``bar_read``,
    ``bar_write``, ``set_host_memory``, ``set_irq_handler``, ``reset``, ``close``), so the
    in-process transport drives it unchanged.
    """

    bar4 = None  # no directly mapped BAR

    def __init__(self, memory_sizes: tuple[int, ...] = (16 << 20,), *, io_queues: int = 16,
                 max_queue_entries: int = 1024, executor: str | None = None,
                 budget: int | None = None, limits: Limits | None = None,
                 serial: str = "HERMESCP0001", engine: str | None = None):
        if not 1 <= io_queues <= MAX_IO_QUEUES:
            raise ValueError(f"io_queues must be in 1..{MAX_IO_QUEUES}")
        if not 2 <= max_queue_entries <= 65536:
            raise ValueError("max_queue_entries must be in 2..65536")
        if not memory_sizes or any(s <= 0 or s % 8 for s in memory_sizes):
            raise ValueError("memory_sizes must be positive multiples of 8 bytes")
        executor = _engine.executor_option(executor, engine)
        if executor is not None and executor not in _engine.executor_names():
            raise ValueError(f"unknown executor {executor!r}")
        if len(serial.encode("ascii")) > 20:
            raise ValueError("serial must be at most 20 ASCII characters")
        self.num_vectors = NUM_VECTORS
        self.io_queues = io_queues
        self.max_queue_entries = max_queue_entries
        self.serial = serial
        self.limits = limits or Limits()
        self.memory = {COMPUTE_NSID + 1 + i: MemoryNamespace(COMPUTE_NSID + 1 + i, size)
                       for i, size in enumerate(memory_sizes)}
        self.compute = ComputeNamespace(COMPUTE_NSID, self.memory, self.limits, executor, budget)
        self.slm = MemoryCommands(self.memory, self.limits)
        self.namespaces: dict[int, object] = {COMPUTE_NSID: self.compute, **self.memory}
        self.cap = ((max_queue_entries - 1) | N.CAP_CQR | (READY_TIMEOUT_UNITS << N.CAP_TO_SHIFT)
                    | ((N.CAP_CSS_NVM | N.CAP_CSS_IOCS) << N.CAP_CSS_SHIFT)
                    | (0 << N.CAP_MPSMIN_SHIFT) | (4 << N.CAP_MPSMAX_SHIFT) | N.CAP_CRWMS)
        self._host: object | None = None
        self._irq: Callable[[int], None] | None = None
        self._lock = threading.RLock()
        self._cq_space = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self.stats = dict.fromkeys(_STAT_KEYS, 0)
        self._errors: list[bytes] = []
        self._error_count = 0
        self._counters = {"reads": 0, "writes": 0, "read_bytes": 0, "written_bytes": 0}
        self._stop = False
        self._admin = _Worker("admin")
        self._io = _Worker("io")
        self._power_on()
        ref = weakref.ref(self)
        for w in (self._admin, self._io):
            w.thread = threading.Thread(target=_worker_thread, args=(ref, w), daemon=True,
                                        name=f"nvme-{w.name}")
            w.thread.start()

    # --- state ------------------------------------------------------------------------------------
    def _power_on(self) -> None:
        self.cc = self.aqa = self.asq = self.acq = 0
        self.csts = 0
        self._intms = 0
        self._pending_irq = 0
        self._queue_reset()

    def _queue_reset(self) -> None:
        self._sqs: dict[int, _SQ] = {}
        self._cqs: dict[int, _CQ] = {}
        self._ready = False
        self._aers: list[int] = []
        self._events: list[int] = []
        self._queues_allocated = self.io_queues
        self._features = {N.Feature.ASYNC_EVENT_CONFIG: 0, N.Feature.ARBITRATION: 0,
                          N.Feature.POWER_MANAGEMENT: 0, N.Feature.ERROR_RECOVERY: 0,
                          N.Feature.INTERRUPT_COALESCING: 0, N.Feature.WRITE_ATOMICITY: 0,
                          N.Feature.IO_COMMAND_SET_PROFILE: 0}
        self._temp_thresholds = {(0, 0): 0x157, (0, 1): 0}

    @property
    def page_size(self) -> int:
        """Memory page size the host configured in CC.MPS."""
        return 4096 << ((self.cc >> N.CC_MPS_SHIFT) & N.CC_MPS_MASK)

    @property
    def max_transfer(self) -> int:
        """Largest data transfer of one command (MDTS in bytes)."""
        return 4096 << MDTS

    def bar_size(self, bar: int) -> int:
        """Size of BAR ``bar`` (only BAR0 exists)."""
        return BAR0_SIZE if bar == 0 else 0

    def set_host_memory(self, host: object | None) -> None:
        """Attach the host memory (``HostMemory``-like) that queues and data pointers address."""
        self._host = host

    def set_irq_handler(self, fn: Callable[[int], None] | None) -> None:
        """Call ``fn(vector)`` whenever an MSI-X vector fires."""
        self._irq = fn

    # --- registers --------------------------------------------------------------------------------
    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read ``size`` (4 or 8) bytes of BAR0 at ``offset``."""
        if bar != 0:
            raise ValueError(f"the NVMe controller has no BAR {bar}")
        if size not in _MASKS or offset % size or not 0 <= offset <= BAR0_SIZE - size:
            self.stats["bad_size_accesses"] += 1
            return 0
        if size == 8:
            return self._reg(offset) | (self._reg(offset + 4) << 32)
        return self._reg(offset)

    def _reg(self, off: int) -> int:
        regs64 = {N.REG_CAP: self.cap, N.REG_ASQ: self.asq, N.REG_ACQ: self.acq}
        base = off & ~7
        if base in regs64:
            return (regs64[base] >> (32 if off & 4 else 0)) & 0xFFFF_FFFF
        if off == N.REG_VS:
            return N.NVME_VERSION
        if off in (N.REG_INTMS, N.REG_INTMC):
            return self._intms
        if off == N.REG_CC:
            return self.cc
        if off == N.REG_CSTS:
            return self.csts
        if off == N.REG_AQA:
            return self.aqa
        if off == N.REG_CRTO:
            return READY_TIMEOUT_UNITS | (READY_TIMEOUT_UNITS << 16)
        return 0

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write ``size`` (4 or 8) bytes to BAR0 at ``offset``."""
        if bar != 0:
            raise ValueError(f"the NVMe controller has no BAR {bar}")
        if size not in _MASKS or offset % size or not 0 <= offset <= BAR0_SIZE - size:
            self.stats["bad_size_accesses"] += 1
            return
        value &= _MASKS[size]
        if size == 8:
            self.bar_write(0, offset, 4, value & 0xFFFF_FFFF)
            self.bar_write(0, offset + 4, 4, value >> 32)
            return
        if offset >= N.REG_DBS:
            self._doorbell((offset - N.REG_DBS) // 4, value)
            return
        with self._lock:
            if offset == N.REG_INTMS:
                self._intms |= value
            elif offset == N.REG_INTMC:
                self._intms &= ~value
                fire = self._pending_irq & ~self._intms
                self._pending_irq &= ~fire
                for v in range(NUM_VECTORS):
                    if fire >> v & 1:
                        self._fire(v)
            elif offset == N.REG_CC:
                self._write_cc(value)
            elif offset in (N.REG_AQA, N.REG_ASQ, N.REG_ASQ + 4, N.REG_ACQ, N.REG_ACQ + 4):
                if self.cc & N.CC_EN:
                    # admin queue registers are fixed while enabled
                    self.stats["ignored_writes"] += 1
                elif offset == N.REG_AQA:
                    self.aqa = value & ((N.AQA_ASQS_MASK << N.AQA_ACQS_SHIFT) | N.AQA_ASQS_MASK)
                else:
                    reg = "asq" if offset & ~7 == N.REG_ASQ else "acq"
                    shift = 32 if offset & 4 else 0
                    old = getattr(self, reg)
                    setattr(self, reg, (old & ~(0xFFFF_FFFF << shift)) | (value << shift))
            else:
                self.stats["ignored_writes"] += 1

    def _write_cc(self, value: int) -> None:
        was = self.cc
        self.cc = value & ~N.CC_CRIME
        if value & N.CC_EN and not was & N.CC_EN:
            self._enable()
        elif not value & N.CC_EN and was & N.CC_EN:
            self._disable()
            self.csts &= ~(N.CSTS_SHST_MASK << N.CSTS_SHST_SHIFT)
        shn = (value >> N.CC_SHN_SHIFT) & N.CC_SHN_MASK
        if shn and not (was >> N.CC_SHN_SHIFT) & N.CC_SHN_MASK:
            # Shutdown: stop fetching, finish what runs, report complete; queues stay defined.
            self._quiesce()
            self.csts = (self.csts & ~(N.CSTS_SHST_MASK << N.CSTS_SHST_SHIFT)) | (
                N.SHST_COMPLETE << N.CSTS_SHST_SHIFT)

    def _enable(self) -> None:
        mps = (self.cc >> N.CC_MPS_SHIFT) & N.CC_MPS_MASK
        css = (self.cc >> N.CC_CSS_SHIFT) & N.CC_CSS_MASK
        asqs, acqs = (self.aqa & N.AQA_ASQS_MASK) + 1, ((self.aqa >> N.AQA_ACQS_SHIFT)
                                                       & N.AQA_ASQS_MASK) + 1
        page = self.page_size
        ok = (mps <= 4 and css in (N.CC_CSS_NVM, N.CC_CSS_IOCS)
              and (self.cc >> N.CC_AMS_SHIFT) & N.CC_AMS_MASK == 0
              and asqs >= 2 and acqs >= 2 and self.asq % page == 0 and self.acq % page == 0
              and self.asq and self.acq)
        if not ok:
            # An enable with a configuration the controller cannot run is a controller fatal
            # status: the host sees CFS instead of waiting for RDY until its timeout.
            self.csts |= N.CSTS_CFS
            self.stats["fatal"] += 1
            return
        self._cqs[0] = _CQ(0, self.acq, acqs, 0, True)
        self._sqs[0] = _SQ(0, self.asq, asqs, 0)
        self._cqs[0].sqs.add(0)
        self._ready = True
        self.csts = (self.csts | N.CSTS_RDY) & ~N.CSTS_CFS

    def _disable(self) -> None:
        self._quiesce()
        self.compute.reset()
        self._queue_reset()
        self.csts &= ~(N.CSTS_RDY | N.CSTS_CFS)
        self.stats["resets"] += 1

    def _quiesce(self) -> None:
        """Stop fetching commands and wait (bounded) until none is being processed."""
        self._ready = False
        for w in (self._admin, self._io):
            if w.current is not None:
                w.current[2].set()
        # Called with the lock held (a register write); wait() releases it for the workers.
        self._cq_space.notify_all()
        deadline = time.monotonic() + QUIESCE_TIMEOUT
        while (self._admin.busy or self._io.busy) and time.monotonic() < deadline:
            self._idle.wait(0.05)

    def abort(self) -> None:
        """Cancel the commands being processed (a departing host's runaway programs); the
        controller stays enabled and completes them as aborted."""
        with self._lock:
            for w in (self._admin, self._io):
                if w.current is not None:
                    w.current[2].set()

    def reset(self) -> None:
        """Controller Level Reset plus register defaults (a function level reset)."""
        with self._lock:
            if self.cc & N.CC_EN:
                self._disable()
            self._power_on()

    def close(self, *, abort: bool = True) -> None:
        """Stop the worker threads. Idempotent.

        Commands in progress are always cancelled (``abort`` exists for the close signature that
        the transports share with ``HermesDevice``; a controller never waits out a runaway program).
        """
        with self._lock:
            self._quiesce()
            self._stop = True
        for w in (self._admin, self._io):
            w.wake.set()
            if w.thread is not None and w.thread is not threading.current_thread():
                w.thread.join(QUIESCE_TIMEOUT)

    def __enter__(self) -> NvmeController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- doorbells and queues ---------------------------------------------------------------------
    def _doorbell(self, index: int, value: int) -> None:
        qid, is_cq = index // 2, index % 2
        with self._lock:
            if not self.cc & N.CC_EN or self.csts & N.CSTS_CFS:
                self.stats["ignored_writes"] += 1
                return
            q = (self._cqs if is_cq else self._sqs).get(qid)
            if q is None:
                self._doorbell_error(N.AsyncErrorInfo.INVALID_DOORBELL_REGISTER)
                return
            if value >= q.size:
                self._doorbell_error(N.AsyncErrorInfo.INVALID_DOORBELL_VALUE)
                return
            if is_cq:
                # A head may only move over entries the controller posted.
                posted = (q.tail - q.head) % q.size
                if (value - q.head) % q.size > posted:
                    self._doorbell_error(N.AsyncErrorInfo.INVALID_DOORBELL_VALUE)
                    return
                q.head = value
                self._cq_space.notify_all()
                return
            q.tail = value
        (self._admin if qid == 0 else self._io).wake.set()

    def _doorbell_error(self, info: int) -> None:
        self.stats["doorbell_errors"] += 1
        self._events.append(N.async_event_dw0(N.AsyncEventType.ERROR, info, N.LogPage.ERROR_INFO))
        self._admin.wake.set()

    def _fetch(self, w: _Worker) -> tuple[_SQ, N.Command] | None:
        with self._lock:
            if not self._ready or self._stop:
                return None
            sqs = [self._sqs[0]] if w is self._admin and 0 in self._sqs else [
                q for qid, q in sorted(self._sqs.items()) if qid]
            for sq in sqs:
                if sq.head != sq.tail:
                    try:
                        raw = self._host.read(sq.base + sq.head * N.SQE_SIZE,  # type: ignore
                                              N.SQE_SIZE)
                    except Exception:
                        self._fatal()
                        return None
                    sq.head = (sq.head + 1) % sq.size
                    cmd = N.Command.unpack(raw)
                    w.busy = True
                    w.current = (sq.qid, cmd.cid, _engine.Cancel(), cmd)
                    if w is self._io and len(sqs) > 1:
                        # Round robin: the next fetch starts after this queue.
                        del self._sqs[sq.qid]
                        self._sqs[sq.qid] = sq
                    return sq, cmd
        return None

    def _fatal(self) -> None:
        self.csts |= N.CSTS_CFS
        self._ready = False
        self.stats["fatal"] += 1

    def _serve(self, w: _Worker) -> None:
        """Process every command the worker's queues hold, then deliver held events."""
        while True:
            if w is self._admin:
                self._deliver_events()
            item = self._fetch(w)
            if item is None:
                return
            sq, cmd = item
            try:
                status, dw0, dw1 = self._process(w, sq, cmd)
                # Processed before its completion is posted: an Abort the host sends once it
                # sees the completion finds nothing to abort.
                with self._lock:
                    w.processed = True
                self._complete(sq, cmd, status, dw0, dw1)
            finally:
                with self._lock:
                    w.busy = w.processed = False
                    w.current = None
                    self._idle.notify_all()

    def _process(self, w: _Worker, sq: _SQ, cmd: N.Command) -> tuple[N.Status | None, int, int]:
        self.stats["commands"] += 1
        try:
            check(cmd.flags & N.FUSE_MASK == 0, N.INVALID_FIELD, "fused operations are not "
                  "supported")
            check(cmd.flags >> N.PSDT_SHIFT == 0, N.INVALID_FIELD, "SGLs are not supported")
            if sq.qid == 0:
                result = self._admin_command(cmd)
                if result is None:
                    return None, 0, 0          # held (Asynchronous Event Request)
                return N.SUCCESS, result & 0xFFFF_FFFF, result >> 32
            value = self._io_command(cmd, w.current[2])  # type: ignore[index]
            return N.SUCCESS, value & 0xFFFF_FFFF, (value >> 32) & 0xFFFF_FFFF
        except CommandError as exc:
            return exc.status, exc.dw0 & 0xFFFF_FFFF, 0
        except TransferError as exc:
            return exc.status, 0, 0
        except Exception:
            # A bug in the model: the command fails, the controller keeps running.
            self.stats["internal_errors"] += 1
            return N.INTERNAL_ERROR, 0, 0

    def _complete(self, sq: _SQ, cmd: N.Command, status: N.Status | None, dw0: int,
                  dw1: int, cqid: int | None = None) -> None:
        if status is None:
            return
        if status is not N.SUCCESS:
            self._log_error(sq.qid, cmd, status)
        self._post(self._cqs.get(sq.cqid if cqid is None else cqid), sq, cmd.cid, status,
                   dw0, dw1)

    def _post(self, cq: _CQ | None, sq: _SQ, cid: int, status: N.Status, dw0: int,
              dw1: int) -> None:
        with self._lock:
            if cq is None:
                return
            while (cq.tail + 1) % cq.size == cq.head:
                # A full completion queue holds the controller until the host frees an entry
                # (or the controller is disabled).
                if not self._ready or self._stop:
                    return
                self._cq_space.wait(0.1)
            dnr = status.sct != 0 or status.sc not in (0x00, 0x07, 0x08)
            cqe = N.Completion(dw0, dw1, sq.head, sq.qid, cid,
                               N.status_halfword(status, cq.phase, dnr))
            try:
                self._host.write(cq.base + cq.tail * N.CQE_SIZE, cqe.pack())  # type: ignore
            except Exception:
                self._fatal()
                return
            cq.tail = (cq.tail + 1) % cq.size
            if cq.tail == 0:
                cq.phase ^= 1
            if cq.ien:
                if self._intms >> cq.vector & 1:
                    self._pending_irq |= 1 << cq.vector
                else:
                    self._fire(cq.vector)

    def _fire(self, vector: int) -> None:
        self.stats["interrupts"] += 1
        handler = self._irq
        if handler is not None:
            handler(vector)

    def _log_error(self, sqid: int, cmd: N.Command, status: N.Status) -> None:
        with self._lock:
            self.stats["errors"] += 1
            self._error_count += 1
            entry = N.ERROR_LOG_ENTRY.pack(error_count=self._error_count, sqid=sqid, cid=cmd.cid,
                                           status=status.field << 1, param_loc=0xFFFF,
                                           nsid=cmd.nsid)
            self._errors.insert(0, entry)
            del self._errors[ERROR_LOG_ENTRIES:]

    def _deliver_events(self) -> None:
        with self._lock:
            while self._aers and self._events and self._ready:
                cid = self._aers.pop(0)
                dw0 = self._events.pop(0)
                admin = self._sqs[0]
                self._post(self._cqs[0], admin, cid, N.SUCCESS, dw0, 0)

    # --- data transfer ----------------------------------------------------------------------------
    def _runs(self, cmd: N.Command, n: int) -> list[tuple[int, int]]:
        check(n <= self.max_transfer, N.INVALID_FIELD,
              f"transfer of {n} bytes exceeds MDTS ({self.max_transfer})")
        return prp_runs(self._host, cmd.prp1, cmd.prp2, n, self.page_size)

    def _data_in(self, cmd: N.Command) -> Callable[[int], bytes]:
        return lambda n: gather(self._host, self._runs(cmd, n))

    def _data_out(self, cmd: N.Command, data: bytes | memoryview) -> None:
        scatter(self._host, self._runs(cmd, len(data)), data)

    # --- admin commands ---------------------------------------------------------------------------
    def _admin_command(self, cmd: N.Command) -> int | None:
        op = cmd.opcode
        A = N.AdminOpcode
        if op == A.IDENTIFY:
            self._data_out(cmd, self._identify(cmd))
            return 0
        if op == A.GET_LOG_PAGE:
            return self._get_log_page(cmd)
        if op in (A.SET_FEATURES, A.GET_FEATURES):
            return self._features_command(cmd, op == A.SET_FEATURES)
        if op == A.CREATE_IO_CQ:
            return self._create_cq(cmd)
        if op == A.CREATE_IO_SQ:
            return self._create_sq(cmd)
        if op == A.DELETE_IO_SQ:
            return self._delete_sq(cmd)
        if op == A.DELETE_IO_CQ:
            return self._delete_cq(cmd)
        if op == A.ABORT:
            return self._abort(cmd)
        if op == A.ASYNC_EVENT_REQUEST:
            with self._lock:
                check(len(self._aers) <= AER_LIMIT, N.AER_LIMIT_EXCEEDED)
                self._aers.append(cmd.cid)
            return None
        if op in (A.LOAD_PROGRAM, A.PROGRAM_ACTIVATION, A.MEMORY_RANGE_SET):
            check(cmd.nsid == COMPUTE_NSID, N.INVALID_NAMESPACE,
                  f"namespace {cmd.nsid} is not a compute namespace")
            if op == A.LOAD_PROGRAM:
                return self.compute.load_program(cmd, self._data_in(cmd))
            if op == A.PROGRAM_ACTIVATION:
                return self.compute.activation(cmd)
            return self.compute.range_set(cmd, self._data_in(cmd))
        raise CommandError(N.INVALID_OPCODE, f"admin opcode {op:#04x}")

    def _create_cq(self, cmd: N.Command) -> int:
        with self._lock:
            qid, qsize, vector, flags = self._new_queue(cmd, self._cqs, "completion",
                                                        N.CC_IOCQES_SHIFT, N.CQES_LOG2)
            check(vector < NUM_VECTORS, N.INVALID_INTERRUPT_VECTOR)
            self._cqs[qid] = _CQ(qid, cmd.prp1, qsize, vector, bool(flags & N.CQ_IEN))
        return 0

    def _new_queue(self, cmd: N.Command, table: dict, what: str, es_shift: int,
                   es_log2: int) -> tuple[int, int, int, int]:
        """(QID, size, CDW11 31:16, CDW11 15:0) of a Create I/O queue, after the checks
        common to both kinds."""
        qid, qsize = cmd.cdw10 & 0xFFFF, (cmd.cdw10 >> 16) + 1
        check(0 < qid <= self._queues_allocated and qid not in table,
              N.INVALID_QUEUE_ID, f"{what} queue {qid}")
        check(2 <= qsize <= self.max_queue_entries, N.INVALID_QUEUE_SIZE)
        check(cmd.cdw11 & N.CQ_PC, N.INVALID_FIELD, "queues must be physically contiguous")
        check(cmd.prp1 and cmd.prp1 % self.page_size == 0, N.INVALID_PRP_OFFSET,
              "queue base must be page aligned")
        check((self.cc >> es_shift) & 0xF == es_log2, N.INVALID_FIELD,
              f"CC entry size for {what} queues must be {1 << es_log2} bytes")
        return qid, qsize, cmd.cdw11 >> 16, cmd.cdw11 & 0xFFFF

    def _create_sq(self, cmd: N.Command) -> int:
        with self._lock:
            qid, qsize, cqid, _ = self._new_queue(cmd, self._sqs, "submission",
                                                  N.CC_IOSQES_SHIFT, N.SQES_LOG2)
            check(cqid != 0 and cqid in self._cqs, N.COMPLETION_QUEUE_INVALID,
                  f"completion queue {cqid}")
            self._sqs[qid] = _SQ(qid, cmd.prp1, qsize, cqid)
            self._cqs[cqid].sqs.add(qid)
        return 0

    def _delete_sq(self, cmd: N.Command) -> int:
        qid = cmd.cdw10 & 0xFFFF
        with self._lock:
            check(qid != 0 and qid in self._sqs, N.INVALID_QUEUE_ID, f"submission queue {qid}")
            # The I/O worker finishes (and completes) a command it already fetched first.
            cur = self._io.current
            if cur is not None and cur[0] == qid:
                cur[2].set()
            deadline = time.monotonic() + QUIESCE_TIMEOUT
            while self._io.current is not None and self._io.current[0] == qid \
                    and time.monotonic() < deadline:
                self._idle.wait(0.05)
            sq = self._sqs.pop(qid)
            self._cqs[sq.cqid].sqs.discard(qid)
            # Commands still in the queue are completed as aborted by the deletion.
            while sq.head != sq.tail:
                try:
                    raw = self._host.read(sq.base + sq.head * N.SQE_SIZE, N.SQE_SIZE)  # type: ignore
                except Exception:
                    break
                sq.head = (sq.head + 1) % sq.size
                self._complete(sq, N.Command.unpack(raw), N.ABORTED_SQ_DELETION, 0, 0)
        return 0

    def _delete_cq(self, cmd: N.Command) -> int:
        qid = cmd.cdw10 & 0xFFFF
        with self._lock:
            check(qid != 0 and qid in self._cqs, N.INVALID_QUEUE_ID, f"completion queue {qid}")
            check(not self._cqs[qid].sqs, N.INVALID_QUEUE_DELETION,
                  "submission queues still post to it")
            del self._cqs[qid]
        return 0

    def _abort(self, cmd: N.Command) -> int:
        sqid, cid = cmd.cdw10 & 0xFFFF, cmd.cdw10 >> 16
        with self._lock:
            cur = None if self._io.processed else self._io.current
            if cur is not None and cur[0] == sqid and cur[1] == cid:
                cur[2].set()
                return 0
            # SQID FFFFh (no queue has it): CID is a program index whose Execute Program in
            # progress is aborted, for hosts that do not know the command's queue and CID
            # (Linux passthrough: the kernel assigns both).
            if sqid == N.ABORT_BY_PROGRAM and cur is not None \
                    and cur[3].opcode == N.CpOpcode.EXECUTE_PROGRAM \
                    and cur[3].nsid == COMPUTE_NSID and cur[3].cdw2 & 0xFFFF == cid:
                cur[2].set()
                return 0
        return 1   # DW0 bit 0: the command was not aborted

    def _identify(self, cmd: N.Command) -> bytes:
        cns, csi = cmd.cdw10 & 0xFF, cmd.cdw11 >> 24
        C = N.Cns
        if cns == C.CONTROLLER:
            return self._identify_controller()
        if cns in (C.ACTIVE_NS_LIST, C.CSI_ACTIVE_NS_LIST):
            ids = [n for n, ns in sorted(self.namespaces.items()) if n > cmd.nsid
                   and (cns == C.ACTIVE_NS_LIST or ns.csi == csi)]  # type: ignore[attr-defined]
            return struct.pack(f"<{len(ids)}I", *ids).ljust(N.IDENTIFY_SIZE, b"\0")
        if cns == C.IO_COMMAND_SETS:
            return struct.pack("<Q", N.IOCS_NVM | N.IOCS_SLM | N.IOCS_CP).ljust(
                N.IDENTIFY_SIZE, b"\0")
        if cns == C.CSI_CONTROLLER:
            check(csi in (N.Csi.NVM, N.Csi.SLM, N.Csi.CP), N.INVALID_IOCS, f"CSI {csi}")
            return bytes(N.IDENTIFY_SIZE)
        check(cns in (C.NAMESPACE, C.NS_DESCRIPTORS, C.CSI_NAMESPACE, C.INDEPENDENT_NAMESPACE),
              N.INVALID_FIELD, f"CNS {cns:#04x} is not supported")
        ns = self.namespaces.get(cmd.nsid)
        check(ns is not None, N.INVALID_NAMESPACE, f"namespace {cmd.nsid}")
        if cns == C.NS_DESCRIPTORS:
            ident = uuid.uuid5(uuid.NAMESPACE_OID, f"hermes-nvme:{self.serial}:{cmd.nsid}")
            return (N.ns_descriptor(N.NIDT_UUID, ident.bytes)
                    + N.ns_descriptor(N.NIDT_CSI, bytes([ns.csi]))  # type: ignore[attr-defined]
                    ).ljust(N.IDENTIFY_SIZE, b"\0")
        if cns == C.INDEPENDENT_NAMESPACE:
            return N.ID_NS_INDEPENDENT.pack(nstat=N.NSTAT_READY)
        if cns == C.CSI_NAMESPACE:
            check(csi == ns.csi, N.INVALID_IOCS,  # type: ignore[attr-defined]
                  f"namespace {cmd.nsid} is not of CSI {csi}")
            if ns is self.compute:
                return self.compute.identify()
            lim = self.limits
            return N.ID_NS_SLM.pack(msz=ns.size, mcl=lim.max_copy_bytes,  # type: ignore
                                    msrc=lim.max_copy_sources)
        raise CommandError(N.INVALID_IOCS, f"namespace {cmd.nsid} is not an NVM namespace")

    def _identify_controller(self) -> bytes:
        return N.ID_CTRL.pack(
            vid=N.PCI_VENDOR_ID, ssvid=N.PCI_VENDOR_ID, sn=N.ascii_field(self.serial, 20),
            mn=N.ascii_field("Hermes NVMe CP/SLM controller", 40), fr=N.ascii_field("0.1", 8),
            mdts=MDTS, cntlid=1, ver=N.NVME_VERSION, cntrltype=1, acl=ABORT_LIMIT,
            aerl=AER_LIMIT, frmw=0x03, lpa=N.LPA_EFFECTS, elpe=ERROR_LOG_ENTRIES - 1,
            wctemp=0x157, cctemp=0x173, sqes=(N.SQES_LOG2 << 4) | N.SQES_LOG2,
            cqes=(N.CQES_LOG2 << 4) | N.CQES_LOG2, nn=max(self.namespaces),
            subnqn=f"nqn.2026-01.io.hermes:nvme-cp:{self.serial}".encode(), psd0_mp=2500)

    def _get_log_page(self, cmd: N.Command) -> int:
        lid = cmd.cdw10 & 0xFF
        numd = ((cmd.cdw10 >> 16) | ((cmd.cdw11 & 0xFFFF) << 16)) + 1
        offset = cmd.cdw12 | (cmd.cdw13 << 32)
        csi = cmd.cdw14 >> 24
        L = N.LogPage
        if lid == L.ERROR_INFO:
            with self._lock:
                page = b"".join(self._errors).ljust(64 * ERROR_LOG_ENTRIES, b"\0")
        elif lid == L.SMART:
            c = self._counters
            page = N.SMART_LOG.pack(temperature=0x141, avail_spare=100, spare_thresh=10,
                                    data_units_read=(c["read_bytes"] + 511_999) // 512_000,
                                    data_units_written=(c["written_bytes"] + 511_999) // 512_000,
                                    host_reads=c["reads"], host_writes=c["writes"],
                                    power_cycles=1, error_entries=self._error_count)
        elif lid == L.FIRMWARE_SLOT:
            page = N.FIRMWARE_SLOT_LOG.pack(afi=1, frs1=N.ascii_field("0.1", 8))
        elif lid == L.COMMAND_EFFECTS:
            page = self._effects(csi)
        elif lid == N.LOG_EXECUTION_RECORD:
            page = self.compute.execution_records()
        else:
            raise CommandError(N.INVALID_LOG_PAGE, f"log page {lid:#04x}")
        n = 4 * numd
        check(offset % 4 == 0 and offset < len(page), N.INVALID_FIELD,
              f"log page offset {offset}")
        check(n <= self.max_transfer, N.INVALID_FIELD, f"log page length {n} exceeds MDTS")
        self._data_out(cmd, page[offset:offset + n].ljust(n, b"\0"))
        return 0

    def _effects(self, csi: int) -> bytes:
        page = bytearray(N.EFFECTS_SIZE)
        io_sets: dict[int, Iterable[int]] = {N.Csi.CP: N.CpOpcode, N.Csi.SLM: N.SlmOpcode}
        for op in N.AdminOpcode:
            struct.pack_into("<I", page, 4 * op, N.EFFECT_CSUPP)
        for io_op in io_sets.get(csi, ()):
            struct.pack_into("<I", page, N.EFFECTS_IO_OFFSET + 4 * io_op, N.EFFECT_CSUPP)
        return bytes(page)

    def _features_command(self, cmd: N.Command, is_set: bool) -> int:
        fid = cmd.cdw10 & 0xFF
        F = N.Feature
        check(fid in F.__members__.values(), N.INVALID_FIELD, f"feature {fid:#04x}")
        if is_set:
            check(not cmd.cdw10 & N.FEAT_SV, N.FEATURE_NOT_SAVEABLE)
            return self._set_feature(F(fid), cmd.cdw11)
        sel = (cmd.cdw10 >> N.FEAT_SEL_SHIFT) & 7
        check(sel <= N.FEAT_SEL_SUPPORTED, N.INVALID_FIELD, f"SEL {sel}")
        if sel == N.FEAT_SEL_SUPPORTED:
            return N.FEAT_CAP_CHANGEABLE
        return self._get_feature(F(fid), cmd.cdw11, default=sel != N.FEAT_SEL_CURRENT)

    def _set_feature(self, fid: N.Feature, cdw11: int) -> int:
        F = N.Feature
        with self._lock:
            if fid == F.NUMBER_OF_QUEUES:
                nsq, ncq = cdw11 & 0xFFFF, cdw11 >> 16
                check(nsq != 0xFFFF and ncq != 0xFFFF, N.INVALID_FIELD, "65535 queues")
                self._queues_allocated = min(max(nsq, ncq) + 1, self.io_queues)
                n = self._queues_allocated - 1
                return n | (n << 16)
            if fid == F.TEMPERATURE_THRESHOLD:
                self._temp_thresholds[((cdw11 >> 16) & 0xF, (cdw11 >> 20) & 3)] = cdw11 & 0xFFFF
                return 0
            if fid == F.INTERRUPT_VECTOR_CONFIG:
                check(cdw11 & 0xFFFF < NUM_VECTORS, N.INVALID_FIELD, "interrupt vector")
                return 0
            if fid == F.IO_COMMAND_SET_PROFILE:
                check(cdw11 & 0x1FF == 0, N.IOCS_COMBINATION_REJECTED,
                      "only combination 0 exists")
            self._features[fid] = cdw11
            return 0

    def _get_feature(self, fid: N.Feature, cdw11: int, default: bool) -> int:
        F = N.Feature
        with self._lock:
            if fid == F.NUMBER_OF_QUEUES:
                n = (self.io_queues if default else self._queues_allocated) - 1
                return n | (n << 16)
            if fid == F.TEMPERATURE_THRESHOLD:
                key = ((cdw11 >> 16) & 0xF, (cdw11 >> 20) & 3)
                if default:
                    return 0x157 if key[1] == 0 else 0
                return self._temp_thresholds.get(key, 0)
            if fid == F.INTERRUPT_VECTOR_CONFIG:
                return cdw11 & 0xFFFF
            return 0 if default else self._features.get(fid, 0)

    # --- I/O commands -----------------------------------------------------------------------------
    def _io_command(self, cmd: N.Command, cancel: _engine.Cancel) -> int:
        ns = self.namespaces.get(cmd.nsid)
        check(ns is not None, N.INVALID_NAMESPACE, f"namespace {cmd.nsid}")
        if ns is self.compute:
            check(cmd.opcode == N.CpOpcode.EXECUTE_PROGRAM, N.INVALID_OPCODE,
                  f"CP opcode {cmd.opcode:#04x}")
            self.stats["executions"] += 1
            return self.compute.execute(cmd, self._data_in(cmd), self.max_transfer, cancel)
        S = N.SlmOpcode
        op = cmd.opcode
        c = self._counters
        if op == S.MEMORY_READ:
            self.slm.read(ns, cmd, lambda view: self._data_out(cmd, view),  # type: ignore
                          self.max_transfer)
            c["reads"] += 1
            c["read_bytes"] += cmd.cdw12
        elif op == S.MEMORY_WRITE:
            self.slm.write(ns, cmd, lambda view: gather_into(  # type: ignore[arg-type]
                self._host, self._runs(cmd, len(view)), view), self.max_transfer)
            c["writes"] += 1
            c["written_bytes"] += cmd.cdw12
        elif op == S.MEMORY_FILL:
            self.slm.fill(ns, cmd)  # type: ignore[arg-type]
        elif op == S.MEMORY_COPY:
            self.slm.copy(ns, cmd, self._data_in(cmd))  # type: ignore[arg-type]
        else:
            raise CommandError(N.INVALID_OPCODE, f"SLM opcode {op:#04x}")
        return 0


def _worker_thread(ref: weakref.ref[NvmeController], w: _Worker) -> None:
    """Body of a worker: wait for a doorbell (or an event), process, repeat until closed."""
    while True:
        w.wake.wait()
        w.wake.clear()
        ctrl = ref()
        if ctrl is None or ctrl._stop:
            return
        try:
            ctrl._serve(w)
        except Exception:   # a model bug must not kill the controller silently
            ctrl.stats["fatal"] += 1
            with ctrl._lock:
                ctrl._fatal()
                w.busy = False
                w.current = None
        del ctrl

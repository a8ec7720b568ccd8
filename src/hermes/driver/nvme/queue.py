"""Host side of one NVMe queue pair: SQ/CQ rings in DMA memory, doorbells, phase, bounded waits."""
from __future__ import annotations

import errno
import threading
import time

from ... import nvme_regs as N
from ...transport.base import DmaBuffer, Transport

#: Longest single interrupt wait; waiters re-poll after it so completions that another thread's
#: interrupt brought in are still seen.
_IRQ_SLICE = 0.01
#: Seconds a polling wait spins before it starts to sleep.
_SPIN = 0.001


class QueuePair:
    """A submission queue and its completion queue (one CQ per SQ), ``depth`` entries each.

    ``submit`` places a command and rings the SQ tail doorbell; ``wait`` reaps completions (by
    the CQ's MSI-X vector when ``use_irq``, else by polling) until the command's own arrives.
    Thread-safe. At most ``depth - 1`` commands are outstanding (a full ring raises
    ``OSError(EAGAIN)``).
    """

    def __init__(self, transport: Transport, qid: int, depth: int, vector: int, dstrd: int,
                 use_irq: bool):
        if depth < 2:
            raise ValueError(f"queue depth must be at least 2, got {depth}")
        self.t = transport
        self.qid = qid
        self.depth = depth
        self.vector = vector
        self.use_irq = use_irq
        self.sq: DmaBuffer = transport.dma_alloc(depth * N.SQE_SIZE)
        try:
            self.cq: DmaBuffer = transport.dma_alloc(depth * N.CQE_SIZE)
        except BaseException:
            self.sq.free()
            raise
        self._sq_db = N.sq_doorbell(qid, dstrd)
        self._cq_db = N.cq_doorbell(qid, dstrd)
        self.sq_tail = 0
        self.sq_head = 0
        self.cq_head = 0
        self.phase = 1
        self._lock = threading.Lock()
        self._next_cid = 0
        self._outstanding: set[int] = set()
        self._done: dict[int, N.Completion] = {}

    def submit(self, cmd: N.Command, *, ring: bool = True) -> int:
        """Place ``cmd`` at the SQ tail with a fresh CID (returned); ring the doorbell unless
        ``ring`` is False (then ``ring_doorbell`` publishes it later)."""
        with self._lock:
            if (self.sq_tail + 1) % self.depth == self.sq_head:
                raise OSError(errno.EAGAIN, f"submission queue {self.qid} is full "
                              f"({self.depth - 1} commands outstanding)")
            cid = self._next_cid
            while cid in self._outstanding or cid in self._done:
                cid = (cid + 1) & 0xFFFF
            self._next_cid = (cid + 1) & 0xFFFF
            cmd.cid = cid
            off = self.sq_tail * N.SQE_SIZE
            self.sq.view[off:off + N.SQE_SIZE] = cmd.pack()
            self.sq_tail = (self.sq_tail + 1) % self.depth
            self._outstanding.add(cid)
            if ring:
                self.t.write(0, self._sq_db, 4, self.sq_tail)
        return cid

    def ring_doorbell(self) -> None:
        """Publish every placed command (write the SQ tail doorbell)."""
        with self._lock:
            self.t.write(0, self._sq_db, 4, self.sq_tail)

    def poll(self) -> int:
        """Reap every new completion; returns how many arrived."""
        with self._lock:
            n = 0
            view = self.cq.view
            while True:
                off = self.cq_head * N.CQE_SIZE
                cqe = N.Completion.unpack(view[off:off + N.CQE_SIZE])
                if cqe.phase != self.phase:
                    break
                self.cq_head = (self.cq_head + 1) % self.depth
                if self.cq_head == 0:
                    self.phase ^= 1
                self.sq_head = cqe.sqhd
                self._outstanding.discard(cqe.cid)
                self._done[cqe.cid] = cqe
                n += 1
            if n:
                self.t.write(0, self._cq_db, 4, self.cq_head)
            return n

    def outstanding(self) -> list[int]:
        """CIDs submitted and not completed yet."""
        with self._lock:
            return sorted(self._outstanding)

    def take(self, cid: int) -> N.Completion | None:
        """The completion of ``cid`` if it arrived (reaping first), else None."""
        self.poll()
        with self._lock:
            return self._done.pop(cid, None)

    def wait(self, cid: int, timeout: float) -> N.Completion:
        """The completion of ``cid``; ``OSError(ETIMEDOUT)`` when none arrives in ``timeout`` s."""
        start = time.monotonic()
        deadline = start + timeout
        pause = 0.0
        if not self.use_irq:
            self.t.flush()   # the doorbell must reach the controller before polling its answer
        while True:
            cqe = self.take(cid)
            if cqe is not None:
                return cqe
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(errno.ETIMEDOUT, f"command {cid} on queue {self.qid} did not "
                              f"complete within {timeout} s")
            if self.use_irq:
                self.t.irq_wait(self.vector, min(left, _IRQ_SLICE))
            else:
                # Polling: yield-spin for the first millisecond (a sleep costs tens of us, more
                # than a fast command), then back off to 1 ms sleeps.
                if time.monotonic() - start < _SPIN:
                    time.sleep(0)
                    continue
                time.sleep(min(pause, left))
                pause = min(max(pause * 2, 1e-5), 1e-3)

    def free(self) -> None:
        """Release the rings (after the controller deleted the queues)."""
        self.sq.free()
        self.cq.free()

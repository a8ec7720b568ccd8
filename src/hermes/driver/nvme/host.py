"""Host-side NVMe driver: controller bring-up, admin and I/O commands with PRPs, CP/SLM commands."""
from __future__ import annotations

import errno
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import nvme_regs as N
from ...errors import DeviceError
from ...transport.base import DmaBuffer, Transport
from .queue import QueuePair

#: Host memory page size the driver configures (CC.MPS = 0).
PAGE = 4096
#: Default bound on every command's completion, in seconds.
DEFAULT_TIMEOUT = 10.0
#: Bytes of program sent per Load Program command.
DEFAULT_LOAD_CHUNK = 64 << 10
#: Bounce and PRP list buffers kept for reuse per size: registering DMA memory costs a
#: round trip or two over vfio-user (and a mapping in the server), so it is not done per command.
SPARE_BUFFERS = 4


class NvmeStatusError(DeviceError):
    """A command completed with an error status (``status``, ``completion``)."""

    def __init__(self, what: str, completion: N.Completion):
        self.completion = completion
        self.named = completion.named_status
        super().__init__(f"{what} failed: {self.named}", errno.EIO,
                         (completion.sct << 8) | completion.sc)


@dataclass
class Namespace:
    """An active namespace: its ID and command set."""

    nsid: int
    csi: int
    size: int = 0


def build_prps(t: Transport, addr: int, length: int,
               alloc: Callable[[int], DmaBuffer] | None = None
               ) -> tuple[int, int, DmaBuffer | None]:
    """PRP1, PRP2 and the PRP list buffer (or None) for ``length`` bytes at bus ``addr``.

    ``addr`` must be dword aligned; the bytes are taken as contiguous in bus space (a DMA
    buffer). A list longer than one page chains through the last entry of each list page. The
    list buffer comes from ``alloc(size)`` (default ``t.dma_alloc``).
    """
    if addr & 3:
        raise ValueError(f"data address {addr:#x} is not dword aligned")
    first = min(length, PAGE - addr % PAGE)
    if length <= first:
        return addr, 0, None
    npages = (length - first + PAGE - 1) // PAGE
    pages = [addr - addr % PAGE + PAGE * (i + 1) for i in range(npages)]
    if len(pages) == 1:
        return addr, pages[0], None
    per_page = PAGE // 8
    n_lists = 1
    while n_lists * (per_page - 1) + 1 < len(pages):
        n_lists += 1
    lst = (alloc or t.dma_alloc)(n_lists * PAGE)
    entries: list[int] = []
    rest = pages
    for i in range(n_lists):
        if len(rest) <= per_page:
            entries += rest
            break
        entries += rest[:per_page - 1] + [lst.bus_addr + PAGE * (i + 1)]
        rest = rest[per_page - 1:]
    struct.pack_into(f"<{len(entries)}Q", lst.view, 0, *entries)
    return addr, lst.bus_addr, lst


class NvmeHost:
    """Drives one NVMe controller through a ``Transport``: enable, identify, queues, commands.

    ``use_irq`` selects MSI-X completion (vector q for queue q) or polling; every wait is bounded
    by ``timeout`` seconds. ``compute_nsid`` is the CP namespace found by ``enable``.
    """

    def __init__(self, transport: Transport, *, use_irq: bool = True,
                 timeout: float = DEFAULT_TIMEOUT):
        self.t = transport
        self.use_irq = use_irq
        self.timeout = timeout
        self.cap = 0
        self.dstrd = 0
        self.admin: QueuePair | None = None
        self.io: dict[int, QueuePair] = {}
        self.id_ctrl: dict[str, Any] = {}
        self.namespaces: list[Namespace] = []
        self.compute_nsid = 0
        self.max_transfer = PAGE
        self._spare: dict[int, list[DmaBuffer]] = {}
        self._spare_lock = threading.Lock()

    def _take(self, size: int) -> DmaBuffer:
        """A DMA buffer of ``size`` bytes, reused when one is spare."""
        with self._spare_lock:
            spare = self._spare.get(size)
            if spare:
                return spare.pop()
        return self.t.dma_alloc(size)

    def _give(self, buf: DmaBuffer) -> None:
        """Keep ``buf`` for reuse (or free it when enough of its size are kept)."""
        with self._spare_lock:
            spare = self._spare.setdefault(buf.size, [])
            if len(spare) < SPARE_BUFFERS:
                spare.append(buf)
                return
        buf.free()

    def _free_spares(self) -> None:
        with self._spare_lock:
            spares = [b for bufs in self._spare.values() for b in bufs]
            self._spare.clear()
        for b in spares:
            b.free()

    # --- registers -----------------------------------------------------------------------------
    def reg32(self, off: int) -> int:
        """A 32-bit controller register."""
        return self.t.read(0, off, 4)

    def _wait_csts(self, want_ready: bool, what: str) -> None:
        to = max(1, (self.cap >> N.CAP_TO_SHIFT) & 0xFF) * 0.5
        deadline = time.monotonic() + to
        while True:
            csts = self.reg32(N.REG_CSTS)
            if csts & N.CSTS_CFS and want_ready:
                raise OSError(errno.EIO, f"controller fatal status while {what}")
            if bool(csts & N.CSTS_RDY) == want_ready:
                return
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, f"controller not {'ready' if want_ready else 'idle'}"
                              f" within {to} s while {what}")
            time.sleep(0.0005)

    # --- bring-up ------------------------------------------------------------------------------
    def enable(self, admin_depth: int = 32) -> None:
        """Reset the controller, set up the admin queue, enable, identify, size the I/O queues."""
        self.cap = self.t.read(0, N.REG_CAP, 8)
        self.dstrd = N.cap_field(self.cap, N.CAP_DSTRD_SHIFT, 0xF)
        self.disable()
        mqes = (self.cap & N.CAP_MQES_MASK) + 1
        depth = min(admin_depth, mqes, N.AQA_ASQS_MASK + 1)
        self.admin = QueuePair(self.t, 0, depth, 0, self.dstrd, self.use_irq)
        self.t.irq_clear(0)
        self.t.write(0, N.REG_AQA, 4, (depth - 1) | ((depth - 1) << N.AQA_ACQS_SHIFT))
        self.t.write(0, N.REG_ASQ, 8, self.admin.sq.bus_addr)
        self.t.write(0, N.REG_ACQ, 8, self.admin.cq.bus_addr)
        css = (N.CC_CSS_IOCS if N.cap_field(self.cap, N.CAP_CSS_SHIFT, 0xFF) & N.CAP_CSS_IOCS
               else N.CC_CSS_NVM)
        cc = (N.CC_EN | (css << N.CC_CSS_SHIFT) | (N.SQES_LOG2 << N.CC_IOSQES_SHIFT)
              | (N.CQES_LOG2 << N.CC_IOCQES_SHIFT))
        self.t.write(0, N.REG_CC, 4, cc)
        self._wait_csts(True, "enabling")
        self.id_ctrl = N.ID_CTRL.unpack(self.identify(N.Cns.CONTROLLER))
        mdts = int(self.id_ctrl["mdts"])
        self.max_transfer = PAGE << mdts if mdts else 1 << 30
        self.namespaces = self._scan()
        self.compute_nsid = next((n.nsid for n in self.namespaces if n.csi == N.Csi.CP), 0)

    def disable(self) -> None:
        """Clear CC.EN and wait for RDY = 0; forget every queue (the controller deleted them)."""
        if self.reg32(N.REG_CC) & N.CC_EN or self.reg32(N.REG_CSTS) & N.CSTS_RDY:
            self.t.write(0, N.REG_CC, 4, 0)
            self._wait_csts(False, "disabling")
        for qp in list(self.io.values()) + ([self.admin] if self.admin else []):
            qp.free()
        self.io.clear()
        self.admin = None
        self._free_spares()

    def shutdown(self) -> None:
        """Normal shutdown notification; waits (bounded) for SHST = complete."""
        cc = self.reg32(N.REG_CC)
        self.t.write(0, N.REG_CC, 4, (cc & ~(N.CC_SHN_MASK << N.CC_SHN_SHIFT))
                     | (1 << N.CC_SHN_SHIFT))
        deadline = time.monotonic() + self.timeout
        while (self.reg32(N.REG_CSTS) >> N.CSTS_SHST_SHIFT) & N.CSTS_SHST_MASK != N.SHST_COMPLETE:
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, "shutdown did not complete")
            time.sleep(0.0005)

    def close(self) -> None:
        """Disable the controller and free the queues."""
        self.disable()

    def _scan(self) -> list[Namespace]:
        out = []
        for nsid in N.parse_id_list(self.identify(N.Cns.ACTIVE_NS_LIST)):
            desc = N.parse_ns_descriptors(self.identify(N.Cns.NS_DESCRIPTORS, nsid))
            csi = desc.get(N.NIDT_CSI, b"\0")[0]
            size = 0
            if csi == N.Csi.SLM:
                size = int(N.ID_NS_SLM.unpack(self.identify(N.Cns.CSI_NAMESPACE, nsid,
                                                            csi=csi))["msz"])
            out.append(Namespace(nsid, csi, size))
        return out

    @property
    def memory_namespaces(self) -> list[Namespace]:
        """The SLM namespaces."""
        return [n for n in self.namespaces if n.csi == N.Csi.SLM]

    # --- commands ------------------------------------------------------------------------------
    def submit(self, qp: QueuePair, cmd: N.Command, *, data_len: int = 0,
               data: bytes | None = None, what: str | None = None, check: bool = True,
               buffer: tuple[DmaBuffer, int] | None = None, timeout: float | None = None
               ) -> tuple[N.Completion, bytes]:
        """Run ``cmd`` on ``qp`` and wait for it (at most ``timeout`` s, default the host's);
        returns (completion, bytes read).

        ``data`` goes host -> controller; ``data_len`` bytes come back controller -> host.
        ``buffer`` (DMA buffer, offset) transfers in place instead of through a bounce buffer.
        With ``check`` an error status raises ``NvmeStatusError``.
        """
        n = len(data) if data is not None else data_len
        own = None
        lst = None
        done = False
        try:
            if n:
                if buffer is not None:
                    buf, off = buffer
                    if off + n > buf.size:
                        raise ValueError(f"{n} bytes at offset {off} do not fit the buffer")
                else:
                    # Power-of-two sizes bound how many kinds of spare buffers exist.
                    buf = own = self._take(max(PAGE, 1 << (n - 1).bit_length()))
                    off = 0
                if data is not None and buffer is None:
                    buf.view[:n] = data
                cmd.prp1, cmd.prp2, lst = build_prps(self.t, buf.bus_addr + off, n, self._take)
            cid = qp.submit(cmd)
            cqe = qp.wait(cid, self.timeout if timeout is None else timeout)
            out = bytes(buf.view[off:off + n]) if n and data is None and buffer is None else b""
            done = True
        finally:
            # A command that did not complete may still reach its buffers: those are freed,
            # never handed to the next command.
            for b in (lst, own):
                if b is not None:
                    self._give(b) if done else b.free()
        if check and not cqe.ok:
            raise NvmeStatusError(what or f"opcode {cmd.opcode:#04x}", cqe)
        return cqe, out

    def admin_command(self, cmd: N.Command, *, data_len: int = 0, data: bytes | None = None,
                      what: str | None = None, check: bool = True,
                      buffer: tuple[DmaBuffer, int] | None = None,
                      timeout: float | None = None) -> tuple[N.Completion, bytes]:
        """``submit`` on the admin queue."""
        if self.admin is None:
            raise OSError(errno.ENODEV, "controller is not enabled")
        return self.submit(self.admin, cmd, data_len=data_len, data=data, what=what, check=check,
                           buffer=buffer, timeout=timeout)

    def io_queue(self, qid: int = 1) -> QueuePair:
        """I/O queue pair ``qid``, created on first use."""
        qp = self.io.get(qid)
        return qp if qp is not None else self.create_io_queue(qid)

    def io_command(self, cmd: N.Command, qid: int = 1, *, data_len: int = 0,
                   data: bytes | None = None, what: str | None = None, check: bool = True,
                   buffer: tuple[DmaBuffer, int] | None = None,
                   timeout: float | None = None) -> tuple[N.Completion, bytes]:
        """``submit`` on I/O queue ``qid``."""
        return self.submit(self.io_queue(qid), cmd, data_len=data_len, data=data, what=what,
                           check=check, buffer=buffer, timeout=timeout)

    def abort_program(self, pind: int) -> bool:
        """Abort the Execute Program of index ``pind`` in progress, whatever its queue (Abort with
        SQID FFFFh, this controller's extension); True when the controller aborted one."""
        cqe, _ = self.admin_command(N.Command(N.AdminOpcode.ABORT,
                                              cdw10=N.ABORT_BY_PROGRAM | (pind << 16)),
                                    what="Abort", check=False)
        return cqe.ok and not cqe.dw0 & 1

    def drain_queue(self, qid: int) -> None:
        """Wait (at most the host's timeout each) for the commands outstanding on I/O queue
        ``qid`` and drop their completions (after an interrupted wait)."""
        qp = self.io.get(qid)
        if qp is None:
            return
        for cid in qp.outstanding():
            try:
                qp.wait(cid, self.timeout)
            except OSError:
                return

    def identify(self, cns: int, nsid: int = 0, *, csi: int = 0) -> bytes:
        """The 4 KiB Identify structure ``cns``."""
        cmd = N.Command(N.AdminOpcode.IDENTIFY, nsid=nsid, cdw10=cns, cdw11=(csi & 0xFF) << 24)
        return self.admin_command(cmd, data_len=N.IDENTIFY_SIZE, what=f"Identify CNS {cns:#x}")[1]

    def get_log_page(self, lid: int, nbytes: int, *, offset: int = 0, csi: int = 0,
                     nsid: int = 0xFFFF_FFFF) -> bytes:
        """``nbytes`` of log page ``lid`` from byte ``offset``."""
        c10, c11, c12, c13, c14 = N.get_log_page_dwords(lid, nbytes, offset, csi)
        cmd = N.Command(N.AdminOpcode.GET_LOG_PAGE, nsid=nsid, cdw10=c10, cdw11=c11, cdw12=c12,
                        cdw13=c13, cdw14=c14)
        return self.admin_command(cmd, data_len=nbytes, what=f"Get Log Page {lid:#x}")[1]

    def set_features(self, fid: int, cdw11: int) -> int:
        """Set Features; returns completion DW0."""
        cmd = N.Command(N.AdminOpcode.SET_FEATURES, cdw10=fid, cdw11=cdw11)
        return self.admin_command(cmd, what=f"Set Features {fid:#x}")[0].dw0

    def get_features(self, fid: int, sel: int = 0, cdw11: int = 0) -> int:
        """Get Features; returns completion DW0."""
        cmd = N.Command(N.AdminOpcode.GET_FEATURES, cdw10=fid | (sel << N.FEAT_SEL_SHIFT),
                        cdw11=cdw11)
        return self.admin_command(cmd, what=f"Get Features {fid:#x}")[0].dw0

    def create_io_queue(self, qid: int, depth: int = 64, vector: int | None = None) -> QueuePair:
        """Create I/O CQ and SQ ``qid`` (interrupting on ``vector``, default ``qid``)."""
        if qid in self.io:
            raise ValueError(f"I/O queue {qid} exists")
        vec = qid % self.t.num_vectors if vector is None else vector
        depth = min(depth, (self.cap & N.CAP_MQES_MASK) + 1)
        qp = QueuePair(self.t, qid, depth, vec, self.dstrd, self.use_irq)
        try:
            ien = N.CQ_IEN if self.use_irq else 0
            self.admin_command(N.Command(N.AdminOpcode.CREATE_IO_CQ, prp1=qp.cq.bus_addr,
                                         cdw10=qid | ((depth - 1) << 16),
                                         cdw11=N.CQ_PC | ien | (vec << 16)),
                               what=f"Create I/O CQ {qid}")
            try:
                self.admin_command(N.Command(N.AdminOpcode.CREATE_IO_SQ, prp1=qp.sq.bus_addr,
                                             cdw10=qid | ((depth - 1) << 16),
                                             cdw11=N.SQ_PC | (qid << 16)),
                                   what=f"Create I/O SQ {qid}")
            except BaseException:
                self.admin_command(N.Command(N.AdminOpcode.DELETE_IO_CQ, cdw10=qid), check=False)
                raise
        except BaseException:
            qp.free()
            raise
        self.io[qid] = qp
        return qp

    def delete_io_queue(self, qid: int) -> None:
        """Delete I/O SQ then CQ ``qid`` and free their rings."""
        qp = self.io.pop(qid)
        try:
            self.admin_command(N.Command(N.AdminOpcode.DELETE_IO_SQ, cdw10=qid),
                               what=f"Delete I/O SQ {qid}")
            self.admin_command(N.Command(N.AdminOpcode.DELETE_IO_CQ, cdw10=qid),
                               what=f"Delete I/O CQ {qid}")
        finally:
            qp.free()

    # --- Computational Programs ----------------------------------------------------------------
    def load_program(self, pind: int, code: bytes, *, chunk: int = DEFAULT_LOAD_CHUNK,
                     pid: int | None = None, entry: int = 0) -> None:
        """Download ``code`` (eBPF bytecode or an ELF object) to program index ``pind``.

        The bytes are padded with zeros to the controller's load granularity (4 bytes) and sent
        in chunks of ``chunk`` bytes. ``entry`` (an ELF symbol table index, 0: the default
        entry) goes in the PID with PIT 7 instead of a ``pid``.
        """
        if not code:
            raise ValueError("program is empty")
        if chunk <= 0 or chunk % 4:
            raise ValueError("chunk must be a positive multiple of 4")
        data = bytes(code) + bytes(-len(code) % 4)
        pit = N.PIT_NONE if pid is None else N.PIT_PID
        if entry:
            pit, pid = N.PIT_ENTRY_SYMBOL, entry
        cdw10 = N.load_program_cdw10(pind, N.PTYPE_EBPF, N.LOAD_SEL_LOAD, pit)
        for off in range(0, len(data), chunk):
            part = data[off:off + chunk]
            cmd = N.Command(N.AdminOpcode.LOAD_PROGRAM, nsid=self.compute_nsid, cdw10=cdw10,
                            cdw11=len(data), cdw12=(pid or 0) & 0xFFFF_FFFF,
                            cdw13=(pid or 0) >> 32, cdw14=len(part), cdw15=off)
            self.admin_command(cmd, data=part, what=f"Load Program {pind}")

    def unload_program(self, pind: int) -> None:
        """Remove the downloaded program at ``pind``."""
        cmd = N.Command(N.AdminOpcode.LOAD_PROGRAM, nsid=self.compute_nsid,
                        cdw10=N.load_program_cdw10(pind, sel=N.LOAD_SEL_UNLOAD))
        self.admin_command(cmd, what=f"unload program {pind}")

    def activate(self, pind: int, active: bool = True) -> None:
        """Activate (or deactivate) program ``pind``."""
        sel = N.ACT_SEL_ACTIVATE if active else N.ACT_SEL_DEACTIVATE
        cmd = N.Command(N.AdminOpcode.PROGRAM_ACTIVATION, nsid=self.compute_nsid,
                        cdw10=N.activation_cdw10(pind, sel))
        self.admin_command(cmd, what=f"Program Activation {pind}")

    def create_range_set(self, ranges: list[N.MemoryRange]) -> int:
        """Create a memory range set; returns its RSID."""
        cmd = N.Command(N.AdminOpcode.MEMORY_RANGE_SET, nsid=self.compute_nsid,
                        cdw10=N.mrs_cdw10(N.MRS_SEL_CREATE), cdw11=len(ranges))
        return self.admin_command(cmd, data=N.pack_ranges(ranges),
                                  what="create memory range set")[0].dw0

    def delete_range_set(self, rsid: int) -> None:
        """Delete memory range set ``rsid``."""
        cmd = N.Command(N.AdminOpcode.MEMORY_RANGE_SET, nsid=self.compute_nsid,
                        cdw10=N.mrs_cdw10(N.MRS_SEL_DELETE, rsid))
        self.admin_command(cmd, what=f"delete memory range set {rsid}")

    def execute_command(self, pind: int, *, rsid: int = 0,
                        ranges: list[N.MemoryRange] | tuple[N.MemoryRange, ...] = (),
                        cparam1: int = 0, cparam2: int = 0, data: bytes = b""
                        ) -> tuple[N.Command, bytes]:
        """The Execute Program command and its data buffer (inline ranges, then ``data``)."""
        buf = N.pack_ranges(list(ranges)) + data
        c2, c3, c15 = N.execute_dwords(pind, rsid, len(ranges), len(buf))
        cmd = N.Command(N.CpOpcode.EXECUTE_PROGRAM, nsid=self.compute_nsid, cdw2=c2, cdw3=c3,
                        cdw15=c15, cdw10=cparam1 & 0xFFFF_FFFF, cdw11=(cparam1 >> 32) & 0xFFFF_FFFF,
                        cdw12=cparam2 & 0xFFFF_FFFF, cdw13=(cparam2 >> 32) & 0xFFFF_FFFF)
        return cmd, buf

    def execute(self, pind: int, *, qid: int = 1, timeout: float | None = None,
                **kw: object) -> int:
        """Execute Program ``pind`` (waiting at most ``timeout`` s, default the host's); returns
        its 64-bit result (see ``execute_command``)."""
        cmd, buf = self.execute_command(pind, **kw)  # type: ignore[arg-type]
        cqe, _ = self.io_command(cmd, qid, data=buf if buf else None,
                                 what=f"Execute Program {pind}", timeout=timeout)
        return cqe.result64

    # --- Subsystem Local Memory ------------------------------------------------------------------
    def mem_write(self, nsid: int, start: int, data: bytes | None = None, *, qid: int = 1,
                  buffer: tuple[DmaBuffer, int, int] | None = None) -> None:
        """Memory Write ``data`` (or ``buffer`` = (DMA buffer, offset, length)) at ``start``."""
        n = len(data) if data is not None else buffer[2]  # type: ignore[index]
        cmd = N.Command(N.SlmOpcode.MEMORY_WRITE, nsid=nsid, cdw10=start & 0xFFFF_FFFF,
                        cdw11=start >> 32, cdw12=n)
        if buffer is not None:
            self.io_command(cmd, qid, data_len=n, buffer=buffer[:2], what="Memory Write")
        else:
            self.io_command(cmd, qid, data=data, what="Memory Write")

    def mem_read(self, nsid: int, start: int, length: int, *, qid: int = 1,
                 buffer: tuple[DmaBuffer, int] | None = None) -> bytes:
        """Memory Read ``length`` bytes at ``start`` (into ``buffer`` when given; then b"")."""
        cmd = N.Command(N.SlmOpcode.MEMORY_READ, nsid=nsid, cdw10=start & 0xFFFF_FFFF,
                        cdw11=start >> 32, cdw12=length)
        return self.io_command(cmd, qid, data_len=length, buffer=buffer, what="Memory Read")[1]

    def mem_fill(self, nsid: int, start: int, length: int, pattern: int = 0, *,
                 qid: int = 1) -> None:
        """Memory Fill ``length`` bytes at ``start`` with the 32-bit ``pattern``."""
        cmd = N.Command(N.SlmOpcode.MEMORY_FILL, nsid=nsid, cdw10=start & 0xFFFF_FFFF,
                        cdw11=start >> 32, cdw12=length, cdw13=pattern)
        self.io_command(cmd, qid, what="Memory Fill")

    def mem_copy(self, nsid: int, dest: int, sources: list[N.CopySource], *,
                 qid: int = 1) -> None:
        """Memory Copy ``sources`` (format 4h) to ``dest`` of memory namespace ``nsid``."""
        if not sources:
            raise ValueError("Memory Copy needs at least one source")
        total = sum(s.length for s in sources)
        cmd = N.Command(N.SlmOpcode.MEMORY_COPY, nsid=nsid, cdw2=total & 0xFFFF_FFFF,
                        cdw3=total >> 32, cdw10=dest & 0xFFFF_FFFF, cdw11=dest >> 32,
                        cdw12=(len(sources) - 1) | (N.COPY_FORMAT_SLM << N.COPY_FORMAT_SHIFT))
        self.io_command(cmd, qid, data=b"".join(s.pack() for s in sources), what="Memory Copy")

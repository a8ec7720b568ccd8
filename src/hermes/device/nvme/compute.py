"""The NVMe model's CP and SLM command sets: memory namespaces, programs, range sets, Execute."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ... import engine as _engine, nvme_regs as N
from ...engine.asm import assemble_program
from ...engine.elf import load_elf
from ...errors import Cancelled, ExecutionError, ProgramError
from ..commands import ELF_MAGIC, error_code

#: Program index states.
EMPTY, LOADING, LOADED = 0, 1, 2


class CommandError(Exception):
    """A command fails with ``status`` (and completion DW0 ``dw0``)."""

    def __init__(self, status: N.Status, why: str = "", dw0: int = 0):
        super().__init__(why or status.name)
        self.status = status
        self.dw0 = dw0


def check(ok: object, status: N.Status, why: str = "") -> None:
    """Raise ``CommandError(status)`` unless ``ok`` is true."""
    if not ok:
        raise CommandError(status, why)


@dataclass
class Limits:
    """The compute namespace's limits, reported in its Identify Namespace structure."""

    program_indexes: int = 16
    max_active: int = 8
    max_range_sets: int = 32
    max_ranges: int = 16
    #: Memory range granularity exponent: offsets and lengths are multiples of 2^mrsg bytes.
    mrsg: int = 3
    #: Load program granularity exponent (PSIZE a multiple of 2^lpg).
    lpg: int = 2
    #: All downloaded programs together, in MiB (Identify MAXPB).
    max_program_mib: int = 4
    #: One program at most (the engine's ELF/bytecode limit is above it).
    max_program_bytes: int = 1 << 20
    #: Memory Copy: most bytes (MCL) and source ranges (MSRC) per command.
    max_copy_bytes: int = 16 << 20
    max_copy_sources: int = 128


class MemoryNamespace:
    """A byte-addressed SLM namespace of ``size`` bytes."""

    csi = N.Csi.SLM

    def __init__(self, nsid: int, size: int):
        self.nsid = nsid
        self.size = size
        self.data = bytearray(size)
        self.view = memoryview(self.data)

    def span(self, start: int, length: int) -> memoryview:
        """The bytes [start, start + length), which the caller has checked."""
        return self.view[start:start + length]


@dataclass
class ProgramEntry:
    """One program index of the compute namespace."""

    index: int
    state: int = EMPTY
    device_defined: bool = False
    ptype: int = 0
    pit: int = 0
    pid: int = 0
    psize: int = 0
    buf: bytearray = field(default_factory=bytearray)
    executable: object | None = None
    active: bool = False
    #: Execute Program commands using it right now.
    users: int = 0
    #: The Execution Record (log page C0h) of its last Execute Program.
    record: bytes = bytes(N.EXEC_RECORD_SIZE)
    runs: int = 0

    def clear(self) -> None:
        """Back to an empty index."""
        self.state, self.ptype, self.pit, self.pid, self.psize = EMPTY, 0, 0, 0, 0
        self.buf = bytearray()
        self.executable = None
        self.active = False
        self.record = bytes(N.EXEC_RECORD_SIZE)


@dataclass
class RangeSet:
    """A stored memory range set."""

    rsid: int
    ranges: list[N.MemoryRange]
    users: int = 0


#: A device-defined program at the last index: the sum of the whole 64-bit little-endian words
#: of its input (r1, r2), so hosts can test "not downloadable" against a real program.
SUM64_ASM = """
mov r0, 0
add r2, r1
mov r3, r1
loop:
mov r4, r3
add r4, 8
jgt r4, r2, done
ldxdw r5, [r3]
add r0, r5
mov r3, r4
ja loop
done:
exit
"""


class ComputeNamespace:
    """The CP namespace: program indexes, activation, memory range sets and Execute Program."""

    csi = N.Csi.CP

    def __init__(self, nsid: int, memory: dict[int, MemoryNamespace], limits: Limits,
                 executor: str | None, budget: int | None):
        self.nsid = nsid
        self.memory = memory
        self.limits = limits
        self.executor = executor
        self.budget = budget if budget is not None else _engine.DEFAULT_BUDGET
        self.lock = threading.Lock()
        self.programs = [ProgramEntry(i) for i in range(limits.program_indexes)]
        self.sets: dict[int, RangeSet] = {}
        builtin = self.programs[-1]
        builtin.device_defined = True
        builtin.state = LOADED
        builtin.ptype = N.PTYPE_EBPF
        builtin.executable = self._compile(assemble_program(SUM64_ASM, name="sum64"))

    # --- identify ---------------------------------------------------------------------------------
    def identify(self) -> bytes:
        """The CP Identify Namespace structure."""
        lim = self.limits
        return N.ID_NS_CP.pack(maxact=lim.max_active, maxmemrs=lim.max_range_sets,
                               mrsg=lim.mrsg, maxmemr=lim.max_ranges,
                               maxpb=lim.max_program_mib, lpg=lim.lpg,
                               numpi=lim.program_indexes)

    def _compile(self, program: _engine.Program) -> object:
        return _engine.load(program, executor=self.executor, budget=self.budget)

    def _entry(self, pind: int) -> ProgramEntry:
        check(pind < len(self.programs), N.INVALID_PROGRAM_INDEX,
              f"program index {pind} is not below {len(self.programs)}")
        return self.programs[pind]

    # --- Load Program -----------------------------------------------------------------------------
    def load_program(self, cmd: N.Command, data_in: Callable[[int], bytes]) -> int:
        """Load Program (85h): one chunk of a download, or an unload."""
        pind, ptype = cmd.cdw10 & 0xFFFF, (cmd.cdw10 >> 16) & 0xFF
        sel, pit = (cmd.cdw10 >> 24) & 1, (cmd.cdw10 >> 25) & 7
        with self.lock:
            entry = self._entry(pind)
            if sel == N.LOAD_SEL_UNLOAD:
                check(entry.state != EMPTY, N.NO_PROGRAM, f"program index {pind} is empty")
                check(not entry.device_defined, N.PROGRAM_NOT_DOWNLOADABLE)
                check(not entry.active, N.PROGRAM_IN_USE, "deactivate the program first")
                entry.clear()
                return 0
            check(not entry.device_defined, N.PROGRAM_NOT_DOWNLOADABLE,
                  f"program index {pind} holds a device-defined program")
            check(ptype == N.PTYPE_EBPF, N.INVALID_PROGRAM_TYPE,
                  f"program type {ptype:#x} is not eBPF ({N.PTYPE_EBPF:#x})")
            check(pit in (N.PIT_NONE, N.PIT_PID, N.PIT_ENTRY_SYMBOL), N.INVALID_FIELD,
                  f"PIT {pit} is reserved")
            psize, numb, loff = cmd.cdw11, cmd.cdw14, cmd.cdw15
            pid = cmd.cdw12 | (cmd.cdw13 << 32)
            lim = self.limits
            if loff == 0:
                check(entry.state != LOADED, N.PROGRAM_IN_USE,
                      f"program index {pind} holds a program; unload it first")
                gran = 1 << lim.lpg
                check(psize > 0 and psize % gran == 0, N.INVALID_PROGRAM_DATA,
                      f"PSIZE {psize} is not a positive multiple of {gran}")
                check(psize <= lim.max_program_bytes, N.PROGRAM_TOO_BIG,
                      f"PSIZE {psize} exceeds {lim.max_program_bytes} bytes")
                others = sum(p.psize for p in self.programs
                             if p is not entry and not p.device_defined)
                check(others + psize <= lim.max_program_mib << 20, N.MAX_PROGRAM_BYTES_EXCEEDED)
                entry.clear()
                entry.state, entry.ptype, entry.pit, entry.pid, entry.psize = (
                    LOADING, ptype, pit, pid, psize)
            else:
                check(entry.state == LOADING, N.INVALID_PROGRAM_DATA,
                      f"no download in progress at program index {pind}")
                check((psize, ptype, pit, pid) == (entry.psize, entry.ptype, entry.pit, entry.pid)
                      and loff == len(entry.buf), N.INVALID_PROGRAM_DATA,
                      f"chunk at offset {loff} does not continue the download "
                      f"({len(entry.buf)} of {entry.psize} bytes so far)")
            check(numb > 0 and numb % 4 == 0, N.INVALID_FIELD,
                  f"NUMB {numb} is not a positive multiple of 4")
            check(loff + numb <= entry.psize, N.PROGRAM_TOO_BIG,
                  f"chunk ends at {loff + numb}, past PSIZE {entry.psize}")
        chunk = data_in(numb)
        with self.lock:
            entry.buf += chunk
            if len(entry.buf) < entry.psize:
                return 0
            code = bytes(entry.buf)
            try:
                if code[:4] == ELF_MAGIC:
                    symbol = entry.pid if entry.pit == N.PIT_ENTRY_SYMBOL else 0
                    program = load_elf(code, entry_symbol=symbol)
                else:
                    program = _engine.Program.from_bytes(code)
                entry.executable = self._compile(program)
            except ProgramError as exc:
                entry.clear()
                raise CommandError(N.INVALID_PROGRAM_DATA, f"program rejected: {exc}",
                                   error_code(exc)) from None
            entry.state = LOADED
            entry.buf = bytearray()
        return 0

    # --- Program Activation Management ------------------------------------------------------------
    def activation(self, cmd: N.Command) -> int:
        """Program Activation Management (88h)."""
        pind, sel = cmd.cdw10 & 0xFFFF, (cmd.cdw10 >> 16) & 0xF
        with self.lock:
            entry = self._entry(pind)
            check(sel in (N.ACT_SEL_ACTIVATE, N.ACT_SEL_DEACTIVATE), N.INVALID_FIELD,
                  f"activation SEL {sel} is reserved")
            check(entry.state != EMPTY, N.NO_PROGRAM, f"program index {pind} is empty")
            check(entry.state == LOADED, N.INVALID_PROGRAM_DATA,
                  f"program index {pind} is only partly downloaded")
            if sel == N.ACT_SEL_ACTIVATE:
                if not entry.active:
                    active = sum(p.active for p in self.programs)
                    check(active < self.limits.max_active, N.MAX_PROGRAMS_ACTIVATED)
                    entry.active = True
            else:
                check(entry.users == 0, N.PROGRAM_IN_USE, "the program is executing")
                entry.active = False
        return 0

    # --- Memory Range Set Management --------------------------------------------------------------
    def range_set(self, cmd: N.Command, data_in: Callable[[int], bytes]) -> int:
        """Memory Range Set Management (89h): create (DW0 = the new RSID) or delete."""
        sel, rsid, numr = cmd.cdw10 & 0xF, cmd.cdw10 >> 16, cmd.cdw11 & 0xFF
        if sel == N.MRS_SEL_DELETE:
            with self.lock:
                rs = self.sets.get(rsid)
                check(rs is not None, N.INVALID_MEMORY_RANGE_SET_ID, f"no range set {rsid}")
                check(rs.users == 0, N.MEMORY_RANGE_SET_IN_USE)  # type: ignore[union-attr]
                del self.sets[rsid]
            return 0
        check(sel == N.MRS_SEL_CREATE, N.INVALID_FIELD, f"range set SEL {sel} is reserved")
        check(0 < numr <= self.limits.max_ranges, N.MAX_MEMORY_RANGES_EXCEEDED,
              f"NUMR {numr} is not in 1..{self.limits.max_ranges}")
        with self.lock:
            check(len(self.sets) < self.limits.max_range_sets, N.MAX_MEMORY_RANGE_SETS_EXCEEDED)
        ranges = N.unpack_ranges(data_in(numr * N.RANGE_SIZE), numr)
        self.check_ranges(ranges)
        with self.lock:
            check(len(self.sets) < self.limits.max_range_sets, N.MAX_MEMORY_RANGE_SETS_EXCEEDED)
            rsid = next(i for i in range(1, 1 << 16) if i not in self.sets)
            self.sets[rsid] = RangeSet(rsid, ranges)
        return rsid

    def check_ranges(self, ranges: list[N.MemoryRange]) -> None:
        """Every range names a memory namespace, lies inside it on the granularity, and no two
        ranges of one namespace overlap."""
        gran = 1 << self.limits.mrsg
        for i, r in enumerate(ranges):
            ns = self.memory.get(r.nsid)
            check(ns is not None, N.INVALID_MEMORY_NAMESPACE,
                  f"range {i}: namespace {r.nsid} is not a memory namespace")
            check(r.length > 0 and r.start % gran == 0 and r.length % gran == 0,
                  N.INVALID_MEMORY_RANGE_SET,
                  f"range {i}: start and length must be positive multiples of {gran}")
            check(r.end <= ns.size, N.INVALID_MEMORY_RANGE_SET,  # type: ignore[union-attr]
                  f"range {i}: [{r.start}, {r.end}) is past the namespace's end")
        by_ns = sorted(ranges, key=lambda r: (r.nsid, r.start))
        for a, b in zip(by_ns, by_ns[1:], strict=False):
            check(a.nsid != b.nsid or a.end <= b.start, N.OVERLAPPING_MEMORY_RANGES,
                  f"ranges [{a.start}, {a.end}) and [{b.start}, {b.end}) of namespace "
                  f"{a.nsid} overlap")

    # --- Execute Program --------------------------------------------------------------------------
    def execute(self, cmd: N.Command, data_in: Callable[[int], bytes], max_transfer: int,
                cancel: _engine.Cancel) -> int:
        """Execute Program (CP 01h); returns the program's 64-bit r0."""
        pind, rsid = cmd.cdw2 & 0xFFFF, cmd.cdw2 >> 16
        numr, dlen = cmd.cdw3, cmd.cdw15
        check(not (rsid and numr), N.INVALID_FIELD, "RSID and inline ranges are exclusive")
        check(numr <= self.limits.max_ranges, N.MAX_MEMORY_RANGES_EXCEEDED,
              f"NUMR {numr} exceeds {self.limits.max_ranges}")
        check(dlen >= numr * N.RANGE_SIZE and dlen <= max_transfer, N.INVALID_FIELD,
              f"DLEN {dlen} does not hold {numr} range descriptors or exceeds the transfer limit")
        with self.lock:
            entry = self._entry(pind)
            check(entry.state != EMPTY, N.NO_PROGRAM, f"program index {pind} is empty")
            check(entry.active, N.PROGRAM_NOT_ACTIVATED, f"program {pind} is not activated")
            rs = None
            if rsid:
                rs = self.sets.get(rsid)
                check(rs is not None, N.INVALID_MEMORY_RANGE_SET_ID, f"no range set {rsid}")
                rs.users += 1  # type: ignore[union-attr]
            entry.users += 1
        try:
            data = data_in(dlen) if dlen else b""
            if rs is not None:
                ranges = rs.ranges
            else:
                ranges = N.unpack_ranges(data, numr)
                self.check_ranges(ranges)
            extra = data[numr * N.RANGE_SIZE:]
            return self._run(entry, ranges, extra, cmd, cancel)
        finally:
            with self.lock:
                entry.users -= 1
                if rs is not None:
                    rs.users -= 1

    def _run(self, entry: ProgramEntry, ranges: list[N.MemoryRange], extra: bytes,
             cmd: N.Command, cancel: _engine.Cancel) -> int:
        length = cmd.cdw10 | (cmd.cdw11 << 32)
        arg0 = cmd.cdw12 | (cmd.cdw13 << 32)
        arg1, arg2, window, budget = N.unpack_exec_params(extra)
        total = sum(r.length for r in ranges)
        window = window or total
        check(window <= total, N.INVALID_FIELD,
              f"window of {window} bytes is larger than the ranges ({total} bytes)")
        check(length <= window, N.INVALID_FIELD,
              f"input length {length} (CPARAM1) is larger than the window ({window} bytes)")
        mem = bytearray(total)
        pos = 0
        for r in ranges:
            mem[pos:pos + r.length] = self.memory[r.nsid].span(r.start, r.length)
            pos += r.length
        # The window past the input reads as zero (the run contract), as it will afterwards.
        mem[length:window] = bytes(window - length)
        view = memoryview(mem)[:window]
        entry.runs += 1
        try:
            result = entry.executable.run(  # type: ignore[attr-defined]
                view, budget or self.budget, cancel=cancel, length=length,
                args=(arg0, arg1, arg2))
        except Cancelled as exc:
            self._record(entry, exc.instructions or 0, 0, None, exc)
            raise CommandError(N.ABORT_REQUESTED, "aborted") from None
        except (ExecutionError, ProgramError) as exc:
            self._record(entry, getattr(exc, "instructions", None) or 0, 0, None, exc)
            raise CommandError(N.PROGRAM_FAILED, str(exc), error_code(exc)) from None
        else:
            self._record(entry, result.instructions, result.elapsed_ns, result.output_length,
                         None, result.trace, result.trace_dropped)
        finally:
            view.release()
            # Ranges are the program's memory: what it stored stays, as on a device that runs
            # programs in place, also when the run fails part way.
            pos = 0
            for r in ranges:
                self.memory[r.nsid].span(r.start, r.length)[:] = memoryview(mem)[pos:pos + r.length]
                pos += r.length
        return result.return_value

    @staticmethod
    def _record(entry: ProgramEntry, instructions: int, elapsed_ns: int,
                output_length: int | None, exc: BaseException | None, trace: bytes = b"",
                dropped: int = 0) -> None:
        """Keep the Execution Record of the run that just ended."""
        fault = exc if isinstance(exc, ExecutionError) else None
        if fault is not None:  # what a failed or aborted run printed before it stopped
            trace, dropped = fault.trace.encode("utf-8"), fault.trace_dropped
        trace = trace[:N.EXEC_RECORD_TRACE]
        header = N.EXEC_RECORD.pack(
            instructions=instructions, elapsed_ns=elapsed_ns,
            output_length=N.NO_OUTPUT_LENGTH if output_length is None else output_length,
            fault_address=(fault.address or 0) if fault else 0,
            fault_size=(fault.size or 0) if fault else 0,
            fault_write=int(bool(fault.write)) if fault else 0,
            fault_depth=min(fault.depth, N.EXEC_RECORD_DEPTH_MAX) if fault else 0,
            trace_length=len(trace), trace_dropped=dropped, sequence=entry.runs,
            pc=(getattr(exc, "pc", None) or 0) & 0xFFFF_FFFF)
        entry.record = header + trace.ljust(N.EXEC_RECORD_TRACE, b"\0")

    def execution_records(self) -> bytes:
        """Log page C0h: the Execution Record of every program index, in index order."""
        with self.lock:
            return b"".join(p.record for p in self.programs)

    def reset(self) -> None:
        """Controller reset: a download that was not finished is dropped (see specs/nvme-cp.md)."""
        with self.lock:
            for p in self.programs:
                if p.state == LOADING:
                    p.clear()


class MemoryCommands:
    """The SLM I/O commands on the controller's memory namespaces."""

    def __init__(self, memory: dict[int, MemoryNamespace], limits: Limits):
        self.memory = memory
        self.limits = limits

    def _span(self, ns: MemoryNamespace, start: int, length: int, what: str) -> memoryview:
        check(start % 4 == 0 and length % 4 == 0 and length > 0, N.INVALID_FIELD,
              f"{what}: start {start} and length {length} must be dword multiples, length > 0")
        check(start + length <= ns.size, N.INVALID_FIELD,
              f"{what}: [{start}, {start + length}) is past the namespace end ({ns.size})")
        return ns.span(start, length)

    def read(self, ns: MemoryNamespace, cmd: N.Command, data_out: Callable[[memoryview], None],
             max_transfer: int) -> None:
        """Memory Read (02h): device memory -> host."""
        start, length = cmd.cdw10 | (cmd.cdw11 << 32), cmd.cdw12
        check(length <= max_transfer, N.INVALID_FIELD, f"length {length} exceeds MDTS")
        data_out(self._span(ns, start, length, "Memory Read"))

    def write(self, ns: MemoryNamespace, cmd: N.Command,
              data_into: Callable[[memoryview], None], max_transfer: int) -> None:
        """Memory Write (05h): host -> device memory."""
        start, length = cmd.cdw10 | (cmd.cdw11 << 32), cmd.cdw12
        check(length <= max_transfer, N.INVALID_FIELD, f"length {length} exceeds MDTS")
        data_into(self._span(ns, start, length, "Memory Write"))

    def fill(self, ns: MemoryNamespace, cmd: N.Command) -> None:
        """Memory Fill (04h): the range takes the 32-bit pattern of CDW13."""
        start, length = cmd.cdw10 | (cmd.cdw11 << 32), cmd.cdw12
        dest = self._span(ns, start, length, "Memory Fill")
        dest[:] = cmd.cdw13.to_bytes(4, "little") * (length // 4)

    def copy(self, ns: MemoryNamespace, cmd: N.Command, data_in: Callable[[int], bytes]) -> None:
        """Memory Copy (01h): format 4h sources (memory namespaces) -> ``ns`` at CDW10-11."""
        total = cmd.cdw2 | (cmd.cdw3 << 32)
        dest_start = cmd.cdw10 | (cmd.cdw11 << 32)
        nr = (cmd.cdw12 & 0xFF) + 1
        fmt = (cmd.cdw12 >> N.COPY_FORMAT_SHIFT) & 0xF
        check(fmt == N.COPY_FORMAT_SLM, N.INVALID_FIELD,
              f"descriptor format {fmt:#x} is not supported (only {N.COPY_FORMAT_SLM:#x})")
        lim = self.limits
        check(nr <= lim.max_copy_sources and total <= lim.max_copy_bytes,
              N.COMMAND_SIZE_LIMIT_EXCEEDED,
              f"{nr} sources / {total} bytes exceed {lim.max_copy_sources} / {lim.max_copy_bytes}")
        raw = data_in(nr * N.COPY_DESC_SIZE)
        sources = [N.CopySource.unpack(raw[i * N.COPY_DESC_SIZE:(i + 1) * N.COPY_DESC_SIZE])
                   for i in range(nr)]
        check(sum(s.length for s in sources) == total, N.INVALID_FIELD,
              f"the sources hold {sum(s.length for s in sources)} bytes, not LENGTH {total}")
        dest = self._span(ns, dest_start, total, "Memory Copy destination")
        spans = []
        for i, s in enumerate(sources):
            src_ns = self.memory.get(s.nsid)
            if src_ns is None:
                raise CommandError(N.INCOMPATIBLE_NAMESPACE,
                                   f"source {i}: namespace {s.nsid} is not a memory namespace")
            spans.append(self._span(src_ns, s.start, s.length, f"Memory Copy source {i}"))
            check(s.nsid != ns.nsid or s.start + s.length <= dest_start
                  or dest_start + total <= s.start, N.OVERLAPPING_IO_RANGE,
                  f"source {i} overlaps the destination")
        pos = 0
        for span in spans:
            dest[pos:pos + len(span)] = span
            pos += len(span)

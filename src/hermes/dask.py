"""Scale-out over dask.distributed: workers' devices as resources, one program over many pieces."""
from __future__ import annotations

import asyncio
import dataclasses
import errno as errno_codes
import functools
import hashlib
import mmap
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# Absolute imports: inside this module ``dask`` and ``distributed`` are the real packages.
import dask
import distributed
from distributed.diagnostics.plugin import WorkerPlugin

from hermes.errors import DeviceError, DeviceTimeout, HermesError, RunTimeout, UsageError
from hermes.lib import Result, open_device, program_bytes
from hermes.lib.api import ProgramLike, check_buffer
from hermes.lib.pieces import Piece, data_slot_size, pieces, with_piece

#: Name the plugin is registered under on every worker (``worker.plugins[PLUGIN_NAME]``).
PLUGIN_NAME = "hermes"
#: A device of spec ``prefix[:address]`` is offered as the worker resource ``hermes-prefix``.
RESOURCE_PREFIX = "hermes-"
#: The dask configuration key a worker reads its devices from when the plugin names none.
CONFIG_KEY = "hermes.devices"
#: Programs kept prepared per device (by content hash); older ones are dropped first.
PROGRAM_CACHE = 16
#: Seconds a job waits for some worker to offer its resource again (a restarting worker's
#: nanny brings it back within a few seconds) before it fails naming the resource.
NO_DEVICE_GRACE = 20.0
#: Bytes of file pieces one task carries by default, and the most pieces it carries: a dask
#: task costs milliseconds of scheduling, a local piece tens of microseconds.
TASK_BYTES = 4 << 20
MAX_BATCH = 64
#: Times one piece is sent again after losing its device before the job fails.
MAX_RESENDS = 3
#: Seconds between the client's checks of a job that makes no progress.
POLL = 0.5

#: Errors of a run that say the device, not the piece, failed: the device is gone or unusable.
_LOST_ERRNOS = {errno_codes.ENODEV, errno_codes.ENOTCONN, errno_codes.ECONNRESET,
                errno_codes.EPIPE, errno_codes.EIO, errno_codes.ETIMEDOUT, errno_codes.EBADE}


class DeviceLost(DeviceError):
    """A worker's device stopped working during a job (closed, unplugged, its server gone).

    ``worker`` is the worker's address, ``spec`` the device's spec; the piece that was running
    is named in the message and by ``piece_index``/``piece_offset``/``piece_source``.
    """

    def __init__(self, message: str, errno: int | None = None, *, worker: str | None = None,
                 spec: str | None = None):
        super().__init__(message, errno)
        self.worker = worker
        self.spec = spec


def resource_name(spec: str) -> str:
    """The worker resource a device of ``spec`` offers: ``hermes-`` + the spec's prefix."""
    return RESOURCE_PREFIX + spec.partition(":")[0]


@dataclass(frozen=True)
class DeviceConfig:
    """One device a worker opens: ``hermes.open(spec, **options)``, offered as ``resource``."""

    spec: str
    options: dict = dataclasses.field(default_factory=dict)
    resource: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec:
            raise UsageError(f"a device spec is a non-empty string such as 'emu', "
                             f"got {self.spec!r}")
        if not isinstance(self.options, dict):
            raise UsageError(f"options of device {self.spec!r} must be a dict, got "
                             f"{type(self.options).__name__}")
        if not self.resource:
            object.__setattr__(self, "resource", resource_name(self.spec))
        elif not self.resource.startswith(RESOURCE_PREFIX):
            raise UsageError(f"resource {self.resource!r} of device {self.spec!r} must start "
                             f"with {RESOURCE_PREFIX!r}")


def device_configs(devices: object) -> list[DeviceConfig]:
    """``devices`` as DeviceConfigs: a spec, or a list of specs, ``(spec, options)`` pairs and
    ``{"spec": ..., "options": {...}, "resource": ...}`` mappings (the dask config's form)."""
    if isinstance(devices, (str, DeviceConfig, dict)):
        devices = [devices]
    if not isinstance(devices, (list, tuple)):
        raise UsageError(f"devices must be a spec or a list of specs, got {type(devices).__name__}")
    out = []
    for item in devices:
        if isinstance(item, DeviceConfig):
            out.append(item)
        elif isinstance(item, str):
            out.append(DeviceConfig(item))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append(DeviceConfig(item[0], dict(item[1] or {})))
        elif isinstance(item, dict):
            unknown = set(item) - {"spec", "options", "resource"}
            if unknown or "spec" not in item:
                raise UsageError(f"a device entry has keys spec, options, resource; got {item!r}")
            out.append(DeviceConfig(item["spec"], dict(item.get("options") or {}),
                                    item.get("resource") or ""))
        else:
            raise UsageError(f"a device entry is a spec, (spec, options) or a mapping, "
                             f"got {item!r}")
    return out


class _WorkerDevice:
    """One open device of a worker, with the programs prepared for it and its runs in flight."""

    def __init__(self, config: DeviceConfig, device: Any):
        self.config = config
        self.device = device
        self.inflight = 0
        self.lost: BaseException | None = None
        self.programs: OrderedDict[str, object] = OrderedDict()

    def prepared(self, key: str, program: bytes) -> object:
        """``program`` prepared for this device, converted once per content hash ``key``."""
        prog = self.programs.get(key)
        if prog is None:
            prog = self.device.prepare(program)
            self.programs[key] = prog
            while len(self.programs) > PROGRAM_CACHE:
                self.programs.popitem(last=False)
        else:
            self.programs.move_to_end(key)
        return prog


class HermesPlugin(WorkerPlugin):
    """Opens a worker's devices once at start, offers them as resources, closes them at teardown.

    ``devices``: what every worker opens (see ``device_configs``); ``None`` lets each worker read
    its own list from the dask configuration key ``hermes.devices`` (e.g. ``DASK_HERMES__DEVICES``
    or a YAML file on that host), so hosts with different devices share one plugin. Each device
    adds its ``engines`` to its resource (``hermes-emu``, ``hermes-vfio-user``...): a task asking
    for one unit runs while an engine is free there.
    """

    name = PLUGIN_NAME

    def __init__(self, devices: object = None):
        self.configs = None if devices is None else device_configs(devices)
        self._init_state()

    def _init_state(self) -> None:
        self.devices: list[_WorkerDevice] = []
        self.worker_address = ""
        self._lock = threading.Lock()
        self._worker: Any = None

    def __getstate__(self) -> dict:
        return {"configs": self.configs}

    def __setstate__(self, state: dict) -> None:
        self.configs = state["configs"]
        self._init_state()

    async def setup(self, worker: Any) -> None:
        """Open the devices (in a thread: opening may wait on a socket) and offer them."""
        configs = self.configs
        if configs is None:
            configs = device_configs(dask.config.get(CONFIG_KEY, []))
        self._worker = worker
        self.worker_address = worker.address
        loop = asyncio.get_running_loop()
        for config in configs:
            try:
                dev = await loop.run_in_executor(
                    None, functools.partial(open_device, config.spec, **config.options))
            except HermesError as exc:
                self._close_all()
                raise type(exc)(f"worker {worker.address} cannot open device "
                                f"{config.spec!r}: {exc}") from None
            self.devices.append(_WorkerDevice(config, dev))
        await worker.set_resources(**self.resources())

    def teardown(self, worker: Any) -> None:
        """Close every device of this worker."""
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            devices, self.devices = self.devices, []
        for d in devices:
            try:
                d.device.close()
            except Exception:  # a lost device may fail to close; the others must still close
                pass

    def resources(self) -> dict[str, int]:
        """Resource name -> engines of this worker's working devices."""
        out: dict[str, int] = {}
        with self._lock:
            for d in self.devices:
                out.setdefault(d.config.resource, 0)
                if d.lost is None:
                    out[d.config.resource] += d.device.engines
        return out

    def geometry(self) -> dict[str, int]:
        """Resource name -> the smallest data slot size among this worker's working devices."""
        out: dict[str, int] = {}
        with self._lock:
            for d in self.devices:
                if d.lost is None:
                    size = data_slot_size(d.device)
                    out[d.config.resource] = min(size, out.get(d.config.resource, size))
        return out

    def acquire(self, resource: str) -> _WorkerDevice:
        """The working device of ``resource`` with the fewest runs in flight."""
        with self._lock:
            ready = [d for d in self.devices if d.config.resource == resource and d.lost is None]
            if not ready:
                gone = [d for d in self.devices if d.config.resource == resource]
                why = "; ".join(f"device {d.config.spec!r} stopped working: {d.lost}"
                                for d in gone)
                raise DeviceLost(f"worker {self.worker_address} has no working {resource} device"
                                 + (f" ({why})" if why else ""), errno_codes.ENODEV,
                                 worker=self.worker_address,
                                 spec=gone[0].config.spec if len(gone) == 1 else None)
            best = min(ready, key=lambda d: d.inflight)
            best.inflight += 1
            return best

    def release(self, dev: _WorkerDevice) -> None:
        """Give back a device taken by ``acquire``."""
        with self._lock:
            dev.inflight -= 1

    def mark_lost(self, dev: _WorkerDevice, exc: BaseException) -> None:
        """Take ``dev`` out of service: no task is sent to it again, its engines leave the
        worker's resources, and it is closed."""
        with self._lock:
            if dev.lost is not None:
                return
            dev.lost = exc
        worker = self._worker
        if worker is not None:
            worker.loop.add_callback(worker.set_resources, **self.resources())
        try:
            dev.device.close()
        except Exception:  # the device is already broken; closing is best effort
            pass


def _plugin() -> HermesPlugin:
    worker = distributed.get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, HermesPlugin):
        raise UsageError(f"worker {worker.address} has no Hermes devices: register "
                         "hermes.dask.HermesPlugin(...) with the client first")
    return plugin


def _lost_devices(resource: str, dask_worker: Any = None) -> list[tuple[str, str]]:
    """(spec, error) of each device of ``resource`` this worker has taken out of service."""
    plugin = (dask_worker or distributed.get_worker()).plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, HermesPlugin):
        return []
    return [(d.config.spec, str(d.lost)) for d in plugin.devices
            if d.config.resource == resource and d.lost is not None]


def _worker_geometry(dask_worker: Any = None) -> dict[str, int]:
    plugin = (dask_worker or distributed.get_worker()).plugins.get(PLUGIN_NAME)
    return plugin.geometry() if isinstance(plugin, HermesPlugin) else {}


# --- pieces: what a task runs on ---------------------------------------------------------------
@dataclass(frozen=True)
class FileSlice:
    """A piece of a file, shipped by reference: the worker maps ``length`` bytes at ``offset``."""

    path: str
    offset: int
    length: int
    index: int


def _map_slice(piece: FileSlice) -> tuple[mmap.mmap | None, memoryview]:
    """An mmap of ``piece``'s bytes (never read whole) and a view of exactly the piece."""
    if piece.length == 0:
        return None, memoryview(b"")
    start = piece.offset - piece.offset % mmap.ALLOCATIONGRANULARITY
    with open(piece.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if piece.offset + piece.length > size:
            raise UsageError(f"{piece.path} is {size} bytes now, shorter than when it was split "
                             f"(piece {piece.index} ends at {piece.offset + piece.length})")
        m = mmap.mmap(f.fileno(), piece.offset + piece.length - start, access=mmap.ACCESS_READ,
                      offset=start)
    skip = piece.offset - start
    return m, memoryview(m)[skip:skip + piece.length]


def _run_pieces(plugin: HermesPlugin, resource: str, key: str, program: bytes,
                items: Iterator[Piece], options: dict) -> list[Result]:
    """Run the program on every piece of ``items`` through one session on one engine (the unit
    of the resource this task holds); a failure names its piece (and the device when it is the
    device that failed)."""
    taken: list[Piece | None] = []

    def inputs() -> Iterator[memoryview]:
        for piece in items:
            taken.append(piece)
            yield piece.data

    def failed(exc: BaseException) -> BaseException:
        # the piece being run is the first one taken without a result
        piece = taken[len(out)] if len(taken) > len(out) else None
        if piece is None:
            piece = next(items, None)
        return with_piece(exc, piece) if piece is not None else exc

    out: list[Result] = []
    try:
        dev = plugin.acquire(resource)
    except DeviceLost as exc:
        raise failed(exc) from None
    try:
        prepared = dev.prepared(key, program)
        for result in dev.device.map(prepared, inputs(), workers=1, **options):
            piece = taken[len(out)]
            assert piece is not None  # each result has its own piece, taken once
            taken[len(out)] = None  # its bytes are no longer needed here
            out.append(dataclasses.replace(result, offset=piece.offset, index=piece.index))
    except DeviceError as exc:
        if _device_gone(exc):
            plugin.mark_lost(dev, exc)
            exc = DeviceLost(f"worker {plugin.worker_address}: device {dev.config.spec!r} "
                             f"stopped working: {exc}", exc.errno,
                             worker=plugin.worker_address, spec=dev.config.spec)
        raise failed(exc) from None
    except HermesError as exc:
        raise failed(exc) from None
    finally:
        plugin.release(dev)
    return out


def _device_gone(exc: DeviceError) -> bool:
    """Whether ``exc`` says the device, not the piece, failed (a run's own timeout, a full or
    busy device are the piece's failures)."""
    if isinstance(exc, RunTimeout):
        return False
    return exc.errno in _LOST_ERRNOS


def _run_files(key: str, program: bytes, resource: str, slices: list[FileSlice],
               options: dict) -> list[Result]:
    """Task: run the program on file slices, each mapped here from the worker's own file."""
    maps: list[mmap.mmap] = []

    def mapped() -> Iterator[Piece]:
        for piece in slices:
            m, view = _map_slice(piece)
            if m is not None:
                maps.append(m)
            yield Piece(piece.index, piece.offset, view, piece.path)

    try:
        return _run_pieces(_plugin(), resource, key, program, mapped(), options)
    finally:
        for m in maps:
            try:
                m.close()
            except BufferError:  # a failed run's traceback still holds a view: the
                pass             # mapping is unmapped when the last view goes


def _block_bytes(block: object) -> memoryview:
    """A block of a collection as bytes: a bytes-like, a numpy array, or a list of bytes-likes
    (a bag partition: its elements back to back)."""
    if isinstance(block, (list, tuple)):
        return memoryview(b"".join(check_buffer(x, "an element of the collection")
                                   for x in block))
    if type(block).__module__ == "numpy" and not block.flags.c_contiguous:  # type: ignore
        block = block.copy(order="C")  # type: ignore[attr-defined]
    return check_buffer(block, "a block of the collection")


def _run_block(key: str, program: bytes, resource: str, block: object, block_index: int,
               split: dict, options: dict) -> tuple[int, list[Result]]:
    """Task: split one computed block with ``pieces`` and run the program on each piece.

    Returns the block's length and its results with offsets inside the block; the client makes
    offsets and indexes global (block lengths are only known once blocks are computed).
    """
    source = f"block {block_index}"
    try:
        data = _block_bytes(block)
        split_pieces = (dataclasses.replace(p, source=source)
                        for p in pieces(data, split["piece_size"], record=split["record"],
                                        delimiter=split["delimiter"]))
        out = _run_pieces(_plugin(), resource, key, program, split_pieces, options)
    except UsageError as exc:
        if not hasattr(exc, "piece_index"):  # not bytes, or a record longer than a piece
            exc.args = (f"{source}: {exc}",)
        raise
    return len(data), out


# --- the client side ---------------------------------------------------------------------------
def _collection_blocks(source: object) -> list | None:
    """Delayed objects, one per block, for a dask collection (None for anything else)."""
    from dask.delayed import Delayed
    if isinstance(source, Delayed):
        return [source]
    if isinstance(source, (list, tuple)) and source and all(isinstance(x, Delayed)
                                                           for x in source):
        return list(source)
    try:
        import dask.array as da
    except ImportError:  # dask without its array extra: no arrays to split
        pass
    else:
        if isinstance(source, da.Array):
            array = source
            if array.ndim > 1:  # blocks of whole rows: block bytes in order are the array's bytes
                array = array.rechunk({i: -1 for i in range(1, array.ndim)})
            return list(array.to_delayed().ravel())
    import dask.bag as db
    if isinstance(source, db.Bag):
        return list(source.to_delayed())
    return None


def _paths(source: object) -> list[str] | None:
    if isinstance(source, (str, os.PathLike)):
        return [os.fspath(source)]
    if (isinstance(source, (list, tuple)) and source
            and all(isinstance(x, (str, os.PathLike)) for x in source)):
        return [os.fspath(x) for x in source]
    return None


def _slices(paths: list[str], piece_size: int, record: int | None,
            delimiter: bytes | None) -> list[FileSlice]:
    """Every piece of every file, split on the client by ``pieces`` (which maps the file: only
    the pages a boundary search touches are read) and shipped as (path, offset, length)."""
    out: list[FileSlice] = []
    for path in paths:
        for p in pieces(path, piece_size, record=record, delimiter=delimiter):
            out.append(FileSlice(os.path.abspath(path), p.offset, len(p.data), len(out)))
            p.data.release()
    return out


def _providers(client: Any) -> dict[str, dict[str, float]]:
    """Worker address -> its Hermes resources, as the scheduler knows them."""
    # every worker (the client's summary lists only the first few by default)
    info = client.scheduler_info(n_workers=-1)
    return {addr: {k: v for k, v in (w.get("resources") or {}).items()
                   if k.startswith(RESOURCE_PREFIX) and v}
            for addr, w in info.get("workers", {}).items()}


def _choose_resource(client: Any, resource: str | None,
                     workers: Sequence[str] | None) -> str:
    offered: set[str] = set()
    for addr, res in _providers(client).items():
        if workers is None or addr in workers:
            offered.update(res)
    if resource is not None:
        if not isinstance(resource, str) or not resource.startswith(RESOURCE_PREFIX):
            raise UsageError(f"resource must name a Hermes resource such as 'hermes-emu', "
                             f"got {resource!r}")
        if resource not in offered:
            raise UsageError(f"no worker offers {resource!r}; offered: "
                             f"{', '.join(sorted(offered)) or 'none'}")
        return resource
    if len(offered) == 1:
        return next(iter(offered))
    if not offered:
        raise UsageError("no worker offers a Hermes device: register "
                         "hermes.dask.HermesPlugin(devices) with the client first")
    raise UsageError(f"workers offer several kinds of device ({', '.join(sorted(offered))}); "
                     "choose one with resource=")


class Job:
    """A map in progress: its futures (in piece order) and its results as they complete.

    ``results()`` yields every piece's ``Result`` in source order; a failed piece raises when its
    turn comes (the rest of the job is cancelled). A piece whose device was lost is sent again
    to another worker that offers the resource, if there is one.
    """

    def __init__(self, client: Any, token: str, submit_task: Callable[..., Any], ntasks: int,
                 resource: str,
                 *, task_bytes: list[int] | None, blocks: bool, workers: Sequence[str] | None,
                 stall_timeout: float | None, describe: Callable[[int], str],
                 keep: Sequence[Any] = ()):
        self.client = client
        self.resource = resource
        self.total_bytes = None if task_bytes is None else sum(task_bytes)
        self.done_bytes = 0
        self._submit = submit_task
        self._token = token
        self._task_bytes = task_bytes
        self._blocks = blocks
        self._workers = workers
        self._stall_timeout = stall_timeout
        self._resent: dict[int, int] = {}
        self._describe = describe
        self._keep = list(keep)  # the shipped program and computed blocks live as long as the job
        self.futures: list[Any] = [submit_task(i, self._key(i, 0), workers)
                                   for i in range(ntasks)]

    def _key(self, task: int, attempt: int) -> str:
        return f"hermes-piece-{self._token}-{task}-{attempt}"

    def cancel(self) -> None:
        """Cancel every piece not yet done."""
        pending = [f for f in self.futures if f is not None]
        if pending:
            self.client.cancel(pending)

    def _offered(self, exclude: str | None = None) -> tuple[list[str], list[str]]:
        """(workers of this job that offer its resource, those that do not any more)."""
        offered: list[str] = []
        without: list[str] = []
        for addr, res in _providers(self.client).items():
            if self._workers is None or addr in self._workers:
                (offered if res.get(self.resource) and addr != exclude else without).append(addr)
        return offered, without

    def _wait_one(self, i: int) -> Any:
        """Task ``i``'s value. Every wait is bounded: by ``stall_timeout`` without any piece of
        the job finishing, and by ``NO_DEVICE_GRACE`` without any worker offering the resource."""
        last_progress = time.monotonic()
        finished = -1
        no_device_since: float | None = None
        while True:
            fut = self.futures[i]
            try:
                return fut.result(timeout=POLL)
            except distributed.TimeoutError:
                pass
            except DeviceLost as exc:
                if not self._resend(i, exc.worker):
                    raise
                continue
            now = time.monotonic()
            offered, without = self._offered()
            stranded = self._stranded(fut, without) if without else None
            if stranded is not None:
                # queued on a worker whose device was lost: that worker will never run it
                self.client.cancel([fut])
                if not self._resend(i, stranded):
                    raise self._lost_at(stranded, i)
                continue
            if offered:
                no_device_since = None
            else:
                no_device_since = no_device_since or now
                if now - no_device_since > NO_DEVICE_GRACE:
                    raise DeviceLost(f"no worker offers {self.resource} any more (for "
                                     f"{NO_DEVICE_GRACE:g} s); the job cannot finish",
                                     errno_codes.ENODEV)
            if self._stall_timeout is not None:
                done = sum(1 for f in self.futures if f is not None and f.done())
                if done != finished:
                    finished, last_progress = done, now
                elif now - last_progress > self._stall_timeout:
                    raise DeviceTimeout(f"no piece finished within {self._stall_timeout} s "
                                        f"(waiting for task {i})", errno_codes.ETIMEDOUT)

    def _lost_at(self, worker: str, i: int) -> DeviceLost:
        """The report of task ``i`` left on ``worker`` after its devices were lost."""
        lost = self.client.run(_lost_devices, self.resource, workers=[worker]).get(worker, [])
        why = "; ".join(f"device {spec!r} stopped working: {error}" for spec, error in lost)
        return DeviceLost(f"worker {worker} lost its {self.resource} device"
                          + (f" ({why})" if why else "") + f" while {self._describe(i)} waited "
                          "there, and no other worker of the job offers one", errno_codes.ENODEV,
                          worker=worker, spec=lost[0][0] if len(lost) == 1 else None)

    def _stranded(self, fut: Any, without: list[str]) -> str | None:
        """The worker among ``without`` that holds ``fut`` queued, if one does."""
        for addr, keys in self.client.processing(workers=without).items():
            if fut.key in keys:
                return addr
        return None

    def _resend(self, i: int, lost_worker: str | None) -> bool:
        """Send task ``i`` again, to the workers that still offer the resource (not the one
        whose device was lost)."""
        attempt = self._resent.get(i, 0) + 1
        others, _ = self._offered(exclude=lost_worker)
        if attempt > MAX_RESENDS or not others:
            return False
        self._resent[i] = attempt
        self.futures[i] = self._submit(i, self._key(i, attempt), others)
        return True

    def results(self) -> Iterator[Result]:
        """Every piece's Result in source order (offsets and indexes over the whole source;
        for paths, offsets are inside each file and indexes run over all files)."""
        index = 0
        offset = 0
        try:
            for i in range(len(self.futures)):
                value = self._wait_one(i)
                self.futures[i] = None  # the value is here: let the cluster free it
                if not self._blocks:
                    self.done_bytes += self._task_bytes[i] if self._task_bytes else 0
                    yield from value
                    continue
                length, block = value
                self.done_bytes += length
                for r in block:
                    yield dataclasses.replace(r, offset=offset + r.offset, index=index)
                    index += 1
                offset += length
        except BaseException:
            self.cancel()
            raise


def submit(program: ProgramLike, source: object, *, client: Any = None, resource: str | None = None,
           workers: Sequence[str] | None = None, piece_size: int | None = None,
           record: int | None = None, delimiter: bytes | None = None, batch: int | None = None,
           stall_timeout: float | None = 600.0, **run_options: Any) -> Job:
    """Start ``program`` on every piece of ``source`` on the cluster; returns the ``Job``.

    ``source``: a path or a list of paths (split here with ``hermes.lib.pieces.pieces``; each
    worker maps its own slices, so paths must name the same files on the client and the
    workers), a dask array, bag or ``Delayed`` (or a list of them: each block is computed on
    the cluster and split there by the same ``pieces``; block boundaries are piece boundaries).
    ``piece_size`` defaults to ``size`` or else the smallest data slot of the resource's devices.
    ``run_options`` go to ``Device.run`` (``args``, ``size``, ``read``, ``budget``,
    ``timeout``). ``batch`` file pieces go in one task (default: about ``TASK_BYTES`` per task,
    at most ``MAX_BATCH`` pieces; a retried task runs its pieces again, each counted once).
    ``workers`` restricts the job to those worker addresses; ``resource`` chooses the kind of
    device (default: the only kind the workers offer).
    """
    client = client or distributed.get_client()
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool)
                              or batch < 1):
        raise UsageError(f"batch must be a positive integer, got {batch!r}")
    unknown = set(run_options) - {"args", "size", "read", "budget", "timeout"}
    if unknown:
        raise UsageError(f"unknown option(s) of hermes.dask.map: {', '.join(sorted(unknown))}")
    if workers is not None:
        workers = list(workers)
    code = program_bytes(program)
    key = hashlib.sha256(code).hexdigest()
    resource = _choose_resource(client, resource, workers)
    if piece_size is None:
        piece_size = run_options.get("size")
    if piece_size is None:
        sizes = [g[resource] for g in client.run(_worker_geometry, workers=workers).values()
                 if resource in g]
        if not sizes:
            raise UsageError(f"no worker offers {resource!r}")
        piece_size = min(sizes)
    paths = _paths(source)
    blocks = None if paths is not None else _collection_blocks(source)
    if paths is None and blocks is None:
        raise UsageError(f"source must be a path, a list of paths or a dask collection "
                         f"(array, bag, delayed), not {type(source).__name__}")
    if paths is not None:  # split before anything is sent: a bad policy fails here, at once
        slices = _slices(paths, piece_size, record, delimiter)
    token = uuid.uuid4().hex[:12]
    # The program is a task of its own: its bytes reach the scheduler once, each worker fetches
    # the value once as a dependency of its first piece, and a value lost with a dead worker
    # is recomputed from the task (a scattered one could not be).
    shipped = client.submit(bytes, code, key=f"hermes-program-{key[:16]}-{token}", pure=False,
                            workers=workers)

    def options(task_key: str, where: Sequence[str] | None) -> dict:
        return {"key": task_key, "resources": {resource: 1}, "workers": where, "pure": False,
                "allow_other_workers": False}

    if paths is not None:
        if batch is None:  # tasks of about TASK_BYTES: a task costs milliseconds of scheduling
            batch = max(1, min(MAX_BATCH, TASK_BYTES // max(1, piece_size)))
        groups = [slices[i:i + batch] for i in range(0, len(slices), batch)]

        def submit_files(i: int, task_key: str, where: Sequence[str] | None) -> Any:
            return client.submit(_run_files, key, shipped, resource, groups[i], run_options,
                                 **options(task_key, where))
        return Job(client, token, submit_files, len(groups), resource,
                   task_bytes=[sum(p.length for p in g) for g in groups], blocks=False,
                   workers=workers, stall_timeout=stall_timeout, keep=[shipped],
                   describe=lambda i: f"piece {groups[i][0].index} at offset "
                                      f"{groups[i][0].offset} of {groups[i][0].path}")
    assert blocks is not None  # a source is paths or a collection (checked above)
    computed = client.compute(blocks)
    split = {"piece_size": piece_size, "record": record, "delimiter": delimiter}

    def submit_block(i: int, task_key: str, where: Sequence[str] | None) -> Any:
        return client.submit(_run_block, key, shipped, resource, computed[i], i, split,
                             run_options, **options(task_key, where))
    return Job(client, token, submit_block, len(blocks), resource, task_bytes=None, blocks=True,
               workers=workers, stall_timeout=stall_timeout, keep=[shipped, *computed],
               describe=lambda i: f"block {i}")


def map(program: ProgramLike, source: object, *, reduce: Callable[[Any, Result], Any] | None = None,
        initial: Any = None, progress: bool | Callable[[int, int | None], None] | None = None,
        **options: Any) -> Any:  # noqa: A001 - the library's name for it
    """Run ``program`` over ``source`` on the cluster: the list of Results in source order, or
    with ``reduce`` ``functools.reduce(reduce, results, initial)`` (folded as pieces arrive,
    in order; without ``initial`` the first result starts the fold).

    ``progress=True`` shows dask's progress bar (a widget in a notebook, text on a console); a
    callable is called as ``progress(done_bytes, total_bytes_or_None)`` as pieces arrive. Other
    ``options`` are those of ``submit``. A failure raises the piece's exception with its index,
    offset and source added (``piece_index``, ``piece_offset``, ``piece_source``).
    """
    job = submit(program, source, **options)
    try:
        if progress is True:
            distributed.progress(job.futures)
        results: Iterable[Result] = job.results()
        if callable(progress):
            results = _reporting(job, results, progress)
        if reduce is None:
            return list(results)
        if initial is None:
            return functools.reduce(reduce, results)
        return functools.reduce(reduce, results, initial)
    finally:
        job.cancel()


def _reporting(job: Job, results: Iterable[Result],
               progress: Callable[[int, int | None], None]) -> Iterator[Result]:
    for r in results:
        progress(job.done_bytes, job.total_bytes)
        yield r

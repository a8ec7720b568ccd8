"""The device-independent library API: Device, Session, Result, and ``open`` with its backends."""
from __future__ import annotations

import abc
import errno
import functools
import importlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

from .. import regs
from ..engine import Program
from ..errors import DeviceError, HermesError, UsageError

#: What the library accepts as a program: a Program, its bytes (raw or ELF), or a file path.
ProgramLike = Union[Program, bytes, bytearray, memoryview, str, os.PathLike]
Buffer = Union[bytes, bytearray, memoryview]

#: Ranges of the options every Hermes-like backend takes (``emu`` and ``cpu``), the Hermes
#: device's own: one MSI-X vector per engine besides the DMA channels' (``specs/device.md``),
#: slot sizes in 32-bit registers and multiples of 8, a 64-bit instruction budget.
OPTION_RANGES: dict[str, tuple[int, int]] = {
    "engines": (1, regs.MSIX_VECTORS - regs.XDMA_H2C_CHANNELS - regs.XDMA_C2H_CHANNELS),
    "program_slot_size": (8, 0xFFFF_FFF8),
    "data_slot_size": (8, 0xFFFF_FFF8),
    "budget": (1, 0xFFFF_FFFF_FFFF_FFFF),
}


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` when it is an int in ``lo..hi``, else ``UsageError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise UsageError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def check_engine(name: object) -> str | None:
    """``name`` when it is None or an engine ``hermes.engine`` has, else ``UsageError``."""
    from ..engine import engine_names
    if name is not None and name not in engine_names():
        raise UsageError(f"unknown engine {name!r}; choose one of {', '.join(engine_names())}")
    return name  # type: ignore[return-value]


def check_options(options: dict) -> None:
    """Check the options of ``OPTION_RANGES`` and ``engine`` (same rules and wording as the
    Hermes device model, so every backend refuses a bad value the same way)."""
    for name, value in options.items():
        if name == "engine":
            check_engine(value)
        elif name in OPTION_RANGES and not (name == "budget" and value is None):
            check_int(name, value, *OPTION_RANGES[name])
            if name.endswith("slot_size") and value % 8:  # type: ignore[operator]
                raise UsageError(f"{name} must be a multiple of 8, got {value}")


def check_buffer(data: object, what: str = "data") -> memoryview:
    """``data`` as a flat byte view, or ``UsageError`` for anything that is not bytes-like."""
    if isinstance(data, (str, int, float)) or data is None:
        raise UsageError(f"{what} must be bytes, bytearray or memoryview, not "
                         f"{type(data).__name__}")
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise UsageError(f"{what} must be bytes, bytearray or memoryview, not "
                         f"{type(data).__name__}") from None
    if not view.contiguous:
        raise UsageError(f"{what} must be a contiguous buffer")
    if view.format == "B" and view.ndim == 1:
        return view
    try:
        return view.cast("B")
    except TypeError:
        raise UsageError(f"{what} must be a contiguous buffer") from None


def check_size(name: str, value: object) -> int:
    """``value`` when it is a non-negative int, else ``UsageError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Result:
    """Outcome of one run: r0 (any value; errors are exceptions, never r0) and data slot bytes."""

    return_value: int
    data: bytes


class Session(abc.ABC):
    """A user's hold on a device: at most one program and one data slot, like a driver file.

    ``load`` a program, ``write`` input into the data slot, ``run``, ``read`` output; repeat any
    step. Close (or use ``with``) to give the slots back. One session is used by one thread at a
    time; open one session per thread.
    """

    @abc.abstractmethod
    def load(self, program: ProgramLike) -> None:
        """Put ``program`` into this session's program slot (replacing the previous one)."""

    @abc.abstractmethod
    def write(self, data: Buffer, offset: int = 0) -> int:
        """Copy ``data`` into the data slot at ``offset``; returns bytes written (truncated at the
        slot's end). Needs a loaded program."""

    @abc.abstractmethod
    def run(self) -> int:
        """Run the program on the data slot; returns r0. Failures raise ``ExecutionFailed``."""

    @abc.abstractmethod
    def read(self, size: int, offset: int = 0) -> bytes:
        """Up to ``size`` bytes of the data slot at ``offset`` (truncated at the slot's end)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the slots (idempotent)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Device(abc.ABC):
    """An eBPF-capable device (emulated Hermes device, CPU, ...): run programs on data.

    Thread-safe: ``run`` and ``session`` may be used from many threads at once.
    """

    #: The spec the device was opened with (``"emu"``, ``"cpu"``, ``"vfio-user:/path"``...).
    spec: str = ""

    @property
    @abc.abstractmethod
    def engines(self) -> int:
        """How many runs the device executes at the same time."""

    @abc.abstractmethod
    def info(self) -> dict:
        """Description of the device (geometry for a Hermes device)."""

    @abc.abstractmethod
    def session(self) -> Session:
        """A new session (owns no slot until it loads a program)."""

    def close(self) -> None:
        """Release the device (subclasses extend this)."""
        pool = getattr(self, "_async_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._async_pool = None

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, program: ProgramLike) -> object:
        """``program`` in the form ``Session.load`` takes fastest (convert once, load many)."""
        return program

    def run(self, program: ProgramLike, data: Buffer = b"", *, read: int | None = None) -> Result:
        """Run ``program`` once on ``data`` (placed at offset 0 of a newly allocated data slot).

        Returns r0 and the first ``read`` bytes of the data slot after the run (default: as many
        as ``data`` has). Past the input the slot holds zeros (a Hermes device zeroes a slot
        when it allocates it; the CPU backend allocates a zeroed one).
        """
        view = check_buffer(data)
        if read is not None:
            check_size("read", read)
        with self.session() as s:
            s.load(program)
            s.write(view)
            r0 = s.run()
            return Result(r0, s.read(len(view) if read is None else read))

    def map(self, program: ProgramLike, buffers: Iterable[Buffer], *,
            read: int | None = None, workers: int | None = None) -> Iterator[Result]:
        """Run ``program`` on every buffer, keeping all engines busy; results in input order.

        ``workers`` threads (default: one per engine) each open one session, load the program
        and run write-run-read cycles on it (a worker that cannot get slots drops out; the map
        fails only when none can). Bytes of the data slot past an item's input hold what the
        previous item of that worker left. Lazy like ``map``:
        work starts when iteration does; a failed item raises when its result is reached.
        """
        prepared = self.prepare(program)
        nworkers = max(1, workers or self.engines)
        return self._map(prepared, iter(buffers), read, nworkers)

    def _map(self, prepared: object, items: Iterator[Buffer], read: int | None,
             nworkers: int) -> Iterator[Result]:
        # Workers pull items themselves (no per-item future) and wake the consumer once a batch
        # of results waits: thread hand-offs, not the device, bound small-item rates.
        cond = threading.Condition(threading.Lock())
        results: dict[int, tuple[bool, object]] = {}
        failures: list[BaseException] = []
        st = {"next": 0, "consumed": 0, "exhausted": False, "stop": False, "waiting": -1,
              "alive": nworkers}
        # At most `ahead` items are taken beyond what the consumer has; the consumer is woken
        # once `batch` results wait (or at the end). Workers block only with >= ahead - nworkers
        # results buffered, which is >= batch, so the consumer is always woken first.
        ahead = 8 * nworkers
        batch = 4 * nworkers

        def worker() -> None:
            session = None
            try:
                # Each worker holds one session (one engine's worth of slots) for the whole map.
                try:
                    session = self.session()
                    session.load(prepared)
                except BaseException as exc:  # e.g. no free slot: the other workers carry on
                    with cond:
                        failures.append(exc)
                    return
                while True:
                    with cond:
                        while (not st["stop"] and not st["exhausted"]
                               and st["next"] - st["consumed"] >= ahead):
                            cond.wait()
                        if st["stop"] or st["exhausted"]:
                            return
                        i = st["next"]
                        try:
                            buf = next(items)
                        except StopIteration:
                            st["exhausted"] = True
                            return
                        except BaseException as exc:  # the input iterator failed: report it
                            st["exhausted"] = True
                            st["next"] = i + 1
                            results[i] = (False, exc)
                            return
                        st["next"] = i + 1
                    try:
                        session.write(buf)
                        r0 = session.run()
                        out: tuple[bool, object] = (True, Result(
                            r0, session.read(len(buf) if read is None else read)))
                    except BaseException as exc:  # handed to the consumer, raised in order
                        out = (False, exc)
                    with cond:
                        results[i] = out
                        if st["waiting"] in results and len(results) >= batch:
                            cond.notify_all()
            finally:
                if session is not None:
                    try:
                        session.close()
                    except Exception:  # closing after a device failure must not mask the first
                        pass
                with cond:
                    st["alive"] -= 1
                    cond.notify_all()

        threads = [threading.Thread(target=worker, name=f"hermes-map-{n}", daemon=True)
                   for n in range(nworkers)]
        for t in threads:
            t.start()
        k = 0
        try:
            while True:
                with cond:
                    while (k not in results and st["alive"]
                           and not (st["exhausted"] and k >= st["next"])):
                        st["waiting"] = k
                        cond.wait()
                    st["waiting"] = -1
                    if k not in results:
                        if st["exhausted"] and k >= st["next"]:
                            return
                        # every worker is gone without finishing: none could open a session
                        raise failures[0] if failures else RuntimeError("map workers stopped")
                    ok, value = results.pop(k)
                    st["consumed"] = k + 1
                    if st["next"] - k >= ahead:
                        cond.notify_all()  # workers may be waiting for room
                if not ok:
                    raise value  # type: ignore[misc]
                yield value  # type: ignore[misc]
                k += 1
        finally:
            with cond:
                st["stop"] = True
                cond.notify_all()
            for t in threads:
                t.join()

    async def run_async(self, program: ProgramLike, data: Buffer = b"", *,
                        read: int | None = None) -> Result:
        """``run`` without blocking the event loop (runs in the device's own thread pool)."""
        pool = getattr(self, "_async_pool", None)
        if pool is None:
            with _POOL_LOCK:
                pool = getattr(self, "_async_pool", None)
                if pool is None:
                    pool = ThreadPoolExecutor(self.engines, thread_name_prefix="hermes-async")
                    self._async_pool = pool
        import asyncio  # only async users pay for importing it
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(self.run, program, data,
                                                                  read=read))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec!r}>"


_POOL_LOCK = threading.Lock()

#: A backend factory: (the part of the spec after ``prefix:``, **options) -> Device.
BackendFactory = Callable[..., Device]

#: Device spec prefix -> factory, or ``"module:function"`` imported on first use (so a backend
#: with heavy imports costs nothing until opened). ``"vfio-user:/path"`` looks up ``vfio-user``.
BACKENDS: dict[str, "BackendFactory | str"] = {
    "emu": "hermes.lib.driver_device:open_emu",
    "cpu": "hermes.lib.cpu:open_cpu",
    "vfio-user": "hermes.lib.vfio:open_vfio_user",  # a `hermes serve` process's socket
    "vfio": "hermes.lib.vfio:open_vfio",            # a device bound to vfio-pci
}


def register_backend(prefix: str, factory: "BackendFactory | str") -> None:
    """Make ``hermes.open("prefix[:address]")`` call ``factory(address, **options)``."""
    BACKENDS[prefix] = factory


def open_device(spec: str = "emu", **options: object) -> Device:
    """Open a device by spec: ``"emu"`` (in-process Hermes device model + driver), ``"cpu"``
    (the engine directly), or any prefix in ``BACKENDS`` (``"prefix:address"``).

    ``options`` go to the backend (for ``emu``: HermesDevice arguments such as ``engines`` or
    ``engine``, plus driver ``timeout``; for ``cpu``: ``engine``, ``slot_size``, ``budget``).
    """
    if not isinstance(spec, str):
        raise UsageError(f"a device spec is a string such as 'emu', not {type(spec).__name__}")
    prefix, _, address = spec.partition(":")
    factory = BACKENDS.get(prefix)
    if factory is None:
        raise DeviceError(f"unknown device spec {spec!r}; known prefixes: "
                          f"{', '.join(sorted(BACKENDS))}", errno.ENODEV)
    check_options(options)
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
    try:
        device = factory(address, **options)
    except HermesError:
        raise
    except (TypeError, ValueError) as exc:  # an option the backend refused (name or value)
        raise UsageError(f"cannot open device {spec!r}: {exc}") from None
    device.spec = str(spec)
    return device


def program_bytes(program: ProgramLike) -> bytes:
    """The bytes a device loads for ``program``: the ELF object when it came from one (the device
    loads ELF itself), else the raw instructions."""
    if isinstance(program, (bytes, bytearray, memoryview)):
        return bytes(program)
    if isinstance(program, (str, os.PathLike)):
        return Path(program).read_bytes()
    if isinstance(program, Program):
        elf = getattr(program, "elf_bytes", None)
        if elf:
            return bytes(elf)
        if program.segments:
            from ..errors import ProgramError
            raise ProgramError("the program has data segments (.rodata/.data) but no ELF object "
                               "to carry them to the device; load it with Program.from_elf")
        return program.to_bytes()
    raise UsageError(f"expected a Program, bytes or a path, not {type(program).__name__}")


def as_program(program: ProgramLike, *, max_size: int | None = None) -> Program:
    """``program`` as a ``Program`` (bytes starting with the ELF magic are loaded as ELF, with
    code + data bounded by ``max_size`` as in ``Program.from_elf``)."""
    if isinstance(program, Program):
        return program
    if isinstance(program, (str, os.PathLike)):
        return Program.from_file(program, max_size=max_size)
    if not isinstance(program, (bytes, bytearray, memoryview)):
        raise UsageError(f"expected a Program, bytes or a path, not {type(program).__name__}")
    data = bytes(program)
    if data[:4] == b"\x7fELF":
        return Program.from_elf(data, max_size=max_size)
    return Program.from_bytes(data)

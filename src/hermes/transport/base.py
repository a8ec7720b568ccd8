"""The narrow interface every transport offers the driver: BAR access, DMA memory, interrupts.

The in-process transport (the device model in this process), the vfio-user client (the model in a
server process) and the VFIO transport (a real device) all implement exactly this, so the driver
never knows which one it talks to.
"""
from __future__ import annotations

import abc
import mmap
from collections.abc import Callable, Sequence


class DmaBuffer(abc.ABC):
    """Host memory the device may read and write by DMA.

    ``bus_addr`` is the address the device sees (what goes into descriptors); ``view`` is a
    writable memoryview of the same bytes for the host side.
    """

    bus_addr: int
    size: int
    #: the host view; subclasses set it, and ``free`` sets it to None
    _view: memoryview | None

    @property
    def view(self) -> memoryview:
        """Writable host view of the buffer (raises ValueError after ``free``)."""
        if self._view is None:
            raise ValueError("DMA buffer was freed")
        return self._view

    @abc.abstractmethod
    def free(self) -> None:
        """Unregister the buffer from the device's view and release it."""


def close_mapping(mm: mmap.mmap) -> None:
    """Unmap ``mm`` unless a caller still holds a slice of it (then the GC unmaps it later)."""
    try:
        mm.close()
    except BufferError:
        pass


class MappedDmaBuffer(DmaBuffer):
    """DMA memory backed by an mmap that the transport registered with the device at
    ``bus_addr``; ``free`` asks the transport to unregister it (``transport._unmap(buf)``)
    before the memory goes away, never the other way round."""

    def __init__(self, transport: Transport, bus_addr: int, size: int, mapped: int,
                 mm: mmap.mmap):
        self._t = transport
        self.bus_addr = bus_addr
        self.size = size
        self.mapped = mapped
        self._mm = mm
        self._view = memoryview(mm)[:size]

    def free(self) -> None:
        """Unregister the buffer, then release its memory. Idempotent."""
        if self._view is None:
            return
        self._t._unmap(self)  # type: ignore[attr-defined]
        self._view.release()
        self._view = None
        close_mapping(self._mm)


class Transport(abc.ABC):
    """BAR reads/writes, DMA buffer registration and interrupt waits for one device."""

    #: Number of interrupt vectors the device exposes (MSI-X table size).
    num_vectors: int = 32
    #: Whether ``write_block`` costs no more than one ``write`` (one call into an in-process
    #: model), so a host writes a register block in one go rather than 8 bytes at a time.
    cheap_block_writes: bool = False

    @abc.abstractmethod
    def read(self, bar: int, offset: int, size: int) -> int:
        """Read ``size`` (1, 2, 4 or 8) bytes of BAR ``bar`` at ``offset``, a little-endian int."""

    @abc.abstractmethod
    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write ``value`` as ``size`` little-endian bytes to BAR ``bar`` at ``offset``."""

    def read_block(self, bar: int, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of a BAR with 4-byte accesses (length a multiple of 4)."""
        return b"".join(self.read(bar, offset + i, 4).to_bytes(4, "little")
                        for i in range(0, length, 4))

    def read_many(self, bar: int, reads: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of several reads of BAR ``bar``, each ``(offset, length)``, in order: a
        length of 1, 2, 4 or 8 is one ``read``, a longer one a ``read_block``. A transport whose
        reads are messages (vfio-user) sends them together and waits once."""
        out = []
        for offset, length in reads:
            if length in (1, 2, 4, 8):
                out.append(self.read(bar, offset, length).to_bytes(length, "little"))
            else:
                out.append(self.read_block(bar, offset, length))
        return out

    def write_block(self, bar: int, offset: int, data: bytes) -> None:
        """Write ``data`` (length a multiple of 4) to a BAR with 4-byte accesses."""
        for i in range(0, len(data), 4):
            self.write(bar, offset + i, 4, int.from_bytes(data[i:i + 4], "little"))

    def execute(self, ctrl: int, engine: int, started: Callable[[int], None],
                timeout: float | None = None) -> bool:
        """Start the command in engine ``engine``'s request registers for a host that waits for
        it at once: write 1 to its EHCMDEXEC (BAR0 offset ``ctrl``), then call
        ``started(engine)``. True when the command has completed by the return: the in-process
        transport may run a short command in the calling thread, calling ``started`` before it
        begins (specs/device.md section 10), and with ``timeout`` (the host's wait, in seconds)
        a command of any length from a thread other than the main one, aborting it once
        ``timeout`` has passed as the host would (the command then completes with status 0x07).
        False: wait for its completion as usual."""
        self.write(0, ctrl, 1, 1)
        started(engine)
        return False

    def map_bar(self, bar: int) -> memoryview | None:
        """A direct mapping of a BAR when the transport can offer one (BAR4 on some), else None."""
        return None

    @abc.abstractmethod
    def dma_alloc(self, size: int) -> DmaBuffer:
        """Allocate host memory of ``size`` bytes and make it visible to the device's DMA."""

    @abc.abstractmethod
    def irq_wait(self, vector: int, timeout: float | None) -> bool:
        """Wait until interrupt ``vector`` has fired since the last wait; consume it.

        Returns False on timeout. Interrupts are counted, never lost: one that fired before the
        wait started satisfies it at once (eventfd semantics). A transport that can lose its
        device (a server in another process) raises OSError instead when the device stops
        answering (ETIMEDOUT) or goes away (ENOTCONN) once it notices (vfio-user: within its
        reply timeout plus a 0.1 s probe interval), so a wait for a dead device need not last the
        whole ``timeout``.
        """

    def flush(self) -> None:  # noqa: B027 - nothing to deliver on a transport that never queues
        """Deliver posted BAR writes now. A transport that queues writes (vfio-user sends them
        with its next message) implements it; a host that polls memory for the device's answer,
        rather than reading a register or waiting for an interrupt, calls it after a doorbell."""

    def irq_clear(self, vector: int) -> None:
        """Forget interrupts of ``vector`` that fired and were not waited for yet."""
        while self.irq_wait(vector, 0):
            pass

    def reset(self) -> None:
        """Reset the device (frees every slot, stops DMA). Optional for a transport."""
        raise NotImplementedError("this transport cannot reset the device")

    @abc.abstractmethod
    def close(self) -> None:
        """Release the transport (and everything allocated through it)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Slots of a Hermes device: Request Slot and Release Slot, and the slots whose release must wait
(an owner that closed while no engine answered, the quarantine of a run that could not be
stopped)."""
from __future__ import annotations

import errno
import threading

from .. import regs
from .engines import Commands
from .protocol import error, status_error


class SlotAllocator:
    """The device's program and data slots as the files see them: allocated and freed by
    command, never handed back while a run may still be using them."""

    def __init__(self, commands: Commands, geometry: regs.Geometry):
        self._commands = commands
        self._geo = geometry
        self._lock = threading.Lock()
        #: Slots whose owner closed while no engine answered: released on a later occasion.
        self._orphans: list[tuple[int, int]] = []
        #: Engine -> slots of a timed-out command on it that could not be stopped: kept allocated
        #: until that engine reads idle, then released like the orphans above.
        self._quarantine: dict[int, list[tuple[int, int]]] = {}

    def _count(self, kind: int) -> int:
        return self._geo.program_slots if kind == regs.SLOT_PROGRAM else self._geo.data_slots

    def request(self, kind: int, *, cmd_id: int | None = None) -> int:
        """Allocate a slot of ``kind`` (``SLOT_PROGRAM``/``SLOT_DATA`` of regs); ENOSPC if none."""
        what = "program" if kind == regs.SLOT_PROGRAM else "data"
        if self._orphans:
            self.release_deferred()
        response = self._commands.command(regs.CMD_REQUEST_SLOT, bytes((kind & 0xFF,)),
                                          cmd_id=cmd_id)
        if response.status == regs.STATUS_NO_SPACE:
            raise error(errno.ENOSPC, f"no free {what} slot (all {self._count(kind)} are in use)",
                        response)
        if response.status != regs.STATUS_SUCCESS:
            raise status_error(f"Request Slot ({what})", response)
        count = self._count(kind)
        if response.value >= count:
            raise error(errno.EIO, f"device allocated {what} slot {response.value}, but it has "
                        f"only {count}", response)
        return response.value

    def release(self, kind: int, slot: int, *, cmd_id: int | None = None) -> None:
        """Free a slot; EBADFD when the device says it is not allocated (or does not exist)."""
        what = "program" if kind == regs.SLOT_PROGRAM else "data"
        response = self._commands.command(regs.CMD_RELEASE_SLOT,
                                          bytes((kind & 0xFF, slot & 0xFF)), cmd_id=cmd_id)
        if response.status != regs.STATUS_SUCCESS:
            raise status_error(f"Release Slot ({what} slot {slot})", response)

    def defer_release(self, kind: int, slot: int) -> None:
        """Remember to release a slot whose Release Slot timed out (retried before the next
        Request Slot and at close), so a wedged engine never leaks slots for good."""
        with self._lock:
            self._orphans.append((kind, slot))

    def release_deferred(self) -> None:
        """Release the slots ``defer_release`` and ended quarantines left; those whose release
        times out again stay for the next occasion."""
        with self._lock:
            orphans, self._orphans = self._orphans, []
        for i, (kind, slot) in enumerate(orphans):
            try:
                self.release(kind, slot)
            except OSError as exc:
                if exc.errno == errno.ETIMEDOUT:
                    with self._lock:
                        self._orphans.extend(orphans[i:])
                    return
                # anything else (e.g. the slot is already free after a reset): nothing to keep

    def quarantine(self, engine: int, slots: list[tuple[int, int]]) -> None:
        """Keep ``slots`` ((kind, slot) pairs) of a command that timed out on ``engine`` and could
        not be stopped: never released or reused while that engine may still be running it; they
        are released once the engine reads idle (checked whenever a caller waits for an engine)."""
        with self._lock:
            self._quarantine.setdefault(engine, []).extend(slots)

    def quarantined(self) -> list[tuple[int, int]]:
        """(kind, slot) pairs held back by ``quarantine``."""
        with self._lock:
            return [s for slots in self._quarantine.values() for s in slots]

    def end_quarantine(self, engine: int) -> None:
        """``engine`` reads idle: its quarantined slots join the deferred releases."""
        with self._lock:
            self._orphans.extend(self._quarantine.pop(engine, ()))

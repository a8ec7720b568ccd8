"""Cancellation of runs in progress: a thread-safe flag that engines poll while they run."""
from __future__ import annotations

import threading
from collections.abc import Callable


class Cancel:
    """A flag that stops the runs given it (``run(..., cancel=c)``) once any thread sets it.

    ``set()`` may be called from any thread, any number of times; a run that sees the flag raises
    ``hermes.errors.Cancelled`` within a bounded amount of work (see specs/engine.md). A run
    started with a flag that is already set stops before its first block. The flag never resets:
    use a fresh ``Cancel`` for the next run.
    """

    __slots__ = ("_hooks", "_lock", "_next", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._hooks: dict[int, Callable[[], None]] = {}
        self._next = 0

    def set(self) -> None:
        """Raise the flag and tell every run that watches it (idempotent)."""
        with self._lock:
            if self._set:
                return
            self._set = True
            hooks = list(self._hooks.values())
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        """Whether ``set()`` has been called."""
        return self._set

    def watch(self, hook: Callable[[], None]) -> int:
        """Call ``hook()`` when the flag is set (at once when it already is); returns a token for
        ``unwatch``. Engines whose native code cannot poll Python use it to poke their run."""
        with self._lock:
            token = self._next
            self._next += 1
            if not self._set:
                self._hooks[token] = hook
                return token
        hook()
        return token

    def unwatch(self, token: int) -> None:
        """Stop calling the hook registered under ``token`` (unknown tokens are ignored)."""
        with self._lock:
            self._hooks.pop(token, None)

    def __repr__(self) -> str:
        return f"Cancel(set={self._set})"

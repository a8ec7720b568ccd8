"""A thread-safe LRU of loaded programs bounded by entry count and by estimated host bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

#: Estimated host bytes a cache of loaded programs may hold unless its owner sets another bound.
DEFAULT_CACHE_BYTES = 256 << 20

#: What a cache holds (an executable, a checked program, ...).
V = TypeVar("V")


class LoadedCache(Generic[V]):
    """Least recently used entries, at most ``max_entries`` of them and at most ``max_bytes``
    of their costs together (the cost of a loaded program: ``Program.host_bytes``).

    An entry costing more than ``max_bytes`` alone is not kept. A hit takes no lock (single
    dict operations are atomic); insertions and evictions do.
    """

    def __init__(self, max_entries: int, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> V | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            self._entries.move_to_end(key)
        except KeyError:   # evicted by another thread meanwhile; the value is still valid
            pass
        return entry[0]

    def put(self, key: Hashable, value: V, cost: int) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries until both
        bounds hold again."""
        if not self.max_entries or cost > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, cost)
            self._bytes += cost
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        """Sum of the costs of the entries held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

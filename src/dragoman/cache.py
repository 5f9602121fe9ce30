"""A small time-bounded cache for the hot path (one event loop: no locks needed).

Entries carry their own deadline (monotonic seconds); the size is bounded, and when full
the oldest entries go first. It never refreshes anything itself: callers decide what a
miss costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("a cache holds at least one entry")
        self._max = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        deadline, value = found
        if self._clock() >= deadline:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, deadline: float) -> None:
        if len(self._entries) >= self._max:
            self._evict()
        self._entries[key] = (deadline, value)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        now = self._clock()
        expired = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
        for key in expired:
            del self._entries[key]
        # Still full: drop the oldest tenth (insertion order) rather than one at a time.
        if len(self._entries) >= self._max:
            for key in list(self._entries)[: max(1, self._max // 10)]:
                del self._entries[key]

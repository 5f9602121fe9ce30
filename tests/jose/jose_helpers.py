"""Helpers for the JOSE unit tests."""

from __future__ import annotations

from dataclasses import dataclass

TTL = 300.0
MAX_STALE = 3600.0
REFETCH_INTERVAL = 30.0


@dataclass
class ManualClock:
    """A clock the test moves by hand (the cache takes any ``() -> float``)."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

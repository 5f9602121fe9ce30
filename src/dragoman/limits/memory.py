"""Per-process rate-limit counters: a dict of TATs, bounded and swept.

It serves one process only: N instances (or workers) with it allow N times the limits,
which is why shared deployments use Redis. It is also the per-instance fallback for reads
while Redis is down (``limits.fallback = "local"``).

A key whose TAT has passed is idle: deciding on it is the same as deciding on no key, so
sweeping it changes nothing. Idle keys are swept every ``sweep_every`` seconds and when
the dict is full. Still full after a sweep, a request that would add a key is refused
(LimiterUnavailable, then 503): evicting a live key would reset someone's limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dragoman.limits.gcra import MICROSECONDS, decide
from dragoman.limits.rules import Check, LimiterUnavailable, Verdict


class MemoryLimiter:
    def __init__(
        self,
        *,
        max_keys: int = 100_000,
        sweep_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tats: dict[tuple[str, str], int] = {}
        self._max_keys = max_keys
        self._sweep_every = int(sweep_every * MICROSECONDS)
        self._clock = clock
        self._last_sweep = self._now()

    def _now(self) -> int:
        return int(self._clock() * MICROSECONDS)

    def __len__(self) -> int:
        return len(self._tats)

    async def ping(self) -> None:
        return None  # in this process: always there

    async def decide(self, checks: Sequence[Check]) -> Verdict:
        # No await between reading and writing: atomic within the event loop.
        now = self._now()
        if now - self._last_sweep >= self._sweep_every:
            self.sweep(now)
        keys = [(c.rule.name, c.subject) for c in checks]
        verdict = Verdict(
            tuple(
                decide(self._tats.get(key), now, c.rule.interval, c.rule.tolerance)
                for key, c in zip(keys, checks, strict=True)
            )
        )
        if verdict.allowed:
            added = sum(1 for key in keys if key not in self._tats)
            if added and len(self._tats) + added > self._max_keys:
                self.sweep(now)
                if len(self._tats) + added > self._max_keys:
                    raise LimiterUnavailable("memory_limiter_full")
            for key, decision in zip(keys, verdict.decisions, strict=True):
                self._tats[key] = decision.tat
        return verdict

    def sweep(self, now: int | None = None) -> None:
        """Drop every idle key (its TAT has passed)."""
        now = self._now() if now is None else now
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        self._last_sweep = now

    async def close(self) -> None:
        self._tats.clear()

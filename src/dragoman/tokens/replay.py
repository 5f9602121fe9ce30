"""Replay caches of the upstream verifier: a write token is usable once (issue 7).

The verifier asks ``first_use(key, ttl)`` after a token passed every other check; ``True``
means this is the token's first use and the key is now remembered for ``ttl`` seconds (the
token's remaining life plus the verifier's leeway, so the entry outlives every moment the
token could still verify).

The key is :func:`replay_key` of the issuer and the token's ``jti``, never the token bytes:
an ES256 signature (r, s) has a twin (r, n - s) that verifies just as well, so a cache keyed
on the bytes would let the twin of a used token through. The jti is inside the signed
payload; no one can change it without breaking the signature.

Fail closed: a cache that cannot answer raises :class:`ReplayCacheUnavailable` (a full
memory cache raises :class:`ReplayCacheFull`), which the verifier turns into a refusal,
never into an allow.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError

from dragoman.state.redis import open_redis

KEY_PREFIX = "dragoman:jti:"
TIMEOUT = 2.0
"""Seconds a Redis connection or command may take before the cache counts as unavailable."""


class ReplayCacheUnavailable(Exception):
    """The cache cannot say whether a token was used: the request must be refused."""


class ReplayCacheFull(ReplayCacheUnavailable):
    """The memory cache holds its maximum of live entries; it forgets none of them early."""


class ReplayCache(Protocol):
    async def first_use(self, key: str, ttl: float) -> bool:
        """Remember ``key`` for ``ttl`` seconds; ``True`` only if it was not already there."""
        ...

    async def close(self) -> None: ...


def replay_key(issuer: str, jti: str) -> str:
    """The cache key of a token: SHA-256 of its issuer and jti (NUL-separated, so no two
    different pairs share a key), hex-encoded. Bounded length, whatever the jti."""
    return hashlib.sha256(issuer.encode() + b"\x00" + jti.encode()).hexdigest()


class MemoryReplayCache:
    """One process's replay cache, bounded by ``max_entries``.

    Expired entries are swept first (a heap ordered by expiry makes that cheap); if the cache
    is still full, a new key is refused with :class:`ReplayCacheFull` instead of evicting a
    live entry, which would make that token replayable. Only for a single upstream instance:
    several instances need a shared cache (:class:`RedisReplayCache`).
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Live entries (after sweeping the expired ones)."""
        self._sweep(self._clock())
        return len(self._expiry)

    def _sweep(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires:
                del self._expiry[key]

    async def first_use(self, key: str, ttl: float) -> bool:
        now = self._clock()
        self._sweep(now)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self._max:
            raise ReplayCacheFull(f"{self._max} live entries")
        expires = now + max(ttl, 0.001)
        self._expiry[key] = expires
        heapq.heappush(self._heap, (expires, key))
        return True

    async def close(self) -> None:
        self._expiry.clear()
        self._heap.clear()


class RedisReplayCache:
    """A replay cache shared by every upstream instance: one ``SET key 1 NX PX ttl`` per
    check (atomic: of two instances checking the same token at once, exactly one wins).

    The entry expires in Redis with the token, so nothing has to sweep it. Redis errors and
    timeouts raise :class:`ReplayCacheUnavailable`.
    """

    def __init__(self, client: redis.Redis, *, owned: bool = False) -> None:
        self._client = client
        self._owned = owned

    @classmethod
    def from_url(cls, url: str) -> RedisReplayCache:
        """A cache with its own client (closed by :meth:`close`)."""
        return cls(open_redis(url, timeout=TIMEOUT), owned=True)

    async def first_use(self, key: str, ttl: float) -> bool:
        ttl_ms = max(1, math.ceil(ttl * 1000))  # rounded up: never shorter than the token
        try:
            stored = await self._client.set(KEY_PREFIX + key, b"1", nx=True, px=ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ReplayCacheUnavailable(type(exc).__name__) from None
        return bool(stored)

    async def close(self) -> None:
        if self._owned:
            await self._client.aclose()

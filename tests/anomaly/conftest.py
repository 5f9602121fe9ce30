"""Fixtures of the anomaly tests: the Redis server (skips locally when down, fails under
CI=true), each behaviour test with counts in memory and in Redis, and a clock the tests
move instead of sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from anomaly_support import Backend, MovableClock


async def _forget_counts(url: str) -> None:
    """Drop the anomaly keys earlier tests left (the demo accounts are the same in every
    test); nothing else in the database is touched."""
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="dragoman:anomaly:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[Backend]:
    """Counts in the test Redis, without what earlier tests left there."""
    await _forget_counts(redis_url)
    yield Backend("redis", redis_url)
    await _forget_counts(redis_url)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each behaviour test runs with the counts in memory and in Redis."""
    if request.param == "redis":
        found: Backend = request.getfixturevalue("redis_backend")
        return found
    return Backend("memory", None)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()

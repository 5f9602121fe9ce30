"""Fixtures of the anomaly tests: the Redis server (skips locally when down, fails under
CI=true), each behaviour test with counts in memory and in Redis, and a clock the tests
move instead of sleeping."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from anomaly_support import Backend, MovableClock

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("DRAGOMAN_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The Redis server of the tests (skips locally when down, fails under CI=true)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError:
        message = "Redis on 127.0.0.1:6379 is not reachable (connection refused)"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return REDIS_URL


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

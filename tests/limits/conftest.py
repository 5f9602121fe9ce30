"""Fixtures of the rate-limit tests: the test Redis (skips locally when it is down, fails
under CI=true), a client on it, and a clock the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from limits_support import FrozenClock


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()

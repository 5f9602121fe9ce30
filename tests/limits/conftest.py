"""Fixtures of the rate-limit tests: the test Redis (skips locally when it is down, fails
under CI=true), a client on it, and a clock the tests move by hand."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from limits_support import FrozenClock

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

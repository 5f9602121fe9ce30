"""A Redis that may evict keys under memory pressure forgets rate-limit counts and anomaly
blocks: an allow it should not be. The proxy names such a server at start (it cannot
refuse it: ElastiCache's default policy, volatile-lru, is one)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as redis

from dragoman.demo.runner import DemoStack
from dragoman.state.redis import evicting_policy

CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
async def policy(redis_url: str) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """Sets the test Redis's maxmemory-policy; the old one is put back afterwards."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    before = (await client.config_get("maxmemory-policy"))["maxmemory-policy"]

    async def set_policy(name: str) -> None:
        await client.config_set("maxmemory-policy", name)

    try:
        yield set_policy
    finally:
        await client.config_set("maxmemory-policy", before)
        await client.aclose()


def eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "evicts keys" in r.getMessage()]


async def test_a_redis_of_rate_limits_that_may_evict_keys_is_named_at_start(
    make_stack: Callable[..., Awaitable[DemoStack]],
    redis_url: str,
    policy: Callable[[str], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await policy("volatile-lru")
    with caplog.at_level(logging.WARNING, logger="dragoman.state.redis"):
        await make_stack(
            {
                "limits": {"backend": "redis", "redis_url": redis_url},
                "anomaly": {"backend": "redis", "redis_url": redis_url},
            }
        )
    (warning,) = eviction_warnings(caplog)
    assert "maxmemory-policy volatile-lru" in warning
    assert "rate limits and anomaly state" in warning


async def test_a_redis_that_never_evicts_is_not_named(
    make_stack: Callable[..., Awaitable[DemoStack]],
    redis_url: str,
    policy: Callable[[str], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await policy("noeviction")
    with caplog.at_level(logging.WARNING, logger="dragoman.state.redis"):
        await make_stack({"limits": {"backend": "redis", "redis_url": redis_url}})
    assert eviction_warnings(caplog) == []


async def test_a_redis_that_cannot_be_asked_has_no_policy_to_name() -> None:
    assert await evicting_policy(CLOSED_REDIS) is None

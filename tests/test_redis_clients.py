"""Every Redis client of the shared state sends a command once: a retry after the server ran
it would count a request twice (limits, anomaly windows) or refuse a first use (replay)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as redis

from dragoman.anomaly.redis_state import RedisState
from dragoman.browser.redis_sessions import RedisSessionStore
from dragoman.limits.redis_limiter import RedisLimiter
from dragoman.tokens.replay import RedisReplayCache

URL = "redis://127.0.0.1:6379/0"  # never connected to: only the client's settings are read


def retries_of(client: redis.Redis) -> int:
    pool = client.connection_pool
    connection: Any = pool.connection_class(**pool.connection_kwargs)
    return int(connection.retry.get_retries())


@pytest.mark.parametrize(
    "store",
    [
        RedisLimiter.from_url(URL),
        RedisState.from_url(URL),
        RedisSessionStore.from_url(URL),
        RedisReplayCache.from_url(URL),
    ],
    ids=["limits", "anomaly", "sessions", "replay"],
)
def test_shared_state_client_never_retries_a_command(store: Any) -> None:
    assert retries_of(store._client) == 0

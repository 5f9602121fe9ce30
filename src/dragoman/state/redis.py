"""Redis clients for the shared state (rate limits, anomaly windows, sessions, replay cache).

redis-py retries a command on a dropped connection by default. Every command dragoman sends
either counts something (the rate-limit and anomaly scripts) or claims something (a replay
cache's SET NX, a session's creation), and a retry after the server already ran the command
once would count twice or refuse a first use as a replay. So retries are off: a failed
command fails the request that needed it (fail closed, SEMANTICS §6), and the next request
gets a fresh connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from yarl import URL

log = logging.getLogger(__name__)


def open_redis(
    url: str, *, timeout: float, decode_responses: bool = False, bounded_by_caller: bool = False
) -> redis.Redis:
    """``bounded_by_caller``: every command is sent under an ``asyncio.timeout(timeout)``
    of the code that sends it (a script's batch, a ping), so redis-py need not bound each
    socket read and write itself. It does that with ``asyncio.wait_for``, one task per
    command, about 8 µs of CPU each on the hot path; a command that timeout cancels drops
    its connection."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        socket_timeout=None if bounded_by_caller else timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


async def ping(
    client: redis.Redis, *, seconds: float, unavailable: Callable[[str], Exception]
) -> None:
    """Return when Redis answers within ``seconds`` (for /readyz); else raise
    ``unavailable(<error class name>)``, the owning store's own unavailable error."""
    try:
        async with asyncio.timeout(seconds):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise unavailable(type(exc).__name__) from exc


async def evicting_policy(url: str, *, seconds: float = 2.0) -> str | None:
    """The server's ``maxmemory-policy`` when it may evict keys (anything but
    ``noeviction``); None when it never does, or when it cannot be asked (a managed Redis
    that refuses CONFIG, a server down: the requests will say so)."""
    client = open_redis(url, timeout=seconds, decode_responses=True)
    try:
        async with asyncio.timeout(seconds):
            answer = await client.config_get("maxmemory-policy")
    except (RedisError, OSError, TimeoutError):
        return None
    finally:
        await client.aclose()
    policy = answer.get("maxmemory-policy") if isinstance(answer, dict) else None
    return policy if isinstance(policy, str) and policy != "noeviction" else None


async def warn_if_evicting(url: str, holds: str) -> None:
    """Log a warning when the Redis at ``url`` may evict keys under memory pressure: a
    rate-limit count or an anomaly block evicted early is an allow it should not be
    (ElastiCache's default policy, volatile-lru, evicts exactly such keys: they have TTLs)."""
    policy = await evicting_policy(url)
    if policy is not None:
        where = URL(url)
        log.warning(
            "Redis at %s:%s (%s) evicts keys under memory pressure (maxmemory-policy %s):"
            " an evicted key is a limit or a block forgotten; set maxmemory-policy noeviction",
            where.host,
            where.port,
            holds,
            policy,
        )

"""The rate-limit stage from settings (Redis is imported only when configured)."""

from __future__ import annotations

import time
from collections.abc import Callable

from dragoman.limits.memory import MemoryLimiter
from dragoman.limits.rules import Limiter, rules_from_settings
from dragoman.limits.stage import RateLimitStage, plain_key
from dragoman.settings import LimitsSettings


def open_rate_limits(
    settings: LimitsSettings,
    *,
    key: Callable[[str], str] = plain_key,
    clock: Callable[[], float] = time.time,
    observe: Callable[[str, str], None] | None = None,
) -> RateLimitStage:
    """``clock`` drives the in-memory counters (the proxy's clock, which tests move); the
    Redis counters run on the Redis server's clock. ``key`` hides the counted accounts
    (:func:`dragoman.limits.stage.subject_of`). ``observe(rule, outcome)`` counts the
    decisions (:class:`~dragoman.limits.stage.RateLimitStage`)."""
    rules = rules_from_settings(settings)
    if not rules:
        return RateLimitStage((), None, key=key, observe=observe)
    if settings.backend == "memory":
        return RateLimitStage(
            rules,
            MemoryLimiter(max_keys=settings.max_keys, clock=clock),
            key=key,
            observe=observe,
        )
    from dragoman.limits.redis_limiter import RedisLimiter

    if settings.redis_url is None:
        raise ValueError("the redis rate-limit backend needs limits.redis_url")
    shared: Limiter = RedisLimiter.from_url(settings.redis_url, timeout=settings.timeout)
    local = (
        MemoryLimiter(max_keys=settings.max_keys, clock=clock)
        if settings.fallback == "local"
        else None
    )
    return RateLimitStage(rules, shared, local=local, key=key, observe=observe)

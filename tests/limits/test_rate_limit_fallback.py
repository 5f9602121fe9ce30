"""With the shared rate-limit store down (SEMANTICS §6): writes are always refused (503
rate_limit_unavailable, nothing forwarded); reads are refused too, unless the settings
allow per-instance limits, which then still limit them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from limits_support import ADDRESS, CLOSED_PORT_REDIS, NEW_ADDRESS, FrozenClock, auth, limits

from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
EVERY_TIER = {"name": "everything", "per": "account", "rate": "60/min", "burst": 2}
PATH = ADDRESS.format(customer="cus_alice")


def redis_down(fallback: str) -> dict[str, Any]:
    return limits(EVERY_TIER, backend="redis", redis_url=CLOSED_PORT_REDIS, fallback=fallback)


async def call(
    http: aiohttp.ClientSession, stack: DemoStack, method: str
) -> tuple[int, str | None]:
    body = NEW_ADDRESS if method == "PUT" else None
    headers = auth(stack, "acct-1001")
    async with http.request(method, stack.urls["proxy"] + PATH, headers=headers, json=body) as r:
        if r.content_type == "application/problem+json":
            return r.status, (await r.json())["code"]
        return r.status, None


async def test_writes_are_refused_when_redis_is_down(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    for fallback in ("refuse", "local"):
        stack = await make_stack(redis_down(fallback))
        assert await call(http, stack, "PUT") == (503, "rate_limit_unavailable")
        assert stack.platform.seen == []


async def test_reads_are_refused_when_redis_is_down_and_the_fallback_refuses(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(redis_down("refuse"))
    assert await call(http, stack, "GET") == (503, "rate_limit_unavailable")
    assert stack.platform.seen == []


async def test_reads_pass_on_local_limits_when_redis_is_down_and_the_fallback_is_local(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(redis_down("local"), clock=clock)
    answers = [await call(http, stack, "GET") for _ in range(3)]
    assert answers == [(200, None), (200, None), (429, "rate_limited")]
    assert len(stack.platform.seen) == 2


async def test_the_unavailable_answer_says_when_to_retry(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(redis_down("refuse"))
    async with http.put(
        stack.urls["proxy"] + PATH, headers=auth(stack, "acct-1001"), json=NEW_ADDRESS
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert "RateLimit" not in response.headers

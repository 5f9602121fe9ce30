"""The proxy's own state-changing endpoints count against the caller's per-account limits:
one account cannot fill the session store with handshakes, nor make dragoman hammer the
platform with registration lookups. Other accounts are unaffected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from limits_support import auth, limits

from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
RULE = {"name": "changes", "per": "account", "tiers": ["change"], "rate": "1/h", "burst": 3}


async def test_a_flood_of_session_handshakes_is_rate_limited_per_account(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(limits(RULE))
    url = stack.urls["proxy"] + "/_dragoman/session"
    statuses = []
    for _ in range(5):
        async with http.post(url, headers=auth(stack, "acct-1001")) as response:
            statuses.append(response.status)
            if response.status == 429:
                problem = await response.json()
                assert problem["code"] == "rate_limited"
                assert int(response.headers["Retry-After"]) >= 1
                assert "Set-Cookie" not in response.headers
    assert statuses == [201, 201, 201, 429, 429]
    async with http.post(url, headers=auth(stack, "acct-2002", user="bob")) as response:
        assert response.status == 201  # another account has its own allowance


async def test_registration_is_rate_limited_per_account(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(limits(RULE))
    url = stack.urls["proxy"] + "/_dragoman/registration"
    statuses = []
    for _ in range(4):
        async with http.delete(url, headers=auth(stack, "acct-9999", user="mallory")) as r:
            statuses.append(r.status)
            body = await r.json()
    assert statuses[3] == 429 and body["code"] == "rate_limited"
    assert 429 not in statuses[:3]  # refused for other reasons (nothing to unlink) first

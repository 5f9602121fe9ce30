"""The proxy's own state-changing endpoints count against the caller's per-account limits:
one account cannot fill the session store with handshakes (tier ``session``), nor make
dragoman hammer the platform with registration lookups (tier ``change``). Other accounts
are unaffected, and handshakes never use up the writes' budget."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from limits_support import auth, limits

from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
RULE = {"name": "changes", "per": "account", "tiers": ["change"], "rate": "1/h", "burst": 3}
SESSIONS = {**RULE, "name": "sessions", "tiers": ["session"]}
PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}


async def test_a_flood_of_session_handshakes_is_rate_limited_per_account(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(limits(SESSIONS))
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


async def test_handshakes_never_use_up_the_writes_budget(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    """Two accounts' tabs in one browser take the one CSRF cookie from each other, and each
    of their calls makes a new session: with the default rules, the handshakes have a
    budget of their own (account-sessions, burst 20), and a write goes through after it
    is spent."""
    stack = await make_stack()
    url = stack.urls["proxy"] + "/_dragoman/session"
    statuses = []
    for _ in range(21):
        async with http.post(url, headers=auth(stack, "acct-1001")) as response:
            statuses.append(response.status)
            reason = (await response.json()).get("reason")
    assert statuses == [201] * 20 + [429]
    assert reason == "account-sessions"
    async with http.post(
        stack.urls["proxy"] + PM, headers=auth(stack, "acct-1001"), json=CARD
    ) as r:
        assert r.status == 201


async def test_a_rule_on_the_registration_tier_leaves_handshakes_alone(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(limits(RULE))
    url = stack.urls["proxy"] + "/_dragoman/session"
    for _ in range(5):
        async with http.post(url, headers=auth(stack, "acct-1001")) as response:
            assert response.status == 201

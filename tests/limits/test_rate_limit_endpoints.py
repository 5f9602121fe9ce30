"""The proxy's own endpoints count against the caller's per-account limits: one account
cannot fill or churn the session store (handshakes, refreshes and logouts: tier
``session``), make dragoman hammer the platform with registration lookups (tier
``change``), nor flood the audit trail with whoami reads (tier ``read``). Other accounts
are unaffected, handshakes never use up the writes' budget, and report-only rules on these
tiers report."""

from __future__ import annotations

import json
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


async def test_whoami_counts_against_the_accounts_read_limits(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    everything = {"name": "all", "per": "account", "rate": "1/h", "burst": 2}
    stack = await make_stack(limits(everything))
    url = stack.urls["proxy"] + "/_dragoman/whoami"
    statuses = []
    for _ in range(3):
        async with http.get(url, headers=auth(stack, "acct-1001")) as response:
            statuses.append(response.status)
    assert statuses == [200, 200, 429]


async def test_session_refreshes_and_logouts_count_against_the_session_limits(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(limits({**SESSIONS, "burst": 3}))
    url = stack.urls["proxy"] + "/_dragoman/session"
    headers = auth(stack, "acct-1001")
    async with http.post(url, headers=headers) as response:
        assert response.status == 201
        token = (await response.json())["csrf_token"]
    pair = {**headers, "X-CSRF-Token": token, "Origin": stack.urls["proxy"]}
    pair["Cookie"] = f"__Host-dragoman-csrf={token}"
    statuses = []
    for _ in range(3):
        async with http.post(url + "/refresh", headers=pair) as response:
            statuses.append(response.status)
            if response.status == 200:
                token = (await response.json())["csrf_token"]
                pair["X-CSRF-Token"] = token
                pair["Cookie"] = f"__Host-dragoman-csrf={token}"
    async with http.delete(url, headers=pair) as response:
        statuses.append(response.status)
    assert statuses == [200, 200, 429, 429]


async def test_a_report_only_session_rule_reports_what_it_would_refuse(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    evaluated = {**SESSIONS, "name": "sessions-eval", "burst": 2, "report_only": True}
    stack = await make_stack(limits(evaluated))
    url = stack.urls["proxy"] + "/_dragoman/session"
    for _ in range(3):
        async with http.post(url, headers=auth(stack, "acct-1001")) as response:
            assert response.status == 201
    lines = (stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    sessions = [r for r in map(json.loads, lines) if r.get("event") == "session"]
    assert [bool(r.get("would_deny")) for r in sessions] == [False, False, True]

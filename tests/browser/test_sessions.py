"""Browser sessions (SEMANTICS §5): the handshake, refresh with its grace, logout; with
sessions in memory and in Redis, and two proxy instances sharing one Redis."""

from __future__ import annotations

from typing import Any

import aiohttp
from session_support import (
    CARD,
    PM,
    MakeStack,
    MovableClock,
    audit_lines,
    bearer,
    browser_overrides,
    handshake,
    with_pair,
)

from dragoman.app import build_app
from dragoman.demo.runner import DemoStack
from failing_sink import FailingEvent

Backend = tuple[str, str | None]


async def test_the_handshake_sets_the_csrf_cookie_with_exactly_the_host_attributes(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(browser_overrides(*backend))
    async with http.post(
        stack.urls["proxy"] + "/_dragoman/session", headers=bearer(stack)
    ) as response:
        assert response.status == 201
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
        cookie = response.headers["Set-Cookie"]
    token = body["csrf_token"]
    assert cookie == f"__Host-dragoman-csrf={token}; HttpOnly; Secure; SameSite=Strict; Path=/"
    assert "expires_at" in body


async def test_the_handshake_needs_credentials(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.post(stack.urls["proxy"] + "/_dragoman/session") as response:
        assert response.status == 401
        assert "Set-Cookie" not in response.headers


async def test_a_refresh_keeps_the_old_token_live_for_the_grace_and_kills_the_one_before(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    clock = MovableClock()
    stack = await make_stack(browser_overrides(*backend), clock=clock)
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t0 = (await handshake(http, proxy, alice)).token
    refresh = proxy + "/_dragoman/session/refresh"
    async with http.post(refresh, headers=with_pair(alice, t0, t0)) as response:
        assert response.status == 200
        t1 = (await response.json())["csrf_token"]
        assert t1 in response.headers["Set-Cookie"]
    async with http.post(proxy + PM, headers=with_pair(alice, t1, t0), json=CARD) as r:
        assert r.status == 201  # T(n) within the grace
    async with http.post(refresh, headers=with_pair(alice, t1, t1)) as response:
        assert response.status == 200
        t2 = (await response.json())["csrf_token"]
    async with http.post(proxy + PM, headers=with_pair(alice, t2, t0), json=CARD) as r:
        assert r.status == 403  # T(n-1) dead at once
        assert (await r.json())["code"] == "csrf_token_rotated"
    clock.offset = 11.0
    async with http.post(proxy + PM, headers=with_pair(alice, t2, t1), json=CARD) as r:
        assert r.status == 403  # T(n) after the grace
        assert (await r.json())["code"] == "csrf_token_rotated"
    async with http.post(proxy + PM, headers=with_pair(alice, t2, t2), json=CARD) as r:
        assert r.status == 201


async def test_a_refresh_with_the_previous_token_in_its_grace_answers_the_current_one(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(browser_overrides(*backend))
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t0 = (await handshake(http, proxy, alice)).token
    refresh = proxy + "/_dragoman/session/refresh"
    async with http.post(refresh, headers=with_pair(alice, t0, t0)) as response:
        t1 = (await response.json())["csrf_token"]
    async with http.post(refresh, headers=with_pair(alice, t0, t0)) as response:
        assert response.status == 200  # a second tab refreshing at the same moment
        assert (await response.json())["csrf_token"] == t1


async def test_logout_ends_the_session_and_expires_the_cookie(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(browser_overrides(*backend))
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t = (await handshake(http, proxy, alice)).token
    async with http.delete(
        proxy + "/_dragoman/session", headers=with_pair(alice, t, t)
    ) as response:
        assert response.status == 204
        assert "Max-Age=0" in response.headers["Set-Cookie"]
    async with http.post(proxy + PM, headers=with_pair(alice, t, t), json=CARD) as r:
        assert r.status == 403
        body = await r.json()
    assert (body["code"], body["reason"]) == ("csrf_invalid", "unknown_session")


async def test_a_session_made_on_one_instance_is_accepted_by_another_sharing_redis(
    make_stack: MakeStack, http: aiohttp.ClientSession, redis_url: str, serve: Any
) -> None:
    stack = await make_stack(browser_overrides("redis", redis_url))
    assert stack.settings is not None
    alice = bearer(stack)
    t = (await handshake(http, stack.urls["proxy"], alice)).token
    async with serve(build_app(stack.settings, migrate_store=False)) as second:
        pair = with_pair(alice, t, t)
        async with http.post(second + PM, headers=pair, json=CARD) as response:
            assert response.status == 201
    assert len(stack.platform.seen) == 1


async def test_session_audit_records_carry_the_codes_and_never_the_token(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + PM, headers=with_pair(alice, t, "x" + t), json=CARD):
        pass
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    randomness = t.split(".")[1]
    assert randomness not in text
    records = audit_lines(stack)
    assert {"event": "session", "action": "create", "status": 201}.items() <= next(
        r for r in records if r["event"] == "session"
    ).items()
    denied = records[-1]
    assert (denied["code"], denied["reason"]) == ("csrf_invalid", "bad_mac")


async def test_a_handshake_whose_record_cannot_be_written_hands_out_no_token_or_cookie(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert stack.proxy is not None
    stack.proxy.audit._sink = FailingEvent(stack.proxy.audit._sink, "session")
    async with http.post(
        stack.urls["proxy"] + "/_dragoman/session", headers=bearer(stack)
    ) as response:
        assert response.status == 503
        assert (await response.json())["code"] == "audit_unavailable"
        assert "Set-Cookie" not in response.headers
        assert "csrf_token" not in await response.text()


async def test_another_caller_cannot_refresh_or_end_a_session_with_its_pair(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    proxy = stack.urls["proxy"]
    alice, bob = bearer(stack), bearer(stack, "bob", "acct-2002")
    token = (await handshake(http, proxy, alice)).token
    for method, path in (("POST", "/_dragoman/session/refresh"), ("DELETE", "/_dragoman/session")):
        async with http.request(method, proxy + path, headers=with_pair(bob, token, token)) as r:
            assert r.status == 403
            assert (await r.json())["code"] == "csrf_invalid"
            assert "Set-Cookie" not in r.headers
    async with http.post(proxy + PM, headers=with_pair(alice, token, token), json=CARD) as r:
        assert r.status == 201  # alice's pair is as it was: neither rotated nor ended


async def test_a_refresh_with_a_dead_token_is_refused_rotated_and_issues_nothing(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    proxy, alice = stack.urls["proxy"], bearer(stack)
    refresh = proxy + "/_dragoman/session/refresh"
    t0 = (await handshake(http, proxy, alice)).token
    async with http.post(refresh, headers=with_pair(alice, t0, t0)) as response:
        t1 = (await response.json())["csrf_token"]
    async with http.post(refresh, headers=with_pair(alice, t1, t1)) as response:
        t2 = (await response.json())["csrf_token"]
    async with http.post(refresh, headers=with_pair(alice, t2, t0)) as response:  # T(n-1)
        assert response.status == 403
        assert (await response.json())["code"] == "csrf_token_rotated"
        assert "Set-Cookie" not in response.headers

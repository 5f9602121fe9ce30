"""The cap on in-memory sessions (``browser.max_sessions``): at the cap, expired sessions are
swept to make room; when the store is still full a new handshake is refused with 503
``session_unavailable`` and no live session is evicted."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from session_support import (
    CARD,
    PM,
    MakeStack,
    MovableClock,
    bearer,
    browser_overrides,
    handshake,
    with_pair,
)

from dragoman.browser.csrf import random_id
from dragoman.browser.sessions import (
    MemorySessionStore,
    Session,
    SessionStoreUnavailable,
    open_session_store,
)
from dragoman.settings import BrowserSettings

NOW = 1_000_000.0


def session(expires_at: float = NOW + 3600) -> Session:
    return Session(
        id=random_id(),
        subject="alice",
        issuer="https://issuer.example",
        cloud_account="acct-1001",
        created_at=NOW,
        expires_at=expires_at,
        current=random_id(),
    )


# -- the store ---------------------------------------------------------------------------------


async def test_a_full_store_refuses_a_new_session_and_keeps_the_live_ones() -> None:
    store = MemorySessionStore(max_sessions=2)
    first, second = session(), session()
    await store.create(first, NOW)
    await store.create(second, NOW)
    with pytest.raises(SessionStoreUnavailable, match="session store full"):
        await store.create(session(), NOW)
    assert len(store) == 2
    assert await store.get(first.id, NOW) == first
    assert await store.get(second.id, NOW) == second


async def test_expired_sessions_are_swept_to_make_room() -> None:
    store = MemorySessionStore(max_sessions=2)
    old, live = session(expires_at=NOW + 10), session()
    await store.create(old, NOW)
    await store.create(live, NOW)
    later = NOW + 10  # old expires exactly now
    fresh = session(expires_at=later + 3600)
    await store.create(fresh, later)
    assert len(store) == 2
    assert await store.get(old.id, later) is None
    assert await store.get(live.id, later) == live
    assert await store.get(fresh.id, later) == fresh
    with pytest.raises(SessionStoreUnavailable):
        await store.create(session(expires_at=later + 3600), later)


async def test_a_deleted_session_makes_room() -> None:
    store = MemorySessionStore(max_sessions=1)
    first = session()
    await store.create(first, NOW)
    with pytest.raises(SessionStoreUnavailable):
        await store.create(session(), NOW)
    await store.delete(first.id)
    await store.create(session(), NOW)
    assert len(store) == 1


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MemorySessionStore(max_sessions=0)


async def test_the_store_is_opened_with_the_configured_cap() -> None:
    store = open_session_store(BrowserSettings(max_sessions=1))
    assert isinstance(store, MemorySessionStore)
    await store.create(session(), NOW)
    with pytest.raises(SessionStoreUnavailable):
        await store.create(session(), NOW)


def test_the_cap_defaults_to_100_000_and_must_be_at_least_1() -> None:
    assert BrowserSettings().max_sessions == 100_000
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        BrowserSettings(max_sessions=0)


# -- over HTTP ---------------------------------------------------------------------------------


def capped(max_sessions: int, **browser: Any) -> dict[str, Any]:
    overrides = browser_overrides("memory", None)
    overrides["browser"] |= {"max_sessions": max_sessions, **browser}
    return overrides


async def test_the_handshake_past_the_cap_is_refused_503_and_the_live_sessions_still_work(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(capped(2))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    first = (await handshake(http, proxy, alice)).token
    second = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + "/_dragoman/session", headers=alice) as r:
        assert r.status == 503
        assert r.content_type == "application/problem+json"
        assert "Set-Cookie" not in r.headers
        problem = await r.json()
    assert problem["code"] == "session_unavailable"
    assert problem["audit_id"]
    for token in (first, second):
        async with http.post(proxy + PM, headers=with_pair(alice, token, token), json=CARD) as r:
            assert r.status == 201, await r.text()
    assert len(stack.platform.seen) == 2


async def test_a_logout_makes_room_for_a_new_handshake(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(capped(1))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    first = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + "/_dragoman/session", headers=alice) as r:
        assert r.status == 503
    url = proxy + "/_dragoman/session"
    async with http.delete(url, headers=with_pair(alice, first, first)) as r:
        assert r.status == 204, await r.text()
    await handshake(http, proxy, alice)


async def test_expired_sessions_make_room_for_a_new_handshake(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    clock = MovableClock()
    stack = await make_stack(capped(1, session_lifetime=60), clock=clock)
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    await handshake(http, proxy, alice)
    async with http.post(proxy + "/_dragoman/session", headers=alice) as r:
        assert r.status == 503
    clock.offset = 61.0
    await handshake(http, proxy, alice)

"""``browser.csrf = "required"`` (SEMANTICS §5): every request needs a valid CSRF pair,
browser signals or not, reads included. Sessions in memory and in Redis."""

from __future__ import annotations

from typing import Any

import aiohttp
from session_support import CARD, PM, MakeStack, bearer, browser_overrides, handshake, with_pair

Backend = tuple[str, str | None]


def required(backend: Backend) -> dict[str, Any]:
    overrides = browser_overrides(*backend)
    overrides["browser"]["csrf"] = "required"
    return overrides


async def test_a_server_write_without_a_pair_is_refused_and_the_upstream_sees_nothing(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(required(backend))
    async with http.post(stack.urls["proxy"] + PM, headers=bearer(stack), json=CARD) as r:
        assert r.status == 403
        assert r.content_type == "application/problem+json"
        body = await r.json()
    assert (body["code"], body["reason"]) == ("csrf_missing", "missing_cookie")
    assert stack.platform.seen == []


async def test_a_server_write_with_only_the_header_is_refused(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(required(backend))
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + PM, headers=with_pair(alice, None, t), json=CARD) as r:
        assert r.status == 403
        body = await r.json()
    assert (body["code"], body["reason"]) == ("csrf_missing", "missing_cookie")
    assert stack.platform.seen == []


async def test_a_server_write_with_the_pair_reaches_the_upstream(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(required(backend))
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + PM, headers=with_pair(alice, t, t), json=CARD) as r:
        assert r.status == 201, await r.text()
    assert len(stack.platform.seen) == 1


async def test_a_browser_write_with_the_pair_reaches_the_upstream(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(required(backend))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    t = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + PM, headers=with_pair(alice, t, t), json=CARD) as r:
        assert r.status == 201, await r.text()
    assert len(stack.platform.seen) == 1


async def test_a_server_read_without_a_pair_is_refused(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(required(backend))
    async with http.get(stack.urls["proxy"] + PM, headers=bearer(stack)) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "csrf_missing"
    assert stack.platform.seen == []


async def test_a_server_read_with_the_pair_reaches_the_upstream(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(required(backend))
    proxy, alice = stack.urls["proxy"], bearer(stack)
    t = (await handshake(http, proxy, alice)).token
    async with http.get(proxy + PM, headers=with_pair(alice, t, t)) as r:
        assert r.status == 200, await r.text()
    assert len(stack.platform.seen) == 1

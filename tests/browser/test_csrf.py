"""CSRF double-submit (SEMANTICS §5): a valid pair reaches the upstream; every forgery is
refused with its exact code and reason, and the upstream sees nothing."""

from __future__ import annotations

import aiohttp
import pytest
from session_support import (
    CARD,
    COOKIE,
    PM,
    MakeStack,
    bearer,
    browser_overrides,
    handshake,
    with_pair,
)

from dragoman.browser.csrf import CsrfTokens
from dragoman.keys.sealing import decode_master_key, new_master_key

Backend = tuple[str, str | None]
FORGERIES = {
    "no_header": "missing_header",
    "no_cookie": "missing_cookie",
    "guessed_header": "bad_mac",
    "header_from_another_session": "mismatch",
    "cookie_from_another_session": "mismatch",
    "token_macd_with_another_key": "bad_mac",
    "another_principals_session": "other_principal",
}


async def test_a_write_with_cookie_and_header_reaches_the_upstream(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(browser_overrides(*backend))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    t = (await handshake(http, proxy, alice)).token
    async with http.post(proxy + PM, headers=with_pair(alice, t, t), json=CARD) as r:
        assert r.status == 201
    assert len(stack.platform.seen) == 1


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_forged_pair_is_refused_and_the_upstream_sees_nothing(
    make_stack: MakeStack,
    http: aiohttp.ClientSession,
    backend: Backend,
    forgery: str,
    method: str,
) -> None:
    """Reads as writes: SEMANTICS §5 asks every API request after the handshake for the
    pair."""
    stack = await make_stack(browser_overrides(*backend))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    mine = (await handshake(http, proxy, alice)).token
    other = (await handshake(http, proxy, alice)).token
    bobs = (await handshake(http, proxy, bearer(stack, "bob", "acct-2002"))).token
    sid, randomness, _ = mine.split(".")
    foreign = CsrfTokens(decode_master_key(new_master_key())).token(sid, randomness)
    cookie, header = {
        "no_header": (mine, None),
        "no_cookie": (None, mine),
        "guessed_header": (mine, f"{sid}.{randomness}.{'A' * 43}"),
        "header_from_another_session": (mine, other),
        "cookie_from_another_session": (other, mine),
        "token_macd_with_another_key": (foreign, foreign),
        "another_principals_session": (bobs, bobs),
    }[forgery]
    body_json = CARD if method == "POST" else None
    headers = with_pair(alice, cookie, header)
    async with http.request(method, proxy + PM, headers=headers, json=body_json) as r:
        assert r.status == 403
        body = await r.json()
    code = "csrf_missing" if FORGERIES[forgery].startswith("missing_") else "csrf_invalid"
    assert (body["code"], body["reason"]) == (code, FORGERIES[forgery])
    assert stack.platform.seen == []


async def test_a_browser_write_without_a_csrf_pair_is_refused_in_browser_mode(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    headers = bearer(stack, **{"Sec-Fetch-Site": "same-site"})
    async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as r:
        assert r.status == 403
    assert stack.platform.seen == []


BROWSER_SIGNALS = {
    "origin": {"Origin": "http://console.example"},
    "sec-fetch": {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
    "csrf-cookie-only": {"Cookie": "__Host-dragoman-csrf=x"},
}


@pytest.mark.parametrize("signal", sorted(BROWSER_SIGNALS))
async def test_a_browser_read_without_a_csrf_pair_is_refused_in_browser_mode(
    make_stack: MakeStack, http: aiohttp.ClientSession, signal: str
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    headers = bearer(stack, **BROWSER_SIGNALS[signal])
    async with http.get(stack.urls["proxy"] + PM, headers=headers) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "csrf_missing"
    assert stack.platform.seen == []


async def test_a_browser_read_with_its_pair_reaches_the_upstream(
    make_stack: MakeStack, http: aiohttp.ClientSession, backend: Backend
) -> None:
    stack = await make_stack(browser_overrides(*backend))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    t = (await handshake(http, proxy, alice)).token
    async with http.get(proxy + PM, headers=with_pair(alice, t, t)) as r:
        assert r.status == 200
    assert len(stack.platform.seen) == 1


async def test_quoted_cookies_a_sibling_host_planted_do_not_hide_the_csrf_cookie(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    """Another subdomain (or port) of the site sets ``a="`` and ``z="``: the browser sends
    them around the CSRF cookie. A parser that lets a quoted value run over ``;`` read one
    cookie ``a`` and refused every call ``csrf_missing``."""
    stack = await make_stack(browser_overrides("memory", None))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    t = (await handshake(http, proxy, alice)).token
    headers = {**alice, "Cookie": f'a="; {COOKIE}={t}; z="', "X-CSRF-Token": t}
    async with http.get(proxy + PM, headers=headers) as r:
        assert r.status == 200
    async with http.post(proxy + PM, headers=headers, json=CARD) as r:
        assert r.status == 201


async def test_the_csrf_cookie_between_quoted_cookies_still_marks_a_browser(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    proxy = stack.urls["proxy"]
    t = (await handshake(http, proxy, bearer(stack, Origin=stack.urls["console"]))).token
    headers = {**bearer(stack), "Cookie": f'a="; {COOKIE}={t}; z="'}  # no Origin, no header
    async with http.get(proxy + PM, headers=headers) as r:
        assert r.status == 403
        body = await r.json()
    assert (body["code"], body["reason"]) == ("csrf_missing", "missing_header")
    assert stack.platform.seen == []


@pytest.mark.parametrize("planted_first", [True, False])
async def test_a_valid_cookie_planted_beside_the_browsers_own_refuses_nothing(
    make_stack: MakeStack, http: aiohttp.ClientSession, planted_first: bool
) -> None:
    """Cookies do not isolate ports: a page on another port of the host can plant a CSRF
    cookie of a session of its own (bob's). The pair is checked against the cookie of the
    header's session, so the planted one locks nobody out, and lets bob's session in
    nowhere."""
    stack = await make_stack(browser_overrides("memory", None))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    mine = (await handshake(http, proxy, alice)).token
    bobs = (await handshake(http, proxy, bearer(stack, "bob", "acct-2002"))).token
    pair = [f"{COOKIE}={bobs}", f"{COOKIE}={mine}"]
    cookies = "; ".join(pair if planted_first else pair[::-1])
    async with http.get(
        proxy + PM, headers={**alice, "Cookie": cookies, "X-CSRF-Token": mine}
    ) as r:
        assert r.status == 200
    async with http.get(
        proxy + PM, headers={**alice, "Cookie": cookies, "X-CSRF-Token": bobs}
    ) as r:
        assert r.status == 403
        body = await r.json()
    assert (body["code"], body["reason"]) == ("csrf_invalid", "other_principal")


async def test_whoami_from_a_browser_needs_the_pair(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    """Its answer names the caller's customer: a read like any other."""
    stack = await make_stack(browser_overrides("memory", None))
    proxy, alice = stack.urls["proxy"], bearer(stack, Origin=stack.urls["console"])
    async with http.get(proxy + "/_dragoman/whoami", headers=alice) as r:
        assert r.status == 403
        body = await r.json()
    assert (body["code"], "customer" in body) == ("csrf_missing", False)
    t = (await handshake(http, proxy, alice)).token
    async with http.get(proxy + "/_dragoman/whoami", headers=with_pair(alice, t, t)) as r:
        assert r.status == 200
        assert (await r.json())["customer"] == "cus_alice"


async def test_a_server_read_without_browser_signals_needs_only_its_bearer(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    async with http.get(stack.urls["proxy"] + PM, headers=bearer(stack)) as r:
        assert r.status == 200
    async with http.get(stack.urls["proxy"] + "/_dragoman/whoami", headers=bearer(stack)) as r:
        assert r.status == 200


async def test_a_server_write_without_browser_signals_needs_only_its_bearer(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    async with http.post(stack.urls["proxy"] + PM, headers=bearer(stack), json=CARD) as r:
        assert r.status == 201


async def test_a_browser_write_with_a_text_plain_body_is_refused_with_415(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(browser_overrides("memory", None))
    headers = bearer(stack, Origin=stack.urls["console"], **{"Content-Type": "text/plain"})
    async with http.post(stack.urls["proxy"] + PM, headers=headers, data=b"{}") as r:
        assert r.status == 415
    assert stack.platform.seen == []

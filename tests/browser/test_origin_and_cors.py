"""Browser-facing protections: Origin and Sec-Fetch-Site checks, CORS, security headers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from session_support import handshake, with_pair

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}


def alice(stack: DemoStack, **headers: str) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}", **headers}


async def test_a_write_from_an_origin_not_on_the_list_is_refused_with_a_valid_token(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = alice(stack, Origin="https://evil.example")
    async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as response:
        assert response.status == 403
        body = await response.json()
    assert body["code"] == "origin_denied"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert stack.platform.seen == []


async def test_a_cross_site_write_is_refused_even_from_a_listed_origin(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = alice(stack, Origin=stack.urls["console"], **{"Sec-Fetch-Site": "cross-site"})
    async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as response:
        assert response.status == 403
        assert (await response.json())["code"] == "origin_denied"
    assert stack.platform.seen == []


async def test_a_write_from_the_listed_console_origin_is_allowed_with_cors_headers(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    console = stack.urls["console"]
    headers = alice(stack, Origin=console, **{"Sec-Fetch-Site": "same-site"})
    async with http.post(stack.urls["proxy"] + "/_dragoman/session", headers=headers) as r:
        token = (await r.json())["csrf_token"]
    headers |= {"Cookie": f"__Host-dragoman-csrf={token}", "X-CSRF-Token": token}
    async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as response:
        assert response.status == 201
        assert response.headers["Access-Control-Allow-Origin"] == console
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]


async def test_the_null_origin_is_refused(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    headers = alice(stack, Origin="null")
    async with http.post(stack.urls["proxy"] + PM, headers=headers, json=CARD) as response:
        assert response.status == 403


async def test_a_preflight_from_the_console_is_approved_without_credentials(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {
        "Origin": stack.urls["console"],
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(stack.urls["proxy"] + PM, headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == stack.urls["console"]
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert stack.platform.seen == []


@pytest.mark.parametrize(
    ("origin", "method", "asked"),
    [
        ("https://evil.example", "POST", "authorization"),
        (None, "TRACE", "authorization"),
        (None, "POST", "authorization, x-evil"),
    ],
)
async def test_a_preflight_outside_the_policy_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession, origin: str | None, method: str, asked: str
) -> None:
    headers = {
        "Origin": origin or stack.urls["console"],
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": asked,
    }
    async with http.options(stack.urls["proxy"] + PM, headers=headers) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_cors_never_answers_with_a_wildcard(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    proxy = stack.urls["proxy"]
    pair = await handshake(http, proxy, alice(stack, Origin=stack.urls["console"]))
    evil = with_pair(alice(stack, Origin="https://evil.example"), pair.token, pair.token)
    async with http.get(proxy + PM, headers=evil) as response:
        assert response.status == 200  # a read checks no Origin: CORS keeps its answer
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_every_answer_carries_the_security_headers(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    for headers in ({}, alice(stack)):
        async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            assert response.headers["Referrer-Policy"] == "no-referrer"
            assert response.headers["Cache-Control"] == "no-store"


async def test_every_kind_of_answer_carries_hsts(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    # The demo turns HSTS off (plain HTTP on loopback); a deployment has it by default.
    stack = await make_stack({"browser": {"hsts_max_age": 31_536_000}})
    proxy = stack.urls["proxy"]
    preflight = {
        "Origin": stack.urls["console"],
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    answers = [
        lambda: http.get(proxy + PM, headers=alice(stack)),  # forwarded
        lambda: http.get(proxy + PM),  # refused: problem+json
        lambda: http.post(proxy + "/_dragoman/session", headers=alice(stack)),
        lambda: http.get(proxy + "/_dragoman/whoami", headers=alice(stack)),
        lambda: http.options(proxy + PM, headers=preflight),
    ]
    for answer in answers:
        async with answer() as response:
            hsts = response.headers.get("Strict-Transport-Security")
            assert hsts == "max-age=31536000; includeSubDomains", response.url


async def test_the_console_can_preflight_and_call_whoami(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    console = stack.urls["console"]
    preflight = {
        "Origin": console,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    async with http.options(stack.urls["proxy"] + "/_dragoman/whoami", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == console
    headers = alice(stack, Origin=console)
    pair = await handshake(http, stack.urls["proxy"], headers)
    async with http.get(
        stack.urls["proxy"] + "/_dragoman/whoami",
        headers=with_pair(headers, pair.token, pair.token),
    ) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == console
        body = await response.json()
    assert body["customer"] == "cus_alice"
    assert "payment_methods.create" in body["operations"]

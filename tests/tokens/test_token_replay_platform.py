"""Replaying genuine dragoman tokens against the demo platform directly, over real HTTP.

The platform guards every operation with ``verify_aiohttp`` for exactly its own scope and the
customer in its path. A token minted for one request must not open another one: each refusal
is a problem+json answer with its code and a ``WWW-Authenticate`` challenge, and the handler
never runs (``stack.platform.seen`` records the refusal; nothing changes).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from dragoman.demo.runner import DemoStack

from .support import PM, Tokens, parts_of, segment

BOB_PM = "/v1/customers/cus_bob/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code
    assert body["status"] == status
    error = "insufficient_scope" if status == 403 else "invalid_token"
    assert response.headers["WWW-Authenticate"] == f'Bearer error="{error}"'
    return body


async def test_genuine_token_opens_its_own_request(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    minted = await tokens.mint()
    async with http.get(stack.urls["platform"] + PM, headers=bearer(minted.value)) as response:
        assert response.status == 200
        assert (await response.json())["data"][0]["last4"] == "4242"
    assert [(s.accepted, s.jti) for s in stack.platform.seen] == [(True, minted.jti)]


async def test_request_without_a_token_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["platform"] + PM) as response:
        await refused(response, 401, "token_missing")


async def test_token_replayed_for_another_customer_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    alice_token = (await tokens.mint()).value
    async with http.get(stack.urls["platform"] + BOB_PM, headers=bearer(alice_token)) as response:
        await refused(response, 403, "customer_mismatch")
    assert [(s.path, s.accepted, s.reason) for s in stack.platform.seen] == [
        (BOB_PM, False, "customer_mismatch")
    ]


async def test_token_replayed_for_another_operation_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    list_token = (await tokens.mint()).value
    async with http.post(
        stack.urls["platform"] + PM, headers=bearer(list_token), json=CARD
    ) as response:
        await refused(response, 403, "scope_mismatch")
    assert len(stack.platform.customers["cus_alice"].payment_methods) == 1


async def test_token_replayed_for_another_path_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    # A token to read one payment method, replayed to read another one.
    token = (
        await tokens.mint(scope="payment_methods:read", url=stack.urls["platform"] + PM + "/pm_one")
    ).value
    async with http.get(stack.urls["platform"] + PM + "/pm_two", headers=bearer(token)) as response:
        await refused(response, 401, "url_mismatch")


async def test_token_replayed_with_another_method_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    # The scope fits the platform's list route, but the token was bound to a POST.
    token = (await tokens.mint(method="POST")).value
    async with http.get(stack.urls["platform"] + PM, headers=bearer(token)) as response:
        await refused(response, 401, "method_mismatch")


async def test_expired_token_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    minter = tokens.minter(ttl=300, clock=lambda: time.time() - 400)
    token = (await minter.mint(tokens.request())).value
    async with http.get(stack.urls["platform"] + PM, headers=bearer(token)) as response:
        await refused(response, 401, "token_expired")


async def test_alg_none_token_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    header, claims = parts_of((await tokens.mint()).value)
    token = f"{segment({**header, 'alg': 'none'})}.{segment(claims)}."
    async with http.get(stack.urls["platform"] + PM, headers=bearer(token)) as response:
        await refused(response, 401, "alg_not_allowed")


async def test_token_with_a_jku_header_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    token = await tokens.forge(header={"jku": stack.urls["issuer"] + "/jwks.json"})
    async with http.get(stack.urls["platform"] + PM, headers=bearer(token)) as response:
        await refused(response, 401, "header_forbidden")


async def test_token_for_another_audience_is_refused(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    minter = tokens.minter(audience="another-upstream")
    token = (await minter.mint(tokens.request())).value
    async with http.get(stack.urls["platform"] + PM, headers=bearer(token)) as response:
        await refused(response, 401, "audience_mismatch")


async def test_caller_credential_is_not_a_platform_token(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    # The identity issuer's own access token (typ at+jwt, RS256) opens nothing upstream.
    caller = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with http.get(stack.urls["platform"] + PM, headers=bearer(caller)) as response:
        await refused(response, 401, "alg_not_allowed")


async def test_refusal_body_never_echoes_the_token(
    stack: DemoStack, tokens: Tokens, http: aiohttp.ClientSession
) -> None:
    token = (await tokens.mint()).value
    async with http.get(stack.urls["platform"] + BOB_PM, headers=bearer(token)) as response:
        text = await response.text()
        assert response.status == 403
    for part in token.split("."):
        assert part not in text

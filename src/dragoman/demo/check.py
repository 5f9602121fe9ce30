"""The scripted walk-through of `dragoman demo --check`.

Allowed calls must succeed; a forged token, an expired token, a token for another
customer, a route outside the catalog and an unmapped account must each be refused with
their code, and nothing refused by dragoman may reach the payment platform.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from dragoman.browser.csrf import COOKIE_NAME
from dragoman.demo.runner import DemoStack
from dragoman.tokens.mint import TokenRequest

CARD = "4111 1111 1111 1111"


@dataclass
class Answer:
    status: int
    body: Any


class Walk:
    def __init__(self, stack: DemoStack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.failures = 0

    async def call(
        self,
        base: str,
        method: str,
        path: str,
        token: str | None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, base + path, headers=headers, json=body) as response:
            text = await response.text()
            return Answer(response.status, json.loads(text) if text else None)

    async def step(
        self,
        title: str,
        expect_status: int,
        expect_code: str | None,
        run: Callable[[], Awaitable[Answer]],
    ) -> Answer:
        answer = await run()
        code = answer.body.get("code") if isinstance(answer.body, dict) else None
        ok = answer.status == expect_status and (expect_code is None or code == expect_code)
        if not ok:
            self.failures += 1
        mark = "ok  " if ok else "FAIL"
        shown = f"{answer.status}" + (f" {code}" if code else "")
        wanted = f"{expect_status}" + (f" {expect_code}" if expect_code else "")
        print(f"  [{mark}] {title:<64} {shown}" + ("" if ok else f" (expected {wanted})"))
        return answer


async def walk_through(stack: DemoStack) -> int:
    await stack.start()
    try:
        async with aiohttp.ClientSession() as http:
            walk = Walk(stack, http)
            await _steps(walk)
            return _summary(walk)
    finally:
        await stack.stop()


async def _steps(walk: Walk) -> None:
    stack, proxy, platform = walk.stack, walk.stack.urls["proxy"], walk.stack.urls["platform"]
    issuer = stack.issuer
    alice = issuer.token("alice", "acct-1001", roles=["billing_admin"])
    bob = issuer.token("bob", "acct-2002", roles=["viewer"])
    mallory = issuer.token("mallory", "acct-9999", roles=["billing_admin"])
    pm = "/v1/customers/cus_alice/payment-methods"
    seen_before = len(stack.platform.seen)

    print("allowed calls, through dragoman:")
    await walk.step(
        "alice lists her payment methods", 200, None, lambda: walk.call(proxy, "GET", pm, alice)
    )
    added = await walk.step(
        "alice adds a card",
        201,
        None,
        lambda: walk.call(
            proxy, "POST", pm, alice, {"card_number": CARD, "exp_month": 1, "exp_year": 2031}
        ),
    )
    new_id = added.body.get("id") if isinstance(added.body, dict) else "missing"
    await walk.step(
        "alice makes it her default",
        200,
        None,
        lambda: walk.call(
            proxy,
            "PUT",
            "/v1/customers/cus_alice/default-payment-method",
            alice,
            {"payment_method_id": new_id},
        ),
    )
    await walk.step(
        "alice deletes it", 204, None, lambda: walk.call(proxy, "DELETE", f"{pm}/{new_id}", alice)
    )
    await walk.step(
        "alice reads her billing address",
        200,
        None,
        lambda: walk.call(proxy, "GET", "/v1/customers/cus_alice/billing-address", alice),
    )
    await walk.step(
        "alice updates her billing address",
        200,
        None,
        lambda: walk.call(
            proxy,
            "PUT",
            "/v1/customers/cus_alice/billing-address",
            alice,
            {"line1": "2 Harbour Road", "city": "Springfield", "country": "US"},
        ),
    )
    await walk.step(
        "bob (viewer) lists his payment methods",
        200,
        None,
        lambda: walk.call(proxy, "GET", "/v1/customers/cus_bob/payment-methods", bob),
    )

    print("refused by dragoman:")
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        issuer.claims("alice", "acct-1001", roles=["billing_admin"]),
        attacker,
        algorithm="RS256",
        headers={"kid": issuer.rsa_kid, "typ": "at+jwt"},
    )
    await walk.step(
        "a forged token (right kid, attacker's key)",
        401,
        "unauthenticated",
        lambda: walk.call(proxy, "GET", pm, forged),
    )
    expired = issuer.token("alice", "acct-1001", roles=["billing_admin"], ttl=-120)
    await walk.step(
        "an expired token", 401, "unauthenticated", lambda: walk.call(proxy, "GET", pm, expired)
    )
    await walk.step(
        "no token at all", 401, "unauthenticated", lambda: walk.call(proxy, "GET", pm, None)
    )
    await walk.step(
        "alice asks for bob's payment methods",
        403,
        "customer_mismatch",
        lambda: walk.call(proxy, "GET", "/v1/customers/cus_bob/payment-methods", alice),
    )
    await walk.step(
        "a route outside the catalog",
        404,
        "operation_unknown",
        lambda: walk.call(proxy, "GET", "/v1/customers/cus_alice/charges", alice),
    )
    await walk.step(
        "an unmapped account (mallory)",
        403,
        "mapping_missing",
        lambda: walk.call(proxy, "GET", pm, mallory),
    )
    await walk.step(
        "bob (viewer) tries to add a card",
        403,
        "scope_denied",
        lambda: walk.call(
            proxy,
            "POST",
            "/v1/customers/cus_bob/payment-methods",
            bob,
            {"card_number": CARD, "exp_month": 1, "exp_year": 2031},
        ),
    )
    refused_reached = len(stack.platform.seen) - seen_before - 7
    print(
        f"  [{'ok  ' if refused_reached == 0 else 'FAIL'}] refused requests that reached the"
        f" platform: {refused_reached}"
    )
    walk.failures += refused_reached != 0

    csrf_tokens = await _browser_steps(walk, alice)

    print("refused by the payment platform (dragoman's own tokens, replayed elsewhere):")
    assert stack.proxy is not None
    minted = await stack.proxy.minter.mint(
        TokenRequest(
            customer="cus_alice",
            scope="payment_methods:list",
            principal="alice",
            principal_issuer=issuer.issuer,
            cloud_account="acct-1001",
            method="GET",
            url=platform + pm,
        )
    )
    await walk.step(
        "the token, as minted, on its own request",
        200,
        None,
        lambda: walk.call(platform, "GET", pm, minted.value),
    )
    await walk.step(
        "the token on another customer",
        403,
        "customer_mismatch",
        lambda: walk.call(platform, "GET", "/v1/customers/cus_bob/payment-methods", minted.value),
    )
    await walk.step(
        "the token on another operation (add a card)",
        403,
        "scope_mismatch",
        lambda: walk.call(
            platform,
            "POST",
            pm,
            minted.value,
            {"card_number": CARD, "exp_month": 1, "exp_year": 2031},
        ),
    )
    await walk.step(
        "the console's own token, straight to the platform",
        401,
        "alg_not_allowed",
        lambda: walk.call(platform, "GET", pm, alice),
    )

    audit = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    secrets = (alice, forged, minted.value, CARD, CARD.replace(" ", ""), *csrf_tokens)
    leaked = [s for s in secrets if s in audit]
    records = audit.count("\n")
    print(
        f"  [{'ok  ' if not leaked else 'FAIL'}] audit trail: {records} records,"
        f" {len(leaked)} token (bearer, scoped or CSRF) or card number found in it"
    )
    walk.failures += bool(leaked)


async def _browser_steps(walk: Walk, alice: str) -> list[str]:
    """What the widget does in a browser (SEMANTICS §5), spelled out in headers; the CSRF
    tokens it was given (the audit trail must not hold them)."""
    stack, proxy = walk.stack, walk.stack.urls["proxy"]
    pm = "/v1/customers/cus_alice/payment-methods"
    card = {"card_number": CARD, "exp_month": 1, "exp_year": 2031}
    widget = {"Origin": proxy, "Sec-Fetch-Site": "same-origin"}

    def pair(cookie: str, header: str) -> dict[str, str]:
        return {**widget, "Cookie": f"{COOKIE_NAME}={cookie}", "X-CSRF-Token": header}

    print("a browser session, as the widget holds it:")
    opened = await walk.step(
        "the widget's session handshake",
        201,
        None,
        lambda: walk.call(proxy, "POST", "/_dragoman/session", alice, headers=widget),
    )
    token = opened.body.get("csrf_token", "") if isinstance(opened.body, dict) else ""
    other = await walk.call(proxy, "POST", "/_dragoman/session", alice, headers=widget)
    other_token = other.body.get("csrf_token", "") if isinstance(other.body, dict) else ""
    seen_before = len(stack.platform.seen)
    await walk.step(
        "a browser write without the CSRF pair",
        403,
        "csrf_missing",
        lambda: walk.call(proxy, "POST", pm, alice, card, headers=widget),
    )
    await walk.step(
        "a browser write with another session's token",
        403,
        "csrf_invalid",
        lambda: walk.call(proxy, "POST", pm, alice, card, headers=pair(token, other_token)),
    )
    await walk.step(
        "a browser write with the session's pair",
        201,
        None,
        lambda: walk.call(proxy, "POST", pm, alice, card, headers=pair(token, token)),
    )
    await walk.step(
        "a browser read without the CSRF pair",
        403,
        "csrf_missing",
        lambda: walk.call(proxy, "GET", pm, alice, headers=widget),
    )
    await walk.step(
        "a browser read with the session's pair",
        200,
        None,
        lambda: walk.call(proxy, "GET", pm, alice, headers=pair(token, token)),
    )
    await walk.step(
        "logout",
        204,
        None,
        lambda: walk.call(proxy, "DELETE", "/_dragoman/session", alice, headers=pair(token, token)),
    )
    await walk.step(
        "the logged-out pair",
        403,
        "csrf_invalid",
        lambda: walk.call(proxy, "POST", pm, alice, card, headers=pair(token, token)),
    )
    refused_reached = len(stack.platform.seen) - seen_before - 2  # the write and the read
    print(
        f"  [{'ok  ' if refused_reached == 0 else 'FAIL'}] refused browser requests that"
        f" reached the platform: {refused_reached}"
    )
    walk.failures += refused_reached != 0
    return [t for t in (token, other_token) if t]


def _summary(walk: Walk) -> int:
    if walk.failures:
        print(f"demo check: {walk.failures} step(s) misbehaved")
        return 1
    print("demo check: every step behaved")
    return 0

"""Writes carrying an Idempotency-Key reach the upstream with it, and the sample platform runs
each such write once however often a client retries it through dragoman (every retry with a
fresh scoped token)."""

from __future__ import annotations

from typing import Any

import aiohttp

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031}


def alice(stack: DemoStack) -> str:
    return stack.issuer.sign(stack.issuer.claims("alice", "acct-1001", roles=["billing_admin"]))


async def create(
    stack: DemoStack, http: aiohttp.ClientSession, key: str | None, card: dict[str, Any] = CARD
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {alice(stack)}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with http.post(stack.urls["proxy"] + PM, headers=headers, json=card) as response:
        return response.status, await response.json(), dict(response.headers)


def methods(stack: DemoStack) -> list[dict[str, Any]]:
    return stack.platform.customers["cus_alice"].payment_methods


async def test_retried_write_with_one_key_runs_once(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = len(methods(stack))
    first = await create(stack, http, "retry-1")
    again = await create(stack, http, "retry-1")
    assert (first[0], again[0]) == (201, 201)
    assert again[1]["id"] == first[1]["id"]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert len(methods(stack)) == before + 1
    assert stack.platform.idempotency.duplicated == 0


async def test_writes_without_a_key_each_run(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    before = len(methods(stack))
    await create(stack, http, None)
    await create(stack, http, None)
    assert len(methods(stack)) == before + 2


async def test_one_key_on_another_request_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await create(stack, http, "reused-1")
    status, body, _ = await create(stack, http, "reused-1", {**CARD, "exp_month": 11})
    assert (status, body["code"]) == (422, "idempotency_key_reused")


async def test_keys_are_scoped_to_the_customer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await create(stack, http, "shared-key")
    bob = stack.issuer.token("bob", "acct-2002", roles=["billing_admin"])
    async with http.post(
        stack.urls["proxy"] + "/v1/customers/cus_bob/payment-methods",
        headers={"Authorization": f"Bearer {bob}", "Idempotency-Key": "shared-key"},
        json=CARD,
    ) as response:
        assert response.status == 201
        assert "Idempotent-Replayed" not in response.headers

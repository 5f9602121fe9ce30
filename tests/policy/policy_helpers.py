"""Helpers of the policy tests: a demo catalog with one money-tier operation, mappings
rewritten with chosen grants, and requests through the running proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from dragoman.demo.platform import catalog_settings
from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import Grant

MakeStack = Callable[..., Awaitable[DemoStack]]

PM = "/v1/customers/cus_alice/payment-methods"
ADDRESS = "/v1/customers/cus_alice/billing-address"
CARD = {"card_number": "4111111111111111", "exp_month": 1, "exp_year": 2031}
NEW_ADDRESS = {"line1": "1 Main St", "city": "Springfield", "country": "US"}
MONEY_OPERATION = "billing_address.update"
"""The demo operation the tests declare money-tier (through settings, not the demo)."""


def money_catalog() -> dict[str, Any]:
    """Catalog settings: the demo's operations, billing_address.update in tier money."""
    operations = catalog_settings()
    for operation in operations:
        if operation["id"] == MONEY_OPERATION:
            operation["tier"] = "money"
    return {"catalog": {"operations": operations}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def grant_alice_mapping(stack: DemoStack, *grants: Grant) -> None:
    assert stack.proxy is not None
    store = stack.proxy.store
    mapping = await store.find_by_account("acct-1001")
    assert mapping is not None
    await store.update(mapping.id, expected_version=mapping.version, actor="test", grants=grants)


async def call(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    headers: dict[str, str],
    method: str = "GET",
    path: str = PM,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers of one request through the proxy."""
    url = stack.urls["proxy"] + path
    async with http.request(method, url, headers=headers, json=body) as response:
        body = await response.json() if response.status != 204 else {}
        return response.status, body, dict(response.headers)

"""Helpers of the registration and mapping-audit tests: callers, the endpoint, the records."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from dragoman.demo.runner import DemoStack
from dragoman.mapping.entity import AccountMapping
from dragoman.mapping.store import MappingStore

REGISTRATION = "/_dragoman/registration"
PM = "/v1/customers/{customer}/payment-methods"


def caller(
    stack: DemoStack,
    subject: str = "carol",
    account: str | None = "acct-3003",
    roles: list[str] | None = None,
    **headers: str,
) -> dict[str, str]:
    """Headers of a request by ``subject`` in ``account`` (role owner unless told)."""
    token = stack.issuer.token(subject, account, roles=["owner"] if roles is None else roles)
    return {"Authorization": f"Bearer {token}", **headers}


def live_store(stack: DemoStack) -> MappingStore:
    assert stack.proxy is not None
    return stack.proxy.store


async def call(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    headers: dict[str, str],
    method: str = "POST",
    body: Any = None,
    **kwargs: Any,
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """One request to the registration endpoint: status, JSON body, response."""
    if body is not None:
        kwargs["json"] = body
    url = stack.urls["proxy"] + REGISTRATION
    async with http.request(method, url, headers=headers, **kwargs) as response:
        answer = await response.json(content_type=None)
        if response.status >= 400:
            assert response.content_type == "application/problem+json"
        return response.status, answer, response


async def register(
    http: aiohttp.ClientSession, stack: DemoStack, headers: dict[str, str], customer: str
) -> tuple[int, dict[str, Any]]:
    status, answer, _ = await call(http, stack, headers, body={"customer": customer})
    return status, answer


async def unlink(
    http: aiohttp.ClientSession, stack: DemoStack, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    status, answer, _ = await call(http, stack, headers, method="DELETE")
    return status, answer


async def self_link(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    headers: dict[str, str],
    customer: str = "cus_carol",
    account: str = "acct-3003",
) -> dict[str, Any]:
    """Link ``account`` to ``customer`` by self-service (the platform's record names the
    account), as the caller of ``headers``: a link that self-service may unlink (the
    demo's seeded links are the operator's). The new link's JSON."""
    stack.platform.add_customer(customer, account)
    status, answer = await register(http, stack, headers, customer)
    assert status == 201, answer
    return answer


async def mapping_of(stack: DemoStack, account: str) -> AccountMapping | None:
    return await live_store(stack).find_by_account(account)


async def linked(stack: DemoStack, account: str) -> AccountMapping:
    """The account's mapping, which must exist."""
    found = await mapping_of(stack, account)
    assert found is not None, f"{account} has no mapping"
    return found


async def mappings(stack: DemoStack) -> list[AccountMapping]:
    return await live_store(stack).list()


def audit_text(stack: DemoStack) -> str:
    path = stack.state_dir / "audit.jsonl"
    return path.read_text("utf-8") if path.exists() else ""


def records(stack: DemoStack, event: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in audit_text(stack).splitlines()]
    return [r for r in found if event is None or r["event"] == event]

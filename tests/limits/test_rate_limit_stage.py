"""The rate-limit stage through real HTTP (demo issuer, platform and dragoman on loopback):
limits key on the verified account, customer and risk tier; a refusal is 429 problem+json
with Retry-After and the RateLimit headers, audited, and never forwarded."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from limits_support import ADDRESS, CUSTOMERS, NEW_ADDRESS, PM, FrozenClock, auth, limits

from dragoman.demo.platform import catalog_settings
from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
WRITES = {"name": "writes", "per": "account", "tiers": ["change"], "rate": "60/min", "burst": 3}
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def put_address(
    http: aiohttp.ClientSession, stack: DemoStack, account: str, **headers: str
) -> Answer:
    path = ADDRESS.format(customer=CUSTOMERS[account])
    async with http.put(
        stack.urls["proxy"] + path, headers={**auth(stack, account), **headers}, json=NEW_ADDRESS
    ) as response:
        body = await response.read()
        return Answer(response.status, response.content_type, dict(response.headers), body)


async def get_address(http: aiohttp.ClientSession, stack: DemoStack) -> Answer:
    path = ADDRESS.format(customer="cus_alice")
    async with http.get(stack.urls["proxy"] + path, headers=auth(stack, "acct-1001")) as response:
        body = await response.read()
        return Answer(response.status, response.content_type, dict(response.headers), body)


def forwarded(stack: DemoStack, method: str) -> int:
    return sum(1 for seen in stack.platform.seen if seen.method == method and seen.accepted)


async def test_the_write_after_the_burst_is_429_with_retry_after_and_ratelimit_headers(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES), clock=clock)
    statuses = [(await put_address(http, stack, "acct-1001")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = await put_address(http, stack, "acct-1001")
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    body = refused.json()
    assert (body["code"], body["reason"], body["status"]) == ("rate_limited", "writes", 429)
    assert refused.headers["Retry-After"] == "1"  # 60/min: the next one conforms in 1 s
    assert refused.headers["RateLimit-Policy"] == '"writes";q=60;w=60'
    assert refused.headers["RateLimit"] == '"writes";r=0;t=1'


async def test_a_refused_write_is_never_forwarded(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES), clock=clock)
    statuses = [(await put_address(http, stack, "acct-1001")).status for _ in range(6)]
    assert statuses == [200] * 3 + [429] * 3
    assert forwarded(stack, "PUT") == 3
    assert len(stack.platform.seen) == 3


async def test_another_account_is_unaffected(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES), clock=clock)
    for _ in range(4):
        await put_address(http, stack, "acct-1001")
    assert (await put_address(http, stack, "acct-1001")).status == 429
    assert [(await put_address(http, stack, "acct-2002")).status for _ in range(3)] == [200] * 3


async def test_time_gives_a_refused_account_its_next_request(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES), clock=clock)
    for _ in range(3):
        await put_address(http, stack, "acct-1001")
    assert (await put_address(http, stack, "acct-1001")).status == 429
    clock.advance(1.0)
    assert (await put_address(http, stack, "acct-1001")).status == 200
    assert (await put_address(http, stack, "acct-1001")).status == 429


async def test_a_read_rule_does_not_throttle_writes(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    reads = {"name": "reads", "per": "account", "tiers": ["read"], "rate": "60/min", "burst": 1}
    stack = await make_stack(limits(reads), clock=clock)
    assert (await get_address(http, stack)).status == 200
    assert (await get_address(http, stack)).status == 429
    statuses = [(await put_address(http, stack, "acct-1001")).status for _ in range(5)]
    assert statuses == [200] * 5


async def test_client_chosen_headers_do_not_open_a_new_allowance(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES), clock=clock)
    statuses = []
    for n in range(5):
        spoofed = {"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"198.51.100.{n}"}
        statuses.append((await put_address(http, stack, "acct-1001", **spoofed)).status)
    assert statuses == [200] * 3 + [429] * 2


async def test_a_customer_rule_counts_money_operations_of_every_principal_of_the_customer(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    operations: list[dict[str, Any]] = catalog_settings()
    for operation in operations:
        if operation["id"] == "payment_methods.create":
            operation["tier"] = "money"
    money = {"name": "money", "per": "customer", "tiers": ["money"], "rate": "10/min", "burst": 1}
    every_tier = ["tier:read", "tier:change", "tier:destroy", "tier:money"]
    overrides = {
        **limits(money),
        "catalog": {"operations": operations},
        "policy": {"roles": {"owner": ["*"], "billing_admin": every_tier, "viewer": ["tier:read"]}},
    }
    stack = await make_stack(overrides, clock=clock)
    url = stack.urls["proxy"] + PM.format(customer="cus_alice")
    statuses = []
    for user in ("alice", "dave"):  # two principals of acct-1001, one customer
        headers = auth(stack, "acct-1001", user)
        async with http.post(url, headers=headers, json=CARD) as response:
            statuses.append(response.status)
            reason = (await response.json()).get("reason")
    assert statuses == [201, 429]
    assert reason == "money"
    assert (await put_address(http, stack, "acct-1001")).status == 200  # change tier: free


async def test_the_refusal_is_audited_with_the_rule_as_its_reason(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES), clock=clock)
    for _ in range(4):
        refused = await put_address(http, stack, "acct-1001")
    audit_id = refused.json()["audit_id"]
    records = [
        json.loads(line) for line in (stack.state_dir / "audit.jsonl").read_text().splitlines()
    ]
    record = next(r for r in records if r.get("audit_id") == audit_id)
    assert (record["decision"], record["code"], record["reason"]) == (
        "deny",
        "rate_limited",
        "writes",
    )
    assert record["status"] == 429


async def test_disabled_limits_refuse_nothing(
    make_stack: MakeStack, http: aiohttp.ClientSession, clock: FrozenClock
) -> None:
    stack = await make_stack(limits(WRITES, enabled=False), clock=clock)
    statuses = [(await put_address(http, stack, "acct-1001")).status for _ in range(6)]
    assert statuses == [200] * 6

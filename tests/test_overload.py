"""server.max_in_flight: past it a worker refuses at once, before any check, with 503
overloaded and Retry-After; what it refuses is audited; it admits again as soon as a
request in flight finishes; health checks and the JWKS are never refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from dragoman.demo.runner import DemoStack
from overload_support import HeldUpstream

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def at_limit(
    make_stack: MakeStack,
    held: HeldUpstream,
    http: aiohttp.ClientSession,
    limit: int,
    overrides: dict[str, Any] | None = None,
) -> tuple[DemoStack, list[asyncio.Task[int]]]:
    """A stack whose worker holds ``limit`` requests at the upstream."""
    stack = await make_stack(
        {"server": {"max_in_flight": limit}, "upstream": {"url": held.url}, **(overrides or {})}
    )

    async def one() -> int:
        async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as answer:
            return answer.status

    in_flight = [asyncio.create_task(one()) for _ in range(limit)]
    await held.wait_for(limit)
    return stack, in_flight


async def test_a_request_past_the_bound_is_refused_with_retry_after(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack, in_flight = await at_limit(make_stack, held, http, 2)
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as answer:
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        body = await answer.json()
    assert body["code"] == "overloaded"
    assert held.arrived == 2  # the refused request never left
    held.release.set()
    assert await asyncio.gather(*in_flight) == [200, 200]


async def test_the_refusal_is_audited(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack, in_flight = await at_limit(make_stack, held, http, 1)
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as answer:
        body = await answer.json()
    lines = (stack.state_dir / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    refused = next(r for r in records if r["audit_id"] == body["audit_id"])
    assert (refused["decision"], refused["code"], refused["status"]) == ("deny", "overloaded", 503)
    held.release.set()
    await asyncio.gather(*in_flight)


async def test_it_refuses_before_any_check(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    """No token is verified, no mapping read: a burst past capacity costs next to nothing."""
    stack, in_flight = await at_limit(make_stack, held, http, 1)
    async with http.get(stack.urls["proxy"] + PM) as answer:  # no credential at all
        assert (answer.status, (await answer.json())["code"]) == (503, "overloaded")
    held.release.set()
    await asyncio.gather(*in_flight)


async def test_it_admits_again_once_a_request_in_flight_finishes(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack, in_flight = await at_limit(make_stack, held, http, 1)
    held.release.set()
    assert await asyncio.gather(*in_flight) == [200]
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as answer:
        assert answer.status == 200


async def test_health_checks_and_the_jwks_answer_while_at_the_bound(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack, in_flight = await at_limit(make_stack, held, http, 1)
    for path in ("/livez", "/readyz", "/.well-known/jwks.json"):
        async with http.get(stack.urls["proxy"] + path) as answer:
            assert answer.status == 200, path
    held.release.set()
    await asyncio.gather(*in_flight)


async def test_zero_means_no_bound(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack, in_flight = await at_limit(make_stack, held, http, 0)
    more = [
        asyncio.create_task(http.get(stack.urls["proxy"] + PM, headers=alice(stack)))
        for _ in range(20)
    ]
    await held.wait_for(20)  # every one of them reached the upstream
    held.release.set()
    for answer in await asyncio.gather(*more):
        assert answer.status == 200
        answer.release()
    assert in_flight == []


async def test_decisions_count_against_the_same_bound(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack, in_flight = await at_limit(make_stack, held, http, 1, {"decision": {"enabled": True}})
    url = stack.decision_url + "/ext_authz" + PM
    async with http.get(url, headers=alice(stack)) as answer:
        assert (answer.status, (await answer.json())["code"]) == (503, "overloaded")
    held.release.set()
    await asyncio.gather(*in_flight)
    async with http.get(url, headers=alice(stack)) as answer:
        assert answer.status == 200

"""The limiter's keys in Redis never reveal an account or a customer: subjects go through
the mapping store's keyed blind index before they are hashed into a key (account ids have
too little entropy for a plain hash: 10^12 AWS account numbers are quickly tried)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import aiohttp
import redis.asyncio as redis
from limits_support import ADDRESS, NEW_ADDRESS, auth, limits, unique

from dragoman.demo.runner import DemoStack


async def test_redis_keys_name_subjects_by_a_keyed_index_only(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    account_rule, customer_rule = unique("acct"), unique("cust")
    rules = [
        {"name": account_rule, "per": "account", "rate": "100/min", "burst": 100},
        {"name": customer_rule, "per": "customer", "rate": "100/min", "burst": 100},
    ]
    stack = await make_stack(limits(*rules, backend="redis", redis_url=redis_url))
    url = stack.urls["proxy"] + ADDRESS.format(customer="cus_alice")
    async with http.put(url, headers=auth(stack, "acct-1001"), json=NEW_ADDRESS) as response:
        assert response.status == 200
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = [k async for k in client.scan_iter("dragoman:rl:*") if account_rule in k]
        keys += [k async for k in client.scan_iter("dragoman:rl:*") if customer_rule in k]
    finally:
        await client.aclose()
    assert len(keys) == 2
    guesses = [
        f"{kind}:{value}" for kind, value in (("account", "acct-1001"), ("customer", "cus_alice"))
    ]
    plain = {hashlib.sha256(g.encode()).hexdigest() for g in guesses}
    plain |= {hashlib.sha256(v.encode()).hexdigest() for v in ("acct-1001", "cus_alice")}
    for key in keys:
        assert "acct-1001" not in key and "cus_alice" not in key
        assert key.rsplit(":", 1)[1] not in plain

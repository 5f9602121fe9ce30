"""Anomaly alerts go to the configured sinks (the log, a webhook, the Prometheus counter)
and name the rule, the account by a hash, the counts and the window: never a token, a card
number, the account or the customer id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from anomaly_support import (
    CARD,
    FORWARDED,
    Backend,
    Caller,
    MakeStack,
    MovableClock,
    anomaly_alerts,
    anomaly_overrides,
    capture_alerts,
)

from dragoman.anomaly import account_ref

RULES = {
    "burst": {"kind": "threshold", "threshold": 1, "window": "1m"},
    "pairs": {"kind": "card_testing", "pairs": 1, "pair_within": "30s", "window": "1m"},
}


async def test_alerts_reach_a_webhook_sink_without_token_card_or_ids(
    make_stack: MakeStack,
    serve: Callable[[web.Application], Any],
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    bodies: list[bytes] = []
    got_two = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        if len(bodies) == 2:
            got_two.set()
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/alerts", receive)
    async with serve(receiver) as base:
        sinks = {"alerts": {"sinks": [{"url": base + "/alerts", "retries": 0}]}}
        overrides = anomaly_overrides(Backend("memory", None), RULES, **sinks)
        stack = await make_stack(overrides, clock=clock)
        alice = Caller(stack, clock, http)
        assert await alice.add_card() == FORWARDED
        token = alice.last_token
        assert await alice.delete_card() == FORWARDED  # burst (2 > 1) and one pair
        await got_two.wait()

    delivered = [json.loads(body) for body in bodies]
    assert sorted(a["fields"]["rule"] for a in delivered) == ["burst", "pairs"]
    # Named by the mapping store's keyed blind index: the account_index of its mapping
    # audit records, and no plain hash anyone could reverse by trying every account id.
    assert stack.proxy is not None
    index = stack.proxy.store.codec.account_index("acct-1001")
    assert {a["fields"]["account_ref"] for a in delivered} == {index}
    assert index != account_ref("acct-1001")
    everything = b"".join(bodies).decode() + "".join(anomaly_alerts(caplog))
    for secret in (token, alice.last_token, CARD["card_number"], "acct-1001", "cus_alice"):
        assert secret not in everything

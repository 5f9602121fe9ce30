"""Reconciliation against a platform that misbehaves, over real HTTP: a lookup failing in an
unforeseen way is that mapping's error (the run goes on), a broken upstream (a gateway's
404 for every path, a maintenance page) drifts no mapping, and an alert the webhook has not
delivered is not marked sent: the next run sends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import dragoman.mapping.reconcile_session as reconcile_session
from dragoman.alerts import FanOut, LogSink, WebhookSink
from dragoman.alerts.base import AlertSink
from dragoman.demo.runner import DemoStack
from dragoman.mapping.platform import CustomerRecord
from dragoman.mapping.reconcile import Reconciler
from reconcile_support import RecordingSink, customer_of, rows_by_id, seed, start_bent_platform

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Broken:
    """Middleware of the platform app: while ``answer`` is set, every request gets it."""

    def __init__(self) -> None:
        self.answer: Callable[[], web.StreamResponse] | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request) if self.answer is None else self.answer()


@pytest.fixture
async def broken(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[DemoStack, Broken]]:
    middleware = Broken()
    stack = await start_bent_platform(
        tmp_path / "stack", middleware.middleware, {"store": {"database_url": database_url}}
    )
    yield stack, middleware
    await stack.stop()


def reconciler(stack: DemoStack, alerts: AlertSink, platform: Any = None) -> Reconciler:
    assert stack.proxy is not None and stack.settings is not None
    return Reconciler(
        stack.proxy.store,
        platform or stack.proxy.platform,
        stack.settings.reconcile.model_copy(update={"batch_size": 5, "concurrency": 2}),
        alerts=alerts,
    )


async def test_a_lookup_failing_unexpectedly_is_that_mappings_error_and_the_run_goes_on(
    broken: tuple[DemoStack, Broken],
) -> None:
    stack, _ = broken
    assert stack.proxy is not None
    planted = await seed(stack.proxy.store, stack.platform, 20)
    real = stack.proxy.platform
    poisoned = customer_of(7)

    class Poisoned:
        async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord:
            if customer == poisoned:
                raise RecursionError("maximum recursion depth exceeded")
            assert real is not None
            record: CustomerRecord = await real.customer(customer, cloud_account=cloud_account)
            return record

    report = await reconciler(stack, RecordingSink(), Poisoned()).run()
    assert report is not None and report.status == "incomplete"
    assert report.counts["checked"] == 19 and report.remaining == 1 and report.errors == 1
    assert "RecursionError" in report.error_samples[0]["reason"]
    rows = await rows_by_id(stack.proxy.store)
    unchecked = [i for i, row in rows.items() if row.last_reconcile_run is None]
    assert len(unchecked) == 1 and unchecked[0] in planted.ids


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda: web.json_response({"message": "no route"}, status=404), id="404"),
        pytest.param(lambda: web.json_response({"status": "maintenance"}), id="maintenance"),
    ],
)
async def test_a_broken_upstream_drifts_no_mapping(
    broken: tuple[DemoStack, Broken], answer: Callable[[], web.StreamResponse]
) -> None:
    stack, middleware = broken
    assert stack.proxy is not None
    await seed(stack.proxy.store, stack.platform, 10)
    middleware.answer = answer
    sink = RecordingSink()
    report = await reconciler(stack, sink).run()
    assert report is not None and report.status == "incomplete"
    assert report.counts["drifted"] == 0 and report.errors == 10 and not sink.alerts
    rows = await rows_by_id(stack.proxy.store)
    assert all(row.status == "active" and row.version == 1 for row in rows.values())


async def test_an_alert_the_webhook_has_not_delivered_stays_unsent_and_the_next_run_sends_it(
    broken: tuple[DemoStack, Broken],
    serve: Callable[[web.Application], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack, _ = broken
    assert stack.proxy is not None
    planted = await seed(stack.proxy.store, stack.platform, 12, every=4)
    healthy = asyncio.Event()
    delivered: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.json()
        if not healthy.is_set():
            return web.Response(status=503)
        delivered.append(body["fields"]["mapping_id"])
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    monkeypatch.setattr(reconcile_session, "ALERT_WAIT", 0.3)
    async with serve(app) as base:

        def sinks() -> FanOut:
            hook = WebhookSink(base + "/alerts", retries=5, backoff=30, drain_timeout=0.2)
            return FanOut([LogSink(), hook])

        first_sinks = sinks()
        await first_sinks.start()
        first = reconciler(stack, first_sinks)
        report = await first.run()
        await first_sinks.close()  # the receiver is still down: dropped at close
        assert report is not None and report.completed and report.counts["alerts"] == 3
        unsent = await first.runs.unsent(report.run_id)
        assert {f.mapping_id for f in unsent} == set(planted.drift)

        healthy.set()
        second_sinks = sinks()
        await second_sinks.start()
        second = reconciler(stack, second_sinks)
        again = await second.run()
        await second_sinks.close()
        assert again is not None and again.completed
        assert sorted(delivered) == sorted(planted.drift)
        assert await second.runs.unsent(again.run_id) == []

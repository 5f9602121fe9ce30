"""Alert sinks: the log sink, the webhook sink against a real local aiohttp server (retries
with backoff, Retry-After, final 4xx, connection refused, a bounded queue that never blocks
the caller and counts drops, draining at close), the fan-out and the counting hook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dragoman.alerts import Alert, FanOut, LogSink, WebhookSink, open_alert_sinks
from dragoman.alerts.base import Outcome
from dragoman.settings import AlertSettings, SettingsError, load_settings


def alert(n: int = 0, message: str = "") -> Alert:
    return Alert(
        kind="mapping_drift",
        id=f"reconcile:run:{n}",
        fields={"drift": "customer_deleted", "mapping_id": f"m-{n}", "run_id": "run"},
        message=message,
    )


@dataclass
class Receiver:
    """A webhook receiver: answers each attempt with the next status of ``script`` (then
    200), optionally holding answers while ``hold`` is clear."""

    script: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    attempts: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts.append((time.monotonic(), dict(request.headers), await request.read()))
        self.got.set()
        if self.hold is not None:
            await self.hold.wait()
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status, headers=self.headers if status != 200 else None)

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.attempts]


@pytest.fixture
async def receiver(serve: Callable[[web.Application], Any]) -> AsyncIterator[tuple[Receiver, str]]:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/alerts", target.handle)
    async with serve(app) as base:
        yield target, base + "/alerts"


async def settle(sink: WebhookSink, expected: int, timeout: float = 10.0) -> None:
    """Wait until ``expected`` alerts were delivered or given up on."""
    deadline = time.monotonic() + timeout
    while sink.stats.delivered + sink.stats.failed < expected:
        assert time.monotonic() < deadline, sink.stats
        await asyncio.sleep(0.01)


async def test_webhook_retries_until_the_receiver_recovers(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    target.script = [503, 502]
    outcomes: list[Outcome] = []
    sink = WebhookSink(
        url,
        retries=5,
        backoff=0.05,
        secret=b"shared-secret",
        observer=lambda _name, _alert, outcome: outcomes.append(outcome),
    )
    await sink.start()
    sink.emit(alert(1))
    await settle(sink, 1)
    await sink.close()

    assert sink.stats.delivered == 1 and sink.stats.retries == 2 and sink.stats.failed == 0
    assert outcomes == ["retried", "retried", "delivered"]
    assert len(target.attempts) == 3
    keys = {headers["Idempotency-Key"] for _, headers, _ in target.attempts}
    assert keys == {"reconcile:run:1"}  # the receiver can drop a duplicate delivery
    assert target.delivered()[0]["fields"]["mapping_id"] == "m-1"
    # Exponential backoff with jitter: the second wait is longer than the first one's floor.
    times = [at for at, _, _ in target.attempts]
    assert times[1] - times[0] >= 0.025 and times[2] - times[1] >= 0.05
    _, headers, body = target.attempts[-1]
    stamp, mac = (part.split("=", 1)[1] for part in headers["X-Dragoman-Signature"].split(","))
    expected = hmac.new(b"shared-secret", stamp.encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(mac, expected.hexdigest())


async def test_webhook_gives_up_after_its_retries(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.script = [500] * 10
    sink = WebhookSink(url, retries=2, backoff=0.01)
    await sink.start()
    sink.emit(alert())
    await settle(sink, 1)
    await sink.close()
    assert (sink.stats.failed, sink.stats.retries, len(target.attempts)) == (1, 2, 3)


async def test_a_final_4xx_is_not_retried(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.script = [400]
    sink = WebhookSink(url, retries=5, backoff=0.01)
    await sink.start()
    sink.emit(alert())
    await settle(sink, 1)
    await sink.close()
    assert (sink.stats.failed, len(target.attempts)) == (1, 1)


async def test_retry_after_is_honoured(receiver: tuple[Receiver, str]) -> None:
    target, url = receiver
    target.script = [429]
    target.headers = {"Retry-After": "0.3"}
    sink = WebhookSink(url, retries=1, backoff=0.01)
    await sink.start()
    sink.emit(alert())
    await settle(sink, 1)
    await sink.close()
    assert sink.stats.delivered == 1
    assert target.attempts[1][0] - target.attempts[0][0] >= 0.3


async def test_connection_refused_is_retried_until_the_receiver_is_up(
    serve: Callable[[web.Application], Any],
) -> None:
    target = Receiver()
    app = web.Application()
    app.router.add_post("/alerts", target.handle)
    parked = socket.socket()
    parked.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = parked.getsockname()[1]
    refused = asyncio.Event()
    sink = WebhookSink(
        f"http://127.0.0.1:{port}/alerts",
        retries=10,
        backoff=0.2,
        max_backoff=0.2,
        observer=lambda _n, _a, outcome: refused.set() if outcome == "retried" else None,
    )
    await sink.start()
    sink.emit(alert(7))
    await asyncio.wait_for(refused.wait(), 5)
    parked.close()
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await settle(sink, 1)
    finally:
        await sink.close()
        await runner.cleanup()
    assert sink.stats.delivered == 1 and sink.stats.retries >= 1
    assert target.delivered()[0]["id"] == "reconcile:run:7"


async def test_the_queue_is_bounded_and_emit_never_blocks(
    receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    target, url = receiver
    target.hold = asyncio.Event()  # the receiver hangs
    dropped: list[str] = []
    sink = WebhookSink(
        url,
        queue_size=3,
        timeout=30,
        observer=lambda _n, a, outcome: dropped.append(a.id) if outcome == "dropped" else None,
    )
    await sink.start()
    sink.emit(alert(0))
    await asyncio.wait_for(target.got.wait(), 5)  # the first is in flight, held
    started = time.perf_counter()
    for n in range(1, 10):
        sink.emit(alert(n))
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05  # never waits for the receiver
    assert sink.stats.queued == 4 and sink.stats.dropped == 6
    assert dropped == [f"reconcile:run:{n}" for n in range(4, 10)]  # the newest are dropped
    assert "dropped alert" in caplog.text
    target.hold.set()
    await settle(sink, 4)
    await sink.close()
    assert [a["id"] for a in target.delivered()] == [f"reconcile:run:{n}" for n in range(4)]


async def test_close_gives_up_on_what_it_cannot_deliver_in_time(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    target.hold = asyncio.Event()
    sink = WebhookSink(url, timeout=30, drain_timeout=0.2)
    await sink.start()
    for n in range(3):
        sink.emit(alert(n))
    await asyncio.wait_for(target.got.wait(), 5)
    started = time.monotonic()
    await sink.close()
    assert time.monotonic() - started < 2
    assert sink.stats.dropped == 3  # two still queued, and the one in flight, cut short
    sink.emit(alert(9))  # closed: dropped, never raises
    assert sink.stats.dropped == 4
    target.hold.set()


def test_the_log_sink_logs_every_alert_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dragoman.alerts")
    sink = LogSink()
    sink.emit(alert(3, message="card 4111 1111 1111 1111 seen"))
    [record] = [r for r in caplog.records if r.name == "dragoman.alerts"]
    assert record.levelno == logging.WARNING
    assert "4111" not in record.getMessage() and "[card]" in record.getMessage()
    body = json.loads(record.getMessage().split(" ", 2)[2])
    assert body["fields"] == {"drift": "customer_deleted", "mapping_id": "m-3", "run_id": "run"}


async def test_the_fanout_isolates_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        def emit(self, alert: Alert) -> None:
            raise RuntimeError("boom")

        async def start(self) -> None:
            return None

        async def close(self) -> None:
            raise RuntimeError("boom")

    seen: list[tuple[str, str]] = []
    log_sink = LogSink(observer=lambda name, a, outcome: seen.append((name, outcome)))
    fanout = FanOut([Broken(), log_sink])
    await fanout.start()
    fanout.emit(alert())
    await fanout.close()
    assert seen == [("log", "delivered")] and log_sink.emitted == 1
    assert "alert sink broken failed" in caplog.text


async def test_sinks_from_settings() -> None:
    settings = AlertSettings.model_validate(
        {"sinks": [{"url": "https://alerts.example/hook", "retries": 3, "secret": "s3cret"}]}
    )
    fanout = open_alert_sinks(settings)
    assert [s.name for s in fanout.sinks] == ["log", "webhook:alerts.example"]
    webhook = fanout.sinks[1]
    assert isinstance(webhook, WebhookSink) and webhook.url == "https://alerts.example/hook"
    await fanout.close()


def test_a_plain_http_webhook_must_be_loopback(tmp_path: Path) -> None:
    from dragoman.demo.runner import demo_settings, write_toml

    data = demo_settings(
        proxy="http://127.0.0.1:8080",
        platform="http://127.0.0.1:8090",
        issuer="http://127.0.0.1:8070",
        console="http://127.0.0.1:8060",
        state_dir=tmp_path,
    )
    data["keys"] = {"master_key": "A" * 43}
    data["alerts"] = {"sinks": [{"url": "http://alerts.example/hook"}]}
    data["reconcile"] = {"at": "25:00"}
    path = tmp_path / "d.toml"
    write_toml(data, path)
    with pytest.raises(SettingsError) as failure:
        load_settings(path)
    keys = {p.key for p in failure.value.problems}
    assert keys == {"alerts.sinks.0.url", "reconcile.at"}


async def test_deliver_settles_true_once_the_webhook_delivered(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    target.script = [503]
    sink = WebhookSink(url, retries=3, backoff=0.05)
    await sink.start()
    done = sink.deliver(alert(1))
    assert await asyncio.wait_for(done, 5) is True
    assert sink.stats.delivered == 1 and len(target.attempts) == 2
    await sink.close()


async def test_deliver_settles_false_for_an_alert_cut_short_at_close(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    target.hold = asyncio.Event()
    sink = WebhookSink(url, timeout=30, drain_timeout=0.2)
    await sink.start()
    in_flight, queued = sink.deliver(alert(0)), sink.deliver(alert(1))
    await asyncio.wait_for(target.got.wait(), 5)
    assert not in_flight.done() and not queued.done()  # not delivered yet: not "sent"
    await sink.close()
    assert in_flight.result() is False and queued.result() is False
    assert sink.deliver(alert(2)).result() is False  # closed: dropped
    target.hold.set()


async def test_deliver_settles_true_once_the_webhook_finally_gave_up(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    target.script = [400]  # final
    sink = WebhookSink(url, retries=3, backoff=0.05)
    await sink.start()
    assert await asyncio.wait_for(sink.deliver(alert(1)), 5) is True
    assert sink.stats.failed == 1
    await sink.close()


async def test_fanout_deliver_is_false_when_one_sink_dropped_the_alert(
    receiver: tuple[Receiver, str],
) -> None:
    target, url = receiver
    target.hold = asyncio.Event()
    webhook = WebhookSink(url, timeout=30, drain_timeout=0.1)
    fanout = FanOut([LogSink(), webhook])
    await fanout.start()
    done = fanout.deliver(alert(1))
    await asyncio.wait_for(target.got.wait(), 5)
    assert not done.done()  # logged, but the webhook is still at it
    await fanout.close()
    assert await asyncio.wait_for(done, 5) is False
    target.hold.set()

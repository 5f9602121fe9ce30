"""Prometheus metrics, scraped over HTTP from the metrics listener of a real stack.

Counters are process-wide (every stack of the test process feeds the same families, as
the anomaly counter always did), so each test compares a scrape before with one after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from dragoman.demo.runner import (
    AUDIENCE,
    TOKEN_ISSUER,
    DemoPorts,
    DemoStack,
    write_toml,
)
from dragoman.observability.metrics import DURATION_BUCKETS
from dragoman.settings import MetricsSettings
from serve_support import free_port, standalone_settings

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
ADDRESS = "/v1/customers/cus_alice/billing-address"
LIST = "payment_methods.list"
DRAGOMAN = str(Path(sys.executable).with_name("dragoman"))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One scrape: samples by name and labels, and the families it named."""

    def __init__(self, text: str) -> None:
        self.samples: Samples = {}
        self.families: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples


async def scrape(http: aiohttp.ClientSession, stack: DemoStack) -> Scrape:
    async with http.get(stack.metrics_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(await response.text())


def bearer(stack: DemoStack, user: str = "alice", account: str = "acct-1001") -> dict[str, str]:
    token = stack.issuer.token(user, account, roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> int:
    async with http.get(url, headers=headers or {}) as response:
        await response.read()
        return response.status


def allowed_list() -> dict[str, str]:
    return {"event": "request", "operation": LIST, "decision": "allow"}


def unauthenticated() -> dict[str, str]:
    return {"event": "request", "operation": "none", "decision": "deny"}


class MovableClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- requests ------------------------------------------------------------------------------


async def test_an_allowed_request_counts_once_with_its_operation_and_code_ok(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = await scrape(http, stack)
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200
    after = await scrape(http, stack)
    name, labels = "dragoman_requests_total", {**allowed_list(), "code": "ok"}
    assert after.value(name, **labels) == before.value(name, **labels) + 1


async def test_a_refused_request_counts_once_with_its_denial_code(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = await scrape(http, stack)
    assert await get(http, stack.urls["proxy"] + PM) == 401
    after = await scrape(http, stack)
    name, labels = "dragoman_requests_total", {**unauthenticated(), "code": "unauthenticated"}
    assert after.value(name, **labels) == before.value(name, **labels) + 1


async def test_a_request_the_proxy_answers_itself_counts_under_its_event(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    labels = {"event": "whoami", "operation": "none", "decision": "allow", "code": "ok"}
    before = await scrape(http, stack)
    assert await get(http, stack.urls["proxy"] + "/_dragoman/whoami", bearer(stack)) == 200
    after = await scrape(http, stack)
    assert after.value("dragoman_requests_total", **labels) == (
        before.value("dragoman_requests_total", **labels) + 1
    )


async def test_the_duration_histogram_counts_every_answered_request(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = await scrape(http, stack)
    for _ in range(3):
        assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200
    assert await get(http, stack.urls["proxy"] + PM) == 401
    after = await scrape(http, stack)

    def delta(suffix: str, labels: dict[str, str]) -> float:
        name = "dragoman_request_duration_seconds" + suffix
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("_count", allowed_list()) == 3
    assert delta("_count", unauthenticated()) == 1
    assert delta("_sum", allowed_list()) > 0
    top = {**allowed_list(), "le": str(DURATION_BUCKETS[-1])}
    assert delta("_bucket", top) == 3  # loopback: each well under 5 s
    assert after.has("dragoman_request_duration_seconds_bucket", **allowed_list(), le="0.0005")


async def test_every_audit_record_is_counted_by_its_sink(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = await scrape(http, stack)
    assert await get(http, stack.urls["proxy"] + PM) == 401
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200
    after = await scrape(http, stack)
    name = "dragoman_audit_records_total"
    assert after.value(name, sink="file") == before.value(name, sink="file") + 2
    assert after.value("dragoman_audit_write_failures_total", sink="file") == before.value(
        "dragoman_audit_write_failures_total", sink="file"
    )


# -- keys, identity, mappings, guards --------------------------------------------------------


async def test_the_signing_key_age_is_exposed_and_grows_with_time(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    clock = MovableClock()
    stack = await make_stack(clock=clock)
    first = await scrape(http, stack)
    assert first.value("dragoman_signing_key_ready") == 1
    assert first.has("dragoman_signing_key_age_seconds")
    age = first.value("dragoman_signing_key_age_seconds")
    assert 0 <= age < 600
    clock.now += 120
    later = await scrape(http, stack)
    assert later.value("dragoman_signing_key_age_seconds") == pytest.approx(age + 120, abs=1)


async def test_a_jwks_refresh_is_counted_with_the_issuer_name(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    labels = {"issuer": "console", "outcome": "ok"}
    before = await scrape(http, stack)
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200  # first fetch
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200  # cached
    after = await scrape(http, stack)
    name = "dragoman_jwks_refresh_total"
    assert after.value(name, **labels) == before.value(name, **labels) + 1


async def test_a_failed_jwks_refresh_is_counted_as_an_error(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    name = f"dead-{uuid.uuid4().hex[:8]}"
    stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), tmp_path / "stack")
    issuer = {
        "name": name,
        "issuer": stack.urls["issuer"],
        "jwks_uri": "http://127.0.0.1:1/jwks.json",  # nothing listens there
        "audiences": ["dragoman"],
        "algorithms": ["RS256"],
        "account_claim": "cloud_account",
        "roles_claim": "roles",
    }
    stack.prepare_state({"identity": {"oidc": [issuer]}})
    await stack.start()
    try:
        assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 503
        after = await scrape(http, stack)
    finally:
        await stack.stop()
    assert after.value("dragoman_jwks_refresh_total", issuer=name, outcome="error") == 1
    assert after.value("dragoman_jwks_refresh_total", issuer=name, outcome="ok") == 0


async def test_a_mapping_in_use_observes_its_validation_age(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    name = "dragoman_mapping_validation_age_seconds"
    before = await scrape(http, stack)
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200
    after = await scrape(http, stack)
    assert after.value(name + "_count") == before.value(name + "_count") + 1
    # seeded moments ago: within the first bucket (one hour)
    assert (
        after.value(name + "_bucket", le="3600.0")
        == before.value(name + "_bucket", le="3600.0") + 1
    )


async def test_a_rate_limit_refusal_is_counted_for_its_rule(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    rule = f"writes-{uuid.uuid4().hex[:8]}"
    table = {"name": rule, "per": "account", "tiers": ["change"], "rate": "1/min", "burst": 2}
    stack = await make_stack({"limits": {"rules": [table]}})
    address = {"line1": "2 Elm Street", "city": "Springfield", "country": "US"}
    statuses = []
    for _ in range(3):
        async with http.put(
            stack.urls["proxy"] + ADDRESS, headers=bearer(stack), json=address
        ) as response:
            statuses.append(response.status)
    assert statuses == [200, 200, 429]
    after = await scrape(http, stack)
    name = "dragoman_rate_limit_decisions_total"
    assert after.value(name, rule=rule, outcome="allowed") == 2
    assert after.value(name, rule=rule, outcome="limited") == 1
    limited = {"event": "request", "operation": "billing_address.update", "decision": "deny"}
    assert after.value("dragoman_requests_total", **limited, code="rate_limited") >= 1


async def test_a_report_only_refusal_is_counted_as_would_deny_for_its_rule(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    rule = f"watch-{uuid.uuid4().hex[:8]}"
    table = {"name": rule, "per": "account", "rate": "1/h", "burst": 1, "report_only": True}
    stack = await make_stack({"limits": {"rules": [table]}})
    statuses = [await get(http, stack.urls["proxy"] + PM, bearer(stack)) for _ in range(3)]
    assert statuses == [200, 200, 200]
    after = await scrape(http, stack)
    labels = {"rule": f"limits.rules.{rule}", "code": "rate_limited"}
    assert after.value("dragoman_would_deny_total", **labels) == 2


async def test_the_anomaly_counter_is_served_by_the_metrics_endpoint(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    assert "dragoman_anomaly_alerts" in (await scrape(http, stack)).families


# -- where the metrics are served ------------------------------------------------------------


def test_the_metrics_listener_defaults_to_loopback_on_its_own_port() -> None:
    settings = MetricsSettings()
    assert (settings.enabled, settings.host, settings.port) == (True, "127.0.0.1", 9464)


async def test_metrics_are_not_served_on_the_proxy_port(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + "/metrics") as response:
        status, kind, body = response.status, response.content_type, await response.text()
    async with http.get(stack.urls["proxy"] + "/no-such-path") as unknown:
        assert (status, kind) == (unknown.status, unknown.content_type)
    assert (status, kind) == (401, "application/problem+json")
    assert "dragoman_" not in body


async def test_metrics_can_be_turned_off(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"metrics": {"enabled": False}})
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(stack.metrics_url + "/metrics"):
            pass


def registry_requests() -> float:
    """Every request counted in this process's registry, whatever its labels."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "dragoman_requests"
        for sample in family.samples
        if sample.name == "dragoman_requests_total"
    )


async def test_with_metrics_off_an_answered_request_counts_nothing(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"metrics": {"enabled": False}})
    before = registry_requests()
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200
    assert await get(http, stack.urls["proxy"] + PM) == 401
    assert registry_requests() == before


async def test_with_metrics_on_the_same_requests_count_in_the_registry(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = registry_requests()
    assert await get(http, stack.urls["proxy"] + PM, bearer(stack)) == 200
    assert await get(http, stack.urls["proxy"] + PM) == 401
    assert registry_requests() == before + 2


# -- several workers -------------------------------------------------------------------------


def serve_two_workers(tmp_path: Path, proxy: int, metrics: int) -> subprocess.Popen[bytes]:
    settings = standalone_settings(tmp_path, proxy)
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": metrics}
    assert (settings["tokens"]["issuer"], settings["upstream"]["audience"]) == (
        TOKEN_ISSUER,
        AUDIENCE,
    )
    config = tmp_path / "dragoman.toml"
    write_toml(settings, config)
    temp = tmp_path / "tmp"
    temp.mkdir()
    with (tmp_path / "dragoman.log").open("wb") as log:
        return subprocess.Popen(
            [DRAGOMAN, "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(temp)},
        )


async def wait_until_answering(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered"
        await asyncio.sleep(0.1)


def counted_per_worker(temp: Path) -> dict[str, float]:
    """Refused requests counted in each worker's own file of the multiprocess directory."""
    counts = {}
    for path in temp.glob("dragoman-metrics-*/counter_*.db"):
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in family.samples:
                if sample.name == "dragoman_requests_total":
                    total += sample.value
        counts[path.stem] = total
    return counts


@pytest.mark.slow
async def test_with_two_workers_every_scrape_counts_the_requests_of_both(
    tmp_path: Path,
) -> None:
    proxy, metrics = free_port(), free_port()
    process = serve_two_workers(tmp_path, proxy, metrics)
    sent = 0
    try:
        # One connection per request, so SO_REUSEPORT spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            await wait_until_answering(http, f"http://127.0.0.1:{proxy}/livez")
            await wait_until_answering(http, f"http://127.0.0.1:{metrics}/metrics")
            # Until both workers have answered some: the second may start listening a few
            # seconds after the first on a busy machine, and meanwhile gets no connection.
            deadline = time.monotonic() + 60
            while True:
                for _ in range(20):
                    assert await get(http, f"http://127.0.0.1:{proxy}{PM}") == 401
                sent += 20
                per_worker = counted_per_worker(tmp_path / "tmp")
                if len(per_worker) == 2 and all(per_worker.values()):
                    break
                assert time.monotonic() < deadline, per_worker
            totals = []
            for _ in range(8):
                async with http.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                    scraped = Scrape(await response.text())
                labels = {**unauthenticated(), "code": "unauthenticated"}
                totals.append(scraped.value("dragoman_requests_total", **labels))
            # Each worker's sampled gauges, summed (in flight) and at most (peak) over both.
            assert scraped.has("dragoman_requests_in_flight")
            assert scraped.value("dragoman_requests_in_flight") == 0
            assert scraped.value("dragoman_requests_in_flight_peak") in (0, 1)
        assert totals == [sent] * 8
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0
    assert list((tmp_path / "tmp").glob("dragoman-metrics-*")) == []  # removed at the end

"""The fail-closed matrix of SEMANTICS §6, under real faults, on a production-shaped stack.

Every dependency of the proxy sits behind a FaultProxy (tests/faults/fault_proxy.py):
PostgreSQL (mapping store and key set), Redis (rate limits, browser sessions, anomaly
state: one relay each), the identity provider's discovery and JWKS, KMS (the ``aws-kms``
key provider) and the upstream (the demo payment platform). A cell breaks one of them
(``cut``: dead, ``stall``: hung, ``slow``: answers after the proxy's timeout; the identity
provider also answering its JWKS with 503), asserts the answer to reads and to writes
(status, problem ``code``, audit ``reason``), asserts that nothing reached the platform, or
for the upstream cells nothing unsigned, then heals the dependency and asserts that the
next requests succeed without restarting anything (polled within a bound; no timing is
asserted).

| dependency down          | reads                                  | writes and deletes       |
| ------------------------ | -------------------------------------- | ------------------------ |
| identity provider JWKS   | cached keys verify within max_stale;   | same                     |
|                          | past it 503 identity_unavailable       |                          |
| mapping store (Postgres) | 503 mapping_unavailable                | 503 mapping_unavailable  |
| rate-limit store (Redis) | 503 rate_limit_unavailable; with       | 503                      |
|                          | fallback=local, local limits (429)     | rate_limit_unavailable   |
| session store (Redis)    | served (a read needs no CSRF session)  | browser: 503             |
|                          |                                        | session_unavailable      |
| anomaly store (Redis)    | served (reads are not counted)         | 503 anomaly_unavailable  |
| key provider (KMS)       | 503 key_unavailable                    | 503 key_unavailable      |
| upstream slow / dead     | 504 upstream_timeout / 502             | same; a write is never   |
|                          | upstream_unavailable                   | sent twice               |
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from fault_proxy import FaultProxy
from fault_stack import ADDRESS, CARD, NEW_ADDRESS, PM, Faulty, MakeFaulty

from keys.contract.aws_kms_fixture import REGION

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FAULTS = ["cut", "stall", "slow"]
"""A dead dependency (connections reset, new ones refused), a hung one (no bytes) and a
slow one (every answer comes, SLOW seconds late: past the proxy's timeouts)."""
SLOW = 2.5
"""Longer than every timeout of the stack (query 1 s, rate limits 1.5 s, sessions and
anomaly 2 s, JWKS 0.5 s, upstream read 1.5 s)."""

READS: list[tuple[str, str, dict[str, Any] | None]] = [("GET", PM, None), ("GET", ADDRESS, None)]
WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", ADDRESS, NEW_ADDRESS),
    ("POST", PM, CARD),
]


def ok(method: str) -> int:
    """The platform's success status for ``method``."""
    return {"POST": 201, "DELETE": 204}.get(method, 200)


async def break_(relay: FaultProxy, fault: str) -> None:
    if fault == "cut":
        await relay.cut()
    elif fault == "stall":
        await relay.stall()
    else:
        await relay.slow(SLOW)


async def until(condition: Any, what: str, deadline: float = 10.0) -> None:
    """Wait (bounded) for ``condition()`` to hold."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"still not {what} after {deadline}s"
        await asyncio.sleep(0.02)


async def warm(f: Faulty) -> None:
    """One read and one write through every dependency: caches hold what they can."""
    assert (await f.call("GET", PM)).status == 200
    assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS)).status == 200


async def delete_call(f: Faulty) -> tuple[str, str, None]:
    method_id = f.stack.platform.customers["cus_alice"].payment_methods[0]["id"]
    return ("DELETE", f"{PM}/{method_id}", None)


# -- mapping store (PostgreSQL) --------------------------------------------------------------


async def _mapping_store_down(f: Faulty, fault: str) -> int:
    await warm(f)
    forwarded = len(f.seen)
    await break_(f.pg, fault)
    store = f.stack.proxy.store if f.stack.proxy else None
    assert store is not None
    # The health ping notices (within health_interval + query_timeout); until then the
    # documented mapping cache (mapping.cache_ttl) may still serve a cached mapping.
    await until(lambda: not store.reachable, "noticed by the health ping")
    return forwarded


WHOAMI: tuple[str, str, None] = ("GET", "/_dragoman/whoami", None)


@pytest.mark.parametrize("fault", FAULTS)
async def test_mapping_store_down_refuses_reads_with_503(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty()
    forwarded = await _mapping_store_down(f, fault)

    for method, path, body in [*READS, WHOAMI]:
        answer = await f.call(method, path, body=body)
        await f.assert_refused(answer, 503, "mapping_unavailable", "mapping_store_unavailable")
        assert answer.headers["Retry-After"] == "5"
    async with f.http.get(f.stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 503
        assert "state_store" in (await response.json())["failing"]
    assert len(f.seen) == forwarded

    await f.pg.heal()
    for method, path, body in [*READS, WHOAMI]:
        await f.eventually(method, path, body=body)
    f.assert_nothing_unsigned()


@pytest.mark.parametrize("fault", FAULTS)
async def test_mapping_store_down_refuses_writes_with_503(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty()
    deletion = await delete_call(f)
    forwarded = await _mapping_store_down(f, fault)

    for method, path, body in [*WRITES, deletion]:
        answer = await f.call(method, path, body=body)
        await f.assert_refused(answer, 503, "mapping_unavailable", "mapping_store_unavailable")
    assert len(f.seen) == forwarded
    assert len(f.stack.platform.customers["cus_alice"].payment_methods) == 1

    await f.pg.heal()
    for method, path, body in [*WRITES, deletion]:
        await f.eventually(method, path, body=body, status=ok(method))
    f.assert_nothing_unsigned()


# -- shared rate-limit store (Redis) ---------------------------------------------------------


def unique_rule(**rule: Any) -> dict[str, Any]:
    return {"name": f"faults-{uuid.uuid4().hex[:12]}", "per": "account", **rule}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("fallback", ["refuse", "local"])
async def test_rate_limit_store_down_refuses_writes(
    make_faulty: MakeFaulty, fault: str, fallback: str
) -> None:
    f = await make_faulty({"limits": {"fallback": fallback}})
    await warm(f)
    forwarded = len(f.seen)
    await break_(f.limits, fault)

    for method, path, body in [*WRITES, await delete_call(f)]:
        answer = await f.call(method, path, body=body)
        await f.assert_refused(answer, 503, "rate_limit_unavailable")
        assert answer.headers["Retry-After"] == "5"
    assert len(f.seen) == forwarded

    await f.limits.heal()
    for method, path, body in WRITES:
        await f.eventually(method, path, body=body, status=ok(method))
    f.assert_nothing_unsigned()


@pytest.mark.parametrize("fault", FAULTS)
async def test_rate_limit_store_down_refuses_reads_unless_fallback_local(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty({"limits": {"fallback": "refuse"}})
    await warm(f)
    forwarded = len(f.seen)
    await break_(f.limits, fault)

    for method, path, body in READS:
        answer = await f.call(method, path, body=body)
        await f.assert_refused(answer, 503, "rate_limit_unavailable")
    assert len(f.seen) == forwarded

    await f.limits.heal()
    for method, path, body in READS:
        await f.eventually(method, path, body=body)
    f.assert_nothing_unsigned()


@pytest.mark.parametrize("fault", FAULTS)
async def test_rate_limit_store_down_with_fallback_local_serves_reads_within_local_limits(
    make_faulty: MakeFaulty, fault: str
) -> None:
    # One rule on every tier: burst 3, then one request an hour (no refill during the test).
    rule = unique_rule(rate="1/h", burst=3)
    f = await make_faulty({"limits": {"fallback": "local", "rules": [rule]}})
    assert (await f.call("GET", PM)).status == 200  # Redis counts 1 of 3
    await break_(f.limits, fault)
    forwarded = len(f.seen)

    answers = [await f.call("GET", PM) for _ in range(4)]  # the local counters: 3, then 429
    assert [a.status for a in answers] == [200, 200, 200, 429], [a.body for a in answers]
    await f.assert_refused(answers[-1], 429, "rate_limited", rule["name"])
    assert len(f.seen) == forwarded + 3
    write = await f.call("PUT", ADDRESS, body=NEW_ADDRESS)  # writes never fall back
    await f.assert_refused(write, 503, "rate_limit_unavailable")
    assert len(f.seen) == forwarded + 3

    await f.limits.heal()
    # Redis decides again, on its own counts. Dead or hung, it saw nothing of the outage:
    # 1 used before it, 2 left. Slow, it ran every script it was sent, late: the reads
    # the local counters allowed were counted there too (counted twice, never forgotten:
    # the safe side), and alice's budget is spent.
    if fault == "slow":
        await asyncio.sleep(SLOW)  # the late scripts have run
        refused = await f.eventually("GET", PM, status=429)
    else:
        await f.eventually("GET", PM)
        assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS)).status == 200
        refused = await f.call("GET", PM)
    await f.assert_refused(refused, 429, "rate_limited", rule["name"])
    assert refused.headers["RateLimit-Policy"]
    # Another account's counter is untouched: Redis allows it (an answer, not a 503).
    bob = f.stack.issuer.token("bob", "acct-2002", roles=["billing_admin"])
    answer = await f.call("GET", "/v1/customers/cus_bob/payment-methods", token=bob)
    assert answer.status == 200, answer.body
    f.assert_nothing_unsigned()


# -- session store (Redis) ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_session_store_down_refuses_browser_reads_and_writes(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty()
    pair = await f.handshake()
    assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS, headers=pair.headers())).status == 200
    forwarded = len(f.seen)
    await break_(f.sessions, fault)

    for method, path, body in [("GET", PM, None), *WRITES, await delete_call(f)]:
        answer = await f.call(method, path, body=body, headers=pair.headers())
        await f.assert_refused(answer, 503, "session_unavailable")
    answer = await f.call("GET", "/_dragoman/whoami", headers=pair.headers())
    await f.assert_refused(answer, 503, "session_unavailable")
    handshake = await f.call(
        "POST",
        "/_dragoman/session",
        headers={"Origin": pair.origin, "Sec-Fetch-Site": "same-origin"},
    )
    await f.assert_refused(handshake, 503, "session_unavailable")
    refresh = await f.call("POST", "/_dragoman/session/refresh", headers=pair.headers())
    await f.assert_refused(refresh, 503, "session_unavailable")
    assert len(f.seen) == forwarded

    # What needs no session is served: server-to-server calls (no browser signal:
    # browser.csrf = browser).
    assert (await f.call("GET", PM)).status == 200
    assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS)).status == 200
    assert len(f.seen) == forwarded + 2

    await f.sessions.heal()
    # The session lived on in Redis: the same pair works again.
    await f.eventually("PUT", ADDRESS, body=NEW_ADDRESS, headers=pair.headers())
    assert (await f.call("POST", PM, body=CARD, headers=pair.headers())).status == 201
    f.assert_nothing_unsigned()


# -- anomaly state (Redis) ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_anomaly_store_down_refuses_sensitive_writes_and_serves_reads(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty()
    await warm(f)
    forwarded = len(f.seen)
    await break_(f.anomaly, fault)

    for method, path, body in [*WRITES, await delete_call(f)]:
        answer = await f.call(method, path, body=body)
        await f.assert_refused(answer, 503, "anomaly_unavailable")
    assert len(f.seen) == forwarded
    for method, path, body in READS:  # reads feed no anomaly rule
        assert (await f.call(method, path, body=body)).status == 200

    await f.anomaly.heal()
    for method, path, body in WRITES:
        await f.eventually(method, path, body=body, status=ok(method))
    f.assert_nothing_unsigned()


async def test_redis_down_refuses_reads_and_writes_of_every_kind(make_faulty: MakeFaulty) -> None:
    """One Redis for everything, and it is gone: each request is refused by the first
    stage that needs it (CSRF before the rate limits before the anomaly rules)."""
    f = await make_faulty()
    pair = await f.handshake()
    await warm(f)
    forwarded = len(f.seen)
    for relay in (f.limits, f.sessions, f.anomaly):
        await relay.cut()

    await f.assert_refused(await f.call("GET", PM), 503, "rate_limit_unavailable")
    await f.assert_refused(
        await f.call("PUT", ADDRESS, body=NEW_ADDRESS), 503, "rate_limit_unavailable"
    )
    await f.assert_refused(
        await f.call("PUT", ADDRESS, body=NEW_ADDRESS, headers=pair.headers()),
        503,
        "session_unavailable",
    )
    assert len(f.seen) == forwarded

    for relay in (f.limits, f.sessions, f.anomaly):
        await relay.heal()
    await f.eventually("GET", PM)
    await f.eventually("PUT", ADDRESS, body=NEW_ADDRESS, headers=pair.headers())
    f.assert_nothing_unsigned()


# -- identity provider JWKS ------------------------------------------------------------------

JWKS_FAULTS = [*FAULTS, "answers_503"]
"""The relay's faults, and a provider that is up but answers its JWKS with 503."""


async def break_jwks(f: Faulty, fault: str) -> None:
    if fault == "answers_503":
        f.stack.issuer.jwks_available = False
    else:
        await break_(f.jwks, fault)


async def heal_jwks(f: Faulty) -> None:
    f.stack.issuer.jwks_available = True
    await f.jwks.heal()


@pytest.mark.parametrize("fault", JWKS_FAULTS)
async def test_jwks_down_keys_cached_within_max_stale_still_verify(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty(oidc={"jwks_cache_ttl": 1, "jwks_max_stale": "1d"})
    reused = f.token()
    assert (await f.call("GET", PM, token=reused)).status == 200  # keys fetched
    cache = f.jwks_cache()
    fetches = cache.fetches
    await break_jwks(f, fault)
    await asyncio.sleep(1.1)  # past the keys' TTL: the next lookup tries to refresh

    for method, path, body in [*READS, *WRITES]:
        answer = await f.call(method, path, body=body)
        assert answer.status == ok(method), answer.body
        assert (await f.record_of(answer))["decision"] == "allow"
    assert (await f.call("GET", PM, token=reused)).status == 200  # a remembered token too
    assert cache.fetches > fetches  # the refresh was tried, and failed

    await heal_jwks(f)
    await f.eventually("GET", PM)
    f.assert_nothing_unsigned()


@pytest.mark.parametrize("fault", JWKS_FAULTS)
async def test_jwks_down_past_max_stale_refuses_with_503(
    make_faulty: MakeFaulty, fault: str
) -> None:
    f = await make_faulty(oidc={"jwks_cache_ttl": 1, "jwks_max_stale": 1})
    reused = f.token()
    assert (await f.call("GET", PM, token=reused)).status == 200
    await break_jwks(f, fault)

    # Within TTL + max_stale (2 s) the cached keys verify; then nothing does.
    end = time.monotonic() + 10
    while (answer := await f.call("GET", PM)).status == 200:
        assert time.monotonic() < end, "cached keys kept verifying past max_stale"
        await asyncio.sleep(0.1)
    forwarded = len(f.seen)
    await f.assert_refused(answer, 503, "identity_unavailable", "jwks_unavailable")
    for method, path, body in [*READS, *WRITES]:
        refused = await f.call(method, path, body=body)
        await f.assert_refused(refused, 503, "identity_unavailable", "jwks_unavailable")
    reused_answer = await f.call("GET", PM, token=reused)  # remembered tokens too
    await f.assert_refused(reused_answer, 503, "identity_unavailable", "jwks_unavailable")
    assert len(f.seen) == forwarded

    await heal_jwks(f)
    await f.eventually("GET", PM)
    assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS)).status == 200
    f.assert_nothing_unsigned()


# -- key provider (KMS) ------------------------------------------------------------------------


async def test_key_provider_down_refuses_reads_and_writes(make_faulty: MakeFaulty) -> None:
    """The aws-kms provider signs in KMS: its private keys are never in the proxy, so with
    KMS gone nothing can be signed, and nothing is forwarded (no unsigned fallback, no other
    key)."""
    f = await make_faulty()
    await warm(f)
    before = await f.record_of(await f.call("GET", PM))
    kid = before["kid"]
    assert kid is not None
    forwarded = len(f.seen)
    await f.kms.cut()

    for method, path, body in [*READS, *WRITES, await delete_call(f)]:
        answer = await f.call(method, path, body=body)
        record = await f.assert_refused(answer, 503, "key_unavailable", "no_signing_key")
        assert (record["jti"], record["kid"]) == (None, None)  # no token was made
    assert len(f.seen) == forwarded
    # The public keys are still published: verifiers keep checking tokens already issued.
    async with f.http.get(f.stack.urls["proxy"] + "/.well-known/jwks.json") as response:
        assert kid in {k["kid"] for k in (await response.json())["keys"]}

    await f.kms.heal()
    recovered = await f.eventually("GET", PM)
    assert (await f.record_of(recovered))["kid"] == kid  # the same KMS key signs again
    assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS)).status == 200
    f.assert_nothing_unsigned()


async def readyz(f: Faulty) -> tuple[int, list[str]]:
    async with f.http.get(f.stack.urls["proxy"] + "/readyz") as response:
        return response.status, (await response.json()).get("failing", [])


async def test_key_provider_down_makes_the_replica_unready_until_it_signs_again(
    make_faulty: MakeFaulty,
) -> None:
    """A balancer must move traffic off a replica whose KMS is gone, and back once it signs
    again, without any request having to fail first to find out."""
    f = await make_faulty()
    await warm(f)
    assert await readyz(f) == (200, [])
    await f.kms.cut()
    await f.call("GET", PM)  # refused: the provider failed a signature
    assert await readyz(f) == (503, ["signing_key"])
    await f.kms.heal()
    assert await readyz(f) == (200, [])  # its canary signature worked: no request needed


@pytest.mark.slow
async def test_key_provider_hung_refuses_reads_and_writes(make_faulty: MakeFaulty) -> None:
    """A hung KMS: each signing call waits for the provider's own timeouts and retries
    (`keys.aws_kms.timeout` x `attempts`, 2 s x 2 by default), then the request is refused."""
    f = await make_faulty()
    await warm(f)
    forwarded = len(f.seen)
    await f.kms.stall()

    for method, path, body in [READS[0], WRITES[0]]:
        answer = await f.call(method, path, body=body)
        record = await f.assert_refused(answer, 503, "key_unavailable", "no_signing_key")
        assert record["jti"] is None
    assert len(f.seen) == forwarded

    await f.kms.heal()
    await f.eventually("GET", PM)
    assert (await f.call("PUT", ADDRESS, body=NEW_ADDRESS)).status == 200
    f.assert_nothing_unsigned()


def alias_target(f: Faulty) -> str | None:
    """The KMS key the provider's alias names (asked of KMS itself, through its relay)."""
    import boto3

    alias = f.stack.settings.keys.aws_kms.alias if f.stack.settings else None
    client = boto3.client("kms", region_name=REGION, endpoint_url=f.kms.url)
    try:
        for page in client.get_paginator("list_aliases").paginate():
            for entry in page["Aliases"]:
                if entry["AliasName"] == alias:
                    target: str | None = entry.get("TargetKeyId")
                    return target
        return None
    finally:
        client.close()


async def test_key_provider_down_when_a_new_key_takes_over_recovers_with_it(
    make_faulty: MakeFaulty, caplog: pytest.LogCaptureFixture
) -> None:
    """KMS goes down just as a prepublished successor becomes the current key: nothing is
    signed (not with the new key, and not with the old one either: it is not current), and
    once KMS is back the new key signs and KMS's alias is moved to it."""
    f = await make_faulty(
        {
            "keys": {
                "prepublish": 1.5,
                "jwks_max_age": 1,
                "refresh_interval": 0.25,
                "auto_rotate": False,
            }
        }
    )
    assert f.stack.proxy is not None
    ring = f.stack.proxy.keys
    first = ring.current_key()
    assert first is not None
    successor = await ring.rotate()  # KMS makes it; it signs from prepublish on
    assert successor is not None
    await f.kms.cut()
    await until(lambda: (ring.current_key() or first).kid == successor.kid, "current", deadline=10)

    for method, path, body in [READS[0], WRITES[0]]:
        answer = await f.call(method, path, body=body)
        record = await f.assert_refused(answer, 503, "key_unavailable", "no_signing_key")
        assert record["jti"] is None
    assert f.seen == []
    # The ring also failed to move KMS's alias to the new key (after the provider's retries).
    await until(
        lambda: any("could not mark key" in r.getMessage() for r in caplog.records),
        "told that the alias could not move",
    )

    await f.kms.heal()
    recovered = await f.eventually("GET", PM)
    assert (await f.record_of(recovered))["kid"] == successor.kid
    end = time.monotonic() + 10
    while (target := await asyncio.to_thread(alias_target, f)) != successor.ref:
        assert time.monotonic() < end, f"the alias still names {target}, not the current key"
        await asyncio.sleep(0.1)
    f.assert_nothing_unsigned()


# -- the proxy's own write: linking an account -------------------------------------------------


@pytest.mark.parametrize(
    ("dependency", "code"),
    [
        ("pg", "mapping_unavailable"),
        ("kms", "platform_unavailable"),
        ("upstream", "platform_unavailable"),
    ],
)
async def test_registration_with_a_dependency_down_links_nothing(
    make_faulty: MakeFaulty, dependency: str, code: str
) -> None:
    """POST /_dragoman/registration verifies the link with the platform (a token minted by
    the key provider, a read upstream) and writes it to the mapping store: any of them
    down, 503 and no link."""
    f = await make_faulty()
    f.stack.platform.add_customer("cus_carol", "acct-3003")
    carol = f.stack.issuer.token("carol", "acct-3003", roles=["owner"])
    relay: FaultProxy = getattr(f, dependency)
    await relay.cut()

    link = {"customer": "cus_carol"}
    answer = await f.call("POST", "/_dragoman/registration", body=link, token=carol)
    await f.assert_refused(answer, 503, code)
    if dependency != "pg":
        assert f.seen == []
    await relay.heal()
    whoami = await f.eventually("GET", "/_dragoman/whoami", token=carol, status=403)
    assert whoami.body["code"] == "mapping_missing"  # nothing was linked

    await f.eventually("POST", "/_dragoman/registration", body=link, token=carol, status=201)
    f.assert_nothing_unsigned()


# -- upstream ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stall", "slow"])
async def test_upstream_slow_gives_504_problem(make_faulty: MakeFaulty, fault: str) -> None:
    f = await make_faulty()
    await warm(f)  # a kept-alive connection is pooled: it is slowed down too
    forwarded = len(f.seen)
    await break_(f.upstream, fault)

    calls = [*READS, *WRITES]
    for method, path, body in calls:
        answer = await f.call(method, path, body=body)
        record = await f.assert_refused(answer, 504, "upstream_timeout", "upstream_timeout")
        assert record["jti"] is not None  # signed before it was sent
    if fault == "stall":
        assert len(f.seen) == forwarded  # held by the hung upstream: never arrived
    else:
        # A slow upstream gets the requests late, after the proxy gave up: each once,
        # each signed (a write that timed out may have happened: it is not resent).
        await until(lambda: len(f.seen) >= forwarded + len(calls), "arrived", SLOW * 4)
        assert [s.method for s in f.seen[forwarded:]] == [m for m, _, _ in calls]

    await f.upstream.heal()
    for method, path, body in calls:
        await f.eventually(method, path, body=body, status=ok(method))
    f.assert_nothing_unsigned()


async def test_upstream_dead_gives_502_problem(make_faulty: MakeFaulty) -> None:
    f = await make_faulty()
    await warm(f)  # a kept-alive connection is pooled: the cut resets it
    forwarded = len(f.seen)
    await f.upstream.cut()

    for method, path, body in [*READS, *WRITES, await delete_call(f)]:
        answer = await f.call(method, path, body=body)
        await f.assert_refused(answer, 502, "upstream_unavailable")
    assert len(f.seen) == forwarded

    await f.upstream.heal()
    for method, path, body in [*READS, *WRITES]:
        await f.eventually(method, path, body=body, status=ok(method))
    f.assert_nothing_unsigned()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PUT", ADDRESS, NEW_ADDRESS), ("POST", PM, CARD)],
    ids=["PUT", "POST"],
)
async def test_upstream_write_is_not_retried_after_a_dropped_connection(
    make_faulty: MakeFaulty, method: str, path: str, body: dict[str, Any]
) -> None:
    """The platform performs the write, then the connection drops before its answer: 502,
    and the write is not sent again (a resend would replay its single-use token, and
    could repeat the change). tests/test_forward.py covers the same rule for the kept-alive
    resend aiohttp makes on its own, against a scripted upstream."""
    f = await make_faulty()
    await warm(f)  # a kept-alive connection is pooled
    forwarded = len(f.seen)
    await f.upstream.drop_replies()

    answer = await f.call(method, path, body=body)
    await f.assert_refused(answer, 502, "upstream_unavailable")
    writes = f.seen[forwarded:]
    assert [(s.method, s.accepted) for s in writes] == [(method, True)]  # once, signed

    await f.upstream.heal()
    await f.eventually(method, path, body=body, status=ok(method))
    assert [s.method for s in f.seen[forwarded:]] == [method, method]
    assert len({s.jti for s in f.seen[forwarded:]}) == 2  # a new token for the new request
    f.assert_nothing_unsigned()

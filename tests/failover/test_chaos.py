"""A chaos run (issue 9): replicas killed at random (SIGKILL or SIGTERM) and restarted while a
mixed load runs through HAProxy; afterwards every replica's audit chain verifies, no write ran
twice and every answer a replica gave has its audit record."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time

from failover_support import DRAGOMAN, Cluster, Report, caller

CHAOS_SECONDS = 12.0
MIN_EVENTS = 3
LONGEST_SECONDS = 120.0
CALLERS = 8


async def chaos(cluster: Cluster, until: float, rng: random.Random) -> list[str]:
    """Kill one replica at a time, picked at random, SIGKILL and SIGTERM in turn, and bring
    it back; never two at once. At least ``MIN_EVENTS`` kills, however long a slow machine
    takes to restart a replica (bounded by ``LONGEST_SECONDS``)."""
    events: list[str] = []
    give_up = time.monotonic() + LONGEST_SECONDS
    while (time.monotonic() < until - 2.0 or len(events) < MIN_EVENTS) and (
        time.monotonic() < give_up
    ):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        victim = rng.choice(cluster.replicas)
        how = (signal.SIGKILL, signal.SIGTERM)[len(events) % 2]
        victim.signal(how)
        events.append(f"{victim.name}:{how.name}")
        await asyncio.to_thread(victim.wait, 30)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        victim.start()
        await cluster.until_ready(victim)
    return events


async def test_chaos_run_ends_with_audit_chains_that_verify(cluster: Cluster) -> None:
    report = Report()
    rng = random.Random(1129)
    until = time.monotonic() + CHAOS_SECONDS
    done = asyncio.Event()  # the load runs as long as the chaos does
    load = [
        asyncio.create_task(caller(cluster, report, done, random.Random(rng.random())))
        for _ in range(CALLERS)
    ]
    events = await chaos(cluster, until, rng)
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    done.set()
    await asyncio.gather(*load)
    for replica in cluster.replicas:
        replica.stop()

    assert cluster.platform is not None
    audit = cluster.audit_records()
    request_ids = {r.get("request_id") for r in audit}
    tokens = {r.get("jti") for r in audit}
    lost = [a for a in report.attempts if a.from_replica and a.request_id not in request_ids]
    applied_unaudited = [
        s
        for s in cluster.platform.seen
        if s.accepted and s.method == "POST" and s.jti not in tokens
    ]
    summary = {
        "events": events,
        "requests": report.requests,
        "failed_attempts": len(report.failed),
        "retried": report.retried,
        "gave_up": report.gave_up,
        "duplicated_writes": cluster.platform.idempotency.duplicated,
        "idempotent_replays": cluster.platform.idempotency.replays,
        "audit_records_lost": len(lost),
        "applied_writes_without_audit": len(applied_unaudited),
    }
    print("chaos report:", summary)
    assert len(events) >= MIN_EVENTS, summary
    assert report.gave_up == 0, summary
    assert cluster.platform.idempotency.duplicated == 0, summary
    assert lost == [] and applied_unaudited == [], summary
    for replica in cluster.replicas:
        verified = subprocess.run(
            [DRAGOMAN, "audit", "verify", str(replica.audit)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verified.returncode == 0, (replica.name, verified.stdout, verified.stderr)

"""Failover behind a real load balancer (issue 9): three replicas behind HAProxy with active
health checks, a bounded mixed load, one replica SIGKILLed and another SIGTERMed mid-run.

The report states what was sent, what failed and when, what was retried, how many writes
the platform ran twice for one idempotency key (must be 0), and how many answers a replica
gave without an audit record (must be 0).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

from failover_support import Cluster, Report, caller

LOAD_SECONDS = 9.0
KILL_AT = 2.5
TERM_AT = 5.5
FAILURE_WINDOW = 3.0
"""Failed attempts must fall within this many seconds after a kill (the example's health
checks run every second, two misses mark a replica down)."""
CALLERS = 12


async def test_failover_loses_no_write_and_no_audit_record(cluster: Cluster) -> None:
    report = Report()
    begin = time.monotonic()
    until = begin + LOAD_SECONDS
    rng = random.Random(20261129)
    load = [
        asyncio.create_task(caller(cluster, report, until, random.Random(rng.random())))
        for _ in range(CALLERS)
    ]
    killed, terminated = cluster.replicas[0], cluster.replicas[1]
    await asyncio.sleep(KILL_AT)
    kill_time = time.monotonic()
    killed.signal(signal.SIGKILL)
    await asyncio.sleep(TERM_AT - KILL_AT)
    term_time = time.monotonic()
    terminated.signal(signal.SIGTERM)
    await asyncio.gather(*load)
    for replica in cluster.replicas:
        replica.stop()

    assert cluster.platform is not None
    audit = cluster.audit_records()
    records = {r.get("request_id") for r in audit}
    audited_tokens = {r.get("jti") for r in audit}
    applied_unaudited = [
        seen
        for seen in cluster.platform.seen
        if seen.accepted and seen.method == "POST" and seen.jti not in audited_tokens
    ]
    answered = [a for a in report.attempts if a.from_replica]
    unaudited = [a for a in answered if a.request_id not in records]
    failed = report.failed
    outside = [
        a
        for a in failed
        if not (kill_time <= a.at <= kill_time + FAILURE_WINDOW)
        and not (term_time <= a.at <= term_time + FAILURE_WINDOW)
    ]
    summary = {
        "requests": report.requests,
        "attempts": len(report.attempts),
        "failed_attempts": len(failed),
        "failed_outside_kill_windows": len(outside),
        "retried": report.retried,
        "gave_up": report.gave_up,
        "writes_run": sum(cluster.platform.idempotency.runs.values()),
        "idempotent_replays": cluster.platform.idempotency.replays,
        "duplicated_writes": cluster.platform.idempotency.duplicated,
        "answered_by_replicas": len(answered),
        "audit_records_lost": len(unaudited),
        "applied_writes_without_audit": len(applied_unaudited),
    }
    print("failover report:", summary)
    assert report.requests > 0 and report.gave_up == 0, summary
    assert cluster.platform.idempotency.duplicated == 0, summary
    assert unaudited == [], summary
    assert applied_unaudited == [], summary
    assert outside == [], (summary, outside[:5])

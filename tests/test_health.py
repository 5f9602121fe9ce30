"""/livez and /readyz: live while the process works; ready only when the mapping store, a
current signing key, the audit sink and shipper, and the shared-state backends in use (browser
sessions, rate limits, anomaly state) answer. A 503 names the failing checks, nothing else.
With ``limits.fallback = "local"`` the Redis backends only degrade a replica (200
``degraded``, naming them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import sqlalchemy as sa

from dragoman.audit.postgres_schema import audit_records
from dragoman.demo.runner import DemoStack
from dragoman.observability.readiness import Check, Readiness, sync_probe
from dragoman.state import migrate
from dragoman.state.sql import make_engine
from tcp_relay import TcpRelay, free_port


async def test_livez_answers_while_the_process_works(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + "/livez") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_store_and_keys(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_readyz_is_unavailable_without_the_mapping_store(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    dead = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    stack = await make_stack(
        {"store": {"database_url": dead, "auto_migrate": False, "query_timeout": 1}},
        seed=False,
    )
    async with http.get(stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["failing"] == ["state_store", "signing_key"]
    async with http.get(stack.urls["proxy"] + "/livez") as response:
        assert response.status == 200


# -- the shared-state backends, the audit shipper ------------------------------------------

CLOSED_REDIS = "redis://127.0.0.1:1/0"
"""A Redis URL nothing listens on."""


async def readyz(http: aiohttp.ClientSession, stack: DemoStack) -> tuple[int, Any]:
    async with http.get(stack.urls["proxy"] + "/readyz") as response:
        return response.status, await response.json()


async def test_readyz_names_rate_limits_while_their_redis_is_unreachable_and_recovers(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    target = urlsplit(redis_url)
    relay = TcpRelay(target.hostname or "127.0.0.1", target.port or 6379, port=free_port())
    url = f"redis://127.0.0.1:{relay.port}{target.path}"  # nothing listens there yet
    stack = await make_stack({"limits": {"backend": "redis", "redis_url": url}})
    try:
        assert await readyz(http, stack) == (
            503,
            {"status": "unavailable", "failing": ["rate_limits"]},
        )
        await relay.start()
        assert await readyz(http, stack) == (200, {"status": "ready"})
    finally:
        await relay.cut()


async def test_readyz_names_browser_sessions_while_their_redis_is_unreachable(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(
        {"browser": {"session_backend": "redis", "session_redis_url": CLOSED_REDIS}}
    )
    assert await readyz(http, stack) == (
        503,
        {"status": "unavailable", "failing": ["browser_sessions"]},
    )


async def test_readyz_names_anomaly_state_while_its_redis_is_unreachable(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"anomaly": {"backend": "redis", "redis_url": CLOSED_REDIS}})
    assert await readyz(http, stack) == (
        503,
        {"status": "unavailable", "failing": ["anomaly_state"]},
    )


async def test_readyz_is_degraded_not_unready_while_redis_is_down_with_local_fallback(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    # SEMANTICS §6: with the per-instance fallback, reads are still served while Redis is
    # down; every replica shares Redis, so leaving the balancer would refuse them all.
    stack = await make_stack(
        {
            "limits": {"backend": "redis", "redis_url": CLOSED_REDIS, "fallback": "local"},
            "browser": {"session_backend": "redis", "session_redis_url": CLOSED_REDIS},
            "anomaly": {"backend": "redis", "redis_url": CLOSED_REDIS},
        }
    )
    assert await readyz(http, stack) == (
        200,
        {"status": "degraded", "failing": ["browser_sessions", "rate_limits", "anomaly_state"]},
    )


async def test_readyz_with_local_fallback_is_unavailable_when_a_required_check_fails_too(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    dead = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    stack = await make_stack(
        {
            "store": {"database_url": dead, "auto_migrate": False, "query_timeout": 1},
            "limits": {"backend": "redis", "redis_url": CLOSED_REDIS, "fallback": "local"},
        },
        seed=False,
    )
    assert await readyz(http, stack) == (
        503,
        {"status": "unavailable", "failing": ["state_store", "signing_key", "rate_limits"]},
    )


async def test_readiness_serves_only_when_every_failing_check_is_partial() -> None:
    def check(name: str, ok: bool, partial: bool) -> Check:
        return Check(name, sync_probe(lambda: ok), partial)

    partial_only = Readiness([check("store", True, False), check("limits", False, True)])
    assert await partial_only.state() == (["limits"], True)
    both = Readiness([check("store", False, False), check("limits", False, True)])
    assert await both.state() == (["store", "limits"], False)
    assert await Readiness([check("store", True, False)]).state() == ([], True)


async def test_readyz_is_ready_with_every_redis_backend_answering(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    stack = await make_stack(
        {
            "limits": {"backend": "redis", "redis_url": redis_url},
            "browser": {"session_backend": "redis", "session_redis_url": redis_url},
            "anomaly": {"backend": "redis", "redis_url": redis_url},
        }
    )
    assert await readyz(http, stack) == (200, {"status": "ready"})


async def test_readyz_answer_names_no_url_host_or_credential(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    secret_url = "redis://dragoman:s3cret-pass@127.0.0.1:1/0"
    stack = await make_stack(
        {
            "limits": {"backend": "redis", "redis_url": secret_url},
            "browser": {"session_backend": "redis", "session_redis_url": secret_url},
            "anomaly": {"backend": "redis", "redis_url": secret_url},
        }
    )
    async with http.get(stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 503
        text = await response.text()
    assert json.loads(text) == {
        "status": "unavailable",
        "failing": ["browser_sessions", "rate_limits", "anomaly_state"],
    }
    for leak in ("s3cret", "dragoman:", "127.0.0.1", "redis"):
        assert leak not in text
    async with http.get(stack.urls["proxy"] + "/livez") as response:
        assert response.status == 200  # the process works; only its dependencies do not


async def shipped(url: str, at_least: int = 1) -> int:
    """Rows in the audit table, once there are ``at_least`` (polled, bounded)."""
    engine = make_engine(url)
    try:
        for _ in range(200):
            async with engine.connect() as conn:
                count = int(
                    (
                        await conn.execute(sa.select(sa.func.count()).select_from(audit_records))
                    ).scalar_one()
                )
            if count >= at_least:
                return count
            await asyncio.sleep(0.05)
        return count
    finally:
        await engine.dispose()


async def test_readyz_names_the_audit_shipper_once_shipping_stopped(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    audit_db = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(audit_db)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    stack = await make_stack({"audit": {"database_url": audit_db, "ship_interval": 0.05}})
    async with http.get(stack.urls["proxy"] + "/v1/customers/cus_alice") as response:
        assert response.status == 401  # one chained record in the file
    assert await shipped(audit_db) == 1
    assert await readyz(http, stack) == (200, {"status": "ready"})
    with (stack.state_dir / "audit.jsonl").open("a") as live:
        live.write('{"event": "forged", "no": "chain fields"}\n')  # shipping must stop here
    answer: tuple[int, Any] = (0, None)
    for _ in range(200):  # bounded: the shipper looks every 50 ms
        answer = await readyz(http, stack)
        if answer[0] == 503:
            break
        await asyncio.sleep(0.05)
    assert answer == (503, {"status": "unavailable", "failing": ["audit_shipper"]})

"""Failing closed (SEMANTICS §6): when the mapping store cannot be reached, every store call
raises StoreUnavailable, and the proxy answers 503 mapping_unavailable for reads and writes
without forwarding anything."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dragoman.demo.runner import DemoStack
from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.store import MappingStore, StoreUnavailable, make_engine
from dragoman.state import migrate
from tcp_relay import TcpRelay

PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4111111111111111", "exp_month": 1, "exp_year": 2031}

StoreCall = Callable[[MappingStore], Awaitable[Any]]
CALLS: dict[str, StoreCall] = {
    "ping": lambda s: s.ping(),
    "find_by_account": lambda s: s.find_by_account("acct-1001"),
    "get": lambda s: s.get("00000000-0000-0000-0000-000000000000"),
    "list": lambda s: s.list(),
    "add": lambda s: s.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="ops",
        verification_method="manual",
    ),
    "update": lambda s: s.update(
        "00000000-0000-0000-0000-000000000000",
        expected_version=1,
        actor="ops",
        status="suspended",
    ),
}


@pytest.fixture(params=["postgresql", "sqlite"])
async def unreachable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("dead_pg_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'no-such-directory' / 'mappings.db'}"


def _aiosqlite_workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@pytest.fixture
async def dead_store(unreachable_url: str, cipher: MappingCipher) -> AsyncIterator[MappingStore]:
    before = _aiosqlite_workers()
    store = MappingStore(make_engine(unreachable_url), cipher=cipher)
    yield store
    await store.close()
    # aiosqlite (0.22.1) stops the worker thread of a failed connect without waiting for
    # it; the thread then reports to the event loop. Let it finish while the loop still
    # runs, or it meets a closed loop after the test and raises in its thread.
    for worker in _aiosqlite_workers() - before:
        await asyncio.to_thread(worker.join)


@pytest.mark.parametrize("call", list(CALLS))
async def test_store_call_on_an_unreachable_database_raises_store_unavailable(
    dead_store: MappingStore, call: str
) -> None:
    with pytest.raises(StoreUnavailable):
        await CALLS[call](dead_store)


async def test_migrations_on_an_unreachable_database_raise_store_unavailable(
    dead_store: MappingStore,
) -> None:
    with pytest.raises(StoreUnavailable):
        await migrate.upgrade(dead_store.engine)


async def test_revision_of_an_unreachable_database_raises_store_unavailable(
    dead_store: MappingStore,
) -> None:
    with pytest.raises(StoreUnavailable):
        await migrate.current_revision(dead_store.engine)


# -- through the proxy ----------------------------------------------------------------------
#
# The stack starts on a dead database only with auto_migrate off and without the demo seed
# (seeding writes to the store, and migrating at start needs it too).


@pytest.fixture
async def dead_store_stack(
    make_stack: Callable[..., Awaitable[DemoStack]], dead_pg_url: str
) -> DemoStack:
    overrides = {"store": {"database_url": dead_pg_url, "auto_migrate": False}}
    return await make_stack(overrides, seed=False)


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", PM, None),
        ("POST", PM, CARD),
        ("PUT", "/v1/customers/cus_alice/billing-address", {"line1": "x", "country": "US"}),
    ],
    ids=["read", "create", "update"],
)
async def test_request_while_the_store_is_down_is_503_mapping_unavailable(
    dead_store_stack: DemoStack,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    stack = dead_store_stack
    async with http.request(
        method, stack.urls["proxy"] + path, headers=alice(stack), json=body
    ) as response:
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert response.headers["Retry-After"] == "5"
        problem = await response.json()
    assert problem["code"] == "mapping_unavailable"
    assert problem["status"] == 503
    assert stack.platform.seen == []


async def test_delete_while_the_store_is_down_is_503_mapping_unavailable(
    dead_store_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = dead_store_stack
    method_id = stack.platform.customers["cus_alice"].payment_methods[0]["id"]
    url = f"{stack.urls['proxy']}{PM}/{method_id}"
    async with http.delete(url, headers=alice(stack)) as response:
        assert response.status == 503
        assert (await response.json())["code"] == "mapping_unavailable"
    assert stack.platform.seen == []
    assert len(stack.platform.customers["cus_alice"].payment_methods) == 1


async def test_whoami_while_the_store_is_down_is_503_mapping_unavailable(
    dead_store_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = dead_store_stack
    url = stack.urls["proxy"] + "/_dragoman/whoami"
    async with http.get(url, headers=alice(stack)) as response:
        assert response.status == 503
        assert (await response.json())["code"] == "mapping_unavailable"


async def test_readiness_while_the_store_is_down_names_the_mapping_store(
    dead_store_stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(dead_store_stack.urls["proxy"] + "/readyz") as response:
        assert response.status == 503
        assert (await response.json())["failing"] == ["state_store", "signing_key"]


async def test_store_lost_after_start_turns_requests_into_503_and_forwards_nothing(
    make_stack: Callable[..., Awaitable[DemoStack]],
    pg_relay: TcpRelay,
    http: aiohttp.ClientSession,
) -> None:
    # Without the lookup cache every request asks the store: the first one after the cut
    # is refused.
    stack = await make_stack({"store": {"database_url": pg_relay.url}, "mapping": {"cache_ttl": 0}})
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as response:
        assert response.status == 200
    assert len(stack.platform.seen) == 1

    await pg_relay.cut()

    for method, body in (("GET", None), ("POST", CARD)):
        async with http.request(
            method, stack.urls["proxy"] + PM, headers=alice(stack), json=body
        ) as response:
            assert response.status == 503
            assert (await response.json())["code"] == "mapping_unavailable"
    assert len(stack.platform.seen) == 1


async def test_with_the_cache_a_lost_store_is_noticed_by_the_next_ping(
    make_stack: Callable[..., Awaitable[DemoStack]],
    pg_relay: TcpRelay,
    http: aiohttp.ClientSession,
) -> None:
    stack = await make_stack(
        {
            "store": {"database_url": pg_relay.url, "health_interval": 0.2},
            "mapping": {"cache_ttl": 60},
        }
    )
    async with http.get(stack.urls["proxy"] + PM, headers=alice(stack)) as response:
        assert response.status == 200  # the mapping is cached from here on
    await pg_relay.cut()
    assert stack.proxy is not None
    for _ in range(200):
        if not stack.proxy.store.reachable:
            break
        await asyncio.sleep(0.05)
    assert not stack.proxy.store.reachable
    forwarded = len(stack.platform.seen)
    for method, body in (("GET", None), ("POST", CARD)):
        async with http.request(
            method, stack.urls["proxy"] + PM, headers=alice(stack), json=body
        ) as response:
            assert response.status == 503
            assert (await response.json())["code"] == "mapping_unavailable"
    assert len(stack.platform.seen) == forwarded

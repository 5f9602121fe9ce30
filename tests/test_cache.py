"""The hot-path caches: a bounded TTL cache, mapping lookups and verified tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from dragoman.cache import TtlCache
from dragoman.demo.runner import DemoStack
from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.factory import open_mapping_store
from dragoman.mapping.store import MappingStore, make_engine

PM = "/v1/customers/cus_alice/payment-methods"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_until_its_deadline() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, clock)
    cache.put("a", 1, deadline=1010.0)
    clock.now = 1009.9
    assert cache.get("a") == 1
    clock.now = 1010.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_a_full_cache_drops_expired_then_oldest_entries() -> None:
    clock = Clock()
    cache: TtlCache[int, int] = TtlCache(10, clock)
    for key in range(10):
        cache.put(key, key, deadline=1001.0 if key < 3 else 2000.0)
    clock.now = 1500.0
    cache.put(10, 10, deadline=2000.0)
    assert [cache.get(k) for k in (0, 1, 2)] == [None, None, None]
    assert cache.get(10) == 10
    for key in range(11, 14):
        cache.put(key, key, deadline=2000.0)
    assert len(cache) <= 10
    assert cache.get(13) == 13


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def suspend_elsewhere(stack: DemoStack) -> None:
    """Suspend alice's mapping through another store, as the CLI or another instance would."""
    assert stack.settings is not None
    other = open_mapping_store(stack.settings, make_engine(stack.settings.store.database_url))
    try:
        mapping = await other.find_by_account("acct-1001")
        assert mapping is not None
        await other.update(
            mapping.id, expected_version=mapping.version, actor="ops", status="suspended"
        )
    finally:
        await other.close()


async def status_of(http: aiohttp.ClientSession, stack: DemoStack, headers: dict[str, str]) -> int:
    async with http.get(stack.urls["proxy"] + PM, headers=headers) as response:
        return response.status


async def test_a_suspension_made_elsewhere_applies_within_the_cache_ttl(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"mapping": {"cache_ttl": 0.5}})
    headers = alice(stack)
    assert await status_of(http, stack, headers) == 200
    await suspend_elsewhere(stack)
    for _ in range(100):
        if await status_of(http, stack, headers) == 403:
            break
        await asyncio.sleep(0.05)
    assert await status_of(http, stack, headers) == 403


async def test_without_the_cache_a_suspension_made_elsewhere_applies_at_once(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"mapping": {"cache_ttl": 0}})
    headers = alice(stack)
    assert await status_of(http, stack, headers) == 200
    await suspend_elsewhere(stack)
    assert await status_of(http, stack, headers) == 403


async def test_a_suspension_through_the_proxys_own_store_applies_at_once(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = alice(stack)
    assert await status_of(http, stack, headers) == 200
    assert stack.proxy is not None
    mapping = await stack.proxy.store.find_by_account("acct-1001")
    assert mapping is not None
    await stack.proxy.store.update(
        mapping.id, expected_version=mapping.version, actor="ops", status="suspended"
    )
    assert await status_of(http, stack, headers) == 403


async def test_concurrent_misses_for_one_account_share_one_query(
    tmp_path: Path, cipher: MappingCipher
) -> None:
    from dragoman.mapping.entity import Grant
    from dragoman.state import migrate

    store = MappingStore(
        make_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"), cipher=cipher, cache_ttl=60
    )
    try:
        await migrate.upgrade(store.engine)
        await store.add(
            cloud_account="acct-1",
            payment_customer="cus_1",
            created_by="test",
            verification_method="manual",
            grants=[Grant(role="r", operations=("*",))],
        )
        lookups: list[str] = []

        def count(statement: str) -> None:
            if "FROM account_mappings" in statement:
                lookups.append(statement)

        store.trace_lookups(count)

        found = await asyncio.gather(*(store.find_by_account("acct-1") for _ in range(50)))
        assert {m.payment_customer for m in found if m is not None} == {"cus_1"}
        assert len(lookups) == 1
    finally:
        await store.close()

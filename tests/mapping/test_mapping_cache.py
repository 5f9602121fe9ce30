"""The mapping lookup cache: an entry is re-read in the background in its last 30% of life
while it is still served (one query at a time), never served past its lifetime, and lifetimes
are spread so that entries cached together do not expire together."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mapping_helpers import link
from sqlalchemy import text

from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.entity import MappingStatus
from dragoman.mapping.store import MappingStore, StoreUnavailable, make_engine
from dragoman.state import migrate

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stores(
    database_url: str, cipher: MappingCipher, clock: Clock
) -> AsyncIterator[tuple[MappingStore, MappingStore]]:
    """A caching store, and another instance's store writing to the same database (SQLite
    and PostgreSQL)."""
    async for pair in open_stores(database_url, cipher, clock):
        yield pair


@pytest.fixture
async def sqlite_stores(
    tmp_path: Path, cipher: MappingCipher, clock: Clock
) -> AsyncIterator[tuple[MappingStore, MappingStore]]:
    async for pair in open_stores(f"sqlite+aiosqlite:///{tmp_path / 'mappings.db'}", cipher, clock):
        yield pair


async def open_stores(
    url: str, cipher: MappingCipher, clock: Clock
) -> AsyncIterator[tuple[MappingStore, MappingStore]]:
    engine = make_engine(url)
    await migrate.upgrade(engine)
    cached = MappingStore(engine, cipher=cipher, cache_ttl=TTL, monotonic=clock)
    other = MappingStore(make_engine(url), cipher=cipher)
    yield cached, other
    await cached.close()
    await other.close()


async def deactivate(store: MappingStore, mapping_id: str) -> None:
    mapping = await store.get(mapping_id)
    await store.update(
        mapping_id,
        expected_version=mapping.version,
        actor="test",
        status=MappingStatus.SUSPENDED,
    )


async def settle(store: MappingStore) -> None:
    if store._refresher is not None:
        await store._refresher


async def test_entry_is_refreshed_in_the_background_while_still_served(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    mapping_id = await link(other, "acct-1")
    assert (await cached.find_by_account("acct-1")).status is MappingStatus.ACTIVE  # type: ignore[union-attr]
    await deactivate(other, mapping_id)
    clock.now = 0.85 * TTL  # past every entry's refresh point (70% of at most TTL)
    served = await cached.find_by_account("acct-1")
    assert served is not None and served.status is MappingStatus.ACTIVE  # not waited for
    await settle(cached)
    again = await cached.find_by_account("acct-1")
    assert again is not None and again.status is MappingStatus.SUSPENDED


async def test_entry_is_never_served_past_its_lifetime(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    mapping_id = await link(other, "acct-1")
    await cached.find_by_account("acct-1")
    await deactivate(other, mapping_id)
    clock.now = TTL + 0.001
    found = await cached.find_by_account("acct-1")
    assert found is not None and found.status is MappingStatus.SUSPENDED


async def test_failed_background_refresh_refuses_the_next_lookup(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    await link(other, "acct-1")
    await cached.find_by_account("acct-1")
    async with other.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE account_mappings RENAME TO gone"))
    clock.now = 0.85 * TTL
    await cached.find_by_account("acct-1")  # still within its life: served, refresh fails
    await settle(cached)
    with pytest.raises(StoreUnavailable):
        await cached.find_by_account("acct-1")


async def test_entries_cached_together_get_spread_lifetimes(
    stores: tuple[MappingStore, MappingStore],
) -> None:
    cached, other = stores
    for i in range(50):
        await link(other, f"acct-{i}")
    for i in range(50):
        await cached.find_by_account(f"acct-{i}")
    deadlines = sorted(deadline for deadline, _ in cached._cache._entries.values())
    assert deadlines[-1] - deadlines[0] > 0.05 * TTL
    assert all(0.9 * TTL <= d <= TTL for d in deadlines)


async def test_refresh_of_an_unchanged_row_reuses_the_opened_mapping(
    stores: tuple[MappingStore, MappingStore], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached, other = stores
    await link(other, "acct-1")
    first = await cached.find_by_account("acct-1")
    opened: list[object] = []
    real_entity = cached.codec.entity
    monkeypatch.setattr(cached.codec, "entity", lambda row: opened.append(row) or real_entity(row))
    clock.now = 0.85 * TTL
    await cached.find_by_account("acct-1")
    await settle(cached)
    assert cached._refresh_queue == collections.deque()  # the refresh ran ...
    assert opened == []  # ... and opened nothing: the row had not changed
    assert await cached.find_by_account("acct-1") is first


async def test_refresh_of_a_changed_row_opens_it_again(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    mapping_id = await link(other, "acct-1")
    first = await cached.find_by_account("acct-1")
    await deactivate(other, mapping_id)
    clock.now = 0.85 * TTL
    await cached.find_by_account("acct-1")
    await settle(cached)
    again = await cached.find_by_account("acct-1")
    assert again is not first
    assert again is not None and again.status is MappingStatus.SUSPENDED


async def test_background_refreshes_let_requests_run_between_them(
    sqlite_stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    """A SQLite lookup never suspends, so a queue of refreshes worked through in one go
    would hold the loop (and every waiting request) until the queue is empty."""
    cached, other = sqlite_stores
    for i in range(5):
        await link(other, f"acct-{i}")
        await cached.find_by_account(f"acct-{i}")
    events: list[str] = []
    cached.trace_lookups(lambda _statement: events.append("query"))
    clock.now = 0.85 * TTL
    for i in range(5):
        await cached.find_by_account(f"acct-{i}")  # queues five refreshes

    async def request() -> None:
        for _ in range(5):
            events.append("request")
            await asyncio.sleep(0)

    await asyncio.gather(settle(cached), request())
    assert events.count("query") == 5
    assert "query,query" not in ",".join(events)


@pytest.fixture
async def pg_stores(
    postgres_url: str, cipher: MappingCipher, clock: Clock
) -> AsyncIterator[tuple[MappingStore, MappingStore]]:
    async for pair in open_stores(postgres_url, cipher, clock):
        yield pair


async def test_a_lookup_overlapping_a_write_of_this_store_is_not_cached(
    pg_stores: tuple[MappingStore, MappingStore],
) -> None:
    """On PostgreSQL a lookup awaits the network: a suspension written through the same
    store meanwhile must not be undone by caching the row the lookup read before it."""
    cached, _other = pg_stores
    mapping_id = await link(cached, "acct-1")
    reads = cached._pg_reads
    assert reads is not None
    read_first = reads.first

    async def read_then_suspend(**params: str) -> object:
        row = await read_first(**params)  # the row as it was: active
        await deactivate(cached, mapping_id)  # written and forgotten meanwhile
        return row

    reads.first = read_then_suspend  # type: ignore[method-assign,assignment]
    overlapping = await cached.find_by_account("acct-1")
    reads.first = read_first  # type: ignore[method-assign]
    assert overlapping is not None and overlapping.status is MappingStatus.ACTIVE
    after = await cached.find_by_account("acct-1")
    assert after is not None and after.status is MappingStatus.SUSPENDED

"""The mapping lookup cache: an entry is re-read in the background in its last 30% of life
while it is still served (entries coming due together with one query, one query at a
time), never served past its lifetime, and lifetimes are spread so that entries cached
together do not expire together."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mapping_helpers import assert_searches_the_account_index, link
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from dragoman.mapping.compiled import CompiledStatement
from dragoman.mapping.crypto import MappingCipher, MappingCryptoError
from dragoman.mapping.entity import MappingStatus
from dragoman.mapping.store import (
    BY_ACCOUNTS_PG,
    BY_ACCOUNTS_SQLITE,
    MappingStore,
    StoreUnavailable,
    make_engine,
)
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


async def test_entries_coming_due_together_are_refreshed_with_one_query(
    sqlite_stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = sqlite_stores
    for i in range(5):
        await link(other, f"acct-{i}")
        await cached.find_by_account(f"acct-{i}")
    sent: list[str] = []
    cached.trace_lookups(sent.append)
    clock.now = 0.85 * TTL
    for i in range(5):
        await cached.find_by_account(f"acct-{i}")  # queues five refreshes
    await settle(cached)
    assert len(sent) == 1 and "json_each" in sent[0]
    assert all(cached.codec.account_index(f"acct-{i}") in sent[0] for i in range(5))


async def test_batched_refreshes_each_see_the_change_made_elsewhere(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    ids = [await link(other, f"acct-{i}") for i in range(3)]
    for i in range(3):
        await cached.find_by_account(f"acct-{i}")
    await deactivate(other, ids[1])
    clock.now = 0.85 * TTL
    for i in range(3):
        await cached.find_by_account(f"acct-{i}")
    await settle(cached)
    statuses = [(await cached.find_by_account(f"acct-{i}")).status for i in range(3)]  # type: ignore[union-attr]
    assert statuses == [MappingStatus.ACTIVE, MappingStatus.SUSPENDED, MappingStatus.ACTIVE]


async def test_a_batched_refresh_finds_the_live_link_before_a_revoked_one(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    first = await link(other, "acct-1")
    await cached.find_by_account("acct-1")
    await other.update(first, expected_version=1, actor="test", status=MappingStatus.REVOKED)
    second = await link(other, "acct-1")
    await link(other, "acct-2")
    await cached.find_by_account("acct-2")
    clock.now = 0.85 * TTL
    await cached.find_by_account("acct-1")
    await cached.find_by_account("acct-2")
    await settle(cached)
    found = await cached.find_by_account("acct-1")
    assert found is not None and found.id == second


async def test_an_account_unlinked_since_is_dropped_by_its_batched_refresh(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    await link(other, "acct-1")
    await link(other, "acct-2")
    for account in ("acct-1", "acct-2"):
        await cached.find_by_account(account)
    async with other.engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM account_mappings WHERE cloud_account_index = :index"),
            {"index": other.codec.account_index("acct-2")},
        )
    clock.now = 0.85 * TTL
    for account in ("acct-1", "acct-2"):
        await cached.find_by_account(account)
    await settle(cached)
    assert await cached.find_by_account("acct-1") is not None
    assert await cached.find_by_account("acct-2") is None


async def test_a_row_that_does_not_open_spoils_only_its_own_refresh(
    stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    cached, other = stores
    ids = [await link(other, f"acct-{i}") for i in range(2)]
    first = await cached.find_by_account("acct-0")
    await cached.find_by_account("acct-1")
    await deactivate(other, ids[1])
    async with other.engine.begin() as conn:  # tampered: the sealed key no longer opens
        await conn.execute(
            text("UPDATE account_mappings SET data_key_kek = 'other' WHERE id = :id"),
            {"id": ids[0]},
        )
    clock.now = 0.85 * TTL
    for i in range(2):
        await cached.find_by_account(f"acct-{i}")
    await settle(cached)
    assert cached.reachable
    assert await cached.find_by_account("acct-0") is first  # kept for the rest of its life
    changed = await cached.find_by_account("acct-1")
    assert changed is not None and changed.status is MappingStatus.SUSPENDED
    clock.now = TTL + 0.001
    with pytest.raises(MappingCryptoError):
        await cached.find_by_account("acct-0")


async def test_background_refreshes_let_requests_run_between_their_queries(
    sqlite_stores: tuple[MappingStore, MappingStore],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SQLite lookup never suspends, so a queue of refreshes worked through in one go
    would hold the loop (and every waiting request) until the queue is empty."""
    monkeypatch.setattr("dragoman.mapping.store.REFRESH_BATCH", 2)
    cached, other = sqlite_stores
    for i in range(6):
        await link(other, f"acct-{i}")
        await cached.find_by_account(f"acct-{i}")
    events: list[str] = []
    cached.trace_lookups(lambda _statement: events.append("query"))
    clock.now = 0.85 * TTL
    for i in range(6):
        await cached.find_by_account(f"acct-{i}")  # queues six refreshes: three queries

    async def request() -> None:
        for _ in range(50):
            events.append("request")
            await asyncio.sleep(0)

    await asyncio.gather(settle(cached), request())
    assert events.count("query") == 3
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


async def test_a_request_missing_an_entry_under_refresh_shares_the_refresh_query(
    pg_stores: tuple[MappingStore, MappingStore], clock: Clock
) -> None:
    """On PostgreSQL the refresh query awaits the network: a request that misses an entry
    being refreshed meanwhile waits for that query rather than sending its own."""
    cached, other = pg_stores
    for i in range(2):
        await link(other, f"acct-{i}")
        await cached.find_by_account(f"acct-{i}")
    reads = cached._pg_reads
    assert reads is not None
    rows_of, first_of = reads.rows, reads.first
    asked, release = asyncio.Event(), asyncio.Event()
    singles: list[object] = []

    async def held_rows(**params: object) -> object:
        asked.set()
        await release.wait()
        return await rows_of(**params)  # type: ignore[arg-type]

    async def counted_first(**params: object) -> object:
        singles.append(params)
        return await first_of(**params)  # type: ignore[arg-type]

    reads.rows = held_rows  # type: ignore[method-assign,assignment]
    reads.first = counted_first  # type: ignore[method-assign,assignment]
    clock.now = 0.85 * TTL
    for i in range(2):
        await cached.find_by_account(f"acct-{i}")
    await asyncio.wait_for(asked.wait(), 5)
    cached._cache.discard("acct-0")  # as if the entry had expired meanwhile
    missing = asyncio.create_task(cached.find_by_account("acct-0"))
    await asyncio.sleep(0.01)
    assert not missing.done()
    release.set()
    found = await asyncio.wait_for(missing, 5)
    await settle(cached)
    assert found is not None and singles == []


async def test_the_batched_refresh_query_reads_by_the_account_index(
    stores: tuple[MappingStore, MappingStore],
) -> None:
    cached, other = stores
    for i in range(3):
        await link(other, f"acct-{i}")
    indexes = [cached.codec.account_index(f"acct-{i}") for i in range(3)]
    sqlite = cached.engine.dialect.name == "sqlite"
    if sqlite:
        compiled = CompiledStatement(BY_ACCOUNTS_SQLITE, SQLiteDialect_pysqlite())
        statement, parameters = compiled.bind(indexes=json.dumps(indexes))
    else:
        compiled = CompiledStatement(BY_ACCOUNTS_PG, asyncpg_dialect.dialect())  # type: ignore[no-untyped-call]
        statement, parameters = compiled.bind(indexes=indexes)
    await assert_searches_the_account_index(cached, statement, parameters)

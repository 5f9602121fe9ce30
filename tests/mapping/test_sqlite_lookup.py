"""The in-place lookup by account on SQLite (dragoman.mapping.sqlite_lookup): it reads what
SQLAlchemy would read, sees every committed write, and fails as an unreachable store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import mapping_helpers as helpers
import pytest
from sqlalchemy import text

from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.entity import Grant, MappingStatus
from dragoman.mapping.schema import account_mappings
from dragoman.mapping.store import BY_ACCOUNT, MappingStore, StoreUnavailable, make_engine
from dragoman.state import migrate


@pytest.fixture
async def store(tmp_path: Path, cipher: MappingCipher) -> AsyncIterator[MappingStore]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'mappings.db'}")
    await migrate.upgrade(engine)
    opened = MappingStore(engine, cipher=cipher)
    yield opened
    await opened.close()


async def link(store: MappingStore, account: str) -> str:
    return await helpers.link(store, account, [Grant(role="viewer", operations=("list_*",))])


async def test_a_lookup_reads_every_column_as_sqlalchemy_reads_it(store: MappingStore) -> None:
    await link(store, "acct-1")
    index = store.codec.account_index("acct-1")
    async with store.engine.connect() as conn:
        expected = (await conn.execute(BY_ACCOUNT, {"index": index})).one()
    assert store._reads is not None
    row = store._reads.first(index=index)
    assert row is not None
    for column in account_mappings.columns:
        assert getattr(row, column.name) == getattr(expected, column.name), column.name


async def test_a_lookup_opens_the_same_mapping_as_a_read_through_sqlalchemy(
    store: MappingStore,
) -> None:
    mapping_id = await link(store, "acct-1")
    found = await store.find_by_account("acct-1")
    assert found == await store.get(mapping_id)
    assert found is not None and found.grants[0].operations == ("list_*",)


async def test_a_lookup_sees_a_write_committed_after_its_connection_opened(
    store: MappingStore,
) -> None:
    assert await store.find_by_account("acct-1") is None  # the reader's connection is open
    await link(store, "acct-1")
    found = await store.find_by_account("acct-1")
    assert found is not None and found.status is MappingStatus.ACTIVE
    other = await store.find_by_account("acct-2")
    assert other is None


async def test_a_lookup_finds_the_live_link_before_a_revoked_one(store: MappingStore) -> None:
    first = await link(store, "acct-1")
    await store.update(first, expected_version=1, actor="test", status="revoked")
    second = await link(store, "acct-1")
    found = await store.find_by_account("acct-1")
    assert found is not None and found.id == second


async def rename_table(store: MappingStore, old: str, new: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_a_failed_lookup_makes_the_store_unavailable(store: MappingStore) -> None:
    await link(store, "acct-1")
    assert await store.find_by_account("acct-1") is not None
    await rename_table(store, "account_mappings", "hidden_mappings")
    with pytest.raises(StoreUnavailable):
        await store.find_by_account("acct-1")
    assert store.reachable is False


async def test_the_lookup_works_again_once_the_database_answers_again(
    store: MappingStore,
) -> None:
    await link(store, "acct-1")
    await rename_table(store, "account_mappings", "hidden_mappings")
    with pytest.raises(StoreUnavailable):
        await store.find_by_account("acct-1")
    await rename_table(store, "hidden_mappings", "account_mappings")
    found = await store.find_by_account("acct-1")
    assert found is not None and store.reachable is True


async def test_a_lookup_sends_the_statement_it_reports(store: MappingStore) -> None:
    sent: list[str] = []
    store.trace_lookups(sent.append)
    await store.find_by_account("acct-1")
    store.trace_lookups(None)
    statement, parameters = store.lookup_statement("acct-1")
    assert len(sent) == 1
    assert sent[0].startswith(statement.split("?")[0])
    assert store.codec.account_index("acct-1") in sent[0] and parameters[0] in sent[0]

"""Optimistic updates under real concurrency: two writers from two engines (two connection
pools, as two proxy instances or an operator and the reconciler would be) race on one
mapping; exactly one wins and nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus
from dragoman.mapping.store import MappingStore, VersionConflict, make_engine
from dragoman.state import migrate

ROUNDS = 20


@pytest.fixture
async def two_stores(
    postgres_url: str, cipher: MappingCipher
) -> AsyncIterator[tuple[MappingStore, MappingStore]]:
    first = MappingStore(make_engine(postgres_url), cipher=cipher)
    second = MappingStore(make_engine(postgres_url), cipher=cipher)
    await migrate.upgrade(first.engine)
    yield first, second
    await first.close()
    await second.close()


async def _update(
    store: MappingStore, read: AccountMapping, writer: str
) -> AccountMapping | VersionConflict:
    try:
        return await store.update(
            read.id,
            expected_version=read.version,
            actor=writer,
            verification_evidence=f"evidence of {writer}",
            grants=(Grant(principal=writer, operations=("*",)),),
        )
    except VersionConflict as conflict:
        return conflict


async def test_concurrent_updates_from_two_engines_one_wins_one_conflicts(
    two_stores: tuple[MappingStore, MappingStore],
) -> None:
    first, second = two_stores
    created = await first.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="ops",
        verification_method="manual",
        status=MappingStatus.ACTIVE,
    )
    for round_number in range(ROUNDS):
        # Both writers read the same version before either writes.
        read_a, read_b = await asyncio.gather(first.get(created.id), second.get(created.id))
        assert read_a.version == read_b.version == round_number + 1
        outcomes = await asyncio.gather(
            _update(first, read_a, f"writer-a-{round_number}"),
            _update(second, read_b, f"writer-b-{round_number}"),
        )
        winners = [o for o in outcomes if isinstance(o, AccountMapping)]
        conflicts = [o for o in outcomes if isinstance(o, VersionConflict)]
        assert len(winners) == 1, f"round {round_number}: {outcomes}"
        assert len(conflicts) == 1, f"round {round_number}: {outcomes}"
        # The winner's write is exactly what is stored: no lost or mixed update.
        stored = await first.get(created.id)
        assert stored == winners[0]
        assert stored.version == round_number + 2
        assert stored.verification_evidence == f"evidence of {stored.grants[0].principal}"

"""The mapping store on SQLite and PostgreSQL: the entity round-trips, updates are optimistic,
migrations are idempotent and the schema is ready for encryption at rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus
from dragoman.mapping.store import (
    MappingExists,
    MappingNotFound,
    MappingStore,
    RevokedIsFinal,
    VersionConflict,
    make_engine,
)
from dragoman.state import migrate

GRANTS = (
    Grant(role="billing_admin", operations=("*",)),
    Grant(principal="alice", operations=("payment_methods:list", "billing_address.get")),
    Grant(role="viewer", operations=("payment_methods:*",)),
)
VALIDATED = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=UTC)


async def add_full(store: MappingStore, account: str = "acct-1001") -> AccountMapping:
    return await store.add(
        cloud_account=account,
        payment_customer="cus_alice",
        created_by="ops:carol",
        verification_method="signed-contract",
        verification_evidence="ticket://VER-42",
        grants=GRANTS,
        status=MappingStatus.SUSPENDED,
        validated_at=VALIDATED,
    )


async def test_add_returns_every_field_as_given(store: MappingStore) -> None:
    before = datetime.now(UTC)
    mapping = await add_full(store)
    after = datetime.now(UTC)
    assert mapping.cloud_account == "acct-1001"
    assert mapping.payment_customer == "cus_alice"
    assert mapping.status is MappingStatus.SUSPENDED
    assert mapping.created_by == "ops:carol"
    assert mapping.verification_method == "signed-contract"
    assert mapping.verification_evidence == "ticket://VER-42"
    assert mapping.last_validated_at == VALIDATED
    assert mapping.version == 1
    assert mapping.grants == GRANTS
    assert before <= mapping.created_at <= after


async def test_get_round_trips_the_added_mapping(store: MappingStore) -> None:
    added = await add_full(store)
    assert await store.get(added.id) == added


async def test_find_by_account_round_trips_the_added_mapping(store: MappingStore) -> None:
    added = await add_full(store)
    assert await store.find_by_account("acct-1001") == added


async def test_list_round_trips_every_mapping_in_creation_order(store: MappingStore) -> None:
    first = await add_full(store, "acct-1")
    second = await add_full(store, "acct-2")
    third = await add_full(store, "acct-3")
    assert await store.list() == [first, second, third]


async def test_timestamps_read_back_are_timezone_aware_utc(store: MappingStore) -> None:
    added = await add_full(store)
    for mapping in (added, await store.get(added.id), *(await store.list())):
        for stamp in (mapping.created_at, mapping.last_validated_at):
            assert stamp.tzinfo is not None
            assert stamp.utcoffset() == timedelta(0)


async def test_validation_time_given_in_another_timezone_is_stored_as_the_same_instant(
    store: MappingStore,
) -> None:
    plus_two = datetime(2031, 5, 17, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    added = await store.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="ops",
        verification_method="manual",
        validated_at=plus_two,
    )
    assert (await store.get(added.id)).last_validated_at == plus_two
    updated = await store.update(
        added.id, expected_version=1, actor="ops", last_validated_at=plus_two + timedelta(hours=1)
    )
    assert updated.last_validated_at == datetime(2031, 5, 17, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize("status", list(MappingStatus))
async def test_every_status_round_trips(store: MappingStore, status: MappingStatus) -> None:
    added = await store.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="ops",
        verification_method="manual",
        status=status,
    )
    assert (await store.get(added.id)).status is status


async def test_mapping_without_grants_and_evidence_round_trips(store: MappingStore) -> None:
    added = await store.add(
        cloud_account="acct-1001",
        payment_customer="cus_alice",
        created_by="ops",
        verification_method="manual",
    )
    found = await store.get(added.id)
    assert found.grants == ()
    assert found.verification_evidence is None
    assert found.status is MappingStatus.ACTIVE


async def test_unknown_account_is_not_found(store: MappingStore) -> None:
    await add_full(store)
    assert await store.find_by_account("acct-9999") is None


async def test_get_of_an_unknown_id_raises_mapping_not_found(store: MappingStore) -> None:
    with pytest.raises(MappingNotFound):
        await store.get("00000000-0000-0000-0000-000000000000")


async def test_second_mapping_for_one_cloud_account_raises_mapping_exists(
    store: MappingStore,
) -> None:
    first = await add_full(store)
    with pytest.raises(MappingExists):
        await store.add(
            cloud_account="acct-1001",
            payment_customer="cus_mallory",
            created_by="ops:mallory",
            verification_method="manual",
            grants=GRANTS,
        )
    assert await store.list() == [first]


async def test_update_at_the_current_version_applies_changes_and_bumps_version(
    store: MappingStore,
) -> None:
    added = await add_full(store)
    validated = datetime(2031, 6, 1, tzinfo=UTC)
    grants = (Grant(principal="bob", operations=("payment_methods:read",)),)
    updated = await store.update(
        added.id,
        expected_version=1,
        actor="ops:dave",
        status=MappingStatus.ACTIVE,
        grants=grants,
        last_validated_at=validated,
        verification_method="platform-reconciliation",
        verification_evidence="recon://2031-06-01",
    )
    assert updated.version == 2
    assert updated.status is MappingStatus.ACTIVE
    assert updated.grants == grants
    assert updated.last_validated_at == validated
    assert updated.verification_method == "platform-reconciliation"
    assert updated.verification_evidence == "recon://2031-06-01"
    assert await store.get(added.id) == updated


async def test_update_keeps_identity_and_creation_fields(store: MappingStore) -> None:
    added = await add_full(store)
    updated = await store.update(added.id, expected_version=1, actor="ops:dave", status="active")
    assert (updated.id, updated.cloud_account, updated.payment_customer) == (
        added.id,
        added.cloud_account,
        added.payment_customer,
    )
    assert (updated.created_at, updated.created_by) == (added.created_at, added.created_by)


async def test_update_with_a_stale_version_raises_version_conflict_and_changes_nothing(
    store: MappingStore,
) -> None:
    added = await add_full(store)
    current = await store.update(added.id, expected_version=1, actor="ops:a", status="active")
    with pytest.raises(VersionConflict):
        await store.update(added.id, expected_version=1, actor="ops:b", status="revoked")
    assert await store.get(added.id) == current


async def test_update_of_an_unknown_id_raises_mapping_not_found(store: MappingStore) -> None:
    with pytest.raises(MappingNotFound):
        await store.update(
            "00000000-0000-0000-0000-000000000000",
            expected_version=1,
            actor="ops",
            status="suspended",
        )


async def test_update_refuses_to_change_the_linked_customer(store: MappingStore) -> None:
    added = await add_full(store)
    with pytest.raises(ValueError, match="payment_customer"):
        await store.update(
            added.id, expected_version=1, actor="ops", payment_customer="cus_mallory"
        )
    assert await store.get(added.id) == added


async def test_database_before_migrations_has_no_revision(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert await migrate.current_revision(engine) is None
    finally:
        await engine.dispose()


async def test_migrations_run_twice_are_a_noop(database_url: str, cipher: MappingCipher) -> None:
    engine = make_engine(database_url)
    try:
        await migrate.upgrade(engine)
        added = await add_full(MappingStore(engine, cipher=cipher))
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        assert await MappingStore(engine, cipher=cipher).list() == [added]
    finally:
        await engine.dispose()


def _columns(connection: Connection) -> set[str]:
    return {column["name"] for column in inspect(connection).get_columns("account_mappings")}


async def test_schema_has_the_encryption_columns(store: MappingStore) -> None:
    async with store.engine.connect() as connection:
        columns = await connection.run_sync(_columns)
    assert {
        "payment_customer_ciphertext",
        "payment_customer_index",
        "cloud_account_ciphertext",
        "verification_evidence_ciphertext",
        "data_key_wrapped",
        "data_key_kek",
        "cloud_account_index",
    } <= columns


async def test_revoked_is_final(store: MappingStore) -> None:
    mapping = await add_full(store)
    revoked = await store.update(
        mapping.id, expected_version=mapping.version, actor="ops", status="revoked"
    )
    for status in ("active", "suspended", "stale"):
        with pytest.raises(RevokedIsFinal):
            await store.update(
                revoked.id, expected_version=revoked.version, actor="ops", status=status
            )
    assert (await store.get(mapping.id)).status is MappingStatus.REVOKED

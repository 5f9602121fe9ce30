"""Helpers of the mapping tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from collections.abc import Sequence

from dragoman.mapping.entity import Grant
from dragoman.mapping.store import MappingStore


async def link(store: MappingStore, account: str, grants: Sequence[Grant] = ()) -> str:
    """Link ``account`` to ``cus_<account>``; the new mapping's id."""
    mapping = await store.add(
        cloud_account=account,
        payment_customer="cus_" + account,
        created_by="test",
        verification_method="test",
        grants=grants,
    )
    return mapping.id


async def assert_searches_the_account_index(
    store: MappingStore, statement: str, parameters: tuple[object, ...]
) -> None:
    """``statement``, explained by the database itself, reads through the index of the
    account's blind index: a scan would make every lookup cost the whole table."""
    async with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            explain = "EXPLAIN QUERY PLAN "
        else:
            await conn.exec_driver_sql("SET enable_seqscan = off")  # the table is tiny
            explain = "EXPLAIN "
        plan = " ".join(
            str(row[-1]) for row in await conn.exec_driver_sql(explain + statement, parameters)
        )
    assert "ix_account_mappings_cloud_account_index" in plan, plan
    assert "SCAN account_mappings" not in plan and "Seq Scan" not in plan, plan

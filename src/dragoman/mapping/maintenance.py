"""Work on the mapping table as a whole: sealing rows written before encryption at rest,
and re-wrapping data keys under a new key-encryption key (``dragoman mappings rekey``).

Both run while the proxy serves: each batch of rows changes in one short transaction, every
row guarded by what it expects to find, so a concurrent writer is never overwritten and an
interrupted run resumes where it stopped (it only ever looks for rows not done yet).

Both walk the table in primary-key order from where the previous batch ended (keyset
pagination), so each batch costs the same however much of the table is done; a last pass
from the start picks up rows written meanwhile behind the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from dragoman.mapping.crypto import MappingCryptoError
from dragoman.mapping.schema import account_mappings as t
from dragoman.mapping.store import MappingStore
from dragoman.settings import Settings

Progress = Callable[[int, int], None]
"""Called after each batch with (re-wrapped so far, to re-wrap in all as counted at the
start; never less than the first)."""

UNSEALED = None
"""The key of :func:`keks_in_use` for rows that have no data key yet (not sealed)."""


async def _batch(
    store: MappingStore, condition: ColumnElement[bool], after: str, size: int, *columns: Any
) -> list[Any]:
    async with store.engine.connect() as conn:
        query = select(*columns).where(condition, t.c.id > after).order_by(t.c.id).limit(size)
        return list((await conn.execute(query)).all())


async def seal_plaintext(store: MappingStore, *, batch_size: int = 500) -> int:
    """Seal rows that still hold a plaintext account or customer (written before revision
    0003), under the active KEK. Returns how many were sealed.

    On SQLite the write-ahead log is then checkpointed and truncated: it would otherwise
    keep the pre-seal images of the pages (plaintext) until they are overwritten. Deleted
    content of the database file itself is zeroed (``secure_delete``). PostgreSQL keeps
    the old row versions in its data files until VACUUM reclaims them (docs/mappings.md).
    """
    plaintext = t.c.cloud_account.is_not(None) | t.c.payment_customer.is_not(None)
    sealed = 0
    while True:
        after, in_pass = "", 0
        while batch := await _batch(store, plaintext, after, batch_size, t):
            async with store.engine.begin() as conn:
                for row in batch:
                    if row.cloud_account is None or row.payment_customer is None:
                        # Half a plaintext row (altered by hand?) cannot be sealed: left as
                        # it is, and refused when read if it has no data key.
                        continue
                    values = store.codec.sealed_values(
                        row.id,
                        cloud_account=row.cloud_account,
                        payment_customer=row.payment_customer,
                        verification_evidence=row.verification_evidence,
                    )
                    result = await conn.execute(
                        update(t).where(t.c.id == row.id, plaintext).values(**values)
                    )
                    in_pass += result.rowcount
            after = batch[-1].id
        sealed += in_pass
        if in_pass == 0:
            # A pass over the whole table found nothing left (a row written behind the
            # walk by an instance still on revision 0002 is found by the next pass).
            break
    if sealed and store.engine.dialect.name == "sqlite":
        async with store.engine.connect() as conn:
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    return sealed


async def keks_in_use(store: MappingStore) -> dict[str | None, int]:
    """How many mappings have their data key wrapped by each KEK id (``None``: not sealed)."""
    async with store.engine.connect() as conn:
        query = select(t.c.data_key_kek, func.count()).group_by(t.c.data_key_kek)
        return {kek: int(count) for kek, count in (await conn.execute(query)).all()}


def missing_keks(store: MappingStore, in_use: dict[str | None, int]) -> list[str]:
    """KEK ids that wrap some data key but are not configured (sorted)."""
    configured = store.codec.cipher.kek_ids
    return sorted(kek for kek in in_use if kek is not None and kek not in configured)


async def count_to_rekey(store: MappingStore) -> int:
    active = store.codec.cipher.active_kek
    async with store.engine.connect() as conn:
        query = select(func.count()).select_from(t).where(t.c.data_key_kek != active)
        return int((await conn.execute(query)).scalar_one())


async def rekey(
    store: MappingStore, *, batch_size: int = 500, progress: Progress | None = None
) -> int:
    """Re-wrap every data key not wrapped by the active KEK. Returns how many were.

    Refuses (:class:`MappingCryptoError`, naming the KEK ids, before changing anything)
    when some data key is wrapped by a KEK that is not configured. A row that does not open
    stops the run with the same error; the batches before it stay done.
    """
    cipher = store.codec.cipher
    active = cipher.active_kek
    missing = missing_keks(store, await keks_in_use(store))
    if missing:
        raise MappingCryptoError(
            "data keys are wrapped by KEK(s) that are not configured: "
            + ", ".join(repr(kek) for kek in missing)
        )
    total = await count_to_rekey(store)
    to_rekey = t.c.data_key_kek != active
    columns = (t.c.id, t.c.data_key_wrapped, t.c.data_key_kek)
    done = 0
    while True:
        after, in_pass = "", 0
        while batch := await _batch(store, to_rekey, after, batch_size, *columns):
            async with store.engine.begin() as conn:
                for row in batch:
                    wrapped, kek = cipher.rewrap(row.id, row.data_key_wrapped, row.data_key_kek)
                    result = await conn.execute(
                        update(t)
                        .where(t.c.id == row.id, t.c.data_key_kek == row.data_key_kek)
                        .values(data_key_wrapped=wrapped, data_key_kek=kek)
                    )
                    in_pass += result.rowcount
            after = batch[-1].id
            if progress is not None:
                progress(done + in_pass, max(total, done + in_pass))
        done += in_pass
        if in_pass == 0:
            # A pass over the whole table found nothing left to do.
            return done


async def upgrade_store(settings: Settings, engine: AsyncEngine) -> None:
    """Bring the state store to the code's schema and seal any row written before mappings
    were encrypted at rest: what `db upgrade`, `serve` and every store command do first."""
    from dragoman.mapping.factory import open_mapping_store
    from dragoman.state import migrate

    await migrate.upgrade(engine)
    await seal_plaintext(open_mapping_store(settings, engine))

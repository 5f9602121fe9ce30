"""Work on the mapping table as a whole: sealing rows written before encryption at rest,
and re-wrapping data keys under a new key-encryption key (``dragoman mappings rekey``).

Both run while the proxy serves: each row changes in its own small transaction, guarded by
what it expects to find, so a concurrent writer is never overwritten and an interrupted run
resumes where it stopped (it only ever looks for rows not done yet).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select, update

from dragoman.mapping.schema import account_mappings as t
from dragoman.mapping.store import MappingStore

Progress = Callable[[int, int], None]
"""Called with (done so far, still to do at the start of the batch)."""


async def seal_plaintext(store: MappingStore) -> int:
    """Seal rows that still hold a plaintext account or customer (written before revision
    0003). Returns how many were sealed."""
    sealed = 0
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(t).where(t.c.cloud_account.is_not(None)))).all()
    for row in rows:
        values = store.codec.sealed_values(
            row.id,
            cloud_account=row.cloud_account,
            payment_customer=row.payment_customer,
            verification_evidence=row.verification_evidence,
        )
        async with store.engine.begin() as conn:
            result = await conn.execute(
                update(t).where(t.c.id == row.id, t.c.cloud_account.is_not(None)).values(**values)
            )
            sealed += result.rowcount
    return sealed


async def count_to_rekey(store: MappingStore) -> int:
    active = store.codec.cipher.active_kek
    async with store.engine.connect() as conn:
        query = select(func.count()).select_from(t).where(t.c.data_key_kek != active)
        return int((await conn.execute(query)).scalar_one())


async def rekey(
    store: MappingStore, *, batch_size: int = 500, progress: Progress | None = None
) -> int:
    """Re-wrap every data key not wrapped by the active KEK. Returns how many were."""
    cipher = store.codec.cipher
    active = cipher.active_kek
    done = 0
    while True:
        async with store.engine.connect() as conn:
            batch = (
                await conn.execute(
                    select(t.c.id, t.c.data_key_wrapped, t.c.data_key_kek)
                    .where(t.c.data_key_kek != active)
                    .order_by(t.c.id)
                    .limit(batch_size)
                )
            ).all()
        if not batch:
            return done
        async with store.engine.begin() as conn:
            for row in batch:
                wrapped, kek = cipher.rewrap(row.id, row.data_key_wrapped, row.data_key_kek)
                result = await conn.execute(
                    update(t)
                    .where(t.c.id == row.id, t.c.data_key_kek == row.data_key_kek)
                    .values(data_key_wrapped=wrapped, data_key_kek=kek)
                )
                done += result.rowcount
        if progress is not None:
            progress(done, len(batch))

"""The key set in the shared state store.

A rotation is one transaction: insert the successor (its ``generation`` is unique) and set
the predecessor's ``deactivates_at`` to the successor's ``activates_at``, only if nobody has
set it yet. Of several instances rotating at once exactly one commits; the others get
:class:`RotationConflict`. On PostgreSQL an advisory lock keeps the others from even
creating a key at the provider; on SQLite the unique generation alone decides.

The advisory lock is held on a connection of its own, outside the engine's pool: the work
done under the lock (reading the key set, the provider's own queries, the insert) needs
pooled connections, and an engine with a pool of one (the CLI's) would otherwise wait for
itself. Closing that connection also releases the lock, whatever happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dragoman.keys.schema import signing_keys as t
from dragoman.keys.timeline import KeyRecord
from dragoman.state.sql import StoreUnavailable
from dragoman.timeouts import within

T = TypeVar("T")
_ROTATION_LOCK = 0x6B6579726F74  # "keyrot": the same for every dragoman process
_LOCK_POLL = 0.05


class RotationConflict(Exception):
    """Another instance scheduled a successor first; re-read the key set."""


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        kid=row.kid,
        generation=row.generation,
        alg=row.alg,
        provider=row.provider,
        ref=row.ref,
        public_jwk=dict(row.public_jwk),
        created_at=row.created_at,
        created_by=row.created_by,
        activates_at=row.activates_at,
        deactivates_at=row.deactivates_at,
        retired_at=row.retired_at,
    )


class KeySetStore:
    def __init__(self, engine: AsyncEngine, *, query_timeout: float = 2.0) -> None:
        self.engine = engine
        self._timeout = query_timeout
        self._lock_engine: AsyncEngine | None = None

    async def close(self) -> None:
        """Dispose of the rotation lock's engine (the shared engine is its owner's)."""
        if self._lock_engine is not None:
            await self._lock_engine.dispose()
            self._lock_engine = None

    async def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await within(self._timeout, work())
        except (RotationConflict, LookupError):
            raise
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def load(self, *, since: float | None = None) -> list[KeyRecord]:
        """Keys not yet retired, plus those retired after ``since`` (all keys if None)."""

        async def go() -> list[KeyRecord]:
            query = select(t).order_by(t.c.generation)
            if since is not None:
                query = query.where(
                    or_(t.c.retired_at.is_(None), t.c.retired_at >= since),
                    or_(t.c.deactivates_at.is_(None), t.c.deactivates_at >= since),
                )
            async with self.engine.connect() as conn:
                return [_record(row) for row in await conn.execute(query)]

        return await self._run(go)

    async def server_time(self) -> float | None:
        """The database server's clock (epoch seconds), to compare this instance's with;
        None where the store has no clock of its own (SQLite is a file on this host)."""
        if self.engine.dialect.name != "postgresql":
            return None

        async def go() -> float:
            async with self.engine.connect() as conn:
                now = await conn.execute(text("SELECT extract(epoch FROM clock_timestamp())"))
                return float(now.scalar_one())

        return await self._run(go)

    @asynccontextmanager
    async def rotation_lock(self, *, wait: bool = False) -> AsyncIterator[bool]:
        """On PostgreSQL, try the cluster-wide rotation lock (yields whether it is ours);
        elsewhere yield True and let the unique generation decide.

        With ``wait``, a lock held by another instance is tried again until the query
        timeout (a rotation on demand must not be dropped because another instance was
        reading the key set under the lock at that moment)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        if self._lock_engine is None:
            # Not from the pool (see the module docstring); NullPool closes it on release.
            self._lock_engine = create_async_engine(self.engine.url, poolclass=NullPool)
        try:
            conn = await within(self._timeout, self._lock_engine.connect())
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._timeout
            while True:
                try:
                    got = bool(
                        (
                            await within(
                                self._timeout,
                                conn.execute(
                                    text("SELECT pg_try_advisory_lock(:id)"),
                                    {"id": _ROTATION_LOCK},
                                ),
                            )
                        ).scalar_one()
                    )
                except (SQLAlchemyError, OSError, TimeoutError) as exc:
                    raise StoreUnavailable(type(exc).__name__) from None
                if got or not wait or loop.time() >= deadline:
                    break
                await asyncio.sleep(_LOCK_POLL)
            try:
                yield got
            finally:
                if got:
                    with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
                        await within(
                            self._timeout,
                            conn.execute(
                                text("SELECT pg_advisory_unlock(:id)"), {"id": _ROTATION_LOCK}
                            ),
                        )
        finally:
            # Closing the session releases the lock even if the unlock above failed.
            with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
                await conn.close()

    async def add_successor(self, key: KeyRecord, predecessor: KeyRecord | None) -> None:
        """Insert ``key``; end ``predecessor`` when ``key`` activates. All or nothing."""

        async def go() -> None:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(t.insert().values(**_values(key)))
                    if predecessor is not None:
                        await _end(conn, predecessor.kid, key.activates_at)
            except IntegrityError:
                raise RotationConflict(key.kid) from None

        await self._run(go)

    async def retire(self, kid: str, at: float) -> KeyRecord:
        """Retire ``kid`` from ``at`` on (it verifies nothing more, and stops signing).

        A successor retired while still pending gives its predecessor's end back (the
        predecessor's ``deactivates_at`` is cleared): the predecessor goes on signing until
        a new successor is scheduled, and prepublished, in its place, instead of ending at
        the retired key's activation with nobody to take over."""

        async def go() -> KeyRecord:
            async with self.engine.begin() as conn:
                row = (await conn.execute(select(t).where(t.c.kid == kid))).first()
                if row is None:
                    raise LookupError(kid)
                result = await conn.execute(
                    update(t).where(t.c.kid == kid, t.c.retired_at.is_(None)).values(retired_at=at)
                )
                if result.rowcount == 1 and row.activates_at > at:
                    await conn.execute(
                        update(t)
                        .where(
                            t.c.deactivates_at == row.activates_at,
                            t.c.generation < row.generation,
                            t.c.retired_at.is_(None),
                        )
                        .values(deactivates_at=None)
                    )
                row = (await conn.execute(select(t).where(t.c.kid == kid))).one()
                return _record(row)

        return await self._run(go)

    async def next_generation(self) -> int:
        """One more than the highest generation ever stored (retired keys included: the
        ring's view leaves out keys retired long ago, and a generation is never reused)."""

        async def go() -> int:
            async with self.engine.connect() as conn:
                highest = (
                    await conn.execute(select(func.coalesce(func.max(t.c.generation), 0)))
                ).scalar_one()
                return int(highest) + 1

        return await self._run(go)

    async def ping(self) -> None:
        async def go() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await self._run(go)


def _values(key: KeyRecord) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "generation": key.generation,
        "alg": key.alg,
        "provider": key.provider,
        "ref": key.ref,
        "public_jwk": key.public_jwk,
        "created_at": key.created_at,
        "created_by": key.created_by,
        "activates_at": key.activates_at,
        "deactivates_at": key.deactivates_at,
        "retired_at": key.retired_at,
    }


async def _end(conn: AsyncConnection, kid: str, at: float) -> None:
    # A predecessor retired meanwhile is ended too: the retirement's own rotation makes
    # the successor that signs at once. A successor written after it, due only after
    # prepublish, would leave nothing current until then (every request 503), and the
    # retirement's rotation would make nothing while it was pending.
    result = await conn.execute(
        update(t)
        .where(t.c.kid == kid, t.c.deactivates_at.is_(None), t.c.retired_at.is_(None))
        .values(deactivates_at=at)
    )
    if result.rowcount != 1:
        # Somebody ended or retired it first (their successor is the one): ours must not
        # be written.
        raise IntegrityError("predecessor already ended", None, Exception(kid))

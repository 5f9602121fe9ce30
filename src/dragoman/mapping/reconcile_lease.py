"""One reconciliation runner at a time, across processes and instances.

- PostgreSQL: a session advisory lock, held on a connection of its own (outside the
  engine's pool, as the key rotation lock in :mod:`dragoman.keys.store`). The server drops
  it when that connection ends, however the process ends (kill -9 included). The holder
  pings the connection every ``ttl / 3``; a failed ping means the lock may be gone, and
  the run stops.
- SQLite (one host): a lease row (``reconcile_lease``) naming the holder
  (``host:pid:token``) and an expiry, renewed every ``ttl / 3``. A lease past its expiry
  is free; so is one whose holder was a process on this host that no longer exists (a
  killed run is resumed at once, not after the expiry). A holder that cannot renew stops
  its run before the lease can expire.

``hold()`` never waits: a held lock raises :class:`RunnerBusy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dragoman.mapping.reconcile_records import reconcile_lease as t
from dragoman.state.sql import StoreUnavailable
from dragoman.timeouts import within

log = logging.getLogger(__name__)

LEASE_NAME = "reconcile"
ADVISORY_ID = 0x7265636F6E63  # "reconc": the same for every dragoman process
_DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


class RunnerBusy(Exception):
    """Another runner holds the reconciliation lock."""


@dataclass(slots=True)
class Lease:
    holder: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the lock can no longer be vouched for: the run must stop."""


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def runner_lock(
    engine: AsyncEngine,
    *,
    ttl: float,
    timeout: float,
    clock: Callable[[], float] = time.time,
) -> RunnerLock:
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine, ttl=ttl, timeout=timeout)
    return LeaseRow(engine, ttl=ttl, timeout=timeout, clock=clock)


class RunnerLock(ABC):
    """``async with lock.hold() as lease``: the run goes on while ``lease.lost`` is unset."""

    def __init__(self, *, ttl: float, timeout: float) -> None:
        self.ttl = ttl
        self.timeout = timeout

    @abstractmethod
    def hold(self) -> contextlib.AbstractAsyncContextManager[Lease]:
        """Take the lock (RunnerBusy if another runner holds it) for the block's duration."""

    async def _keep(self, lease: Lease, renew: Callable[[], Awaitable[bool]]) -> None:
        """Renew every ttl/3; set ``lease.lost`` when renewal says no (or keeps failing
        until the lease could have expired)."""
        loop = asyncio.get_running_loop()
        vouched_until = loop.time() + self.ttl
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                ok = await within(self.timeout, renew())
            except _DB_ERRORS as exc:
                log.warning("reconciliation lease renewal failed: %s", type(exc).__name__)
                # Stop with a margin: a third of the ttl before somebody could take it over.
                if loop.time() + self.ttl / 3 >= vouched_until:
                    lease.lost.set()
                    return
                continue
            if not ok:
                lease.lost.set()
                return
            vouched_until = loop.time() + self.ttl


class AdvisoryLock(RunnerLock):
    def __init__(self, engine: AsyncEngine, *, ttl: float, timeout: float) -> None:
        super().__init__(ttl=ttl, timeout=timeout)
        self._url = engine.url

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Lease]:
        lock_engine = create_async_engine(self._url, poolclass=NullPool)
        try:
            try:
                conn = await within(self.timeout, lock_engine.connect())
            except _DB_ERRORS as exc:
                raise StoreUnavailable(type(exc).__name__) from None
            try:
                async with self._locked(conn) as lease:
                    yield lease
            finally:
                # Closing the session releases the lock even if the unlock failed.
                with contextlib.suppress(*_DB_ERRORS):
                    await within(self.timeout, conn.close())
        finally:
            await lock_engine.dispose()

    @asynccontextmanager
    async def _locked(self, conn: AsyncConnection) -> AsyncIterator[Lease]:
        try:
            got = bool(
                (
                    await within(
                        self.timeout,
                        conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": ADVISORY_ID}),
                    )
                ).scalar_one()
            )
        except _DB_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        if not got:
            raise RunnerBusy("another instance is reconciling (PostgreSQL advisory lock)")
        lease = Lease(holder=instance_id())

        async def ping() -> bool:
            await conn.execute(text("SELECT 1"))
            return True

        keeper = asyncio.create_task(self._keep(lease, ping))
        try:
            yield lease
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(*_DB_ERRORS):
                await within(
                    self.timeout,
                    conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_ID}),
                )


def _gone(holder: str) -> bool:
    """Whether ``holder`` (host:pid:token) was a process of this host that has ended."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process: another task of ours holds it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseRow(RunnerLock):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(ttl=ttl, timeout=timeout)
        self._engine = engine
        self._clock = clock

    async def _acquire(self, holder: str) -> None:
        async def go() -> None:
            now = self._clock()
            async with self._engine.begin() as conn:
                row = (await conn.execute(select(t).where(t.c.name == LEASE_NAME))).first()
                if row is None:
                    try:
                        await conn.execute(
                            t.insert().values(
                                name=LEASE_NAME,
                                holder=holder,
                                acquired_at=now,
                                expires_at=now + self.ttl,
                            )
                        )
                    except IntegrityError:
                        raise RunnerBusy("another process took the lease just now") from None
                    return
                if row.expires_at > now and not _gone(row.holder):
                    owner = row.holder.rsplit(":", 1)[0]
                    raise RunnerBusy(f"{owner} holds the reconciliation lease")
                taken = await conn.execute(
                    update(t)
                    .where(
                        t.c.name == LEASE_NAME,
                        t.c.holder == row.holder,
                        t.c.expires_at == row.expires_at,
                    )
                    .values(holder=holder, acquired_at=now, expires_at=now + self.ttl)
                )
                if taken.rowcount != 1:
                    raise RunnerBusy("another process took the lease just now")

        try:
            await within(self.timeout, go())
        except _DB_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    async def _renew(self, holder: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(t)
                .where(t.c.name == LEASE_NAME, t.c.holder == holder)
                .values(expires_at=self._clock() + self.ttl)
            )
            return result.rowcount == 1

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Lease]:
        lease = Lease(holder=instance_id())
        await self._acquire(lease.holder)
        keeper = asyncio.create_task(self._keep(lease, lambda: self._renew(lease.holder)))
        try:
            yield lease
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(*_DB_ERRORS):
                async with self._engine.begin() as conn:
                    await within(
                        self.timeout,
                        conn.execute(
                            delete(t).where(t.c.name == LEASE_NAME, t.c.holder == lease.holder)
                        ),
                    )

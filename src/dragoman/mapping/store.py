"""The mapping store: SQLAlchemy 2 (async) over SQLite (embedded) or PostgreSQL.

Every failure to reach the database surfaces as :class:`StoreUnavailable` (the pipeline
answers 503 and forwards nothing). Updates are optimistic: each one names the version it
read and fails with :class:`VersionConflict` if somebody else wrote in between, so an update
is never lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dragoman.cache import TtlCache
from dragoman.mapping.compiled import CompiledStatement
from dragoman.mapping.crypto import MappingCipher, MappingCryptoError
from dragoman.mapping.entity import AccountMapping, Grant, MappingStatus
from dragoman.mapping.pg_lookup import FAILURES as PG_FAILURES
from dragoman.mapping.pg_lookup import PgLookup
from dragoman.mapping.rows import RowCodec, to_utc
from dragoman.mapping.schema import account_mappings as t
from dragoman.mapping.sqlite_lookup import sqlite_lookup
from dragoman.state.sql import StoreUnavailable, make_engine

__all__ = ["MappingStore", "StoreUnavailable", "make_engine"]


LIVE_FIRST = (case((t.c.status == "revoked", 1), else_=0), t.c.created_at.desc())
"""The order an account's rows are found in: the live link first; a revoked one is history
(and says why it is refused)."""

BY_ACCOUNT = (
    select(t).where(t.c.cloud_account_index == bindparam("index")).order_by(*LIVE_FIRST).limit(1)
)
"""The lookup of every request that misses the cache: built once (SQLAlchemy would derive
its cache key again for a statement built per call)."""


def by_accounts(indexes: ColumnElement[bool]) -> Select[Any]:
    """For each account whose index ``indexes`` admits, the row :data:`BY_ACCOUNT` finds:
    the database ranks each account's rows in the same order."""
    rank = func.row_number().over(partition_by=t.c.cloud_account_index, order_by=LIVE_FIRST)
    ranked = select(t, rank.label("lookup_rank")).where(indexes).subquery()
    return select(*(ranked.c[column.name] for column in t.columns)).where(ranked.c.lookup_rank == 1)


BY_ACCOUNTS_SQLITE = by_accounts(
    t.c.cloud_account_index.in_(
        select(literal_column("value")).select_from(func.json_each(bindparam("indexes")))
    )
)
"""The background refreshes' lookup of many accounts, on SQLite: the indexes as one JSON
array."""

BY_ACCOUNTS_PG = by_accounts(
    t.c.cloud_account_index == any_(bindparam("indexes", type_=ARRAY(String)))
)
"""The same on PostgreSQL: the indexes as one array."""


def customer_lock_key(customer_index: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit key) of self-service links to the
    customer with blind index ``customer_index``."""
    digest = hashlib.sha256(b"dragoman:registration:customer:" + customer_index.encode())
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


REFRESH_BATCH = 64
"""At most this many entries re-read by one query of the background refresher."""


SELF_SERVICE_ACTOR = "registration:"
"""How ``created_by`` and ``updated_by`` name a principal that linked or unlinked its own
account over HTTP (``registration:<subject>``): what tells self-service changes from an
operator's (the CLI's ``--by``), which self-service may not undo. See
:func:`self_service_actor`."""

USABLE_STATUSES = ("active", "stale")
"""The statuses of a link that serves its account, or may again once reconciled: another
account's link to a customer in one of these stands in the way of a self-service link to
that customer. A suspended link serves nothing until an operator decides."""


def self_service_actor(subject: str) -> str:
    """The ``created_by`` / ``updated_by`` of a self-service change by ``subject``."""
    return SELF_SERVICE_ACTOR + subject


def is_self_service_actor(actor: str) -> bool:
    return actor.startswith(SELF_SERVICE_ACTOR)


class MappingExists(Exception):
    """The cloud account is already linked."""


class RevokedByOperator(Exception):
    """Self-service: the account's last link was revoked by an operator (not by self-service
    unlinking), which self-registration must not undo; an operator links it again."""


class CustomerLinkedElsewhere(Exception):
    """Self-service: another account's usable link names the customer (``args[0]``: that
    mapping's id)."""

    @property
    def mapping_id(self) -> str:
        return str(self.args[0])


class MappingNotFound(Exception):
    pass


class VersionConflict(Exception):
    """The mapping changed since it was read; re-read and retry."""


class RevokedIsFinal(Exception):
    """A revoked mapping is never reactivated or suspended: link the account anew."""


class MappingStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cipher: MappingCipher,
        query_timeout: float = 2.0,
        cache_ttl: float = 0.0,
        cache_entries: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
        pool_size: int = 5,
    ) -> None:
        """``pool_size``: connections of the PostgreSQL lookups' own pool."""
        self.engine = engine
        self.codec = RowCodec(cipher)
        # A lookup is one read-only statement: on PostgreSQL, autocommit spares the BEGIN
        # and ROLLBACK round trips of a transaction (SQLite's driver starts none for a read).
        self._autocommit_reads = engine.dialect.name == "postgresql"
        # On SQLite the lookup runs in place on a connection of its own
        # (mapping.sqlite_lookup); on PostgreSQL through asyncpg directly (mapping.pg_lookup).
        self._reads = sqlite_lookup(engine.url, BY_ACCOUNT, BY_ACCOUNTS_SQLITE)
        self._pg_reads = (
            PgLookup(engine.url, BY_ACCOUNT, BY_ACCOUNTS_PG, pool_size=pool_size)
            if engine.dialect.name == "postgresql"
            else None
        )
        self._timeout = query_timeout
        # Lookups by account, cached for cache_ttl (0: not at all). Writes through this store
        # drop their entry at once; writes elsewhere (another instance, the CLI) are seen
        # within cache_ttl.
        self._cache_ttl = cache_ttl
        # Each entry: the mapping and when to refresh it ahead of its expiry.
        self._cache: TtlCache[str, tuple[AccountMapping, float]] = TtlCache(
            cache_entries, monotonic
        )
        self._refresh_queue: collections.deque[str] = collections.deque()
        self._refresh_queued: set[str] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_gather = min(0.05 * cache_ttl, 0.25)
        """Seconds the refresher waits for more entries to come due before a query."""
        self._jitter = random.Random()
        self._cache_entries = cache_entries
        self._cached_accounts: dict[str, str] = {}  # mapping id -> account, to forget by id
        # Rows of cached lookups, as read, with what they opened to: a refresh that reads the
        # same row again reuses the mapping instead of unwrapping and opening it again.
        self._opened: dict[str, tuple[tuple[Any, ...], AccountMapping]] = {}
        self._in_flight: dict[str, asyncio.Future[AccountMapping | None]] = {}
        self._writes = 0
        """Mappings this store wrote (added, updated): lookups under way meanwhile are not
        cached (:meth:`_remember`)."""
        self._monotonic = monotonic
        self.reachable = True
        """False from a failed query (or ping) until the next successful one."""

    def lookup_statement(self, cloud_account: str) -> tuple[str, tuple[Any, ...]]:
        """The SQL and arguments a lookup by account sends."""
        index = self.codec.account_index(cloud_account)
        if self._reads is not None:
            return self._reads.statement(index=index)
        if self._pg_reads is not None:
            return self._pg_reads.statement(index=index)
        return CompiledStatement(BY_ACCOUNT, self.engine.dialect).bind(index=index)

    def trace_lookups(self, callback: Callable[[str], None] | None) -> None:
        """Tests: ``callback`` gets every statement the lookups by account run on SQLite."""
        if self._reads is None:
            raise RuntimeError("lookups are traced on a SQLite file only")
        self._reads.trace(callback)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self.close_readers()
        await self.engine.dispose()

    async def close_readers(self) -> None:
        """Close the lookups' own connections, not the engine (another store may share it)."""
        if self._reads is not None:
            self._reads.close()
        if self._pg_reads is not None:
            await self._pg_reads.close()

    async def _run(self, coroutine: Any) -> Any:
        try:
            # Not wait_for: it runs the coroutine as a task of its own, per query.
            async with asyncio.timeout(self._timeout):
                result = await coroutine
        except (
            MappingExists,
            MappingNotFound,
            VersionConflict,
            RevokedIsFinal,
            RevokedByOperator,
            CustomerLinkedElsewhere,
        ):
            self.reachable = True
            raise
        except MappingCryptoError:
            # A row that does not open is not an outage: say so, loudly, never allow.
            self.reachable = True
            raise
        except (SQLAlchemyError, OSError, TimeoutError, *PG_FAILURES) as exc:
            self.reachable = False
            raise StoreUnavailable(type(exc).__name__) from None
        self.reachable = True
        return result

    async def watch(self, interval: float) -> None:
        """Ping the database every ``interval`` seconds, forever (run it as a task).

        With the lookup cache on, this is how an outage is noticed between cache misses:
        once a ping fails, cached mappings are not served until the database answers again.
        """
        while True:
            # A failure leaves reachable False: lookups refuse until a ping succeeds.
            with contextlib.suppress(StoreUnavailable):
                await self.ping()
            await asyncio.sleep(interval)

    async def ping(self) -> None:
        async def go() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await self._run(go())

    async def find_by_account(self, cloud_account: str) -> AccountMapping | None:
        if self._cache_ttl > 0 and self.reachable:
            cached = self._cache.get(cloud_account)
            if cached is not None:
                mapping, refresh_at = cached
                if refresh_at <= self._monotonic() and cloud_account not in self._in_flight:
                    self._refresh_soon(cloud_account)
                return mapping
            # One query per account at a time: when an entry expires under load, the
            # callers that miss together share the answer instead of queueing for the pool.
            pending = self._in_flight.get(cloud_account)
            if pending is not None:
                return await self._share(pending, cloud_account)
            return await self._look_up(cloud_account)
        writes = self._writes
        found = await self._find_by_account(cloud_account)
        self._remember(cloud_account, found, writes)
        return found

    async def _look_up(self, cloud_account: str) -> AccountMapping | None:
        """The query for ``cloud_account``, shared with whoever asks meanwhile."""
        pending = asyncio.get_running_loop().create_future()
        self._in_flight[cloud_account] = pending
        writes = self._writes
        try:
            found = await self._find_by_account(cloud_account)
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        except BaseException:
            pending.cancel()  # the leader was cancelled; waiters ask for themselves
            raise
        else:
            pending.set_result(found)
        finally:
            del self._in_flight[cloud_account]
        self._remember(cloud_account, found, writes)
        return found

    def _refresh_soon(self, cloud_account: str) -> None:
        """Queue an entry in its last 30% of life for a re-read in the background, while it
        is still served. One refresher works through the queue, one query at a time, so
        refreshes never crowd out the lookups requests wait for; entries cached in one
        burst (a start, a failover) would otherwise expire together, and every request of
        those accounts would wait in one burst of queries. An entry is never served past
        its own lifetime, and a failed refresh marks the store unreachable (fail closed).

        On SQLite files and PostgreSQL the refresher gathers the entries coming due for a
        moment (:attr:`_refresh_gather`, a twentieth of ``cache_ttl`` at most) and re-reads
        up to :data:`REFRESH_BATCH` of them with one query. With a thousand callers and the
        default 5 s that is about five queries a second instead of three hundred; one query
        per entry cost ~7% of a busy worker's CPU on SQLite and ~16% on PostgreSQL
        (bench/ab.py). The wait is well inside the 30% of life left."""
        if cloud_account in self._refresh_queued:
            return
        self._refresh_queued.add(cloud_account)
        self._refresh_queue.append(cloud_account)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_queued_entries())

    async def _refresh_queued_entries(self) -> None:
        batched = self._reads is not None or self._pg_reads is not None
        size = REFRESH_BATCH if batched else 1
        while self._refresh_queue:
            if batched and len(self._refresh_queue) < size:
                await asyncio.sleep(self._refresh_gather)
            accounts: list[str] = []
            while self._refresh_queue and len(accounts) < size:
                account = self._refresh_queue.popleft()
                if account not in self._in_flight and self._cache.get(account):
                    accounts.append(account)
                else:
                    self._refresh_queued.discard(account)
            try:
                with contextlib.suppress(Exception):
                    if batched and accounts:
                        await self._look_up_many(accounts)
                    elif accounts:
                        await self._look_up(accounts[0])
            finally:
                self._refresh_queued.difference_update(accounts)
            # A SQLite lookup never suspends: without this, a queue of refreshes would hold
            # the loop, and every request waiting on it, until it is empty.
            await asyncio.sleep(0)

    async def _look_up_many(self, accounts: list[str]) -> None:
        """:meth:`_look_up` for many accounts with one query (none of them in flight), each
        shared with whoever asks for it meanwhile."""
        loop = asyncio.get_running_loop()
        pending = {account: loop.create_future() for account in accounts}
        self._in_flight.update(pending)
        writes = self._writes
        try:
            found = await self._find_many(accounts)
        except Exception as exc:
            for future in pending.values():
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        except BaseException:
            for future in pending.values():
                future.cancel()
            raise
        else:
            for account, future in pending.items():
                outcome = found[account]
                if isinstance(outcome, MappingCryptoError):
                    future.set_exception(outcome)
                    future.exception()
                else:
                    future.set_result(outcome)
        finally:
            for account in accounts:
                del self._in_flight[account]
        for account, outcome in found.items():
            if not isinstance(outcome, MappingCryptoError):
                self._remember(account, outcome, writes)

    async def _find_many(
        self, accounts: list[str]
    ) -> dict[str, AccountMapping | MappingCryptoError | None]:
        """What :meth:`_find_by_account` finds for each of ``accounts``; a row that does not
        open is that account's error alone."""
        by_index = {self.codec.account_index(account): account for account in accounts}
        if self._reads is not None:
            try:
                rows: list[Any] = self._reads.rows(indexes=json.dumps(list(by_index)))
            except (sqlite3.Error, OSError) as exc:
                self.reachable = False
                raise StoreUnavailable(type(exc).__name__) from None
            self.reachable = True
        else:
            assert self._pg_reads is not None
            rows = await self._run(self._pg_reads.rows(indexes=list(by_index)))
        found: dict[str, AccountMapping | MappingCryptoError | None] = dict.fromkeys(accounts)
        for row in rows:
            account = by_index[row.cloud_account_index]
            try:
                found[account] = self._open(row)
            except MappingCryptoError as exc:
                found[account] = exc
        return found

    def _remember(self, cloud_account: str, found: AccountMapping | None, writes: int) -> None:
        """Cache what a lookup found, unless this store wrote a mapping while the lookup was
        on its way (``writes``: the count when it started): the row it read may be the one
        the write replaced, and caching it would undo the write's own invalidation."""
        if self._cache_ttl <= 0 or writes != self._writes:
            return
        if found is None:
            self._cache.discard(cloud_account)  # gone since it was cached
            return
        if len(self._cached_accounts) >= 2 * self._cache_entries:
            self._cache.clear()
            self._cached_accounts.clear()
        # A lifetime between 90% and 100% of cache_ttl: entries cached in one burst (a
        # start, a failover) spread their refreshes instead of renewing in step forever.
        now = self._monotonic()
        lifetime = self._cache_ttl * (0.9 + 0.1 * self._jitter.random())
        self._cache.put(cloud_account, (found, now + 0.7 * lifetime), now + lifetime)
        self._cached_accounts[found.id] = cloud_account

    async def _share(
        self, pending: asyncio.Future[AccountMapping | None], cloud_account: str
    ) -> AccountMapping | None:
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not pending.cancelled() or (task is not None and task.cancelling()):
                raise
        return await self._find_by_account(cloud_account)

    async def _find_by_account(self, cloud_account: str) -> AccountMapping | None:
        index = {"index": self.codec.account_index(cloud_account)}
        if self._reads is not None:
            return self._find_in_place(index)
        pg_reads = self._pg_reads
        if pg_reads is not None:

            async def read() -> AccountMapping | None:
                row = await pg_reads.first(**index)
                return None if row is None else self._open(row)

            found_pg: AccountMapping | None = await self._run(read())
            return found_pg

        async def go() -> AccountMapping | None:
            async with self.engine.connect() as conn:
                if self._autocommit_reads:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                row = (await conn.execute(BY_ACCOUNT, index)).first()
                return None if row is None else self._open(row)

        found: AccountMapping | None = await self._run(go())
        return found

    def _open(self, row: Any) -> AccountMapping:
        """The mapping a lookup's row holds. A mapping is a function of its row alone (the
        cipher is fixed for the process), so a row equal to one opened before gives that
        mapping back: a refresh of an unchanged entry costs the query, not the unwrap and
        the two openings. Only lookups by account come here, and only while cached."""
        if self._cache_ttl <= 0:
            return self.codec.entity(row)
        values = tuple(row)
        known = self._opened.get(row.id)
        if known is not None and known[0] == values:
            return known[1]
        mapping = self.codec.entity(row)
        if len(self._opened) >= self._cache_entries:
            self._opened.clear()
        self._opened[row.id] = (values, mapping)
        return mapping

    def _find_in_place(self, index: dict[str, str]) -> AccountMapping | None:
        """The lookup on SQLite's loop connection; failures as :meth:`_run` reports them."""
        assert self._reads is not None
        try:
            row = self._reads.first(**index)
            found = None if row is None else self._open(row)
        except MappingCryptoError:
            self.reachable = True
            raise
        except (sqlite3.Error, OSError) as exc:
            self.reachable = False
            raise StoreUnavailable(type(exc).__name__) from None
        self.reachable = True
        return found

    async def get(self, mapping_id: str) -> AccountMapping:
        async def go() -> AccountMapping:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(t).where(t.c.id == mapping_id))).first()
                if row is None:
                    raise MappingNotFound(mapping_id)
                return self.codec.entity(row)

        found: AccountMapping = await self._run(go())
        return found

    async def list(self, *, limit: int = 1000, offset: int = 0) -> list[AccountMapping]:
        async def go() -> list[AccountMapping]:
            async with self.engine.connect() as conn:
                query = select(t).order_by(t.c.created_at, t.c.id).limit(limit).offset(offset)
                return [self.codec.entity(row) for row in await conn.execute(query)]

        found: list[AccountMapping] = await self._run(go())
        return found

    async def add(
        self,
        *,
        cloud_account: str,
        payment_customer: str,
        created_by: str,
        verification_method: str,
        verification_evidence: str | None = None,
        grants: Sequence[Grant] = (),
        status: MappingStatus = MappingStatus.ACTIVE,
        validated_at: datetime | None = None,
        self_service: bool = False,
    ) -> AccountMapping:
        """Insert a mapping. ``self_service``: a caller links its own account (registration),
        checked in the insert's own transaction (:meth:`_check_self_service`): raises
        :class:`RevokedByOperator` or :class:`CustomerLinkedElsewhere` and writes nothing."""
        now = datetime.now(UTC)
        mapping_id = str(uuid.uuid4())
        values = {
            "id": mapping_id,
            **self.codec.sealed_values(
                mapping_id,
                cloud_account=cloud_account,
                payment_customer=payment_customer,
                verification_evidence=verification_evidence,
            ),
            "status": status.value,
            "created_at": now,
            "created_by": created_by,
            "verification_method": verification_method,
            "last_validated_at": now if validated_at is None else to_utc(validated_at),
            "updated_at": now,
            "updated_by": created_by,
            "version": 1,
            "grants": [g.to_json() for g in grants],
        }

        async def go() -> AccountMapping:
            # The row is read back in the insert's own transaction: a read that fails then
            # undoes the insert, so a caller told "failed" never leaves a link behind.
            try:
                async with self.engine.begin() as conn:
                    if self_service and conn.dialect.name == "postgresql":
                        # Registrations of one customer, one at a time (two accounts' must
                        # not both see "no other link" and both insert); SQLite's insert
                        # below takes the database's write lock, which does the same.
                        key = customer_lock_key(values["payment_customer_index"])
                        await conn.execute(select(func.pg_advisory_xact_lock(key)))
                    await conn.execute(t.insert().values(**values))
                    if self_service:
                        await self._check_self_service(conn, values)
                    row = (await conn.execute(select(t).where(t.c.id == mapping_id))).one()
                    return self.codec.entity(row)
            except IntegrityError:
                raise MappingExists(cloud_account) from None

        added: AccountMapping = await self._run(go())
        self._writes += 1
        self._cache.discard(cloud_account)
        return added

    @staticmethod
    async def _check_self_service(conn: AsyncConnection, values: dict[str, Any]) -> None:
        """A self-service link just inserted (``values``, not committed) may stay only if

        - the account's last link before it, if any (none is live: the insert would have
          failed), was revoked by self-service, not by an operator: an operator's
          revocation holds until an operator links the account again;
        - no other account's usable link (:data:`USABLE_STATUSES`) names the customer: one
          customer, one account; the operator (or reconciliation, which suspends the
          drifted one) resolves it.

        Run after the insert, in its transaction: on SQLite the insert holds the write lock,
        on PostgreSQL the customer's advisory lock is held and the account's last link is
        read locked (an operator's revocation under way is waited for and seen)."""
        mapping_id = values["id"]
        last = (
            await conn.execute(
                select(t.c.updated_by)
                .where(
                    t.c.cloud_account_index == values["cloud_account_index"],
                    t.c.id != mapping_id,
                    t.c.status == MappingStatus.REVOKED.value,
                )
                .order_by(t.c.created_at.desc(), t.c.id.desc())
                .limit(1)
                .with_for_update()
            )
        ).first()
        if last is not None and not is_self_service_actor(last.updated_by):
            raise RevokedByOperator(mapping_id)
        other = (
            await conn.execute(
                select(t.c.id)
                .where(
                    t.c.payment_customer_index == values["payment_customer_index"],
                    t.c.id != mapping_id,
                    t.c.status.in_(USABLE_STATUSES),
                )
                .limit(1)
            )
        ).first()
        if other is not None:
            raise CustomerLinkedElsewhere(other.id)

    async def update(
        self, mapping_id: str, *, expected_version: int, actor: str, **changes: Any
    ) -> AccountMapping:
        """Change fields of a mapping if it is still at ``expected_version``.

        Allowed changes: status (MappingStatus), grants (sequence of Grant),
        last_validated_at (datetime), verification_method, verification_evidence.
        """
        allowed = {
            "status",
            "grants",
            "last_validated_at",
            "verification_method",
            "verification_evidence",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)}")
        values: dict[str, Any] = dict(changes)
        if "status" in values:
            values["status"] = MappingStatus(values["status"]).value
        if "grants" in values:
            values["grants"] = [g.to_json() for g in values["grants"]]
        if "last_validated_at" in values:
            values["last_validated_at"] = to_utc(values["last_validated_at"])
        values.update(updated_at=datetime.now(UTC), updated_by=actor, version=expected_version + 1)

        evidence_changes = "verification_evidence" in values
        evidence = values.pop("verification_evidence", None)

        async def go() -> None:
            async with self.engine.begin() as conn:
                if evidence_changes:
                    row = (await conn.execute(select(t).where(t.c.id == mapping_id))).first()
                    if row is None:
                        raise MappingNotFound(mapping_id)
                    values["verification_evidence_ciphertext"] = self.codec.reseal_evidence(
                        row, evidence
                    )
                condition = [t.c.id == mapping_id, t.c.version == expected_version]
                if values.get("status", MappingStatus.REVOKED.value) != MappingStatus.REVOKED:
                    # Checked in the same statement as the version: no race can slip past.
                    condition.append(t.c.status != MappingStatus.REVOKED.value)
                result = await conn.execute(update(t).where(*condition).values(**values))
                if result.rowcount == 1:
                    return
                found = (
                    await conn.execute(select(t.c.version, t.c.status).where(t.c.id == mapping_id))
                ).first()
                if found is None:
                    raise MappingNotFound(mapping_id)
                if found.version == expected_version:
                    raise RevokedIsFinal(mapping_id)
                raise VersionConflict(mapping_id)

        try:
            await self._run(go())
        finally:
            # Whatever happened, the next lookup of this mapping asks the database.
            self._forget(mapping_id)
        return await self.get(mapping_id)

    def _forget(self, mapping_id: str) -> None:
        self._writes += 1
        account = self._cached_accounts.pop(mapping_id, None)
        if account is not None:
            self._cache.discard(account)

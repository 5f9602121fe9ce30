"""The lookup by account on PostgreSQL, through asyncpg directly.

The same statement as the rest of the store (:data:`dragoman.mapping.store.BY_ACCOUNT`,
compiled once for asyncpg), prepared once per connection (asyncpg's statement cache), on a
few connections of its own.
Through SQLAlchemy's async layer the lookup cost about 1.1 ms of CPU here (a pre-ping
round trip at every checkout, the greenlet bridge, the result processing); this way about
0.12 ms. A lookup is one idempotent read, so a connection found broken (the server
restarted) is replaced and the read asked once more before the store is called down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
from sqlalchemy import URL, Select
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from dragoman.mapping.compiled import CompiledStatement
from dragoman.timeouts import within

BROKEN = (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError)
FAILURES = (asyncpg.PostgresError, asyncpg.exceptions.InterfaceError, OSError, ConnectionError)
"""What an unreachable or failing server raises (the store answers StoreUnavailable)."""


class Row:
    """An asyncpg record read like SQLAlchemy's rows (``row.id``), JSON columns decoded."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        value = self._record[name]
        if name == "grants" and isinstance(value, str):
            return json.loads(value)
        return value

    def __iter__(self) -> Iterator[Any]:
        """The columns' values as read (the store compares rows by them)."""
        return iter(self._record.values())


class PgLookup:
    def __init__(
        self,
        url: URL,
        statement: Select[Any],
        many: Select[Any] | None = None,
        *,
        pool_size: int,
    ) -> None:
        """``statement`` reads one row (:meth:`first`); ``many``, if given, many at once
        (:meth:`rows`)."""
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        dialect = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
        self._statement = CompiledStatement(statement, dialect)
        self._many = None if many is None else CompiledStatement(many, dialect)
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[asyncpg.Connection] = []

    def statement(self, **params: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL sent and its arguments (for EXPLAIN in the tests)."""
        return self._statement.bind(**params)

    async def first(self, **params: Any) -> Row | None:
        """The first row, or None. Bounded by the caller (the store's query timeout): a
        connection whose query was cut short, failed or timed out is dropped on the spot,
        never waited for nor reused (asyncpg's own pool would wait to reset it, past any
        timeout, when the server hangs)."""
        sql, args = self.statement(**params)
        record = await self._query(lambda connection: connection.fetchrow(sql, *args))
        return None if record is None else Row(record)

    async def rows(self, **params: Any) -> list[Row]:
        """Every row of the second statement, bounded and failing as :meth:`first` is."""
        if self._many is None:
            raise RuntimeError("this lookup has no statement for many rows")
        sql, args = self._many.bind(**params)
        records = await self._query(lambda connection: connection.fetch(sql, *args))
        return [Row(record) for record in records]

    async def _query(self, send: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        async with self._slots:
            for attempt in (1, 2):
                connection = self._idle.pop() if self._idle else await self._connect()
                try:
                    answer = await send(connection)
                except BROKEN:
                    connection.terminate()
                    if attempt == 2:
                        raise
                    continue  # a connection the server closed (a restart): one more, fresh
                except BaseException:
                    connection.terminate()
                    raise
                self._idle.append(connection)
                return answer
        raise AssertionError("unreachable")

    async def _connect(self) -> asyncpg.Connection:
        connection: asyncpg.Connection = await asyncpg.connect(self._dsn)
        return connection

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            try:
                await within(1.0, connection.close())
            except (TimeoutError, *FAILURES):
                connection.terminate()

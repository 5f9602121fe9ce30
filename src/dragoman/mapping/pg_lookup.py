"""The lookup by account on PostgreSQL, through asyncpg directly.

The same statement as the rest of the store (:data:`dragoman.mapping.store.BY_ACCOUNT`,
compiled once for asyncpg), prepared once per connection, on a small pool of its own.
Through SQLAlchemy's async layer the lookup cost about 1.1 ms of CPU here (a pre-ping
round trip at every checkout, the greenlet bridge, the result processing); this way about
0.12 ms. A lookup is one idempotent read, so a connection found broken (the server
restarted) is replaced and the read asked once more before the store is called down.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from sqlalchemy import URL, Select
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

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


async def _keep_as_is(connection: asyncpg.Connection) -> None:
    """Given back to the pool as it is: asyncpg would otherwise send a reset statement (one
    more round trip) after every lookup, for session state these connections never change
    (one read-only statement each, outside any transaction)."""


class PgLookup:
    def __init__(self, url: URL, statement: Select[Any], *, pool_size: int) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        compiled = statement.compile(
            dialect=asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
        )
        self._sql = str(compiled)
        self._names = tuple(compiled.positiontup or ())
        self._defaults = dict(compiled.params)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    def statement(self, **params: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL sent and its arguments (for EXPLAIN in the tests)."""
        values = {**self._defaults, **params}
        return self._sql, tuple(values[name] for name in self._names)

    async def first(self, **params: Any) -> Row | None:
        sql, args = self.statement(**params)
        for attempt in (1, 2):
            pool = await self._open()
            try:
                record = await pool.fetchrow(sql, *args)
            except BROKEN:
                if attempt == 2:
                    raise
                continue  # the pool drops the broken connection; one more, fresh
            return None if record is None else Row(record)
        raise AssertionError("unreachable")

    async def _open(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._pool_size,
                command_timeout=None,
                reset=_keep_as_is,
            )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

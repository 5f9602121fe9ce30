"""The lookup by account on SQLite, through the driver directly, on the event loop.

aiosqlite runs every statement on a worker thread and hands the result back through the
loop: two thread switches per statement, about 2.4 ms of a 2.5 ms lookup when measured.
A lookup by an indexed column of a local file is short enough to run on the loop itself.

It runs on the ``sqlite3`` module's own connection rather than through SQLAlchemy: the
same statement (:data:`dragoman.mapping.store.BY_ACCOUNT`, compiled once for SQLite) went
from about 370 µs of CPU through SQLAlchemy's execution layer to about 30 µs here. That
mattered because a cached entry is read again every few seconds while it is used: with a
thousand callers, a few hundred background lookups a second. The columns are converted
by the same SQLAlchemy type processors a Core query would use, and only when read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import URL, Select
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from dragoman.mapping.compiled import CompiledStatement

READ_BUSY_TIMEOUT_MS = 250
"""How long a read on the loop's own SQLite connection may wait for a lock. In WAL mode a
reader does not wait for writers; this bounds the rare wait (WAL recovery after a crash),
which holds the whole event loop."""

_Columns = dict[str, tuple[int, Callable[[Any], Any] | None]]


class Row:
    """A row as read, its columns by name (``row.id``) converted on access; iterating
    gives the values as stored (the store compares rows by them)."""

    __slots__ = ("_columns", "_values")

    def __init__(self, columns: _Columns, values: tuple[Any, ...]) -> None:
        self._columns = columns
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            index, convert = self._columns[name]
        except KeyError:
            raise AttributeError(name) from None
        value = self._values[index]
        return value if convert is None or value is None else convert(value)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)


def _columns_of(statement: Select[Any], dialect: SQLiteDialect_pysqlite) -> _Columns:
    return {
        column.name: (index, column.type.dialect_impl(dialect).result_processor(dialect, None))
        for index, column in enumerate(statement.selected_columns)
    }


class SqliteLookup:
    """A read-only statement (and optionally a second one, for many rows at once) on a
    read-only connection of its own, run in place."""

    def __init__(self, url: URL, statement: Select[Any], many: Select[Any] | None = None) -> None:
        dialect = SQLiteDialect_pysqlite()
        self._statement = CompiledStatement(statement, dialect)
        self._columns = _columns_of(statement, dialect)
        self._many = (
            None if many is None else (CompiledStatement(many, dialect), _columns_of(many, dialect))
        )
        args, kwargs = dialect.create_connect_args(url.set(drivername="sqlite+pysqlite"))
        # Autocommit: each lookup is a read transaction of its own, so it sees every write
        # committed before it (a transaction left open would pin an old snapshot).
        self._connect_args: tuple[Any, ...] = tuple(args)
        self._connect_kwargs: dict[str, Any] = {
            **kwargs,
            "check_same_thread": False,
            "isolation_level": None,
        }
        self._connection: sqlite3.Connection | None = None
        self._trace: Callable[[str], None] | None = None

    def statement(self, **params: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL run and its arguments (for EXPLAIN in the tests)."""
        return self._statement.bind(**params)

    def first(self, **params: Any) -> Row | None:
        """The first row, or None. Raises ``sqlite3.Error`` (or OSError) when the file
        cannot be read; the connection is then closed and opened anew next time."""
        sql, args = self.statement(**params)
        values = self._run(sql, args, many=False)
        return None if values is None else Row(self._columns, values)

    def rows(self, **params: Any) -> list[Row]:
        """Every row of the second statement, failing as :meth:`first` does."""
        if self._many is None:
            raise RuntimeError("this lookup has no statement for many rows")
        compiled, columns = self._many
        sql, args = compiled.bind(**params)
        return [Row(columns, values) for values in self._run(sql, args, many=True)]

    def _run(self, sql: str, args: tuple[Any, ...], *, many: bool) -> Any:
        connection = self._connection or self._connect()
        try:
            cursor = connection.execute(sql, args)
            return cursor.fetchall() if many else cursor.fetchone()
        except sqlite3.Error:
            self.close()
            raise

    def trace(self, callback: Callable[[str], None] | None) -> None:
        """Tests: ``callback`` gets every statement SQLite runs on this connection."""
        self._trace = callback
        if self._connection is not None:
            self._connection.set_trace_callback(callback)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = sqlite3.connect(
            *self._connect_args, **self._connect_kwargs
        )
        try:
            connection.execute(f"PRAGMA busy_timeout={READ_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA query_only=ON")  # this connection never writes
        except BaseException:
            connection.close()
            raise
        connection.set_trace_callback(self._trace)
        self._connection = connection
        return connection


def sqlite_lookup(
    url: URL, statement: Select[Any], many: Select[Any] | None = None
) -> SqliteLookup | None:
    """The in-place lookup for a SQLite file (None for another database, or for a private
    in-memory database, which another connection would see empty)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return SqliteLookup(url, statement, many)

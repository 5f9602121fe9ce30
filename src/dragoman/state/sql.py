"""The SQL state store's engine: SQLite (embedded) or PostgreSQL, through SQLAlchemy async."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()
"""Every table of the state store (mapping, keys) is declared on this one MetaData."""


class StoreUnavailable(Exception):
    """The database cannot be reached or did not answer in time."""


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)

        @event.listens_for(engine.sync_engine, "do_connect")
        def _directory_exists(_dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
            # Refuse before the driver starts its worker thread: a failed connect there can
            # outlive the event loop and print a stray traceback at exit.
            database = cargs[0] if cargs else None
            if isinstance(database, str) and database not in ("", ":memory:"):
                directory = os.path.dirname(os.path.abspath(database))
                if not os.path.isdir(directory):
                    raise sqlite3.OperationalError(f"unable to open database file in {directory}")

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the writer; FULL makes each commit durable.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            # Deleted or overwritten content is zeroed, not left in free pages of the file.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)


READ_BUSY_TIMEOUT_MS = 250
"""How long a read on the loop's own SQLite connection may wait for a lock. In WAL mode a
reader does not wait for writers; this bounds the rare wait (WAL recovery after a crash),
which holds the whole event loop."""


def sqlite_reader(engine: AsyncEngine) -> Engine | None:
    """A synchronous engine on the same SQLite file as ``engine``, for the hot lookups
    (None for another database).

    aiosqlite runs every statement on a worker thread and hands the result back through the
    event loop: two thread switches per statement, measured at about 2.4 ms of a mapping
    lookup's 2.5 ms here, against 0.07 ms for the same statement run in place. A lookup by
    an indexed column of a local file is short enough to run on the loop itself.
    """
    if engine.dialect.name != "sqlite":
        return None
    url = engine.url.set(drivername="sqlite+pysqlite")
    if url.database in (None, "", ":memory:"):
        return None  # a private in-memory database: another connection would see another one
    reader = create_engine(url, pool_size=1, max_overflow=0)

    @event.listens_for(reader, "connect")
    def _read_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={READ_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA query_only=ON")  # this connection never writes
        cursor.close()

    return reader

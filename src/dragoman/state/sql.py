"""The SQL state store's engine: SQLite (embedded) or PostgreSQL, through SQLAlchemy async."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy import MetaData, event
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

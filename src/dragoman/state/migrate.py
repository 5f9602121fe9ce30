"""Apply the Alembic migrations to the mapping database, once, whoever else is starting.

A database that cannot be reached surfaces as :class:`StoreUnavailable`, as in the store.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.state.sql import StoreUnavailable

# Failures to reach the database. (sqlite3 also reports some SQL errors as OperationalError;
# the original error stays attached as the cause.)
_UNREACHABLE = (OSError, TimeoutError, OperationalError, InterfaceError)

# Any constant works; it only has to be the same for every dragoman process.
_PG_LOCK_ID = 0x647261676F6D  # "dragom"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", "dragoman:migrations")
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several instances may start together; the transaction-scoped lock makes the
        # second one wait and then find nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    command.upgrade(_config(connection), "head")


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _sqlite_file_lock(engine: AsyncEngine) -> Iterator[None]:
    # PostgreSQL serialises migrations with an advisory lock; for a SQLite file, an
    # exclusive lock on a file beside it does the same across processes.
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreUnavailable(type(exc).__name__) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def upgrade(engine: AsyncEngine) -> None:
    try:
        with _sqlite_file_lock(engine):
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade)
    except _UNREACHABLE as exc:
        raise StoreUnavailable(type(exc).__name__) from exc


async def current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            revision: str | None = await conn.run_sync(_current)
            return revision
    except _UNREACHABLE as exc:
        raise StoreUnavailable(type(exc).__name__) from exc


def head_revision() -> str:
    """The newest revision the code knows (what `db upgrade` brings a database to)."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "dragoman:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head

"""Fixtures of the audit tests that use PostgreSQL: the audit database, and one that is down
(on the shared ``dead_port``, tests/conftest.py)."""

from __future__ import annotations

import pytest

from dragoman.state import migrate
from dragoman.state.sql import make_engine
from postgres_support import empty_database


@pytest.fixture
async def audit_db(pg_url: str) -> str:
    """The session's PostgreSQL database, emptied and migrated to head (0006 included)."""
    await empty_database(pg_url)
    engine = make_engine(pg_url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return pg_url


@pytest.fixture
def dead_url(dead_port: int) -> str:
    """A PostgreSQL URL that refuses every connection."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{dead_port}/nothing"

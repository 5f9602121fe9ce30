"""Fixtures of the mapping tests: a migrated store on each database, a dead database port,
and a PostgreSQL database reached through a relay the test can cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.engine import make_url

from dragoman.demo.runner import DemoStack
from dragoman.mapping.crypto import MappingCipher
from dragoman.mapping.store import MappingStore, make_engine
from dragoman.state import migrate
from postgres_support import empty_database
from tcp_relay import TcpRelay


@pytest.fixture
async def store(database_url: str, cipher: MappingCipher) -> AsyncIterator[MappingStore]:
    """A migrated, empty mapping store (SQLite and PostgreSQL)."""
    engine = make_engine(database_url)
    await migrate.upgrade(engine)
    mapping_store = MappingStore(engine, cipher=cipher)
    yield mapping_store
    await mapping_store.close()


@pytest.fixture
def dead_pg_url(dead_port: int) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{dead_port}/dragoman"


@pytest.fixture
def postgres_url(pg_url: str) -> str:
    """The session's PostgreSQL database, emptied (PostgreSQL only; CI fails if it is down)."""
    asyncio.run(empty_database(pg_url))
    return pg_url


@pytest.fixture
async def pg_relay(postgres_url: str) -> AsyncIterator[TcpRelay]:
    """A relay to the test PostgreSQL server; ``relay.url`` reaches the test database."""
    target = make_url(postgres_url)
    relay = TcpRelay(target.host or "127.0.0.1", target.port or 5432)
    await relay.start()
    relay.url = target.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    yield relay
    await relay.cut()


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[DemoStack]], database_url: str) -> DemoStack:
    """The demo stack with its mapping store on SQLite, then on PostgreSQL: every pipeline
    test of this folder runs against both."""
    return await make_stack({"store": {"database_url": database_url}})

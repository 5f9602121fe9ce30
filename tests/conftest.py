"""Shared fixtures: real servers on 127.0.0.1, real HTTP, real databases.

- ``stack``: the development issuer, the sample payment platform and dragoman in front of
  it (SQLite, local key file, audit file), with the demo mappings seeded:
  acct-1001 -> cus_alice and acct-2002 -> cus_bob, role billing_admin may do everything,
  role viewer may list and read.
- ``make_stack(**overrides)``: the same with settings overrides (a nested dict).
- ``serve_app(app)``: start any aiohttp application on a free loopback port.
- ``pg_url``: a fresh PostgreSQL database for the test session. Locally, tests that need
  PostgreSQL or Redis skip when the server is down; under CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from ci_support import service_missing
from dragoman.demo.runner import DemoPorts, DemoStack
from dragoman.mapping.crypto import MappingCipher
from overload_support import HeldUpstream, held_upstream
from postgres_support import empty_database

PG_ADMIN_URL = os.environ.get("DRAGOMAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DRAGOMAN_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    """The Redis server of the tests (skips locally when down, fails under CI=true)."""
    parts = urlsplit(REDIS_URL)
    if not _port_open(parts.hostname or "127.0.0.1", parts.port or 6379):
        service_missing(f"Redis at {parts.hostname}:{parts.port or 6379}", "connection refused")
    return REDIS_URL


@asynccontextmanager
async def serve_app(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run ``app`` on a free port; yield its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def serve() -> Callable[[web.Application], Any]:
    return serve_app


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[DemoStack]]]:
    started: list[DemoStack] = []

    async def make(
        overrides: dict[str, Any] | None = None,
        *,
        seed: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> DemoStack:
        state = tmp_path / f"s{len(started)}"
        stack = DemoStack("127.0.0.1", DemoPorts(0, 0, 0, 0), state, clock=clock)
        stack.prepare_state(overrides)
        if not seed:
            stack.seed_mappings = _no_seed  # type: ignore[method-assign]
        await stack.start()
        started.append(stack)
        return stack

    yield make
    for stack in started:
        await stack.stop()


async def _no_seed() -> None:
    return None


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[DemoStack]]) -> DemoStack:
    return await make_stack()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held for the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped at the end), as an asyncpg SQLAlchemy URL."""
    if not _port_open("127.0.0.1", 5432):
        service_missing("PostgreSQL on 127.0.0.1:5432", "connection refused")
    import asyncpg

    name = f"dragoman_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        service_missing("PostgreSQL on 127.0.0.1:5432", type(exc).__name__)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each mapping-store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mappings.db'}"
    url: str = request.getfixturevalue("pg_url")
    asyncio.run(empty_database(url))
    return url


@pytest.fixture(scope="session")
def cipher() -> MappingCipher:
    """A mapping cipher for tests that build a MappingStore by hand (fixed test key)."""
    return MappingCipher.from_master_key(b"dragoman-test-master-key-32bytes")


@pytest.fixture
async def held() -> AsyncIterator[HeldUpstream]:
    """An upstream that holds every request until ``held.release`` is set."""
    async with held_upstream() as upstream:
        yield upstream

"""Fixtures of the fail-closed matrix: a fresh PostgreSQL database, moto's KMS, and
``make_faulty`` (the production-shaped stack of fault_stack.py, every dependency behind a
FaultProxy)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from fault_stack import Faulty, MakeFaulty, start_faulty, stop_faulty
from sqlalchemy.engine import make_url

from dragoman.demo.runner import DemoStack
from keys.contract.aws_kms_fixture import kms_server


@pytest.fixture
async def fresh_pg_url(pg_url: str) -> AsyncIterator[str]:
    """A database of its own on the test PostgreSQL server (dropped after the test)."""
    name = f"dragoman_faults_{uuid.uuid4().hex[:10]}"
    admin_dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def kms_endpoint() -> Iterator[str]:
    """moto's KMS on a loopback port, with fake credentials in the environment."""
    with kms_server() as url:
        yield url


@pytest.fixture
async def make_faulty(
    kms_endpoint: str,
    fresh_pg_url: str,
    redis_url: str,
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
) -> AsyncIterator[MakeFaulty]:
    made: list[Faulty] = []

    async def make(
        overrides: dict[str, Any] | None = None, *, oidc: dict[str, Any] | None = None
    ) -> Faulty:
        faulty = await start_faulty(
            make_stack,
            http,
            fresh_pg_url=fresh_pg_url,
            redis_url=redis_url,
            kms_endpoint=kms_endpoint,
            overrides=overrides,
            oidc=oidc,
        )
        made.append(faulty)
        return faulty

    yield make
    for faulty in made:
        await stop_faulty(faulty)

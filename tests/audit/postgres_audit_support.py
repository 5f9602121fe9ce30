"""Helpers for the audit shipping tests: the table's rows, owner SQL, a restricted role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from dragoman.audit.postgres import AuditShipper


def plain(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def owner_sql(url: str, sql: str, *args: Any) -> str:
    """Run ``sql`` as the database owner (postgres); returns the status string."""
    connection = await asyncpg.connect(plain(url))
    try:
        status: str = await connection.execute(sql, *args)
        return status
    finally:
        await connection.close()


async def rows(url: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(plain(url))
    try:
        return list(
            await connection.fetch(
                "SELECT chain, seq, prev, hash, line FROM audit_records ORDER BY seq"
            )
        )
    finally:
        await connection.close()


def file_lines(live: Path) -> list[str]:
    """Every line of the log at ``live`` (rotated files, then the live file), in order."""
    from dragoman.audit.rotation import rotated_files

    out: list[str] = []
    for path in [*rotated_files(live), live]:
        out.extend(path.read_text("utf-8").splitlines())
    return out


@asynccontextmanager
async def restricted_role(url: str) -> AsyncIterator[str]:
    """A login role with INSERT and SELECT on audit_records only; yields its URL."""
    name = f"dragoman_audit_{uuid.uuid4().hex[:8]}"
    await owner_sql(url, f'CREATE ROLE "{name}" LOGIN')
    await owner_sql(url, f'GRANT USAGE ON SCHEMA public TO "{name}"')
    await owner_sql(url, f'GRANT INSERT, SELECT ON audit_records TO "{name}"')
    user_url = url.replace("://postgres@", f"://{name}@", 1)
    assert user_url != url, "the test database URL is expected to name the postgres user"
    try:
        yield user_url
    finally:
        await owner_sql(url, f'DROP OWNED BY "{name}"')
        await owner_sql(url, f'DROP ROLE "{name}"')


@asynccontextmanager
async def shipper(live: Path, url: str, **options: Any) -> AsyncIterator[AuditShipper]:
    """A shipper driven by the test (never started), closed at the end."""
    audit = AuditShipper(live, url, **options)
    try:
        yield audit
    finally:
        await audit.close()

"""The session's PostgreSQL database, emptied for a test that needs to start from nothing."""

from __future__ import annotations

import asyncpg


async def empty_database(url: str) -> None:
    """Drop every table (whatever later migrations add), so migrations run from scratch."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await connection.close()

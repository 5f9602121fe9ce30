"""Audit shipping settings, and the shipper on SQLite (no PostgreSQL needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from chain_support import request, sink, verify_cli
from postgres_audit_support import file_lines, shipper

from dragoman.settings import AuditSettings
from dragoman.state import migrate
from dragoman.state.sql import make_engine


def test_shipping_needs_the_chained_file_sink() -> None:
    with pytest.raises(ValueError, match="needs sink = file and chain"):
        AuditSettings(sink="stdout", database_url="sqlite+aiosqlite:///audit.db")


def test_shipping_to_an_unsupported_driver_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with"):
        AuditSettings(database_url="mysql://auditor@db/audit")


def test_no_database_url_means_no_shipper() -> None:
    from dragoman.audit.postgres import open_audit_shipper

    assert open_audit_shipper(AuditSettings()) is None


async def test_the_shipper_copies_a_log_into_a_migrated_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    live = tmp_path / "audit.jsonl"
    writer = sink(live)
    for n in range(3):
        writer.write(request(n))
    writer.close()
    async with shipper(live, url) as audit:
        assert await audit.drain() == 3
    with sqlite3.connect(tmp_path / "audit.db") as db:
        lines = [row[0] for row in db.execute("SELECT line FROM audit_records ORDER BY seq")]
    assert lines == file_lines(live)
    result = verify_cli("--database", url, live)
    assert result.returncode == 0, result.stderr


def test_verifying_a_sqlite_path_that_does_not_exist_names_it_and_creates_nothing(
    tmp_path: Path,
) -> None:
    typo = tmp_path / "adit.db"
    result = verify_cli("--database", f"sqlite+aiosqlite:///{typo}")
    assert result.returncode == 2, result.stdout
    assert f"no such file {typo}" in result.stderr
    assert not typo.exists()


@pytest.mark.parametrize("flag", ["true", "True", "yes", "1"])
async def test_a_sqlite_uri_is_read_whatever_the_spelling_of_its_uri_flag(
    tmp_path: Path, flag: str
) -> None:
    path = tmp_path / "audit.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    result = verify_cli("--database", f"sqlite+aiosqlite:///file:{path}?uri={flag}")
    assert result.returncode == 0, result.stderr
    assert "0 records" in result.stdout


def test_an_in_memory_sqlite_url_is_refused_as_unreadable_without_a_traceback() -> None:
    result = verify_cli("--database", "sqlite+aiosqlite://")
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr


async def test_an_empty_sqlite_table_is_found_truncated_when_it_must_end_closed(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    result = verify_cli("--database", url, "--closed")
    assert result.returncode == 1, result.stdout
    assert "index 0: truncated: the log holds no record" in result.stderr

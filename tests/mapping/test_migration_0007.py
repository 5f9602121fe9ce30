"""Revision 0007 on a database holding findings from before it: their alerts keep the id
they were first sent under (``reconcile:<run_id>:<mapping_id>``), so a resumed run sends an
unsent one under the id a receiver may already hold."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import Connection

from dragoman.mapping.reconcile_store import RunStore
from dragoman.mapping.store import make_engine
from dragoman.state import migrate

MAPPING = "00000000-0000-4000-8000-000000000007"


def _to_0006_with_an_unsent_finding(connection: Connection) -> None:
    command.upgrade(migrate._config(connection), "0006")
    findings = Table("reconcile_findings", MetaData(), autoload_with=connection)
    assert "alert_id" not in findings.c  # really the old shape
    connection.execute(
        findings.insert(),
        {
            "run_id": "run-before-0007",
            "mapping_id": MAPPING,
            "kind": "merged",
            "customer_index": None,
            "status_before": "active",
            "status_after": "stale",
            "found_at": datetime(2026, 12, 1, tzinfo=UTC),
            "known": False,
            "alerted_at": None,
        },
    )


async def test_a_finding_from_before_0007_keeps_the_alert_id_it_was_sent_under(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_0006_with_an_unsent_finding)
        await migrate.upgrade(engine)
        (finding,) = await RunStore(engine, timeout=5).unsent("run-before-0007")
        assert finding.alert_id == f"reconcile:run-before-0007:{MAPPING}"
    finally:
        await engine.dispose()

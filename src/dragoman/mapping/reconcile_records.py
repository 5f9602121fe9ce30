"""What reconciliation keeps in the state store (tables on the shared metadata, mirrored by
migration 0004) and the records read from it.

- ``reconcile_runs``: one row per run (id, status, counts so far, time spent).
- ``reconcile_findings``: one row per discrepancy a run found (mapping id, drift kind,
  status before and after, the customer's blind index), and whether its alert went out.
- ``reconcile_lease``: the runner lease on SQLite (:mod:`dragoman.mapping.reconcile_lease`).
- the checkpoints are two columns of the mapping itself: ``last_reconcile_run`` (the run
  that finished it) and ``last_reconciled_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
)

from dragoman.mapping.entity import AccountMapping, MappingStatus
from dragoman.mapping.rows import utc
from dragoman.state.sql import metadata

RUNNING = "running"
COMPLETED = "completed"
INCOMPLETE = "incomplete"
"""Ended with mappings left unchecked (lookups failed): resumable."""
ABANDONED = "abandoned"
"""Unfinished and too old to resume (or replaced by `--fresh`)."""
UNFINISHED = (RUNNING, INCOMPLETE)

reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("started_by", String(256), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("sessions", Integer, nullable=False),
    Column("active_seconds", Float, nullable=False),
    Column("total", Integer, nullable=False),
    Column("counts", JSON, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("note", String(512), nullable=True),
    Index("ix_reconcile_runs_started_at", "started_at"),
)

reconcile_findings = Table(
    "reconcile_findings",
    metadata,
    Column("run_id", String(36), nullable=False),
    Column("mapping_id", String(36), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("customer_index", String(64), nullable=True),
    Column("status_before", String(16), nullable=False),
    Column("status_after", String(16), nullable=False),
    Column("found_at", DateTime(timezone=True), nullable=False),
    Column("known", Boolean, nullable=False),
    Column("alerted_at", DateTime(timezone=True), nullable=True),
    # The id its alert is sent under (Idempotency-Key); null on rows before migration 0007.
    Column("alert_id", String(160), nullable=True),
    PrimaryKeyConstraint("run_id", "mapping_id", name="pk_reconcile_findings"),
    Index("ix_reconcile_findings_mapping", "mapping_id", "found_at"),
)

reconcile_lease = Table(
    "reconcile_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(256), nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)


def alert_id_of(run_id: str, mapping_id: str) -> str:
    """The id of the alert a run raises for a mapping's discrepancy."""
    return f"reconcile:{run_id}:{mapping_id}"


@dataclass(slots=True)
class RunRecord:
    id: str
    status: str
    trigger: str
    started_by: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    sessions: int
    active_seconds: float
    total: int
    counts: dict[str, int]
    errors: int
    note: str | None

    @classmethod
    def of(cls, row: Any) -> RunRecord:
        return cls(
            id=row.id,
            status=row.status,
            trigger=row.trigger,
            started_by=row.started_by,
            started_at=utc(row.started_at),
            updated_at=utc(row.updated_at),
            finished_at=None if row.finished_at is None else utc(row.finished_at),
            sessions=row.sessions,
            active_seconds=row.active_seconds,
            total=row.total,
            counts={str(k): int(v) for k, v in dict(row.counts).items()},
            errors=row.errors,
            note=row.note,
        )


@dataclass(frozen=True, slots=True)
class Finding:
    run_id: str
    mapping_id: str
    kind: str
    customer_index: str | None
    status_before: str
    status_after: str
    found_at: datetime
    known: bool
    alerted_at: datetime | None
    alert_id: str

    @classmethod
    def of(cls, row: Any) -> Finding:
        return cls(
            run_id=row.run_id,
            mapping_id=row.mapping_id,
            kind=row.kind,
            customer_index=row.customer_index,
            status_before=row.status_before,
            status_after=row.status_after,
            found_at=utc(row.found_at),
            known=bool(row.known),
            alerted_at=None if row.alerted_at is None else utc(row.alerted_at),
            alert_id=row.alert_id or alert_id_of(row.run_id, row.mapping_id),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one checked mapping becomes: written with the mapping's version."""

    mapping: AccountMapping
    drift: str | None
    """None when the mapping matched; else the drift kind."""
    new_status: MappingStatus
    known: bool = False
    """An unchanged discrepancy an earlier run already alerted: recorded, not alerted."""
    alert_id: str | None = None
    """The id of the alert an earlier run raised for this same discrepancy without learning
    it was delivered: sent again under that id, so a receiver drops it if it did arrive.
    None: a new alert, under this run's id."""

    @property
    def validated(self) -> bool:
        return self.drift is None


@dataclass(slots=True)
class BatchResult:
    written: list[Outcome] = field(default_factory=list)
    conflicts: list[Outcome] = field(default_factory=list)

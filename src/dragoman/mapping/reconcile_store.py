"""Reading and writing reconciliation's state: runs, the mappings still to do, findings.

Each checked batch is one transaction: the mappings' changes (only where the version read
is still there and the mapping is not revoked), their checkpoints (``last_reconcile_run``),
the findings, and the run's counts. The finding's alert is sent after that commit and then
marked sent (``alerted_at``), so an interrupted run sends what it committed and had not
sent yet when it resumes, and never sends one twice (an outbox). A resumed run only asks
for mappings whose ``last_reconcile_run`` is not its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dragoman.mapping.entity import MappingStatus
from dragoman.mapping.reconcile_records import (
    ABANDONED,
    COMPLETED,
    RUNNING,
    UNFINISHED,
    BatchResult,
    Finding,
    Outcome,
    RunRecord,
    alert_id_of,
)
from dragoman.mapping.reconcile_records import reconcile_findings as f
from dragoman.mapping.reconcile_records import reconcile_runs as r
from dragoman.mapping.rows import to_utc, utc
from dragoman.mapping.schema import account_mappings as m
from dragoman.state.sql import StoreUnavailable
from dragoman.timeouts import within

T = TypeVar("T")


class RunStore:
    def __init__(self, engine: AsyncEngine, *, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout

    async def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await within(self.timeout, work())
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    # -- runs ------------------------------------------------------------------------------

    async def latest(self, *, statuses: Sequence[str] | None = None) -> RunRecord | None:
        async def go() -> RunRecord | None:
            query = select(r).order_by(r.c.started_at.desc()).limit(1)
            if statuses is not None:
                query = query.where(r.c.status.in_(statuses))
            async with self.engine.connect() as conn:
                row = (await conn.execute(query)).first()
            return None if row is None else RunRecord.of(row)

        return await self._run(go)

    async def get(self, run_id: str) -> RunRecord | None:
        async def go() -> RunRecord | None:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(r).where(r.c.id == run_id))).first()
            return None if row is None else RunRecord.of(row)

        return await self._run(go)

    async def create(self, *, trigger: str, started_by: str, now: datetime) -> RunRecord:
        run_id = str(uuid.uuid4())
        now = to_utc(now)

        async def go() -> None:
            async with self.engine.begin() as conn:
                total = (
                    await conn.execute(
                        select(func.count())
                        .select_from(m)
                        .where(m.c.status != MappingStatus.REVOKED.value, m.c.created_at <= now)
                    )
                ).scalar_one()
                await conn.execute(
                    r.insert().values(
                        id=run_id,
                        status=RUNNING,
                        trigger=trigger,
                        started_by=started_by[:256],
                        started_at=now,
                        updated_at=now,
                        finished_at=None,
                        sessions=0,
                        active_seconds=0.0,
                        total=int(total),
                        counts={},
                        errors=0,
                        note=None,
                    )
                )

        await self._run(go)
        found = await self.get(run_id)
        assert found is not None
        return found

    async def begin_session(self, run_id: str, now: datetime) -> None:
        async def go() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(r)
                    .where(r.c.id == run_id)
                    .values(
                        status=RUNNING,
                        sessions=r.c.sessions + 1,
                        updated_at=to_utc(now),
                        finished_at=None,
                        note=None,
                    )
                )

        await self._run(go)

    async def end_session(
        self,
        run_id: str,
        *,
        status: str,
        counts: Mapping[str, int],
        active_seconds: float,
        errors: int,
        note: str | None,
        now: datetime,
    ) -> None:
        async def go() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(r)
                    .where(r.c.id == run_id)
                    .values(
                        status=status,
                        counts=dict(counts),
                        active_seconds=active_seconds,
                        errors=errors,
                        note=None if note is None else note[:512],
                        updated_at=to_utc(now),
                        finished_at=to_utc(now) if status == COMPLETED else None,
                    )
                )

        await self._run(go)

    async def abandon(self, run_id: str, now: datetime, note: str) -> None:
        async def go() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(r)
                    .where(r.c.id == run_id, r.c.status.in_(UNFINISHED))
                    .values(status=ABANDONED, updated_at=to_utc(now), note=note[:512])
                )

        await self._run(go)

    async def oldest_live_mapping(self) -> datetime | None:
        async def go() -> datetime | None:
            async with self.engine.connect() as conn:
                oldest = (
                    await conn.execute(
                        select(func.min(m.c.created_at)).where(
                            m.c.status != MappingStatus.REVOKED.value
                        )
                    )
                ).scalar_one()
            return None if oldest is None else utc(oldest)

        return await self._run(go)

    # -- the mappings of a run ---------------------------------------------------------------

    def _todo(self, run: RunRecord) -> list[Any]:
        return [
            m.c.status != MappingStatus.REVOKED.value,
            m.c.created_at <= to_utc(run.started_at),
            or_(m.c.last_reconcile_run.is_(None), m.c.last_reconcile_run != run.id),
        ]

    async def count_todo(self, run: RunRecord) -> int:
        async def go() -> int:
            async with self.engine.connect() as conn:
                query = select(func.count()).select_from(m).where(*self._todo(run))
                return int((await conn.execute(query)).scalar_one())

        return await self._run(go)

    async def todo_page(self, run: RunRecord, *, after: str, limit: int) -> list[Any]:
        """Rows not finished by ``run``, in id order after ``after`` (keyset paging)."""

        async def go() -> list[Any]:
            async with self.engine.connect() as conn:
                query = (
                    select(m).where(*self._todo(run), m.c.id > after).order_by(m.c.id).limit(limit)
                )
                return list((await conn.execute(query)).all())

        return await self._run(go)

    async def row(self, mapping_id: str) -> Any:
        async def go() -> Any:
            async with self.engine.connect() as conn:
                return (await conn.execute(select(m).where(m.c.id == mapping_id))).first()

        return await self._run(go)

    # -- findings ----------------------------------------------------------------------------

    async def previous_findings(
        self, run_id: str, mapping_ids: Iterable[str]
    ) -> dict[str, Finding]:
        """The latest finding of each mapping by an earlier run."""
        wanted = sorted(set(mapping_ids))
        if not wanted:
            return {}

        async def go() -> dict[str, Finding]:
            latest: dict[str, Finding] = {}
            async with self.engine.connect() as conn:
                for start in range(0, len(wanted), 500):
                    query = (
                        select(f)
                        .where(
                            f.c.mapping_id.in_(wanted[start : start + 500]), f.c.run_id != run_id
                        )
                        .order_by(f.c.found_at)
                    )
                    for row in await conn.execute(query):
                        latest[row.mapping_id] = Finding.of(row)
            return latest

        return await self._run(go)

    async def findings(self, run_id: str) -> list[Finding]:
        async def go() -> list[Finding]:
            async with self.engine.connect() as conn:
                query = select(f).where(f.c.run_id == run_id).order_by(f.c.mapping_id)
                return [Finding.of(row) for row in await conn.execute(query)]

        return await self._run(go)

    async def unsent(self, run_id: str) -> list[Finding]:
        """Findings of ``run_id`` committed but whose alert was not sent (the outbox)."""

        async def go() -> list[Finding]:
            async with self.engine.connect() as conn:
                query = (
                    select(f)
                    .where(f.c.run_id == run_id, f.c.alerted_at.is_(None), f.c.known.is_(False))
                    .order_by(f.c.found_at, f.c.mapping_id)
                )
                return [Finding.of(row) for row in await conn.execute(query)]

        return await self._run(go)

    async def mark_sent(self, run_id: str, mapping_ids: Sequence[str], now: datetime) -> None:
        if not mapping_ids:
            return

        async def go() -> None:
            async with self.engine.begin() as conn:
                for start in range(0, len(mapping_ids), 500):
                    await conn.execute(
                        update(f)
                        .where(
                            f.c.run_id == run_id,
                            f.c.mapping_id.in_(mapping_ids[start : start + 500]),
                        )
                        .values(alerted_at=to_utc(now))
                    )

        await self._run(go)

    # -- the batch write ---------------------------------------------------------------------

    async def write(
        self,
        run_id: str,
        outcomes: Sequence[Outcome],
        *,
        actor: str,
        counts: Callable[[BatchResult], Mapping[str, int]],
        now: datetime,
    ) -> BatchResult:
        """In one transaction: each mapping's change and checkpoint (only if it is still at
        the version that was read, and not revoked), the findings, and the run's counts.

        The updates go out as one statement per kind of change, executed for many rows at
        once; which rows took their update is then read back (their checkpoint names this
        run): the others changed meanwhile (conflicts). ``counts(result)`` is called inside
        the transaction: the run's totals it returns are stored with the checkpoints."""
        result = BatchResult()
        now = to_utc(now)

        async def go() -> None:
            result.written.clear()
            result.conflicts.clear()
            async with self.engine.begin() as conn:
                await _update_mappings(conn, run_id, outcomes, actor=actor, now=now)
                updated: set[str] = set()
                ids = [o.mapping.id for o in outcomes]
                for start in range(0, len(ids), 500):
                    query = select(m.c.id).where(
                        m.c.id.in_(ids[start : start + 500]), m.c.last_reconcile_run == run_id
                    )
                    updated.update((await conn.execute(query)).scalars())
                for outcome in outcomes:
                    (result.written if outcome.mapping.id in updated else result.conflicts).append(
                        outcome
                    )
                findings = [_finding(run_id, o, now) for o in result.written if o.drift]
                if findings:
                    await conn.execute(f.insert(), findings)
                await conn.execute(
                    update(r)
                    .where(r.c.id == run_id)
                    .values(counts=dict(counts(result)), updated_at=now)
                )

        await self._run(go)
        return result


# One statement per kind of change, each run for many rows (executemany).
_WHERE = (
    m.c.id == bindparam("b_id"),
    m.c.version == bindparam("b_version"),
    m.c.status != MappingStatus.REVOKED.value,
)
_CHECKPOINT: dict[str, Any] = {
    "last_reconcile_run": bindparam("b_run"),
    "last_reconciled_at": bindparam("b_now"),
}
_CHANGE: dict[str, Any] = {
    **_CHECKPOINT,
    "status": bindparam("b_status"),
    "version": m.c.version + 1,
    "updated_at": bindparam("b_now"),
    "updated_by": bindparam("b_actor"),
}
VALIDATE = update(m).where(*_WHERE).values(**_CHANGE, last_validated_at=bindparam("b_now"))
"""Matched: validated now (and maybe stale -> active): a new version."""
CHANGE_STATUS = update(m).where(*_WHERE).values(**_CHANGE)
"""Drift that changes the status: a new version."""
CHECKPOINT = update(m).where(*_WHERE).values(**_CHECKPOINT)
"""Drift the mapping already shows: only the checkpoint (the entity does not change)."""


async def _update_mappings(
    conn: AsyncConnection,
    run_id: str,
    outcomes: Sequence[Outcome],
    *,
    actor: str,
    now: datetime,
) -> None:
    groups: dict[Any, list[dict[str, Any]]] = {VALIDATE: [], CHANGE_STATUS: [], CHECKPOINT: []}
    for outcome in outcomes:
        if outcome.validated:
            statement = VALIDATE
        elif outcome.new_status is not outcome.mapping.status:
            statement = CHANGE_STATUS
        else:
            statement = CHECKPOINT
        groups[statement].append(
            {
                "b_id": outcome.mapping.id,
                "b_version": outcome.mapping.version,
                "b_status": outcome.new_status.value,
                "b_run": run_id,
                "b_now": now,
                "b_actor": actor,
            }
        )
    for statement, params in groups.items():
        if params:
            await conn.execute(statement, params)


def _finding(run_id: str, outcome: Outcome, now: datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "mapping_id": outcome.mapping.id,
        "kind": outcome.drift,
        "customer_index": outcome.mapping.customer_index,
        "status_before": outcome.mapping.status.value,
        "status_after": outcome.new_status.value,
        "found_at": now,
        "known": outcome.known,
        "alerted_at": None,
        "alert_id": outcome.alert_id or alert_id_of(run_id, outcome.mapping.id),
    }

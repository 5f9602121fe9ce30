"""One session of a reconciliation run: a producer reads the mappings still to do (keyset
pages, unsealed), workers ask the platform (``concurrency`` at a time), a writer commits
what they found in batches and sends the alerts of each committed batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from dragoman.alerts.base import Alert, deliver
from dragoman.mapping.audit import MappingAction
from dragoman.mapping.audit import Outcome as AuditOutcome
from dragoman.mapping.crypto import MappingCryptoError
from dragoman.mapping.entity import AccountMapping, MappingStatus
from dragoman.mapping.platform import CustomerRecord, Drift, PlatformUnavailable
from dragoman.mapping.reconcile_policy import contribution, decide, drift_alert
from dragoman.mapping.reconcile_records import (
    COMPLETED,
    INCOMPLETE,
    RUNNING,
    BatchResult,
    Outcome,
    RunRecord,
)
from dragoman.mapping.reconcile_report import Report
from dragoman.pipeline.errors import Conflict, InternalError, MappingUnavailable
from dragoman.state.sql import StoreUnavailable
from dragoman.timeouts import within

if TYPE_CHECKING:
    from dragoman.mapping.reconcile import Reconciler

log = logging.getLogger("dragoman.mapping.reconcile")

RECONCILE_PURPOSE = "reconciliation"
"""The ``purpose`` of a run's mapping records."""
MAX_ERROR_SAMPLES = 50
CONFLICT_ROUNDS = 3
FLUSH_INTERVAL = 1.0
ALERT_WAIT = 10.0
"""How long the end of a session waits for its alerts still being delivered (a webhook
retrying); those not delivered by then stay in the outbox and are sent again."""


class CustomerRecords(Protocol):
    async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord: ...


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, checked: int) -> None: ...

    def finish(self) -> None: ...


class Session:
    """One session of one run: producer -> workers (platform lookups) -> writer."""

    def __init__(
        self, owner: Reconciler, run: RunRecord, resumed: bool, progress: Progress | None
    ) -> None:
        self.o = owner
        self.run = run
        self.resumed = resumed
        self.progress = progress
        self.counts: Counter[str] = Counter(run.counts)
        self.errors = 0
        self.error_samples: list[dict[str, str]] = []
        self.consecutive = 0
        self.aborted: str | None = None
        self.actor = f"reconcile:{run.id}"
        self.deliveries: list[tuple[str, asyncio.Future[bool]]] = []
        """Alerts handed to the sinks and not marked sent yet: (mapping id, settled)."""

    # -- bookkeeping ---------------------------------------------------------------------------

    def _error(self, mapping_id: str, reason: str, *, lookup: bool) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append({"mapping_id": mapping_id, "reason": reason})
        if not lookup:
            return
        self.consecutive += 1
        limit = self.o.settings.max_consecutive_errors
        if limit and self.consecutive >= limit and self.aborted is None:
            self.aborted = (
                f"stopped after {limit} failed platform lookups in a row (last: {reason})"
            )
            log.warning("reconciliation run %s %s", self.run.id, self.aborted)

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(1)

    # -- the session -------------------------------------------------------------------------

    async def go(self) -> Report:
        started = time.monotonic()
        runs = self.o.runs
        await runs.begin_session(self.run.id, self.o.now())
        await _uninterrupted(self._send_unsent())
        todo = await runs.count_todo(self.run)
        if self.progress is not None:
            self.progress.start(todo)
        try:
            await self._pipeline()
            await self._mark_delivered(wait=ALERT_WAIT)
        except (asyncio.CancelledError, Exception) as exc:
            # Left unfinished (resumable); record what this session did, if the store lets us.
            self.aborted = self.aborted or (
                "interrupted" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__
            )
            with contextlib.suppress(Exception):
                await self._mark_delivered()
            with contextlib.suppress(Exception):
                await self._end(RUNNING, started)
            raise
        finally:
            if self.progress is not None:
                self.progress.finish()
        remaining = await runs.count_todo(self.run)
        status = COMPLETED if remaining == 0 else INCOMPLETE
        if status == INCOMPLETE and self.aborted is None:
            self.aborted = f"{remaining} mapping(s) left unchecked"
        active = await self._end(status, started)
        return Report.build(
            run=self.run,
            status=status,
            trigger=self.o.trigger,
            resumed=self.resumed,
            finished_at=self.o.now(),
            session_seconds=time.monotonic() - started,
            active_seconds=active,
            remaining=remaining,
            counts=dict(self.counts),
            errors=self.errors,
            error_samples=self.error_samples,
            note=self.aborted,
        )

    async def _end(self, status: str, started: float) -> float:
        active = self.run.active_seconds + (time.monotonic() - started)
        await self.o.runs.end_session(
            self.run.id,
            status=status,
            counts=self.counts,
            active_seconds=active,
            errors=self.errors,
            note=self.aborted,
            now=self.o.now(),
        )
        return active

    async def _pipeline(self) -> None:
        workers = self.o.concurrency
        inbox: asyncio.Queue[AccountMapping | None] = asyncio.Queue(maxsize=2 * workers)
        outbox: asyncio.Queue[tuple[AccountMapping, Drift] | None] = asyncio.Queue(
            maxsize=2 * self.o.settings.batch_size
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce(inbox, workers))
                for _ in range(workers):
                    group.create_task(self._work(inbox, outbox))
                group.create_task(self._write(outbox, workers))
        except BaseExceptionGroup as failed:
            # One task failed (the store, most likely) and the others were cancelled: the
            # caller gets that failure itself, not a group of it.
            first = next(
                (e for e in failed.exceptions if not isinstance(e, asyncio.CancelledError)),
                failed.exceptions[0],
            )
            raise first from None

    async def _produce(self, inbox: asyncio.Queue[AccountMapping | None], workers: int) -> None:
        after = ""
        page = max(self.o.settings.batch_size, 2 * workers)
        codec = self.o.store.codec
        while self.aborted is None:
            rows = await self.o.runs.todo_page(self.run, after=after, limit=page)
            if not rows:
                break
            for row in rows:
                if self.aborted is not None:
                    break
                after = row.id
                try:
                    mapping = codec.entity(row)
                except MappingCryptoError as exc:
                    log.error("reconciliation: mapping %s does not open: %s", row.id, exc)
                    self._error(row.id, "unreadable", lookup=False)
                    self._advance()
                    continue
                await inbox.put(mapping)
        for _ in range(workers):
            await inbox.put(None)

    async def _work(
        self,
        inbox: asyncio.Queue[AccountMapping | None],
        outbox: asyncio.Queue[tuple[AccountMapping, Drift] | None],
    ) -> None:
        while (mapping := await inbox.get()) is not None:
            if self.aborted is not None:
                continue  # left to do: the resumed run asks for it
            try:
                record = await self.o.platform.customer(
                    mapping.payment_customer, cloud_account=mapping.cloud_account
                )
            except PlatformUnavailable as exc:
                self._error(mapping.id, f"platform unavailable: {exc}", lookup=True)
                self._advance()
                continue
            except Exception as exc:
                # One mapping's lookup failing in a way nobody foresaw is that mapping's
                # error (left to do, never a match), not the end of the run.
                log.exception("reconciliation: looking up mapping %s failed", mapping.id)
                self._error(mapping.id, f"lookup failed: {type(exc).__name__}", lookup=True)
                self._advance()
                continue
            self.consecutive = 0
            self._advance()
            await outbox.put((mapping, record.drift_for(mapping.cloud_account)))
        await outbox.put(None)

    async def _write(
        self, outbox: asyncio.Queue[tuple[AccountMapping, Drift] | None], workers: int
    ) -> None:
        pending: list[tuple[AccountMapping, Drift]] = []
        finished = 0
        try:
            while finished < workers:
                try:
                    if pending:
                        item = await within(FLUSH_INTERVAL, outbox.get())
                    else:
                        item = await outbox.get()
                except TimeoutError:
                    batch, pending = pending, []
                    await self._flush(batch)
                    continue
                if item is None:
                    finished += 1
                    continue
                pending.append(item)
                if len(pending) >= self.o.settings.batch_size:
                    batch, pending = pending, []
                    await self._flush(batch)
            batch, pending = pending, []
            await self._flush(batch)
        except asyncio.CancelledError:
            # Interrupted: what was checked and not written yet is still worth keeping.
            while not outbox.empty():
                item = outbox.get_nowait()
                if item is not None:
                    pending.append(item)
            with contextlib.suppress(Exception):
                await within(self.o.runs.timeout, self._flush(pending))
            raise

    # -- one batch ---------------------------------------------------------------------------

    async def _flush(self, items: list[tuple[AccountMapping, Drift]]) -> None:
        """Write one batch and hand its alerts to the sinks, whole: a cancellation arriving
        meanwhile waits for the batch (written and its alerts handed over, or not written
        at all). An alert is marked sent once the sinks delivered it (or finally failed);
        one still on its way when the session ends stays in the outbox."""
        if items:
            await _uninterrupted(self._flush_now(items))

    async def _flush_now(self, items: list[tuple[AccountMapping, Drift]]) -> None:
        outcomes = await self._decide(items)
        for _ in range(CONFLICT_ROUNDS):
            base = Counter(self.counts)

            def totals(result: BatchResult, base: Counter[str] = base) -> dict[str, int]:
                new = base + contribution(result.written)
                new["conflicts"] += len(result.conflicts)
                return dict(new)

            await self._record(outcomes, AuditOutcome.STARTED)
            try:
                result = await self.o.runs.write(
                    self.run.id, outcomes, actor=self.actor, counts=totals, now=self.o.now()
                )
            except Exception as exc:
                # The run stops (resumable) and these mappings are decided again when it
                # resumes. (A cancelled write's outcome is unknown: its started records
                # stand alone.)
                failed = MappingUnavailable if isinstance(exc, StoreUnavailable) else InternalError
                await self._record(outcomes, AuditOutcome.FAILED, code=failed.code)
                raise
            self.counts = Counter(totals(result))
            await self._record(result.written, AuditOutcome.OK)
            await self._record(result.conflicts, AuditOutcome.REFUSED, code=Conflict.code)
            await self._alert(o for o in result.written if o.drift is not None and not o.known)
            if not result.conflicts:
                return
            outcomes = await self._reread(result.conflicts)
            if not outcomes:
                return
        for outcome in outcomes:
            self._error(outcome.mapping.id, "changed repeatedly during the run", lookup=False)

    async def _record(
        self,
        outcomes: Iterable[Outcome],
        result: AuditOutcome,
        *,
        code: str | None = None,
    ) -> None:
        """One mapping record per mapping: who (this run), which mapping, the drift found
        (``code``) and the status change (``reason``). Every mapping a batch writes (its
        checkpoint, its validation, its status) is recorded ``started`` before the batch
        commits, so a write the store committed has a record even if the process dies
        before the batch's ``ok`` records are written; a write a concurrent one beat is
        recorded ``refused`` (``conflict``) and decided again."""
        auditor = self.o.auditor
        if auditor is None:
            return
        records = []
        for outcome in outcomes:
            mapping = outcome.mapping
            moved = _changes_status(outcome)
            records.append(
                auditor.build(
                    MappingAction.RECONCILE,
                    actor=self.actor,
                    purpose=RECONCILE_PURPOSE,
                    mapping=mapping,
                    outcome=result,
                    code=code or outcome.drift,
                    reason=f"{mapping.status.value} -> {outcome.new_status.value}"
                    if moved
                    else None,
                )
            )
        await auditor.record_all(records)

    async def _decide(self, items: list[tuple[AccountMapping, Drift]]) -> list[Outcome]:
        wanted = [
            mapping.id
            for mapping, drift in items
            if drift is not Drift.NONE or mapping.status is MappingStatus.STALE
        ]
        previous = await self.o.runs.previous_findings(self.run.id, wanted)
        return [
            decide(mapping, drift, self.o.policy, previous.get(mapping.id))
            for mapping, drift in items
        ]

    async def _reread(self, conflicts: list[Outcome]) -> list[Outcome]:
        """Conflicting mappings as they are now, decided again with the same verdict."""
        fresh: list[tuple[AccountMapping, Drift]] = []
        for outcome in conflicts:
            row = await self.o.runs.row(outcome.mapping.id)
            if row is None or row.status == MappingStatus.REVOKED.value:
                self.counts["skipped"] += 1  # revoked (or gone) meanwhile: nothing to do
                continue
            if row.last_reconcile_run == self.run.id:
                continue  # finished already (a write of ours that was cut short committed)
            try:
                mapping = self.o.store.codec.entity(row)
            except MappingCryptoError:
                self._error(outcome.mapping.id, "unreadable", lookup=False)
                continue
            fresh.append((mapping, Drift(outcome.drift) if outcome.drift else Drift.NONE))
        return await self._decide(fresh)

    async def _alert(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self._send(outcome.mapping.id, drift_alert(self.run.id, outcome))
        await self._mark_delivered()

    async def _send_unsent(self) -> None:
        """Alerts the previous session committed and did not get delivered."""
        for finding in await self.o.runs.unsent(self.run.id):
            self._send(finding.mapping_id, drift_alert(self.run.id, finding))
        await self._mark_delivered()

    def _send(self, mapping_id: str, alert: Alert) -> None:
        self.deliveries.append((mapping_id, deliver(self.o.alerts, alert)))

    async def _mark_delivered(self, *, wait: float = 0.0) -> None:
        """Mark sent the alerts the sinks are done with (after waiting up to ``wait`` s for
        the others). One a sink dropped, or still on its way, is not: the outbox keeps it
        and the run's next session sends it again (a receiver drops a repeat by its id)."""
        if wait and self.deliveries:
            await asyncio.wait([future for _, future in self.deliveries], timeout=wait)
        pending, self.deliveries = self.deliveries, []
        sent = []
        for mapping_id, future in pending:
            if not future.done():
                self.deliveries.append((mapping_id, future))
            elif not future.cancelled() and future.result() is True:
                sent.append(mapping_id)
        await self.o.runs.mark_sent(self.run.id, sent, self.o.now())


def _changes_status(outcome: Outcome) -> bool:
    return outcome.new_status is not outcome.mapping.status


async def _uninterrupted(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    whole = asyncio.ensure_future(work)
    try:
        await asyncio.shield(whole)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await whole
        raise

"""Reconciliation (SEMANTICS §4): every live mapping against the platform's own record.

For each mapping that is not revoked, the platform is asked for its customer's record
(:class:`~dragoman.mapping.platform.PlatformClient`, with bounded concurrency) and:

- **matched**: ``last_validated_at`` becomes now. A mapping that reconciliation itself had
  made ``stale`` (its latest finding left it stale) is active again; a suspended mapping
  stays suspended, whoever suspended it.
- **drift** (customer missing, deleted, merged, or naming another account): the status the
  policy names for that kind (``reconcile.on_*``), never a milder one than the mapping
  has; a finding is recorded and one alert raised (kind, mapping id, the customer's blind
  index, run id; never a plaintext id). A discrepancy an earlier run already alerted, on a
  mapping that has not matched since and whose status does not change, is recorded as
  ``known`` and not alerted again.
- **platform unavailable** for that mapping: nothing is written; it counts as an error and
  stays to do (never a match). After ``max_consecutive_errors`` failures in a row the run
  stops early: the platform is down.

Every write names the version that was read (optimistic concurrency): a mapping changed
meanwhile is re-read and decided again, never overwritten. Checked mappings are written in
batches; each batch commits the mappings' changes, their checkpoints
(``last_reconcile_run``), their findings and the run's counts together. An interrupted run
(Ctrl-C, kill -9, a crash, a lost lease) resumes where its last batch committed and sends
the alerts it had committed and not sent (:mod:`dragoman.mapping.reconcile_store`). Only
one runner works at a time (:mod:`dragoman.mapping.reconcile_lease`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

from dragoman.alerts.base import AlertSink
from dragoman.mapping.audit import MappingAuditor
from dragoman.mapping.reconcile_lease import RunnerBusy, RunnerLock, instance_id, runner_lock
from dragoman.mapping.reconcile_policy import Policy, decide, drift_alert
from dragoman.mapping.reconcile_records import UNFINISHED, RunRecord
from dragoman.mapping.reconcile_report import Report
from dragoman.mapping.reconcile_session import CustomerRecords, Progress, Session
from dragoman.mapping.reconcile_store import RunStore
from dragoman.mapping.store import MappingStore
from dragoman.settings import ReconcileSettings

__all__ = [
    "CustomerRecords",
    "LeaseLost",
    "NothingToResume",
    "Policy",
    "Progress",
    "Reconciler",
    "Report",
    "RunnerBusy",
    "decide",
    "drift_alert",
]

log = logging.getLogger(__name__)

Resume = Literal["auto", "only", "fresh"]
"""auto: continue an unfinished run if there is one (young enough), else start one;
only: continue it or raise NothingToResume; fresh: abandon it and start a new run."""


class NothingToResume(Exception):
    pass


class LeaseLost(Exception):
    """The runner lock could no longer be vouched for; the run stopped (resumable)."""


class Reconciler:
    def __init__(
        self,
        store: MappingStore,
        platform: CustomerRecords,
        settings: ReconcileSettings,
        *,
        alerts: AlertSink,
        lock: RunnerLock | None = None,
        trigger: str = "cli",
        concurrency: int | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        auditor: MappingAuditor | None = None,
    ) -> None:
        """``auditor`` records each mapping a batch wrote (SEMANTICS §4: every read and
        write of a mapping is audited); a record that cannot be written stops the run
        (resumable)."""
        self.store = store
        self.auditor = auditor
        self.platform = platform
        self.settings = settings
        self.alerts = alerts
        self.runs = RunStore(store.engine, timeout=timeout)
        self.lock = lock or runner_lock(store.engine, ttl=settings.lease_ttl, timeout=timeout)
        self.trigger = trigger
        self.concurrency = concurrency or settings.concurrency
        self.policy = Policy.of(settings)
        self._clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def run(
        self,
        *,
        resume: Resume = "auto",
        progress: Progress | None = None,
        when: Callable[[RunStore], Awaitable[bool]] | None = None,
        started: Callable[[RunRecord, bool], None] | None = None,
    ) -> Report | None:
        """One session of a run (a new one, or the unfinished one resumed), under the
        runner lock (RunnerBusy if another runner holds it). ``when``, checked under the
        lock, may decline (then None is returned); ``started(run, resumed)`` is told which
        run this is before any work."""
        async with self.lock.hold() as lease:
            if when is not None and not await when(self.runs):
                return None
            run, resumed = await self._pick(resume)
            if started is not None:
                started(run, resumed)
            session = asyncio.create_task(Session(self, run, resumed, progress).go())
            lost = asyncio.create_task(lease.lost.wait())
            try:
                done, _ = await asyncio.wait({session, lost}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session
                raise
            finally:
                lost.cancel()
            if session in done:
                return session.result()
            session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session
            raise LeaseLost(f"run {run.id} stopped: the runner lock was lost; resume it")

    async def _pick(self, resume: Resume) -> tuple[RunRecord, bool]:
        now = self.now()
        unfinished = await self.runs.latest(statuses=UNFINISHED)
        if unfinished is not None and resume == "fresh":
            await self.runs.abandon(unfinished.id, now, "replaced by a fresh run")
            unfinished = None
        if unfinished is not None and now - unfinished.started_at > timedelta(
            seconds=self.settings.resume_within
        ):
            await self.runs.abandon(unfinished.id, now, "too old to resume")
            log.warning("reconciliation run %s is too old to resume; abandoned", unfinished.id)
            if resume == "only":
                raise NothingToResume(f"run {unfinished.id} was too old to resume (abandoned)")
            unfinished = None
        if unfinished is not None:
            return unfinished, True
        if resume == "only":
            raise NothingToResume("there is no unfinished run")
        return await self.runs.create(
            trigger=self.trigger, started_by=instance_id(), now=now
        ), False

"""The scheduled reconciliation inside the proxy (``reconcile.schedule``).

Every worker of every instance runs a scheduler; the runner lock lets one of them work and
the others skip. A scheduler wakes up every ``tick`` (a quarter of the interval, at most a
minute, jittered) and asks the state store whether a run is due:

- an unfinished run is resumed: at once if it was interrupted (its runner died or was
  stopped), after ``min(interval, 10 min)`` if it ended incomplete (the platform failed);
- otherwise, without ``reconcile.at``, a run is due ``interval`` after the last run
  started; with ``at``, at each slot ``at + k * interval`` (UTC) not yet covered by a run.
  Before any run, the oldest live mapping's creation stands for the last run (a fresh
  install runs one interval after its first mapping, not at start).

The due check is repeated under the lock, so a run another instance just finished is
never run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dragoman.alerts.base import AlertSink
from dragoman.mapping.audit import MappingAuditor
from dragoman.mapping.reconcile import CustomerRecords, LeaseLost, Reconciler, RunnerBusy
from dragoman.mapping.reconcile_records import INCOMPLETE, UNFINISHED
from dragoman.mapping.reconcile_report import Report
from dragoman.mapping.reconcile_store import RunStore
from dragoman.mapping.store import MappingStore
from dragoman.settings import ReconcileSettings, Settings
from dragoman.state.sql import StoreUnavailable

log = logging.getLogger(__name__)

RETRY_INCOMPLETE = 600.0


def latest_slot(now: datetime, interval: float, at: str) -> datetime:
    """The latest ``at + k * interval`` (UTC, anchored on 1970-01-01) not after ``now``."""
    hours, minutes = (int(part) for part in at.split(":"))
    anchor = datetime(1970, 1, 1, hours, minutes, tzinfo=UTC)
    steps = (now - anchor).total_seconds() // interval
    return anchor + timedelta(seconds=steps * interval)


async def is_due(runs: RunStore, settings: ReconcileSettings, now: datetime) -> bool:
    unfinished = await runs.latest(statuses=UNFINISHED)
    if unfinished is not None and now - unfinished.started_at <= timedelta(
        seconds=settings.resume_within
    ):
        if unfinished.status != INCOMPLETE:
            return True  # interrupted: its runner is gone (or holds the lock: then we skip)
        retry = min(settings.interval, RETRY_INCOMPLETE)
        return (now - unfinished.updated_at).total_seconds() >= retry
    last = await runs.latest()
    reference = last.started_at if last is not None else await runs.oldest_live_mapping()
    if reference is None:
        return False  # nothing to reconcile yet
    if settings.at is not None:
        return reference < latest_slot(now, settings.interval, settings.at)
    return (now - reference).total_seconds() >= settings.interval


class LogProgress:
    """Progress as log lines: at most one per tenth of the work."""

    def __init__(self, label: str, logger: logging.Logger = log) -> None:
        self._label = label
        self._log = logger
        self._total = 0
        self._done = 0
        self._next = 0

    def start(self, total: int) -> None:
        self._total, self._done = total, 0
        self._next = max(1, total // 10)
        self._log.info("%s: %d mapping(s) to check", self._label, total)

    def advance(self, checked: int) -> None:
        self._done += checked
        if self._done >= self._next and self._done < self._total:
            self._log.info("%s: %d/%d checked", self._label, self._done, self._total)
            self._next += max(1, self._total // 10)

    def finish(self) -> None:
        return None


class ReconcileScheduler:
    def __init__(
        self,
        reconciler: Reconciler,
        settings: ReconcileSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reconciler = reconciler
        self.settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.tick = min(60.0, max(0.25, settings.interval / 4))
        self.last_report: Report | None = None
        self.reports = 0
        """Runs (sessions) this scheduler carried out, for tests and metrics."""

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="reconcile-scheduler")

    async def close(self) -> None:
        """Stop; a run in progress is interrupted (it resumes at the next due check)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick * random.uniform(0.8, 1.2))
            try:
                await self.run_if_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled reconciliation failed")

    async def run_if_due(self) -> Report | None:
        runs = self.reconciler.runs
        try:
            if not await is_due(runs, self.settings, self.now()):
                return None
            report = await self.reconciler.run(
                progress=LogProgress("scheduled reconciliation"),
                when=lambda store: is_due(store, self.settings, self.now()),
                started=lambda run, resumed: log.info(
                    "scheduled reconciliation: %s run %s",
                    "resuming" if resumed else "starting",
                    run.id,
                ),
            )
        except RunnerBusy:
            log.debug("reconciliation is due but another runner holds the lock")
            return None
        except (StoreUnavailable, LeaseLost) as exc:
            log.warning("scheduled reconciliation stopped: %s", exc)
            return None
        if report is None:
            return None
        self.last_report = report
        self.reports += 1
        for line in report.lines():
            log.info("%s", line)
        if self.settings.report_path is not None:
            try:
                report.write(Path(self.settings.report_path))
            except OSError as exc:
                log.warning("cannot write the reconciliation report: %s", exc)
        return report


def open_scheduler(
    settings: Settings,
    store: MappingStore,
    platform: CustomerRecords | None,
    alerts: AlertSink,
    *,
    audit: Callable[[dict[str, Any]], object] | None = None,
    audit_many: Callable[[list[dict[str, Any]]], object] | None = None,
    clock: Callable[[], float] = time.time,
) -> ReconcileScheduler | None:
    """The proxy's scheduler, or None when the schedule is off or there is no way to read
    the platform's customer records (mapping.platform.customer_operation)."""
    if not settings.reconcile.schedule:
        return None
    if platform is None:
        log.warning(
            "reconcile.schedule is on but the catalog has no %r operation: no scheduled runs",
            settings.mapping.platform.customer_operation,
        )
        return None
    reconciler = Reconciler(
        store,
        platform,
        settings.reconcile,
        alerts=alerts,
        trigger="schedule",
        timeout=max(30.0, 10 * settings.store.query_timeout),
        clock=clock,
        auditor=None
        if audit is None
        else MappingAuditor(audit, store.codec, write_many=audit_many, clock=clock),
    )
    return ReconcileScheduler(reconciler, settings.reconcile, clock=clock)

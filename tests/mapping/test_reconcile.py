"""Reconciliation against the demo payment platform over real HTTP, on SQLite and
PostgreSQL: planted drift found exactly, one alert each, untouched mappings validated; an
interrupted run resumes without re-checking or re-alerting; a platform outage is never a
match; concurrent changes are re-read; one runner at a time; the stale gate through the
proxy, before and after a scheduled run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text, update

from dragoman.demo.runner import DemoStack
from dragoman.mapping.audit import RECORDS_PER_WRITE, MappingAuditor
from dragoman.mapping.entity import Grant, MappingStatus
from dragoman.mapping.platform import CustomerRecord, PlatformUnavailable
from dragoman.mapping.reconcile import LeaseLost, NothingToResume, Reconciler, RunnerBusy
from dragoman.mapping.reconcile_lease import ADVISORY_ID
from dragoman.mapping.reconcile_records import reconcile_lease
from dragoman.mapping.reconcile_schedule import is_due, latest_slot
from dragoman.pipeline.errors import AuditUnavailable
from dragoman.state.sql import StoreUnavailable
from reconcile_support import (
    KINDS,
    Planted,
    RecordingSink,
    UnconfirmedSink,
    asked,
    bulk_add,
    customer_of,
    rows_by_id,
    seed,
    start_platform,
    start_stack,
    stop_platform,
)

POLICY = {
    "customer_deleted": MappingStatus.SUSPENDED,
    "customer_missing": MappingStatus.SUSPENDED,
    "account_mismatch": MappingStatus.SUSPENDED,
    "customer_merged": MappingStatus.STALE,
}


@pytest.fixture
async def quiet(tmp_path: Path, database_url: str) -> AsyncIterator[DemoStack]:
    """The demo stack on the test's database, no demo mappings, no scheduled runs."""
    stack = await start_stack(
        tmp_path / "stack",
        {"store": {"database_url": database_url}, "reconcile": {"schedule": False}},
    )
    yield stack
    await stack.stop()


def reconciler(
    stack: DemoStack, sink: RecordingSink, platform: Any = None, **settings: Any
) -> Reconciler:
    assert stack.proxy is not None and stack.settings is not None
    return Reconciler(
        stack.proxy.store,
        platform or stack.proxy.platform,
        stack.settings.reconcile.model_copy(update=settings),
        alerts=sink,
    )


class CallAt:
    """A Progress that calls ``action`` once ``at`` mappings were looked up."""

    def __init__(self, at: int, action: Callable[[], None]) -> None:
        self.at = at
        self.action = action
        self.done = 0

    def start(self, total: int) -> None:
        return None

    def advance(self, checked: int) -> None:
        self.done += checked
        if self.done == self.at:
            self.action()

    def finish(self) -> None:
        return None


def assert_alerts_match(sink: RecordingSink, planted: Planted, run_ids: set[str]) -> None:
    by_mapping = sink.by_mapping()
    assert set(by_mapping) == set(planted.drift)
    for mapping_id, alerts in by_mapping.items():
        assert len(alerts) == 1, f"{mapping_id} alerted {len(alerts)} times"
        alert = alerts[0]
        assert alert.kind == "mapping_drift"
        assert alert.fields["drift"] == planted.drift[mapping_id]
        assert alert.fields["run_id"] in run_ids
        assert alert.fields["customer_index"]
    text_of_all = json.dumps([a.to_json() for a in sink.alerts])
    assert "cus_" not in text_of_all and "acct-" not in text_of_all  # no plaintext ids


# -- the acceptance run ------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_thousand_customers_with_planted_drift(quiet: DemoStack) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    planted = await seed(store, quiet.platform, 10_000, every=100)
    assert {k: len(planted.of_kind(k)) for k in KINDS} == dict.fromkeys(KINDS, 25)
    # A mapping a human suspended (its customer matches) and a revoked one.
    quiet.platform.add_customer("cus_held", "acct-held")
    quiet.platform.add_customer("cus_gone", "acct-gone")
    [held] = await bulk_add(store, [("acct-held", "cus_held")], status="suspended")
    [revoked] = await bulk_add(store, [("acct-gone", "cus_gone")], status="revoked")
    seeded = await rows_by_id(store)
    sink = RecordingSink()
    started = datetime.now(UTC)

    report = await reconciler(quiet, sink, concurrency=16).run()

    assert report is not None and report.completed and not report.resumed
    assert report.total == 10_001  # the revoked one is not in the run
    counts = report.counts
    assert counts["checked"] == 10_001 and counts["matched"] == 9_901
    assert counts["drifted"] == 100 and counts["alerts"] == 100 and counts["known"] == 0
    assert {k: counts[k] for k in KINDS} == dict.fromkeys(KINDS, 25)
    assert report.errors == 0 and report.remaining == 0
    # Each mapping's customer was asked for exactly once.
    assert sorted(asked(quiet)) == sorted([customer_of(i) for i in range(10_000)] + ["cus_held"])

    findings = await reconciler(quiet, sink).runs.findings(report.run_id)
    assert {(f.mapping_id, f.kind) for f in findings} == set(planted.drift.items())
    assert_alerts_match(sink, planted, {report.run_id})
    for alert in sink.alerts:
        row = seeded[str(alert.fields["mapping_id"])]
        assert alert.fields["customer_index"] == row.payment_customer_index

    rows = await rows_by_id(store)
    for mapping_id in planted.untouched:
        row = rows[mapping_id]
        assert row.status == "active" and row.version == 2
        assert row.last_reconcile_run == report.run_id
        assert row.last_validated_at.replace(tzinfo=UTC) >= started.replace(microsecond=0)
    for mapping_id, kind in planted.drift.items():
        row = rows[mapping_id]
        assert row.status == POLICY[kind].value and row.version == 2
        assert row.last_validated_at == seeded[mapping_id].last_validated_at  # not validated
        assert row.updated_by == f"reconcile:{report.run_id}"
    assert rows[held].status == "suspended"  # matched, validated, still suspended
    assert rows[held].last_validated_at > seeded[held].last_validated_at
    assert rows[revoked].version == 1 and rows[revoked].last_reconcile_run is None

    # The next run finds the same discrepancies: recorded as known, not alerted again.
    again = await reconciler(quiet, sink, concurrency=16).run()
    assert again is not None and again.completed and again.run_id != report.run_id
    assert again.counts["known"] == 100 and again.counts["alerts"] == 0
    assert again.counts["matched"] == 9_901
    assert len(sink.alerts) == 100


# -- decisions ---------------------------------------------------------------------------------


async def test_drift_never_softens_a_status_and_merged_then_restored(quiet: DemoStack) -> None:
    """A suspended mapping whose customer merged stays suspended; a mapping reconciliation
    made stale is active again once its customer matches; one a human suspended is not."""
    assert quiet.proxy is not None
    store = quiet.proxy.store
    planted = await seed(store, quiet.platform, 3)
    merged, human, plain = planted.ids
    await store.update(human, expected_version=1, actor="ops", status=MappingStatus.SUSPENDED)
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    quiet.platform.customers[customer_of(1)].merged_into = "cus_survivor"
    sink = RecordingSink()

    first = await reconciler(quiet, sink).run()
    assert first is not None
    assert (await store.get(merged)).status is MappingStatus.STALE
    assert (await store.get(human)).status is MappingStatus.SUSPENDED  # never softened
    assert len(sink.alerts) == 2

    quiet.platform.customers[customer_of(0)].merged_into = None
    quiet.platform.customers[customer_of(1)].merged_into = None
    second = await reconciler(quiet, sink).run()
    assert second is not None and second.counts["restored"] == 1
    assert (await store.get(merged)).status is MappingStatus.ACTIVE
    assert (await store.get(human)).status is MappingStatus.SUSPENDED
    assert (await store.get(plain)).status is MappingStatus.ACTIVE


async def test_every_mapping_a_run_checks_and_writes_gets_a_mapping_record(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    merged, plain = (await seed(store, quiet.platform, 2)).ids
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    written: list[dict[str, Any]] = []
    run = reconciler(quiet, RecordingSink())
    run.auditor = MappingAuditor(written.append, store.codec)
    report = await run.run()
    assert report is not None
    by_mapping = {r["mapping_id"]: r for r in written}
    assert set(by_mapping) == {merged, plain}
    assert {r["action"] for r in written} == {"reconcile"}
    assert {r["actor"] for r in written} == {f"reconcile:{report.run_id}"}
    assert (by_mapping[merged]["code"], by_mapping[merged]["reason"]) == (
        "customer_merged",
        "active -> stale",
    )
    assert (by_mapping[plain]["code"], by_mapping[plain]["reason"]) == (None, None)
    assert "cus_" not in json.dumps(written)


async def test_a_batch_records_its_mappings_a_few_dozen_per_write(quiet: DemoStack) -> None:
    """Hundreds of mappings a batch: their records go to the trail RECORDS_PER_WRITE per
    call (one lock, one ``write(2)``), not one call per record, nor one call long enough
    to stall the requests the proxy serves meanwhile."""
    assert quiet.proxy is not None
    store = quiet.proxy.store
    size = RECORDS_PER_WRITE + 6
    ids = set((await seed(store, quiet.platform, size)).ids)
    one_by_one: list[dict[str, Any]] = []
    together: list[list[dict[str, Any]]] = []
    run = reconciler(quiet, RecordingSink(), batch_size=size)
    run.auditor = MappingAuditor(one_by_one.append, store.codec, write_many=together.append)
    report = await run.run()
    assert report is not None and report.completed
    assert one_by_one == []
    assert [(group[0]["outcome"], len(group)) for group in together] == [
        ("started", RECORDS_PER_WRITE),
        ("started", 6),
        ("ok", RECORDS_PER_WRITE),
        ("ok", 6),
    ]
    assert {r["mapping_id"] for r in together[0] + together[1]} == ids


async def test_a_batch_whose_records_the_trail_refuses_is_not_committed(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    merged, _ = (await seed(store, quiet.platform, 2)).ids
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    run = reconciler(quiet, RecordingSink())
    run.auditor = MappingAuditor(lambda record: True, store.codec, write_many=lambda records: False)
    with pytest.raises(AuditUnavailable):
        await run.run()
    mapping = await store.get(merged)
    assert mapping.status is MappingStatus.ACTIVE and mapping.version == 1


async def test_a_run_whose_records_cannot_be_written_stops_resumable(quiet: DemoStack) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    await seed(store, quiet.platform, 3)
    run = reconciler(quiet, RecordingSink())
    run.auditor = MappingAuditor(lambda record: False, store.codec)  # a broken trail
    with pytest.raises(AuditUnavailable):
        await run.run()
    again = reconciler(quiet, RecordingSink())
    report = await again.run(resume="only")
    assert report is not None and report.completed


async def test_a_batch_is_recorded_started_before_it_commits(
    quiet: DemoStack,
) -> None:
    """The trail refuses ``started`` records: the run stops before its batch commits, so
    no mapping changes unrecorded."""
    assert quiet.proxy is not None
    store = quiet.proxy.store
    merged, _ = (await seed(store, quiet.platform, 2)).ids
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    run = reconciler(quiet, RecordingSink())
    run.auditor = MappingAuditor(lambda record: record["outcome"] != "started", store.codec)
    with pytest.raises(AuditUnavailable):
        await run.run()
    mapping = await store.get(merged)
    assert mapping.status is MappingStatus.ACTIVE and mapping.version == 1


async def test_a_committed_batch_keeps_its_records_when_later_records_fail(
    quiet: DemoStack,
) -> None:
    """The records after the commit cannot be written (a full disk, a crash): every write
    the store committed still has its ``started`` record, naming the change."""
    assert quiet.proxy is not None
    store = quiet.proxy.store
    merged, plain = (await seed(store, quiet.platform, 2)).ids
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    kept: list[dict[str, Any]] = []

    def write(record: dict[str, Any]) -> bool:
        if record["outcome"] != "started":
            return False
        kept.append(record)
        return True

    run = reconciler(quiet, RecordingSink())
    run.auditor = MappingAuditor(write, store.codec)
    with pytest.raises(AuditUnavailable):
        await run.run()
    assert (await store.get(merged)).status is MappingStatus.STALE
    assert sorted((r["mapping_id"], r["action"], r["code"], r["reason"]) for r in kept) == sorted(
        [
            (merged, "reconcile", "customer_merged", "active -> stale"),
            (plain, "reconcile", None, None),  # validated: a write too
        ]
    )


async def test_a_status_change_whose_batch_write_fails_is_recorded_failed(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    merged, plain = (await seed(store, quiet.platform, 2)).ids
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    written: list[dict[str, Any]] = []
    run = reconciler(quiet, RecordingSink())
    run.auditor = MappingAuditor(written.append, store.codec)

    async def store_down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")

    run.runs.write = store_down  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await run.run()
    assert sorted((r["mapping_id"], r["outcome"], r["code"]) for r in written) == sorted(
        [
            (merged, "started", "customer_merged"),
            (plain, "started", None),
            (merged, "failed", "mapping_unavailable"),
            (plain, "failed", "mapping_unavailable"),
        ]
    )
    assert (await store.get(merged)).status is MappingStatus.ACTIVE


async def test_a_write_a_concurrent_one_beat_is_recorded_refused(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    (merged,) = (await seed(store, quiet.platform, 1)).ids
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    real = quiet.proxy.platform
    assert real is not None

    class ChangesMeanwhile:
        async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord:
            record = await real.customer(customer, cloud_account=cloud_account)
            await store.update(merged, expected_version=1, actor="ops", status="suspended")
            return record

    written: list[dict[str, Any]] = []
    run = reconciler(quiet, RecordingSink(), ChangesMeanwhile())
    run.auditor = MappingAuditor(written.append, store.codec)
    report = await run.run()
    assert report is not None and report.counts["conflicts"] == 1
    assert [(r["outcome"], r["code"], r["reason"], r["version"]) for r in written] == [
        ("started", "customer_merged", "active -> stale", 1),
        ("refused", "conflict", "active -> stale", 1),
        ("started", "customer_merged", None, 2),  # decided again: suspended, merged leaves it so
        ("ok", "customer_merged", None, 2),
    ]


async def test_a_known_discrepancy_is_alerted_again_after_the_mapping_matched(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    planted = await seed(quiet.proxy.store, quiet.platform, 1)
    customer = quiet.platform.customers[customer_of(0)]
    sink = RecordingSink()
    customer.merged_into = "cus_survivor"
    await reconciler(quiet, sink).run()
    await reconciler(quiet, sink).run()  # known: not alerted
    customer.merged_into = None
    await reconciler(quiet, sink).run()  # matched: the discrepancy is over
    customer.merged_into = "cus_other"
    await reconciler(quiet, sink).run()  # a new discrepancy
    assert [a.fields["mapping_id"] for a in sink.alerts] == planted.ids * 2


async def test_an_alert_never_confirmed_is_raised_again_under_the_same_id(
    quiet: DemoStack,
) -> None:
    """A receiver that had the first run's alert drops the second as a repeat by its id
    (Idempotency-Key); before, every run raised it under an id of its own."""
    assert quiet.proxy is not None
    planted = await seed(quiet.proxy.store, quiet.platform, 1)
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    lost, sink = UnconfirmedSink(), RecordingSink()
    first = await reconciler(quiet, lost).run()
    assert first is not None and first.completed
    await reconciler(quiet, sink).run()
    await reconciler(quiet, sink).run()  # delivered now: known, not raised again
    (original,), (again,) = lost.alerts, sink.alerts
    assert again.id == original.id == f"reconcile:{first.run_id}:{planted.ids[0]}"


async def test_an_unconfirmed_alert_whose_discrepancy_worsened_gets_a_new_id(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    await seed(quiet.proxy.store, quiet.platform, 1)
    quiet.platform.customers[customer_of(0)].merged_into = "cus_survivor"
    lost, sink = UnconfirmedSink(), RecordingSink()
    await reconciler(quiet, lost).run()
    await reconciler(quiet, sink, on_customer_merged="revoked").run()
    (original,), (worse,) = lost.alerts, sink.alerts
    assert worse.fields["status_after"] == "revoked"
    assert worse.id != original.id


async def test_a_concurrent_change_is_reread_not_overwritten(quiet: DemoStack) -> None:
    """While a mapping's record is being fetched a human changes its grants and suspends
    it, and another one is revoked: the first is re-read (grants and status kept,
    validated), the revoked one is left alone."""
    assert quiet.proxy is not None and quiet.proxy.platform is not None
    store = quiet.proxy.store
    planted = await seed(store, quiet.platform, 3)
    changed, revoked, _ = planted.ids
    real = quiet.proxy.platform
    new_grants = (Grant(role="viewer", operations=("customers:read",)),)

    class ChangesMeanwhile:
        async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord:
            record = await real.customer(customer, cloud_account=cloud_account)
            if customer == customer_of(0):
                await store.update(
                    changed, expected_version=1, actor="ops", grants=new_grants, status="suspended"
                )
            if customer == customer_of(1):
                await store.update(revoked, expected_version=1, actor="ops", status="revoked")
            return record

    report = await reconciler(quiet, RecordingSink(), ChangesMeanwhile()).run()
    assert report is not None and report.completed
    assert report.counts["conflicts"] == 2 and report.counts["skipped"] == 1
    after = await store.get(changed)
    assert after.grants == new_grants and after.status is MappingStatus.SUSPENDED
    assert after.version == 3 and after.updated_by == f"reconcile:{report.run_id}"
    assert (await store.get(revoked)).status is MappingStatus.REVOKED
    assert report.counts["checked"] == 2  # the revoked one is not "checked"


# -- interruption and resume -------------------------------------------------------------------


async def test_an_interrupted_run_resumes_without_rechecking_or_realerting(
    quiet: DemoStack,
) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    planted = await seed(store, quiet.platform, 1200, every=40)
    customers = {m: customer_of(i) for i, m in enumerate(planted.ids)}
    sink = RecordingSink()
    runner = reconciler(quiet, sink, concurrency=4, batch_size=50)
    task: asyncio.Task[Any] = asyncio.create_task(
        runner.run(progress=CallAt(500, lambda: task.cancel()))
    )
    with pytest.raises(asyncio.CancelledError):
        await task

    unfinished = await runner.runs.latest()
    assert unfinished is not None and unfinished.status == "running"
    rows = await rows_by_id(store)
    done = {m for m, row in rows.items() if row.last_reconcile_run == unfinished.id}
    assert 400 <= len(done) <= 520  # what was looked up was kept (minus lookups cut short)
    # Each committed finding was alerted (a commit the interruption caught mid-way, if
    # any, left its alerts for the resumed session to send).
    unsent = await runner.runs.unsent(unfinished.id)
    assert len(sink.alerts) + len(unsent) == len(set(planted.drift) & done)
    since = len(quiet.platform.seen)

    report = await reconciler(quiet, sink, concurrency=4, batch_size=50).run(resume="only")

    assert report is not None and report.completed and report.resumed
    assert report.run_id == unfinished.id and report.sessions == 2
    second = asked(quiet, since)
    assert set(second) == {customers[m] for m in set(planted.ids) - done}  # none it finished
    # Asked twice: only lookups the interruption cut short (the platform may record them
    # after the cancellation), never one the resumed session made itself twice.
    assert len(second) - len(set(second)) <= 4
    assert report.counts["checked"] == 1200 and report.counts["drifted"] == 30
    assert_alerts_match(sink, planted, {unfinished.id})
    with pytest.raises(NothingToResume):
        await reconciler(quiet, sink).run(resume="only")


async def test_an_unfinished_run_too_old_to_resume_is_abandoned(quiet: DemoStack) -> None:
    assert quiet.proxy is not None
    await seed(quiet.proxy.store, quiet.platform, 50)
    runner = reconciler(quiet, RecordingSink(), batch_size=10, concurrency=1)
    task: asyncio.Task[Any] = asyncio.create_task(
        runner.run(progress=CallAt(20, lambda: task.cancel()))
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    old = await runner.runs.latest()
    assert old is not None
    with pytest.raises(NothingToResume):
        await reconciler(quiet, RecordingSink(), resume_within=0).run(resume="only")
    assert (await runner.runs.get(old.id)).status == "abandoned"  # type: ignore[union-attr]
    fresh = await reconciler(quiet, RecordingSink()).run()
    assert fresh is not None and fresh.run_id != old.id and fresh.counts["checked"] == 50


async def test_a_platform_outage_is_never_a_match_and_the_run_resumes(quiet: DemoStack) -> None:
    assert quiet.proxy is not None
    store = quiet.proxy.store
    planted = await seed(store, quiet.platform, 600, every=30)
    seeded = await rows_by_id(store)
    sink = RecordingSink()
    outage: list[asyncio.Task[None]] = []
    progress = CallAt(200, lambda: outage.append(asyncio.create_task(stop_platform(quiet))))

    report = await reconciler(
        quiet, sink, concurrency=4, batch_size=50, max_consecutive_errors=10
    ).run(progress=progress)

    assert report is not None and report.status == "incomplete"
    assert report.errors >= 10 and "failed platform lookups in a row" in (report.note or "")
    assert report.remaining > 0 and report.remaining == 600 - report.counts["checked"]
    assert all("platform unavailable" in e["reason"] for e in report.error_samples)
    rows = await rows_by_id(store)
    for mapping_id, row in rows.items():
        if row.last_reconcile_run is None:  # not finished: untouched, neither way
            assert row.status == "active" and row.version == 1
            assert row.last_validated_at == seeded[mapping_id].last_validated_at
    findings = await reconciler(quiet, sink).runs.findings(report.run_id)
    assert {f.mapping_id for f in findings} <= set(planted.drift)

    await outage[0]
    await start_platform(quiet)
    resumed = await reconciler(quiet, sink, concurrency=4, batch_size=50).run()
    assert resumed is not None and resumed.completed and resumed.run_id == report.run_id
    assert resumed.counts["checked"] == 600 and resumed.counts["drifted"] == 20
    assert_alerts_match(sink, planted, {report.run_id})


async def test_a_platform_that_answers_errors_is_never_a_match(quiet: DemoStack) -> None:
    """Every lookup fails (the platform refuses the token): nothing is validated, nothing
    is marked drifted, the run ends incomplete early."""
    assert quiet.proxy is not None and quiet.proxy.platform is not None
    await seed(quiet.proxy.store, quiet.platform, 100)
    real = quiet.proxy.platform

    class Refusing:
        async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord:
            raise PlatformUnavailable("the platform answered 503")

    assert real is not None
    report = await reconciler(quiet, RecordingSink(), Refusing(), max_consecutive_errors=5).run()
    assert report is not None and report.status == "incomplete"
    assert report.counts["checked"] == 0 and report.remaining == 100
    assert all(row.version == 1 for row in (await rows_by_id(quiet.proxy.store)).values())


# -- one runner at a time ----------------------------------------------------------------------


class Held:
    """The real platform client behind a gate: lookups wait while the gate is closed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def customer(self, customer: str, *, cloud_account: str) -> CustomerRecord:
        self.waiting.set()
        await self.gate.wait()
        record: CustomerRecord = await self.real.customer(customer, cloud_account=cloud_account)
        return record


async def test_two_runs_at_once_one_runs_the_other_is_refused(quiet: DemoStack) -> None:
    assert quiet.proxy is not None
    await seed(quiet.proxy.store, quiet.platform, 20)
    held = Held(quiet.proxy.platform)
    first = asyncio.create_task(reconciler(quiet, RecordingSink(), held).run())
    await held.waiting.wait()
    with pytest.raises(RunnerBusy):
        await reconciler(quiet, RecordingSink()).run()
    held.gate.set()
    report = await first
    assert report is not None and report.completed and report.counts["checked"] == 20
    again = await reconciler(quiet, RecordingSink()).run()  # the lock is free again
    assert again is not None and again.completed


async def test_a_runner_that_loses_its_lock_stops(quiet: DemoStack, database_url: str) -> None:
    """SQLite: somebody else took the lease row; PostgreSQL: the lock's connection was
    killed. Either way the run stops (resumable) instead of running unguarded."""
    assert quiet.proxy is not None
    store = quiet.proxy.store
    await seed(store, quiet.platform, 20)
    held = Held(quiet.proxy.platform)
    task = asyncio.create_task(reconciler(quiet, RecordingSink(), held, lease_ttl=3).run())
    await held.waiting.wait()
    async with store.engine.begin() as conn:
        if database_url.startswith("sqlite"):
            await conn.execute(update(reconcile_lease).values(holder="elsewhere:1:x"))
        else:
            # Only the backend holding this database's reconciliation lock: the server is
            # shared with other test sessions.
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
                    " JOIN pg_database d ON d.oid = l.database"
                    " WHERE l.locktype = 'advisory' AND d.datname = current_database()"
                    " AND l.classid = :high AND l.objid = :low AND l.objsubid = 1"
                    " AND l.granted AND l.pid != pg_backend_pid()"
                ),
                {"high": ADVISORY_ID >> 32, "low": ADVISORY_ID & 0xFFFFFFFF},
            )
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(task, 10)
    run = await reconciler(quiet, RecordingSink()).runs.latest()
    assert run is not None and run.status == "running"  # unfinished: resumable


# -- the staleness gate through the proxy, with the scheduled run -------------------------------


async def test_stale_mapping_refused_then_allowed_after_the_scheduled_run(
    make_stack: Callable[..., Awaitable[DemoStack]],
    database_url: str,
    http: aiohttp.ClientSession,
) -> None:
    stack = await make_stack(
        {
            "store": {"database_url": database_url},
            "reconcile": {"schedule": True, "interval": "1s"},
            "mapping": {"cache_ttl": 0},
        }
    )
    assert stack.proxy is not None and stack.proxy.reconcile is not None
    store, scheduler = stack.proxy.store, stack.proxy.reconcile
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}"}
    url = stack.urls["proxy"] + "/v1/customers/cus_alice/payment-methods"

    async def status_code() -> tuple[int, str | None]:
        async with http.get(url, headers=headers) as response:
            body = await response.json()
            return response.status, body.get("code") if isinstance(body, dict) else None

    async def next_run() -> None:
        seen = scheduler.reports
        for _ in range(200):
            await asyncio.sleep(0.05)
            if scheduler.reports > seen:
                return
        raise AssertionError("no scheduled run")

    # While the test holds the runner lock, no scheduled run can start.
    async with scheduler.reconciler.lock.hold():
        alice = await store.find_by_account("acct-1001")
        assert alice is not None
        old = datetime.now(UTC) - timedelta(hours=40)
        await store.update(
            alice.id, expected_version=alice.version, actor="t", last_validated_at=old
        )
        assert await status_code() == (403, "mapping_stale")
    await next_run()
    assert await status_code() == (200, None)

    # Drift: the customer is merged away -> stale (refused), then back -> active again.
    stack.platform.customers["cus_alice"].merged_into = "cus_survivor"
    await next_run()
    assert (await store.find_by_account("acct-1001")).status is MappingStatus.STALE  # type: ignore[union-attr]
    assert await status_code() == (403, "mapping_stale")
    stack.platform.customers["cus_alice"].merged_into = None
    await next_run()
    assert await status_code() == (200, None)


# -- the schedule ------------------------------------------------------------------------------


def test_slots_are_anchored_at_the_time_of_day() -> None:
    now = datetime(2030, 5, 17, 2, 59, tzinfo=UTC)
    assert latest_slot(now, 86400, "03:00") == datetime(2030, 5, 16, 3, 0, tzinfo=UTC)
    assert latest_slot(now + timedelta(minutes=1), 86400, "03:00") == datetime(
        2030, 5, 17, 3, 0, tzinfo=UTC
    )
    assert latest_slot(now, 6 * 3600, "03:00") == datetime(2030, 5, 16, 21, 0, tzinfo=UTC)


async def test_a_run_is_due_one_interval_after_the_last(quiet: DemoStack) -> None:
    assert quiet.proxy is not None and quiet.settings is not None
    runner = reconciler(quiet, RecordingSink())
    settings = quiet.settings.reconcile.model_copy(update={"interval": 3600.0})
    now = datetime.now(UTC)
    assert not await is_due(runner.runs, settings, now)  # no mappings: nothing to do
    await seed(quiet.proxy.store, quiet.platform, 5)
    # A fresh install waits an interval from its oldest mapping (made after ``now``: read
    # it, since seeding takes a while on a loaded machine).
    oldest = await runner.runs.oldest_live_mapping()
    assert oldest is not None
    assert not await is_due(runner.runs, settings, oldest + timedelta(minutes=59))
    assert await is_due(runner.runs, settings, oldest + timedelta(hours=1))
    await runner.run()
    assert not await is_due(runner.runs, settings, now + timedelta(minutes=59))
    assert await is_due(runner.runs, settings, datetime.now(UTC) + timedelta(hours=1))
    slotted = settings.model_copy(update={"interval": 86400.0, "at": "03:00"})
    ran = datetime.now(UTC)
    # The first 03:00 after the run: today's, when the run was before 03:00 UTC.
    slot = ran.replace(hour=3, minute=0, second=0, microsecond=0)
    if slot <= ran:
        slot += timedelta(days=1)
    assert await is_due(runner.runs, slotted, slot + timedelta(seconds=1))
    assert not await is_due(runner.runs, slotted, slot - timedelta(seconds=1))

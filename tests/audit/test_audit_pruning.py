"""Pruning the spool: with a shipper, a rotated file goes only once the table holds it.

Real PostgreSQL (the audit_db fixture). The shipper is driven step by step, then asked to
prune, as its background loop does after each drain; one test runs a real proxy and waits
for its own loop to prune."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from chain_support import records, request, sink, verify_cli
from postgres_audit_support import owner_sql, rows, shipper

from dragoman.audit.rotation import rotated_files, rotated_name
from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"


def write(live: Path, first: int, count: int) -> None:
    """Records ``first``..``first + count - 1``, rotating every few (max_bytes 700)."""
    writer = sink(live, max_bytes=700)
    for n in range(first, first + count):
        writer.write(request(n))
    writer.close()


async def shipped_spool(directory: Path, audit_db: str) -> Path:
    """Records 0-19 in a rotated spool, every one shipped (by a shipper now closed, which
    released the chain's lock); returns the live file."""
    live = directory / "audit.jsonl"
    write(live, 0, 20)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    return live


async def without_trigger(audit_db: str, sql: str, *args: object) -> None:
    """``sql`` as the table's owner with the append-only trigger off (an attacker who
    dropped it), then on again."""
    await owner_sql(audit_db, "ALTER TABLE audit_records DISABLE TRIGGER USER")
    try:
        await owner_sql(audit_db, sql, *args)
    finally:
        await owner_sql(audit_db, "ALTER TABLE audit_records ENABLE TRIGGER USER")


async def conflicting_row_at_20(audit_db: str, live: Path) -> None:
    """A row 20 the file's next record will disagree with (a shipper stops on it); then
    that record."""
    await owner_sql(
        audit_db,
        "INSERT INTO audit_records (chain, seq, prev, hash, line) VALUES ($1, 20, $2, $2, 'x')",
        records(live)[0]["chain"],
        "f" * 64,
    )
    write(live, 20, 1)


async def prune_once(live: Path, url: str, caplog: pytest.LogCaptureFixture) -> list[Path]:
    """What a fresh shipper (keep_rotated 0) prunes without shipping, its warnings logged."""
    with caplog.at_level(logging.WARNING, logger="dragoman.audit.postgres"):
        async with shipper(live, url, keep_rotated=0) as audit:
            return await audit.prune()


async def test_shipped_rotated_files_are_deleted_but_the_newest_kept(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    before = rotated_files(live)
    assert len(before) > 3
    async with shipper(live, audit_db, keep_rotated=1) as audit:
        await audit.drain()
        pruned = await audit.prune()
    assert pruned == before[:-1]
    assert rotated_files(live) == before[-1:]
    assert [r["seq"] for r in await rows(audit_db)] == list(range(20))


async def test_a_rotated_file_not_yet_in_the_table_is_never_deleted(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    before = rotated_files(live)
    last_seq = {path: records(path)[-1]["seq"] for path in before}
    async with shipper(live, audit_db, batch=4, keep_rotated=0) as audit:
        assert await audit.step() == 4  # seqs 0-3 only
        pruned = await audit.prune()
        assert pruned and all(last_seq[path] <= 3 for path in pruned)
        remaining = rotated_files(live)
        assert remaining == before[len(pruned) :]
        assert last_seq[remaining[0]] > 3  # the oldest file left holds unshipped records
        await audit.drain()
        assert await audit.prune() == remaining  # shipped now: every one goes
    assert rotated_files(live) == []


async def test_a_rotated_file_whose_last_line_differs_from_the_table_is_kept(
    audit_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = await shipped_spool(tmp_path, audit_db)
    oldest, *later = rotated_files(live)
    lines = oldest.read_text("utf-8").splitlines()
    lines[-1] = lines[-1].replace("alice", "mallo")  # same chain and seq, another record
    oldest.write_text("".join(line + "\n" for line in lines))
    assert await prune_once(live, audit_db, caplog) == later  # each file judged on its own
    assert rotated_files(live) == [oldest]
    assert f"keeping rotated file {oldest.name}" in caplog.text


async def test_a_middle_row_rewritten_in_the_table_keeps_the_file_holding_the_original(
    audit_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = await shipped_spool(tmp_path, audit_db)
    oldest = rotated_files(live)[0]
    assert records(oldest)[0]["seq"] < 1 < records(oldest)[-1]["seq"]
    # Row 1 rewritten, line and hash: the row count and the last row still match the file.
    await without_trigger(
        audit_db, "UPDATE audit_records SET line = 'forged', hash = $1 WHERE seq = 1", "e" * 64
    )
    pruned = await prune_once(live, audit_db, caplog)
    assert oldest not in pruned and oldest.exists()
    assert f"keeping rotated file {oldest.name}" in caplog.text


async def test_a_rotated_file_with_a_torn_last_line_is_kept(
    audit_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = await shipped_spool(tmp_path, audit_db)
    before = rotated_files(live)
    before[1].write_bytes(before[1].read_bytes()[:-5])  # cut inside its last line
    assert await prune_once(live, audit_db, caplog) == [before[0], *before[2:]]
    assert rotated_files(live) == [before[1]]
    assert f"keeping rotated file {before[1].name}" in caplog.text


async def test_a_gap_in_the_table_keeps_the_file_that_holds_it(
    audit_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = await shipped_spool(tmp_path, audit_db)
    oldest = rotated_files(live)[0]
    await without_trigger(audit_db, "DELETE FROM audit_records WHERE seq = 1")
    pruned = await prune_once(live, audit_db, caplog)
    assert oldest not in pruned and oldest.exists()
    assert rotated_files(live) == [oldest]


async def test_a_stopped_shipper_deletes_nothing(audit_db: str, tmp_path: Path) -> None:
    live = await shipped_spool(tmp_path, audit_db)
    before = rotated_files(live)
    await conflicting_row_at_20(audit_db, live)  # shipping stops there, for good
    async with shipper(live, audit_db, keep_rotated=0) as audit:
        await audit.drain()
        assert audit.stopped is not None
        assert await audit.prune() == []
    assert rotated_files(live) == before


async def test_an_unreachable_database_deletes_nothing_and_pauses(
    audit_db: str, dead_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = await shipped_spool(tmp_path, audit_db)  # every file is in the table...
    before = rotated_files(live)
    assert await prune_once(live, dead_url, caplog) == []  # ...but this shipper cannot see it
    assert rotated_files(live) == before
    assert "audit shipping paused" in caplog.text


async def test_without_keep_rotated_the_shipper_deletes_nothing(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    before = rotated_files(live)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
        assert await audit.prune() == []
    assert rotated_files(live) == before


async def test_the_table_still_verifies_after_pruning_and_the_files_as_partial(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    async with shipper(live, audit_db, keep_rotated=0) as audit:
        await audit.drain()
        assert await audit.prune()
    table = verify_cli("--database", audit_db)
    assert table.returncode == 0, table.stderr
    assert "20 records" in table.stdout
    files = verify_cli("--partial", tmp_path)
    assert files.returncode == 0, files.stderr


async def test_a_running_proxy_prunes_what_it_shipped(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    audit_db: str,
) -> None:
    stack = await make_stack(
        {
            "audit": {
                "database_url": audit_db,
                "ship_interval": 0.05,
                "max_bytes": 2000,
                "keep_rotated": 0,
            }
        }
    )
    live = stack.state_dir / "audit.jsonl"
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    rotated: list[Path] = []
    for _ in range(60):  # bounded: requests until the live file has rotated
        async with http.get(
            stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {token}"}
        ) as answer:
            assert answer.status == 200
        rotated = rotated_files(live)
        if rotated:
            break
    assert rotated, "the requests made the file rotate"
    through = int(rotated[-1].name.split(".")[2])  # the last seq the rotated files hold
    for _ in range(400):  # bounded: poll until the background shipper pruned
        if not rotated_files(live):
            break
        await asyncio.sleep(0.05)
    assert rotated_files(live) == []
    seqs = [r["seq"] for r in await rows(audit_db)]
    assert seqs == list(range(len(seqs))) and seqs[-1] >= through


@pytest.mark.parametrize("keep", [0, 2])
async def test_keep_rotated_counts_only_rotated_files_never_the_live_one(
    audit_db: str, tmp_path: Path, keep: int
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    before = rotated_files(live)
    async with shipper(live, audit_db, keep_rotated=keep) as audit:
        await audit.drain()
        await audit.prune()
    assert rotated_files(live) == before[len(before) - keep :]
    assert live.exists()


async def test_a_standby_shipper_prunes_nothing_while_a_stopped_one_holds_the_chain(
    audit_db: str, tmp_path: Path
) -> None:
    live = await shipped_spool(tmp_path, audit_db)  # only the lock protects the files now
    before = rotated_files(live)
    # The first shipper stops on row 20 and, as a stopped shipper does, keeps its
    # connection and with it the chain's lock.
    await conflicting_row_at_20(audit_db, live)
    async with (
        shipper(live, audit_db, keep_rotated=0) as stopped,
        shipper(live, audit_db, keep_rotated=0) as other,
    ):
        await stopped.drain()
        assert stopped.stopped is not None
        await other.drain()
        assert other.standby
        assert await other.prune() == []
    assert rotated_files(live) == before


async def test_nothing_is_pruned_while_the_live_file_is_empty(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    # A writer that rotated and died before its first append: the live file is empty, and
    # the next write continues the chain from the newest rotated file.
    last = records(live)[-1]["seq"]
    os.rename(live, rotated_name(live, 1_800_000_000.0, last))
    live.touch()
    async with shipper(live, audit_db, keep_rotated=0) as audit:
        await audit.drain()
        assert await audit.prune() == []
    write(live, 20, 1)
    assert records(live)[0]["seq"] == 20  # the chain went on
    assert verify_cli(tmp_path).returncode == 0


async def test_a_rotated_file_that_cannot_be_deleted_is_reported_and_the_others_go(
    audit_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 0, 20)
    stuck, *others = rotated_files(live)
    unlink = Path.unlink

    def refuse(path: Path, missing_ok: bool = False) -> None:
        if path == stuck:
            raise PermissionError(13, "Permission denied")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    with caplog.at_level(logging.INFO, logger="dragoman.audit.postgres"):
        async with shipper(live, audit_db, keep_rotated=0) as audit:
            await audit.drain()
            assert await audit.prune() == others
            assert audit.stopped is None
    assert f"keeping rotated file {stuck.name}: cannot delete it (PermissionError)" in caplog.text
    assert "audit shipping paused" not in caplog.text  # a file error is not the database's

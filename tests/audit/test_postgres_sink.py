"""Shipping the chained audit file into the append-only PostgreSQL table, and verifying it.

Real PostgreSQL (the session's pg_url database, emptied and migrated for each test). The
shipper's step is driven directly where a test needs to see one step; a real proxy run
ships through its own background shipper and the final drain at close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from chain_support import make_key, request, sink, verify_cli
from postgres_audit_support import file_lines, owner_sql, restricted_role, rows, shipper

from dragoman.audit.rotation import rotated_files
from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"


def write(live: Path, count: int, key: Path | None = None, **options: object) -> None:
    audit = sink(live, key, **options)
    for n in range(count):
        audit.write(request(n))
    audit.close()


async def drive(stack: DemoStack, http: aiohttp.ClientSession, times: int = 3) -> list[int]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    statuses = []
    for _ in range(times):
        async with http.get(
            stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {token}"}
        ) as answer:
            statuses.append(answer.status)
    return statuses


async def test_a_proxy_run_ships_every_record_in_order_and_the_table_verifies(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    audit_db: str,
    tmp_path: Path,
) -> None:
    key, public = make_key(tmp_path)
    stack = await make_stack(
        {
            "audit": {
                "database_url": audit_db,
                "checkpoint_key_file": str(key),
                "checkpoint_every": 2,
                "ship_interval": 0.05,
            }
        }
    )
    await drive(stack, http, times=5)
    await stack.stop()  # the final drain ships the closing checkpoint too
    shipped = await rows(audit_db)
    assert [r["line"] for r in shipped] == file_lines(stack.state_dir / "audit.jsonl")
    assert [r["seq"] for r in shipped] == list(range(len(shipped)))
    result = verify_cli("--database", audit_db, "--key", public, "--closed")
    assert result.returncode == 0, result.stderr
    assert "chain intact" in result.stdout


async def test_a_running_proxy_ships_its_records_without_waiting_for_shutdown(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    audit_db: str,
) -> None:
    stack = await make_stack({"audit": {"database_url": audit_db, "ship_interval": 0.05}})
    await drive(stack, http)
    shipped: list[asyncpg.Record] = []
    for _ in range(400):  # bounded: poll the table until the background shipper got there
        shipped = await rows(audit_db)
        if len(shipped) >= 3:
            break
        await asyncio.sleep(0.05)
    assert [r["line"] for r in shipped] == file_lines(stack.state_dir / "audit.jsonl")


async def test_the_table_and_the_files_verified_together_agree(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 4)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    result = verify_cli("--database", audit_db, live)
    assert result.returncode == 0, result.stderr
    assert "files: 4 records" in result.stdout


async def test_a_table_ahead_of_the_files_is_reported_as_a_disagreement(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 4)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    live.write_text("".join(line + "\n" for line in file_lines(live)[:2]))  # tail cut
    result = verify_cli("--database", audit_db, live)
    assert result.returncode == 1
    assert "files and table disagree" in result.stderr and "seq 3" in result.stderr


async def test_a_file_record_that_does_not_link_stops_shipping_before_it(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 4)
    lines = file_lines(live)
    lines[1] = lines[1].replace("alice", "mallo")  # still canonical; seq 2 no longer links
    live.write_text("".join(line + "\n" for line in lines))
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    assert audit.stopped is not None and "seq 2" in audit.stopped
    assert await rows(audit_db) == []  # the batch holding the break is not shipped at all


async def test_the_shipper_resumes_after_a_restart_without_duplicates_or_gaps(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    writer = sink(live, max_bytes=700)  # rotates: the restart skips shipped rotated files
    for n in range(6):
        writer.write(request(n))
    async with shipper(live, audit_db, batch=4) as first:
        assert await first.step() == 4  # then "crashes": no drain, no close of the stream
    for n in range(6, 15):
        writer.write(request(n))
    writer.close()
    assert len(rotated_files(live)) >= 2
    async with shipper(live, audit_db, batch=4) as second:
        await second.drain()
        assert second.stopped is None
    shipped = await rows(audit_db)
    assert [r["seq"] for r in shipped] == list(range(15))
    assert [r["line"] for r in shipped] == file_lines(live)


async def test_the_shipper_follows_the_live_file_across_a_rotation(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    writer = sink(live, max_bytes=700)
    async with shipper(live, audit_db, batch=2) as audit:
        for n in range(12):
            writer.write(request(n))
            await audit.drain()
        writer.close()
        await audit.drain()
    assert [r["line"] for r in await rows(audit_db)] == file_lines(live)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET line = 'x' WHERE seq = 1",
        "DELETE FROM audit_records WHERE seq = 1",
        "TRUNCATE audit_records",
    ],
)
async def test_the_owner_cannot_change_a_shipped_row_the_trigger_refuses(
    audit_db: str, tmp_path: Path, statement: str
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 3)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await owner_sql(audit_db, statement)
    assert len(await rows(audit_db)) == 3


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_records SET line = 'x' WHERE seq = 1", "DELETE FROM audit_records"],
)
async def test_a_role_with_insert_and_select_only_cannot_update_or_delete(
    audit_db: str, tmp_path: Path, statement: str
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 3)
    async with restricted_role(audit_db) as role_url:
        async with shipper(live, role_url) as audit:
            await audit.drain()  # the restricted role ships: INSERT and SELECT suffice
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await owner_sql(role_url, statement)
    assert len(await rows(audit_db)) == 3


async def test_a_row_rewritten_with_the_trigger_dropped_is_reported_at_its_seq(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 5)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    await owner_sql(audit_db, "DROP TRIGGER audit_records_no_update_delete ON audit_records")
    # A careful forger keeps the row's columns consistent with its new line.
    await owner_sql(
        audit_db,
        "UPDATE audit_records SET line = replace(line, 'alice', 'mallo'),"
        " hash = encode(sha256(convert_to(replace(line, 'alice', 'mallo'), 'UTF8')), 'hex')"
        " WHERE seq = 2",
    )
    result = verify_cli("--database", audit_db)
    assert result.returncode == 1
    assert "chain broken at index 2: edited" in result.stderr


async def test_a_row_whose_hash_column_no_longer_matches_its_line_is_reported(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 5)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    await owner_sql(audit_db, "DROP TRIGGER audit_records_no_update_delete ON audit_records")
    await owner_sql(
        audit_db, "UPDATE audit_records SET line = replace(line, 'alice', 'mallo') WHERE seq = 3"
    )
    result = verify_cli("--database", audit_db)
    assert result.returncode == 1
    assert "index 3: edited: the row's columns do not match its line" in result.stderr


async def test_an_empty_table_is_found_truncated_when_it_must_end_closed(audit_db: str) -> None:
    assert await rows(audit_db) == []
    result = verify_cli("--database", audit_db, "--closed")
    assert result.returncode == 1, result.stdout
    assert "index 0: truncated: the log holds no record" in result.stderr


async def test_a_chain_asked_for_that_the_table_does_not_hold_is_missing(
    audit_db: str, tmp_path: Path
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 3)
    async with shipper(live, audit_db) as audit:
        await audit.drain()
    result = verify_cli("--database", audit_db, "--chain", "no-such-chain")
    assert result.returncode == 1, result.stdout
    assert "index 0: missing: no record of chain no-such-chain" in result.stderr


async def test_an_unreachable_database_refuses_no_request_and_shipping_catches_up(
    make_stack: Callable[..., Awaitable[DemoStack]],
    http: aiohttp.ClientSession,
    audit_db: str,
    dead_url: str,
) -> None:
    stack = await make_stack({"audit": {"database_url": dead_url, "ship_drain_timeout": 1}})
    assert await drive(stack, http) == [200, 200, 200]
    await stack.stop()
    live = stack.state_dir / "audit.jsonl"
    assert len(file_lines(live)) == 3  # the spool kept them
    async with shipper(live, dead_url) as down:
        assert await down.step() == 0
        assert down.stopped is None  # paused, not stopped: it retries
    async with shipper(live, audit_db) as back:
        assert await back.drain() == 3
    assert [r["line"] for r in await rows(audit_db)] == file_lines(live)


async def test_a_conflicting_row_stops_the_shipper_naming_chain_and_seq(
    audit_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 4)
    chain = file_lines(live)[0].split('"chain":"', 1)[1][:32]
    await owner_sql(
        audit_db,
        "INSERT INTO audit_records (chain, seq, prev, hash, line) VALUES ($1, 1, $2, $2, 'x')",
        chain,
        "f" * 64,
    )
    with caplog.at_level(logging.ERROR, logger="dragoman.audit.postgres"):
        async with shipper(live, audit_db) as audit:
            assert await audit.drain() == 0
    assert audit.stopped is not None and f"chain {chain} seq 1" in audit.stopped
    assert f"chain {chain} seq 1" in caplog.text
    assert [(r["seq"], r["line"]) for r in await rows(audit_db)] == [(1, "x")]


async def test_a_second_shipper_of_the_same_chain_stands_by(audit_db: str, tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    write(live, 3)
    async with shipper(live, audit_db, batch=1) as first, shipper(live, audit_db) as second:
        assert await first.step() == 1  # holds the chain's advisory lock from now on
        assert await second.step() == 0
        assert second.standby
        await first.drain()
    assert [r["seq"] for r in await rows(audit_db)] == [0, 1, 2]

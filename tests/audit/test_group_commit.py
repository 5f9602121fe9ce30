"""Group commit (dragoman.audit.trail): the records committed in one turn of the event loop
go to the sink in one write, each committer waits for that write and learns its own
outcome, and nothing waits past the next turn."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from chain_support import make_key, records, request, sink, verify_cli

from dragoman.audit.chained import ChainedFileSink
from dragoman.audit.trail import AuditTrail


class CountingSink:
    """A real chained file sink that counts the writes it is asked for."""

    def __init__(self, inner: ChainedFileSink) -> None:
        self.inner = inner
        self.groups: list[int] = []
        self.fail = False

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        if self.fail:
            raise OSError("disk full")
        self.groups.append(len(records))
        self.inner.write_many(records)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def counting(log: Path) -> CountingSink:
    return CountingSink(sink(log))


async def test_records_committed_in_one_turn_are_written_in_one_write(
    counting: CountingSink, log: Path
) -> None:
    trail = AuditTrail(counting)
    outcomes = await asyncio.gather(*(trail.commit(request(n)) for n in range(10)))
    assert outcomes == [True] * 10
    assert counting.groups == [10]
    assert [r["audit_id"] for r in records(log)] == [f"a-{n}" for n in range(10)]


async def test_a_committed_record_is_in_the_file_when_commit_returns(
    counting: CountingSink, log: Path
) -> None:
    trail = AuditTrail(counting)
    for n in range(3):
        assert await trail.commit(request(n))
        assert records(log)[-1]["audit_id"] == f"a-{n}"


async def test_a_group_the_sink_fails_tells_every_committer_and_breaks_the_trail(
    counting: CountingSink,
) -> None:
    trail = AuditTrail(counting)
    counting.fail = True
    assert await asyncio.gather(trail.commit(request(1)), trail.commit(request(2))) == [
        False,
        False,
    ]
    assert trail.broken
    counting.fail = False
    assert await trail.commit(request(3))
    assert not trail.broken


async def test_a_direct_write_goes_after_the_records_waiting_for_their_group(
    counting: CountingSink, log: Path
) -> None:
    trail = AuditTrail(counting)
    waiting = asyncio.ensure_future(trail.commit(request(1)))
    await asyncio.sleep(0)  # the committer has queued its record
    trail.write(request(2))
    assert await waiting
    assert [r["audit_id"] for r in records(log)] == ["a-1", "a-2"]


async def test_records_written_together_are_one_write_after_the_records_waiting(
    counting: CountingSink, log: Path
) -> None:
    trail = AuditTrail(counting)
    waiting = asyncio.ensure_future(trail.commit(request(1)))
    await asyncio.sleep(0)  # the committer has queued its record
    assert trail.write_many([request(n) for n in range(2, 6)])
    assert await waiting
    assert counting.groups == [1, 4]
    assert [r["audit_id"] for r in records(log)] == [f"a-{n}" for n in range(1, 6)]


def test_records_written_together_that_the_sink_fails_break_the_trail(
    counting: CountingSink,
) -> None:
    trail = AuditTrail(counting)
    counting.fail = True
    assert not trail.write_many([request(1), request(2)])
    assert trail.broken
    counting.fail = False
    assert trail.write_many([request(3)])
    assert not trail.broken


async def test_close_writes_a_group_still_waiting(counting: CountingSink, log: Path) -> None:
    trail = AuditTrail(counting)
    waiting = asyncio.ensure_future(trail.commit(request(1)))
    await asyncio.sleep(0)
    trail.close()
    assert await waiting
    assert [r["audit_id"] for r in records(log)] == ["a-1"]


async def test_a_cancelled_committer_does_not_cancel_its_group(
    counting: CountingSink, log: Path
) -> None:
    trail = AuditTrail(counting)
    first = asyncio.ensure_future(trail.commit(request(1)))
    second = asyncio.ensure_future(trail.commit(request(2)))
    await asyncio.sleep(0)  # both records are in the group
    first.cancel()
    assert await second
    assert [r["audit_id"] for r in records(log)] == ["a-1", "a-2"]


def test_a_checkpoint_due_inside_a_group_takes_its_place_in_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    key, public = make_key(tmp_path)
    audit = sink(log, key, checkpoint_every=4)
    audit.write_many([request(n) for n in range(5)])
    audit.close()
    events = [r["event"] for r in records(log)]
    assert events == ["request"] * 3 + ["checkpoint"] + ["request"] * 2 + ["checkpoint"]
    assert [r["seq"] for r in records(log)] == list(range(7))
    checked = verify_cli(log, "--key", public)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_group_is_one_write_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    audit.write_many([request(n) for n in range(20)])
    monkeypatch.undo()
    audit.close()
    assert len(writes) == 1
    assert len(records(log)) == 20


def test_a_record_that_cannot_be_encoded_fails_its_group_and_leaves_the_chain_whole(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write(request(0))
    with pytest.raises(TypeError):
        audit.write_many([request(1), {**request(2), "bad": object()}])
    audit.write(request(3))
    audit.close()
    assert [r["audit_id"] for r in records(log)] == ["a-0", "a-3"]
    checked = verify_cli(log)
    assert checked.returncode == 0, checked.stdout + checked.stderr

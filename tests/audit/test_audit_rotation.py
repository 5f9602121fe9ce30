"""Rotation: the live file is renamed once it reaches audit.max_bytes and the chain goes on
in the new file; `dragoman audit verify DIR` checks the files in chain order. Retention
(audit.keep_rotated, without a shipper): the newest rotated files by rotation time stay."""

from __future__ import annotations

from pathlib import Path

import pytest
from chain_support import StepClock, make_key, records, request, sink, verify_cli, write_log

from dragoman.audit.chain import Tail, digest
from dragoman.audit.chained import PRUNED_PER_ROTATION, ChainedFileSink
from dragoman.audit.rotation import log_files, rotated_files


def rotated_log(directory: Path, key: Path | None = None) -> Path:
    live = directory / "audit.jsonl"
    write_log(live, 40, key, max_bytes=1000)
    return live


def test_the_full_file_is_renamed_and_the_chain_continues_in_the_new_one(tmp_path: Path) -> None:
    live = rotated_log(tmp_path)
    files = log_files(tmp_path)
    assert len(files) > 2 and files[-1] == live
    last_of_first = files[0].read_bytes().splitlines()[-1]
    first_of_second = records(files[1])[0]
    assert first_of_second["prev"] == digest(last_of_first)
    seqs = [r["seq"] for path in files for r in records(path)]
    assert seqs == list(range(len(seqs)))


def test_rotated_files_are_named_by_time_and_last_seq(tmp_path: Path) -> None:
    rotated_log(tmp_path)
    for path in rotated_files(tmp_path / "audit.jsonl"):
        stem, stamp, seq, suffix = path.name.split(".")
        assert (stem, suffix) == ("audit", "jsonl")
        assert stamp.endswith("Z") and len(seq) == 12
        assert records(path)[-1]["seq"] == int(seq)


def test_every_rotated_file_ends_with_a_checkpoint(tmp_path: Path) -> None:
    key, public = make_key(tmp_path)
    rotated_log(tmp_path, key)
    for path in rotated_files(tmp_path / "audit.jsonl"):
        assert records(path)[-1]["event"] == "checkpoint"
    assert verify_cli(tmp_path, "--key", public, "--closed").returncode == 0


def test_the_directory_verifies(tmp_path: Path) -> None:
    rotated_log(tmp_path)
    result = verify_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "40 records, 0 checkpoints, chain intact"


def test_a_removed_middle_file_is_found_missing(tmp_path: Path) -> None:
    rotated_log(tmp_path)
    middle = rotated_files(tmp_path / "audit.jsonl")[1]
    first_gone = records(middle)[0]["seq"]
    middle.unlink()
    result = verify_cli(tmp_path)
    assert result.returncode == 1
    assert f"index {first_gone}: missing" in result.stderr


def test_rotated_files_given_in_the_wrong_order_are_found_reordered(tmp_path: Path) -> None:
    rotated_log(tmp_path)
    first, second, *rest = log_files(tmp_path)
    result = verify_cli(second, first, *rest)
    assert result.returncode == 1
    assert "index 0: reordered" in result.stderr


def test_two_writers_rotating_one_log_keep_one_chain(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    first, second = sink(live, max_bytes=700), sink(live, max_bytes=700)
    for n in range(30):
        (first if n % 2 else second).write(request(n))
    first.close()
    second.close()
    assert len(log_files(tmp_path)) > 2
    assert verify_cli(tmp_path).returncode == 0


def test_keep_rotated_leaves_only_the_newest_rotated_files(tmp_path: Path) -> None:
    everything, pruned = tmp_path / "all", tmp_path / "pruned"
    everything.mkdir()
    pruned.mkdir()
    write_log(everything / "audit.jsonl", 40, max_bytes=1000)
    write_log(pruned / "audit.jsonl", 40, max_bytes=1000, keep_rotated=2)
    all_rotated = rotated_files(everything / "audit.jsonl")
    kept = rotated_files(pruned / "audit.jsonl")
    assert len(all_rotated) > 3
    assert [p.name.split(".")[2] for p in kept] == [p.name.split(".")[2] for p in all_rotated[-2:]]
    live_seqs = [r["seq"] for r in records(pruned / "audit.jsonl")]
    assert live_seqs == [r["seq"] for r in records(everything / "audit.jsonl")]


def test_keep_rotated_zero_keeps_no_rotated_file_and_the_chain_goes_on(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    write_log(live, 40, max_bytes=1000, keep_rotated=0)
    assert rotated_files(live) == []
    assert records(live)[-1]["seq"] == 39


def test_a_pruned_log_verifies_as_partial_and_is_reported_missing_otherwise(
    tmp_path: Path,
) -> None:
    write_log(tmp_path / "audit.jsonl", 40, max_bytes=1000, keep_rotated=1)
    first_kept = records(log_files(tmp_path)[0])[0]["seq"]
    assert first_kept > 0
    partial = verify_cli(tmp_path, "--partial")
    assert partial.returncode == 0, partial.stderr
    whole = verify_cli(tmp_path)
    assert whole.returncode == 1
    assert "index 0: missing" in whole.stderr


def test_without_keep_rotated_every_rotated_file_stays(tmp_path: Path) -> None:
    live = rotated_log(tmp_path)
    seqs = [r["seq"] for path in log_files(tmp_path) for r in records(path)]
    assert seqs == list(range(40)) and len(rotated_files(live)) > 3


def test_a_failed_append_after_a_rotation_does_not_start_a_new_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "audit.jsonl"
    writer = sink(live, max_bytes=700, keep_rotated=0)
    append = ChainedFileSink._append
    armed = {"on": False}

    def full_disk(self: ChainedFileSink, line: bytes, tail: Tail) -> None:
        if armed["on"]:
            armed["on"] = False
            raise OSError(28, "No space left on device")
        append(self, line, tail)

    monkeypatch.setattr(ChainedFileSink, "_append", full_disk)
    written = 0
    for n in range(30):  # every write fails once, rotations included...
        armed["on"] = True
        with pytest.raises(OSError, match="No space left"):
            writer.write(request(n))
        writer.close()  # ...and its process restarts: the next one reads the files
        writer = sink(live, max_bytes=700, keep_rotated=0)
        writer.write(request(n))
        written += 1
    writer.close()
    chains = {r["chain"] for path in log_files(tmp_path) for r in records(path)}
    assert len(chains) == 1
    assert records(live)[-1]["seq"] == written - 1


def test_retention_goes_by_rotation_time_when_a_new_chain_restarts_the_seqs(
    tmp_path: Path,
) -> None:
    live = tmp_path / "audit.jsonl"
    old = ChainedFileSink(live, max_bytes=700, clock=StepClock(1_700_000_000.0))
    for n in range(40):  # an old chain with high seqs...
        old.write(request(n))
    old.close()
    aside = tmp_path / "aside"
    aside.mkdir()
    old_files = [*rotated_files(live), live]
    for path in old_files:
        path.rename(aside / path.name)  # ...moved aside for repair
    new = ChainedFileSink(live, max_bytes=700, keep_rotated=1, clock=StepClock(1_800_000_000.0))
    new.write(request(0))
    for path in old_files[:-1]:
        (aside / path.name).rename(path)  # the old rotated files come back
    for n in range(1, 12):  # the new chain rotates: seqs lower than the old files'
        new.write(request(n))
    new.close()
    kept = rotated_files(live)
    assert len(kept) == 1
    assert records(kept[0])[0]["chain"] == records(live)[0]["chain"]  # the new chain's


def test_one_rotation_deletes_at_most_a_bounded_number_of_files(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    write_log(live, 200, max_bytes=700)
    many = len(rotated_files(live))
    assert many > PRUNED_PER_ROTATION + 2
    writer = sink(live, max_bytes=700, keep_rotated=0)
    while len(rotated_files(live)) == many:  # up to the next rotation
        writer.write(request(0))
    assert len(rotated_files(live)) == many + 1 - PRUNED_PER_ROTATION
    writer.close()

"""The chained file and stdout sinks: every record linked to the one before it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_support import lines, make_key, records, request, sink, verify_cli, write_log

from dragoman.audit.chain import GENESIS, ChainError, canonical, stdlib_canonical
from dragoman.audit.sink import FileSink
from dragoman.audit.verify import verify


def test_the_first_record_starts_the_chain_at_seq_0_with_the_genesis_hash(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 1)
    (first,) = records(log)
    assert (first["seq"], first["prev"]) == (0, GENESIS)
    assert len(first["chain"]) == 32


def test_each_record_names_the_sha256_of_the_previous_line_and_the_next_seq(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 5)
    raw, parsed = lines(log), records(log)
    for n in range(1, 5):
        assert parsed[n]["seq"] == n
        assert parsed[n]["prev"] == hashlib.sha256(raw[n - 1].rstrip(b"\n")).hexdigest()
        assert parsed[n]["chain"] == parsed[0]["chain"]


def test_the_line_written_is_the_canonical_encoding(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write({**request(0), "principal": "zoë"})
    audit.close()
    (line,) = lines(log)
    assert line == canonical(json.loads(line)) + b"\n"
    assert "zoë".encode() in line


def test_the_line_is_what_the_standard_library_wrote_before_orjson(tmp_path: Path) -> None:
    """Same bytes for JSON's own values (escapes, key order, non-ASCII, integers)."""
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write(
        {**request(0), "principal": 'zoë "q" \\ \x01 \u2028 \U0001f600', "ÿ": 1, "latency_ms": 2.5}
    )
    audit.close()
    (line,) = lines(log)
    assert line == stdlib_canonical(json.loads(line)) + b"\n"


def test_a_record_orjson_cannot_encode_is_written_by_the_standard_library(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write({**request(0), "count_of_something": 2**70})
    audit.close()
    (line,) = lines(log)
    assert json.loads(line)["count_of_something"] == 2**70
    assert verify([log]).intact


def test_records_keep_their_fields_and_gain_the_pci_fields(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write(request(7))
    audit.write({"time": "t", "event": "mapping", "actor": "os:ops", "mapping_id": "m1"})
    audit.close()
    first, mapping = records(log)
    assert {k: first[k] for k in request(7)} == request(7)
    assert (first["user"], first["outcome"], first["resource"]) == ("alice", "ok", "/v1/items/7")
    assert first["source"]
    assert (mapping["user"], mapping["resource"]) == ("os:ops", "mapping/m1")


def test_a_record_cannot_set_its_own_chain_fields(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write({**request(0), "seq": 99, "prev": "f" * 64, "chain": "mine"})
    audit.close()
    (record,) = records(log)
    assert (record["seq"], record["prev"]) == (0, GENESIS)


def test_card_numbers_are_redacted_before_the_record_is_hashed(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write({**request(0), "path": "/v1/pay?pan=4111111111111111"})
    audit.close()
    assert b"4111111111111111" not in log.read_bytes()
    assert verify([log]).intact


def test_a_reopened_sink_continues_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 2)
    write_log(log, 2)
    assert [r["seq"] for r in records(log)] == [0, 1, 2, 3]
    assert verify([log]).intact


def test_two_sinks_on_one_file_interleave_into_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first, second = sink(log), sink(log)
    for n in range(10):
        (first if n % 3 else second).write(request(n))
    first.close()
    second.close()
    assert [r["audit_id"] for r in records(log)] == [f"a-{n}" for n in range(10)]
    assert verify([log]).intact


WRITER = """
import sys
from pathlib import Path
from dragoman.audit.chained import ChainedFileSink
sink = ChainedFileSink(Path(sys.argv[1]))
for n in range(int(sys.argv[3])):
    sink.write({"event": "request", "audit_id": f"{sys.argv[2]}-{n}", "decision": "allow"})
sink.close()
"""


def test_two_processes_appending_to_one_file_make_one_valid_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(log), name, "300"])
        for name in ("p", "q")
    ]
    assert [w.wait() for w in writers] == [0, 0]
    written = records(log)
    assert len(written) == 600
    assert {r["audit_id"] for r in written} == {f"{p}-{n}" for p in "pq" for n in range(300)}
    assert verify_cli(log).returncode == 0


def test_a_torn_last_line_stops_the_sink_rather_than_starting_a_new_chain(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 2)
    with log.open("ab") as handle:
        handle.write(b'{"event":"req')
    with pytest.raises(ChainError):
        sink(log)


def test_a_checkpoint_follows_every_nth_seq_and_the_close(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    key, _ = make_key(tmp_path)
    write_log(log, 5, key, checkpoint_every=4)
    events = [r["event"] for r in records(log)]
    assert events == ["request"] * 3 + ["checkpoint"] + ["request"] * 2 + ["checkpoint"]
    checkpoint = records(log)[3]
    assert (checkpoint["count"], checkpoint["last_hash"]) == (3, checkpoint["prev"])
    assert checkpoint["alg"] == "ES256" and checkpoint["kid"] and checkpoint["signature"]


def test_without_a_key_no_checkpoint_is_written(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    write_log(log, 5, checkpoint_every=2)
    assert {r["event"] for r in records(log)} == {"request"}


STDOUT_WRITER = """
from dragoman.audit.chained import ChainedStdoutSink
sink = ChainedStdoutSink()
for n in range(3):
    sink.write({"event": "request", "audit_id": str(n)})
sink.close()
"""


def test_the_stdout_sink_writes_one_chain_per_process(tmp_path: Path) -> None:
    captured = tmp_path / "stdout.jsonl"
    with captured.open("wb") as out:
        for _ in range(2):
            subprocess.run([sys.executable, "-c", STDOUT_WRITER], stdout=out, check=True)
    chains = [r["chain"] for r in records(captured)]
    assert len(set(chains)) == 2
    assert verify_cli(captured, "--chain", chains[0]).returncode == 0
    assert verify_cli(captured, "--chain", chains[-1]).returncode == 0
    assert "spliced" in verify_cli(captured).stderr


def test_a_line_torn_by_another_writer_fails_the_next_write(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write(request(0))
    with log.open("ab") as handle:
        handle.write(b'{"event":"req')
    with pytest.raises(ChainError):
        audit.write(request(1))
    audit.close()


@contextlib.contextmanager
def disk_full_past(size: int) -> Iterator[None]:
    """Files of this process cannot grow past ``size`` bytes: a write across it is cut
    short, as on a full disk (RLIMIT_FSIZE, with SIGXFSZ ignored)."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_group_cut_short_by_a_full_disk_leaves_no_torn_line_and_the_sink_recovers(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write(request(0))
    with disk_full_past(log.stat().st_size + 100), pytest.raises(ChainError, match="short"):
        audit.write_many([request(n) for n in range(1, 5)])
    assert [r["audit_id"] for r in records(log)] == ["a-0"]  # none of the group is kept
    audit.write(request(5))  # space again: the chain goes on
    audit.close()
    assert [r["audit_id"] for r in records(log)] == ["a-0", "a-5"]
    assert verify_cli(log).returncode == 0


def test_an_unchained_group_cut_short_by_a_full_disk_glues_no_later_record_to_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    plain = FileSink(log)
    plain.write(request(0))
    with disk_full_past(log.stat().st_size + 100), pytest.raises(OSError, match="short"):
        plain.write_many([request(n) for n in range(1, 5)])
    plain.write(request(5))
    plain.close()
    *_, after = lines(log)
    assert json.loads(after)["audit_id"] == "a-5"


def test_records_cut_from_the_live_file_under_its_writer_stop_the_sink(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    for n in range(20):
        audit.write(request(n))
    log.write_bytes(b"".join(lines(log)[:8]))  # the same file, its last 12 records gone
    for n in range(20, 23):
        with pytest.raises(ChainError, match="went back"):
            audit.write(request(n))
    assert len(lines(log)) == 8  # nothing linked over the gap


def test_a_live_file_removed_under_its_writer_stops_the_sink(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    for n in range(5):
        audit.write(request(n))
    log.unlink()
    with pytest.raises(ChainError, match="went back"):
        audit.write(request(5))
    assert lines(log) == []  # no second chain started


def test_a_last_record_replaced_under_its_writer_stops_the_sink(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    for n in range(3):
        audit.write(request(n))
    *kept, last = lines(log)
    forged = json.loads(last) | {"decision": "deny"}
    log.write_bytes(b"".join(kept) + canonical(forged) + b"\n")
    with pytest.raises(ChainError, match="went back"):
        audit.write(request(3))


def test_a_torn_file_moved_aside_lets_the_running_writer_start_a_new_chain(
    tmp_path: Path,
) -> None:
    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    audit.write(request(0))
    with log.open("ab") as handle:
        handle.write(b'{"event":"req')
    with pytest.raises(ChainError):
        audit.write(request(1))
    log.rename(tmp_path / "audit.damaged.jsonl")  # the repair docs/audit.md describes
    audit.write(request(2))
    audit.close()
    (first,) = records(log)
    assert (first["audit_id"], first["seq"]) == ("a-2", 0)


def test_a_group_is_written_with_one_stat_one_write_and_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under steady traffic most groups hold one record: each system call is paid per request.
    import dragoman.audit.chained as chained

    audit = sink(tmp_path / "audit.jsonl")
    audit.write(request(0))
    calls: list[str] = []
    watched = [(chained.os, name) for name in ("stat", "fstat", "write", "pread")]
    for module, name in [*watched, (chained.fcntl, "flock")]:
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _n=name, _f=real: (calls.append(_n), _f(*a))[1]
        )
    audit.write_many([request(1), request(2)])
    monkeypatch.undo()
    audit.close()
    assert sorted(calls) == ["flock", "flock", "stat", "write"]


def test_a_line_appended_right_after_a_write_is_chained_from_not_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The size a writer remembers is its own write's end, not the file's size read after
    # it: a line that lands in between (a writer ignoring the lock) is found and chained
    # from by the next write, not overwritten in the chain by a second seq 1.
    import dragoman.audit.chained as chained
    from dragoman.audit.chain import Tail, link

    log = tmp_path / "audit.jsonl"
    audit = sink(log)
    real_write = chained.os.write

    def write_then_intrude(fd: int, data: bytes) -> int:
        written = real_write(fd, data)
        monkeypatch.setattr(chained.os, "write", real_write)
        line, _ = link(chained.prepare(request(1)), Tail.after(lines(log)[-1].rstrip(b"\n")))
        with log.open("ab") as intruder:
            intruder.write(line)
        return written

    monkeypatch.setattr(chained.os, "write", write_then_intrude)
    audit.write(request(0))
    audit.write(request(2))
    audit.close()
    assert [r["audit_id"] for r in records(log)] == ["a-0", "a-1", "a-2"]
    assert [r["seq"] for r in records(log)] == [0, 1, 2]
    assert verify([log]).intact

"""`dragoman audit verify`: an untouched log verifies; every kind of tampering is found,
at the first bad index, with what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chain_support import lines, make_key, records, sink, verify_cli, write_log

from dragoman.audit.chain import GENESIS, canonical, digest, stdlib_canonical
from dragoman.audit.checkpoint import CheckpointSigner, signing_input
from dragoman.audit.verify import verify

COUNT = 10  # requests 0..9, then the closing checkpoint at index 10


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return make_key(tmp_path)


@pytest.fixture
def log(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    path = tmp_path / "audit.jsonl"
    write_log(path, COUNT, keys[0])
    return path


def rewrite(path: Path, rows: list[bytes]) -> None:
    path.write_bytes(b"".join(rows))


def rechain(
    rows: list[dict[str, Any]], signer: CheckpointSigner, encode: Any = canonical
) -> list[bytes]:
    """What a forger does: recompute every prev and re-sign every checkpoint (with a key
    of their own, as they do not hold the operator's)."""
    out: list[bytes] = []
    prev = GENESIS
    for seq, row in enumerate(rows):
        row = {**row, "seq": seq, "prev": prev}
        if row["event"] == "checkpoint":
            row.update(count=seq, last_hash=prev, kid=signer.kid)
            row["signature"] = signer.sign(signing_input(row))
        line = encode(row)
        out.append(line + b"\n")
        prev = digest(line)
    return out


def test_a_log_in_the_standard_librarys_encoding_verifies(
    log: Path, keys: tuple[Path, Path]
) -> None:
    """Logs written before orjson: json.dumps wrote small floats as 1e-05 (orjson: 1e-5)."""
    rows = records(log)
    rows[3]["latency_ms"] = 0.00001
    rewrite(log, rechain(rows, CheckpointSigner.from_pem_file(keys[0]), stdlib_canonical))
    assert b'"latency_ms":1e-05' in lines(log)[3]
    result = verify_cli(log, "--key", keys[1])
    assert result.returncode == 0, result.stderr


def test_a_record_in_neither_canonical_encoding_is_edited(log: Path) -> None:
    rows = lines(log)
    record = json.loads(rows[4])
    rows[4] = json.dumps(record, sort_keys=True).encode() + b"\n"  # ", " and ": "
    rewrite(log, rows)
    assert "the record is not in canonical form" in failure(verify_cli(log))


def failure(result: Any) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    return str(result.stderr)


def test_an_untouched_log_verifies(log: Path, keys: tuple[Path, Path]) -> None:
    result = verify_cli(log, "--key", keys[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "11 records, 1 checkpoints, chain intact"


def test_the_chain_verifies_without_keys(log: Path) -> None:
    result = verify_cli(log)
    assert result.returncode == 0
    assert "chain intact" in result.stdout


def test_one_edited_byte_is_found_at_its_record(log: Path) -> None:
    rows = lines(log)
    rows[4] = rows[4].replace(b'"alice"', b'"alicf"')
    rewrite(log, rows)
    assert "index 4: edited" in failure(verify_cli(log))


def test_any_single_byte_edit_of_a_record_is_found_at_that_record(log: Path) -> None:
    rows = lines(log)
    original = rows[4]
    for position in range(len(original) - 1):  # every byte but the newline
        edited = bytearray(original)
        edited[position] ^= 0x01
        rewrite(log, [*rows[:4], bytes(edited), *rows[5:]])
        problem = verify([log]).problem
        assert problem is not None and problem.index == 4, (position, problem)
        assert problem.kind == "edited", (position, problem)


def test_a_deleted_record_is_found_missing(log: Path) -> None:
    rows = lines(log)
    rewrite(log, rows[:6] + rows[7:])
    assert "index 6: missing: record 6 missing" in failure(verify_cli(log))


def test_two_swapped_records_are_found_reordered(log: Path) -> None:
    rows = lines(log)
    rows[3], rows[4] = rows[4], rows[3]
    rewrite(log, rows)
    assert "index 3: reordered" in failure(verify_cli(log))


def test_a_torn_last_line_is_found_truncated(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 20])
    assert "index 10: truncated: the last record is incomplete" in failure(verify_cli(log))


def test_records_cut_from_the_tail_are_found_against_an_expected_count(log: Path) -> None:
    rewrite(log, lines(log)[:8])
    assert verify_cli(log).returncode == 0  # what a chain alone cannot see
    assert "index 8: truncated" in failure(verify_cli(log, "--expect-at-least", "11"))


def test_records_cut_from_the_tail_are_found_when_the_log_must_end_closed(log: Path) -> None:
    rewrite(log, lines(log)[:8])
    assert "index 8: truncated: the log does not end with a checkpoint" in failure(
        verify_cli(log, "--closed")
    )


def test_a_log_emptied_to_nothing_is_found_truncated_when_it_must_end_closed(
    log: Path, keys: tuple[Path, Path]
) -> None:
    log.write_bytes(b"")
    assert "index 0: truncated: the log holds no record" in failure(
        verify_cli(log, "--closed", "--key", keys[1])
    )


def test_a_writer_closed_without_records_ends_its_log_with_a_checkpoint_that_verifies_closed(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    # An instance that served nothing closes its log with a count-0 checkpoint, so a closed
    # empty log is told apart from one emptied afterwards.
    idle = tmp_path / "idle.jsonl"
    sink(idle, keys[0]).close()
    [checkpoint] = records(idle)
    assert (checkpoint["event"], checkpoint["count"], checkpoint["prev"]) == (
        "checkpoint",
        0,
        GENESIS,
    )
    assert verify_cli(idle, "--closed", "--key", keys[1]).returncode == 0


def test_a_chain_asked_for_that_no_record_belongs_to_is_missing(log: Path) -> None:
    assert "index 0: missing: no record of chain no-such-chain" in failure(
        verify_cli(log, "--chain", "no-such-chain")
    )


def test_a_chain_asked_for_that_no_record_belongs_to_is_missing_when_closed(log: Path) -> None:
    assert "index 0: missing: no record of chain no-such-chain" in failure(
        verify_cli(log, "--closed", "--chain", "no-such-chain")
    )


def test_the_chain_asked_for_verifies_when_its_records_are_there(log: Path) -> None:
    chain = records(log)[0]["chain"]
    result = verify_cli(log, "--closed", "--chain", chain)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("11 records, 1 checkpoints")


def test_records_of_another_chain_spliced_in_are_found(log: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    write_log(other, 3)
    rows = lines(log)
    rewrite(log, rows[:5] + lines(other) + rows[5:])
    assert "index 5: spliced" in failure(verify_cli(log))


def test_two_logs_verified_as_one_are_found_spliced(log: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    write_log(other, 3)
    assert "index 11: spliced" in failure(verify_cli(log, other))


def test_a_rewritten_chain_with_a_forged_checkpoint_fails_its_signature(
    log: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    forger, _ = make_key(tmp_path, "forger")
    rows = records(log)
    rows[2]["decision"] = "deny"
    forged = rechain(rows, CheckpointSigner.from_pem_file(forger))
    forged[-1] = canonical({**json.loads(forged[-1]), "kid": rows[-1]["kid"]}) + b"\n"
    rewrite(log, forged)
    assert verify_cli(log).returncode == 0  # consistent: only a signature tells
    stderr = failure(verify_cli(log, "--key", keys[1]))
    assert "index 10: bad signature" in stderr


def test_a_checkpoint_signed_by_an_unknown_key_fails(
    log: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    forger, _ = make_key(tmp_path, "forger")
    rewrite(log, rechain(records(log), CheckpointSigner.from_pem_file(forger)))
    assert "index 10: bad signature: signed by no key given" in failure(
        verify_cli(log, "--key", keys[1])
    )


def test_a_signed_checkpoint_whose_count_is_wrong_is_a_mismatch(
    log: Path, keys: tuple[Path, Path]
) -> None:
    signer = CheckpointSigner.from_pem_file(keys[0])
    rows = lines(log)
    checkpoint = json.loads(rows[-1])
    checkpoint["count"] = 12
    checkpoint["signature"] = signer.sign(signing_input(checkpoint))
    rows[-1] = canonical(checkpoint) + b"\n"
    rewrite(log, rows)
    assert "index 10: checkpoint mismatch" in failure(verify_cli(log, "--key", keys[1]))


def test_a_log_whose_head_was_removed_is_missing_records(log: Path) -> None:
    rewrite(log, lines(log)[3:])
    assert "index 0: missing" in failure(verify_cli(log))
    assert verify_cli(log, "--partial").returncode == 0

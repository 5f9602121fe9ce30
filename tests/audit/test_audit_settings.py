"""The audit settings: a checkpoint key and the retention of rotated files are checked when
the settings load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chain_support import make_key, request

from dragoman.audit.rotation import rotated_files
from dragoman.audit.sink import open_audit_sink
from dragoman.settings import AuditSettings


def test_a_checkpoint_key_that_is_not_an_ec_p256_pem_is_refused_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key: s3cr3t-material\n")
    with pytest.raises(ValueError, match="checkpoint_key_file") as caught:
        AuditSettings(checkpoint_key_file=bad)
    assert "s3cr3t-material" not in str(caught.value)


def test_a_missing_checkpoint_key_file_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        AuditSettings(checkpoint_key_file=tmp_path / "missing.pem")


def test_checkpoints_need_the_chain(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path)
    with pytest.raises(ValueError, match="needs chain"):
        AuditSettings(chain=False, checkpoint_key_file=key)


def test_a_valid_checkpoint_key_loads(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path)
    assert AuditSettings(checkpoint_key_file=key).checkpoint_key_file == key


@pytest.mark.parametrize(
    "options",
    [
        {"keep_rotated": 2},  # max_bytes 0: the file never rotates
        {"keep_rotated": 2, "max_bytes": 1000, "sink": "stdout"},
        {"keep_rotated": 2, "max_bytes": 1000, "chain": False},
    ],
)
def test_keep_rotated_without_rotation_is_refused_naming_the_key(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="keep_rotated needs"):
        AuditSettings(**options)


def test_a_negative_keep_rotated_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_rotated"):
        AuditSettings(keep_rotated=-1, max_bytes=1000)


def test_with_a_shipper_the_file_sink_itself_deletes_no_rotated_file(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    settings = AuditSettings(
        path=live,
        max_bytes=700,
        keep_rotated=0,
        database_url="sqlite+aiosqlite:///" + str(tmp_path / "audit.db"),
    )
    audit = open_audit_sink(settings)
    for n in range(20):
        audit.write(request(n))
    audit.close()
    assert len(rotated_files(live)) > 2  # the shipper prunes, once the table holds them


def test_without_a_shipper_the_file_sink_prunes_at_rotation(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    audit = open_audit_sink(AuditSettings(path=live, max_bytes=700, keep_rotated=1))
    for n in range(20):
        audit.write(request(n))
    audit.close()
    assert len(rotated_files(live)) == 1

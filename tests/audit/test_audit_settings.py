"""The audit settings: a checkpoint key is checked when the settings load."""

from __future__ import annotations

from pathlib import Path

import pytest
from chain_support import make_key

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

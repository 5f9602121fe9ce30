"""Fixtures for the key tests: a fresh master key and a key file path in the test's tmp dir."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from dragoman.keys.local import LocalKeyFile


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys.json"


@pytest.fixture
def key_file(key_path: Path, master_key: bytes) -> LocalKeyFile:
    """A key file made by dragoman (one fresh key), loaded."""
    provider = LocalKeyFile(key_path, master_key)
    provider.load(create=True)
    return provider

"""Fixtures for the key tests."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)

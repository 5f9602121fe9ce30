"""The local provider for the contract suite: keys sealed in a real state store (SQLite)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dragoman.keys.local import LocalProvider
from dragoman.keys.provider import KeyProvider
from dragoman.state import migrate
from dragoman.state.sql import make_engine

from .harness import ProviderHarness


@pytest.fixture
async def local_provider(tmp_path: Path) -> AsyncIterator[ProviderHarness]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    master_key = secrets.token_bytes(32)
    engines = [make_engine(url)]
    await migrate.upgrade(engines[0])

    async def reopen() -> KeyProvider:
        engines.append(make_engine(url))
        return LocalProvider(engines[-1], master_key)

    yield ProviderHarness(LocalProvider(engines[0], master_key), reopen)
    for engine in engines:
        await engine.dispose()

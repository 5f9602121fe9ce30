"""The cluster of the failover and chaos runs: three replicas behind HAProxy (failover_support)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from failover_support import Cluster, haproxy_binary

from postgres_support import empty_database


@pytest.fixture
async def cluster(tmp_path: Path, pg_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    if haproxy_binary() is None:
        # As tests/conftest.py's service_missing (``import conftest`` would find this one).
        message = "HAProxy (Debian package haproxy; `make haproxy`) is not installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    await empty_database(pg_url)
    started = Cluster(tmp_path, pg_url, redis_url)
    try:
        await started.start(3)
        yield started
    finally:
        await started.stop()

"""The cluster of the failover and chaos runs: three replicas behind HAProxy (failover_support)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from failover_support import Cluster, haproxy_binary

from ci_support import service_missing
from postgres_support import empty_database


@pytest.fixture
async def cluster(tmp_path: Path, pg_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    if haproxy_binary() is None:
        service_missing("HAProxy", "Debian package haproxy is not installed; `make haproxy`")
    await empty_database(pg_url)
    started = Cluster(tmp_path, pg_url, redis_url)
    try:
        await started.start(3)
        yield started
    finally:
        await started.stop()

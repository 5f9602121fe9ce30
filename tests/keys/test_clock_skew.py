"""An instance whose clock is off the key store's signs nothing (SEMANTICS §3).

Every instance reads the shared timeline (when a key signs, stops, is retired) by its own
clock, and stamps its tokens' ``iat`` and ``exp`` with it. A ring compares its host's clock
with PostgreSQL's at each refresh; past ``keys.max_clock_skew`` it refuses to sign (503
``key_unavailable``), to rotate, and /readyz. SQLite has no clock of its own (a file on this
host): nothing is measured there. The host clock is injected; the store's is the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.keys.local import LocalProvider
from dragoman.keys.provider import KeyUnavailableError
from dragoman.keys.ring import KeyRing
from dragoman.keys.store import KeySetStore
from dragoman.keys.timeline import Timeline
from dragoman.observability.keys import SKEW, KeyRingCollector
from dragoman.state import migrate
from dragoman.state.sql import make_engine
from postgres_support import empty_database

TIMELINE = Timeline(period=3600.0, overlap=60.0, prepublish=600.0)
MAX_SKEW = 10.0


class HostClock:
    """The real clock, off by ``offset`` seconds (set by the test)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


Rings = Callable[[HostClock], KeyRing]


async def rings_on(url: str, master_key: bytes) -> AsyncIterator[Rings]:
    engines: list[AsyncEngine] = []
    made: list[KeyRing] = []

    def ring(host: HostClock) -> KeyRing:
        engine = make_engine(url)
        engines.append(engine)
        made.append(
            KeyRing(
                KeySetStore(engine, query_timeout=5.0),
                LocalProvider(engine, master_key, query_timeout=5.0),
                TIMELINE,
                refresh_interval=2.0,
                auto_rotate=True,
                max_clock_skew=MAX_SKEW,
                host_clock=host,
            )
        )
        return made[-1]

    first = make_engine(url)
    engines.append(first)
    await migrate.upgrade(first)
    try:
        yield ring
    finally:
        for r in made:
            await r.close()
        for engine in engines:
            await engine.dispose()


@pytest.fixture
async def pg_rings(pg_url: str, master_key: bytes) -> AsyncIterator[Rings]:
    await empty_database(pg_url)
    async for ring in rings_on(pg_url, master_key):
        yield ring


@pytest.fixture
async def sqlite_rings(tmp_path: object, master_key: bytes) -> AsyncIterator[Rings]:
    async for ring in rings_on(f"sqlite+aiosqlite:///{tmp_path}/keys.db", master_key):
        yield ring


async def settled(rings: Rings, host: HostClock) -> KeyRing:
    """A ring settled on a key set whose first key an instance with a true clock made."""
    await rings(HostClock()).settle()
    ring = rings(host)
    await ring.settle()
    return ring


async def refusal(ring: KeyRing) -> str:
    with pytest.raises(KeyUnavailableError) as refused:
        await ring.check_signing()
    return str(refused.value)


async def test_clock_in_step_with_postgresql_is_measured_and_signs(pg_rings: Rings) -> None:
    ring = await settled(pg_rings, HostClock())
    assert ring.clock_skew is not None and abs(ring.clock_skew) < 1.0
    assert ring.ready()
    await ring.sign(lambda key: b"data")


async def test_instance_whose_clock_is_ahead_signs_nothing(pg_rings: Rings) -> None:
    ring = await settled(pg_rings, HostClock(offset=30.0))
    assert ring.clock_skew is not None and 29.0 < ring.clock_skew < 31.0
    assert not ring.ready()
    assert "ahead of the key store's" in await refusal(ring)
    with pytest.raises(KeyUnavailableError, match="ahead of"):
        await ring.sign(lambda key: b"data")


async def test_instance_whose_clock_is_behind_signs_nothing(pg_rings: Rings) -> None:
    ring = await settled(pg_rings, HostClock(offset=-30.0))
    assert "behind the key store's" in await refusal(ring)


async def test_skew_within_the_limit_is_tolerated(pg_rings: Rings) -> None:
    ring = await settled(pg_rings, HostClock(offset=MAX_SKEW - 3.0))
    assert ring.ready()


async def test_skewed_instance_does_not_rotate(pg_rings: Rings) -> None:
    ring = await settled(pg_rings, HostClock(offset=-120.0))
    with pytest.raises(KeyUnavailableError, match="not rotating"):
        await ring.rotate()
    assert await ring.rotate_if_due() is None
    assert len(await ring.store.load()) == 1  # only the first key, made by the true clock


async def test_skewed_instance_retires_nothing(pg_rings: Rings) -> None:
    # Stamped by a clock an hour ahead, the retirement would leave the key signing on
    # every other instance for that hour.
    ring = await settled(pg_rings, HostClock(offset=3600.0))
    (first,) = await ring.store.load()
    with pytest.raises(KeyUnavailableError, match="ahead of the key store's: not retiring"):
        await ring.retire(first.kid)
    (still,) = await ring.store.load()
    assert still.retired_at is None


async def test_skewed_instance_does_not_make_the_first_key(pg_rings: Rings) -> None:
    ring = pg_rings(HostClock(offset=120.0))
    await ring.settle()
    assert await ring.store.load() == []
    assert "ahead of" in await refusal(ring)


async def test_instance_signs_again_once_its_clock_agrees(pg_rings: Rings) -> None:
    host = HostClock(offset=30.0)
    ring = await settled(pg_rings, host)
    assert not ring.ready()
    host.offset = 0.0
    await ring.measure_clock()
    assert ring.ready()
    await ring.sign(lambda key: b"data")


async def test_sqlite_has_no_clock_to_compare_with(sqlite_rings: Rings) -> None:
    ring = await settled(sqlite_rings, HostClock(offset=3600.0))
    assert ring.clock_skew is None
    assert ring.ready()


async def test_skew_is_exported_as_a_metric(pg_rings: Rings) -> None:
    ring = await settled(pg_rings, HostClock(offset=30.0))
    (skew,) = [m for m in KeyRingCollector(ring).collect() if m.name == SKEW]
    assert 29.0 < skew.samples[0].value < 31.0


async def test_skew_metric_is_absent_without_a_store_clock(sqlite_rings: Rings) -> None:
    ring = await settled(sqlite_rings, HostClock())
    (skew,) = [m for m in KeyRingCollector(ring).collect() if m.name == SKEW]
    assert skew.samples == []


async def test_skew_past_the_limit_and_its_end_are_logged_once(
    pg_rings: Rings, caplog: pytest.LogCaptureFixture
) -> None:
    host = HostClock(offset=30.0)
    ring = await settled(pg_rings, host)
    await ring.measure_clock()
    host.offset = 0.0
    await ring.measure_clock()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    ahead = [m for m in said if "ahead of the key store's" in m]
    assert len(ahead) == 1
    assert ahead[0].startswith("this instance's clock is ")
    assert ahead[0].endswith(" s ahead of the key store's (keys.max_clock_skew); signing nothing")
    assert "this instance's clock agrees with the key store's again; signing" in said

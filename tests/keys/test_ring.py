"""The key ring (SEMANTICS §3, issue 3): several instances over one shared key set, on SQLite
and on the real PostgreSQL, agreeing on the one current key; rotation on a timeline.

Each ring below has its own engine (as separate proxy processes would) over the same store and
the same master key. Time is a mutable clock shared by the rings; the view's age is a separate
mutable monotonic clock. Signatures are checked with ``cryptography`` against the JWK the ring
names, so "which key signed" is observed, not taken from the ring's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dragoman.keys.local import LocalProvider
from dragoman.keys.provider import KeyUnavailableError, ProviderKey, SigningKey
from dragoman.keys.ring import KeyRing
from dragoman.keys.store import KeySetStore
from dragoman.keys.timeline import KeyRecord, KeyState, Timeline
from dragoman.state import migrate
from dragoman.state.sql import StoreUnavailable, make_engine
from postgres_support import empty_database
from tcp_relay import TcpRelay

from .support import jwk_verifies

PERIOD = 3600.0
OVERLAP = 60.0
PREPUBLISH = 600.0
REFRESH = 2.0
T0 = 1_700_000_000.0
RINGS = 5
DATA = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjdXNfYWxpY2UifQ"

TIMELINE = Timeline(period=PERIOD, overlap=OVERLAP, prepublish=PREPUBLISH)


class Clock:
    """A clock the test moves by hand: ``clock()`` reads it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def signer_of(ring: KeyRing) -> str:
    """Sign with ``ring``; check the signature against the JWK it names; return that kid."""
    seen: list[SigningKey] = []

    def build(key: SigningKey) -> bytes:
        seen.append(key)
        return DATA + key.kid.encode()

    key, signature = await ring.sign(build)
    assert seen == [key]
    assert jwk_verifies(key.public_jwk, DATA + key.kid.encode(), signature)
    return key.kid


@dataclasses.dataclass
class Cluster:
    """Rings over one key set, each with its own engine, sharing ``clock`` and ``monotonic``."""

    url: str
    master_key: bytes
    clock: Clock
    monotonic: Clock
    engines: list[AsyncEngine] = dataclasses.field(default_factory=list)
    rings: list[KeyRing] = dataclasses.field(default_factory=list)

    def engine(self, url: str | None = None) -> AsyncEngine:
        made = make_engine(url or self.url)
        self.engines.append(made)
        return made

    def ring(
        self,
        *,
        url: str | None = None,
        provider: Callable[[AsyncEngine], LocalProvider] | None = None,
        query_timeout: float = 5.0,
    ) -> KeyRing:
        engine = self.engine(url)
        made = KeyRing(
            KeySetStore(engine, query_timeout=query_timeout),
            (provider or self.provider)(engine),
            TIMELINE,
            refresh_interval=REFRESH,
            auto_rotate=True,
            clock=self.clock,
            monotonic=self.monotonic,
        )
        self.rings.append(made)
        return made

    def provider(self, engine: AsyncEngine) -> LocalProvider:
        return LocalProvider(engine, self.master_key, query_timeout=5.0)

    async def stored(self) -> list[KeyRecord]:
        """Every key of the set, read afresh."""
        return await KeySetStore(self.engines[0]).load()

    async def disabled_refs(self) -> set[str]:
        async with self.engines[0].connect() as conn:
            rows = await conn.execute(
                text("SELECT ref FROM local_signing_keys WHERE disabled_at IS NOT NULL")
            )
            return {row.ref for row in rows}

    async def close(self) -> None:
        for ring in self.rings:
            await ring.close()
        for engine in self.engines:
            await engine.dispose()


@pytest.fixture
async def cluster(database_url: str, master_key: bytes) -> AsyncIterator[Cluster]:
    made = Cluster(database_url, master_key, Clock(T0), Clock(0.0))
    await migrate.upgrade(made.engine())
    yield made
    await made.close()


async def first_key(cluster: Cluster) -> tuple[KeyRing, KeyRecord]:
    """A ring that has made the first key (current from T0)."""
    ring = cluster.ring()
    await ring.settle()
    [record] = await cluster.stored()
    return ring, record


async def schedule_successor(ring: KeyRing, clock: Clock) -> KeyRecord:
    """Move to the current key's period end minus prepublish and let the ring rotate."""
    current = TIMELINE.current(ring.keys, clock())
    assert current is not None
    clock.now = current.activates_at + PERIOD - PREPUBLISH
    made = await ring.rotate_if_due()
    assert made is not None
    return made


def published(ring: KeyRing) -> dict[str, dict[str, Any]]:
    return {jwk["kid"]: jwk for jwk in ring.jwks()["keys"]}


# -- agreement across instances ------------------------------------------------------------------


async def test_rings_settling_together_make_exactly_one_first_key(cluster: Cluster) -> None:
    rings = [cluster.ring() for _ in range(RINGS)]
    await asyncio.gather(*(r.settle() for r in rings))
    stored = await cluster.stored()
    assert len(stored) == 1
    assert sum(r.rotations for r in rings) == 1
    assert stored[0].activates_at == T0


async def test_rings_settling_together_all_sign_with_the_one_first_key(cluster: Cluster) -> None:
    rings = [cluster.ring() for _ in range(RINGS)]
    await asyncio.gather(*(r.settle() for r in rings))
    [stored] = await cluster.stored()
    assert [await signer_of(r) for r in rings] == [stored.kid] * RINGS


async def test_keys_made_by_rings_that_lost_the_first_settle_are_disabled(
    cluster: Cluster,
) -> None:
    rings = [cluster.ring() for _ in range(RINGS)]
    await asyncio.gather(*(r.settle() for r in rings))
    [stored] = await cluster.stored()
    made = set(await rings[0].provider.list_keys())
    assert stored.ref in made
    assert await cluster.disabled_refs() == made - {stored.ref}


async def test_each_scheduled_rotation_happens_once_across_rings_rotating_together(
    cluster: Cluster,
) -> None:
    rings = [cluster.ring() for _ in range(RINGS)]
    await asyncio.gather(*(r.settle() for r in rings))
    for generation in (2, 3, 4):
        newest = (await cluster.stored())[-1]
        cluster.clock.now = newest.activates_at + PERIOD - PREPUBLISH
        made = await asyncio.gather(*(r.rotate_if_due() for r in rings))
        winners = [m for m in made if m is not None]
        assert len(winners) == 1
        stored = await cluster.stored()
        assert [k.generation for k in stored] == list(range(1, generation + 1))
        assert stored[-1].kid == winners[0].kid
        assert stored[-1].activates_at == newest.activates_at + PERIOD
    assert sum(r.rotations for r in rings) == 1 + 3


async def test_every_ring_signs_with_the_same_key_after_each_scheduled_rotation(
    cluster: Cluster,
) -> None:
    rings = [cluster.ring() for _ in range(RINGS)]
    await asyncio.gather(*(r.settle() for r in rings))
    for _ in range(3):
        scheduled = await schedule_successor(rings[0], cluster.clock)
        cluster.clock.now = scheduled.activates_at
        cluster.monotonic.advance(REFRESH)
        for ring in rings:
            await ring.refresh()
        assert [await signer_of(r) for r in rings] == [scheduled.kid] * RINGS


async def test_a_ring_follows_a_rotation_made_by_another_on_refresh(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    other = cluster.ring()
    await other.refresh()
    scheduled = await ring.rotate(immediately=True)
    assert scheduled is not None
    await other.refresh()
    assert await signer_of(other) == scheduled.kid


async def test_a_rotation_conflict_leaves_the_losers_provider_key_disabled(
    cluster: Cluster,
) -> None:
    _, first = await first_key(cluster)
    loser_keys: list[ProviderKey] = []
    rival_engine = cluster.engine()
    rival_provider = cluster.provider(rival_engine)
    rival_store = KeySetStore(rival_engine)

    class RacedProvider(LocalProvider):
        """A real local provider; while the loser makes its key, a rival instance commits
        its successor (on PostgreSQL the advisory lock keeps dragoman instances from doing
        so, so the rival writes the store as an instance without the lock would)."""

        async def create_key(self) -> ProviderKey:
            made = await super().create_key()
            loser_keys.append(made)
            theirs = await rival_provider.create_key()
            await rival_store.add_successor(
                dataclasses.replace(
                    first,
                    kid=theirs.ref,
                    generation=2,
                    ref=theirs.ref,
                    public_jwk=theirs.public_jwk,
                    created_by="rival",
                    activates_at=cluster.clock() + PREPUBLISH,
                ),
                first,
            )
            return made

    loser = cluster.ring(provider=lambda e: RacedProvider(e, cluster.master_key))
    await loser.refresh()
    assert await loser.rotate() is None
    [lost] = loser_keys
    assert lost.ref in await cluster.disabled_refs()
    with pytest.raises(KeyUnavailableError, match="disabled"):
        await cluster.provider(cluster.engine()).sign(lost.ref, DATA)
    assert loser.rotations == 0


async def test_a_rotation_conflict_keeps_the_winners_successor(cluster: Cluster) -> None:
    _, first = await first_key(cluster)
    rival_engine = cluster.engine()
    rival_provider = cluster.provider(rival_engine)
    winner: list[str] = []

    class RacedProvider(LocalProvider):
        async def create_key(self) -> ProviderKey:
            made = await super().create_key()
            theirs = await rival_provider.create_key()
            winner.append(theirs.ref)
            await KeySetStore(rival_engine).add_successor(
                dataclasses.replace(
                    first,
                    kid=theirs.ref,
                    generation=2,
                    ref=theirs.ref,
                    public_jwk=theirs.public_jwk,
                    activates_at=cluster.clock() + PREPUBLISH,
                ),
                first,
            )
            return made

    loser = cluster.ring(provider=lambda e: RacedProvider(e, cluster.master_key))
    await loser.refresh()
    await loser.rotate()
    stored = await cluster.stored()
    assert [k.kid for k in stored] == [first.kid, winner[0]]
    assert stored[0].deactivates_at == stored[1].activates_at
    assert [k.kid for k in loser.keys] == [first.kid, winner[0]]


# -- the scheduled rotation ----------------------------------------------------------------------


async def test_first_key_is_current_at_once(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    assert TIMELINE.state(first, cluster.clock()) is KeyState.CURRENT
    assert await signer_of(ring) == first.kid


async def test_no_successor_is_made_before_period_minus_prepublish(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    cluster.clock.now = T0 + PERIOD - PREPUBLISH - 1
    assert await ring.rotate_if_due() is None
    assert len(await cluster.stored()) == 1


async def test_scheduled_successor_activates_at_the_end_of_the_current_period(
    cluster: Cluster,
) -> None:
    ring, _ = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    [old, new] = await cluster.stored()
    assert new.kid == scheduled.kid
    assert new.activates_at == T0 + PERIOD
    assert old.deactivates_at == T0 + PERIOD


async def test_scheduled_successor_is_published_prepublish_before_it_activates(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    assert scheduled.activates_at - cluster.clock() == PREPUBLISH
    keys = published(ring)
    assert set(keys) == {first.kid, scheduled.kid}
    assert keys[scheduled.kid]["active_from"] == int(T0 + PERIOD)


async def test_pending_successor_is_published_by_every_ring(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    others = [cluster.ring() for _ in range(RINGS - 1)]
    scheduled = await schedule_successor(ring, cluster.clock)
    for other in others:
        await other.refresh()
        assert set(published(other)) == {first.kid, scheduled.kid}


async def test_ring_keeps_signing_with_the_current_key_while_the_successor_is_pending(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    for now in (cluster.clock(), scheduled.activates_at - 1, scheduled.activates_at - 0.001):
        cluster.clock.now = now
        assert await signer_of(ring) == first.kid


async def test_ring_signs_with_the_successor_from_its_activation_instant(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    cluster.clock.now = scheduled.activates_at
    assert await signer_of(ring) == scheduled.kid


async def test_no_successor_is_scheduled_twice_while_one_is_pending(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    await schedule_successor(ring, cluster.clock)
    cluster.clock.advance(PREPUBLISH - 1)
    assert await ring.rotate_if_due() is None
    assert len(await cluster.stored()) == 2


async def test_overdue_rotation_still_prepublishes_the_successor(cluster: Cluster) -> None:
    # The instances were down past the end of the period: the successor must still be
    # published prepublish before it signs, so the current key signs a little longer.
    ring, first = await first_key(cluster)
    cluster.clock.now = T0 + PERIOD + 300
    scheduled = await ring.rotate_if_due()
    assert scheduled is not None
    assert scheduled.activates_at == cluster.clock() + PREPUBLISH
    assert await signer_of(ring) == first.kid


# -- the published key set -----------------------------------------------------------------------


async def test_jwks_of_a_lone_current_key_has_active_from_only(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    [jwk] = ring.jwks()["keys"]
    assert jwk["kid"] == first.kid
    assert jwk["active_from"] == int(T0)
    assert "active_until" not in jwk
    assert "verify_until" not in jwk


async def test_jwks_carries_active_from_active_until_and_verify_until(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    keys = published(ring)
    assert keys[first.kid]["active_from"] == int(T0)
    assert keys[first.kid]["active_until"] == int(T0 + PERIOD)
    assert keys[first.kid]["verify_until"] == int(T0 + PERIOD + OVERLAP)
    assert keys[scheduled.kid]["active_from"] == int(T0 + PERIOD)
    assert "active_until" not in keys[scheduled.kid]


async def test_jwks_publishes_public_members_pinned_to_es256_signatures(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    await schedule_successor(ring, cluster.clock)
    for jwk in ring.jwks()["keys"]:
        assert "d" not in jwk
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")


async def test_jwks_keeps_the_previous_key_until_its_overlap_ends(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    await schedule_successor(ring, cluster.clock)
    cluster.clock.now = T0 + PERIOD + OVERLAP - 0.001
    assert first.kid in published(ring)


async def test_jwks_drops_the_previous_key_once_its_overlap_has_passed(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    cluster.clock.now = T0 + PERIOD + OVERLAP
    assert set(published(ring)) == {scheduled.kid}


# -- rotation on demand --------------------------------------------------------------------------


async def test_rotate_schedules_the_successor_prepublish_from_now(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    cluster.clock.advance(123)
    scheduled = await ring.rotate()
    assert scheduled is not None
    assert scheduled.activates_at == cluster.clock() + PREPUBLISH
    assert TIMELINE.state(scheduled, cluster.clock()) is KeyState.PENDING
    assert await signer_of(ring) == first.kid


async def test_rotate_ends_the_current_key_when_the_successor_activates(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    scheduled = await ring.rotate()
    assert scheduled is not None
    [old, _new] = await cluster.stored()
    assert old.deactivates_at == scheduled.activates_at


async def test_rotate_refuses_a_second_pending_successor(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    assert await ring.rotate() is not None
    other = cluster.ring()
    await other.refresh()
    assert await ring.rotate() is None
    assert await other.rotate() is None
    assert await ring.rotate(immediately=True) is None
    assert len(await cluster.stored()) == 2


async def test_rotate_immediately_makes_the_successor_current_at_once(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    cluster.clock.advance(10)
    scheduled = await ring.rotate(immediately=True)
    assert scheduled is not None
    assert scheduled.activates_at == cluster.clock()
    assert await signer_of(ring) == scheduled.kid
    [old, _] = await cluster.stored()
    assert TIMELINE.state(old, cluster.clock()) is KeyState.PREVIOUS


async def test_rotate_immediately_keeps_the_old_key_verifying_for_the_overlap(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    await ring.rotate(immediately=True)
    assert published(ring)[first.kid]["verify_until"] == int(cluster.clock() + OVERLAP)


# -- retiring --------------------------------------------------------------------------------------


async def test_retiring_the_current_key_makes_a_successor_current_at_once(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    cluster.clock.advance(30)
    await ring.retire(first.kid)
    successor = TIMELINE.current(ring.keys, cluster.clock())
    assert successor is not None
    assert successor.kid != first.kid
    assert await signer_of(ring) == successor.kid


async def test_retired_current_key_is_unpublished_at_once(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    cluster.clock.advance(30)
    await ring.retire(first.kid)
    assert first.kid not in published(ring)


async def test_retired_key_is_disabled_at_its_provider(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    await ring.retire(first.kid)
    with pytest.raises(KeyUnavailableError, match="disabled"):
        await ring.provider.sign(first.ref, DATA)


async def test_an_older_read_of_the_key_set_that_ends_last_does_not_replace_a_newer_view(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    held = HeldFirstLoad(ring.store)
    ring.store = held
    older = asyncio.create_task(ring.refresh())  # reads: `first` is current...
    await held.read.wait()
    other = cluster.ring()
    await other.refresh()
    await other.retire(first.kid)  # ...then another instance retires it: a new key signs
    await ring.refresh()  # a later read, which ends first
    successor = ring.current_key()
    assert successor is not None and successor.kid != first.kid
    held.release.set()
    await older  # the older read ends last
    assert ring.current_key() == successor
    assert await signer_of(ring) == successor.kid


async def test_a_key_its_provider_cannot_disable_is_retired_anyway_and_reported(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    ring = cluster.ring(provider=lambda engine: UndisablingProvider(engine, cluster.master_key))
    await ring.start()
    [first] = await cluster.stored()
    with caplog.at_level(logging.WARNING, logger="dragoman.keys.ring"):
        retired = await ring.retire(first.kid)
    assert retired.retired_at is not None
    assert first.kid not in published(ring)
    assert f"key {first.kid} is retired, but its provider could not disable it" in caplog.text
    assert first.ref in caplog.text  # what the operator disables by hand


async def test_retiring_another_providers_key_reports_it_for_disabling_by_hand(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # This ring's (local) provider does not hold a pkcs11 key: its disable would change
    # nothing, and the key would stay able to sign in the HSM.
    ring, first = await first_key(cluster)
    hsm_key = dataclasses.replace(
        first,
        kid="hsm-kid",
        generation=2,
        provider="pkcs11",
        ref="dragoman-00ff",
        activates_at=cluster.clock() + PREPUBLISH,
    )
    await ring.store.add_successor(hsm_key, first)
    with caplog.at_level(logging.WARNING, logger="dragoman.keys.ring"):
        retired = await ring.retire(hsm_key.kid)
    assert retired.retired_at == cluster.clock()
    assert ring.left_enabled == [retired]
    assert "key hsm-kid is retired, but it belongs to the pkcs11 provider" in caplog.text
    assert "disable dragoman-00ff at the provider by hand" in caplog.text


async def test_a_ring_that_made_keys_adds_none_once_the_key_set_moved_to_another_master_key(
    cluster: Cluster,
) -> None:
    old, first = await first_key(cluster)  # its provider has made a key: checked before
    new_provider = LocalProvider(cluster.engine(), secrets.token_bytes(32), query_timeout=5.0)
    new = cluster.ring(provider=lambda e: new_provider)
    await new.refresh()
    new_provider.allow_new_master_key = True
    await new.retire(first.kid)  # the master key replacement: a key under the new one
    replacement = new.current_key()
    assert replacement is not None
    await old.refresh()
    with pytest.raises(KeyUnavailableError, match="master key"):
        await old.rotate(immediately=True)
    assert [k.kid for k in await cluster.stored()] == [first.kid, replacement.kid]


async def test_retiring_the_previous_key_ends_its_overlap_at_once(cluster: Cluster) -> None:
    ring, first = await first_key(cluster)
    scheduled = await ring.rotate(immediately=True)
    assert scheduled is not None
    cluster.clock.advance(5)
    retired = await ring.retire(first.kid)
    assert retired.retired_at == cluster.clock()
    assert set(published(ring)) == {scheduled.kid}
    assert await signer_of(ring) == scheduled.kid


async def test_retiring_an_unknown_kid_raises_lookup_error(cluster: Cluster) -> None:
    ring, _ = await first_key(cluster)
    with pytest.raises(LookupError):
        await ring.retire("no-such-kid")
    assert len(await cluster.stored()) == 1


async def test_other_rings_stop_signing_with_a_retired_key_once_they_re_read(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    other = cluster.ring()
    await other.refresh()
    assert await signer_of(other) == first.kid
    await ring.retire(first.kid)
    cluster.monotonic.advance(3 * REFRESH + 0.001)  # other's view is now too old to sign on
    assert await signer_of(other) != first.kid


async def test_retiring_the_current_key_while_a_successor_is_pending_makes_a_key_sign_at_once(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    scheduled = await ring.rotate()
    assert scheduled is not None
    cluster.clock.advance(30)
    await ring.retire(first.kid)
    signer = await signer_of(ring)
    assert signer not in (first.kid, scheduled.kid)
    assert published(ring)[signer]["active_from"] == int(cluster.clock())


async def test_retiring_the_current_key_retires_its_pending_successor_unused(
    cluster: Cluster,
) -> None:
    # Brought forward, the pending key would be refused as pending by every verifier that
    # cached its later active_from; a new kid makes them fetch the key set again at once.
    ring, first = await first_key(cluster)
    scheduled = await ring.rotate()
    assert scheduled is not None
    await ring.retire(first.kid)
    assert scheduled.kid not in published(ring)
    with pytest.raises(KeyUnavailableError, match="disabled"):
        await cluster.provider(cluster.engine()).sign(scheduled.ref, DATA)


async def test_key_set_retired_longer_ago_than_the_view_reaches_gets_a_new_first_key(
    cluster: Cluster,
) -> None:
    # The current key was retired and no successor could be made then (the retiring
    # instance's provider failed: only the store's part of `retire` happened). Days later
    # the view no longer holds any key, yet generations are never reused: a key is made.
    _, first = await first_key(cluster)
    await KeySetStore(cluster.engines[0]).retire(first.kid, cluster.clock())
    cluster.clock.advance(2 * 86400)
    later = cluster.ring()
    await later.settle()
    made = (await cluster.stored())[-1]
    assert made.generation == 2
    assert await signer_of(later) == made.kid


async def test_retiring_a_pending_successor_keeps_the_current_key_signing_past_the_planned_switch(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    await ring.retire(scheduled.kid)
    assert scheduled.kid not in published(ring)
    cluster.clock.now = scheduled.activates_at
    assert await signer_of(ring) == first.kid


async def test_retiring_a_pending_successor_lets_a_fresh_one_be_prepublished_in_its_place(
    cluster: Cluster,
) -> None:
    ring, first = await first_key(cluster)
    scheduled = await schedule_successor(ring, cluster.clock)
    cluster.clock.advance(60)
    await ring.retire(scheduled.kid)
    replacement = await ring.rotate_if_due()
    assert replacement is not None
    assert replacement.kid != scheduled.kid
    assert replacement.activates_at == cluster.clock() + PREPUBLISH
    [old] = [k for k in await cluster.stored() if k.kid == first.kid]
    assert old.deactivates_at == replacement.activates_at


async def test_rotate_on_an_empty_key_set_makes_a_key_that_signs_at_once(
    cluster: Cluster,
) -> None:
    # Nothing can sign yet: a first key waiting for prepublication would leave every
    # instance unable to sign until then (and settle() would not repair it).
    ring = cluster.ring()
    await ring.refresh()
    made = await ring.rotate()
    assert made is not None
    assert made.activates_at == cluster.clock()
    assert await signer_of(ring) == made.kid


async def test_ring_with_another_master_key_adds_no_successor(cluster: Cluster) -> None:
    _, first = await first_key(cluster)
    stranger = cluster.ring(
        provider=lambda e: LocalProvider(e, secrets.token_bytes(32), query_timeout=5.0)
    )
    await stranger.refresh()
    with pytest.raises(KeyUnavailableError, match="master key"):
        await stranger.rotate()
    assert [k.kid for k in await cluster.stored()] == [first.kid]


async def test_retiring_the_current_key_from_a_ring_with_another_master_key_adds_no_key(
    cluster: Cluster,
) -> None:
    _, first = await first_key(cluster)
    stranger = cluster.ring(
        provider=lambda e: LocalProvider(e, secrets.token_bytes(32), query_timeout=5.0)
    )
    await stranger.refresh()
    with pytest.raises(KeyUnavailableError, match="master key"):
        await stranger.retire(first.kid)
    # The retirement stands (an emergency must not depend on the master key); the successor
    # is left to an instance that can seal keys the others open.
    [retired] = await cluster.stored()
    assert (retired.kid, retired.retired_at) == (first.kid, cluster.clock())


# -- a stale view signs nothing ------------------------------------------------------------------


@pytest.fixture
async def relayed(
    pg_url: str, master_key: bytes
) -> AsyncIterator[tuple[Cluster, TcpRelay, KeyRing]]:
    """PostgreSQL only: a ring whose store is reached through a relay, with a current key."""
    database_url = pg_url
    await empty_database(database_url)
    target = make_url(database_url)
    relay = TcpRelay(target.host or "127.0.0.1", target.port or 5432)
    await relay.start()
    relay_url = target.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    made = Cluster(database_url, master_key, Clock(T0), Clock(0.0))
    await migrate.upgrade(made.engine())
    ring = made.ring(url=relay_url)
    await ring.settle()
    assert await signer_of(ring)  # opens the key: signing needs no store from here
    try:
        yield made, relay, ring
    finally:
        await relay.cut()
        await made.close()


async def test_view_within_three_refresh_intervals_signs_while_the_store_is_unreachable(
    relayed: tuple[Cluster, TcpRelay, KeyRing],
) -> None:
    cluster, relay, ring = relayed
    [first] = await cluster.stored()
    await relay.cut()
    cluster.monotonic.advance(3 * REFRESH)
    assert await signer_of(ring) == first.kid


async def test_view_older_than_three_refresh_intervals_refuses_to_sign_while_store_unreachable(
    relayed: tuple[Cluster, TcpRelay, KeyRing],
) -> None:
    cluster, relay, ring = relayed
    await relay.cut()
    cluster.monotonic.advance(3 * REFRESH + 0.001)
    with pytest.raises(KeyUnavailableError, match="key set unavailable"):
        await signer_of(ring)
    assert not ring.ready()


async def test_ring_signs_again_once_it_re_reads_the_store(
    relayed: tuple[Cluster, TcpRelay, KeyRing],
) -> None:
    cluster, relay, ring = relayed
    await relay.cut()
    cluster.monotonic.advance(3 * REFRESH + 0.001)
    with pytest.raises(KeyUnavailableError):
        await signer_of(ring)
    # Meanwhile another instance rotated at once: the re-read view must sign with that key.
    other = cluster.ring()
    await other.refresh()
    scheduled = await other.rotate(immediately=True)
    assert scheduled is not None
    await relay.start()
    assert await signer_of(ring) == scheduled.kid
    assert ring.ready()


async def test_stale_ring_never_signs_with_a_key_retired_meanwhile(
    relayed: tuple[Cluster, TcpRelay, KeyRing],
) -> None:
    cluster, relay, ring = relayed
    [first] = await cluster.stored()
    await relay.cut()
    other = cluster.ring()
    await other.refresh()
    await other.retire(first.kid)
    cluster.monotonic.advance(3 * REFRESH + 0.001)
    with pytest.raises(KeyUnavailableError):
        await signer_of(ring)
    await relay.start()
    assert await signer_of(ring) != first.kid


# -- the rotation lock (PostgreSQL) ------------------------------------------------------------


@pytest.fixture
async def pg_cluster(pg_url: str, master_key: bytes) -> AsyncIterator[Cluster]:
    """PostgreSQL only, emptied: where the advisory rotation lock is used."""
    await empty_database(pg_url)
    made = Cluster(pg_url, master_key, Clock(T0), Clock(0.0))
    await migrate.upgrade(made.engine())
    yield made
    await made.close()


async def test_rotation_works_on_an_engine_with_a_single_pooled_connection(
    pg_cluster: Cluster,
) -> None:
    # `dragoman keys rotate` runs on a pool of one: the lock must not take the only slot.
    engine = make_engine(pg_cluster.url, pool_size=1)
    pg_cluster.engines.append(engine)
    ring = KeyRing(
        KeySetStore(engine, query_timeout=5.0),
        LocalProvider(engine, pg_cluster.master_key, query_timeout=5.0),
        TIMELINE,
        refresh_interval=REFRESH,
        auto_rotate=True,
        clock=pg_cluster.clock,
        monotonic=pg_cluster.monotonic,
    )
    pg_cluster.rings.append(ring)
    await ring.settle()
    scheduled = await ring.rotate()
    assert scheduled is not None
    assert [k.generation for k in await pg_cluster.stored()] == [1, 2]


class BusyProvider(LocalProvider):
    """A rival instance's provider, slow to make its key while its ring holds the rotation
    lock, and failing in the end (so the rival leaves the key set as it was), unless told
    to make it."""

    def __init__(self, engine: AsyncEngine, master_key: bytes, *, fails: bool = True) -> None:
        super().__init__(engine, master_key, query_timeout=5.0)
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        self.fails = fails

    async def create_key(self) -> ProviderKey:
        self.inside.set()
        await self.release.wait()
        if self.fails:
            raise KeyUnavailableError("the rival's provider failed")
        return await super().create_key()


def busy_rival(cluster: Cluster, *, fails: bool = True) -> tuple[KeyRing, BusyProvider]:
    made: list[BusyProvider] = []

    def provider(engine: AsyncEngine) -> LocalProvider:
        made.append(BusyProvider(engine, cluster.master_key, fails=fails))
        return made[-1]

    ring = cluster.ring(provider=provider)
    return ring, made[0]


async def lock_attempts(url: str) -> int:
    """Server sessions whose last statement tried the rotation lock."""
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        found: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND query LIKE 'SELECT pg_try_advisory_lock%'"
        )
    finally:
        await connection.close()
    return found


async def test_rotate_while_another_instance_holds_the_lock_does_not_claim_one_is_scheduled(
    pg_cluster: Cluster,
) -> None:
    _, first = await first_key(pg_cluster)
    rival, busy = busy_rival(pg_cluster)
    pg_cluster.clock.now = T0 + PERIOD  # due: the rival rotates
    await rival.refresh()
    attempt = asyncio.create_task(rival.rotate_if_due())
    await busy.inside.wait()
    ring = pg_cluster.ring(query_timeout=0.3)
    await ring.refresh()
    try:
        with pytest.raises(StoreUnavailable, match="rotation lock"):
            await ring.rotate()
    finally:
        busy.release.set()
        with contextlib.suppress(KeyUnavailableError):
            await attempt
    assert [k.kid for k in await pg_cluster.stored()] == [first.kid]


async def test_rotate_waits_for_another_instance_to_release_the_lock(pg_cluster: Cluster) -> None:
    _, first = await first_key(pg_cluster)
    rival, busy = busy_rival(pg_cluster)
    pg_cluster.clock.now = T0 + PERIOD
    await rival.refresh()
    attempt = asyncio.create_task(rival.rotate_if_due())
    await busy.inside.wait()
    ring = pg_cluster.ring()
    await ring.refresh()
    rotation = asyncio.create_task(ring.rotate())
    try:
        # Release the rival only once the ring has found the lock taken at least once.
        for _ in range(500):
            if await lock_attempts(pg_cluster.url) >= 2 or rotation.done():
                break
            await asyncio.sleep(0.01)
        assert not rotation.done()
    finally:
        busy.release.set()
        with contextlib.suppress(KeyUnavailableError):
            await attempt
    scheduled = await rotation
    assert scheduled is not None
    assert [k.kid for k in await pg_cluster.stored()] == [first.kid, scheduled.kid]


async def test_retiring_the_current_key_while_another_instance_rotates_leaves_a_key_signing(
    pg_cluster: Cluster,
) -> None:
    """An operator retires the current key while another instance, holding the rotation
    lock, makes its scheduled successor (due after prepublish). That successor ended the
    retired key all the same: nothing was current until it activated, ten minutes of 503s,
    and the retirement's own rotation made nothing while it was pending."""
    _, first = await first_key(pg_cluster)
    rival, busy = busy_rival(pg_cluster, fails=False)
    pg_cluster.clock.now = T0 + PERIOD - PREPUBLISH  # the scheduled rotation is due
    await rival.refresh()
    scheduled = asyncio.create_task(rival.rotate_if_due())
    await busy.inside.wait()
    operator = pg_cluster.ring()
    await operator.refresh()
    retirement = asyncio.create_task(operator.retire(first.kid))
    try:
        for _ in range(500):  # the retirement is committed; its rotation waits for the lock
            if any(k.retired_at is not None for k in await pg_cluster.stored()):
                break
            await asyncio.sleep(0.01)
    finally:
        busy.release.set()
    assert await scheduled is None  # its predecessor was retired meanwhile: not written
    await retirement
    for ring in (rival, operator):
        await ring.refresh()
        current = TIMELINE.current(ring.keys, pg_cluster.clock())
        assert current is not None and current.kid != first.kid
        assert await signer_of(ring) == current.kid


async def test_rotation_lock_is_released_for_the_next_instance(pg_cluster: Cluster) -> None:
    ring, _ = await first_key(pg_cluster)
    other = pg_cluster.ring()
    async with other.store.rotation_lock() as ours:
        assert ours
    async with ring.store.rotation_lock() as ours:
        assert ours


async def test_an_instance_whose_provider_does_not_hold_the_current_key_is_not_ready(
    cluster: Cluster,
) -> None:
    signing = cluster.ring()
    await signing.start()  # makes the first key, with the local provider
    other = cluster.ring(provider=lambda engine: OtherProvider(engine, cluster.master_key))
    await other.refresh()  # its view is fresh and has a current key, of another provider
    assert not other.ready()
    with pytest.raises(KeyUnavailableError, match="belongs to the local provider"):
        await other.check_signing()
    with pytest.raises(KeyUnavailableError, match="belongs to the local provider"):
        await signer_of(other)
    assert signing.ready()


async def test_an_instance_started_with_another_provider_makes_its_key_and_signs_at_once(
    cluster: Cluster,
) -> None:
    await first_key(cluster)
    other = cluster.ring(provider=lambda engine: OtherProvider(engine, cluster.master_key))
    await other.settle()
    assert other.ready()
    current = TIMELINE.current(other.keys, cluster.clock())
    assert current is not None and current.provider == "other"


async def test_a_provider_switch_while_a_successor_is_pending_signs_at_once(
    cluster: Cluster,
) -> None:
    ring, _ = await first_key(cluster)
    pending = await schedule_successor(ring, cluster.clock)
    cluster.clock.advance(10)
    other = cluster.ring(provider=lambda engine: OtherProvider(engine, cluster.master_key))
    await other.settle()
    assert other.ready()
    current = TIMELINE.current(other.keys, cluster.clock())
    assert current is not None and current.provider == "other"
    [retired] = [k for k in await cluster.stored() if k.kid == pending.kid]
    assert retired.retired_at is not None  # the old provider's successor never signs


class OtherProvider(LocalProvider):
    """A provider of another name (as a replica configured for another KMS would be)."""

    name = "other"

    def __init__(self, engine: AsyncEngine, master_key: bytes) -> None:
        super().__init__(engine, master_key, query_timeout=5.0)


class UndisablingProvider(LocalProvider):
    """The local provider whose key service refuses to disable keys (a KMS outage)."""

    def __init__(self, engine: AsyncEngine, master_key: bytes) -> None:
        super().__init__(engine, master_key, query_timeout=5.0)

    async def disable(self, ref: str) -> None:
        raise KeyUnavailableError("key service unreachable")


class HeldFirstLoad:
    """A key set store whose first read is held, once made, until ``release`` is set."""

    def __init__(self, inner: KeySetStore) -> None:
        self._inner = inner
        self.read = asyncio.Event()
        self.release = asyncio.Event()
        self._loads = 0

    async def load(self, *, since: float | None = None) -> list[KeyRecord]:
        self._loads += 1
        rows = await self._inner.load(since=since)
        if self._loads == 1:
            self.read.set()
            await self.release.wait()
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

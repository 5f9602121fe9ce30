"""The key ring: this worker's view of the shared key set, rotation, signing, the JWKS.

Each worker re-reads the key set every ``refresh_interval`` and, with ``auto_rotate``,
schedules the successor when the timeline says so (one instance wins; see
:mod:`dragoman.keys.store`). Signing picks the key that is current at that instant in a
view no older than three refresh intervals; an older view (the store unreachable) signs
nothing, so no worker ever signs with a key the others consider retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from dragoman.keys.jwk import thumbprint
from dragoman.keys.provider import KeyProvider, KeyUnavailableError, SigningKey
from dragoman.keys.store import KeySetStore, RotationConflict
from dragoman.keys.timeline import KeyRecord, Timeline
from dragoman.state.sql import StoreUnavailable

log = logging.getLogger(__name__)

ALG = "ES256"
RETIRED_HORIZON = 86400.0
"""Retired keys stay in the view (for `keys list`, and verifiers' distinct reason) a day."""


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class KeyRing:
    def __init__(
        self,
        store: KeySetStore,
        provider: KeyProvider,
        timeline: Timeline,
        *,
        refresh_interval: float,
        auto_rotate: bool,
        max_clock_skew: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        host_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.provider = provider
        self.timeline = timeline
        self._refresh_interval = refresh_interval
        self._auto_rotate = auto_rotate
        self._clock = clock
        self._monotonic = monotonic
        self._keys: list[KeyRecord] = []
        self._view_at: float | None = None
        self._reads_started = 0
        self._read_in_view = 0
        """Which read of the key set the view holds: reads run concurrently (requests that
        find the view stale, the refresh loop, the CLI's writes), and one that started
        earlier may end later; its older view must not replace a newer one."""
        self._marked_current: str | None = None
        self._signing_failed = False
        """The provider refused the last signature (down): /readyz tries a canary."""
        self._task: asyncio.Task[None] | None = None
        self._max_clock_skew = max_clock_skew
        # The host's clock, compared with the key store's. It is ``clock`` in production;
        # tests that simulate time with ``clock`` keep the host's real one here.
        self._host_clock = host_clock
        self.clock_skew: float | None = None
        """How far this instance's clock is ahead of the key store's (seconds; negative:
        behind), as last measured; None where the store has no clock (SQLite)."""
        self.rotations = 0
        """Successors this worker scheduled (for tests and metrics)."""
        self.left_enabled: list[KeyRecord] = []
        """Keys this worker retired but could not disable at their provider (for the CLI,
        which tells the operator to disable them by hand)."""

    # -- the view ------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    @property
    def keys(self) -> list[KeyRecord]:
        return list(self._keys)

    async def refresh(self) -> None:
        self._reads_started += 1
        read = self._reads_started
        now = self._clock()
        keys = await self.store.load(since=now - RETIRED_HORIZON)
        if read < self._read_in_view:
            return  # a read that started later has already set the view
        self._read_in_view = read
        self._keys = keys
        self._view_at = self._monotonic()
        current = self.timeline.current(self._keys, now)
        if current is not None and current.kid != self._marked_current:
            self._marked_current = current.kid
            try:
                await self.provider.mark_current(current.ref)
            except KeyUnavailableError as exc:
                # Not marked: the next refresh tries again (a provider that was down when
                # the key took over must not keep naming the previous key for good).
                self._marked_current = None
                log.warning("provider could not mark key %s current: %s", current.kid, exc)

    def fresh(self) -> bool:
        """Whether the view of the key set was read within three refresh intervals."""
        return (
            self._view_at is not None
            and self._monotonic() - self._view_at <= 3 * self._refresh_interval
        )

    def current_key(self) -> SigningKey | None:
        """The key current now in this view (None if there is none)."""
        record = self.timeline.current(self._keys, self._clock())
        return None if record is None else SigningKey(record.kid, record.alg, record.public_jwk)

    def ready(self) -> bool:
        """A fresh view with a current key that this instance's provider holds."""
        return self._unready_reason() is None

    async def measure_clock(self, *, log_changes: bool = True) -> None:
        """Compare this instance's clock with the key store's. Every instance reads the
        timeline (when a key signs, stops, is retired) by its own clock: one that is off
        signs with a key the others think pending or over, and its tokens' iat and exp are
        off by as much. Past ``max_clock_skew`` this instance signs nothing (503
        key_unavailable) and /readyz says why, until the clocks agree again.
        ``log_changes``: log when the skew passes the limit and when it ends (a serving
        instance; the CLI says it in its own words)."""
        before = self._host_clock()
        server = await self.store.server_time()
        after = self._host_clock()
        was_skewed = self.skew_reason() is not None
        self.clock_skew = None if server is None else (before + after) / 2 - server
        skewed = self.skew_reason()
        if not log_changes:
            return
        if skewed is not None and not was_skewed:
            log.warning("%s (keys.max_clock_skew); signing nothing", skewed)
        elif skewed is None and was_skewed:
            log.warning("this instance's clock agrees with the key store's again; signing")

    def skew_reason(self) -> str | None:
        """Why this host's clock may not be trusted with the timeline (None: it may, or it
        was never measured: SQLite has no clock of its own)."""
        skew = self.clock_skew
        if skew is None or abs(skew) <= self._max_clock_skew:
            return None
        side = "ahead of" if skew > 0 else "behind"
        return f"this instance's clock is {abs(skew):.1f} s {side} the key store's"

    def _unready_reason(self) -> str | None:
        if not self.fresh():
            return "key set unavailable"
        try:
            self._signing_record()
        except KeyUnavailableError as exc:
            return str(exc)
        return None

    def _signing_record(self) -> KeyRecord:
        """The key to sign with now, in this view; raises KeyUnavailableError saying why
        there is none (what /readyz and signing both refuse on)."""
        skewed = self.skew_reason()
        if skewed is not None:
            raise KeyUnavailableError(skewed)
        record = self.timeline.current(self._keys, self._clock())
        if record is None:
            raise KeyUnavailableError("no current signing key")
        if record.provider != self.provider.name:
            # Another instance switched providers (settings or the CLI): this one cannot
            # sign with that key, so it must not take requests either.
            raise KeyUnavailableError(f"the current key belongs to the {record.provider} provider")
        return record

    async def check_signing(self) -> None:
        """For /readyz: raises KeyUnavailableError while nothing can be signed. Beyond
        :meth:`ready`, a provider whose last signature failed (a KMS or HSM that is down)
        is asked for a canary signature, so readiness follows the provider both ways: a
        replica nobody sends requests to would otherwise never learn it works again."""
        reason = self._unready_reason()
        if reason is not None:
            raise KeyUnavailableError(reason)
        if self._signing_failed:
            await self.sign(lambda key: b"dragoman readiness canary")

    # -- signing ---------------------------------------------------------------------------

    async def sign(self, build: Callable[[SigningKey], bytes]) -> tuple[SigningKey, bytes]:
        """Sign ``build(key)`` with the key current now; ``build`` gets the key first so the
        signed header can name it. Raises KeyUnavailableError if nothing may sign."""
        if not self.fresh():
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                raise KeyUnavailableError(f"key set unavailable ({exc})") from None
        record = self._signing_record()
        key = SigningKey(record.kid, record.alg, record.public_jwk)
        try:
            signature = await self.provider.sign(record.ref, build(key))
        except KeyUnavailableError:
            self._signing_failed = True
            raise
        self._signing_failed = False
        return key, signature

    # -- publication -----------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """Pending, current and previous keys, each with its place on the timeline:
        ``active_from`` / ``active_until`` (when it signs) and ``verify_until``."""
        now = self._clock()
        keys = []
        for record in self.timeline.published(self._keys, now):
            jwk: dict[str, Any] = {
                **record.public_jwk,
                "kid": record.kid,
                "alg": record.alg,
                "use": "sig",
                "active_from": round(record.activates_at, 3),
            }
            if record.deactivates_at is not None:
                jwk["active_until"] = round(record.deactivates_at, 3)
            until = self.timeline.verify_until(record)
            if until is not None:
                jwk["verify_until"] = round(until, 3)
            keys.append(jwk)
        return {"keys": keys}

    def jwks_body(self) -> bytes:
        return json.dumps(self.jwks()).encode()

    # -- rotation ----------------------------------------------------------------------------

    async def rotate_if_due(self, *, wait: bool = False) -> KeyRecord | None:
        """Schedule the successor if the timeline says so; None if not due or not ours.

        With ``wait``, another instance holding the rotation lock is waited for (up to the
        store's query timeout) and the key set re-read under the lock, so the view holds
        whatever that instance made (a starting instance must not stay without the first
        key just because another one made it)."""
        if (
            self._view_at is not None
            and self.timeline.successor_due(self._keys, self._clock()) is None
        ):
            # Not due in the view just read: no need to take the lock (re-checked under it).
            return None
        return await self._rotate(wait=wait)

    async def rotate(self, *, immediately: bool = False) -> KeyRecord | None:
        """Schedule a successor now (`dragoman keys rotate`): it activates after
        ``prepublish`` (or at once with ``immediately``, for emergencies: verifiers that
        cached the key set may then refuse tokens until they refetch it)."""
        return await self._rotate(forced=True, immediately=immediately, wait=True)

    async def _rotate(
        self, *, forced: bool = False, immediately: bool = False, wait: bool
    ) -> KeyRecord | None:
        skewed = self.skew_reason()
        if skewed is not None:
            # Its times would put the successor where the other instances' clocks do not.
            if forced:
                raise KeyUnavailableError(f"{skewed}: not rotating")
            return None
        async with self.store.rotation_lock(wait=wait) as ours:
            if not ours:
                if forced:
                    # Not "already scheduled": another instance is busy under the lock.
                    raise StoreUnavailable("another instance holds the rotation lock; try again")
                return None
            # The generation is read before the key set (and from every key ever stored, not
            # only those in the view): a rival that commits in between is then either in the
            # view read next (nothing is due) or collides with us on the generation.
            generation = await self.store.next_generation()
            await self.refresh()
            # Times are read under the lock: waiting for it must not shorten prepublication.
            now = self._clock()
            if forced:
                due: float | None = now if immediately else now + self.timeline.prepublish
            else:
                due = self.timeline.successor_due(self._keys, now)
            if due is None:
                return None
            if forced and self.timeline.pending(self._keys, now):
                return None  # a successor is already on its way
            if forced and self.timeline.current(self._keys, now) is None:
                # Nothing can sign (an empty or fully retired key set): a key waiting for
                # prepublication would leave every instance unable to sign until then.
                due = now
            created = await self.provider.create_key()
            record = KeyRecord(
                kid=thumbprint(created.public_jwk),
                generation=generation,
                alg=ALG,
                provider=self.provider.name,
                ref=created.ref,
                public_jwk=created.public_jwk,
                created_at=now,
                created_by=instance_name(),
                activates_at=due,
            )
            predecessor = next(
                (
                    k
                    for k in reversed(self._keys)
                    if k.deactivates_at is None and k.retired_at is None
                ),
                None,
            )
            try:
                await self.store.add_successor(record, predecessor)
            except RotationConflict:
                with contextlib.suppress(KeyUnavailableError):
                    await self.provider.disable(created.ref)
                await self.refresh()
                return None
            self.rotations += 1
            log.info("key %s (generation %d) activates at %.0f", record.kid, record.generation, due)
            await self.refresh()
            return record

    async def retire(self, kid: str) -> KeyRecord:
        """Retire ``kid`` now; if it was the current key, a new key takes over at once.

        A successor that was pending to follow the retired key is retired with it, unused:
        bringing its activation forward would have every verifier that cached its later
        ``active_from`` refuse its tokens as pending until its cache expires, while a new,
        unknown kid makes verifiers fetch the key set again at once.

        Refused while this host's clock is off the store's: a retirement stamped ahead of
        the other instances' clocks would leave the key signing there until that time."""
        skewed = self.skew_reason()
        if skewed is not None:
            raise KeyUnavailableError(f"{skewed}: not retiring")
        retired = await self.store.retire(kid, self._clock())
        await self._disable(retired)
        await self.refresh()
        now = self._clock()
        if self.timeline.current(self._keys, now) is None:
            for pending in self.timeline.pending(self._keys, now):
                await self._disable(await self.store.retire(pending.kid, now))
            await self.refresh()
            await self.rotate_if_due(wait=True)
        return retired

    async def _disable(self, retired: KeyRecord) -> None:
        """Disable a retired key at its provider. The retirement stands either way (no
        instance signs with it, the JWKS drops it): a key this instance cannot disable (its
        provider is down, or it is another provider's key, which this instance's provider
        does not hold) is reported, and kept in :attr:`left_enabled`, so that an operator
        disables it there by hand."""
        if retired.provider != self.provider.name:
            # This provider would not find the key (the local provider's disable of a
            # pkcs11 label changes nothing): it must not be reported disabled.
            self.left_enabled.append(retired)
            log.warning(
                "key %s is retired, but it belongs to the %s provider, not this instance's"
                " (%s), so it was not disabled: disable %s at the provider by hand",
                retired.kid,
                retired.provider,
                self.provider.name,
                retired.ref,
            )
            return
        try:
            await self.provider.disable(retired.ref)
        except KeyUnavailableError as exc:
            self.left_enabled.append(retired)
            log.warning(
                "key %s is retired, but its provider could not disable it (%s): disable %s"
                " at the provider by hand",
                retired.kid,
                exc,
                retired.ref,
            )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the key set (making the first key if there is none) and keep it fresh.

        A store that cannot be reached now does not stop the worker: it signs nothing (503
        key_unavailable) until a later refresh succeeds."""
        try:
            await self.settle()
        except (StoreUnavailable, KeyUnavailableError) as exc:
            log.warning("key set not readable at start: %s", exc)
        self._task = asyncio.create_task(self._keep_fresh())

    async def settle(self) -> None:
        """Read the key set; make a key if none can sign (or the provider changed)."""
        await self.measure_clock()
        await self.refresh()
        current = self.timeline.current(self._keys, self._clock())
        if current is None:
            await self.rotate_if_due(wait=True)
        elif current.provider != self.provider.name:
            # The provider was switched in settings: the new one makes the next key, at
            # once, since the old provider's key cannot be used from here.
            log.warning(
                "current key %s is from %s; rotating to %s",
                current.kid,
                current.provider,
                self.provider.name,
            )
            now = self._clock()
            for pending in self.timeline.pending(self._keys, now):
                # A successor on its way stops an immediate rotation, and this instance
                # could not sign until it activates (with the old provider's, not even
                # then): it is retired unused, as retire() does with a key's successor.
                retired = await self.store.retire(pending.kid, now)
                if retired.provider == self.provider.name:
                    await self._disable(retired)
            await self.refresh()
            await self.rotate(immediately=True)

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.measure_clock()
                await self.refresh()
                if self._auto_rotate or self.timeline.current(self._keys, self._clock()) is None:
                    await self.rotate_if_due()
            except (StoreUnavailable, KeyUnavailableError) as exc:
                log.warning("key set refresh failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.store.close()
        await self.provider.close()

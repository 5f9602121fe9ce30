"""The key rotation timeline (SEMANTICS §3): a key's state is a function of time.

Key K(n) starts to sign at t0 = ``activates_at``. Its successor is scheduled ``prepublish``
before it takes over, which also fixes K(n)'s ``deactivates_at``::

    pending   [created, t0)                          published, verifies nothing, signs nothing
    current   [t0, deactivates_at)                   the only key that signs; verifies
    previous  [deactivates_at, deactivates_at + overlap)   verifies only
    retired   after that, or from retired_at         unpublished; everything it signed is refused

Every instance reads the same rows and computes the same states, so they agree on the one
current key without talking to each other; a successor always activates exactly when its
predecessor deactivates (both written in one transaction), so two keys are never current.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class KeyState(StrEnum):
    PENDING = "pending"
    CURRENT = "current"
    PREVIOUS = "previous"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of the key set, as stored."""

    kid: str
    generation: int
    alg: str
    provider: str
    ref: str
    public_jwk: dict[str, Any] = field(hash=False)
    created_at: float
    created_by: str
    activates_at: float
    deactivates_at: float | None = None
    retired_at: float | None = None


@dataclass(frozen=True, slots=True)
class Timeline:
    period: float
    overlap: float
    prepublish: float

    def state(self, key: KeyRecord, now: float) -> KeyState:
        if key.retired_at is not None and now >= key.retired_at:
            return KeyState.RETIRED
        if now < key.activates_at:
            return KeyState.PENDING
        if key.deactivates_at is None or now < key.deactivates_at:
            return KeyState.CURRENT
        if now < key.deactivates_at + self.overlap:
            return KeyState.PREVIOUS
        return KeyState.RETIRED

    def verify_until(self, key: KeyRecord) -> float | None:
        """When the key stops verifying (None while no successor is scheduled)."""
        ends = []
        if key.deactivates_at is not None:
            ends.append(key.deactivates_at + self.overlap)
        if key.retired_at is not None:
            ends.append(key.retired_at)
        return min(ends) if ends else None

    def current(self, keys: Sequence[KeyRecord], now: float) -> KeyRecord | None:
        """The one key that signs at ``now``, or None."""
        found = [k for k in keys if self.state(k, now) is KeyState.CURRENT]
        # Two current keys cannot be written (successor and predecessor change together);
        # should a hand-edited table hold them, the newest wins, never an older one.
        return max(found, key=lambda k: k.generation) if found else None

    def pending(self, keys: Sequence[KeyRecord], now: float) -> list[KeyRecord]:
        """The keys published but not signing yet at ``now``, in the order given."""
        return [k for k in keys if self.state(k, now) is KeyState.PENDING]

    def published(self, keys: Sequence[KeyRecord], now: float) -> list[KeyRecord]:
        """Pending, current and previous keys: what the JWKS serves."""
        live = (KeyState.PENDING, KeyState.CURRENT, KeyState.PREVIOUS)
        return sorted((k for k in keys if self.state(k, now) in live), key=lambda k: k.generation)

    def successor_due(self, keys: Sequence[KeyRecord], now: float) -> float | None:
        """When a successor should activate, if one should be made now; else None.

        - no key can sign (an empty set, or the current key was retired): at once;
        - the newest key that is not retired is still pending: nothing (it is the successor);
        - the current key has served ``period - prepublish``: at the end of its period, or
          ``prepublish`` from now if that is later (verifiers must see it before it signs).
        """
        if self.current(keys, now) is None and not any(
            self.state(k, now) is KeyState.PENDING for k in keys
        ):
            return now
        # Retired keys are out of the schedule: a successor retired while pending must not
        # stand for the newest key (its predecessor signs on, and needs a successor).
        live = [k for k in keys if self.state(k, now) is not KeyState.RETIRED]
        newest = max(live, key=lambda k: k.generation)
        if self.state(newest, now) is KeyState.PENDING or newest.deactivates_at is not None:
            return None
        end_of_period = newest.activates_at + self.period
        if now < end_of_period - self.prepublish:
            return None
        return max(end_of_period, now + self.prepublish)

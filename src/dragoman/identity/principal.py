"""Who is calling, once an authenticator has verified it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.

    Every field comes from verified credentials; nothing here was read from an unverified
    token. ``credential_expires_at`` bounds how long anything derived from it may be cached.
    """

    subject: str
    """The principal id (configured claim, with the issuer's prefix)."""
    cloud_account: str | None
    """The cloud account the principal acts in (configured claim, with prefix)."""
    issuer: str
    """The `iss` of the credential."""
    authenticator: str
    """Name of the authenticator (issuer config) that verified it."""
    roles: frozenset[str] = field(default_factory=frozenset)
    auth_time: int | None = None
    """When the user last signed in (``auth_time``, an integer NumericDate), if the
    credential says; step-up (:mod:`dragoman.policy.step_up`) reads it."""
    acr: str | None = None
    """The authentication context class the sign-in met (``acr``), if the credential says."""
    credential_expires_at: float | None = None

"""The key-provider contract.

A provider holds private keys and signs with them; it knows nothing of rotation. The key
*set* (which key is pending, current, previous or retired, and when) lives in the shared
store and is kept by :mod:`dragoman.keys.ring`; it names each key by the provider's ``ref``.

Every provider signs ES256: ``sign`` returns the 64-byte ``r || s`` of an ECDSA P-256
signature over SHA-256 of ``data``. The private key of a hardware or cloud provider never
leaves it: signing is a call to the provider, and nothing private is cached in the proxy.
Any failure to sign (provider down, key disabled, unknown ref) raises
:class:`KeyUnavailableError`, so the request is refused and nothing is forwarded unsigned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class KeyUnavailableError(Exception):
    """The provider cannot sign now; the request is refused (never signed otherwise)."""


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """A key a provider made: how the provider finds it again, and its public half."""

    ref: str
    """The provider's name for the key (a label, a KMS key id, a row id)."""
    public_jwk: dict[str, Any] = field(hash=False)
    """Public members only: ``{"kty": "EC", "crv": "P-256", "x": ..., "y": ...}``."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key of the key set as the rest of dragoman sees it."""

    kid: str
    alg: str
    public_jwk: dict[str, Any] = field(hash=False)


class KeyProvider(Protocol):
    """Makes keys, signs with them, and disables them; private keys stay inside."""

    name: str
    """The provider's settings name: ``local``, ``pkcs11`` or ``aws-kms``."""

    async def create_key(self) -> ProviderKey:
        """Make a new ES256 (P-256) signing key inside the provider."""
        ...

    async def sign(self, ref: str, data: bytes) -> bytes:
        """ES256 signature of ``data``: SHA-256, then ECDSA P-256, as 64-byte r||s."""
        ...

    async def public_jwk(self, ref: str) -> dict[str, Any]:
        """The public JWK of the key ``ref`` (raise KeyUnavailableError if unknown)."""
        ...

    async def list_keys(self) -> list[str]:
        """Refs of the keys this provider holds for dragoman, disabled ones included."""
        ...

    async def disable(self, ref: str) -> None:
        """Make the key unable to sign from now on (idempotent)."""
        ...

    async def mark_current(self, ref: str) -> None:
        """Told once a key has become the current signing key (an alias to move, say);
        nothing depends on it succeeding, since the key set names keys by ref."""
        ...

    async def close(self) -> None:
        """Release connections and sessions."""
        ...

"""The key-provider contract: sign bytes with a named key, publish public keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A signing key as the rest of dragoman sees it: a name and its public half."""

    kid: str
    alg: str
    public_jwk: dict[str, Any]


class KeyUnavailableError(Exception):
    """The provider cannot sign now; the request is refused (never signed otherwise)."""


class KeyProvider(Protocol):
    """Holds signing keys; private keys of remote providers never leave the provider."""

    async def current(self) -> SigningKey:
        """The one key that signs now; raise KeyUnavailableError when there is none."""
        ...

    async def sign(self, kid: str, data: bytes) -> bytes:
        """JWS signature of ``data`` (for ES256: the 64-byte r||s)."""
        ...

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set to publish."""
        ...

    def ready(self) -> bool:
        """Whether a current key is usable (for /readyz)."""
        ...

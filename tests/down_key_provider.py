"""A key provider that is down: it holds the keys but cannot sign (what a remote key service
looks like while unreachable), for tests that need nothing to be signable."""

from __future__ import annotations

from typing import Any

from dragoman.keys.provider import KeyUnavailableError, ProviderKey


class DownKeyProvider:
    """The configured provider, unreachable: it holds the keys but cannot sign."""

    name = "local"

    async def create_key(self) -> ProviderKey:
        raise KeyUnavailableError("key service unreachable")

    async def sign(self, ref: str, data: bytes) -> bytes:
        raise KeyUnavailableError("key service unreachable")

    async def public_jwk(self, ref: str) -> dict[str, Any]:
        raise KeyUnavailableError("key service unreachable")

    async def list_keys(self) -> list[str]:
        raise KeyUnavailableError("key service unreachable")

    async def disable(self, ref: str) -> None:
        raise KeyUnavailableError("key service unreachable")

    async def mark_current(self, ref: str) -> None:
        return None

    async def close(self) -> None:
        return None

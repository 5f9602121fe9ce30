"""What a provider fixture hands the contract suite."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dragoman.keys.provider import KeyProvider


@dataclass
class ProviderHarness:
    provider: KeyProvider
    reopen: Callable[[], Awaitable[KeyProvider]]
    """A new provider instance over the same backing store (as after a proxy restart)."""

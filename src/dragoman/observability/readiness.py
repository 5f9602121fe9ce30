"""/readyz: which of the proxy's dependencies do not answer (SEMANTICS §6).

Each check has a stable name (the answer lists the failing names, nothing else: never a
URL, a host or an error text, which could carry credentials). Checks run concurrently;
each one is bounded by its backend's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
"""True when the dependency answers; False, or any exception, when it does not."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    probe: Probe
    partial: bool = False
    """Its outage refuses only some requests, by the operator's choice (SEMANTICS §6:
    ``limits.fallback = "local"`` keeps reads going while Redis is down). Every replica
    shares such a dependency: failing readiness for it would take them all out of the
    balancer and refuse the requests that can still be served."""


def sync_probe(ready: Callable[[], bool]) -> Probe:
    """A probe of state the proxy already holds (no I/O)."""

    async def probe() -> bool:
        return ready()

    return probe


def ping_probe(ping: Callable[[], Awaitable[None]]) -> Probe:
    """A probe of a backend's ``ping()``, which raises when it cannot answer."""

    async def probe() -> bool:
        await ping()
        return True

    return probe


class Readiness:
    """The checks of one proxy, in the order the answer lists failures."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = tuple(checks)
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError("readiness check names must be unique")

    async def state(self) -> tuple[list[str], bool]:
        """The failing checks, and whether the proxy can still serve (only partial ones)."""
        failing = await self.failing()
        partial = {c.name for c in self.checks if c.partial}
        return failing, all(name in partial for name in failing)

    async def failing(self) -> list[str]:
        outcomes = await asyncio.gather(*(c.probe() for c in self.checks), return_exceptions=True)
        failing = []
        for check, outcome in zip(self.checks, outcomes, strict=True):
            if outcome is True:
                continue
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation and the like are not a dependency's failure
            if isinstance(outcome, Exception):
                log.debug("readiness check %s failed: %s", check.name, type(outcome).__name__)
            failing.append(check.name)
        return failing

"""Fixtures for the JOSE unit tests: a served development issuer, an HTTP session, a clock,
and JWKS caches built on a real ``HttpKeySetFetcher``.

- ``dev_issuer``: a DevIssuer on a free loopback port; its ``issuer`` is its URL.
- ``clock``: a ManualClock (``jose_helpers``) injected into the caches.
- ``make_cache(issuer, **options)``: a JwksCache reading ``issuer``'s JWKS over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jose_helpers import MAX_STALE, REFETCH_INTERVAL, TTL, ManualClock

from dragoman.demo.issuer import DevIssuer
from dragoman.jose.jwks import HttpKeySetFetcher, JwksCache


@pytest.fixture
async def dev_issuer(
    serve: Callable[[web.Application], AbstractAsyncContextManager[str]],
) -> AsyncIterator[DevIssuer]:
    issuer = DevIssuer()
    async with serve(issuer.app()) as url:
        issuer.issuer = url
        yield issuer


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_cache(session: aiohttp.ClientSession, clock: ManualClock) -> Callable[..., JwksCache]:
    def make(
        issuer: DevIssuer,
        *,
        discover: bool = False,
        ttl: float = TTL,
        max_stale: float = MAX_STALE,
        refetch_interval: float = REFETCH_INTERVAL,
        jwks_uri: str | None = None,
        **fetcher_options: Any,
    ) -> JwksCache:
        if jwks_uri is None and not discover:
            jwks_uri = f"{issuer.issuer}/jwks.json"
        fetcher = HttpKeySetFetcher(
            session=lambda: session,
            timeout=5.0,
            jwks_uri=jwks_uri,
            issuer=issuer.issuer,
            **fetcher_options,
        )
        return JwksCache(
            fetcher,
            name="test",
            ttl=ttl,
            max_stale=max_stale,
            refetch_interval=refetch_interval,
            clock=clock,
        )

    return make

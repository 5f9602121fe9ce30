"""A JWKS cache that fails closed and cannot be turned against its provider.

- Keys are fetched lazily and used for ``ttl`` seconds.
- At most one fetch is in flight (concurrent callers wait for it), and attempts are spaced
  by at least ``refetch_interval``: an unknown ``kid`` triggers a refetch only when that much
  time has passed, so a flood of random kids costs the provider nothing.
- While the provider is unreachable, keys keep verifying up to ``max_stale`` past their TTL
  (SEMANTICS §6); after that every lookup raises :class:`JwksUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from dragoman.jose.strict import JoseError, TrustedKey

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 512 * 1024
MAX_DROPPED = 1024
"""How many kids that left the key set are remembered (for the key_retired reason)."""


class JwksUnavailable(Exception):
    """No usable key set: the provider is down and the cached keys are too old (or absent)."""


class KeySetFetcher(Protocol):
    async def fetch(self) -> list[dict[str, Any]]:
        """Return the JWK dicts of the key set; raise any exception on failure."""
        ...


class FetchError(Exception):
    """A discovery or JWKS document could not be fetched or read."""


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,  # noqa: ASYNC109
) -> dict[str, Any]:
    """GET a small JSON object; raise FetchError on any failure."""
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
            # A cache on the way revalidates: a refetch for an unknown kid must see the
            # key set as it is now, not as a shared cache kept it.
            headers={"Accept": "application/json", "Cache-Control": "no-cache"},
        ) as response:
            if response.status != 200:
                raise FetchError(f"{url} answered {response.status}")
            # read(n) returns what has arrived so far (up to n bytes): loop until EOF.
            body = bytearray()
            while len(body) <= MAX_DOCUMENT_BYTES:
                chunk = await response.content.read(MAX_DOCUMENT_BYTES + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise FetchError(f"{url} answered a document that is too large")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchError(f"{url}: {type(exc).__name__}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise FetchError(f"{url} answered something that is not JSON") from None
    if not isinstance(document, dict):
        raise FetchError(f"{url} answered JSON that is not an object")
    return document


def keys_of(document: dict[str, Any], url: str) -> list[dict[str, Any]]:
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise FetchError(f"{url} has no 'keys' list")
    return [k for k in keys if isinstance(k, dict)]


@dataclass(slots=True)
class HttpKeySetFetcher:
    """Fetches a JWKS over HTTP, from a fixed URL or one found by OIDC discovery."""

    session: Callable[[], aiohttp.ClientSession]
    timeout: float
    jwks_uri: str | None = None
    issuer: str | None = None
    check_uri: Callable[[str], str] | None = None

    async def fetch(self) -> list[dict[str, Any]]:
        uri = self.jwks_uri or await self._discover()
        return keys_of(await get_json(self.session(), uri, self.timeout), uri)

    async def _discover(self) -> str:
        # Discovery is not cached on its own: a failed JWKS fetch retries it, so a provider
        # that moved its jwks_uri is followed at the next attempt.
        if self.issuer is None:
            raise FetchError("neither jwks_uri nor issuer is configured")
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await get_json(self.session(), url, self.timeout)
        if document.get("issuer") != self.issuer:
            # OIDC Discovery §4.3: the document must name exactly the issuer we asked.
            raise FetchError(f"{url} names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise FetchError(f"{url} has no jwks_uri")
        if self.check_uri is not None:
            try:
                self.check_uri(uri)
            except ValueError as exc:
                raise FetchError(f"{url}: jwks_uri {exc}") from None
        return uri


class JwksCache:
    """Keys by ``kid`` from one key set, refreshed under the rules in the module docstring."""

    def __init__(
        self,
        fetcher: KeySetFetcher,
        *,
        name: str,
        ttl: float,
        max_stale: float,
        refetch_interval: float,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        """``on_fetch`` is told the outcome of every fetch attempt (``ok`` or ``error``),
        for the refresh metric."""
        self._fetcher = fetcher
        self._on_fetch = on_fetch
        self._name = name
        self._ttl = ttl
        self._max_stale = max_stale
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._keys: dict[str, TrustedKey] = {}
        self._dropped: dict[str, None] = {}  # kids that left the set, oldest first
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._attempts_done = 0
        self.fetches = 0
        """Fetch attempts made so far (successful or not), for metrics and tests."""

    def fresh_key(self, kid: str) -> TrustedKey | None:
        """The key named ``kid`` when the key set is within its TTL and holds it; None when
        only :meth:`key` can say (a refresh is due, or the kid is not known)."""
        fetched = self._fetched_at
        if fetched is None or self._clock() - fetched >= self._ttl:
            return None
        return self._keys.get(kid)

    async def key(self, kid: str) -> TrustedKey:
        """The key named ``kid``; raise JoseError(kid_unknown) or JwksUnavailable."""
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl or kid not in self._keys:
            await self._refresh()
        self._check_usable()
        found = self._keys.get(kid)
        if found is None:
            if kid in self._dropped:
                raise JoseError("key_retired", "token names a key that left the key set")
            raise JoseError("kid_unknown", "token names a key that is not in the key set")
        return found

    async def refetched_key(self, kid: str) -> TrustedKey:
        """The key named ``kid`` after a fetch of the key set (at most one per refetch
        interval, as for an unknown kid). For a token the cached key's timeline refuses:
        the timeline may have moved since the fetch (a pending successor retired gives its
        predecessor's end back), and a genuine token must not be refused for as long as a
        stale copy is cached."""
        await self._refresh()
        return await self.key(kid)

    def _check_usable(self) -> None:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at > self._ttl + self._max_stale:
            raise JwksUnavailable(f"no usable keys for {self._name}")

    async def _refresh(self) -> None:
        attempts_done = self._attempts_done
        async with self._lock:
            if self._attempts_done != attempts_done:
                return  # an attempt ended while we waited for the lock; use its outcome
            now = self._clock()
            if self._last_attempt is not None and now - self._last_attempt < self._refetch_interval:
                return  # somebody fetched (or tried) moments ago; use what we have
            self._last_attempt = now
            self.fetches += 1
            try:
                jwks = await self._fetcher.fetch()
            except Exception as exc:  # any failure: keep serving cached keys within max_stale
                log.warning("jwks fetch for %s failed: %s", self._name, exc)
                self._attempts_done += 1
                self._fetched("error")
                return
            keys: dict[str, TrustedKey] = {}
            for jwk in jwks:
                try:
                    key = TrustedKey.from_jwk(jwk)
                except ValueError as exc:
                    log.info("jwks of %s: skipping a key: %s", self._name, exc)
                    continue
                keys[key.kid] = key
            for gone in set(self._keys) - set(keys):
                # Remember keys that left the set, so their tokens get a distinct reason.
                self._dropped[gone] = None
                while len(self._dropped) > MAX_DROPPED:
                    del self._dropped[next(iter(self._dropped))]
            self._keys = keys
            self._fetched_at = self._clock()
            self._attempts_done += 1
            self._fetched("ok")

    def _fetched(self, outcome: str) -> None:
        if self._on_fetch is not None:
            self._on_fetch(outcome)

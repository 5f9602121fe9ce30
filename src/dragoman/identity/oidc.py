"""OIDC bearer tokens (JWT access tokens, RFC 9068, or ID tokens where configured).

One :class:`OidcAuthenticator` serves every configured issuer. It routes a token to its
issuer by the unverified ``iss`` (a token naming no configured issuer is "not mine", so
another authenticator may own it), then verifies it strictly with that issuer's key set and
rules (:mod:`dragoman.jose.strict`). Nothing read before the signature check is logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from dragoman.cache import TtlCache
from dragoman.identity.base import NOT_MINE, NotMine, bearer_token
from dragoman.identity.principal import Principal
from dragoman.jose.jwks import HttpKeySetFetcher, JwksCache, JwksUnavailable
from dragoman.jose.strict import (
    HeaderPolicy,
    JoseError,
    TrustedKey,
    UnverifiedJws,
    read_jws,
    unverified_issuer,
    verify_jws,
)
from dragoman.pipeline.errors import IdentityUnavailable, Unauthenticated
from dragoman.settings import IdentitySettings, OidcIssuerSettings, check_http_url

VERIFIED_TOKENS = 10_000
"""How many verified tokens one issuer remembers (about 1 KiB each)."""


@contextmanager
def _as_denials() -> Iterator[None]:
    """JOSE refusals become 401 unauthenticated; a key set out of reach becomes 503."""
    try:
        yield
    except JoseError as exc:
        raise Unauthenticated(exc.reason, f"The bearer token was refused ({exc.reason}).") from None
    except JwksUnavailable:
        raise IdentityUnavailable("jwks_unavailable") from None


def claim(payload: Mapping[str, Any], path: str) -> Any:
    """A claim by exact name, or else by path into nested objects: a JSON pointer (RFC 6901)
    when ``path`` starts with ``/`` (for names with dots: ``/kubernetes.io/namespace``),
    a dotted path otherwise. Only objects are walked, never arrays."""
    if path in payload:
        return payload[path]
    if path.startswith("/"):
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
    else:
        parts = path.split(".")
    value: Any = payload
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_of(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def same_key(found: TrustedKey, remembered: TrustedKey) -> bool:
    """Whether the key set's key is the one a remembered token was verified with (the same
    object until the key set is fetched again, after that an equal public key published
    for the same use and algorithm: one republished for encryption, or for another
    algorithm, no longer verifies the token)."""
    return found is remembered or (
        found.public_key == remembered.public_key
        and found.use == remembered.use
        and found.alg == remembered.alg
    )


class IssuerVerifier:
    """Verifies tokens of one issuer."""

    def __init__(
        self,
        config: OidcIssuerSettings,
        keys: JwksCache,
        *,
        max_token_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.keys = keys
        self._clock = clock
        self._policy = HeaderPolicy(
            algorithms=frozenset(config.algorithms),
            accepted_types=frozenset(config.accepted_types),
            allow_missing_type=config.allow_missing_type,
            max_token_bytes=max_token_bytes,
        )
        self._audiences = frozenset(config.audiences)
        self._clients = frozenset(config.allowed_clients)

    async def confirm_key(self, key: TrustedKey) -> bool:
        """Whether a remembered token's key is still in the key set (refreshed on schedule)
        under its kid, as the same key: an issuer may put another key under the same kid
        (a compromised key replaced), and a token the old one signed is then no longer
        verified."""
        with _as_denials():
            current = await self.keys.key(key.kid)
        return same_key(current, key)

    async def verify(self, token: str | UnverifiedJws) -> tuple[Principal, TrustedKey]:
        """Verify ``token`` in full; the Principal and the key that signed it."""
        config = self.config
        with _as_denials():
            verified = await verify_jws(
                token,
                policy=self._policy,
                keys=self.keys,
                issuer=config.issuer,
                audiences=self._audiences,
                now=self._clock(),
                leeway=config.leeway,
                max_lifetime=config.max_token_lifetime,
            )
        payload = verified.claims
        subject = claim(payload, config.principal_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("principal_claim_missing", "The token names no principal.")
        if config.client_claim is not None:
            client = claim(payload, config.client_claim)
            if not isinstance(client, str) or not client:
                raise Unauthenticated("client_claim_missing", "The token names no client.")
            if self._clients and client not in self._clients:
                raise Unauthenticated(
                    "client_not_allowed", "The token was issued to a client not allowed here."
                )
        account = claim(payload, config.account_claim)
        if account is not None and (not isinstance(account, str) or not account):
            raise Unauthenticated("account_claim_invalid", "The token's account is malformed.")
        # Step-up reads these; a value of the wrong type counts as absent (a bool is no time).
        auth_time = payload.get("auth_time")
        acr = payload.get("acr")
        principal = Principal(
            subject=config.principal_prefix + subject,
            cloud_account=None if account is None else config.account_prefix + account,
            issuer=config.issuer,
            authenticator=config.name,
            roles=roles_of(claim(payload, config.roles_claim))
            if config.roles_claim
            else frozenset(),
            auth_time=auth_time
            if isinstance(auth_time, int) and not isinstance(auth_time, bool)
            else None,
            acr=acr if isinstance(acr, str) and acr else None,
            credential_expires_at=float(payload["exp"]),
        )
        return principal, verified.key


class OidcAuthenticator:
    """Bearer JWTs from any configured OIDC issuer."""

    name = "oidc"

    def __init__(
        self,
        settings: IdentitySettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        jwks_fetched: Callable[[str, str], None] | None = None,
    ) -> None:
        """``jwks_fetched(issuer name, outcome)`` counts the key set fetches."""
        self._session: aiohttp.ClientSession | None = None
        self.issuers: dict[str, IssuerVerifier] = {}
        for config in settings.oidc:
            fetcher = HttpKeySetFetcher(
                session=self._client,
                timeout=config.http_timeout,
                jwks_uri=config.jwks_uri,
                issuer=config.issuer,
                check_uri=lambda uri: check_http_url(uri, require_tls=True),
            )
            cache = JwksCache(
                fetcher,
                name=config.name,
                ttl=config.jwks_cache_ttl,
                max_stale=config.jwks_max_stale,
                refetch_interval=config.jwks_refetch_interval,
                clock=monotonic,
                on_fetch=None if jwks_fetched is None else partial(jwks_fetched, config.name),
            )
            self.issuers[config.issuer] = IssuerVerifier(
                config, cache, max_token_bytes=settings.max_token_bytes, clock=clock
            )
        self._max_token_bytes = settings.max_token_bytes
        # Verified tokens by their full text: a caller reuses its token for many calls, and
        # checking a signature (or even parsing the token) costs far more than a lookup.
        # An entry never outlives the token's exp, and its key is confirmed on every hit.
        self._cache_ttl = settings.verify_cache_ttl
        self._verified: TtlCache[str, tuple[IssuerVerifier, Principal, TrustedKey]] = TtlCache(
            VERIFIED_TOKENS, monotonic
        )
        self._clock = clock
        self._monotonic = monotonic

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def authenticate(self, request: web.Request) -> Principal | NotMine:
        token = bearer_token(request)
        if token is None:
            return NOT_MINE
        if len(token) > self._max_token_bytes:
            raise Unauthenticated("token_too_large", "The bearer token is too large.")
        if self._cache_ttl > 0:
            remembered = self._verified.get(token)
            if remembered is not None:
                known, principal, key = remembered
                fresh = known.keys.fresh_key(key.kid)
                if fresh is not None and same_key(fresh, key):
                    return principal  # the usual case: no await, no refresh due
                try:
                    confirmed = await known.confirm_key(key)
                except Unauthenticated:
                    self._verified.discard(token)
                    raise
                if confirmed:
                    return principal
                # Another key under the same kid: verified again in full, against it.
                self._verified.discard(token)
        # Read once: the issuer is picked from this reading and its verifier checks the same one.
        try:
            read = read_jws(token, self._max_token_bytes)
        except JoseError:
            return NOT_MINE  # unreadable: no issuer can claim it
        verifier = self.issuers.get(unverified_issuer(read) or "")
        if verifier is None:
            return NOT_MINE
        principal, key = await verifier.verify(read)
        if self._cache_ttl > 0:
            lifetime = min(
                self._cache_ttl, (principal.credential_expires_at or 0.0) - self._clock()
            )
            if lifetime > 0:
                self._verified.put(token, (verifier, principal, key), self._monotonic() + lifetime)
        return principal

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

"""The upstream side: verify dragoman's scoped tokens (SEMANTICS §2).

A service behind dragoman (the payment platform) uses this library to check every request::

    verifier = TokenVerifier(
        jwks_url="https://dragoman.internal/.well-known/jwks.json",
        issuer="dragoman",
        audience="payments",
        origin="https://payments.internal",  # the origin dragoman forwards to
    )
    token = await verifier.verify(
        bearer, method="POST", path=raw_path,
        scope="payment_methods:create", customer=customer_id,
    )

``verify`` checks, in order: header policy (ES256/EdDSA only, ``typ: at+jwt``, no
``jku``/``x5u``/``jwk``/``x5c`` headers, a ``kid`` from the JWKS), the signature, ``iss``,
``aud``, ``exp`` (passed is passed), ``nbf``/``iat`` with 30 s leeway, a 15-minute lifetime
cap, a ``jti``, ``scope`` equal to the operation being served, ``sub`` equal to the customer
touched, and the request binding ``htm``/``htu``. ``scope`` and ``customer`` are required
arguments so a handler cannot forget them; pass ``customer=None`` only for operations that
touch no customer.

With a ``replay_cache`` (:mod:`dragoman.tokens.replay`), a token is usable once for every
state-changing method (anything but GET, HEAD, OPTIONS; ``once=`` overrides per call): its
``jti`` is remembered until the token expires, and a second use is ``token_replayed``. The
check runs last, after the signature and every claim passed, so junk never fills the cache.

Every refusal raises :class:`TokenRejected` with a stable ``reason``. :class:`TokenMiddleware`
wraps an ASGI application; :func:`verify_aiohttp` serves aiohttp handlers.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from dragoman.jose.jwks import HttpKeySetFetcher, JwksCache, JwksUnavailable
from dragoman.jose.strict import (
    HeaderPolicy,
    JoseError,
    TrustedKey,
    check_key_timeline,
    verify_jws,
)
from dragoman.tokens.replay import ReplayCache, ReplayCacheFull, ReplayCacheUnavailable, replay_key

DEFAULT_JWKS_MAX_STALE = 60.0
"""How long past its cache time the key set keeps verifying while it cannot be fetched. A
key retired meanwhile (a compromise) cannot be learned of, so it keeps verifying up to the
cache time plus this: the overlap, not an hour."""
MAX_LIFETIME = 900.0
"""SEMANTICS §2: a token lives at most 15 minutes."""
MIN_JTI_LENGTH = 22
"""SEMANTICS §2: a jti carries >= 122 random bits: at least 22 base64url characters."""
ONCE_JTI = re.compile(r"[A-Za-z0-9_-]{22,128}")
"""What a jti must look like to be remembered by the replay cache (dragoman mints 22)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods whose tokens are not once-only by default: they change nothing upstream."""


class TokenRejected(Exception):
    """The token does not authorise this request. ``reason`` is stable and safe to log."""

    def __init__(self, reason: str, status: int = 401) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a valid token says about the request it authorises."""

    customer: str | None
    scope: str
    principal: str
    cloud_account: str
    jti: str
    kid: str
    expires_at: float
    claims: dict[str, Any] = field(repr=False)


def origin_of(url: str) -> str:
    """scheme://host[:port], lower-cased, default ports dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _named(value: object) -> bool:
    """Whether a claim naming someone (``act.sub``, ``cloud_account``) names anyone."""
    return isinstance(value, str) and bool(value)


def _same_url(bound: object, origin: str, path: str) -> bool:
    if not isinstance(bound, str):
        return False
    parts = urlsplit(bound)
    if parts.query or parts.fragment:
        return False
    return origin_of(bound) == origin and parts.path == path


class TokenVerifier:
    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        origin: str,
        algorithms: tuple[str, ...] = ("ES256", "EdDSA"),
        leeway: float = 30.0,
        jwks_ttl: float = 300.0,
        jwks_max_stale: float = DEFAULT_JWKS_MAX_STALE,
        jwks_refetch_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        replay_cache: ReplayCache | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._issuer = issuer
        self._ssl = ssl_context
        self._replay = replay_cache
        self._audiences = frozenset({audience})
        self._origin = origin_of(origin)
        self._leeway = leeway
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._policy = HeaderPolicy(
            algorithms=frozenset(algorithms), accepted_types=frozenset({"at+jwt"})
        )
        self.keys = JwksCache(
            HttpKeySetFetcher(session=self._client, timeout=5.0, jwks_uri=jwks_url),
            name="dragoman",
            ttl=jwks_ttl,
            max_stale=jwks_max_stale,
            refetch_interval=jwks_refetch_interval,
            clock=monotonic,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = None if self._ssl is None else aiohttp.TCPConnector(ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        """Close the JWKS client and the replay cache (the verifier owns the cache)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._replay is not None:
            await self._replay.close()

    async def _check_timeline(self, key: TrustedKey, kid: str, claims: dict[str, Any]) -> None:
        """SEMANTICS §3 against the cached key set, and once more against a fresh one
        before a refusal (:meth:`JwksCache.refetched_key`): the key set's timeline can move
        after it was fetched."""
        try:
            check_key_timeline(key, claims, now=self._clock(), leeway=self._leeway)
            return
        except JoseError:
            pass
        try:
            fresh = await self.keys.refetched_key(kid)
            if fresh.public_key != key.public_key:  # the signature was checked with the other
                raise JoseError("key_mismatch", "the key named by kid changed")
            check_key_timeline(fresh, claims, now=self._clock(), leeway=self._leeway)
        except JoseError as exc:
            raise TokenRejected(exc.reason) from None
        except JwksUnavailable:
            raise TokenRejected("jwks_unavailable", status=503) from None

    async def verify(
        self,
        token: str | None,
        *,
        method: str,
        path: str,
        scope: str,
        customer: str | None,
        once: bool | None = None,
    ) -> VerifiedToken:
        """Verify ``token`` for this request; raise TokenRejected.

        ``once``: whether the token must not have been used before (None: for every method
        but GET, HEAD and OPTIONS when a replay cache is configured). ``once=True`` without
        a replay cache is refused (503): a missing cache never turns into an allow.
        """
        if not token:
            raise TokenRejected("token_missing")
        try:
            verified = await verify_jws(
                token,
                policy=self._policy,
                keys=self.keys,
                issuer=self._issuer,
                audiences=self._audiences,
                now=self._clock(),
                leeway=self._leeway,
                max_lifetime=MAX_LIFETIME,
            )
        except JoseError as exc:
            raise TokenRejected(exc.reason) from None
        except JwksUnavailable:
            raise TokenRejected("jwks_unavailable", status=503) from None
        claims, header = verified.claims, verified.header
        await self._check_timeline(verified.key, header.kid, claims)
        jti = claims.get("jti")
        if jti is None:
            raise TokenRejected("claim_missing")
        if not isinstance(jti, str) or len(jti) < MIN_JTI_LENGTH:
            raise TokenRejected("claim_invalid")
        act = claims.get("act")
        if not isinstance(act, dict) or "sub" not in act or "cloud_account" not in claims:
            raise TokenRejected("claim_missing")
        account = claims["cloud_account"]
        if not _named(act["sub"]) or not _named(account):
            raise TokenRejected("claim_invalid")
        if claims.get("scope") != scope:
            raise TokenRejected("scope_mismatch", status=403)
        sub = claims.get("sub")
        if customer is not None and sub != customer:
            raise TokenRejected("customer_mismatch", status=403)
        if claims.get("htm") != method.upper():
            raise TokenRejected("method_mismatch")
        if not _same_url(claims.get("htu"), self._origin, path):
            raise TokenRejected("url_mismatch")
        if once is None:
            once = self._replay is not None and method.upper() not in SAFE_METHODS
        if once:
            await self._first_use(jti, float(claims["exp"]))
        return VerifiedToken(
            customer=sub if isinstance(sub, str) else None,
            scope=scope,
            principal=act["sub"],
            cloud_account=account,
            jti=jti,
            kid=header.kid,
            expires_at=float(claims["exp"]),
            claims=claims,
        )

    async def _first_use(self, jti: str, expires_at: float) -> None:
        """Refuse a token whose (issuer, jti) was seen before; remember it until it expires."""
        if self._replay is None:
            raise TokenRejected("replay_cache_unavailable", status=503)
        if not ONCE_JTI.fullmatch(jti):
            raise TokenRejected("claim_invalid")
        # The entry must outlive every moment the token still verifies on any instance: its
        # exp by a clock up to the leeway behind this one.
        ttl = expires_at + self._leeway - self._clock()
        try:
            first = await self._replay.first_use(replay_key(self._issuer, jti), ttl)
        except ReplayCacheFull:
            raise TokenRejected("replay_cache_full", status=503) from None
        except ReplayCacheUnavailable:
            raise TokenRejected("replay_cache_unavailable", status=503) from None
        if not first:
            raise TokenRejected("token_replayed")


def bearer_of(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def problem_body(reason: str, status: int) -> bytes:
    return json.dumps(
        {
            "type": f"urn:dragoman:problem:{reason}",
            "title": "The scoped token does not authorise this request.",
            "status": status,
            "code": reason,
        }
    ).encode()


def challenge(reason: str, status: int) -> str:
    """RFC 6750 §3 challenge; a 503 (keys unavailable) blames no token."""
    if status == 503:
        return "Bearer"
    error = "insufficient_scope" if status == 403 else "invalid_token"
    return f'Bearer error="{error}"'


# -- aiohttp -----------------------------------------------------------------------------------


_HTTP_ERRORS: dict[int, type[web.HTTPException]] = {
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    503: web.HTTPServiceUnavailable,
}


async def verify_aiohttp(
    verifier: TokenVerifier,
    request: web.Request,
    *,
    scope: str,
    customer: str | None,
    once: bool | None = None,
) -> VerifiedToken:
    """Verify the token of an aiohttp request; raise an HTTP error with a problem body."""
    try:
        return await verifier.verify(
            bearer_of(request.headers.get("Authorization")),
            method=request.method,
            path=request.rel_url.raw_path,
            scope=scope,
            customer=customer,
            once=once,
        )
    except TokenRejected as exc:
        # ``text=``, not ``body=``: aiohttp deprecates ``body`` on its HTTP exceptions.
        raise _HTTP_ERRORS[exc.status](
            text=problem_body(exc.reason, exc.status).decode(),
            content_type="application/problem+json",
            headers={"WWW-Authenticate": challenge(exc.reason, exc.status)},
        ) from None


# -- ASGI ----------------------------------------------------------------------------------------

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


@dataclass(frozen=True, slots=True)
class Requirement:
    """What an operation requires of its token (``once``: see :meth:`TokenVerifier.verify`)."""

    scope: str
    customer: str | None
    once: bool | None = None


class TokenMiddleware:
    """ASGI middleware: every HTTP request needs a dragoman token valid for it.

    Lifespan events pass through; WebSocket connections are refused (closed before accept,
    which the server answers with 403): dragoman forwards no WebSocket upgrades.

    ``resolve(method, path)`` names the scope and the customer the request needs (or None
    for a route the application does not serve: refused with 403). The verified token is put
    at ``scope["state"]["dragoman_token"]`` for the application.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        resolve: Callable[[str, str], Requirement | None],
    ) -> None:
        self._app = app
        self._verifier = verifier
        self._resolve = resolve

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, receive, send)
            return
        if scope["type"] != "http":
            # A WebSocket handshake (or any other kind of connection) is not an HTTP request
            # dragoman minted a token for: refuse it, never pass it to the app unchecked.
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})  # the server answers 403
                return
            raise RuntimeError(f"TokenMiddleware refuses ASGI scope type {scope['type']!r}")
        method: str = scope["method"]
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").split("?", 1)[0] if raw else scope["path"]
        authorization = None
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        need = self._resolve(method, path)
        try:
            if need is None:
                raise TokenRejected("scope_unknown", status=403)
            token = await self._verifier.verify(
                bearer_of(authorization),
                method=method,
                path=path,
                scope=need.scope,
                customer=need.customer,
                once=need.once,
            )
        except TokenRejected as exc:
            body = problem_body(exc.reason, exc.status)
            await send(
                {
                    "type": "http.response.start",
                    "status": exc.status,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", challenge(exc.reason, exc.status).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["dragoman_token"] = token
        await self._app(scope, receive, send)

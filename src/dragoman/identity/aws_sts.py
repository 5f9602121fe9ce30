"""The `aws-sts` authenticator: AWS IAM principals, by a presigned GetCallerIdentity.

The bearer value ``dragoman-aws-v1.<base64url(URL)>`` is this authenticator's; any other is
"not mine". The URL is checked without the network first (:mod:`.aws_presign`); then it is
replayed to STS with the binding header, and STS's answer names the caller. STS refusing
the signature is a 401; STS throttling or out of reach is a 503, never an allow. Answers are
reused for a short while (``cache_ttl``, never past the presigned request's expiry), keyed on
the whole bearer value, and concurrent requests with one value share one call to STS.

Anyone can make a value that passes the local checks and carries a made-up signature, so
STS's refusal is remembered too (``REFUSAL_TTL``, never past the expiry; a network error,
a timeout or throttling never is), and at most ``MAX_STS_CALLS`` calls to STS run at once:
past that a request is refused at once with 503 ``aws_sts_throttled`` instead of waiting
for a connection, so a flood of forged values holds neither the pool nor every caller.

The presigned URL is a credential until it expires: it is never logged, and STS's answer
body is not either.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from dragoman.cache import TtlCache
from dragoman.identity.aws_arn import canonical_principal
from dragoman.identity.aws_presign import (
    BINDING_HEADER,
    TOKEN_PREFIX,
    PresignedCallerIdentity,
    check_presigned,
    decode_token,
)
from dragoman.identity.base import NOT_MINE, NotMine, bearer_token
from dragoman.identity.principal import Principal
from dragoman.identity.role_table import RoleTable
from dragoman.pipeline.errors import IdentityUnavailable, Unauthenticated
from dragoman.settings import AwsStsSettings

log = logging.getLogger(__name__)

REMEMBERED = 10_000
"""How many STS answers are reused at most (each well under 1 KiB)."""
REFUSAL_TTL = 60.0
"""Seconds STS's refusal of one bearer value is remembered at most (never past its expiry)."""
REFUSALS_REMEMBERED = 10_000
"""How many refusals are remembered at most (each a 32-byte digest and a deadline)."""
POOL_SIZE = 32
"""Connections to STS kept at most."""
MAX_STS_CALLS = 24
"""Calls to STS under way at once at most; past it a request is refused at once (503
``aws_sts_throttled``). Below ``POOL_SIZE``: a flood never holds every connection."""
LIMIT_WARNING_INTERVAL = 60.0
"""Seconds between two warnings that ``MAX_STS_CALLS`` is reached."""
MAX_ANSWER_BYTES = 16_384
THROTTLING_CODES = frozenset(
    ("Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException")
)


class StsThrottled(IdentityUnavailable):
    def __init__(self, detail: str = "STS is throttling identity checks; retry shortly.") -> None:
        super().__init__("aws_sts_throttled", detail)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class StsRejected(Unauthenticated):
    """STS's definite refusal of the presigned request: the one answer remembered as such."""

    def __init__(self) -> None:
        super().__init__("aws_sts_rejected", "STS did not accept the presigned request.")


def _refusal_key(token: str) -> bytes:
    """A refusal is remembered by a digest of the bearer value: a forged value may be as long
    as ``max_token_bytes``, and it is still never kept itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _sts_unavailable() -> IdentityUnavailable:
    return IdentityUnavailable("aws_sts_unavailable", "STS could not confirm the AWS identity.")


def _error_code(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    error = answer.get("Error") if isinstance(answer, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _caller(body: bytes) -> tuple[str, str]:
    """(Arn, Account) of a GetCallerIdentity answer; a malformed answer is STS failing."""
    try:
        answer: Any = json.loads(body)
        result = answer["GetCallerIdentityResponse"]["GetCallerIdentityResult"]
        arn, account = result["Arn"], result["Account"]
    except (ValueError, KeyError, TypeError):
        raise _sts_unavailable() from None
    if not isinstance(arn, str) or not isinstance(account, str):
        raise _sts_unavailable()
    return arn, account


class AwsStsAuthenticator:
    """AWS principals presenting a presigned STS GetCallerIdentity request."""

    def __init__(
        self,
        settings: AwsStsSettings,
        *,
        max_token_bytes: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = settings.name
        self._settings = settings
        self._hosts = settings.allowed_hosts()
        self._accounts = frozenset(settings.accounts)
        self._roles = RoleTable(settings.roles)
        self._issuer = f"urn:dragoman:aws-sts:{settings.partition}"
        self._max_token_bytes = max_token_bytes
        self._clock = clock
        self._monotonic = monotonic
        self._remembered: TtlCache[str, Principal] = TtlCache(REMEMBERED, monotonic)
        self._refused: TtlCache[bytes, float] = TtlCache(REFUSALS_REMEMBERED, monotonic)
        """Digest of a bearer value STS refused -> until when (``clock``) that is believed."""
        self._in_flight: dict[str, asyncio.Future[Principal]] = {}
        """One entry per call to STS under way (a few callers may share it)."""
        self._next_limit_warning = float("-inf")
        self._session: aiohttp.ClientSession | None = None

    async def authenticate(self, request: web.Request) -> Principal | NotMine:
        token = bearer_token(request)
        if token is None or not token.startswith(TOKEN_PREFIX):
            return NOT_MINE
        if len(token) > self._max_token_bytes:
            raise Unauthenticated("token_too_large", "The bearer token is too large.")
        remembered = self._remembered.get(token)
        if remembered is not None and (remembered.credential_expires_at or 0) > self._clock():
            return remembered
        refused_until = self._refused.get(_refusal_key(token))
        if refused_until is not None and refused_until > self._clock():
            raise StsRejected()
        call = self._in_flight.get(token)
        if call is None:
            settings = self._settings
            presigned = check_presigned(
                decode_token(token),
                hosts=self._hosts,
                now=self._clock(),
                max_age=settings.max_age,
                leeway=settings.leeway,
            )
            if len(self._in_flight) >= MAX_STS_CALLS:
                raise self._limit_reached()
            # A task of its own: a caller that goes away does not cancel the answer others
            # with the same credential are waiting for.
            call = asyncio.ensure_future(self._confirm(token, presigned))
            self._in_flight[token] = call
            call.add_done_callback(lambda done: self._settled(token, done))
        return await asyncio.shield(call)

    def _limit_reached(self) -> StsThrottled:
        """Full: refused now, never queued (and never an allow); warned once a minute."""
        now = self._monotonic()
        if now >= self._next_limit_warning:
            self._next_limit_warning = now + LIMIT_WARNING_INTERVAL
            log.warning("%d calls to STS under way: refusing more for now", MAX_STS_CALLS)
        return StsThrottled("Too many identity checks are under way; retry shortly.")

    def _settled(self, token: str, call: asyncio.Future[Principal]) -> None:
        self._in_flight.pop(token, None)
        if not call.cancelled():
            call.exception()  # retrieved: every waiter may have gone away

    async def _confirm(self, token: str, presigned: PresignedCallerIdentity) -> Principal:
        try:
            principal = await self._principal(presigned)
        except StsRejected:
            # Only STS's own refusal: a network error, a timeout or throttling says nothing
            # about the credential and is asked again next time.
            self._remember_refusal(token, presigned)
            raise
        lifetime = min(self._settings.cache_ttl, presigned.expires_at - self._clock())
        if lifetime > 0:
            self._remembered.put(token, principal, self._monotonic() + lifetime)
        return principal

    def _remember_refusal(self, token: str, presigned: PresignedCallerIdentity) -> None:
        now = self._clock()
        lifetime = min(REFUSAL_TTL, presigned.expires_at - now)
        if lifetime > 0:
            self._refused.put(_refusal_key(token), now + lifetime, self._monotonic() + lifetime)

    async def _principal(self, presigned: PresignedCallerIdentity) -> Principal:
        arn, account = await self._ask_sts(presigned)
        caller = canonical_principal(arn)
        settings = self._settings
        if caller.account != account or caller.partition != settings.partition:
            raise _sts_unavailable()
        if self._accounts and account not in self._accounts:
            raise Unauthenticated(
                "aws_account_not_allowed", "Principals of this AWS account are not accepted."
            )
        return Principal(
            subject=settings.principal_prefix + caller.arn,
            cloud_account=settings.account_prefix + account,
            issuer=self._issuer,
            authenticator=self.name,
            roles=self._roles.roles_of(caller.arn),
            credential_expires_at=presigned.expires_at,
        )

    async def _ask_sts(self, presigned: PresignedCallerIdentity) -> tuple[str, str]:
        settings = self._settings
        headers = {BINDING_HEADER: settings.binding_id, "Accept": "application/json"}
        if settings.connect_to is None:
            target = presigned.url
        else:
            target = f"{settings.connect_to}/?{presigned.raw_query}"
            headers["Host"] = presigned.host
        try:
            async with self._client().get(
                # encoded=True: the query goes out byte for byte as it was signed.
                URL(target, encoded=True),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=settings.http_timeout),
            ) as answer:
                body = await answer.content.read(MAX_ANSWER_BYTES)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("STS in %s is out of reach: %s", presigned.region, type(exc).__name__)
            raise _sts_unavailable() from None
        if status == 200:
            return _caller(body)
        code = _error_code(body)
        if status == 429 or code in THROTTLING_CODES:
            log.warning("STS in %s is throttling (%s)", presigned.region, code or status)
            raise StsThrottled()
        if status >= 500 or status < 400:
            log.warning("STS in %s answered %d", presigned.region, status)
            raise _sts_unavailable()
        raise StsRejected()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_SIZE, ttl_dns_cache=60)
            )
        return self._session

    async def close(self) -> None:
        for call in list(self._in_flight.values()):
            call.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

"""CSRF double-submit, signed and session-bound (SEMANTICS §5).

A token names its session and is MAC'd with the server key::

    T = b64url(session id) "." b64url(randomness) "." b64url(HMAC-SHA256(key, id || randomness))

(id and randomness are 32 random bytes each, so their concatenation is unambiguous). The
handshake returns T in its JSON body and sets it in the cookie ``__Host-dragoman-csrf``
(HttpOnly, Secure, SameSite=Strict, Path=/, no Domain): script never reads the cookie, and
a page elsewhere cannot learn T. A request then holds when, in this order:

1. the cookie is present (else ``missing_cookie``) and the ``X-CSRF-Token`` header is
   present (else ``missing_header``);
2. both carry a MAC made with this server's key (else ``bad_mac``);
3. both name the same session (else ``mismatch``);
4. the session exists and has not expired (else ``unknown_session``);
5. the session is bound to the authenticated caller (else ``other_principal``);
6. header and cookie are live tokens of the session, compared in constant time. A token
   that passed 1-5 was issued for this session, so one that is not live any more was
   rotated past its grace: 403 ``csrf_token_rotated``.

Failures of 1 are 403 ``csrf_missing``, of 2-5 403 ``csrf_invalid``, with that reason. The
store being down is 503 ``session_unavailable``.

Which requests must pass (``browser.csrf``): in ``browser`` mode (the default), every API
request after the handshake, reads included (SEMANTICS §5: "every later API request"),
that carries a browser signal: the CSRF cookie, an ``Origin`` header or any ``Sec-Fetch-*``
header. Servers and CLIs send none of them and keep working with their bearer credential
alone; browsers always send one on the requests a page can make. A read needs the pair
too because the credential a browser attaches by itself (a client certificate, a cookie
of the host's identity system) would otherwise let a page on another site, which cannot
make the handshake, read a customer's data; and so a browser read depends on the session
store as a write does (refused while it is down, SEMANTICS §6). In
``required`` mode every request must pass; in ``off`` none. CORS preflights are answered
before this stage. Independently of the mode, a state-changing browser request whose body
is one of the types a page can send without a CORS preflight (``text/plain``, a form) is
refused with 415: the proxy's endpoints take JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from dragoman.browser.sessions import Session, SessionStore, SessionStoreUnavailable
from dragoman.identity.principal import Principal
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    CsrfInvalid,
    CsrfMissing,
    CsrfTokenRotated,
    SessionUnavailable,
    UnsupportedMediaType,
)
from dragoman.settings import BrowserSettings, CsrfMode

COOKIE_NAME = "__Host-dragoman-csrf"
HEADER_NAME = "X-CSRF-Token"
COOKIE_ATTRIBUTES = "HttpOnly; Secure; SameSite=Strict; Path=/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORGEABLE_MEDIA_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)
"""The body types a page may send cross-origin without a preflight (CORS-safelisted)."""

_PART = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of 32 bytes, unpadded
MAX_TOKEN_CHARS = 3 * 43 + 2


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=")


def random_id() -> str:
    """256 random bits, base64url: a session id or a token's randomness."""
    return _b64(secrets.token_bytes(32))


def session_reference(session_id: str) -> str:
    """What audit records name a session by: a hash of its id, which they must not hold (the
    id is half of every token of the session)."""
    digest = hashlib.sha256(session_id.encode("ascii")).hexdigest()
    return "sha256:" + digest[:32]


def load_csrf_key(settings: BrowserSettings) -> bytes:
    """The configured server key; without one (in-memory sessions only) a random key."""
    from dragoman.keys.sealing import decode_master_key

    if settings.csrf_key is not None:
        return decode_master_key(settings.csrf_key.get_secret_value())
    if settings.csrf_key_file is not None:
        return decode_master_key(settings.csrf_key_file.read_text("utf-8"))
    return secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class CsrfToken:
    """A token whose MAC held: it was issued by this server for ``session_id``."""

    session_id: str
    randomness: str


class CsrfTokens:
    """Makes and checks tokens with the server key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, session_id: str, randomness: str) -> bytes:
        message = _unb64(session_id) + _unb64(randomness)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def token(self, session_id: str, randomness: str) -> str:
        return f"{session_id}.{randomness}.{_b64(self._mac(session_id, randomness))}"

    def parse(self, value: str) -> CsrfToken | None:
        """The token's session and randomness, or None unless its MAC holds."""
        if len(value) > MAX_TOKEN_CHARS:
            return None
        parts = value.split(".")
        if len(parts) != 3 or not all(_PART.match(part) for part in parts):
            return None
        session_id, randomness, mac = parts
        try:
            given = _unb64(mac)
            canonical = all(_b64(_unb64(part)) == part for part in (session_id, randomness))
        except (binascii.Error, ValueError):
            return None
        if not canonical:
            return None
        if not hmac.compare_digest(given, self._mac(session_id, randomness)):
            return None
        return CsrfToken(session_id, randomness)


def session_cookie(token: str) -> str:
    """The Set-Cookie value carrying ``token`` (a session cookie: no Max-Age)."""
    return f"{COOKIE_NAME}={token}; {COOKIE_ATTRIBUTES}"


def expired_cookie() -> str:
    """The Set-Cookie value that removes the CSRF cookie."""
    return f"{COOKIE_NAME}=; {COOKIE_ATTRIBUTES}; Max-Age=0"


MAX_COOKIE_CANDIDATES = 4
"""Values of the CSRF cookie a request may carry that are looked at (a browser sends one;
a page on another port of the same host can plant more, cookies do not isolate ports)."""


def csrf_cookies(request: web.Request) -> list[str]:
    """Every value of the CSRF cookie in the request, read as browsers write the header
    (RFC 6265 §5.4: ``name=value`` pairs split on ``;``, values never quoted across one).
    aiohttp's cookie parser lets a quoted value run over ``;``: a sibling host's cookie
    ``a="`` then swallowed ``__Host-dragoman-csrf`` and every call was refused
    ``csrf_missing``."""
    values: list[str] = []
    for line in request.headers.getall("Cookie", ()):
        for pair in line.split(";"):
            name, equals, value = pair.partition("=")
            if equals and name.strip() == COOKIE_NAME:
                values.append(value.strip())
    return values


def is_browser_request(request: web.Request, cookies: list[str]) -> bool:
    """Whether the request carries a signal only browsers send (see the module doc);
    ``cookies`` are its :func:`csrf_cookies`, read once for this check and the pair's."""
    if "Origin" in request.headers or cookies:
        return True
    return any(name.lower().startswith("sec-fetch-") for name in request.headers)


def refuse_forgeable_body(request: web.Request) -> None:
    """415 for a body of a type a cross-origin page may send without a preflight."""
    if "Content-Type" in request.headers and request.content_type in FORGEABLE_MEDIA_TYPES:
        raise UnsupportedMediaType("content_type_not_json")


@dataclass(frozen=True, slots=True)
class Verified:
    session: Session
    header: CsrfToken


class CsrfVerifier:
    """Checks a request's CSRF pair against the session store (steps 1-6 above)."""

    def __init__(
        self,
        tokens: CsrfTokens,
        store: SessionStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self.store = store
        self._clock = clock

    async def verify(
        self, request: web.Request, principal: Principal | None, cookies: list[str]
    ) -> Verified:
        """Steps 1-6 for ``request``, whose :func:`csrf_cookies` are ``cookies``."""
        cookie_values = [value for value in cookies if value]
        header_value = request.headers.get(HEADER_NAME)
        if not cookie_values:
            raise CsrfMissing("missing_cookie")
        if not header_value:
            raise CsrfMissing("missing_header")
        parsed = self._parsed(cookie_values)
        header = self.tokens.parse(header_value)
        if not parsed or header is None:
            raise CsrfInvalid("bad_mac")
        # Of several cookies (one planted beside the browser's own), the one of the
        # header's session: a planted cookie can then refuse nothing the pair allows.
        cookie = next(
            (c for c in parsed if hmac.compare_digest(c.session_id, header.session_id)), None
        )
        if cookie is None:
            raise CsrfInvalid("mismatch")
        now = self._clock()
        try:
            session = await self.store.get(header.session_id, now)
        except SessionStoreUnavailable as exc:
            raise SessionUnavailable(str(exc)) from exc
        if session is None:
            raise CsrfInvalid("unknown_session")
        if principal is None or not session.owned_by(principal):
            raise CsrfInvalid("other_principal")
        header_live = session.is_live(header.randomness, now)
        cookie_live = session.is_live(cookie.randomness, now)
        if not (header_live and cookie_live):
            raise CsrfTokenRotated("token_rotated")
        return Verified(session, header)

    async def cookie_session(self, request: web.Request, principal: Principal) -> Session | None:
        """The live session this browser's cookie names, when it is the caller's and the
        cookie's token is live; None otherwise. The handshake joins it (a second tab, a page
        reloaded) instead of making a session whose cookie would replace the first's."""
        for cookie in self._parsed(csrf_cookies(request)):
            now = self._clock()
            session = await self.store.get(cookie.session_id, now)
            if (
                session is not None
                and session.owned_by(principal)
                and session.is_live(cookie.randomness, now)
            ):
                return session
        return None

    def _parsed(self, values: list[str]) -> list[CsrfToken]:
        """The tokens among the first :data:`MAX_COOKIE_CANDIDATES` values whose MAC holds."""
        parsed = (self.tokens.parse(value) for value in values[:MAX_COOKIE_CANDIDATES])
        return [token for token in parsed if token is not None]


class CsrfStage:
    """Step 2 (after the Origin checks): the CSRF pair of browser requests."""

    name = "csrf"

    def __init__(self, verifier: CsrfVerifier, mode: CsrfMode) -> None:
        self._verifier = verifier
        self._mode = mode

    async def __call__(self, ctx: RequestContext) -> None:
        request = ctx.request
        cookies = csrf_cookies(request)
        browser = is_browser_request(request, cookies)
        if browser and ctx.method not in SAFE_METHODS:
            refuse_forgeable_body(request)
        if self._mode == "required" or (self._mode == "browser" and browser):
            verified = await self._verifier.verify(request, ctx.principal, cookies)
            ctx.session = session_reference(verified.session.id)

"""``/_dragoman/session``: the browser session handshake, refresh and logout (SEMANTICS §5).
The proxy answers them itself; nothing is forwarded.

::

    POST   /_dragoman/session          201 {"csrf_token": T, "expires_at": ...} + cookie
                                       (200 when it joins this browser's live session)
    POST   /_dragoman/session/refresh  200 {"csrf_token": T(n+1), "expires_at": ...} + cookie
    DELETE /_dragoman/session          204, the cookie expired

Every one authenticates the caller with its bearer credential (step 1) and passes the
Origin / Sec-Fetch-Site checks (step 2) like any state-changing request; a body, if any,
must not be text/plain or a form (415). The handshake makes a session bound to the caller;
a handshake whose cookie names a live session of the same caller, with a live token, joins
it and answers its current token (a second tab or a reloaded page shares the cookie, so a
new session would break the first tab's pair). Refresh and logout need the session's valid
CSRF pair (:mod:`dragoman.browser.csrf`),
whatever ``browser.csrf`` says: they act on the session the pair names. A refresh presenting
T(n) rotates to T(n+1); presenting T(n-1) within its grace it answers T(n+1) unchanged.

Answers carry ``Cache-Control: no-store``, the security headers, CORS headers for allowed
origins and ``X-Request-Id``. Each request writes one audit record (``event: "session"``)
with its decision and code, naming the session by a hash of its id; never a token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from dragoman.audit.record import iso_time, request_record
from dragoman.browser.cors import CorsPolicy
from dragoman.browser.csrf import (
    CsrfVerifier,
    csrf_cookies,
    expired_cookie,
    random_id,
    refuse_forgeable_body,
    session_cookie,
    session_reference,
)
from dragoman.browser.headers import answer_headers
from dragoman.browser.sessions import Session, SessionStoreUnavailable
from dragoman.mapping.http import AuditWriter
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    AuditUnavailable,
    CsrfTokenRotated,
    SessionUnavailable,
)
from dragoman.pipeline.expect import check_expectation, close_if_waiting
from dragoman.pipeline.recorded import recorded_answer
from dragoman.pipeline.stage import Stage, guard_stages

SESSION_PATH = "/_dragoman/session"
REFRESH_PATH = "/_dragoman/session/refresh"
EVENT = "session"
GUARDS = ("authenticate", "browser_checks")
"""The pipeline stages every session request passes first, in this order (the CSRF stage is
not one: the handshake has no pair yet, and refresh and logout check theirs themselves)."""


@dataclass(slots=True)
class _Answer:
    status: int
    body: dict[str, str] | None
    cookie: str


class SessionEndpoint:
    def __init__(
        self,
        verifier: CsrfVerifier,
        *,
        lifetime: float,
        grace: float,
        guards: Sequence[Stage],
        cors: CorsPolicy,
        headers: Mapping[str, str],
        audit: AuditWriter,
        context: Callable[[web.Request], RequestContext],
        limit: Callable[[RequestContext], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``limit`` counts a handshake, a refresh and a logout against the caller's
        per-account rate limits (one account must not fill or churn the session store)."""
        self._limit = limit
        self._verifier = verifier
        self._store = verifier.store
        self._tokens = verifier.tokens
        self._lifetime = lifetime
        self._grace = grace
        self._guards = guard_stages(guards, GUARDS, "the session endpoint")
        self._cors = cors
        self._headers = headers
        self._audit = audit
        self._context = context
        self._clock = clock

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        """POST: a new session bound to the caller, and its first token."""
        return await self._serve(request, "create", self._handshake)

    async def refresh(self, request: web.Request) -> web.StreamResponse:
        """POST .../refresh: rotate the session's token."""
        return await self._serve(request, "refresh", self._refresh)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """DELETE: end the session and expire the cookie."""
        return await self._serve(request, "logout", self._logout)

    def _issued(self, session: Session, status: int) -> _Answer:
        token = self._tokens.token(session.id, session.current)
        body = {"csrf_token": token, "expires_at": iso_time(session.expires_at)}
        return _Answer(status, body, session_cookie(token))

    async def _handshake(self, ctx: RequestContext) -> _Answer:
        principal = ctx.principal
        assert principal is not None  # set by the authentication stage
        await self._count(ctx)
        joined = await self._verifier.cookie_session(ctx.request, principal)
        if joined is not None:
            ctx.session = session_reference(joined.id)
            return self._issued(joined, 200)
        now = self._clock()
        session = Session(
            id=random_id(),
            subject=principal.subject,
            issuer=principal.issuer,
            cloud_account=principal.cloud_account,
            created_at=now,
            expires_at=now + self._lifetime,
            current=random_id(),
        )
        await self._store.create(session, now)
        ctx.session = session_reference(session.id)
        return self._issued(session, 201)

    async def _count(self, ctx: RequestContext) -> None:
        if self._limit is not None:
            await self._limit(ctx)

    async def _refresh(self, ctx: RequestContext) -> _Answer:
        await self._count(ctx)
        verified = await self._verifier.verify(
            ctx.request, ctx.principal, csrf_cookies(ctx.request)
        )
        ctx.session = session_reference(verified.session.id)
        now = self._clock()
        presented = verified.header.randomness
        after = await self._store.rotate(
            verified.session.id, presented, random_id(), now, self._grace
        )
        if after is None or not after.is_live(presented, now):
            raise CsrfTokenRotated("token_rotated")  # a concurrent refresh got there first
        return self._issued(after, 200)

    async def _logout(self, ctx: RequestContext) -> _Answer:
        await self._count(ctx)
        verified = await self._verifier.verify(
            ctx.request, ctx.principal, csrf_cookies(ctx.request)
        )
        ctx.session = session_reference(verified.session.id)
        await self._store.delete(verified.session.id)
        return _Answer(204, None, expired_cookie())

    async def _serve(
        self,
        request: web.Request,
        action: str,
        run: Callable[[RequestContext], Awaitable[_Answer]],
    ) -> web.StreamResponse:
        response = await self._recorded(request, action, run)
        close_if_waiting(request, response)
        return response

    async def _recorded(
        self,
        request: web.Request,
        action: str,
        run: Callable[[RequestContext], Awaitable[_Answer]],
    ) -> web.StreamResponse:
        """``run``'s answer, or its refusal, with the request's record written first."""
        ctx = self._context(request)
        status: int | None = None

        async def answer() -> web.StreamResponse:
            nonlocal status
            if self._audit.broken:
                raise AuditUnavailable()
            check_expectation(request)
            for guard in self._guards:
                await guard(ctx)
            refuse_forgeable_body(request)
            try:
                done = await run(ctx)
            except SessionStoreUnavailable as exc:
                raise SessionUnavailable(str(exc)) from exc
            status = done.status
            if done.body is None:
                response = web.Response(status=done.status)
            else:
                response = web.Response(
                    status=done.status,
                    body=json.dumps(done.body).encode(),
                    content_type="application/json",
                )
            response.headers.update(self._response_headers(request, ctx))
            response.headers["Cache-Control"] = "no-store"
            response.headers["Set-Cookie"] = done.cookie
            return response

        # The answer carries a session's token or its end: none leaves unrecorded.
        return await recorded_answer(
            ctx,
            answer,
            record=lambda: self._record(ctx, action, status),
            headers=lambda: self._response_headers(request, ctx),
            where="the session endpoint",
        )

    def _record(self, ctx: RequestContext, action: str, status: int | None) -> bool:
        """Write the request's record; False if it could not be written."""
        record = request_record(ctx, event=EVENT)
        record["action"] = action
        if ctx.denial is None:
            record["status"] = status
        return self._audit.write(record)

    def _response_headers(self, request: web.Request, ctx: RequestContext) -> dict[str, str]:
        return answer_headers(self._headers, self._cors, request, ctx.request_id)

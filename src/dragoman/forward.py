"""Step 7: forward the request upstream with the scoped token, and stream the answer back.

Header hygiene, both ways:
- to the upstream: the caller's ``Authorization``, ``Cookie``, CSRF header, hop-by-hop
  headers (and any header ``Connection`` names), ``Host``, ``Expect``, client-sent
  ``Forwarded``/``X-Forwarded-*`` and client-address headers (``X-Real-IP``,
  ``True-Client-IP``...) are dropped; ``Authorization: Bearer <scoped token>``,
  ``X-Request-Id`` and our own ``X-Forwarded-For``/``-Proto`` are set.
- to the caller: hop-by-hop headers, (by default) ``Set-Cookie`` and the CDN-targeted
  cache headers are dropped; ``Cache-Control`` is made private (:func:`private_cache_control`)
  or set to ``no-store``; the security headers are set. An upstream ``101`` is refused 502.

Bodies stream both ways in chunks (no unbounded buffering); a request body that came whole
with its head goes upstream in one write with it. A request body over the limit stops the
request (413). What a customer binding checked or wrote is forwarded instead of the
caller's: ``ctx.forward_query``, ``ctx.forward_headers`` and ``ctx.forward_body`` (a body
the binding stage buffered, within the same limit). The upstream connections
(:mod:`dragoman.upstream_client`) never decompress, keep no cookies and add no headers of
their own but ``Host`` and the body's framing. Connect failures become 502, timeouts
504, both problem+json, as long as nothing has been sent to the caller yet. Each write to the
caller (the answer's head, each chunk, its end) waits at most ``write_timeout`` for the caller
to take it; past it the caller's connection is aborted and the request recorded
``client_stalled`` (:meth:`Forwarder._send`). Writes are never
resent, not even over a dropped kept-alive connection (:class:`UpstreamPool`);
a read may be, once, when its pooled connection turns out stale.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from dragoman.catalog.overrides import OVERRIDE_HEADERS
from dragoman.pipeline.body import next_chunk
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    AuditUnavailable,
    BadRequest,
    Denial,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from dragoman.pipeline.expect import send_continue, waiting_for_continue
from dragoman.settings import UpstreamSettings
from dragoman.settings.server import DEFAULT_BODY_TIMEOUT, DEFAULT_WRITE_TIMEOUT
from dragoman.upstream_client import UpstreamAnswer, UpstreamPool

_NO_BODY_METHODS = frozenset({"GET", "HEAD"})


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_REQUEST = (
    HOP_BY_HOP
    | {
        "host",
        "authorization",
        "cookie",
        "x-csrf-token",
        "expect",
        "cookie2",
        "forwarded",
        # Client addresses as proxies and CDNs pass them on: a caller sending its own would
        # have the upstream log, limit or trust an address of its choosing. (X-Forwarded-*,
        # all of them, go too: _forwarded_by_caller.)
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-request-id",
    }
    | OVERRIDE_HEADERS
)
# Set-Cookie2 is obsolete; the other two tell a CDN in front of dragoman how long to keep
# an answer for everyone (RFC 9213), and no answer here is for everyone.
_DROP_RESPONSE = HOP_BY_HOP | {"set-cookie2", "cdn-cache-control", "surrogate-control"}
_SHARED_CACHE_DIRECTIVES = frozenset({"public", "s-maxage"})
_CHUNK = 64 * 1024


def _upstream_spelling(name: str) -> str:
    """A header name as a CGI/WSGI upstream reads it (``X_Request_Id`` is
    ``X-Request-Id`` there, merged with it)."""
    return name.lower().replace("_", "-")


def _forwarded_by_caller(name: str) -> bool:
    """``X-Forwarded-For``, ``-Host``, ``-Proto``, ``-Prefix``, ``-Uri``... a caller's own:
    each tells an upstream where the request came from or which URL, scheme or prefix it
    was for, and dragoman sets the two it vouches for itself."""
    return name.startswith("x-forwarded-")


def _not_ours(name: str) -> bool:
    """Access-Control-* headers are dragoman's to send (its CORS policy), never the
    upstream's: an upstream that allowed any origin would open the API to it."""
    return not name.lower().startswith("access-control-")


_DIRECTIVE = re.compile(r'(?:[^,"]|"[^"]*(?:"|$))+')
"""One Cache-Control directive: up to a comma outside a quoted string."""


def private_cache_control(values: list[str]) -> str:
    """The upstream's ``Cache-Control`` made private to the caller: ``public`` and
    ``s-maxage`` are dropped and ``private`` is added, so no shared cache (a CDN, a
    corporate proxy) keeps one customer's answer for the next caller. The answer may
    carry an upstream's ``public`` by mistake, and RFC 9111 §3.5 lets a shared cache store
    an answer to an authenticated request when it says so. What only the caller's own
    cache reads (``max-age``, ``no-cache``...) is kept as sent. A qualified
    ``private="field"`` goes too: it lets a shared cache store the rest of the answer.
    With ``no-store`` nothing is stored anywhere, and ``private`` is not added."""
    directives = []
    names = set()
    for value in values:
        # Commas inside a quoted argument (no-cache="A,no-store,B") separate nothing.
        for piece in _DIRECTIVE.findall(value):
            directive = piece.strip()
            name, qualified, _ = directive.partition("=")
            name = name.strip().lower()
            if not directive or name in _SHARED_CACHE_DIRECTIVES:
                continue
            if name == "private" and qualified:
                continue
            directives.append(directive)
            names.add(name)
    if not names & {"private", "no-store"}:
        directives.insert(0, "private")
    return ", ".join(directives)


def _body_refusal(exc: BaseException) -> Denial | None:
    """The refusal the caller's body met as the exchange read it (too large, or it stopped
    arriving): it comes back as the cause of the exchange's own error."""
    for underlying in (exc.__cause__, exc.__context__):
        if isinstance(underlying, Denial):
            return underlying
    return None


def _dropped(always: frozenset[str], headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """``always`` and the headers ``headers`` name in ``Connection`` (hop-by-hop too)."""
    named = headers.getall("Connection", ())
    if not named:
        return always  # nearly every message: no set built
    return always.union(token.strip().lower() for value in named for token in value.split(","))


def _caller_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> None:
    # Closing without a terminating chunk (or short of Content-Length) is the only way to
    # tell the caller that the body it got is incomplete.
    if request.transport is not None:
        request.transport.abort()


def _small_and_whole(method: str, upstream: UpstreamAnswer) -> bool:
    """An answer worth reading whole: a body of at most one chunk whose length the
    upstream declared. Not an answer without a body (HEAD, 204, 304: their Content-Length
    names a body that is not sent) nor one of unknown length (streamed as it comes)."""
    length = upstream.content_length
    return (
        length is not None
        and 0 < length <= _CHUNK
        and method != "HEAD"
        and upstream.status >= 200
        and upstream.status not in (204, 304)
    )


class Forwarder:
    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        max_body_bytes: int,
        security_headers: Mapping[str, str],
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        """``body_timeout``: the longest wait for the next bytes of a caller's body;
        ``write_timeout``: for a caller to take the next part of an answer."""
        self._settings = settings
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout
        self._write_timeout = write_timeout
        self._response_drop = (
            _DROP_RESPONSE | {"set-cookie"} if settings.strip_set_cookie else _DROP_RESPONSE
        )
        self._security_headers = dict(security_headers)
        # Requests past pool_size wait here, in order, for a connection: aiohttp's own pool
        # does not serve its waiters in order (a request arriving as a connection is
        # released takes it, and the waiter it woke queues again at the back), so under a
        # burst a few waited for seconds, and past connect_timeout got 504 while the
        # upstream was fine. The wait is bounded like a slow answer (read_timeout): it is
        # the upstream holding its connections.
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._slot_wait = settings.read_timeout
        self._pool: UpstreamPool | None = None

    async def start(self) -> None:
        settings = self._settings
        self._pool = UpstreamPool(
            settings.url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            keepalive=30,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _request_headers(self, ctx: RequestContext) -> CIMultiDict[str]:
        incoming = ctx.request.headers
        drop = _dropped(_DROP_REQUEST, incoming)
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value)
            for name, value in incoming.items()
            if (spelled := _upstream_spelling(name)) not in drop
            and name.lower() not in drop
            and not _forwarded_by_caller(spelled)
        )
        if ctx.forward_body is not None:
            # A buffered (checked, perhaps rewritten) body: the client sets its length.
            headers.popall("Content-Length", None)
        elif "Content-Length" in headers:
            # As the parser read it: "0003" or "+3" would be read otherwise by some upstream.
            headers["Content-Length"] = str(ctx.request.content_length)
        for name, value in ctx.forward_headers.items():
            headers[name] = value
        assert ctx.minted is not None  # the mint stage ran
        headers["Authorization"] = f"Bearer {ctx.minted.value}"
        headers["X-Request-Id"] = ctx.request_id
        if ctx.request.remote:
            headers["X-Forwarded-For"] = ctx.request.remote
        headers["X-Forwarded-Proto"] = ctx.request.scheme
        return headers

    def _arrived(self, request: web.Request) -> bytes | None:
        """The caller's whole body when all of it came with the head (a small write's
        does), to go upstream in one write with the request's head rather than streamed
        by a task of its own; None while more is to come (or the caller waits for 100
        Continue before sending it)."""
        content = request.content
        if not content.is_eof() or content.exception() is not None:
            return None
        if waiting_for_continue(request):
            return None  # it gets its 100 as the body is read, and keeps its connection
        whole = content.read_nowait()
        if len(whole) > self._max_body:
            raise PayloadTooLarge("body_too_large")
        return whole

    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        # Pulled once the upstream connection is open and the head is sent: a caller
        # waiting for 100 (Continue) is invited now, and only now.
        await send_continue(request)
        sent = 0
        while chunk := await next_chunk(request, self._body_timeout):
            sent += len(chunk)
            if sent > self._max_body:
                raise PayloadTooLarge("body_too_large")
            yield chunk

    def check_body(self, request: web.Request) -> None:
        """Refuse a body declared over the limit (413), and any body on a GET or HEAD
        (400 ``body_not_allowed``). Such a body means nothing (RFC 9110 §9.3.1), and
        upstreams disagree on whether to read it. One that does not read it takes the
        body for the next request on its connection, and that request could be another
        caller's."""
        length = request.content_length
        if length is not None and length > self._max_body:
            raise PayloadTooLarge("body_too_large")
        if request.method in _NO_BODY_METHODS and request.body_exists:
            raise BadRequest("body_not_allowed", "A GET or HEAD request carries no body.")

    async def forward(
        self,
        ctx: RequestContext,
        response_headers: Mapping[str, str],
        before_complete: Callable[[], Awaitable[bool]] | None = None,
    ) -> web.StreamResponse:
        """Forward and stream the answer back. ``before_complete`` runs once the upstream's
        answer has been read to its end and before its last bytes go to the caller, and
        says whether the request's audit record was written: a caller never holds a
        complete answer whose record is not written. When it was not, an answer without a
        body becomes 503 ``audit_unavailable``, and one whose status line is already out is
        cut short (the caller sees an incomplete answer)."""
        slots = self._slots
        if slots.locked():  # the pool is busy: wait in line, for at most read_timeout
            try:
                async with asyncio.timeout(self._slot_wait):
                    await slots.acquire()
            except TimeoutError:
                raise UpstreamTimeout("upstream_pool_exhausted") from None
        else:
            await slots.acquire()  # a free connection and nobody waiting: no suspension
        try:
            return await self._exchange(ctx, response_headers, before_complete)
        finally:
            slots.release()

    def _copy_headers(
        self,
        ctx: RequestContext,
        upstream: UpstreamAnswer,
        response: web.StreamResponse,
        response_headers: Mapping[str, str],
    ) -> None:
        drop = _dropped(self._response_drop, upstream.headers)
        for name, value in upstream.headers.items():
            if name.lower() not in drop and _not_ours(name):
                response.headers.add(name, value)
        cache_control = upstream.headers.getall("Cache-Control", ())
        if cache_control:
            response.headers["Cache-Control"] = private_cache_control(cache_control)
        else:
            response.headers["Cache-Control"] = "no-store"
        response.headers.update(self._security_headers)
        response.headers.update(response_headers)
        response.headers["X-Request-Id"] = ctx.request_id

    async def _whole(
        self,
        ctx: RequestContext,
        upstream: UpstreamAnswer,
        response_headers: Mapping[str, str],
        before_complete: Callable[[], Awaitable[bool]] | None,
    ) -> web.StreamResponse:
        """A small answer of known length (:func:`_small_and_whole`), read whole before any
        of it goes out: its record is written before the caller can have any of it (not
        only its last bytes), an upstream that stops short is a clean 502, and aiohttp
        sends the head and the body in one write instead of streaming them."""
        try:
            body = await upstream.read()
        except TimeoutError:
            raise UpstreamTimeout("upstream_timeout") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(type(exc).__name__) from None
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body)
        self._copy_headers(ctx, upstream, response, response_headers)
        if _caller_gone(ctx.request):
            # Nobody to answer: recorded as such by the pipeline, like a streamed answer
            # whose caller left before its status line.
            ctx.stream_error = "client_disconnected"
            return response
        if before_complete is not None and not await before_complete():
            raise AuditUnavailable("audit_write_failed")
        return response

    async def _send(self, ctx: RequestContext, write: Awaitable[object]) -> bool:
        """Await ``write`` (the answer's head, a chunk, its end) for at most
        ``write_timeout``; False when the caller did not take it: it left
        (``client_disconnected``), or took nothing for that long (``client_stalled``, its
        connection aborted). A caller that never reads would otherwise hold the upstream
        connection and its place in max_in_flight for good: with the caller's socket full,
        the write waits, and the upstream's read_timeout does not run while its reads are
        paused for it."""
        try:
            async with asyncio.timeout(self._write_timeout):
                await write
        except ConnectionError:  # a reset, or "Connection lost" while draining
            ctx.stream_error = "client_disconnected"
            return False
        except TimeoutError:
            ctx.stream_error = "client_stalled"
            _abort(ctx.request)
            return False
        return True

    async def _exchange(
        self,
        ctx: RequestContext,
        response_headers: Mapping[str, str],
        before_complete: Callable[[], Awaitable[bool]] | None,
    ) -> web.StreamResponse:
        assert self._pool is not None, "Forwarder.start() was not awaited"
        request = ctx.request
        query = ctx.query
        target = ctx.raw_path + ("?" + query if query else "")
        body: AsyncIterator[bytes] | bytes | None = ctx.forward_body
        if body is None and request.body_exists:
            body = self._arrived(request) or self._body(request)
        try:
            upstream = await self._pool.exchange(
                ctx.method, target, self._request_headers(ctx), body
            )
        except Denial:
            raise  # the caller's body, refused as the client read it
        except TimeoutError:
            raise UpstreamTimeout("upstream_timeout") from None
        except aiohttp.ClientError as exc:
            if (refused := _body_refusal(exc)) is not None:
                raise refused from None
            if _caller_gone(request):
                # Reading the caller's body failed because the caller left: not the
                # upstream's fault, and nobody is waiting for an answer.
                ctx.stream_error = "client_disconnected"
                return web.Response(status=499)
            raise UpstreamUnavailable(type(exc).__name__) from None
        try:
            ctx.upstream_status = upstream.status
            if upstream.status == 101:
                # Nothing asked to switch protocols (Upgrade is never forwarded). A 101
                # relayed to a front proxy makes it pass raw bytes both ways from then on,
                # past whatever it checks.
                upstream.close()
                raise UpstreamUnavailable("upstream_switched_protocols")
            if _small_and_whole(ctx.method, upstream):
                return await self._whole(ctx, upstream, response_headers, before_complete)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            self._copy_headers(ctx, upstream, response, response_headers)
            try:
                first = await upstream.content.readany()
            except TimeoutError:
                raise UpstreamTimeout("upstream_timeout") from None
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable(type(exc).__name__) from None
            if not first and upstream.cut_short:
                raise UpstreamUnavailable("upstream_aborted")
            # An empty body: the status line is the whole answer, and not sent yet.
            if not first and before_complete is not None and not await before_complete():
                raise AuditUnavailable("audit_write_failed")
            if not await self._send(ctx, response.prepare(request)):
                return response
            # From here the caller has our status line: an upstream failure can only cut
            # the response short, which the caller sees as a truncated body. One chunk is
            # held back until the next is read, so ``before_complete`` runs before the
            # caller can have the whole answer.
            chunk = first
            while chunk:
                try:
                    following = await upstream.content.readany()
                except (aiohttp.ClientError, TimeoutError):
                    ctx.stream_error = "upstream_aborted"
                    _abort(request)
                    return response
                if not following and upstream.cut_short:
                    # Read until the connection closed, and it closed in a reset: the
                    # caller must not take what came for the whole answer.
                    ctx.stream_error = "upstream_aborted"
                    _abort(request)
                    return response
                if not following and before_complete is not None and not await before_complete():
                    ctx.stream_error = "audit_write_failed"
                    _abort(request)  # its record is not written: the caller gets no whole answer
                    return response
                if not await self._send(ctx, response.write(chunk)):
                    return response
                chunk = following
            await self._send(ctx, response.write_eof())
            return response
        finally:
            upstream.release()

"""The upstream's connections: kept-alive HTTP/1.1 connections to the one upstream, and one
exchange (a request and its answer) on them.

Built from aiohttp's own client parts: its protocol (:class:`ResponseHandler`: the C parser,
flow control, the read timeout), its request writer (:class:`StreamWriter`: header
serialisation that refuses control characters, chunked framing, a declared length) and its
exceptions. What it leaves out is ``ClientSession``'s request and response layers (URL
joining, cookie jar, automatic headers, traces, timers, middlewares, redirects), which a
proxy with one upstream and fixed settings never uses and which cost each request as much
CPU as the rest of a plain pass-through proxy (docs/performance.md, 2026-12-03 evening).

What it keeps of aiohttp's behaviour, and what it does otherwise:

- A connection is reused only when its answer was read to the end, its body (if any) was
  written whole, the answer to a request with a body was no error (the upstream may have
  refused before reading the body, which would then be read as the next request), and
  nothing else arrived on it: an idle connection that bytes nobody asked for arrived on is
  closed when next taken, so no caller reads another's answer (aio-libs/aiohttp#13656;
  ``tests/test_http_desync.py``). A connection closed with request bytes unsent is
  aborted, not left to send them.
- An answer read until the connection closed (no length, not chunked) is whole only when
  the close was clean: one that ended in a reset is ``cut_short``.
- A read (``GET``, ``HEAD``, ``OPTIONS``) that a pooled connection fails before any of its
  answer arrived (the upstream closed the idle connection as it was taken) is sent once
  more on a new connection; a write never is (SEMANTICS §6): it fails 502.
- ``1xx`` interim answers are skipped, ``101`` is handed to the caller (the forwarder
  refuses it). Nothing is decompressed, no cookie kept, no header added but ``Host`` and
  the body's framing (``Content-Length``, or ``Transfer-Encoding: chunked`` for a streamed
  body of unknown length).
- A request waits at most the read timeout for the upstream to take more of it whenever
  the upstream stops taking it (nginx's ``proxy_send_timeout``); ``ClientSession`` waited
  for good on an upstream that neither read a streamed body nor answered.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
from aiohttp.client_exceptions import ClientConnectorDNSError, ConnectionTimeoutError
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
"""Methods sent without ``Content-Length: 0`` when they have no body (as aiohttp sends
them); every other method declares its empty body."""

Body = bytes | AsyncIterator[bytes] | None


class WriteConnectionLost(aiohttp.ClientConnectionError):
    """The upstream connection dropped during a write (a 502, never resent)."""


class _UpstreamProtocol(ResponseHandler):
    """aiohttp's client protocol, remembering whether the connection ended in an error (a
    reset) rather than a clean close: an answer read until the connection closed is only
    whole when the close was clean."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send_timeout: float) -> None:
        super().__init__(loop)
        self.reset = False
        self._send_timeout = send_timeout
        self._stall: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        # The transport holds more of the request than the upstream takes: from here the
        # upstream has send_timeout to take some (the read timeout only starts once the
        # whole request is out, so an upstream that neither read nor answered held the
        # exchange for good). A timer while paused, not one per write: nothing on the
        # path of a request whose bytes go straight out.
        super().pause_writing()
        self._stall = self._loop.call_later(self._send_timeout, self._not_taken)

    def resume_writing(self) -> None:
        self._stop_stall_timer()
        super().resume_writing()

    def _stop_stall_timer(self) -> None:
        stall, self._stall = self._stall, None
        if stall is not None:
            stall.cancel()

    def _not_taken(self) -> None:
        if self._reading_paused:
            # dragoman holds the upstream's answer back itself (its caller reads slowly):
            # an upstream that reads and answers together may be waiting on us.
            self._stall = self._loop.call_later(self._send_timeout, self._not_taken)
            return
        self._stall = None
        exc = aiohttp.ServerTimeoutError("Timeout on writing the request")
        self.set_exception(exc)
        if self._payload is not None:
            # An answer being read fails too: the abort below would end one read until
            # close as if whole (our own abort is a clean close to the parser).
            set_exception(self._payload, exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_stall_timer()
        self.reset = exc is not None
        super().connection_lost(exc)

    def eof_received(self) -> None:
        super().eof_received()
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            # The upstream is done while part of the request is still to go: none of it
            # will be read, and a graceful close would wait for it to be sent, holding
            # the end of an answer read until close (the read timeout is off by now).
            transport.abort()


class UpstreamAnswer:
    """The upstream's answer: its status line and headers, and its body to read
    (``content``, or :meth:`read` whole). :meth:`release` hands the connection back
    when it can serve another request, and closes it otherwise."""

    __slots__ = (
        "_pool",
        "_protocol",
        "_reusable",
        "_until_close",
        "_writing",
        "content",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: StreamReader,
        pool: UpstreamPool,
        protocol: _UpstreamProtocol,
        writing: asyncio.Task[None] | None,
        *,
        until_close: bool,
        reusable: bool,
    ) -> None:
        """``until_close``: the parser reads the body until the connection closes (no
        length, not chunked, a body expected); ``reusable``: the connection may serve
        another request once this answer is read."""
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        self._pool = pool
        self._protocol: _UpstreamProtocol | None = protocol
        self._writing = writing
        self._until_close = until_close
        self._reusable = reusable

    @property
    def content_length(self) -> int | None:
        declared = self.headers.get("Content-Length")
        return int(declared) if declared is not None else None

    @property
    def cut_short(self) -> bool:
        """An answer of neither a declared length nor chunks (read until the connection
        closed) whose connection ended in a reset: what arrived may be only part of it,
        and nothing in the message says so. Meaningful once its body was read to the end."""
        protocol = self._protocol
        return self._until_close and protocol is not None and protocol.reset

    async def read(self) -> bytes:
        """The whole body (the protocol's read timeout bounds each wait for bytes); an
        answer :attr:`cut_short` fails as a payload error."""
        body = await self.content.read()
        if self.cut_short:
            raise aiohttp.ClientPayloadError("the upstream's answer ended in a reset")
        return body

    def release(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        writing = self._writing
        if writing is not None and not writing.done():
            # The upstream answered before taking the whole body: the connection is
            # mid-message, and can serve nobody else.
            writing.cancel()
            _close(protocol)
            return
        transport = protocol.transport
        if (
            self._reusable
            and self.content.is_eof()
            and not protocol.should_close
            and transport is not None
            and not transport.get_write_buffer_size()
        ):
            self._pool.put(protocol)
        else:
            _close(protocol)

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if self._writing is not None and not self._writing.done():
            self._writing.cancel()
        if protocol is not None:
            _close(protocol)


class UpstreamPool:
    """Kept-alive connections to ``url``'s origin, each closed once idle ``keepalive``
    seconds. How many are open at once is bounded by the caller (the forwarder's pool
    slots)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._tls = parsed.scheme == "https"
        self._host = parsed.raw_host or ""
        self._port = parsed.port or (443 if self._tls else 80)
        # As aiohttp writes it: the port only when it is not the scheme's default.
        self._host_header = parsed.host_port_subcomponent or self._host
        # Every target is sent below the URL's own path (an upstream mounted at /api).
        self._path_prefix = parsed.raw_path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if self._tls:
            self._ssl = ssl_context or _client_context()
        self._key = ConnectionKey(
            self._host, self._port, self._tls, self._ssl or True, None, None, None
        )
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive
        self._idle: deque[tuple[_UpstreamProtocol, float]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # -- the pool ---------------------------------------------------------------------------

    def put(self, protocol: _UpstreamProtocol) -> None:
        if self._closed:
            protocol.close()
            return
        self._idle.append((protocol, time.monotonic()))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle past ``keepalive`` while nothing takes one (a taken
        connection's turn closes them too); again while any is idle."""
        self._sweeper = None
        idle = self._idle
        expired = time.monotonic() - self._keepalive
        while idle and idle[0][1] <= expired:
            idle.popleft()[0].close()
        if idle and not self._closed:
            wait = idle[0][1] + self._keepalive - time.monotonic()
            self._sweeper = asyncio.get_running_loop().call_later(max(wait, 0.01), self._sweep)

    def _take(self) -> _UpstreamProtocol | None:
        """The most recently used idle connection still fit to serve, if any. The oldest
        (at the left) are closed while they are past ``keepalive`` or unfit; one unfit in
        the middle is closed when it reaches either end, never handed out."""
        idle = self._idle
        if not idle:
            return None
        expired = time.monotonic() - self._keepalive
        while idle and (idle[0][1] < expired or not _fit(idle[0][0])):
            idle.popleft()[0].close()
        while idle:
            protocol = idle.pop()[0]
            if _fit(protocol):
                return protocol
            protocol.close()
        return None

    async def _connect(self) -> _UpstreamProtocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _UpstreamProtocol(loop, self._read_timeout),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise ConnectionTimeoutError(
                f"Connection timeout to host {self._host}:{self._port}"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise aiohttp.ClientConnectorCertificateError(self._key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(self._key, exc) from exc
        except socket.gaierror as exc:
            raise ClientConnectorDNSError(self._key, exc) from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(self._key, exc) from exc
        return protocol

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop()[0].close()

    # -- one exchange -----------------------------------------------------------------------

    def _request_info(self, method: str, target: str) -> aiohttp.RequestInfo:
        url = URL.build(
            scheme="https" if self._tls else "http", authority=self._host_header, encoded=True
        )
        return aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()), url)

    async def exchange(
        self, method: str, target: str, headers: CIMultiDict[str], body: Body
    ) -> UpstreamAnswer:
        """Send ``method target`` (a path and query, below the URL's own path) with
        ``headers`` (``Host`` and the framing are added) and
        ``body``, and wait for the answer's head. A failure is one of aiohttp's client
        errors (a timeout is a ``TimeoutError``); a caller's body that fails as it is read
        comes back as the cause (``__cause__``) of the error raised."""
        if _UNSAFE_TARGET.search(target) is not None:
            # A space or a line break would let the target end the request line early and
            # the rest be read as another request (the forwarder builds it from parsed and
            # quoted parts: this is a bug's last line of defence, never a caller's error).
            raise ValueError("the request target holds whitespace or a control character")
        target = self._path_prefix + target
        protocol = self._take()
        if protocol is None:
            return await self._exchange(await self._connect(), method, target, headers, body)
        try:
            return await self._exchange(protocol, method, target, headers, body)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            # The pooled connection was closed by the upstream as it was taken (or just
            # before): nothing of the answer came. Reads go once more on a new connection,
            # unless a streamed body was (partly) consumed and cannot be sent again.
            if method not in SAFE_METHODS:
                raise WriteConnectionLost(str(exc)) from exc
            if not (body is None or isinstance(body, bytes)):
                raise
        return await self._exchange(await self._connect(), method, target, headers, body)

    async def _exchange(
        self,
        protocol: _UpstreamProtocol,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Body,
    ) -> UpstreamAnswer:
        loop = asyncio.get_running_loop()
        protocol.set_response_params(
            skip_payload=method == "HEAD",
            # An answer with neither a length nor chunks ends when the connection does
            # (RFC 9112 §6.3), as ClientSession reads it.
            read_until_eof=True,
            auto_decompress=False,
            read_timeout=self._read_timeout,
        )
        writer = StreamWriter(protocol, loop)
        message_headers: CIMultiDict[str] = CIMultiDict(Host=self._host_header)
        message_headers.extend(headers)
        if "Host" in headers:  # the upstream's own, never one the caller chose
            message_headers.popall("Host")
            message_headers["Host"] = self._host_header
        writing: asyncio.Task[None] | None = None
        try:
            if isinstance(body, bytes):
                message_headers["Content-Length"] = str(len(body))
                await writer.write_headers(f"{method} {target} HTTP/1.1", message_headers)
                # Handed to the transport whole (it is in memory already, within
                # max_body_bytes), not waited for: the answer is read while the body goes,
                # so an upstream that answers early (401, 413) and stops reading is heard.
                await writer.write(body, drain=False)
                writer.set_eof()
                protocol.start_timeout()
            elif body is None:
                if method not in _BODYLESS_METHODS and "Content-Length" not in message_headers:
                    message_headers["Content-Length"] = "0"
                await writer.write_headers(f"{method} {target} HTTP/1.1", message_headers)
                writer.set_eof()
                protocol.start_timeout()
            else:
                declared = message_headers.get("Content-Length")
                if declared is None:
                    message_headers["Transfer-Encoding"] = "chunked"
                    writer.enable_chunking()
                else:
                    writer.length = int(declared)
                await writer.write_headers(f"{method} {target} HTTP/1.1", message_headers)
                writer.send_headers()
                writing = asyncio.ensure_future(_write_body(writer, protocol, body))
            while True:
                try:
                    message, content = await protocol.read()
                except HttpProcessingError as exc:
                    # An answer the parser refused (two framings, a header too long...).
                    raise aiohttp.ClientResponseError(
                        self._request_info(method, target),
                        (),
                        status=exc.code,
                        message="the upstream's answer could not be parsed",
                    ) from None
                if not 100 <= message.code < 200 or message.code == 101:
                    break
        except aiohttp.ClientError:
            _end(protocol, writing)
            raise
        except OSError as exc:  # "Connection lost" while the request went out
            _end(protocol, writing)
            raise aiohttp.ClientOSError(exc.errno, "Cannot write the request") from exc
        except BaseException:
            _end(protocol, writing)
            raise
        return UpstreamAnswer(
            message.code,
            message.reason,
            message.headers,
            content,
            self,
            protocol,
            writing,
            until_close=content is not EMPTY_PAYLOAD
            and not message.chunked
            and "Content-Length" not in message.headers,
            # An error answer to a request with a body may have come before the upstream
            # read the body (401, 413): the body's bytes could still be waiting on the
            # connection, to be read by the upstream as the next caller's request.
            reusable=body is None or message.code < 400,
        )


def _end(protocol: ResponseHandler, writing: asyncio.Task[None] | None) -> None:
    """A failed exchange: its body writer stopped, its connection closed."""
    if writing is not None and not writing.done():
        writing.cancel()
    _close(protocol)


def _close(protocol: ResponseHandler) -> None:
    """Close a connection that serves nobody more. With request bytes still to send it is
    aborted: a graceful close would keep the socket and those bytes (up to a whole body)
    until an upstream that may never read them did."""
    transport = protocol.transport
    if transport is not None and transport.get_write_buffer_size():
        protocol.abort()
    else:
        protocol.close()


def _client_context() -> ssl.SSLContext:
    """The system's trust store, host names checked, and ALPN ``http/1.1`` offered (as
    aiohttp's default context does: some load balancers refuse a handshake without it)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _fit(protocol: ResponseHandler) -> bool:
    """Still connected, and nothing arrived on it since its answer (``should_close`` also
    says the upstream closed it, or asked to)."""
    return protocol.is_connected() and not protocol.should_close


async def _write_body(
    writer: StreamWriter, protocol: ResponseHandler, body: AsyncIterator[bytes]
) -> None:
    """Stream ``body`` beside the wait for the answer (an upstream may answer before it
    has read it all). A failure, the caller's body's own included, ends the exchange: it
    is set on the protocol, where the wait for the answer raises it."""
    try:
        async for chunk in body:
            await writer.write(chunk)
        await writer.write_eof()
        protocol.start_timeout()
    except asyncio.CancelledError:
        raise
    except OSError as exc:
        protocol.set_exception(aiohttp.ClientOSError(exc.errno, "Cannot write the body"), exc)
    except Exception as exc:
        protocol.set_exception(
            aiohttp.ClientConnectionError("Failed to send the request body"), exc
        )

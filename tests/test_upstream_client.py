"""dragoman's upstream connections (``dragoman.upstream_client``): real upstreams on
127.0.0.1, raw where the bytes on the wire are the point. What the forwarder does with
the answers is in test_forward.py and test_http_desync.py."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from certs import make_pki
from dragoman.upstream_client import UpstreamPool, WriteConnectionLost

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An upstream whose every connection is served by ``serve``; it counts connections
    and keeps each request head it read (``heads``)."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self.connections = 0
        self.closed = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def until_closed(self, count: int) -> None:
        """Until ``count`` of its connections have ended."""
        async with asyncio.timeout(10):
            while self.closed < count:
                await asyncio.sleep(0.01)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> list[str]:
    return (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def pool_for(url: str, **settings: float) -> UpstreamPool:
    return UpstreamPool(
        url,
        connect_timeout=settings.get("connect_timeout", 5),
        read_timeout=settings.get("read_timeout", 10),
        keepalive=settings.get("keepalive", 30),
    )


async def fetch(
    pool: UpstreamPool, method: str = "GET", body: bytes | AsyncIterator[bytes] | None = None
) -> tuple[int, bytes]:
    answer = await pool.exchange(method, "/thing", CIMultiDict(), body)
    try:
        return answer.status, await answer.read()
    finally:
        answer.release()


def answers_once_per_connection() -> tuple[Serve, list[str]]:
    """An upstream that answers a connection's first request and closes the connection on
    its second without answering (what a client sees when an upstream drops an idle
    kept-alive connection as it is reused); the request lines it read."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for count in range(2):
            head = await read_head(reader)
            seen.append(head[0])
            length = next(
                (
                    int(line.split(":", 1)[1])
                    for line in head
                    if line.lower().startswith("content-length:")
                ),
                0,
            )
            if length:
                await reader.readexactly(length)
            if count == 0:
                writer.write(OK)
                await writer.drain()

    return serve, seen


async def test_a_read_whose_kept_alive_connection_the_upstream_dropped_is_sent_once_more() -> None:
    serve, seen = answers_once_per_connection()
    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool) == (200, b"ok")
            assert await fetch(pool) == (200, b"ok")  # dropped on the pooled connection, sent again
        finally:
            await pool.close()
    assert seen == ["GET /thing HTTP/1.1"] * 3
    assert upstream.connections == 2


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_a_write_whose_kept_alive_connection_the_upstream_dropped_is_never_sent_again(
    method: str,
) -> None:
    serve, seen = answers_once_per_connection()
    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool) == (200, b"ok")
            with pytest.raises(WriteConnectionLost):
                await fetch(pool, method, b"{}")
        finally:
            await pool.close()
    assert seen == ["GET /thing HTTP/1.1", f"{method} /thing HTTP/1.1"]


@pytest.mark.parametrize("target", ["/a b", "/a\r\nX-Evil: 1", "/a\tb", "/a\x00"])
async def test_a_target_that_could_end_the_request_line_early_is_never_sent(target: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            with pytest.raises(ValueError, match="whitespace or a control character"):
                await pool.exchange("GET", target, CIMultiDict(), None)
        finally:
            await pool.close()
    assert upstream.connections == 0


async def test_interim_answers_are_skipped_for_the_final_one() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)
        await writer.drain()
        await reader.read()

    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool) == (200, b"ok")
        finally:
            await pool.close()


async def test_an_answer_without_length_or_chunks_is_read_until_the_connection_closes() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool) == (200, b"until the end")
            assert not pool._idle
        finally:
            await pool.close()


async def test_an_answer_sent_before_the_whole_body_closes_the_connection() -> None:
    """The upstream refused the request before reading its body: what is left of the body
    would be read as the next request on that connection, so it serves nobody else."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    more = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first part"
        await more.wait()
        yield b"second part"

    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool, "POST", body()) == (413, b"")
            assert not pool._idle
            await upstream.until_closed(1)
        finally:
            more.set()
            await pool.close()


LARGE = b"x" * (8 << 20)
"""A buffered body far larger than what the kernel's buffers hold for an upstream that
does not read."""


class SmallBufferUpstream(RawUpstream):
    """A raw upstream whose listening socket has a small receive buffer, so a body it does
    not read fills up quickly. Leaving it waits until every connection is served."""

    async def __aenter__(self) -> SmallBufferUpstream:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self._server = await asyncio.start_server(self._accept, sock=listener)
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.until_closed(self.connections)
        await super().__aexit__()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a refusing Go or nginx server may."""
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


def answers_then_resets(answer: bytes) -> Serve:
    """An upstream that reads a request's head, sends ``answer`` (perhaps nothing, perhaps
    a part) without reading the body, and resets the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.2)
        reset(writer)

    return serve


async def test_an_early_answer_to_a_large_buffered_body_is_read_while_the_body_goes() -> None:
    """An upstream that refuses on the head (413, 401) and reads no more is heard at once;
    the connection, still holding the unread body, serves nobody else."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        await done.wait()  # keeps the connection open and reads nothing
        writer.transport.abort()

    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            async with asyncio.timeout(10):  # the old client waited here for good
                assert await fetch(pool, "POST", LARGE) == (413, b"big!")
            assert not pool._idle
        finally:
            done.set()
            await pool.close()


async def test_a_reset_while_a_large_buffered_body_goes_is_a_client_error() -> None:
    """A client error is a 502 in the forwarder; a bare ConnectionError was a 500."""

    async with SmallBufferUpstream(answers_then_resets(b"")) as upstream:
        pool = pool_for(upstream.url)
        try:
            with pytest.raises(aiohttp.ClientError):
                await fetch(pool, "POST", LARGE)
        finally:
            await pool.close()


async def test_an_early_refusal_then_a_reset_reaches_the_caller_as_the_refusal() -> None:
    serve = answers_then_resets(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied")
    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool, "POST", LARGE) == (401, b"denied")
        finally:
            await pool.close()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Type: application/json",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: xchunked",
    ],
    ids=["no-length", "chunked-not-last", "not-chunked"],
)
async def test_an_answer_read_until_close_that_ends_in_a_reset_is_cut_short_not_whole(
    framing: bytes,
) -> None:
    """Without a length or chunks (chunked as the last coding), only a clean close says the
    answer is whole."""

    serve = answers_then_resets(b"HTTP/1.1 200 OK\r\n" + framing + b'\r\n\r\n{"status":"pend')
    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            with pytest.raises(aiohttp.ClientPayloadError):
                await fetch(pool)
        finally:
            await pool.close()


async def test_an_error_answer_to_a_request_with_a_body_never_pools_its_connection() -> None:
    """The upstream may have refused before reading the body: read as the next request on
    that connection, it would answer another caller."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            assert await fetch(pool, "POST", b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n") == (
                401,
                b"",
            )
            assert not pool._idle
        finally:
            await pool.close()


async def test_a_successful_answer_to_a_request_with_a_body_keeps_its_connection(
    echo_upstream: str,
) -> None:
    pool = pool_for(echo_upstream)
    try:
        assert (await fetch(pool, "POST", b"{}"))[0] == 200
        assert len(pool._idle) == 1
    finally:
        await pool.close()


async def test_a_connection_given_up_with_body_bytes_unsent_drops_them() -> None:
    """A graceful close would keep the socket and up to a whole body until an upstream
    that does not read took it all."""
    received: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(0.5)  # reads nothing while the client's read timeout runs out
        count = 0
        try:
            while chunk := await reader.read(1 << 20):
                count += len(chunk)
        finally:
            received.append(count)

    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url, read_timeout=0.1)
        try:
            with pytest.raises(TimeoutError):
                await fetch(pool, "POST", LARGE)
        finally:
            await pool.close()
    (count,) = received
    assert count < len(LARGE)


async def test_an_early_answer_read_until_close_ends_when_the_upstream_stops_sending() -> None:
    """The upstream answers on the head without a length, half-closes and reads no more:
    the answer ends there, though the body has not all gone out."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\n\r\ntoo big")
        await writer.drain()
        writer.write_eof()
        await done.wait()

    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            async with asyncio.timeout(10):  # a graceful close waited for the upstream
                assert await fetch(pool, "POST", LARGE) == (413, b"too big")
        finally:
            done.set()
            await pool.close()


class Body(Exception):
    """The caller's body failed as it was read."""


async def test_a_body_that_fails_as_it_is_read_ends_the_exchange_with_that_failure_as_cause() -> (
    None
):
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        raise Body()

    async with RawUpstream(serve) as upstream:
        pool = pool_for(upstream.url)
        try:
            with pytest.raises(aiohttp.ClientConnectionError) as raised:
                await fetch(pool, "POST", body())
            assert isinstance(raised.value.__cause__, Body)
            assert not pool._idle
        finally:
            await pool.close()


async def endless() -> AsyncIterator[bytes]:
    """A streamed body that never ends."""
    while True:
        yield b"x" * 65536


async def test_a_streamed_body_the_upstream_stops_taking_times_out() -> None:
    """An upstream that reads the head, then neither reads nor answers: once it stops
    taking the body, it has the read timeout to take more (the read timeout proper starts
    once the body has gone, so without this the exchange waited for good)."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await done.wait()

    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url, read_timeout=0.2)
        try:
            async with asyncio.timeout(10):  # the hang guard: the old client waited here
                with pytest.raises(aiohttp.ServerTimeoutError):
                    await fetch(pool, "POST", endless())
            assert not pool._idle
        finally:
            done.set()
            await pool.close()


async def echo_framing(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "host": request.headers.get("Host"),
            "target": request.raw_path,
            "length": request.headers.get("Content-Length"),
            "encoding": request.headers.get("Transfer-Encoding"),
            "body": body.decode(),
        }
    )


@pytest.fixture
async def echo_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo_framing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def framing(
    url: str, method: str, headers: CIMultiDict[str], body: bytes | AsyncIterator[bytes] | None
) -> dict[str, str | None]:
    pool = pool_for(url)
    try:
        answer = await pool.exchange(method, "/echo", headers, body)
        try:
            framed: dict[str, str | None] = json.loads(await answer.read())
            return framed
        finally:
            answer.release()
    finally:
        await pool.close()


async def test_a_streamed_body_of_unknown_length_goes_chunked(echo_upstream: str) -> None:
    got = await framing(echo_upstream, "POST", CIMultiDict(), parts(b"ab", b"cd"))
    assert (got["encoding"], got["length"], got["body"]) == ("chunked", None, "abcd")


async def test_a_streamed_body_of_declared_length_goes_with_that_length(echo_upstream: str) -> None:
    headers = CIMultiDict({"Content-Length": "4"})
    got = await framing(echo_upstream, "PUT", headers, parts(b"ab", b"cd"))
    assert (got["encoding"], got["length"], got["body"]) == (None, "4", "abcd")


async def test_an_answer_cut_by_the_send_timeout_fails_never_ends_as_whole() -> None:
    """The upstream answers read-until-close while it takes none of the body: the send
    timeout's abort ends the answer, which must fail rather than end as if complete."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while True:  # never done: any end the client sees is a cut
            writer.write(b"tick\n")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url, read_timeout=0.3)
        try:
            answer = await pool.exchange("POST", "/thing", CIMultiDict(), endless())
            try:
                async with asyncio.timeout(10):  # the hang guard
                    with pytest.raises(aiohttp.ServerTimeoutError):
                        await answer.read()
            finally:
                answer.release()
        finally:
            await pool.close()


async def test_the_send_timeout_waits_while_the_answer_is_held_back_on_our_side() -> None:
    """The upstream answers (a large body) while it takes none of ours, and we read none
    of its answer for longer than the send timeout (a slow caller): the upstream may be
    blocked on us, so the answer still arrives whole."""
    size = 4 << 20
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"y" * size)
        await writer.drain()
        await done.wait()

    async with SmallBufferUpstream(serve) as upstream:
        pool = pool_for(upstream.url, read_timeout=0.3)
        try:
            answer = await pool.exchange("POST", "/thing", CIMultiDict(), endless())
            try:
                await asyncio.sleep(1)  # reads nothing: the transport stops reading
                async with asyncio.timeout(10):  # the hang guard
                    assert len(await answer.read()) == size
            finally:
                answer.release()
        finally:
            done.set()
            await pool.close()


async def test_a_streamed_body_waits_for_its_callers_next_bytes_past_the_send_timeout(
    echo_upstream: str,
) -> None:
    """The send timeout is the upstream's to keep; a slow caller is bounded elsewhere (the
    forwarder's body timeout)."""

    async def slow_caller() -> AsyncIterator[bytes]:
        yield b"slow "
        await asyncio.sleep(0.5)
        yield b"caller"

    pool = pool_for(echo_upstream, read_timeout=0.2)
    try:
        status, echoed = await fetch(pool, "POST", slow_caller())
    finally:
        await pool.close()
    assert (status, json.loads(echoed)["body"]) == (200, "slow caller")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_a_write_without_a_body_declares_an_empty_one(
    echo_upstream: str, method: str
) -> None:
    got = await framing(echo_upstream, method, CIMultiDict(), None)
    assert (got["encoding"], got["length"], got["body"]) == (None, "0", "")


async def test_a_read_without_a_body_declares_none(echo_upstream: str) -> None:
    got = await framing(echo_upstream, "GET", CIMultiDict(), None)
    assert (got["encoding"], got["length"], got["body"]) == (None, None, "")


async def test_targets_are_sent_below_the_upstream_urls_own_path(echo_upstream: str) -> None:
    got = await framing(echo_upstream + "/api/v2/", "GET", CIMultiDict(), None)
    assert got["target"] == "/api/v2/echo"


async def test_the_host_header_names_the_upstreams_authority(echo_upstream: str) -> None:
    got = await framing(echo_upstream, "GET", CIMultiDict({"Host": "evil.example"}), None)
    assert got["host"] == echo_upstream.removeprefix("http://")


async def answers_every_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_head(reader)
        writer.write(OK)
        await writer.drain()


async def test_a_connection_idle_past_keepalive_is_closed_while_nothing_is_sent() -> None:
    async with RawUpstream(answers_every_request) as upstream:
        pool = pool_for(upstream.url, keepalive=0.05)
        try:
            assert await fetch(pool) == (200, b"ok")
            await upstream.until_closed(1)
            assert not pool._idle
        finally:
            await pool.close()


async def test_a_connection_idle_past_keepalive_is_closed_not_reused() -> None:
    async with RawUpstream(answers_every_request) as upstream:
        pool = pool_for(upstream.url, keepalive=0.05)
        try:
            assert await fetch(pool) == (200, b"ok")
            await asyncio.sleep(0.2)
            assert await fetch(pool) == (200, b"ok")
            assert upstream.connections == 2
            await upstream.until_closed(1)
        finally:
            await pool.close()


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An https upstream on 127.0.0.1 and the file of the CA that signed its certificate."""
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.tls["cert_file"], pki.tls["key_file"])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo_framing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}", pki.server_ca
    await runner.cleanup()


async def test_an_https_upstream_whose_certificate_no_trusted_authority_signed_is_refused(
    tls_upstream: tuple[str, Path],
) -> None:
    url, _ = tls_upstream
    pool = pool_for(url)
    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await fetch(pool)
    finally:
        await pool.close()


async def test_an_https_upstream_is_verified_against_the_system_trust_store(
    tls_upstream: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSL_CERT_FILE is how an operator trusts a private CA for the upstream (OpenSSL's
    default trust store, read when the pool is made)."""
    url, authority = tls_upstream
    monkeypatch.setenv("SSL_CERT_FILE", str(authority))
    pool = pool_for(url)
    try:
        assert (await fetch(pool))[0] == 200
        assert (await fetch(pool))[0] == 200
        assert len(pool._idle) == 1  # kept alive over TLS too
    finally:
        await pool.close()


async def test_an_https_upstream_is_offered_alpn_http_1_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As aiohttp's own client does: a load balancer may refuse a handshake without it."""
    pki = make_pki(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.server_ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.tls["cert_file"], pki.tls["key_file"])
    context.set_alpn_protocols(["h2", "http/1.1"])
    offered: list[str | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        offered.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    pool = pool_for(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert await fetch(pool) == (200, b"ok")
        assert offered == ["http/1.1"]
    finally:
        await pool.close()
        server.close()

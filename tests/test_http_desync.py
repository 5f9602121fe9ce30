"""Request smuggling, response desync and header handling, byte for byte on both sides.

The caller writes raw HTTP/1.1 on a socket to a real dragoman (the demo stack); the upstream
is a raw socket server that records every byte it receives, per connection, and answers
with exactly the bytes a test gives it, misbehaving on purpose. The pool has one connection
(``upstream.pool_size = 1``), so any reuse of an upstream connection is a reuse between the
requests of a test: alice's request, then bob's.

Pinned here (aiohttp's own parsers do most of it; dragoman's part is named):

- the caller's framing is unambiguous or refused 400 before anything is forwarded: CL + TE,
  two Content-Length lines, a Transfer-Encoding not ending in ``chunked``, obs-fold, bare LF
  or CR, invalid chunk sizes (aiohttp's llhttp parser);
- a chunked body reaches the upstream re-framed (no chunk extension, no trailer);
- a body refused before it was read (401, 403, 413) is still framed as a body: what it
  holds is never parsed as the next request; a caller waiting for ``100 Continue`` gets it
  only once authorised, and a refused one gets no 100 and a closed connection;
- a ``GET`` or ``HEAD`` with a body is refused before anything is forwarded;
- dragoman's ``Authorization``, ``X-Request-Id``, ``X-Forwarded-For`` and ``-Proto`` reach
  the upstream once, whatever the caller sent or named in ``Connection``;
- an upstream answer with bytes past its end, cut short, or malformed closes its
  connection (502/504 when nothing was sent yet); header line breaks never split the
  caller's answer; ``Set-Cookie`` is dropped; the security headers and ``X-Request-Id``
  are dragoman's; a ``101`` is refused; no answer is left to shared caches.

Found this way, and fixed (dragoman.forward, dragoman.upstream_client, dragoman.catalog.binding):

- a response the upstream sends on an idle pooled connection was queued by aiohttp and read
  as the answer to the next request on it, another caller's (aio-libs/aiohttp#13656): the
  pool now closes such a connection (``dragoman.upstream_client.UpstreamPool``);
- ``X_Forwarded_For`` / ``X_Request_Id`` (underscores) reached the upstream, where CGI/WSGI
  servers read them as ``X-Forwarded-For`` / ``X-Request-Id``;
- ``Connection: X-Customer-Id`` (or ``Content-Type``) dropped a header a customer binding
  had checked before the request was forwarded;
- the upstream's ``Access-Control-*`` headers reached a caller from a foreign origin.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from binding_support import BOUND_OPS
from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
ALICE_PATH = b"/r/cus_alice/x"
BOB_PATH = b"/r/cus_bob/x"
MAX_BODY = 1024
SECRET = b"ALICE-SECRET"


# -- the raw upstream ------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as it reached the upstream: its connection, head and body bytes (a
    chunked body as framed on the wire)."""

    connection: int
    head: bytes
    body: bytes

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def lines(self) -> list[tuple[bytes, bytes]]:
        """Every header line as (name, value), names as sent."""
        found = []
        for line in self.head.split(b"\r\n")[1:]:
            if line:
                name, _, value = line.partition(b":")
                found.append((name, value.strip()))
        return found

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.lines() if n.lower() == name.lower()]


def answer(body: bytes, *, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n" + headers
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lowered = head.lower()
    if b"\r\ntransfer-encoding: chunked" in lowered:
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            body += size_line
            if size == 0:
                return body + await reader.readuntil(b"\r\n")  # no trailer is ever sent
            body += await reader.readexactly(size + 2)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await reader.readexactly(int(line.partition(b":")[2]))
    return b""


@dataclass(frozen=True)
class Close:
    """An answer after which the upstream closes its connection."""

    data: bytes


class RawUpstream:
    """Answers each request with ``self.answer(received)`` (a :class:`Close` is written and
    the connection closed) and keeps every connection's writer, so a test can send bytes
    nobody asked for."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.closed: set[int] = set()
        self.head_seen = asyncio.Event()
        """Set once a request head has arrived (its body may still be on its way)."""
        self.answer: Callable[[Received], bytes | Close] = lambda _: answer(b"ok")
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers.values():
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number = len(self.writers) + 1
        self.writers[number] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.head_seen.set()
                got = Received(number, head, await _read_body(reader, head))
                self.received.append(got)
                reply = self.answer(got)
                writer.write(reply.data if isinstance(reply, Close) else reply)
                await writer.drain()
                if isinstance(reply, Close):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.add(number)
            writer.close()
            self._tasks.discard(task)

    async def wait_closed(self, connection: int) -> None:
        async with asyncio.timeout(5):
            while connection not in self.closed:
                await asyncio.sleep(0.01)


# -- the caller ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    head: bytes
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        return [
            line.partition(b":")[2].strip()
            for line in self.head.split(b"\r\n")[1:]
            if line.partition(b":")[0].lower() == name.lower()
        ]


def _unchunk(data: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return body, data.partition(b"\r\n")[2]
        body, data = body + data[:size], data[size + 2 :]


def answers(data: bytes) -> list[Answer]:
    """Every answer on one connection, in order, split by its own framing."""
    found = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"an answer without the end of its head: {head!r}"
        status = int(head.split(b" ", 2)[1])
        probe = Answer(status, head, b"")
        if 100 <= status < 200 or status in (204, 304):
            body = b""
        elif lengths := probe.values(b"Content-Length"):
            size = int(lengths[0])
            body, data = data[:size], data[size:]
        elif b"chunked" in b"".join(probe.values(b"Transfer-Encoding")).lower():
            body, data = _unchunk(data)
        else:
            body, data = data, b""
        found.append(Answer(status, head, body))
    return found


async def exchange(
    stack: DemoStack,
    data: bytes,
    *,
    abort_after: int | None = None,
    then: tuple[asyncio.Event, bytes] | None = None,
) -> bytes:
    """Write ``data`` on one connection; everything dragoman sends until it closes it (or the
    first ``abort_after`` bytes, and then the caller resets the connection). ``then``: once
    the event is set, write those bytes too (the end of a body dragoman is streaming)."""
    host, port = stack.urls["proxy"].removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            if then is not None:
                event, rest = then
                await event.wait()
                writer.write(rest)
            while chunk := await reader.read(65536):
                received += chunk
                if abort_after is not None and len(received) >= abort_after:
                    writer.transport.abort()
                    break
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


def message(start: bytes, *lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join((start, b"Host: dragoman", *lines)) + b"\r\n\r\n" + body


def bearer(stack: DemoStack, subject: str = "alice", account: str = "acct-1001") -> bytes:
    token = stack.issuer.token(subject, account, roles=["billing_admin"])
    return b"Authorization: Bearer " + token.encode()


def get(stack: DemoStack, path: bytes = ALICE_PATH, *lines: bytes) -> bytes:
    """A GET of alice's (bob's with ``BOB_PATH``) that closes its connection."""
    who = ("bob", "acct-2002") if path == BOB_PATH else ("alice", "acct-1001")
    return message(b"GET " + path + b" HTTP/1.1", bearer(stack, *who), *lines, b"Connection: close")


def chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def length(body: bytes) -> bytes:
    return b"Content-Length: %d" % len(body)


# -- the stack -------------------------------------------------------------------------------


def settings(url: str) -> dict[str, Any]:
    operations = [
        {
            "id": f"r.{method.lower()}",
            "method": method,
            "path": "/r/{customer_id}/x",
            "scope": f"r:{method.lower()}",
            "customer_param": "customer_id",
        }
        for method in ("GET", "HEAD", "POST", "DELETE")
    ]
    operations += [
        {"id": op_id, "method": method, "path": path, "scope": op_id.replace(".", ":"),
         "customer": bindings}
        for op_id, method, path, bindings in BOUND_OPS
    ]  # fmt: skip
    return {
        "upstream": {"url": url, "read_timeout": 1, "pool_size": 1},
        "server": {"max_body_bytes": MAX_BODY},
        "catalog": {"operations": operations},
    }


@pytest.fixture
async def upstream() -> AsyncIterator[RawUpstream]:
    raw = RawUpstream()
    await raw.start()
    try:
        yield raw
    finally:
        await raw.stop()


@pytest.fixture
async def proxy(upstream: RawUpstream, make_stack: MakeStack) -> DemoStack:
    return await make_stack(settings(upstream.url))


def smuggled(stack: DemoStack) -> bytes:
    """A whole request of alice's, as the body of another."""
    return message(b"GET " + ALICE_PATH + b"?smuggled=1 HTTP/1.1", bearer(stack))


def after(stack: DemoStack) -> bytes:
    """The request that follows on the connection, and closes it."""
    return get(stack, ALICE_PATH + b"?after=1")


# -- caller -> dragoman: framing ---------------------------------------------------------------


async def test_content_length_with_transfer_encoding_is_refused_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1",
        bearer(proxy),
        b"Content-Length: 4",
        b"Transfer-Encoding: chunked",
        body=b"0\r\n\r\n" + smuggled(proxy),
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [400]
    assert upstream.received == []


@pytest.mark.parametrize(
    "lines",
    [
        (b"Content-Length: 3", b"Content-Length: 3"),
        (b"Content-Length: 3", b"Content-Length: 5"),
        (b"Content-Length: 3, 3",),
        (b"Content-Length: +3",),
    ],
    ids=["two-equal", "two-different", "list", "signed"],
)
async def test_an_ambiguous_content_length_is_refused_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, lines: tuple[bytes, ...]
) -> None:
    data = message(b"POST " + ALICE_PATH + b" HTTP/1.1", bearer(proxy), *lines, body=b"abcde")
    assert [a.status for a in answers(await exchange(proxy, data))] == [400]
    assert upstream.received == []


@pytest.mark.parametrize(
    "lines",
    [
        (b"Transfer-Encoding: chunked, identity",),
        (b"Transfer-Encoding: xchunked",),
        (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        (b"Transfer-Encoding : chunked",),
        (b"Transfer-Encoding: \x0bchunked",),
    ],
    ids=["chunked-identity", "xchunked", "twice", "space-before-colon", "vertical-tab"],
)
async def test_an_unusual_transfer_encoding_is_refused_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, lines: tuple[bytes, ...]
) -> None:
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1", bearer(proxy), *lines, body=chunked(b"abc")
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [400]
    assert upstream.received == []


@pytest.mark.parametrize(
    "lines",
    [
        (b"X-Note: a", b" Content-Length: 3"),
        (b"Transfer-Encoding: identity", b" chunked"),
        (b" Content-Length: 3",),
    ],
    ids=["obs-fold", "obs-fold-transfer-encoding", "leading-space-first-line"],
)
async def test_folded_or_indented_header_lines_are_refused_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, lines: tuple[bytes, ...]
) -> None:
    start = b"POST " + ALICE_PATH + b" HTTP/1.1"
    data = b"\r\n".join((start, *lines, b"Host: dragoman", bearer(proxy))) + b"\r\n\r\nabc"
    assert [a.status for a in answers(await exchange(proxy, data))] == [400]
    assert upstream.received == []


@pytest.mark.parametrize(
    "ending", [b"\n", b"\r"], ids=["bare-lf", "bare-cr"]
)  # fmt: skip
async def test_a_header_line_not_ended_by_crlf_is_refused_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, ending: bytes
) -> None:
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1",
        bearer(proxy),
        b"X-Note: a" + ending + b"Content-Length: 3",
        body=b"abc",
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [400]
    assert upstream.received == []


@pytest.mark.parametrize(
    "size",
    [b"0x3", b"-3", b"3 ", b"F" * 17 + b"3", b"3;ext\nx"],
    ids=["hex-prefix", "negative", "trailing-space", "overflow", "bare-lf-in-extension"],
)
async def test_an_invalid_chunk_size_line_is_refused_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, size: bytes
) -> None:
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1",
        bearer(proxy),
        b"Transfer-Encoding: chunked",
        body=size + b"\r\nabc\r\n0\r\n\r\n",
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [400]
    assert upstream.received == []


async def test_chunk_extensions_never_reach_the_upstream(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    """The body's end is held back until the upstream has the head: dragoman streams it."""
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1",
        bearer(proxy),
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/json",  # streamed (a body of no type is read whole)
        b"Connection: close",
        body=b"3;name=value\r\nabc\r\n",
    )
    sent = await exchange(proxy, data, then=(upstream.head_seen, b"0\r\n\r\n"))
    assert [a.status for a in answers(sent)] == [200]
    assert upstream.received[0].body == b"3\r\nabc\r\n0\r\n\r\n"


async def test_a_chunked_body_that_came_whole_goes_upstream_by_its_length(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1",
        bearer(proxy),
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/json",
        b"Connection: close",
        body=b"3;name=value\r\nabc\r\n0\r\nAuthorization: Bearer forged\r\n\r\n",
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [200]
    (got,) = upstream.received
    assert (got.body, got.values(b"Content-Length")) == (b"abc", [b"3"])
    assert not got.values(b"Transfer-Encoding")
    assert b"forged" not in got.head


async def test_request_trailers_never_reach_the_upstream(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    data = message(
        b"POST " + ALICE_PATH + b" HTTP/1.1",
        bearer(proxy),
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/json",  # streamed (a body of no type is read whole)
        b"Connection: close",
        body=b"3\r\nabc\r\n",
    )
    trailers = b"0\r\nAuthorization: Bearer forged\r\nX-Customer-Id: cus_bob\r\n\r\n"
    sent = await exchange(proxy, data, then=(upstream.head_seen, trailers))
    assert [a.status for a in answers(sent)] == [200]
    (got,) = upstream.received
    assert got.body == b"3\r\nabc\r\n0\r\n\r\n"
    assert len(got.values(b"Authorization")) == 1
    assert b"forged" not in got.head and b"cus_bob" not in got.head


# -- caller -> dragoman: a refused body stays a body -------------------------------------------


def _refused(stack: DemoStack, case: str) -> tuple[bytes, list[int]]:
    """A request refused before its body is read, the body a whole request, then
    ``after``; and the statuses the connection must answer."""
    inner = smuggled(stack)
    oversized = inner + b"x" * MAX_BODY
    alice, bob = b"POST " + ALICE_PATH + b" HTTP/1.1", b"POST " + BOB_PATH + b" HTTP/1.1"
    te = b"Transfer-Encoding: chunked"
    cases: dict[str, tuple[bytes, list[int]]] = {
        "401-length": (message(alice, length(inner), body=inner), [401]),
        "401-chunked": (message(alice, te, body=chunked(inner)), [401]),
        "403-length": (message(bob, bearer(stack), length(inner), body=inner), [403]),
        "403-chunked": (message(bob, bearer(stack), te, body=chunked(inner)), [403]),
        "413-declared": (
            message(alice, bearer(stack), length(oversized), body=oversized),
            [413],
        ),
        "413-chunked": (message(alice, bearer(stack), te, body=chunked(oversized)), [413]),
    }
    data, statuses = cases[case]
    return data + after(stack), [*statuses, 200]


@pytest.mark.parametrize(
    "case",
    [
        "401-length",
        "401-chunked",
        "403-length",
        "403-chunked",
        "413-declared",
        "413-chunked",
    ],
)
async def test_a_body_refused_unread_is_never_parsed_as_the_next_request(
    upstream: RawUpstream, proxy: DemoStack, case: str
) -> None:
    data, statuses = _refused(proxy, case)
    assert [a.status for a in answers(await exchange(proxy, data))] == statuses
    assert [r.target for r in upstream.received] == [ALICE_PATH + b"?after=1"]


# -- caller -> dragoman: Expect: 100-continue ----------------------------------------------------

EXPECT = b"Expect: 100-continue"


@pytest.mark.parametrize(
    ("who", "status"),
    [(b"", 401), (b"bob", 403)],
    ids=["unauthenticated", "another-customer"],
)
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_refused_caller_waiting_for_100_gets_no_100_and_its_connection_closed(
    upstream: RawUpstream, proxy: DemoStack, who: bytes, status: int, framing: str
) -> None:
    """aiohttp answered 100 on arrival, inviting any caller's body; whether a refused
    caller then sends it or not, what follows cannot be read as its next request."""
    inner = smuggled(proxy)
    lines = [bearer(proxy)] if who else []
    start = b"POST " + (BOB_PATH if who else ALICE_PATH) + b" HTTP/1.1"
    if framing == "length":
        data = message(start, *lines, EXPECT, length(inner), body=inner)
    else:
        data = message(start, *lines, EXPECT, b"Transfer-Encoding: chunked", body=chunked(inner))
    got = answers(await exchange(proxy, data + after(proxy)))
    assert [a.status for a in got] == [status]
    assert got[0].values(b"Connection") == [b"close"]
    assert upstream.received == []


async def test_an_authorised_caller_waiting_for_100_gets_it_and_its_body_is_forwarded(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    start = b"POST " + ALICE_PATH + b" HTTP/1.1"
    data = message(start, bearer(proxy), EXPECT, length(b"hello"), b"Connection: close")
    host, port = proxy.urls["proxy"].removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)  # the head only: the body waits for the 100
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            rest = await reader.read()
    finally:
        writer.close()
    assert [a.status for a in answers(rest)] == [200]
    assert [r.body for r in upstream.received] == [b"hello"]


async def test_a_caller_that_sent_its_body_without_waiting_for_100_keeps_its_connection(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    """curl sends the body after a second without a 100: the body forwarded, the 100 sent
    as it is read, and the next request on the connection answered too."""
    start = b"POST " + ALICE_PATH + b" HTTP/1.1"
    data = message(start, bearer(proxy), EXPECT, length(b"hello"), body=b"hello")
    got = answers(await exchange(proxy, data + after(proxy)))
    assert [a.status for a in got] == [100, 200, 200]
    assert got[1].values(b"Connection") == []
    assert [(r.target, r.body) for r in upstream.received] == [
        (ALICE_PATH, b"hello"),
        (ALICE_PATH + b"?after=1", b""),
    ]


async def test_an_expectation_other_than_100_continue_is_refused_417_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    """Its caller may be sending the body or waiting: the connection is closed."""
    start = b"POST " + ALICE_PATH + b" HTTP/1.1"
    data = message(start, bearer(proxy), b"Expect: something-else", length(b"hello"), body=b"hello")
    got = answers(await exchange(proxy, data + after(proxy)))
    assert [a.status for a in got] == [417]
    assert got[0].values(b"Content-Type") == [b"application/problem+json"]
    assert got[0].values(b"Connection") == [b"close"]
    assert upstream.received == []


# -- caller -> dragoman: no body on GET or HEAD --------------------------------------------------


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_get_or_head_carrying_a_body_is_refused_400_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, method: bytes, framing: str
) -> None:
    """An upstream that does not read a GET's body takes it for the next request on its
    connection; the body here is a whole request."""
    inner = smuggled(proxy)
    start = method + b" " + ALICE_PATH + b" HTTP/1.1"
    if framing == "length":
        data = message(start, bearer(proxy), length(inner), body=inner)
    else:
        data = message(start, bearer(proxy), b"Transfer-Encoding: chunked", body=chunked(inner))
    received = await exchange(proxy, data + after(proxy))
    if method == b"GET":
        got = answers(received)
        assert [a.status for a in got] == [400, 200]
        assert b"carries no body" in got[0].body
    else:  # the answer to HEAD declares a length and sends no body: split by hand
        assert received.startswith(b"HTTP/1.1 400 ")
        assert received.count(b"HTTP/1.1 200 ") == 1
    assert [r.target for r in upstream.received] == [ALICE_PATH + b"?after=1"]


async def test_a_get_declaring_an_empty_body_is_forwarded(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    got = answers(await exchange(proxy, get(proxy, ALICE_PATH, b"Content-Length: 0")))
    assert [a.status for a in got] == [200]
    assert [r.body for r in upstream.received] == [b""]


@pytest.mark.parametrize("forged_first", [True, False], ids=["forged-first", "forged-last"])
async def test_two_authorization_lines_are_refused_401_and_nothing_forwarded(
    upstream: RawUpstream, proxy: DemoStack, forged_first: bool
) -> None:
    lines = [bearer(proxy), b"Authorization: Bearer forged"]
    if forged_first:
        lines.reverse()
    data = message(b"GET " + ALICE_PATH + b" HTTP/1.1", *lines, b"Connection: close")
    assert [a.status for a in answers(await exchange(proxy, data))] == [401]
    assert upstream.received == []


# -- dragoman -> upstream: the headers dragoman sets -------------------------------------------


async def test_caller_spellings_of_the_headers_dragoman_sets_never_reach_the_upstream(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    data = get(
        proxy,
        ALICE_PATH,
        b"x-forwarded-for: 6.6.6.6",
        b"X-FORWARDED-FOR: 6.6.6.7",
        b"X-Forwarded-Proto: https",
        b"x-forwarded-host: evil.example",
        b"FORWARDED: for=6.6.6.6",
        b"x-real-ip: 6.6.6.6",
        b"PROXY-AUTHORIZATION: Basic Zm9vOmJhcg==",
        b"cookie: a=b",
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [200]
    (got,) = upstream.received
    assert got.values(b"X-Forwarded-For") == [b"127.0.0.1"]
    assert got.values(b"X-Forwarded-Proto") == [b"http"]
    (authorization,) = got.values(b"Authorization")
    assert authorization not in bearer(proxy)  # the minted token, not the caller's
    names = {name.lower() for name, _ in got.lines()}
    dropped = {b"x-forwarded-host", b"forwarded", b"x-real-ip", b"proxy-authorization", b"cookie"}
    assert names.isdisjoint(dropped)


async def test_connection_cannot_remove_a_header_dragoman_sets_upstream(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    data = get(
        proxy,
        ALICE_PATH,
        b"X-Request-Id: req-12345678",
        b"Connection: Authorization, X-Request-Id, X-Forwarded-For, X-Forwarded-Proto",
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [200]
    (got,) = upstream.received
    for name in (b"Authorization", b"X-Request-Id", b"X-Forwarded-For", b"X-Forwarded-Proto"):
        assert len(got.values(name)) == 1, name
    assert got.values(b"Connection") == []


@pytest.mark.parametrize(
    "second", [b"X-Customer-Id: cus_bob", b"X_Customer_Id: cus_bob"], ids=["twice", "underscore"]
)
async def test_a_bound_customer_header_cannot_be_named_twice(
    upstream: RawUpstream, proxy: DemoStack, second: bytes
) -> None:
    data = get(proxy, b"/header/things", b"X-Customer-Id: cus_alice", second)
    assert [a.status for a in answers(await exchange(proxy, data))] == [403]
    assert upstream.received == []


async def test_underscore_spellings_of_headers_dragoman_sets_never_reach_the_upstream(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    data = get(
        proxy,
        ALICE_PATH,
        b"X_Forwarded_For: 6.6.6.6",
        b"X_Request_Id: forged-request-id",
        b"X_Real_IP: 6.6.6.6",
        b"X_Forwarded_Host: evil.example",
    )
    assert [a.status for a in answers(await exchange(proxy, data))] == [200]
    (got,) = upstream.received
    managed = {b"x-forwarded-for", b"x-request-id", b"x-real-ip", b"x-forwarded-host"}
    spelled = [n for n, _ in got.lines() if n.lower().replace(b"_", b"-") in managed]
    assert all(b"_" not in name for name in spelled), spelled


@pytest.mark.parametrize("path", [b"/header/things", b"/header-inject/things"])
async def test_a_bound_customer_header_named_in_connection_is_forwarded_or_refused(
    upstream: RawUpstream, proxy: DemoStack, path: bytes
) -> None:
    data = get(proxy, path, b"X-Customer-Id: cus_alice", b"Connection: X-Customer-Id")
    (got_answer,) = answers(await exchange(proxy, data))
    if got_answer.status < 400:
        (got,) = upstream.received
        assert got.values(b"X-Customer-Id") == [b"cus_alice"]
    else:
        assert upstream.received == []


async def test_a_checked_json_body_keeps_its_content_type_upstream(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    body = b'{"customer": "cus_alice"}'
    data = message(
        b"POST /body/things HTTP/1.1",
        bearer(proxy),
        b"Content-Type: application/json",
        b"Connection: Content-Type, close",
        length(body),
        body=body,
    )
    (got_answer,) = answers(await exchange(proxy, data))
    if got_answer.status < 400:
        (got,) = upstream.received
        assert got.values(b"Content-Type") == [b"application/json"]
    else:
        assert upstream.received == []


# -- upstream -> dragoman: framing and the pool ------------------------------------------------


def _alice_then_bob(upstream: RawUpstream, alice: bytes | Close) -> None:
    upstream.answer = lambda got: alice if b"cus_alice" in got.target else answer(b"bob")


async def _bob(upstream: RawUpstream, proxy: DemoStack) -> Answer:
    """Bob's request after alice's: his own answer, on a new upstream connection."""
    (got,) = answers(await exchange(proxy, get(proxy, BOB_PATH)))
    assert [r.connection for r in upstream.received] == [1, 2]
    return got


@pytest.mark.parametrize(
    "alice",
    [
        answer(b"alice") + answer(SECRET),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nalice\r\n0\r\n\r\n"
        + answer(SECRET),
        b"HTTP/1.1 204 No Content\r\nContent-Length: 51\r\n\r\n" + answer(SECRET),
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 51\r\n\r\n" + answer(SECRET),
        answer(b"alice") + b"GARBAGE",
    ],
    ids=["after-length", "after-chunked", "body-of-204", "body-of-304", "garbage"],
)
async def test_bytes_past_an_upstream_answer_close_its_connection(
    upstream: RawUpstream, proxy: DemoStack, alice: bytes
) -> None:
    _alice_then_bob(upstream, alice)
    received = answers(await exchange(proxy, get(proxy)))
    assert SECRET not in b"".join(a.head + a.body for a in received)
    await upstream.wait_closed(1)
    bob = await _bob(upstream, proxy)
    assert (bob.status, bob.body) == (200, b"bob")


@pytest.mark.parametrize(
    ("alice", "status"),
    [
        (Close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nalice"), 502),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nalice", 504),  # then silent
    ],
    ids=["closed", "stalled"],
)
async def test_an_upstream_answer_cut_short_is_refused_and_never_pooled(
    upstream: RawUpstream, proxy: DemoStack, alice: bytes | Close, status: int
) -> None:
    _alice_then_bob(upstream, alice)
    assert [a.status for a in answers(await exchange(proxy, get(proxy)))] == [status]
    await upstream.wait_closed(1)
    bob = await _bob(upstream, proxy)
    assert (bob.status, bob.body) == (200, b"bob")


@pytest.mark.parametrize(
    "alice",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nalice\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nalice",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nalice",
        b"HTTP/1.1 200 OK\rSet-Cookie: a=b\r\nContent-Length: 5\r\n\r\nalice",
        b"HTTP/1.1 200 OK\r\nX-Note: a\rSet-Cookie: a=b\r\nContent-Length: 5\r\n\r\nalice",
    ],
    ids=["length-and-chunked", "two-lengths", "status-2000", "cr-in-status", "cr-in-header"],
)
async def test_a_malformed_upstream_answer_is_refused_502_and_never_pooled(
    upstream: RawUpstream, proxy: DemoStack, alice: bytes
) -> None:
    _alice_then_bob(upstream, alice)
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.status == 502
    assert b"alice" not in got.body and got.values(b"Set-Cookie") == []
    await upstream.wait_closed(1)
    bob = await _bob(upstream, proxy)
    assert (bob.status, bob.body) == (200, b"bob")


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 9000 + b"\r\n", b"".join(b"X-H%d: v\r\n" % n for n in range(200))],
    ids=["one-9k-header", "200-headers"],
)
async def test_oversized_upstream_headers_are_refused_502(
    upstream: RawUpstream, proxy: DemoStack, headers: bytes
) -> None:
    _alice_then_bob(upstream, answer(b"alice", headers=headers))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.status == 502
    assert b"X-Big" not in got.head and b"X-H1:" not in got.head


@pytest.mark.parametrize(
    "folded",
    [b"X-Note: a\nSet-Cookie: sid=forged\r\n", b"X-Note: a\r\n Set-Cookie: sid=forged\r\n"],
    ids=["bare-lf", "obs-fold"],
)
async def test_line_breaks_in_upstream_headers_never_split_the_answer(
    upstream: RawUpstream, proxy: DemoStack, folded: bytes
) -> None:
    _alice_then_bob(upstream, answer(b"alice", headers=folded))
    data = await exchange(proxy, get(proxy))
    (got,) = answers(data)
    assert (got.status, got.body) == (200, b"alice")
    head_lines = got.head.split(b"\r\n")
    assert not [line for line in head_lines if line.lower().startswith(b"set-cookie")]
    assert all(b"\n" not in line and b"\r" not in line for line in head_lines)


async def test_upstream_set_cookie_is_dropped_in_every_spelling(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    cookies = b"Set-Cookie: sid=a\r\nset-cookie: sid=b\r\nSET-COOKIE: sid=c\r\n"
    _alice_then_bob(upstream, answer(b"alice", headers=cookies))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.status == 200
    assert got.values(b"Set-Cookie") == []


def _security_headers(stack: DemoStack) -> dict[bytes, bytes]:
    assert stack.proxy is not None
    return {k.encode(): v.encode() for k, v in stack.proxy.headers.items()}


async def test_upstream_headers_cannot_replace_the_security_headers_or_request_id(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    weaker = b"".join(name + b": weaker\r\n" for name in _security_headers(proxy))
    _alice_then_bob(upstream, answer(b"alice", headers=weaker + b"X-Request-Id: upstream\r\n"))
    data = get(proxy, ALICE_PATH, b"X-Request-Id: req-12345678")
    (got,) = answers(await exchange(proxy, data))
    for name, value in _security_headers(proxy).items():
        assert got.values(name) == [value], name
    assert got.values(b"X-Request-Id") == [b"req-12345678"]


async def test_upstream_connection_header_cannot_remove_the_security_headers_or_request_id(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    named = b", ".join([*_security_headers(proxy), b"X-Request-Id"])
    _alice_then_bob(upstream, answer(b"alice", headers=b"Connection: " + named + b"\r\n"))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.body == b"alice"
    for name, value in _security_headers(proxy).items():
        assert got.values(name) == [value], name
    assert len(got.values(b"X-Request-Id")) == 1


async def test_caller_connection_header_cannot_remove_the_security_headers_or_request_id(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    named = b", ".join([*_security_headers(proxy), b"X-Request-Id"])
    (got,) = answers(await exchange(proxy, get(proxy, ALICE_PATH, b"Connection: " + named)))
    assert got.status == 200
    for name, value in _security_headers(proxy).items():
        assert got.values(name) == [value], name
    assert len(got.values(b"X-Request-Id")) == 1


async def test_a_caller_leaving_mid_answer_never_leaves_the_rest_in_the_pool(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * 1024 * 1024)
    _alice_then_bob(upstream, head + SECRET * 1024 * 300)  # the rest never comes
    await exchange(proxy, get(proxy), abort_after=1)
    await upstream.wait_closed(1)
    bob = await _bob(upstream, proxy)
    assert (bob.status, bob.body) == (200, b"bob")


@pytest.mark.parametrize(
    ("alice", "late"),
    [
        (answer(b"alice"), answer(SECRET)),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 51\r\n\r\n", answer(SECRET)),
    ],
    ids=["second-answer", "body-of-304"],
)
async def test_bytes_an_upstream_sends_after_its_answer_never_answer_another_caller(
    upstream: RawUpstream, proxy: DemoStack, alice: bytes, late: bytes
) -> None:
    _alice_then_bob(upstream, alice)
    (first,) = answers(await exchange(proxy, get(proxy)))
    assert SECRET not in first.body
    upstream.writers[1].write(late)  # alice's answer is complete and its connection idle
    await upstream.writers[1].drain()
    await asyncio.sleep(0.2)
    (bob,) = answers(await exchange(proxy, get(proxy, BOB_PATH)))
    assert (bob.status, bob.body) == (200, b"bob")


async def test_upstream_cors_headers_never_reach_a_caller_from_another_origin(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    cors = (
        b"Access-Control-Allow-Origin: https://evil.example\r\n"
        b"Access-Control-Allow-Credentials: true\r\n"
    )
    _alice_then_bob(upstream, answer(b"alice", headers=cors))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.urls["proxy"] + "/_dragoman/session",
            headers={"Authorization": bearer(proxy).decode().partition(": ")[2]},
        ) as session,
    ):
        token = (await session.json())["csrf_token"].encode()
    pair = (b"Cookie: __Host-dragoman-csrf=" + token, b"X-CSRF-Token: " + token)
    data = get(proxy, ALICE_PATH, b"Origin: https://evil.example", *pair)
    (got,) = answers(await exchange(proxy, data))
    assert got.status == 200
    assert not [line for line in got.head.split(b"\r\n") if line.lower().startswith(b"access-")]


async def test_upstream_set_cookie2_is_dropped(upstream: RawUpstream, proxy: DemoStack) -> None:
    _alice_then_bob(upstream, answer(b"alice", headers=b"Set-Cookie2: sid=a; Version=1\r\n"))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert (got.status, got.values(b"Set-Cookie2")) == (200, [])


@pytest.mark.parametrize(
    "override",
    [
        b"X-HTTP-Method-Override: DELETE",
        b"X-HTTP-Method: DELETE",
        b"X-Method-Override: DELETE",
        b"X-Original-URL: /v1/customers/cus_bob/payment-methods",
        b"X-Rewrite-URL: /v1/customers/cus_bob/payment-methods",
        b"X_HTTP_Method_Override: DELETE",
    ],
)
async def test_headers_asking_for_another_method_or_path_never_reach_the_upstream(
    upstream: RawUpstream, proxy: DemoStack, override: bytes
) -> None:
    # The token names this method and path; an upstream that honoured an override would
    # run another operation than the one authorised.
    assert [a.status for a in answers(await exchange(proxy, get(proxy, ALICE_PATH, override)))] == [
        200
    ]
    (got,) = upstream.received
    name = override.partition(b":")[0]
    assert got.values(name) == [] and got.values(name.replace(b"_", b"-")) == []


# -- upstream -> caller: protocol switches and shared caches -----------------------------------


async def test_an_upstream_switching_protocols_is_refused_502_and_never_pooled(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    """Nothing asks the upstream to switch (Upgrade is never forwarded); a 101 relayed to a
    front proxy would make it tunnel raw bytes past whatever it checks."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    _alice_then_bob(upstream, switch + answer(SECRET))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.status == 502
    assert SECRET not in got.body and got.values(b"Upgrade") == []
    await upstream.wait_closed(1)
    bob = await _bob(upstream, proxy)
    assert (bob.status, bob.body) == (200, b"bob")


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (b"public, max-age=600", b"private, max-age=600"),
        (b"max-age=60, s-maxage=600", b"private, max-age=60"),
        (b"Public", b"private"),
        (b"max-age=60", b"private, max-age=60"),
        (b"private, max-age=60", b"private, max-age=60"),
        (b"no-store", b"no-store"),
        (b"public, no-store", b"no-store"),
        (b'private="Set-Cookie", max-age=60', b"private, max-age=60"),
        (b'no-cache="Set-Cookie, X-Note", public', b'private, no-cache="Set-Cookie, X-Note"'),
        (
            b'no-cache="X-Foo,no-store,X-Bar", max-age=600',
            b'private, no-cache="X-Foo,no-store,X-Bar", max-age=600',
        ),
    ],
)
async def test_an_upstream_answer_is_never_left_to_shared_caches(
    upstream: RawUpstream, proxy: DemoStack, sent: bytes, forwarded: bytes
) -> None:
    """Each answer is one customer's: an upstream's public or s-maxage would let a CDN in
    front of dragoman serve it to the next caller (RFC 9111 §3.5)."""
    _alice_then_bob(upstream, answer(b"alice", headers=b"Cache-Control: " + sent + b"\r\n"))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert (got.status, got.values(b"Cache-Control")) == (200, [forwarded])


async def test_several_upstream_cache_control_lines_become_one_private_value(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    lines = b"Cache-Control: public\r\nCache-Control: max-age=30\r\n"
    _alice_then_bob(upstream, answer(b"alice", headers=lines))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.values(b"Cache-Control") == [b"private, max-age=30"]


async def test_an_upstream_answer_without_cache_control_is_no_store(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.values(b"Cache-Control") == [b"no-store"]


async def test_cdn_targeted_cache_headers_of_the_upstream_are_dropped(
    upstream: RawUpstream, proxy: DemoStack
) -> None:
    targeted = b"CDN-Cache-Control: max-age=600\r\nSurrogate-Control: max-age=600\r\n"
    _alice_then_bob(upstream, answer(b"alice", headers=targeted))
    (got,) = answers(await exchange(proxy, get(proxy)))
    assert got.status == 200
    assert got.values(b"CDN-Cache-Control") == [] and got.values(b"Surrogate-Control") == []

"""Forwarding (step 7): header hygiene, streaming both ways, limits, upstream failures.

The upstream here is a real echo server that reports what it received; dragoman sits in
front of it with a catalog of echo operations and the demo's identity and mappings.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from dragoman.demo.runner import DemoStack
from failing_sink import FailingEvent

CUSTOMER = "cus_alice"
ECHO_OPS = [
    ("echo.get", "GET", "/echo/{customer_id}"),
    ("echo.post", "POST", "/echo/{customer_id}"),
    ("echo.head", "HEAD", "/echo/{customer_id}"),
    ("slow.get", "GET", "/slow/{customer_id}"),
    ("stream.get", "GET", "/stream/{customer_id}"),
    ("cookie.get", "GET", "/cookie/{customer_id}"),
    ("cut.get", "GET", "/cut/{customer_id}"),
    ("gzip.get", "GET", "/gzip/{customer_id}"),
    ("pause.post", "POST", "/pause/{customer_id}"),
    ("echo.put", "PUT", "/echo/{customer_id}"),
    ("echo.delete", "DELETE", "/echo/{customer_id}"),
]
STREAM_CHUNKS = 80
CHUNK = b"x" * 65536


class Echo:
    """The upstream: remembers every request it received, whole."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_names": [k.lower() for k in request.headers],
            "body_length": len(body),
            "body": body[:64].decode("latin-1"),
        }
        self.received.append(seen)
        return web.json_response(seen)

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self.received.append({"path_qs": request.raw_path})
        await asyncio.sleep(3)
        return web.json_response({})

    async def pause(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.received.append({"path_qs": request.raw_path})
        await asyncio.sleep(0.2)
        return web.json_response({"created": True}, status=201)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(STREAM_CHUNKS):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    async def cookie(self, request: web.Request) -> web.StreamResponse:
        response = web.json_response({})
        response.set_cookie("upstream_session", "s3cr3t")
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["X-Upstream"] = "yes"
        return response

    async def cut(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000000"})
        await response.prepare(request)
        await response.write(b"y" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def gzipped(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=gzip.compress(b'{"compressed": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/echo/{c}", self.echo)
        app.router.add_route("POST", "/echo/{c}", self.echo)
        app.router.add_get("/slow/{c}", self.slow)
        app.router.add_get("/stream/{c}", self.stream)
        app.router.add_get("/cookie/{c}", self.cookie)
        app.router.add_get("/cut/{c}", self.cut)
        app.router.add_get("/gzip/{c}", self.gzipped)
        app.router.add_post("/pause/{c}", self.pause)
        return app


@pytest.fixture
async def echo(serve: Callable[[web.Application], Any]) -> AsyncIterator[tuple[Echo, str]]:
    upstream = Echo()
    async with serve(upstream.app()) as url:
        yield upstream, url


def echo_overrides(url: str, **upstream: Any) -> dict[str, Any]:
    return {
        "upstream": {"url": url, "read_timeout": 0.5, **upstream},
        "server": {"max_body_bytes": 1024 * 1024},
        "catalog": {
            "operations": [
                {
                    "id": op_id,
                    "method": method,
                    "path": path,
                    "scope": op_id.replace(".", ":"),
                    "customer_param": "customer_id",
                }
                for op_id, method, path in ECHO_OPS
            ]
        },
    }


@pytest.fixture
async def proxied(
    echo: tuple[Echo, str], make_stack: Callable[..., Awaitable[DemoStack]]
) -> tuple[Echo, DemoStack]:
    upstream, url = echo
    return upstream, await make_stack(echo_overrides(url))


def auth(stack: DemoStack, **headers: str) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}", **headers}


def audit(stack: DemoStack) -> list[dict[str, Any]]:
    lines = (stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


async def test_caller_credentials_and_hop_by_hop_headers_are_not_forwarded(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied
    headers = auth(
        stack,
        Cookie="console_session=abc",
        **{
            "X-CSRF-Token": "t0k3n",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
            "X-Real-IP": "6.6.6.6",
            "X-Custom": "kept",
        },
    )
    async with http.get(f"{stack.urls['proxy']}/echo/{CUSTOMER}", headers=headers) as response:
        assert response.status == 200
    names = set(upstream.received[-1]["header_names"])
    for dropped in (
        "cookie",
        "x-csrf-token",
        "proxy-authorization",
        "x-secret-hop",
        "forwarded",
        "x-real-ip",
    ):
        assert dropped not in names
    got = upstream.received[-1]["headers"]
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-custom"] == "kept"
    assert got["authorization"] != headers["Authorization"]


async def test_caller_sent_forwarding_and_client_address_headers_never_reach_the_upstream(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied
    spoofed = {
        "X-Forwarded-Prefix": "/admin",
        "X-Forwarded-Server": "evil.example",
        "X-Forwarded-Ssl": "on",
        "X-Forwarded-Scheme": "https",
        "X-Forwarded-Uri": "/v1/customers/cus_other",
        "X_Forwarded_Prefix": "/admin",
        "X-Original-URI": "/v1/customers/cus_other",
        "True-Client-IP": "6.6.6.6",
        "X-Client-IP": "6.6.6.6",
        "Client-IP": "6.6.6.6",
        "CF-Connecting-IP": "6.6.6.6",
        "Fastly-Client-IP": "6.6.6.6",
        "X-Cluster-Client-IP": "6.6.6.6",
        "Cookie2": "$Version=1",
    }
    headers = auth(stack, **spoofed, **{"X-Custom": "kept"})
    async with http.get(f"{stack.urls['proxy']}/echo/{CUSTOMER}", headers=headers) as response:
        assert response.status == 200
    got = upstream.received[-1]["headers"]
    names = set(upstream.received[-1]["header_names"])
    assert names.isdisjoint(name.lower() for name in spoofed)
    assert {name for name in names if name.startswith("x-forwarded-")} == {
        "x-forwarded-for",
        "x-forwarded-proto",
    }
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-custom"] == "kept"


async def test_the_upstream_gets_a_minted_token_for_this_operation_and_customer(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied
    async with http.post(
        f"{stack.urls['proxy']}/echo/{CUSTOMER}?x=1", headers=auth(stack), data=b"{}"
    ) as response:
        assert response.status == 200
    scheme, _, token = upstream.received[-1]["headers"]["authorization"].partition(" ")
    assert scheme == "Bearer"
    async with http.get(stack.urls["proxy"] + "/.well-known/jwks.json") as response:
        jwks = await response.json()
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(token, key, algorithms=["ES256"], audience="payments-demo")
    assert claims["scope"] == "echo:post"
    assert claims["sub"] == CUSTOMER
    assert claims["htm"] == "POST"
    assert claims["htu"] == f"{stack.settings.upstream.url}/echo/{CUSTOMER}"  # type: ignore[union-attr]
    assert upstream.received[-1]["path_qs"] == f"/echo/{CUSTOMER}?x=1"


async def test_a_valid_client_request_id_is_kept_and_a_bad_one_replaced(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied
    url = f"{stack.urls['proxy']}/echo/{CUSTOMER}"
    async with http.get(url, headers=auth(stack, **{"X-Request-Id": "req-12345678"})) as response:
        assert response.headers["X-Request-Id"] == "req-12345678"
    assert upstream.received[-1]["headers"]["x-request-id"] == "req-12345678"
    forged = "bad id\twith\ttabs"
    async with http.get(url, headers=auth(stack, **{"X-Request-Id": forged})) as response:
        replaced = response.headers["X-Request-Id"]
    assert replaced != forged
    assert upstream.received[-1]["headers"]["x-request-id"] == replaced
    assert audit(stack)[-1]["request_id"] == replaced


async def test_request_bodies_stream_through_intact(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"z" * 65536

    async with http.post(
        f"{stack.urls['proxy']}/echo/{CUSTOMER}", headers=auth(stack), data=chunks()
    ) as response:
        assert response.status == 200
    assert upstream.received[-1]["body_length"] == 8 * 65536


async def test_a_declared_body_over_the_limit_is_refused_before_forwarding(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied
    async with http.post(
        f"{stack.urls['proxy']}/echo/{CUSTOMER}",
        headers=auth(stack),
        data=io.BytesIO(b"a" * (1024 * 1024 + 1)),
    ) as response:
        assert response.status == 413
        assert (await response.json())["code"] == "body_too_large"
    assert upstream.received == []


async def test_a_chunked_body_over_the_limit_is_cut_and_refused(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = proxied

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"a" * 65536

    async with http.post(
        f"{stack.urls['proxy']}/echo/{CUSTOMER}", headers=auth(stack), data=endless()
    ) as response:
        assert response.status == 413
    assert upstream.received == []
    assert audit(stack)[-1]["code"] == "body_too_large"


async def test_responses_stream_back_intact(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    async with http.get(f"{stack.urls['proxy']}/stream/{CUSTOMER}", headers=auth(stack)) as r:
        assert r.status == 200
        total = 0
        async for chunk in r.content.iter_any():
            total += len(chunk)
    assert total == STREAM_CHUNKS * len(CHUNK)


async def test_a_streamed_answer_whose_record_fails_never_reaches_the_caller_whole(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    assert stack.proxy is not None
    stack.proxy.audit._sink = FailingEvent(stack.proxy.audit._sink, "request")
    async with http.get(f"{stack.urls['proxy']}/stream/{CUSTOMER}", headers=auth(stack)) as r:
        assert r.status == 200  # the status line left before the last chunk...
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # ...which never does: the connection is cut instead


async def test_a_small_answer_with_a_declared_length_arrives_whole_with_that_length(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    async with http.get(f"{stack.urls['proxy']}/echo/{CUSTOMER}", headers=auth(stack)) as r:
        body = await r.read()
        assert r.headers["Content-Length"] == str(len(body))
        assert "Transfer-Encoding" not in r.headers
    assert json.loads(body)["path_qs"] == f"/echo/{CUSTOMER}"


async def test_compressed_answers_pass_through_untouched(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    async with http.get(
        f"{stack.urls['proxy']}/gzip/{CUSTOMER}", headers=auth(stack), auto_decompress=False
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await response.read()) == b'{"compressed": true}'


async def test_upstream_cookies_and_hop_by_hop_headers_do_not_reach_the_caller(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    async with http.get(f"{stack.urls['proxy']}/cookie/{CUSTOMER}", headers=auth(stack)) as r:
        assert r.status == 200
        assert "Set-Cookie" not in r.headers
        assert "Keep-Alive" not in r.headers
        assert r.headers["X-Upstream"] == "yes"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Cache-Control"] == "no-store"


async def test_a_slow_upstream_gives_504_with_a_problem_body(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    async with http.get(f"{stack.urls['proxy']}/slow/{CUSTOMER}", headers=auth(stack)) as r:
        assert r.status == 504
        assert r.content_type == "application/problem+json"
        assert (await r.json())["code"] == "upstream_timeout"


async def test_an_unreachable_upstream_gives_502_with_a_problem_body(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack(echo_overrides("http://127.0.0.1:1"))
    async with http.get(f"{stack.urls['proxy']}/echo/{CUSTOMER}", headers=auth(stack)) as r:
        assert r.status == 502
        body = await r.json()
    assert body["code"] == "upstream_unavailable"
    assert audit(stack)[-1]["code"] == "upstream_unavailable"


async def test_an_upstream_cut_mid_body_reaches_the_caller_as_a_truncated_answer(
    proxied: tuple[Echo, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = proxied
    async with http.get(f"{stack.urls['proxy']}/cut/{CUSTOMER}", headers=auth(stack)) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    # The record is written when the proxy's handler returns, just after the cut.
    for _ in range(100):
        record = audit(stack)[-1] if (stack.state_dir / "audit.jsonl").exists() else {}
        if record.get("path", "").startswith("/cut/"):
            break
        await asyncio.sleep(0.02)
    assert record["stream_error"] == "upstream_aborted"
    assert record["upstream_status"] == 200


async def raw_request(url: str, request_line: str, headers: dict[str, str]) -> int:
    """Send a request line exactly as written (clients would normalise the path)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [request_line, f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    "path",
    [
        f"/echo/../echo/{CUSTOMER}",
        f"/echo/%2e%2e/echo/{CUSTOMER}",
        "/echo/cus_bob%2F..%2Fcus_alice",
        f"//echo/{CUSTOMER}",
        f"/echo/..;/echo/{CUSTOMER}",  # Tomcat: /echo/{CUSTOMER}
        f"/echo/.;x/echo/{CUSTOMER}",
    ],
)
async def test_paths_are_never_normalised_into_an_operation(
    proxied: tuple[Echo, DemoStack], path: str
) -> None:
    upstream, stack = proxied
    status = await raw_request(stack.urls["proxy"], f"GET {path} HTTP/1.1", auth(stack))
    assert status in (400, 404)
    assert upstream.received == []


async def test_a_caller_who_leaves_before_the_answer_is_not_audited_as_a_refusal(
    proxied: tuple[Echo, DemoStack],
) -> None:
    upstream, stack = proxied
    host, port = stack.urls["proxy"].removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    headers = auth(stack, **{"Content-Type": "application/json", "Content-Length": "2"})
    lines = [f"POST /pause/{CUSTOMER} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n{}").encode())
    await writer.drain()
    for _ in range(100):  # wait until the upstream has the request, then leave
        if upstream.received:
            break
        await asyncio.sleep(0.01)
    writer.close()

    def requests() -> list[dict[str, Any]]:
        if not (stack.state_dir / "audit.jsonl").exists():
            return []
        return [r for r in audit(stack) if r["event"] == "request"]  # not the write's "forward"

    for _ in range(200):
        if requests():
            break
        await asyncio.sleep(0.02)
    record = requests()[-1]
    assert (record["decision"], record["code"]) == ("allow", None)
    assert record["upstream_status"] == 201
    assert record["stream_error"] == "client_disconnected"


async def test_a_caller_who_stops_reading_and_leaves_is_not_audited_as_an_error(
    proxied: tuple[Echo, DemoStack],
) -> None:
    # The answer's writes wait for the caller's socket to drain; when the caller then
    # hangs up, aiohttp raises ConnectionError("Connection lost"), not a reset: it was
    # recorded as 500 internal_error, with an ERROR traceback, for any caller to cause.
    _upstream, stack = proxied
    assert stack.proxy is not None
    host, port = stack.urls["proxy"].removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    lines = [f"GET /stream/{CUSTOMER} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in auth(stack).items()]
    sock.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    for _ in range(500):  # until the answer is under way, then past what buffers hold
        if stack.proxy.in_flight:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    sock.close()

    def requests() -> list[dict[str, Any]]:
        if not (stack.state_dir / "audit.jsonl").exists():
            return []
        return [r for r in audit(stack) if r["event"] == "request"]

    for _ in range(500):
        if requests():
            break
        await asyncio.sleep(0.02)
    record = requests()[-1]
    assert (record["decision"], record["code"]) == ("allow", None)
    assert record["stream_error"] == "client_disconnected"


class DroppingUpstream:
    """A raw HTTP/1.1 upstream that answers GETs on a kept-alive connection and, for any
    other method, reads the request and closes the connection without answering: what an
    upstream that ran a write and then lost the connection looks like to a client."""

    def __init__(self) -> None:
        self.writes = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if not lines[0].startswith("GET "):
                    self.writes += 1
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_a_write_the_upstream_dropped_is_not_sent_again_with_the_same_token(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession, method: str
) -> None:
    """SEMANTICS §6: writes are not retried. aiohttp by itself resends a PUT or DELETE once
    when a kept-alive connection drops; the upstream would then see the same single-use
    token twice (a replay) for a write that may already have happened."""
    upstream = DroppingUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stack = await make_stack(echo_overrides(f"http://127.0.0.1:{port}"))
        url = f"{stack.urls['proxy']}/echo/{CUSTOMER}"
        async with http.get(url, headers=auth(stack)) as r:  # pools a kept-alive connection
            assert r.status == 200
        body = b"{}" if method == "PUT" else None
        headers = auth(stack, **({"Content-Type": "application/json"} if body else {}))
        async with http.request(method, url, headers=headers, data=body) as r:
            assert r.status == 502
            assert (await r.json())["code"] == "upstream_unavailable"
        assert upstream.writes == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_an_answer_read_until_close_that_the_upstream_reset_reaches_the_caller_cut(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    """An answer with neither a length nor chunks ends where the connection does; when it
    ends in a reset, what came may be a part (a payment's status cut mid-word), and the
    caller must not take it for the whole answer."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"status":"pend')
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stack = await make_stack(echo_overrides(f"http://127.0.0.1:{port}"))
        url = f"{stack.urls['proxy']}/echo/{CUSTOMER}"
        async with http.get(url, headers=auth(stack)) as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        for _ in range(100):
            record = audit(stack)[-1] if (stack.state_dir / "audit.jsonl").exists() else {}
            if record.get("stream_error"):
                break
            await asyncio.sleep(0.02)
        assert record["stream_error"] == "upstream_aborted"
    finally:
        server.close()

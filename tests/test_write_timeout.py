"""A caller that does not read the answer it asked for (`server.write_timeout`): the
slowloris read.

A caller sends a valid request for a large answer and never reads it. Once the socket
buffers are full, each write of the answer waits for the caller; the upstream's
read_timeout does not run meanwhile (its reads are paused for the caller). Before, the
wait had no end: the request held one of the upstream's pooled connections and a place in
max_in_flight for good, and with `upstream.pool_size` such callers every other caller got
504. Now each write waits at most `write_timeout`: the caller's connection is aborted, the
request recorded `client_stalled`, the upstream connection released. A caller that reads
slowly but steadily gets the whole answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from dragoman.demo.runner import DemoStack

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
CHUNK = b"x" * (64 * 1024)
LIMIT = 15.0  # how long a test waits for the server to act, at most


def streaming(chunks: int) -> web.Application:
    """An upstream answering any request with ``chunks`` x 64 KiB, of unknown length."""

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", big)
    return app


def records(stack: DemoStack) -> list[dict[str, Any]]:
    path = stack.state_dir / "audit.jsonl"
    if not path.exists():
        return []
    lines = path.read_text("utf-8").splitlines()
    return [r for line in lines if (r := json.loads(line))["event"] == "request"]


async def first_record(stack: DemoStack) -> dict[str, Any]:
    async with asyncio.timeout(LIMIT):
        while not records(stack):
            await asyncio.sleep(0.05)
    return records(stack)[0]


async def ask(stack: DemoStack, *, rcvbuf: int) -> socket.socket:
    """A raw connection (receive buffer ``rcvbuf``) that has asked for PM, read nothing."""
    url = URL(stack.urls["proxy"])
    assert url.host is not None and url.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    sock.send(
        f"GET {PM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    return sock


@pytest.fixture
async def upstream_8mib(serve: Callable[[web.Application], Any]) -> AsyncIterator[str]:
    async with serve(streaming(128)) as url:
        yield url


async def test_a_caller_that_never_reads_a_large_answer_is_cut_and_recorded_client_stalled(
    make_stack: MakeStack, upstream_8mib: str
) -> None:
    stack = await make_stack({"upstream": {"url": upstream_8mib}, "server": {"write_timeout": 0.3}})
    sock = await ask(stack, rcvbuf=4096)
    try:
        record = await first_record(stack)
    finally:
        sock.close()
    assert (record["decision"], record["upstream_status"]) == ("allow", 200)
    assert record["stream_error"] == "client_stalled"
    assert stack.proxy is not None and stack.proxy.in_flight == 0


async def test_a_caller_that_never_reads_does_not_keep_the_upstream_pool_from_others(
    make_stack: MakeStack, upstream_8mib: str, http: aiohttp.ClientSession
) -> None:
    """With one pooled upstream connection, the stalled caller held it for good: the next
    caller waited read_timeout and got 504 upstream_pool_exhausted."""
    stack = await make_stack(
        {
            "upstream": {"url": upstream_8mib, "pool_size": 1, "read_timeout": LIMIT},
            "server": {"write_timeout": 0.3},
        }
    )
    assert stack.proxy is not None
    sock = await ask(stack, rcvbuf=4096)
    try:
        async with asyncio.timeout(LIMIT):
            while not stack.proxy.in_flight:  # the stalled answer holds the connection
                await asyncio.sleep(0.01)
        token = stack.issuer.token("bob", "acct-2002", roles=["billing_admin"])
        headers = {"Authorization": f"Bearer {token}"}
        url = stack.urls["proxy"] + "/v1/customers/cus_bob/payment-methods"
        async with http.get(url, headers=headers) as response:
            assert response.status == 200
            assert len(await response.read()) == 128 * len(CHUNK)
    finally:
        sock.close()


async def test_a_caller_reading_slowly_but_steadily_gets_the_whole_answer(
    make_stack: MakeStack, serve: Callable[[web.Application], Any]
) -> None:
    async with serve(streaming(32)) as upstream:
        stack = await make_stack({"upstream": {"url": upstream}, "server": {"write_timeout": 0.5}})
        sock = await ask(stack, rcvbuf=16384)
        loop = asyncio.get_running_loop()
        received = bytearray()
        try:
            async with asyncio.timeout(60):
                while data := await loop.sock_recv(sock, 16384):
                    received += data
                    await asyncio.sleep(0.01)  # 1.6 MB/s at most: longer than write_timeout in all
        finally:
            sock.close()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"\r\n0\r\n\r\n")  # the answer's end, not an abort
    record = await first_record(stack)
    assert record["stream_error"] is None

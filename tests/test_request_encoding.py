"""A content-coded request body is forwarded as the caller sent it, byte for byte: dragoman
never decompresses it, so the body the upstream reads always matches the Content-Length it
is told, and nothing hidden in a compressed body can become a second request upstream."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dragoman.demo.runner import DemoStack

SMUGGLED = (
    b'{"card_number": "4000000000000002"}'
    + b"\r\n\r\nGET /echo/cus_bob HTTP/1.1\r\nHost: upstream\r\nContent-Length: 0\r\n\r\n"
    + b" " * 4096
)


class RawUpstream:
    """Records every request as received on the wire: body not decompressed."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def record(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(
            {
                "path": request.raw_path,
                "content_encoding": request.headers.get("Content-Encoding"),
                "content_length": request.headers.get("Content-Length"),
                "body": body,
            }
        )
        return web.json_response({"ok": True})


@pytest.fixture
async def raw_upstream() -> AsyncIterator[tuple[RawUpstream, str]]:
    upstream = RawUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.record)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield upstream, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def stack(
    make_stack: Callable[..., Awaitable[DemoStack]], raw_upstream: tuple[RawUpstream, str]
) -> DemoStack:
    _, url = raw_upstream
    return await make_stack(
        {
            "upstream": {"url": url},
            "catalog": {
                "operations": [
                    {
                        "id": "echo.post",
                        "method": "POST",
                        "path": "/echo/{customer_id}",
                        "scope": "echo:post",
                        "customer_param": "customer_id",
                    }
                ]
            },
        }
    )


async def post_gzip(stack: DemoStack, compressed: bytes) -> int:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.post(
            stack.urls["proxy"] + "/echo/cus_alice",
            data=compressed,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
        ) as response,
    ):
        await response.read()
        return response.status


async def test_a_gzip_request_body_reaches_the_upstream_byte_for_byte(
    stack: DemoStack, raw_upstream: tuple[RawUpstream, str]
) -> None:
    upstream, _ = raw_upstream
    body = json.dumps({"card_number": "4000000000000002", "pad": "x" * 2000}).encode()
    compressed = gzip.compress(body)
    assert await post_gzip(stack, compressed) == 200
    (seen,) = upstream.received
    assert seen["content_encoding"] == "gzip"
    assert seen["body"] == compressed
    assert int(seen["content_length"]) == len(compressed)


async def test_a_request_hidden_in_a_compressed_body_never_reaches_the_upstream(
    stack: DemoStack, raw_upstream: tuple[RawUpstream, str]
) -> None:
    upstream, _ = raw_upstream
    await post_gzip(stack, gzip.compress(SMUGGLED))
    assert [seen["path"] for seen in upstream.received] == ["/echo/cus_alice"]
    assert gzip.decompress(upstream.received[0]["body"]) == SMUGGLED

"""Slow request heads (`server.header_timeout`) and idle kept-alive connections
(`server.keepalive_timeout`): the slowloris read.

A caller that opens a connection and trickles its request head, a byte now and then, was
held until aiohttp's keep-alive timer, an hour by default, which bytes arriving never
restart: each such connection kept a file descriptor and up to 128 buffered header lines
of 33 KB. A few hundred of them left a worker no descriptors for anyone else. Now a head
must be whole within `header_timeout`, counted from the connection's opening (first
request) or from the first byte of the next request (kept-alive connection), and an idle
kept-alive connection is closed after `keepalive_timeout`. A caller that sends its head in
time, however slowly, or its body slowly, is not cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from dragoman.demo.runner import DemoStack
from dragoman.observability.endpoint import MetricsListener
from dragoman.settings import MetricsSettings
from dragoman.side_listener import SideListener

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
SHORT = 0.3
LIMIT = 10.0  # how long a test waits for the server to act, at most
UNFINISHED = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: "


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = URL(url)
    assert parsed.host is not None and parsed.port is not None
    return await asyncio.open_connection(parsed.host, parsed.port)


async def closed_by_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes = b""
) -> bool:
    """Whether the server closes the connection (within LIMIT) without answering, while
    ``trickle`` is sent every 0.1 s."""
    try:
        async with asyncio.timeout(LIMIT):
            while True:
                try:
                    async with asyncio.timeout(0.1):
                        data = await reader.read(1024)
                except TimeoutError:
                    if trickle:
                        writer.write(trickle)
                    continue
                return data == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


async def answer(reader: asyncio.StreamReader) -> int:
    """The status of the next answer on the connection, its body read."""
    async with asyncio.timeout(LIMIT):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    return int(head.split()[1])


async def test_a_request_head_trickled_past_header_timeout_is_closed(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"header_timeout": SHORT}})
    reader, writer = await connect(stack.urls["proxy"])
    writer.write(UNFINISHED)
    assert await closed_by_server(reader, writer, trickle=b"a")


async def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"header_timeout": SHORT}})
    reader, writer = await connect(stack.urls["proxy"])
    assert await closed_by_server(reader, writer)


async def test_the_next_head_on_a_kept_alive_connection_is_bounded_by_header_timeout(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"header_timeout": SHORT}})
    reader, writer = await connect(stack.urls["proxy"])
    writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await answer(reader) == 200
    writer.write(UNFINISHED)
    assert await closed_by_server(reader, writer, trickle=b"a")


async def test_a_kept_alive_connection_idle_past_header_timeout_serves_its_next_request(
    make_stack: MakeStack,
) -> None:
    """Between requests the wait is keepalive_timeout's; header_timeout counts from the
    next request's first byte."""
    stack = await make_stack({"server": {"header_timeout": SHORT, "keepalive_timeout": 30}})
    reader, writer = await connect(stack.urls["proxy"])
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await answer(reader) == 200
        await asyncio.sleep(4 * SHORT)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await answer(reader) == 200
    finally:
        writer.close()


async def test_a_head_sent_slowly_but_whole_within_header_timeout_is_answered(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"header_timeout": 5}})
    reader, writer = await connect(stack.urls["proxy"])
    try:
        for piece in (b"GET /livez HTTP/1.1\r\n", b"Host: x\r\n", b"X-Slow: a\r\n", b"\r\n"):
            writer.write(piece)
            await asyncio.sleep(0.1)
        assert await answer(reader) == 200
    finally:
        writer.close()


async def test_a_body_sent_slowly_is_not_cut_by_header_timeout(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    """Bytes of a body never start the head's clock (body_timeout bounds each wait)."""
    stack = await make_stack({"server": {"header_timeout": SHORT, "body_timeout": 5}})
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    body = b'{"type": "card"}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(stack.urls["proxy"] + PM, data=body, headers=headers) as sent_at_once:
        expected = sent_at_once.status
    reader, writer = await connect(stack.urls["proxy"])
    try:
        writer.write(
            (
                f"POST {PM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        for piece in (body[:4], body[4:8], body[8:12], body[12:]):
            await asyncio.sleep(SHORT)  # 4 x header_timeout in all
            writer.write(piece)
        assert await answer(reader) == expected
    finally:
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"server": {"header_timeout": 30, "keepalive_timeout": SHORT}})
    reader, writer = await connect(stack.urls["proxy"])
    writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await answer(reader) == 200
    assert await closed_by_server(reader, writer)


async def test_the_decision_listener_closes_a_head_trickled_past_header_timeout(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack({"decision": {"enabled": True}, "server": {"header_timeout": SHORT}})
    reader, writer = await connect(stack.decision_url)
    writer.write(UNFINISHED)
    assert await closed_by_server(reader, writer, trickle=b"a")


class Hello(SideListener):
    """A side listener whose runner sets no timeouts of its own, as the metrics one."""

    def make_runner(self) -> web.AppRunner:
        async def hello(_: web.Request) -> web.Response:
            return web.Response(text="hello")

        app = web.Application()
        app.router.add_get("/livez", hello)
        return web.AppRunner(app, access_log=None)


async def test_a_side_listener_closes_a_head_trickled_past_header_timeout() -> None:
    listener = Hello("127.0.0.1", 0, shared=False, header_timeout=SHORT)
    url = await listener.start()
    try:
        reader, writer = await connect(url)
        writer.write(UNFINISHED)
        assert await closed_by_server(reader, writer, trickle=b"a")
    finally:
        await listener.close()


async def test_a_side_listener_closes_an_idle_kept_alive_connection_after_keepalive_timeout() -> (
    None
):
    listener = Hello("127.0.0.1", 0, shared=False, header_timeout=30, keepalive_timeout=SHORT)
    url = await listener.start()
    try:
        reader, writer = await connect(url)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await answer(reader) == 200
        assert await closed_by_server(reader, writer)
    finally:
        await listener.close()


async def test_the_metrics_listener_closes_a_head_trickled_past_the_servers_header_timeout() -> (
    None
):
    metrics = MetricsListener(
        MetricsSettings(enabled=True, port=0),
        CollectorRegistry(),
        shared=False,
        header_timeout=SHORT,
    )
    url = await metrics.start()
    try:
        reader, writer = await connect(url)
        writer.write(UNFINISHED)
        assert await closed_by_server(reader, writer, trickle=b"a")
    finally:
        await metrics.close()

"""The upstream pool (upstream.pool_size): at most that many requests of a worker are at the
upstream at once; the others wait their turn in order of arrival, and a wait longer than
upstream.read_timeout is refused 504, nothing forwarded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from dragoman.demo.runner import DemoStack
from dragoman.upstream_client import UpstreamPool
from overload_support import HeldUpstream

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"


def alice(stack: DemoStack) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    return {"Authorization": f"Bearer {token}"}


async def get(http: aiohttp.ClientSession, stack: DemoStack, query: str) -> tuple[int, str]:
    async with http.get(stack.urls["proxy"] + PM + query, headers=alice(stack)) as answer:
        body = await answer.json()
        return answer.status, body.get("code", "")


async def queued(stack: DemoStack, count: int) -> None:
    """Until ``count`` requests wait in the worker for a pooled connection."""
    assert stack.proxy is not None
    slots = stack.proxy.forwarder._slots
    async with asyncio.timeout(10):
        while len(slots._waiters or ()) < count:
            await asyncio.sleep(0.01)


async def test_requests_past_the_pool_wait_and_reach_the_upstream_in_order(
    make_stack: MakeStack, held: HeldUpstream, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"upstream": {"url": held.url, "pool_size": 2}})
    calls = []
    for n in range(6):
        calls.append(asyncio.create_task(get(http, stack, f"?n={n}")))
        if n < 2:
            await held.wait_for(n + 1)
        else:
            await queued(stack, n - 1)  # each is waiting before the next arrives
    assert held.holding == 2  # the four others wait in the worker, not at the upstream
    held.release.set()
    assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 6
    assert held.most_held == 2
    assert held.paths == [PM + f"?n={n}" for n in range(6)]


async def test_a_wait_for_the_pool_past_read_timeout_is_refused_504(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    """The one pooled connection is busy with an answer that trickles (every byte within
    read_timeout of the last, for longer than read_timeout in all)."""
    seen: list[str] = []

    async def trickle(request: web.Request) -> web.StreamResponse:
        seen.append(request.path_qs)
        answer = web.StreamResponse()
        answer.content_type = "application/json"
        await answer.prepare(request)
        await answer.write(b"[")
        for _ in range(25):  # 2.5 s in all, never more than read_timeout between bytes
            await asyncio.sleep(0.1)
            await answer.write(b" ")
        await answer.write(b"]")
        return answer

    app = web.Application()
    app.router.add_get("/{tail:.*}", trickle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        stack = await make_stack(
            {"upstream": {"url": f"http://127.0.0.1:{port}", "pool_size": 1, "read_timeout": 1.0}}
        )
        busy = asyncio.create_task(
            http.get(stack.urls["proxy"] + PM + "?n=busy", headers=alice(stack))
        )
        while not seen:
            await asyncio.sleep(0.01)
        assert await get(http, stack, "?n=waiting") == (504, "upstream_timeout")
        assert seen == [PM + "?n=busy"]  # the refused one never left
        answer = await busy
        assert answer.status == 200
        await answer.read()
        answer.release()
    finally:
        await runner.cleanup()


class TwoConnectionUpstream:
    """Answers every request on a raw connection (``ok``), holding the first two answers
    until both requests are in, so a pool ends up with two idle connections; keeps each
    connection's writer by the client's port, to send an answer nobody asked for."""

    def __init__(self) -> None:
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.closed: set[int] = set()
        self._first_two = asyncio.Barrier(2)
        self._answered = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers.values():
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        self.writers[port] = writer
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self._answered += 1
                if self._answered <= 2:
                    await self._first_two.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.add(port)


@pytest.mark.parametrize("dirty", [(0,), (1,), (0, 1)], ids=["first", "second", "both"])
async def test_an_idle_connection_something_arrived_on_is_never_handed_out_whatever_its_place(
    dirty: tuple[int, ...],
) -> None:
    upstream = TwoConnectionUpstream()
    await upstream.start()
    pool = UpstreamPool(upstream.url, connect_timeout=5, read_timeout=10)
    try:

        async def fetch() -> bytes:
            answer = await pool.exchange("GET", "/", CIMultiDict(), None)
            try:
                return await answer.read()
            finally:
                answer.release()

        assert await asyncio.gather(fetch(), fetch()) == [b"ok", b"ok"]
        protocols = [proto for proto, _ in pool._idle]
        ports = [proto.transport.get_extra_info("sockname")[1] for proto in protocols]
        assert len(ports) == 2
        for place in dirty:
            upstream.writers[ports[place]].write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET"
            )
        async with asyncio.timeout(10):  # until the stray answers are read in
            while not all(protocols[place].should_close for place in dirty):
                await asyncio.sleep(0.01)
        assert [await fetch(), await fetch()] == [b"ok", b"ok"]
        async with asyncio.timeout(10):  # until the upstream sees them closed
            while not {ports[place] for place in dirty} <= upstream.closed:
                await asyncio.sleep(0.01)
    finally:
        await pool.close()
        await upstream.stop()

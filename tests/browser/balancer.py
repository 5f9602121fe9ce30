"""A small round-robin HTTP reverse proxy for the tests of several dragoman instances behind
one origin: each request goes to the next instance in turn (or to the one ``pin`` names),
with its method, path and query, headers (the Cookie and Host included) and body; the
answer comes back with its status, body and every header (each Set-Cookie), minus the
hop-by-hop ones. It never stores cookies and never follows redirects."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

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
"""Headers of one connection (RFC 9110 §7.6.1), never passed on."""
RECOMPUTED = frozenset({"content-length"})
"""Set again by whoever sends the body on."""


@dataclass(frozen=True, slots=True)
class Served:
    """One request the balancer passed on: to which instance (its index), and the answer."""

    instance: int
    method: str
    path: str
    status: int


@dataclass
class Balancer:
    """Round-robin over ``upstreams`` (base URLs). ``served`` lists every request passed on;
    set ``pin`` to an index to send every request to that instance until it is None again."""

    upstreams: list[str]
    pin: int | None = None
    served: list[Served] = field(default_factory=list)
    _turn: int = field(default=0, init=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("a balancer needs at least one upstream")

    def send_next_to(self, index: int) -> None:
        """Let the round-robin continue from ``index``: the next request goes there."""
        self._turn = index % len(self.upstreams)

    def counts(self) -> list[int]:
        """Requests each instance served, by index."""
        return [sum(1 for s in self.served if s.instance == i) for i in range(len(self.upstreams))]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._pass_on)
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, _: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        ) as http:
            self._http = http
            yield
        self._http = None

    def _next(self) -> int:
        turn, self._turn = self._turn, (self._turn + 1) % len(self.upstreams)
        return turn if self.pin is None else self.pin

    async def _pass_on(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        index = self._next()
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP | RECOMPUTED
        )
        body = await request.read()
        async with self._http.request(
            request.method,
            self.upstreams[index] + request.rel_url.raw_path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        ) as answer:
            content = await answer.read()
            out = CIMultiDict(
                (name, value)
                for name, value in answer.headers.items()
                if name.lower() not in HOP_BY_HOP | RECOMPUTED
            )
        self.served.append(Served(index, request.method, request.path, answer.status))
        return web.Response(status=answer.status, body=content, headers=out)


@asynccontextmanager
async def serving(balancer: Balancer, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``balancer`` on an already bound, listening socket."""
    runner = web.AppRunner(balancer.app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield
    finally:
        await runner.cleanup()

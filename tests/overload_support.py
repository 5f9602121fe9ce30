"""An upstream that holds every request until the test lets it answer: requests in flight
on demand, for the tests of server.max_in_flight and of the upstream pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


class HeldUpstream:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = 0
        self.holding = 0
        self.most_held = 0
        self.paths: list[str] = []
        self._arrivals = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        async with self._arrivals:
            self.arrived += 1
            self.holding += 1
            self.most_held = max(self.most_held, self.holding)
            self.paths.append(request.path_qs)
            self._arrivals.notify_all()
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        return web.json_response({"data": []})

    async def wait_for(self, count: int) -> None:
        """Until ``count`` requests have reached the upstream (and are held there)."""
        async with asyncio.timeout(10):
            async with self._arrivals:
                await self._arrivals.wait_for(lambda: self.arrived >= count)


@asynccontextmanager
async def held_upstream() -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        upstream.release.set()
        await runner.cleanup()

"""A worker's second (or third) listener: an application of its own on a port of its own,
beside the proxy's (the metrics, the decision API). Never the proxy's port: what such a
listener answers (counters, minted tokens) is not for the public side."""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod

from aiohttp import web


class SideListener(ABC):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        shared: bool,
        backlog: int = 128,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``shared``: several workers listen on the port (SO_REUSEPORT). ``ssl_context``:
        serve HTTPS with it (None: plain HTTP)."""
        self._host = host
        self._port = port
        self._shared = shared
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None

    @abstractmethod
    def make_runner(self) -> web.AppRunner:
        """The runner of the application this listener serves."""

    async def start(self) -> str:
        """Listen; returns the base URL (``http://host:port``, ``https://`` with TLS)."""
        runner = self.make_runner()
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(
            runner,
            self._host,
            self._port,
            reuse_port=self._shared or None,
            backlog=self._backlog,
            ssl_context=self._ssl_context,
        )
        await site.start()
        host, port = runner.addresses[0][:2]
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

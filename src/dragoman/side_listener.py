"""A worker's second (or third) listener: an application of its own on a port of its own,
beside the proxy's (the metrics, the decision API). Never the proxy's port: what such a
listener answers (counters, minted tokens) is not for the public side.

Slow callers: like the proxy's, a side listener's connections must send a request head
within ``header_timeout`` and are closed ``keepalive_timeout`` after an answer without a
next request (:class:`~dragoman.timeouts.HeadTimeoutHandler`): they are the same worker's
file descriptors and memory, and aiohttp's own keep-alive default is an hour."""

from __future__ import annotations

from abc import ABC, abstractmethod

from aiohttp import web

from dragoman.settings.server import DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT
from dragoman.timeouts import HeadTimedServer, time_connections
from dragoman.tls import ServerTls, TlsWatch


class SideListener(ABC):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        shared: bool,
        backlog: int = 128,
        tls: ServerTls | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
    ) -> None:
        """``shared``: several workers listen on the port (SO_REUSEPORT). ``tls``: serve
        HTTPS with it, reloading its files while the listener runs (None: plain HTTP).
        ``header_timeout``, ``keepalive_timeout``: as ``server.header_timeout`` and
        ``server.keepalive_timeout``, for a runner that does not set its own (one from
        :func:`~dragoman.app.proxy_runner` does, from the settings it is given)."""
        self._host = host
        self._port = port
        self._shared = shared
        self._backlog = backlog
        self._tls = tls
        self._tls_watch = TlsWatch(tls)
        self._header_timeout = header_timeout
        self._keepalive_timeout = keepalive_timeout
        self._runner: web.AppRunner | None = None

    @abstractmethod
    def make_runner(self) -> web.AppRunner:
        """The runner of the application this listener serves."""

    async def start(self) -> str:
        """Listen; returns the base URL (``http://host:port``, ``https://`` with TLS)."""
        runner = self.make_runner()
        await runner.setup()
        self._runner = runner
        if runner.server is not None and not isinstance(runner.server, HeadTimedServer):
            time_connections(
                runner.server,
                header_timeout=self._header_timeout,
                keepalive_timeout=self._keepalive_timeout,
            )
        site = web.TCPSite(
            runner,
            self._host,
            self._port,
            reuse_port=self._shared or None,
            backlog=self._backlog,
            ssl_context=None if self._tls is None else self._tls.context,
        )
        await site.start()
        self._tls_watch.start()
        host, port = runner.addresses[0][:2]
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://{host}:{port}"

    async def close(self) -> None:
        await self._tls_watch.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

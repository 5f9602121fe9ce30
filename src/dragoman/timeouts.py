"""Time limits on awaits that never lose a cancellation, and on a connection's request head.

``asyncio.wait_for`` on Python 3.11 returns the awaited result when its task is cancelled
just as that work completes (CPython gh-86296, fixed in 3.12): the cancellation is lost. A
background loop asked to stop then goes on, and whoever awaits its end waits for good: a
worker's key-set refresh loop, cancelled as a refresh's query returned, hung the worker's
shutdown. ``asyncio.timeout`` counts cancellations and raises them. ``asyncio.wait_for`` is
banned in this package (ruff, pyproject.toml); use :func:`within`.

:class:`HeadTimeoutHandler` bounds the time a caller takes to send a request head
(``server.header_timeout``): aiohttp has no such limit of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, ClassVar, TypeVar

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

T = TypeVar("T")

log = logging.getLogger(__name__)


async def within(seconds: float | None, work: Awaitable[T]) -> T:
    """``await work`` for at most ``seconds`` (None: no limit); TimeoutError past it."""
    async with asyncio.timeout(seconds):
        return await work


class HeadTimeoutHandler(RequestHandler):
    """aiohttp's connection handler, which closes a connection whose request head is not
    complete ``header_timeout`` seconds after it began: after the connection opened, for
    its first request; after the first byte of the next one, on a kept-alive connection
    (the wait before that byte is aiohttp's ``keepalive_timeout``).

    aiohttp's only timer on a connection that has not sent a whole head is its
    ``keepalive_timeout``, and bytes trickling in do not restart it: past the parser's
    limits each such connection may buffer 128 header lines for that long. The clock stops
    when a head is complete (or refused by the parser); bytes of a request's body never
    start it (``server.body_timeout`` bounds those). Bytes of a pipelined head that arrive
    while an earlier request is handled do not start it either: such a head, if nothing
    more comes, is bounded by ``keepalive_timeout``.

    It reads three of aiohttp's internals (3.14): ``_waiter``, pending while the connection
    waits for a request, as aiohttp's own keep-alive check reads it; ``_request_count``,
    counting the heads parsed; ``_loop``."""

    def __init__(self, manager: Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def _waiting_for_a_request(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def _start_head_clock(self) -> None:
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_late)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._waiting_for_a_request():
            log.debug("closing a connection whose request head took past header_timeout")
            self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_clock()  # the first request's head

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting_for_a_request()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._stop_head_clock()  # a head is complete (or refused)
        elif waiting and data and self._head_timer is None:
            self._start_head_clock()  # the first bytes of the next request's head

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)


class HeadTimedServer(Server):
    """A :class:`~aiohttp.web_server.Server` whose connections are :attr:`handler` with
    :attr:`header_timeout` (and, when set, :attr:`keepalive_timeout`). aiohttp builds its
    Server itself; a runner makes it one of these by setting its class
    (:func:`time_connections`), which changes nothing else about it."""

    handler: ClassVar[type[HeadTimeoutHandler]] = HeadTimeoutHandler
    header_timeout: ClassVar[float]
    keepalive_timeout: ClassVar[float | None] = None

    def __call__(self) -> RequestHandler:
        kwargs = dict(self._kwargs)
        if self.keepalive_timeout is not None:
            kwargs["keepalive_timeout"] = self.keepalive_timeout
        return self.handler(self, loop=self._loop, header_timeout=self.header_timeout, **kwargs)


def time_connections(
    server: Server,
    *,
    header_timeout: float,
    keepalive_timeout: float | None = None,
    handler: type[HeadTimeoutHandler] = HeadTimeoutHandler,
) -> None:
    """Make ``server``'s connections from now on ``handler`` with ``header_timeout`` and
    (when given) ``keepalive_timeout``, in place of aiohttp's :class:`RequestHandler`."""
    server.__class__ = type(
        "HeadTimedServer",
        (HeadTimedServer,),
        {
            "handler": handler,
            "header_timeout": header_timeout,
            "keepalive_timeout": keepalive_timeout,
        },
    )

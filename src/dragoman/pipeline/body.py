"""Reading a caller's body with a bound on each wait (``server.body_timeout``).

A caller that sends its head and part of its body, then nothing (or a chunk the parser
cannot read, which aiohttp answers only once the handler is done), leaves the reader
waiting. Without a bound that wait is forever: a forwarded write holds one of the
upstream's pooled connections and a place in ``server.max_in_flight`` and never gets its
record; a hundred such connections from one caller take every upstream slot and the other
callers get 504. Each wait for the next bytes is bounded, as nginx's
``client_body_timeout`` bounds it, and a body that stops arriving is refused 408
``body_timeout``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from dragoman.pipeline.errors import BodyTimeout


async def next_chunk(request: web.Request, wait: float) -> bytes:
    """The body's next bytes (``b""`` at its end). Raises :class:`BodyTimeout` when none
    arrive within ``wait`` seconds (each read bounded on its own, as nginx bounds it)."""
    try:
        async with asyncio.timeout(wait):
            return await request.content.readany()
    except TimeoutError:
        raise BodyTimeout("body_stalled") from None

"""``Expect: 100-continue`` answered once a request is authorised, not when it arrives.

aiohttp sends ``100 Continue`` as soon as a route matches, before any handler runs, so
every caller, signed in or not, was invited to send its body. On the routes that read a
body, dragoman defers that answer. Nothing is sent on arrival. :func:`send_continue` sends
the 100 right before the body is first read. By then the caller is authenticated, mapped
and authorised, and for a forwarded request the upstream connection is open.

A request refused before that is answered with ``Connection: close``
(:func:`close_if_waiting`). Its caller may still send the body, or may not (RFC 9110
§10.1.1), so what follows on the connection could be either the body or the next
request. Only closing the connection leaves no doubt.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

_WAITING = web.RequestKey("dragoman.waiting_for_continue", bool)


async def defer_continue(request: web.Request) -> None:
    """The routes' ``expect_handler``. It refuses an expectation other than
    ``100-continue`` with 417, as aiohttp does, and sends nothing for that one."""
    if request.version != HttpVersion11:
        return  # HTTP/1.0 has no 100 (Continue): aiohttp ignores Expect there too
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    request[_WAITING] = True


async def send_continue(request: web.Request) -> None:
    """Before the first read of the body: the 100 its caller waits for, if it waits."""
    if request.get(_WAITING):
        request[_WAITING] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper starts after the 100


def close_if_waiting(request: web.Request, response: web.StreamResponse) -> None:
    """Close the connection after ``response`` if its caller still waits for a 100."""
    if request.get(_WAITING):
        response.force_close()

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

Any other expectation is refused 417 ``expectation_failed`` by the pipeline
(:func:`check_expectation`), recorded like every refusal, and its connection closed too.
aiohttp's own 417 was plain text, and the request left no audit record.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from dragoman.pipeline.errors import ExpectationFailed

_WAITING = web.RequestKey("dragoman.waiting_for_continue", bool)
_UNMET = web.RequestKey("dragoman.expectation_unmet", bool)


async def defer_continue(request: web.Request) -> None:
    """The routes' ``expect_handler``: it sends nothing, and notes whether the caller
    waits for a 100 or expects something else (:func:`check_expectation`)."""
    if request.version != HttpVersion11:
        return  # HTTP/1.0 has no 100 (Continue): aiohttp ignores Expect there too
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        request[_WAITING] = True
    else:
        request[_UNMET] = True


def check_expectation(request: web.Request) -> None:
    """Refuse an expectation other than ``100-continue``: none can be met."""
    if request.get(_UNMET):
        raise ExpectationFailed()


def waiting_for_continue(request: web.Request) -> bool:
    """Whether the caller waits for a 100 (Continue) that was not sent yet."""
    return bool(request.get(_WAITING))


async def send_continue(request: web.Request) -> None:
    """Before the first read of the body: the 100 its caller waits for, if it waits."""
    if request.get(_WAITING):
        request[_WAITING] = False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper starts after the 100


def close_if_waiting(request: web.Request, response: web.StreamResponse) -> None:
    """Close the connection after ``response`` if its caller still waits for a 100, or
    expected something else (it may be sending its body or not)."""
    if request.get(_WAITING) or request.get(_UNMET):
        response.force_close()

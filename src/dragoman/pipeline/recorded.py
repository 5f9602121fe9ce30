"""An answer of dragoman's own endpoints (session, whoami, registration) that leaves only
once its request's record is written (SEMANTICS §6: fail closed).

The forwarded requests have their own, streaming version of this rule
(:meth:`dragoman.app.Proxy.commit`); these endpoints answer small JSON bodies that name a
session's token, the caller's customer or a link, so none may leave unrecorded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import AuditUnavailable
from dragoman.pipeline.problem import refusal


async def recorded_answer(
    ctx: RequestContext,
    answer: Callable[[], Awaitable[web.StreamResponse]],
    *,
    record: Callable[[], bool],
    headers: Callable[[], Mapping[str, str]],
    where: str,
) -> web.StreamResponse:
    """``answer()``'s response, or the problem answer for what stopped it, once ``record()``
    has written the request's record (True when written). An answer whose record cannot
    be written becomes 503 ``audit_unavailable``; a refusal stays as it is (its record
    failing changes nothing the caller may learn). A request cancelled on the way (the
    caller left) is still recorded. ``headers()`` gives a problem answer's headers."""
    recorded = False
    try:
        try:
            response = await answer()
        except Exception as error:
            response = refusal(ctx, error, headers=headers(), where=where)
        recorded = True
        if not record() and ctx.denial is None:
            unrecorded = AuditUnavailable("audit_write_failed")
            return refusal(ctx, unrecorded, headers=headers(), where=where)
        return response
    finally:
        if not recorded:  # cancelled: the caller is gone, the record is still written
            record()

"""RFC 9457 problem details for denials."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from dragoman.pipeline.errors import Denial, InternalError

if TYPE_CHECKING:
    from dragoman.pipeline.context import RequestContext

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


def problem_body(
    *, code: str, title: str, status: int, detail: str, audit_id: str
) -> dict[str, object]:
    return {
        "type": f"urn:dragoman:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "audit_id": audit_id,
    }


def problem_json(denial: Denial, *, audit_id: str) -> str:
    """The problem document of ``denial``, as ASCII JSON (non-ASCII escaped)."""
    body = problem_body(
        code=denial.code,
        title=denial.title,
        status=denial.status,
        detail=denial.detail,
        audit_id=audit_id,
    )
    # Extensions never override the standard members.
    return json.dumps({**denial.extensions(), **body})


def problem_response(
    denial: Denial,
    *,
    audit_id: str,
    headers: Mapping[str, str],
    status: int | None = None,
) -> web.Response:
    """The problem answer; ``status`` overrides the denial's own (a gateway contract that
    understands only some statuses)."""
    response = web.Response(
        status=denial.status if status is None else status,
        body=problem_json(denial, audit_id=audit_id).encode(),
        content_type=PROBLEM_TYPE,
    )
    response.headers.update(headers)
    response.headers.update(denial.headers())
    response.headers["Cache-Control"] = "no-store"
    if denial.closes_connection:
        response.force_close()
    return response


def refusal(
    ctx: RequestContext, error: Exception, *, headers: Mapping[str, str], where: str
) -> web.Response:
    """The problem answer for what stopped a request, recorded on ``ctx`` for its audit
    record: a denial as it is; anything else is logged with its traceback (call this from
    the ``except`` block) and answered 500 internal_error."""
    if isinstance(error, Denial):
        ctx.denial = error
    else:
        log.exception("unexpected error in %s (audit id %s)", where, ctx.audit_id)
        ctx.denial = InternalError()
    return problem_response(ctx.denial, audit_id=ctx.audit_id, headers=headers)

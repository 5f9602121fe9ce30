"""RFC 9457 problem details for denials."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from dragoman.pipeline.errors import Denial

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


def problem_response(denial: Denial, *, audit_id: str, headers: Mapping[str, str]) -> web.Response:
    body = problem_body(
        code=denial.code,
        title=denial.title,
        status=denial.status,
        detail=denial.detail,
        audit_id=audit_id,
    )
    body = {**denial.extensions(), **body}  # extensions never override the standard members
    response = web.Response(
        status=denial.status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
    )
    response.headers.update(headers)
    response.headers.update(denial.headers())
    response.headers["Cache-Control"] = "no-store"
    return response

"""How each gateway reads dragoman's answer.

Both: allow is ``200`` with ``Authorization: Bearer <minted token>`` for the gateway to set
on the upstream request (replacing the caller's), ``X-Request-Id``, and any header a
customer binding injects. Deny carries the problem+json the caller should see.

- Envoy ``ext_authz`` (HTTP service) passes a 4xx denial's status, body and the allowed
  headers to the caller as they are; a 5xx is an error of the authorization service to
  Envoy, which answers its ``status_on_error`` (503 in deploy/envoy/) without our body. On
  allow it removes the headers named in ``x-envoy-auth-headers-to-remove`` (the caller's
  cookie and CSRF header) from the upstream request.
- nginx ``auth_request`` only understands 2xx, 401 and 403 (anything else becomes a 500).
  A denial is answered 401 (unauthenticated, step-up) or 403, and names its real status and
  its problem in ``X-Dragoman-Status`` and ``X-Dragoman-Problem``, which the configuration
  in deploy/nginx/ hands to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from dragoman.catalog.overrides import OVERRIDE_HEADERS
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import Denial
from dragoman.pipeline.problem import problem_json, problem_response

STATUS_HEADER = "X-Dragoman-Status"
PROBLEM_HEADER = "X-Dragoman-Problem"
ENVOY_REMOVE = "x-envoy-auth-headers-to-remove"
CALLER_CREDENTIALS = "cookie, x-csrf-token"
"""What the upstream must never see of the caller's (Authorization is replaced)."""
ENVOY_REMOVED = ", ".join([CALLER_CREDENTIALS, *sorted(OVERRIDE_HEADERS)])
"""What Envoy removes before forwarding: the caller's credentials, and the headers asking
for another method or path (refused when the check request carries them; removed too in
case Envoy's ``allowed_headers`` kept them from the check)."""


def allow(ctx: RequestContext, headers: Mapping[str, str], *, envoy: bool) -> web.Response:
    assert ctx.minted is not None  # the pipeline ran to its end
    response = web.Response(status=200)
    response.headers.update(headers)
    response.headers.update(ctx.forward_headers)
    response.headers["Authorization"] = f"Bearer {ctx.minted.value}"
    response.headers["X-Request-Id"] = ctx.request_id
    response.headers["Cache-Control"] = "no-store"
    if envoy:
        response.headers[ENVOY_REMOVE] = ENVOY_REMOVED
    return response


def deny(
    denial: Denial, ctx: RequestContext, headers: Mapping[str, str], *, envoy: bool
) -> web.Response:
    if envoy:
        return problem_response(denial, audit_id=ctx.audit_id, headers=headers)
    response = problem_response(
        denial,
        audit_id=ctx.audit_id,
        headers=headers,
        status=401 if denial.status == 401 else 403,
    )
    response.headers[STATUS_HEADER] = str(denial.status)
    # ASCII JSON without line breaks: json.dumps escapes everything else.
    response.headers[PROBLEM_HEADER] = problem_json(denial, audit_id=ctx.audit_id)
    return response

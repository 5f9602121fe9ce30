"""``/_dragoman/registration``: the caller links (POST) or unlinks (DELETE) its own cloud
account, over HTTP. The proxy answers it itself; nothing is forwarded.

::

    POST   /_dragoman/registration  {"customer": "cus_..."}  201 the new, verified link
    DELETE /_dragoman/registration                            200 the revoked link

Both change state, so they pass the pipeline's own guards first, the proxy's very stages in
its order: authentication (step 1), the browser checks (step 2: Origin on the allow-list,
Sec-Fetch-Site not cross-site), then CSRF (a browser request needs its session's valid
double-submit pair, as ``browser.csrf`` says; :mod:`dragoman.browser.csrf`). A POST body
must be ``application/json`` (415 otherwise: a text/plain or form body is what a cross-site
page may send without a preflight), at most :data:`MAX_BODY_BYTES`, and an object naming
only ``customer``: the cloud account is the caller's own, from its verified credential, and
a body that names one is refused (400). :class:`dragoman.mapping.registration.Registrar`
decides the rest.

Every answer carries the security headers, CORS headers for allowed origins and
``X-Request-Id``; a refusal is problem+json with its stable code. Every request writes one
audit record (``event: "registration"``, with the mapping id and the customer's blind
index), besides the mapping records the registrar writes (``event: "mapping"``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from dragoman.audit.record import request_record
from dragoman.browser.cors import CorsPolicy
from dragoman.browser.headers import answer_headers
from dragoman.catalog.model import Operation
from dragoman.mapping.audit import MappingAuditor
from dragoman.mapping.entity import AccountMapping
from dragoman.mapping.platform import PlatformClient
from dragoman.mapping.registration import CUSTOMER_ID, Registrar, open_registrar
from dragoman.mapping.store import MappingStore
from dragoman.pipeline.body import next_chunk
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    AuditUnavailable,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from dragoman.pipeline.expect import check_expectation, close_if_waiting, send_continue
from dragoman.pipeline.recorded import recorded_answer
from dragoman.pipeline.stage import Stage, guard_stages
from dragoman.settings import Settings
from dragoman.settings.server import DEFAULT_BODY_TIMEOUT

log = logging.getLogger(__name__)

REGISTRATION_PATH = "/_dragoman/registration"
EVENT = "registration"
MAX_BODY_BYTES = 4096
GUARDS = ("authenticate", "browser_checks", "csrf")
"""The names of the pipeline stages registration runs first, in this order."""


class AuditWriter(Protocol):
    """The proxy's audit trail: writes records (True once written); ``broken`` while its
    sink fails."""

    broken: bool

    def write(self, record: dict[str, object]) -> bool: ...


def mapping_view(mapping: AccountMapping) -> dict[str, Any]:
    """What the caller is told of its link (its own account and customer, no evidence)."""
    return {
        "id": mapping.id,
        "status": mapping.status.value,
        "cloud_account": mapping.cloud_account,
        "customer": mapping.payment_customer,
        "verification_method": mapping.verification_method,
        "created_at": mapping.created_at.isoformat(),
        "created_by": mapping.created_by,
        "last_validated_at": mapping.last_validated_at.isoformat(),
        "version": mapping.version,
    }


@dataclass(slots=True)
class _Exchange:
    ctx: RequestContext
    status: int | None = None
    customer_index: str | None = None
    """Blind index of the customer asked for (the request record names it on refusals)."""


class RegistrationEndpoint:
    def __init__(
        self,
        registrar: Registrar,
        *,
        store: MappingStore,
        guards: Sequence[Stage],
        cors: CorsPolicy,
        headers: Mapping[str, str],
        audit: AuditWriter,
        context: Callable[[web.Request], RequestContext],
        limit: Callable[[RequestContext], Awaitable[None]] | None = None,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        """``limit`` counts each request against the caller's per-account rate limits (one
        account must not hammer the platform's customer reads); ``body_timeout``: the
        longest wait for the next bytes of a body."""
        self._limit = limit
        self._body_timeout = body_timeout
        self._registrar = registrar
        self._codec = store.codec
        self._guards = guard_stages(guards, GUARDS, "registration")
        self._cors = cors
        self._headers = headers
        self._audit = audit
        self._context = context

    async def create(self, request: web.Request) -> web.StreamResponse:
        """POST: link the caller's account to the customer named in the body."""
        return await self._serve(request, self._create)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """DELETE: revoke the caller's live link."""
        return await self._serve(request, self._delete)

    async def _create(self, exchange: _Exchange) -> AccountMapping:
        ctx = exchange.ctx
        customer = await _customer_of(ctx.request, self._body_timeout)
        exchange.customer_index = self._codec.customer_index(customer)
        assert ctx.principal is not None
        mapping = await self._registrar.register(ctx.principal, customer, request=ctx.audit_id)
        exchange.status = 201
        return mapping

    async def _delete(self, exchange: _Exchange) -> AccountMapping:
        ctx = exchange.ctx
        assert ctx.principal is not None
        mapping = await self._registrar.unlink(ctx.principal, request=ctx.audit_id)
        exchange.status = 200
        return mapping

    async def _serve(
        self,
        request: web.Request,
        action: Callable[[_Exchange], Awaitable[AccountMapping]],
    ) -> web.StreamResponse:
        response = await self._answer(request, action)
        close_if_waiting(request, response)
        return response

    async def _answer(
        self,
        request: web.Request,
        action: Callable[[_Exchange], Awaitable[AccountMapping]],
    ) -> web.StreamResponse:
        exchange = _Exchange(self._context(request))
        ctx = exchange.ctx

        async def answer() -> web.StreamResponse:
            if self._audit.broken:
                raise AuditUnavailable()
            check_expectation(request)
            for guard in self._guards:
                await guard(ctx)
            if self._limit is not None:
                await self._limit(ctx)
            # The change itself is in its mapping records, written before its commit; the
            # answer, which names the link, leaves only with this request's record.
            ctx.mapping = await action(exchange)
            response = web.Response(
                status=exchange.status or 200,
                body=json.dumps(mapping_view(ctx.mapping)).encode(),
                content_type="application/json",
            )
            response.headers.update(self._response_headers(request, ctx))
            response.headers["Cache-Control"] = "no-store"
            return response

        return await recorded_answer(
            ctx,
            answer,
            record=lambda: self._record(exchange),
            headers=lambda: self._response_headers(request, ctx),
            where="registration",
        )

    def _record(self, exchange: _Exchange) -> bool:
        """Write the request's record; False if it could not be written."""
        ctx = exchange.ctx
        record = request_record(ctx, event=EVENT)
        if ctx.denial is None:
            record["status"] = exchange.status
        if ctx.mapping is None and exchange.customer_index is not None:
            record["customer"] = exchange.customer_index
        return self._audit.write(record)

    def _response_headers(self, request: web.Request, ctx: RequestContext) -> dict[str, str]:
        return answer_headers(self._headers, self._cors, request, ctx.request_id)


async def _customer_of(request: web.Request, body_timeout: float) -> str:
    """The customer named by a POST body (exactly ``{"customer": "..."}``)."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("content_type_not_json")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    await send_continue(request)
    data = bytearray()
    while len(data) <= MAX_BODY_BYTES:
        chunk = await next_chunk(request, body_timeout)
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: arrays nested a thousand deep
        raise BadRequest("body_invalid", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("body_invalid", "The body must be a JSON object.")
    if set(body) != {"customer"}:
        raise BadRequest(
            "body_invalid",
            'The body names exactly one field, "customer"; the cloud account is the'
            " caller's own, from its credential.",
        )
    customer = body["customer"]
    if not isinstance(customer, str) or not CUSTOMER_ID.fullmatch(customer):
        raise BadRequest("customer_invalid", "The customer id is not well-formed.")
    return customer


def open_registration(
    settings: Settings,
    *,
    store: MappingStore,
    platform: PlatformClient | None,
    audit: AuditWriter,
    catalog: list[Operation],
    guards: Sequence[Stage],
    cors: CorsPolicy,
    headers: Mapping[str, str],
    context: Callable[[web.Request], RequestContext],
    limit: Callable[[RequestContext], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
) -> RegistrationEndpoint:
    """The endpoint, wired to the proxy's components (built once, at start). ``guards`` are
    the proxy's first stages: authenticate, browser checks, CSRF (see :data:`GUARDS`)."""
    auditor = MappingAuditor(audit.write, store.codec, clock=clock)
    registrar = open_registrar(
        settings, store=store, platform=platform, auditor=auditor, catalog=catalog, clock=clock
    )
    return RegistrationEndpoint(
        registrar,
        store=store,
        guards=guards,
        cors=cors,
        headers=headers,
        audit=audit,
        context=context,
        limit=limit,
        body_timeout=settings.server.body_timeout,
    )

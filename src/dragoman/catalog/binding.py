"""Customer bindings as a pipeline stage (after step 4): every place a request names the
customer must name the mapped one (SEMANTICS §4: the customer comes from the mapping, never
from the caller), read the way the upstream will read it.

For each binding of the matched operation:

- ``path``: the decoded path parameter (the matcher has already refused encoded
  separators, dot segments and bad escapes, so the upstream decodes the same segment).
- ``query``: :mod:`dragoman.catalog.binding_query` (one candidate, exactly spelled).
- ``header``: one field line, no comma list, UTF-8 text (a byte that is not UTF-8 reads
  differently to each server); any other header whose name differs only by ``_`` for
  ``-`` (CGI/WSGI servers read them alike) makes it ambiguous.
- ``body``: the JSON body is buffered (up to ``server.max_body_bytes``), must be
  ``application/json`` without content coding, strictly parsed
  (:mod:`dragoman.catalog.binding_json`), and the member at the pointer compared. What is
  forwarded is exactly the checked bytes, or the re-serialised document after an inject.

A ``report_only`` binding (enforce mode only) records its refusal as ``would_deny`` and
lets the request go on unchanged (:mod:`dragoman.pipeline.report_only`).

``enforce``: the value must be the mapped customer. ``inject``: dragoman writes the mapped
customer there when the caller left it out, keeps it when equal, and refuses another value.
Where dragoman does not forward the request itself (the decision API: a gateway forwards
what the caller sent), it cannot rewrite the query or the body, so an inject binding there
is enforced (``rewrites=False``); a header it injects is handed to the gateway.
Refusals are 403 ``customer_mismatch`` with reason ``customer_absent``, ``customer_other`` or
``customer_ambiguous``; nothing is forwarded. Values are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from dragoman.catalog.binding_json import (
    ABSENT,
    AmbiguousJson,
    InvalidJson,
    PointerUnplaceable,
    parse_strict,
    place,
    pointer_tokens,
    resolve,
    serialise,
)
from dragoman.catalog.binding_query import read_parameter, with_parameter
from dragoman.catalog.model import CustomerBinding
from dragoman.pipeline.body import next_chunk
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import (
    BadRequest,
    CustomerMismatch,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from dragoman.pipeline.expect import send_continue
from dragoman.pipeline.report_only import report
from dragoman.settings.server import DEFAULT_BODY_TIMEOUT

_DETAILS = {
    "customer_absent": "The request does not name the customer where this operation needs it.",
    "customer_other": "The request names a customer other than the caller's.",
    "customer_ambiguous": (
        "The request names the customer more than once or in a form that may be read"
        " differently; name it once, plainly."
    ),
}


def refuse(reason: str) -> CustomerMismatch:
    return CustomerMismatch(reason, _DETAILS[reason])


def _same(value: object, customer: str) -> bool:
    if not isinstance(value, str):
        return False
    # surrogatepass: a lone surrogate (a byte that was not UTF-8) encodes to bytes no valid
    # customer id holds, so it compares unequal instead of raising.
    return hmac.compare_digest(value.encode("utf-8", "surrogatepass"), customer.encode())


def _not_utf8(value: str) -> bool:
    """A value that held bytes that are not UTF-8 (aiohttp decodes header values with
    ``surrogateescape``, so each such byte is a lone surrogate here)."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class CustomerBindingStage:
    name = "customer_binding"

    def __init__(
        self,
        *,
        max_body_bytes: int,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        rewrites: bool = True,
    ) -> None:
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout
        self._rewrites = rewrites

    async def __call__(self, ctx: RequestContext) -> None:
        assert ctx.operation is not None and ctx.mapping is not None  # earlier stages
        customer = ctx.mapping.payment_customer
        for binding in ctx.operation.bindings:
            if not binding.report_only:
                await self._check(ctx, binding, customer)
                continue
            try:
                await self._check(ctx, binding, customer)
            except (CustomerMismatch, BadRequest, UnsupportedMediaType) as denial:
                # Checked before the body is read or with it read whole: what is forwarded
                # is still the caller's request, untouched. A body over the limit
                # (PayloadTooLarge) or that stopped arriving (BodyTimeout) is half read,
                # and refused whatever the mode.
                report(ctx, binding.rule(ctx.operation.id), denial)

    async def _check(self, ctx: RequestContext, binding: CustomerBinding, customer: str) -> None:
        if binding.location == "path":
            if not _same(ctx.path_params[binding.name], customer):
                raise refuse("customer_other")
        elif binding.location == "query":
            self._query(ctx, binding, customer, self._rewrites)
        elif binding.location == "header":
            self._header(ctx, binding, customer)
        else:
            await self._body(ctx, binding, customer)

    # -- query -----------------------------------------------------------------------------

    @staticmethod
    def _query(
        ctx: RequestContext, binding: CustomerBinding, customer: str, rewrites: bool
    ) -> None:
        query = ctx.forward_query
        if query is None:
            query = ctx.request.raw_path.partition("?")[2]
        reading = read_parameter(query, binding.name)
        if reading.ambiguous:
            raise refuse("customer_ambiguous")
        if reading.value is None:
            if binding.mode != "inject" or not rewrites:
                raise refuse("customer_absent")
            ctx.forward_query = with_parameter(query, binding.name, customer)
        elif not _same(reading.value, customer):
            raise refuse("customer_other")

    # -- header ----------------------------------------------------------------------------

    @staticmethod
    def _header(ctx: RequestContext, binding: CustomerBinding, customer: str) -> None:
        wanted = binding.name.replace("_", "-")
        lines = [
            (name, value)
            for name, value in ctx.request.headers.items()
            if name.lower().replace("_", "-") == wanted
        ]
        if len(lines) > 1 or any(name.lower() != binding.name for name, _ in lines):
            raise refuse("customer_ambiguous")
        if not lines:
            if binding.mode != "inject":
                raise refuse("customer_absent")
            ctx.forward_headers[binding.name] = customer
            return
        value = lines[0][1]
        # Bytes that are not UTF-8 read differently to each server (Latin-1, replaced, refused).
        if "," in value or _not_utf8(value):
            raise refuse("customer_ambiguous")
        if not _same(value, customer):
            raise refuse("customer_other")
        # What was checked is what the upstream gets: forwarded headers are set after the
        # caller's hop-by-hop ones are dropped, so `Connection: <name>` cannot remove it.
        ctx.forward_headers[binding.name] = value

    # -- body ------------------------------------------------------------------------------

    async def _body(self, ctx: RequestContext, binding: CustomerBinding, customer: str) -> None:
        if ctx.forward_body is None:
            request = ctx.request
            if request.body_exists:
                # Before reading: aiohttp would decode a content coding while reading.
                self._check_media_type(request)
                # The type the body was checked as goes with it, whatever the caller's
                # Connection header names (forwarded headers are set after that drop).
                ctx.forward_headers["Content-Type"] = request.headers["Content-Type"]
            ctx.forward_body = await self._read(request) if request.body_exists else b""
        raw = ctx.forward_body
        document: Any = self._document(raw) if raw else ABSENT
        tokens = pointer_tokens(binding.name)
        found = ABSENT if document is ABSENT else resolve(document, tokens)
        if found is not ABSENT:
            if not _same(found, customer):
                raise refuse("customer_other")
            return
        if binding.mode != "inject" or not self._rewrites:
            raise refuse("customer_absent")
        try:
            placed = place({} if document is ABSENT else document, tokens, customer)
        except PointerUnplaceable:
            raise BadRequest(
                "customer_unplaceable",
                "The body has no object where this operation places the customer.",
            ) from None
        ctx.forward_body = serialise(placed)
        if document is ABSENT:
            ctx.forward_headers["content-type"] = "application/json"

    async def _read(self, request: web.Request) -> bytes:
        """The whole body, refused (413) past the limit; the stream is consumed once."""
        await send_continue(request)
        chunks: list[bytes] = []
        size = 0
        while chunk := await next_chunk(request, self._body_timeout):
            size += len(chunk)
            if size > self._max_body:
                raise PayloadTooLarge("body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _check_media_type(request: web.Request) -> None:
        types = request.headers.getall("Content-Type", [])
        if len(types) != 1 or request.content_type != "application/json":
            raise UnsupportedMediaType("media_type_unsupported")
        charset = request.charset
        if charset is not None and charset.lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType("charset_unsupported")
        coding = request.headers.getall("Content-Encoding", [])
        if any(c.strip().lower() != "identity" for c in coding):
            raise UnsupportedMediaType("content_encoding_unsupported")

    @staticmethod
    def _document(raw: bytes) -> Any:
        try:
            return parse_strict(raw)
        except AmbiguousJson:
            raise refuse("customer_ambiguous") from None
        except InvalidJson:
            raise BadRequest("body_invalid", "The request body is not valid JSON.") from None

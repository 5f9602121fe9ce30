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

A path or body binding is also checked against the query: frameworks merge the query's
parameters with the path's and the body's (Rails lets the query's win over the body's), so
a query that names the binding's parameter (a path binding's name, a body pointer's last
member; for a nested pointer also its first, whose whole object a query ``owner[...]``
replaces in a shallow merge), in any spelling :func:`read_parameter` counts, must name the
mapped customer, once and plainly, or the request is refused (``customer_other``,
``customer_ambiguous``).

Independently of the bindings, a POST whose body a framework reads as a form (a
``application/x-www-form-urlencoded`` or ``multipart/...`` Content-Type, or none, which Rack
reads as a form) is buffered within ``server.max_body_bytes`` and refused 400
``bad_request``, reason ``override_parameter``, when it holds a ``_method`` field (Rack's
``MethodOverride``, Symfony and Laravel run that method instead of the request line's):
see :mod:`dragoman.catalog.overrides`.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from dragoman.catalog.binding_json import (
    ABSENT,
    AmbiguousJson,
    InvalidJson,
    PointerAmbiguous,
    PointerUnplaceable,
    parse_strict,
    place,
    pointer_tokens,
    resolve,
    serialise,
)
from dragoman.catalog.binding_query import read_parameter, with_parameter
from dragoman.catalog.model import CustomerBinding
from dragoman.catalog.overrides import reads_as_form, refuse_form_override
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
        await self._form_override(ctx)

    async def _form_override(self, ctx: RequestContext) -> None:
        """A POST read as a form is buffered (within the limit) and refused when it holds
        ``_method`` (see the module's docstring). What is forwarded is the checked bytes,
        with the Content-Type they were checked under."""
        request = ctx.request
        # Rack's MethodOverride, Symfony, Laravel and Express' method-override read a
        # body's `_method` on a POST only.
        if ctx.method != "POST" or not request.body_exists or not reads_as_form(request):
            return
        if ctx.forward_body is None:
            self._check_no_coding(request)
            ctx.forward_body = await self._read(request)
            if self._rewrites and "Content-Type" in request.headers:
                ctx.forward_headers["Content-Type"] = request.headers["Content-Type"]
        refuse_form_override(request, ctx.forward_body)

    async def _check(self, ctx: RequestContext, binding: CustomerBinding, customer: str) -> None:
        if binding.location == "path":
            if not _same(ctx.path_params[binding.name], customer):
                raise refuse("customer_other")
            self._query_agrees(ctx, binding.name, customer)
        elif binding.location == "query":
            self._query(ctx, binding, customer, self._rewrites)
        elif binding.location == "header":
            self._header(ctx, binding, customer)
        else:
            tokens = [token for token in pointer_tokens(binding.name) if token]
            if len(tokens) > 1:
                # A query `owner[...]` replaces the body's whole `owner` in a shallow merge.
                self._query_agrees(ctx, tokens[0], customer, nested=True)
            if tokens:
                self._query_agrees(ctx, tokens[-1], customer)
            await self._body(ctx, binding, customer)

    # -- query -----------------------------------------------------------------------------

    @staticmethod
    def _query(
        ctx: RequestContext, binding: CustomerBinding, customer: str, rewrites: bool
    ) -> None:
        query = ctx.query
        reading = read_parameter(query, binding.name)
        if reading.ambiguous:
            raise refuse("customer_ambiguous")
        if reading.value is None:
            if binding.mode != "inject" or not rewrites:
                raise refuse("customer_absent")
            ctx.forward_query = with_parameter(query, binding.name, customer)
        elif not _same(reading.value, customer):
            raise refuse("customer_other")

    @staticmethod
    def _query_agrees(
        ctx: RequestContext, name: str, customer: str, *, nested: bool = False
    ) -> None:
        """A path or body binding's parameter, when the query names it too (frameworks
        merge the two), must be the mapped customer, once and plainly; ``nested``: the
        query must not name it at all (it would replace an object holding the customer)."""
        reading = read_parameter(ctx.query, name)
        if reading.ambiguous or (nested and reading.value is not None):
            raise refuse("customer_ambiguous")
        if reading.value is not None and not _same(reading.value, customer):
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
        except PointerAmbiguous:
            raise refuse("customer_ambiguous") from None
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
        CustomerBindingStage._check_no_coding(request)

    @staticmethod
    def _check_no_coding(request: web.Request) -> None:
        """415 for a content coding: aiohttp would decode it while reading, and what was
        checked would not be the bytes forwarded under that Content-Encoding."""
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

"""Requests that ask the upstream to run another method or path than their own.

The operation dragoman authorises is the request line's method and path, and the minted
token is bound to them (``htm``, ``htu``). Frameworks behind it may still run something
else when the request asks:

- **headers** (:data:`OVERRIDE_HEADERS`: ``X-HTTP-Method-Override``, ``X-Original-URL``...):
  the forwarder never forwards them; the decision API, which cannot drop them from what its
  gateway forwards, refuses them (:func:`refuse_override_headers`, 400 ``bad_request``,
  reason ``override_header``);
- **a ``_method`` parameter** (Symfony, Laravel, Rails' and Rack's ``MethodOverride``): in
  the query, in every spelling :func:`~dragoman.catalog.binding_query.read_parameter`
  counts (:func:`refuse_query_override`, step 3), or in the body of a POST some framework
  reads as a form (:func:`reads_as_form`, :func:`refuse_form_override`; the customer
  binding stage buffers that body): 400 ``bad_request``, reason ``override_parameter``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.helpers import parse_mimetype

from dragoman.catalog.binding_query import read_parameter
from dragoman.pipeline.errors import BadRequest

OVERRIDE_HEADERS = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
    }
)
"""Headers asking the upstream to run another method or path than the one authorised
(frameworks honour them after the token's ``htm`` and ``htu`` were checked against the
request line): never forwarded, and refused by the decision API, which cannot drop them."""

OVERRIDE_PARAMETER = "_method"
"""The parameter frameworks read as the method to run instead of the request line's."""

_FORM_TYPE = "application/x-www-form-urlencoded"
_MEDIA_SEPARATORS = re.compile(r"[;,]")
# Rack's reading of a multipart boundary (quotes optional, ends at a quote, ; or ,).
_RACK_BOUNDARY = re.compile(r"\Amultipart/.*?boundary=\"?([^\";,]+)\"?", re.IGNORECASE | re.DOTALL)


def override_refusal() -> BadRequest:
    return BadRequest(
        "override_parameter",
        "The request asks the upstream for another method than its own.",
    )


def refuse_override_headers(names: Iterable[str]) -> None:
    """400 ``override_header`` when one of the header ``names`` is an override header."""
    if any(name.lower() in OVERRIDE_HEADERS for name in names):
        raise BadRequest(
            "override_header",
            "The request asks the upstream for another method or path than its own.",
        )


def refuse_query_override(query: str) -> None:
    """400 ``override_parameter`` for a query naming ``_method`` in any spelling."""
    reading = read_parameter(query, OVERRIDE_PARAMETER)
    if reading.ambiguous or reading.value is not None:
        raise override_refusal()


def reads_as_form(request: web.Request) -> bool:
    """Whether some framework reads this POST's body as a form: a form or multipart type
    in any element of its Content-Type (Rack cuts the type at ``;`` *or* ``,``), or no type
    at all (Rack reads a POST without one as a form), also when the caller's Connection
    header would have the type dropped on the way."""
    types = request.headers.getall("Content-Type", [])
    dropped = any(
        "content-type" in value.lower() for value in request.headers.getall("Connection", [])
    )
    if dropped or not types or not "".join(types).strip():
        return True
    for value in types:
        for element in _MEDIA_SEPARATORS.split(value.lower()):
            media = element.strip()
            if media == _FORM_TYPE or media.startswith("multipart/"):
                return True
    return False


def _boundaries(content_type: str) -> set[bytes]:
    """The multipart boundary as aiohttp and as Rack read it (they may differ)."""
    found: set[bytes] = set()
    try:
        boundary = parse_mimetype(content_type).parameters.get("boundary")
    except ValueError:  # pragma: no cover - parse_mimetype reads anything
        boundary = None
    if boundary:
        found.add(boundary.encode("utf-8", "surrogateescape"))
    if match := _RACK_BOUNDARY.match(content_type):
        found.add(match.group(1).encode("utf-8", "surrogateescape"))
    return found


def _heads_name_method(body: bytes, content_type: str) -> bool:
    """Whether a part head of multipart ``body`` (the lines after a delimiter, up to the
    first blank line) mentions ``method`` in any case or percent-encoding: a part head
    holds only headers, and a field name PHP or Rack read as ``_method`` has it."""
    for boundary in _boundaries(content_type):
        for piece in body.split(b"--" + boundary)[1:]:
            ends = [i for i in (piece.find(b"\r\n\r\n"), piece.find(b"\n\n")) if i >= 0]
            head = piece[: min(ends)] if ends else piece
            if b"method" in unquote_to_bytes(head).lower():
                return True
    return False


def refuse_form_override(request: web.Request, body: bytes) -> None:
    """400 ``override_parameter`` for a form body holding a ``_method`` field, in any
    spelling :func:`read_parameter` counts (multipart: any part head naming ``method``)."""
    content_type = request.headers.get("Content-Type", "")
    if "multipart/" in content_type.lower():
        if _heads_name_method(body, content_type):
            raise override_refusal()
        return
    reading = read_parameter(body.decode("latin-1"), OVERRIDE_PARAMETER)
    if reading.ambiguous or reading.value is not None:
        raise override_refusal()

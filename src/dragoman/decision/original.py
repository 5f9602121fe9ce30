"""The request a gateway asks about, read from its check request.

nginx ``auth_request`` sends a subrequest to a fixed location; the configuration in
deploy/nginx/ names the caller's method and request target in ``X-Original-Method`` and
``X-Original-URI`` (set by the gateway, replacing anything the caller sent under those
names). Envoy's HTTP ``ext_authz`` service sends the caller's method, and its path after
the configured ``path_prefix``.

The target is taken byte for byte, as the caller sent it and as the gateway forwards it:
the catalog matcher, the customer bindings and the token's ``htu`` all read the same bytes
the upstream will. A target that is not in origin form (RFC 9112 §3.2.1) is the caller's
doing, and refused as a bad path (400 ``path_invalid``); a check request that does not name
the original request once, or names a method that is no upper-case token, is the gateway's
(400 ``decision_request_invalid``: its configuration is wrong). A header value that is not
UTF-8 (the caller's bytes, passed on by the gateway) cannot be carried into the re-addressed
request, and is refused 400 ``bad_request`` (reason ``header_not_utf8``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from dragoman.pipeline.errors import BadRequest, PathInvalid

NGINX_METHOD = "X-Original-Method"
NGINX_TARGET = "X-Original-URI"

_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/(?!/)[!-~]*")
"""Origin form: one leading slash (``//host`` would read as an authority), visible ASCII."""


class DecisionRequestInvalid(BadRequest):
    code = "decision_request_invalid"
    title = "The gateway's check request does not describe a request."


@dataclass(frozen=True, slots=True)
class Original:
    method: str
    target: str
    """Path and query as the caller sent them (percent-encoding untouched)."""


def _checked(method: str, target: str) -> Original:
    # fullmatch: "$" would also match before a final newline.
    if not _METHOD.fullmatch(method):
        raise DecisionRequestInvalid("method_invalid")
    if not _TARGET.fullmatch(target) or "#" in target:
        raise PathInvalid("target_invalid")
    return Original(method, target)


def nginx_original(request: web.Request) -> Original:
    methods = request.headers.getall(NGINX_METHOD, [])
    targets = request.headers.getall(NGINX_TARGET, [])
    if len(methods) != 1 or len(targets) != 1:
        raise DecisionRequestInvalid("original_missing")
    return _checked(methods[0], targets[0])


def envoy_original(request: web.Request, prefix: str) -> Original:
    raw = request.raw_path
    if not raw.startswith(prefix + "/"):
        raise DecisionRequestInvalid("prefix_missing")
    return _checked(request.method, raw[len(prefix) :])


def client_address(request: web.Request, trust_forwarded_for: bool) -> str | None:
    """The caller's address: the last X-Forwarded-For entry, the one the gateway itself
    appended, when it is an IP address; else the gateway's own. An IPv6 zone
    (``fe80::1%eth0``) is no part of an address a gateway writes there, and would carry any
    text into the record: an entry with one is not believed."""
    if trust_forwarded_for:
        values = request.headers.getall("X-Forwarded-For", [])
        if values:
            last = values[-1].rsplit(",", 1)[-1].strip()
            if "%" not in last:
                try:
                    return str(ipaddress.ip_address(last))
                except ValueError:
                    pass
    return request.remote


def as_original(
    request: web.Request, original: Original, *, drop: tuple[str, ...], remote: str | None
) -> web.Request:
    """The check request re-addressed as the caller's: its method and target, its headers
    without the gateway's own ``drop``, and the body (if the gateway sent it) unread."""
    headers = CIMultiDict(request.headers)
    for name in drop:
        headers.popall(name, None)
    target = URL(original.target, encoded=True)
    try:
        if remote is None:
            clone = request.clone(method=original.method, rel_url=target, headers=headers)
        else:
            clone = request.clone(
                method=original.method, rel_url=target, headers=headers, remote=remote
            )
    except UnicodeEncodeError:
        # aiohttp re-encodes the headers of a clone as strict UTF-8; a header byte that is
        # not UTF-8 (a lone surrogate here) raised, and the decision was a bare 500.
        raise BadRequest("header_not_utf8", "A request header is not UTF-8 text.") from None
    assert isinstance(clone, web.Request)
    return clone

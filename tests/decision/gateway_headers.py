"""What a gateway in front of the decision API owes the caller's answers and the upstream's
requests: what dragoman itself does in proxy mode (src/dragoman/forward.py), its defaults."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from dragoman.browser.headers import security_headers
from dragoman.catalog.overrides import OVERRIDE_HEADERS
from dragoman.forward import _DROP_REQUEST, HOP_BY_HOP
from dragoman.settings import BrowserSettings

SECURITY_HEADERS = security_headers(BrowserSettings())

CALLER_ADDRESS = "198.51.100.7"
"""What a caller writes into the headers below: an address of its choosing."""

CLIENT_ADDRESS_HEADERS = tuple(
    sorted(
        _DROP_REQUEST
        - HOP_BY_HOP
        - OVERRIDE_HEADERS
        # Each tested on its own: replaced (authorization, x-request-id), removed (cookie,
        # x-csrf-token) or the gateway's (host, expect).
        - {"host", "authorization", "cookie", "x-csrf-token", "expect", "x-request-id"}
    )
)
"""The caller's headers proxy mode drops that tell an upstream where the request came from
(``Forwarded``, ``X-Real-IP``, ``CF-Connecting-IP``...; ``Cookie2``): the gateways must
clear each, and a name proxy mode adds is tested here at once."""

CALLERS_X_FORWARDED = (
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-forwarded-method",
    "x-forwarded-client-cert",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
)
"""Proxy mode drops every ``X-Forwarded-*`` a caller sends; a gateway clears them by name,
and these are the names the shipped configurations clear (``-For`` and ``-Proto`` are the
gateway's own, tested on their own)."""

CDN_CACHE_HEADERS = ("CDN-Cache-Control", "Surrogate-Control")
"""Answer headers that tell a CDN how long to keep an answer for everyone (RFC 9213)."""

ACCESS_CONTROL_HEADERS = {
    "Access-Control-Allow-Origin": "https://evil.example",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Allow-Methods": "GET, POST, DELETE",
    "Access-Control-Allow-Headers": "authorization",
    "Access-Control-Expose-Headers": "authorization",
    "Access-Control-Max-Age": "86400",
    "Access-Control-Allow-Private-Network": "true",
}
"""An upstream's CORS answer headers, opening the API to any origin: CORS is the gateway's."""


def smuggled(names: tuple[str, ...]) -> dict[str, str]:
    """Each of ``names`` with a value the caller chose."""
    return {name: CALLER_ADDRESS for name in names}


def assert_security_headers(
    response: aiohttp.ClientResponse, expected: Mapping[str, str] = SECURITY_HEADERS
) -> None:
    """Each of ``expected`` exactly once, with its value."""
    for name, value in expected.items():
        assert response.headers.getall(name, []) == [value], name

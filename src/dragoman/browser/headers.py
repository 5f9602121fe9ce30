"""Security headers on every response the proxy sends (SEMANTICS §5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from dragoman.settings import BrowserSettings

if TYPE_CHECKING:
    from aiohttp import web

    from dragoman.browser.cors import CorsPolicy

# The proxy serves JSON, never pages, on its API paths: nothing may load, run or frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def security_headers(settings: BrowserSettings) -> Mapping[str, str]:
    """Headers set on every response; computed once at start."""
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": API_CSP,
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
    if settings.hsts_max_age > 0:
        headers["Strict-Transport-Security"] = f"max-age={settings.hsts_max_age}; includeSubDomains"
    return headers


def answer_headers(
    base: Mapping[str, str], cors: CorsPolicy, request: web.Request, request_id: str
) -> dict[str, str]:
    """The headers of dragoman's own answer to ``request``: the security headers, CORS for
    its origin (when allowed) and its request id."""
    return {**base, **cors.response_headers(request), "X-Request-Id": request_id}

"""Security headers on every response the proxy sends (SEMANTICS §5)."""

from __future__ import annotations

from collections.abc import Mapping

from dragoman.settings import BrowserSettings

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

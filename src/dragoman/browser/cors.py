"""CORS with an explicit allow-list: credentials only for listed origins, never a wildcard."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

ALLOWED_REQUEST_HEADERS = frozenset(
    {"authorization", "content-type", "x-csrf-token", "x-request-id", "idempotency-key"}
)
EXPOSED_HEADERS = "X-Request-Id, Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"


class CorsPolicy:
    def __init__(self, allowed_origins: Iterable[str], methods: Iterable[str]) -> None:
        self._origins = frozenset(allowed_origins)
        self._methods = frozenset(methods)
        self._allow_methods = ", ".join(sorted(self._methods))

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin in self._origins

    def response_headers(self, request: web.Request) -> dict[str, str]:
        """Headers for an actual (non-preflight) request; empty unless the origin is listed."""
        origin = request.headers.get("Origin")
        if not self.allows(origin):
            return {"Vary": "Origin"} if origin is not None else {}
        assert origin is not None
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }

    @staticmethod
    def is_preflight(request: web.Request) -> bool:
        return (
            request.method == "OPTIONS"
            and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers
        )

    def preflight_headers(self, request: web.Request) -> dict[str, str] | None:
        """Headers that approve a preflight, or None when it is refused."""
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method", "")
        asked = request.headers.get("Access-Control-Request-Headers", "")
        names = {h.strip().lower() for h in asked.split(",") if h.strip()}
        if not self.allows(origin) or method not in self._methods:
            return None
        if not names <= ALLOWED_REQUEST_HEADERS:
            return None
        assert origin is not None
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": self._allow_methods,
            "Access-Control-Allow-Headers": ", ".join(sorted(names)) if names else "",
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }

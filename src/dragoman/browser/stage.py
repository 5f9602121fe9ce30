"""Step 2 as a pipeline stage: where a state-changing browser request comes from.

A request that changes state is refused when its ``Origin`` is not on the allow-list or its
``Sec-Fetch-Site`` is ``cross-site``, whatever credentials it carries. Requests without
either header (servers, CLIs) pass: those headers are set by browsers, and browsers cannot
omit them on cross-origin state-changing requests.
"""

from __future__ import annotations

from dragoman.browser.cors import CorsPolicy
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import OriginDenied

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BrowserChecksStage:
    name = "browser_checks"

    def __init__(self, cors: CorsPolicy) -> None:
        self._cors = cors

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.method in SAFE_METHODS:
            return
        headers = ctx.request.headers
        if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            raise OriginDenied("cross_site_request")
        origin = headers.get("Origin")
        if origin is not None and not self._cors.allows(origin):
            raise OriginDenied("origin_not_allowed")

"""Step 3 as a pipeline stage: the request must be a catalog operation (default deny)."""

from __future__ import annotations

from dragoman.catalog.matcher import InvalidPath, RouteMatcher
from dragoman.pipeline.context import RequestContext
from dragoman.pipeline.errors import OperationUnknown, PathInvalid


class ResolveOperationStage:
    name = "resolve_operation"

    def __init__(self, matcher: RouteMatcher) -> None:
        self._matcher = matcher

    async def __call__(self, ctx: RequestContext) -> None:
        if "#" in ctx.request.raw_path:
            # No part of a request target (RFC 9112 §3.2): the upstream client drops it, so
            # what is matched and signed here would not be what the upstream is sent.
            raise PathInvalid("path_invalid", "a fragment in the request target")
        try:
            match = self._matcher.match(ctx.method, ctx.raw_path)
        except InvalidPath as exc:
            raise PathInvalid("path_invalid", str(exc)) from None
        if match is None:
            raise OperationUnknown()
        ctx.operation = match.operation
        ctx.path_params = match.params

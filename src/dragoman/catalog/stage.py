"""Step 3 as a pipeline stage: the request must be a catalog operation (default deny).

The operation is its method and path as sent, so a request asking the upstream to run
another method is refused here, in proxy mode and in a decision alike: a query naming
``_method`` (Symfony/Laravel, Rails' and Rack's ``MethodOverride`` read it, in every
spelling :func:`~dragoman.catalog.binding_query.read_parameter` counts) is 400
``bad_request``, reason ``override_parameter`` (the other overrides:
:mod:`dragoman.catalog.overrides`). A request for one of the proxy's own paths is no
operation, whatever the method (404 ``operation_unknown``; the matcher says why).
"""

from __future__ import annotations

from dragoman.catalog.matcher import InvalidPath, RouteMatcher
from dragoman.catalog.overrides import refuse_query_override
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
        query = ctx.query
        if query:
            refuse_query_override(query)
        try:
            match = self._matcher.match(ctx.method, ctx.raw_path)
        except InvalidPath as exc:
            raise PathInvalid("path_invalid", str(exc)) from None
        if match is None:
            raise OperationUnknown()
        ctx.operation = match.operation
        ctx.path_params = match.params

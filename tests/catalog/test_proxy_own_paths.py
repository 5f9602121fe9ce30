"""The proxy's own paths (/livez, /readyz, /.well-known/jwks.json, everything under
/_dragoman/) are never a catalog operation, whatever the method: a template with parameters
that would match one (``/{name}``, ``/{tenant}/registration``) does not, and such a request
is refused as an unknown operation, never forwarded upstream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dragoman.app import PROXY_KEY
from dragoman.catalog.matcher import RouteMatcher
from dragoman.catalog.model import Operation
from dragoman.catalog.template import parse_template
from dragoman.demo.platform import catalog_settings
from dragoman.demo.runner import DemoStack
from dragoman.settings.catalog import proxy_answers

MakeStack = Callable[..., Awaitable[DemoStack]]

CATCHING = [
    ("tenant.registration", "POST", "/{tenant}/registration"),
    ("tenant.delete", "DELETE", "/{tenant}/registration"),
    ("doc.put", "PUT", "/.well-known/{doc}"),
    ("name.post", "POST", "/{name}"),
    ("name.get", "GET", "/{name}"),
    ("page.get", "GET", "/{a}/pages/{page}"),
    ("session.patch", "PATCH", "/{a}/session"),
]
"""Templates with parameters that match some of the proxy's own paths."""

OWN_REQUESTS = [
    ("POST", "/_dragoman/registration"),
    ("DELETE", "/_dragoman/registration"),
    ("PUT", "/.well-known/jwks.json"),
    ("POST", "/readyz"),
    ("POST", "/livez"),
    ("GET", "/_dragoman/pages/missing.html"),
    ("PATCH", "/_dragoman/session"),
]


def op(op_id: str, method: str, path: str) -> Operation:
    return Operation(op_id, method, path, f"x:{op_id}", None, parse_template(path))


MATCHER = RouteMatcher([op(*catching) for catching in CATCHING])


@pytest.mark.parametrize(("method", "path"), OWN_REQUESTS)
def test_a_template_with_parameters_does_not_match_the_proxys_own_paths(
    method: str, path: str
) -> None:
    assert MATCHER.match(method, path) is None


@pytest.mark.parametrize(
    "path", ["/%5Fdragoman/registration", "/%5fdragoman/registration", "/%72eadyz"]
)
def test_an_own_path_spelled_with_escapes_does_not_match_either(path: str) -> None:
    assert MATCHER.match("POST", path) is None


def test_a_path_beside_the_own_paths_still_matches() -> None:
    found = MATCHER.match("POST", "/acme/registration")
    assert found is not None
    assert (found.operation.id, found.params) == ("tenant.registration", {"tenant": "acme"})


def catching_catalog() -> dict[str, Any]:
    extra = [
        {"id": op_id, "method": method, "path": path, "scope": f"x:{op_id}"}
        for op_id, method, path in CATCHING
    ]
    return {
        "catalog": {"operations": [*catalog_settings(), *extra]},
        "mapping": {"registration": {"enabled": False}},
    }


@pytest.mark.parametrize(("method", "path"), OWN_REQUESTS)
async def test_a_request_for_an_own_path_the_proxy_does_not_answer_is_refused_not_forwarded(
    make_stack: MakeStack, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    stack = await make_stack(catching_catalog())
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, stack.urls["proxy"] + path, headers=headers) as answer:
        assert (answer.status, (await answer.json())["code"]) == (404, "operation_unknown")
    assert stack.platform.seen == []


async def test_every_route_the_proxy_answers_itself_is_one_of_its_own_paths(
    make_stack: MakeStack,
) -> None:
    # The own paths are listed once (dragoman.settings.catalog); a route added to the
    # application without them would be matchable by a catalog template again.
    stack = await make_stack()
    (app,) = [
        r.app for r in stack.runners if isinstance(r.app, web.Application) and PROXY_KEY in r.app
    ]
    routes = {route.resource.canonical for route in app.router.routes() if route.resource}
    routes.discard("/{tail}")  # the catch-all: every other request, matched to the catalog
    assert routes and all(proxy_answers(route) for route in routes), sorted(routes)

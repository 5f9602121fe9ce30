"""deploy/envoy/envoy.yaml against a real dragoman: Envoy's HTTP ext_authz contract, as
documented, followed by the gateway in envoy_contract.py and driven by the shipped file.

The caller talks to the gateway; the gateway asks dragoman's decision listener and, on an
allow, forwards to the demo platform (which verifies the minted token) or to a recording
upstream (which keeps every header and body it received).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from envoy_contract import EnvoyGateway, ExtAuthzContract
from gateway_headers import (
    ACCESS_CONTROL_HEADERS,
    CALLER_ADDRESS,
    CALLERS_X_FORWARDED,
    CDN_CACHE_HEADERS,
    CLIENT_ADDRESS_HEADERS,
    SECURITY_HEADERS,
    assert_security_headers,
    smuggled,
)
from nginx_support import Tap

from binding_support import ALICE, Recorder, overrides
from dragoman.browser.headers import security_headers
from dragoman.decision.endpoint import ENVOY_PREFIX
from dragoman.demo.runner import DemoStack
from dragoman.settings.server import ServerSettings

MakeStack = Callable[..., Awaitable[DemoStack]]
Serve = Callable[[web.Application], Any]
PM = "/v1/customers/cus_alice/payment-methods"
DECISION = {"decision": {"enabled": True}}
NEEDED_BY_DRAGOMAN = (
    "authorization",
    "cookie",
    "x-csrf-token",
    "origin",
    "sec-fetch-site",
    "sec-fetch-mode",
    "content-type",
    "x-request-id",
    "idempotency-key",
    "x-forwarded-for",
)


@pytest.fixture
def contract() -> ExtAuthzContract:
    return ExtAuthzContract.load()


@dataclasses.dataclass
class Route:
    url: str
    stack: DemoStack
    gateway: EnvoyGateway


@asynccontextmanager
async def gateway_to(
    serve: Serve, contract: ExtAuthzContract, stack: DemoStack, upstream: str
) -> AsyncIterator[Route]:
    gateway = EnvoyGateway(contract, stack.decision_url, upstream)
    async with serve(gateway.app()) as url:
        yield Route(url, stack, gateway)


@pytest.fixture
async def platform_route(
    serve: Serve, make_stack: MakeStack, contract: ExtAuthzContract
) -> AsyncIterator[Route]:
    """Caller -> gateway -> dragoman's decision listener; allowed -> the demo platform."""
    stack = await make_stack(DECISION)
    async with gateway_to(serve, contract, stack, stack.urls["platform"]) as route:
        yield route


@pytest.fixture
async def recorded(
    serve: Serve, make_stack: MakeStack, contract: ExtAuthzContract
) -> AsyncIterator[tuple[Route, Recorder]]:
    """The same with a recording upstream and the customer-binding catalog
    (tests/binding_support.py: path, header and JSON-body bindings)."""
    upstream = Recorder()
    async with serve(upstream.app()) as upstream_url:
        stack = await make_stack({**overrides(upstream_url), **DECISION})
        async with gateway_to(serve, contract, stack, upstream_url) as route:
            yield route, upstream


@dataclasses.dataclass
class Tapped:
    route: Route
    tap: Tap


@pytest.fixture
async def tapped(
    serve: Serve, make_stack: MakeStack, contract: ExtAuthzContract
) -> AsyncIterator[Tapped]:
    """Caller -> gateway -> dragoman; allowed -> a tap that records every request and
    relays it to the demo platform (nginx_support.Tap: it can add headers to the answer)."""
    stack = await make_stack(DECISION)
    tap = Tap(stack.urls["platform"])
    async with serve(tap.app()) as tap_url, gateway_to(serve, contract, stack, tap_url) as route:
        yield Tapped(route, tap)


def bearer(stack: DemoStack, account: str = "acct-1001", subject: str = "alice") -> str:
    return "Bearer " + stack.issuer.token(subject, account, roles=["billing_admin"])


def claims(authorization: str) -> dict[str, Any]:
    payload = authorization.removeprefix("Bearer ").split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


async def problem(response: aiohttp.ClientResponse) -> tuple[int, str]:
    assert response.content_type == "application/problem+json"
    return response.status, (await response.json())["code"]


# -- the shipped file ----------------------------------------------------------------------


def test_shipped_config_fails_closed(contract: ExtAuthzContract) -> None:
    assert contract.failure_mode_allow is False
    assert contract.status_on_error == 503


def test_decision_cluster_is_not_reachable_from_public_routes(
    contract: ExtAuthzContract,
) -> None:
    assert contract.route_clusters
    assert contract.decision_cluster in contract.clusters
    assert contract.decision_cluster not in contract.route_clusters
    assert set(contract.route_clusters) <= set(contract.clusters)


def test_shipped_body_limit_is_dragomans_and_never_cut(contract: ExtAuthzContract) -> None:
    assert contract.max_request_bytes == ServerSettings.model_fields["max_body_bytes"].default
    assert contract.allow_partial_message is False


def test_check_request_carries_every_header_dragoman_reads(contract: ExtAuthzContract) -> None:
    assert [h for h in NEEDED_BY_DRAGOMAN if not contract.check_header_allowed(h)] == []


def test_shipped_edge_drops_headers_with_underscores(contract: ExtAuthzContract) -> None:
    assert contract.headers_with_underscores == "DROP_HEADER"


def test_decision_listener_answers_under_the_shipped_path_prefix(
    contract: ExtAuthzContract,
) -> None:
    assert contract.path_prefix == ENVOY_PREFIX


# -- allowed -------------------------------------------------------------------------------


async def test_allowed_get_reaches_the_platform_with_a_minted_token(
    platform_route: Route, http: aiohttp.ClientSession
) -> None:
    stack = platform_route.stack
    async with http.get(platform_route.url + PM, headers={"Authorization": bearer(stack)}) as r:
        assert r.status == 200
        assert (await r.json())["data"][0]["last4"] == "4242"
    reached = stack.platform.seen
    assert len(reached) == 1
    assert reached[0].accepted and reached[0].jti


async def test_callers_authorization_never_reaches_the_upstream(
    recorded: tuple[Route, Recorder], http: aiohttp.ClientSession
) -> None:
    route, upstream = recorded
    caller = bearer(route.stack)
    path = f"/v1/customers/{ALICE}/things"
    async with http.get(route.url + path, headers={"Authorization": caller}) as r:
        assert r.status == 200
    sent = upstream.header("authorization")
    assert len(sent) == 1 and sent[0] != caller
    assert claims(sent[0])["iss"] == "dragoman-demo"
    assert caller not in json.dumps(upstream.received)


async def test_upstream_gets_the_request_id_dragoman_recorded(
    recorded: tuple[Route, Recorder], http: aiohttp.ClientSession
) -> None:
    route, upstream = recorded
    path = f"/v1/customers/{ALICE}/things"
    async with http.get(route.url + path, headers={"Authorization": bearer(route.stack)}) as r:
        assert r.status == 200
    audit = (route.stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    record = json.loads(audit[-1])
    assert record["event"] == "decision"
    assert upstream.header("x-request-id") == [record["request_id"]]


async def test_cookie_and_csrf_header_never_reach_the_upstream(
    recorded: tuple[Route, Recorder], http: aiohttp.ClientSession
) -> None:
    route, upstream = recorded
    authorization = bearer(route.stack)
    session = route.stack.urls["proxy"] + "/_dragoman/session"
    async with http.post(session, headers={"Authorization": authorization}) as r:
        token = (await r.json())["csrf_token"]
    headers = {
        "Authorization": authorization,
        "Cookie": f"__Host-dragoman-csrf={token}; session=s3cret",
        "X-CSRF-Token": token,
    }
    path = f"/v1/customers/{ALICE}/things"
    async with http.get(route.url + path, headers=headers) as r:
        assert r.status == 200
    assert upstream.header("cookie") == []
    assert upstream.header("x-csrf-token") == []
    assert "s3cret" not in json.dumps(upstream.received)
    assert token not in json.dumps(upstream.received)


async def test_an_underscore_twin_of_a_header_never_reaches_the_upstream(
    recorded: tuple[Route, Recorder], http: aiohttp.ClientSession
) -> None:
    route, upstream = recorded
    headers = {"Authorization": bearer(route.stack), "x_customer_id": "cus_mallory"}
    path = f"/v1/customers/{ALICE}/things"
    async with http.get(route.url + path, headers=headers) as r:
        assert r.status == 200
    assert upstream.header("x_customer_id") == []
    assert "cus_mallory" not in json.dumps(upstream.received)


async def test_post_with_a_body_binding_reaches_the_upstream_with_its_body(
    recorded: tuple[Route, Recorder], http: aiohttp.ClientSession
) -> None:
    route, upstream = recorded
    body = b'{"customer": "cus_alice", "amount": 5}'
    headers = {"Authorization": bearer(route.stack), "Content-Type": "application/json"}
    async with http.post(route.url + "/body/things", headers=headers, data=body) as r:
        assert r.status == 200
    assert route.gateway.checks[-1]["content-length"] == str(len(body))
    assert upstream.received[-1]["body"] == body.decode()
    assert claims(upstream.header("authorization")[0])["iss"] == "dragoman-demo"


async def test_post_whose_body_names_another_customer_is_refused(
    recorded: tuple[Route, Recorder], http: aiohttp.ClientSession
) -> None:
    route, upstream = recorded
    headers = {"Authorization": bearer(route.stack), "Content-Type": "application/json"}
    body = b'{"customer": "cus_bob"}'
    async with http.post(route.url + "/body/things", headers=headers, data=body) as r:
        assert await problem(r) == (403, "customer_mismatch")
    assert upstream.received == []


# -- refused -------------------------------------------------------------------------------


async def test_another_customers_call_never_reaches_the_platform(
    platform_route: Route, http: aiohttp.ClientSession
) -> None:
    stack = platform_route.stack
    path = "/v1/customers/cus_bob/payment-methods"
    async with http.get(platform_route.url + path, headers={"Authorization": bearer(stack)}) as r:
        assert await problem(r) == (403, "customer_mismatch")
    assert stack.platform.seen == []


async def test_unauthenticated_call_is_refused_401_with_www_authenticate(
    platform_route: Route, http: aiohttp.ClientSession
) -> None:
    async with http.get(platform_route.url + PM) as r:
        assert await problem(r) == (401, "unauthenticated")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.headers["X-Request-Id"]
    assert platform_route.stack.platform.seen == []


def test_shipped_security_headers_are_dragomans(contract: ExtAuthzContract) -> None:
    added = {
        name.lower(): (value, action) for name, value, action in contract.response_headers_to_add
    }
    for name, value in SECURITY_HEADERS.items():
        assert added.pop(name.lower()) == (value, "OVERWRITE_IF_EXISTS_OR_ADD"), name
    assert added == {"cache-control": ("no-store", "OVERWRITE_IF_EXISTS_OR_ADD")}


async def test_an_allowed_answer_carries_the_security_headers_and_no_store(
    platform_route: Route, http: aiohttp.ClientSession
) -> None:
    stack = platform_route.stack
    async with http.get(platform_route.url + PM, headers={"Authorization": bearer(stack)}) as r:
        assert r.status == 200
        assert_security_headers(r)
        assert r.headers.getall("Cache-Control") == ["no-store"]


async def test_upstream_public_s_maxage_reaches_the_caller_as_no_store(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    # Envoy cannot make the upstream's directives private without a Lua filter: the shipped
    # file overwrites them with no-store, which no cache, shared or not, may keep.
    tapped.tap.answer_headers = {"Cache-Control": "public, s-maxage=600"}
    route = tapped.route
    async with http.get(route.url + PM, headers={"Authorization": bearer(route.stack)}) as r:
        assert r.status == 200
        assert r.headers.getall("Cache-Control") == ["no-store"]


async def test_every_upstream_cache_control_reaches_the_caller_as_no_store(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    route = tapped.route
    got = {}
    for upstream in ("public, max-age=600", "s-maxage=600", "private, max-age=60", "no-cache"):
        tapped.tap.answer_headers = {"Cache-Control": upstream}
        async with http.get(route.url + PM, headers={"Authorization": bearer(route.stack)}) as r:
            assert r.status == 200
            got[upstream] = r.headers.getall("Cache-Control")
    assert got == {upstream: ["no-store"] for upstream in got}


async def test_upstreams_cdn_cache_headers_never_reach_the_caller(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    tapped.tap.answer_headers = {name: "max-age=3600" for name in CDN_CACHE_HEADERS}
    route = tapped.route
    async with http.get(route.url + PM, headers={"Authorization": bearer(route.stack)}) as r:
        assert r.status == 200
        assert [name for name in CDN_CACHE_HEADERS if name in r.headers] == []


async def test_upstreams_set_cookie_never_reaches_the_caller(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    cookie = "__Host-dragoman-csrf=attacker; Path=/; Secure; HttpOnly"
    tapped.tap.answer_headers = {"Set-Cookie": cookie}
    route = tapped.route
    async with http.get(route.url + PM, headers={"Authorization": bearer(route.stack)}) as r:
        assert r.status == 200
        assert "Set-Cookie" not in r.headers


async def test_upstreams_access_control_headers_never_reach_the_caller(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    tapped.tap.answer_headers = ACCESS_CONTROL_HEADERS
    route = tapped.route
    async with http.get(route.url + PM, headers={"Authorization": bearer(route.stack)}) as r:
        assert r.status == 200
        assert [name for name in ACCESS_CONTROL_HEADERS if name in r.headers] == []


async def test_callers_client_address_headers_never_reach_the_upstream(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    route = tapped.route
    headers = {"Authorization": bearer(route.stack), **smuggled(CLIENT_ADDRESS_HEADERS)}
    async with http.get(route.url + PM, headers=headers) as r:
        assert r.status == 200
    (arrival,) = tapped.tap.arrivals
    assert [name for name in CLIENT_ADDRESS_HEADERS if name in arrival.headers] == []


async def test_callers_x_forwarded_headers_never_reach_the_upstream(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    route = tapped.route
    headers = {"Authorization": bearer(route.stack), **smuggled(CALLERS_X_FORWARDED)}
    async with http.get(route.url + PM, headers=headers) as r:
        assert r.status == 200
    (arrival,) = tapped.tap.arrivals
    assert [name for name in CALLERS_X_FORWARDED if name in arrival.headers] == []
    assert CALLER_ADDRESS not in str(dict(arrival.headers))


async def test_x_forwarded_proto_at_the_upstream_is_the_gateways_scheme(
    tapped: Tapped, http: aiohttp.ClientSession
) -> None:
    route = tapped.route
    headers = {"Authorization": bearer(route.stack), "X-Forwarded-Proto": "https"}
    async with http.get(route.url + PM, headers=headers) as r:
        assert r.status == 200
    (arrival,) = tapped.tap.arrivals
    assert arrival.headers.getall("X-Forwarded-Proto") == ["http"]


async def test_x_forwarded_for_at_the_upstream_is_the_peer_only(tapped: Tapped) -> None:
    route = tapped.route
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    headers = {"Authorization": bearer(route.stack), "X-Forwarded-For": "203.0.113.66, 10.0.0.1"}
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(route.url + PM, headers=headers) as r,
    ):
        assert r.status == 200
    (arrival,) = tapped.tap.arrivals
    assert arrival.headers.getall("X-Forwarded-For") == ["127.0.0.3"]


async def test_check_request_still_names_the_callers_address_last(tapped: Tapped) -> None:
    # The router clears and sets the upstream's headers after ext_authz: dragoman is still
    # sent X-Forwarded-For with the address Envoy appended, and records it.
    route = tapped.route
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    headers = {"Authorization": bearer(route.stack), "X-Forwarded-For": "203.0.113.66"}
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(route.url + PM, headers=headers) as r,
    ):
        assert r.status == 200
    assert route.gateway.checks[-1].getall("x-forwarded-for") == ["203.0.113.66, 127.0.0.3"]
    audit = (route.stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    assert json.loads(audit[-1])["client_ip"] == "127.0.0.3"


async def test_a_denial_carries_dragomans_security_headers(
    platform_route: Route, http: aiohttp.ClientSession
) -> None:
    settings = platform_route.stack.settings
    assert settings is not None
    async with http.get(platform_route.url + PM) as r:
        assert r.status == 401
        # dragoman's own answer, passed on: the demo's settings (no HSTS over plain HTTP).
        assert_security_headers(r, security_headers(settings.browser))


async def test_account_without_mapping_is_refused(
    platform_route: Route, http: aiohttp.ClientSession
) -> None:
    stack = platform_route.stack
    headers = {"Authorization": bearer(stack, "acct-unknown", "eve")}
    async with http.get(platform_route.url + PM, headers=headers) as r:
        assert await problem(r) == (403, "mapping_missing")
    assert stack.platform.seen == []


async def test_rate_limited_call_carries_retry_after_to_the_client(
    serve: Serve, make_stack: MakeStack, contract: ExtAuthzContract, http: aiohttp.ClientSession
) -> None:
    rule = {"name": "account", "per": "account", "rate": "1/h", "burst": 1}
    stack = await make_stack({"limits": {"rules": [rule]}, **DECISION})
    async with gateway_to(serve, contract, stack, stack.urls["platform"]) as route:
        headers = {"Authorization": bearer(stack)}
        async with http.get(route.url + PM, headers=headers) as first:
            assert first.status == 200
        async with http.get(route.url + PM, headers=headers) as second:
            assert await problem(second) == (429, "rate_limited")
            assert int(second.headers["Retry-After"]) > 0
            assert second.headers["RateLimit-Policy"]
            assert second.headers["RateLimit"]
    assert len(stack.platform.seen) == 1


async def test_partial_body_is_refused_413(
    serve: Serve, make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    # What a gateway configured with allow_partial_message would send: the body cut at
    # max_request_bytes, and x-envoy-auth-partial-body: true.
    upstream = Recorder()
    cutting = dataclasses.replace(
        ExtAuthzContract.load(), max_request_bytes=16, allow_partial_message=True
    )
    async with serve(upstream.app()) as upstream_url:
        stack = await make_stack({**overrides(upstream_url), **DECISION})
        async with gateway_to(serve, cutting, stack, upstream_url) as route:
            headers = {"Authorization": bearer(stack), "Content-Type": "application/json"}
            body = b'{"customer": "cus_alice", "note": "longer than sixteen bytes"}'
            async with http.post(route.url + "/body/things", headers=headers, data=body) as r:
                assert await problem(r) == (413, "body_too_large")
            assert route.gateway.checks[-1]["x-envoy-auth-partial-body"] == "true"
    record = json.loads((stack.state_dir / "audit.jsonl").read_text().splitlines()[-1])
    assert record["reason"] == "body_partial"
    assert upstream.received == []


async def test_unreachable_decision_listener_fails_closed(
    serve: Serve, make_stack: MakeStack, contract: ExtAuthzContract, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack()  # no decision listener: its port refuses connections
    async with (
        gateway_to(serve, contract, stack, stack.urls["platform"]) as route,
        http.get(route.url + PM, headers={"Authorization": bearer(stack)}) as r,
    ):
        assert r.status == 503
        assert await r.read() == b""
    assert stack.platform.seen == []


async def test_server_error_decision_reaches_the_caller_as_status_on_error(
    serve: Serve, make_stack: MakeStack, contract: ExtAuthzContract, http: aiohttp.ClientSession
) -> None:
    # Envoy treats any 5xx from the authorization server as an error: the caller gets
    # status_on_error with an empty body, not dragoman's problem (here 503
    # rate_limit_unavailable).
    stack = await make_stack(
        {"limits": {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}, **DECISION}
    )
    async with (
        gateway_to(serve, contract, stack, stack.urls["platform"]) as route,
        http.get(route.url + PM, headers={"Authorization": bearer(stack)}) as r,
    ):
        assert r.status == 503
        assert await r.read() == b""
    record = json.loads((stack.state_dir / "audit.jsonl").read_text().splitlines()[-1])
    assert record["code"] == "rate_limit_unavailable"
    assert stack.platform.seen == []

"""deploy/nginx/dragoman-decision.conf, run as shipped: real nginx in front of the demo
platform, asking dragoman's decision listener about every request.

nginx forwards to a tap (nginx_support.Tap) that records each request's headers and relays
it to the platform, whose ``seen`` says what its token check made of it. Without nginx
(Debian package nginx; `make nginx`) these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gateway_headers import (
    ACCESS_CONTROL_HEADERS,
    CALLER_ADDRESS,
    CALLERS_X_FORWARDED,
    CDN_CACHE_HEADERS,
    CLIENT_ADDRESS_HEADERS,
    assert_security_headers,
    smuggled,
)
from nginx_support import (
    Tap,
    command,
    host_port,
    nginx_binary,
    refusing_address,
    running_nginx,
    write_config,
)
from yarl import URL

from ci_support import service_missing
from dragoman.demo.runner import DemoStack
from dragoman.forward import private_cache_control

PM = "/v1/customers/cus_alice/payment-methods"
BOB_PM = "/v1/customers/cus_bob/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031}
DECISION_ON = {"decision": {"enabled": True}}
PROBLEM = "application/problem+json"


@pytest.fixture
def nginx(request: pytest.FixtureRequest) -> str:
    binary = nginx_binary()
    if binary is None:
        service_missing("nginx", "not installed; `make nginx` installs it")
    assert binary is not None
    return binary


@dataclass
class Gateway:
    url: str
    stack: DemoStack
    tap: Tap

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.stack.state_dir / "audit.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def decisions(self) -> list[dict[str, Any]]:
        return [record for record in self.audit() if record["event"] == "decision"]

    def nothing_forwarded(self) -> bool:
        return self.tap.arrivals == [] and self.stack.platform.seen == []


OpenGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def open_gateway(
    nginx: str,
    make_stack: Callable[..., Awaitable[DemoStack]],
    serve: Callable[..., Any],
    tmp_path: Path,
) -> AsyncIterator[OpenGateway]:
    """``open_gateway(overrides, decision_down=False)``: the demo stack with its decision
    listener, the tap before its platform, and nginx on the shipped configuration."""
    opened: list[Gateway] = []
    async with AsyncExitStack() as exits:

        async def open_(
            overrides: dict[str, Any] | None = None, *, decision_down: bool = False
        ) -> Gateway:
            stack = await make_stack({**DECISION_ON, **(overrides or {})})
            tap = Tap(stack.urls["platform"])
            tap_url = await exits.enter_async_context(serve(tap.app()))
            decision = host_port(stack.decision_url)
            if decision_down:
                refusing, decision = refusing_address()
                exits.callback(refusing.close)
            directory = tmp_path / f"nginx{len(opened)}"
            url = await exits.enter_async_context(
                running_nginx(nginx, directory, decision=decision, upstream=host_port(tap_url))
            )
            opened.append(Gateway(url, stack, tap))
            return opened[-1]

        yield open_


@pytest.fixture
async def gateway(open_gateway: OpenGateway) -> Gateway:
    return await open_gateway()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def alice(stack: DemoStack) -> dict[str, str]:
    return bearer(stack.issuer.token("alice", "acct-1001", roles=["billing_admin"]))


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as it is (no client library normalizing it); the status and the
    whole answer (the connection is closed after it)."""
    parsed = URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(answer.split(b" ", 2)[1]), answer


# -- the shipped file ------------------------------------------------------------------------


def test_nginx_accepts_the_shipped_configuration(nginx: str, tmp_path: Path) -> None:
    conf = write_config(
        tmp_path, decision="127.0.0.1:9191", upstream="127.0.0.1:8080", listen="127.0.0.1:8000"
    )
    result = subprocess.run(
        command(nginx, tmp_path, conf, "-t"), capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test is successful" in output
    assert "[warn]" not in output, output


# -- allowed ---------------------------------------------------------------------------------


async def test_allowed_call_reaches_the_platform_with_a_minted_token_not_the_callers(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    sent = alice(gateway.stack)
    async with http.get(gateway.url + PM, headers=sent) as response:
        assert response.status == 200
        assert (await response.json())["data"][0]["last4"] == "4242"
    (seen,) = gateway.stack.platform.seen
    assert seen.accepted
    assert seen.jti is not None
    (arrival,) = gateway.tap.arrivals
    assert arrival.headers.getall("Authorization") != [sent["Authorization"]]
    assert len(arrival.headers.getall("Authorization")) == 1


async def test_write_is_allowed_once_with_its_single_use_token(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + PM, headers=alice(gateway.stack), json=CARD) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["last4"] == "4242"
    (seen,) = gateway.stack.platform.seen
    assert seen.method == "POST"
    assert seen.accepted


# -- refused ---------------------------------------------------------------------------------


async def test_unauthenticated_call_gets_401_problem_and_is_never_forwarded(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + PM) as response:
        assert response.status == 401
        assert response.content_type == PROBLEM
        problem = await response.json()
        assert response.headers.getall("WWW-Authenticate") == ['Bearer realm="dragoman"']
        assert response.headers["Cache-Control"] == "no-store"
        request_id = response.headers["X-Request-Id"]
    assert problem["code"] == "unauthenticated"
    assert problem["status"] == 401
    (record,) = gateway.decisions()
    assert record["audit_id"] == problem["audit_id"]
    assert record["request_id"] == request_id
    assert gateway.nothing_forwarded()


async def test_call_for_another_customer_gets_403_customer_mismatch_and_is_never_forwarded(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + BOB_PM, headers=alice(gateway.stack)) as response:
        assert response.status == 403
        assert response.content_type == PROBLEM
        problem = await response.json()
        assert "WWW-Authenticate" not in response.headers
    assert problem["code"] == "customer_mismatch"
    assert problem["status"] == 403
    assert gateway.nothing_forwarded()


async def test_rate_limited_call_gets_429_with_retry_after_and_is_never_forwarded(
    open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    tight = {"name": "tight", "per": "account", "rate": "1/min", "burst": 1}
    gateway = await open_gateway({"limits": {"rules": [tight]}})
    headers = alice(gateway.stack)
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 429
        assert response.content_type == PROBLEM
        problem = await response.json()
        (retry_after,) = response.headers.getall("Retry-After")
        assert int(retry_after) >= 1
        (policy,) = response.headers.getall("RateLimit-Policy")
        assert policy.startswith('"tight";')
        (limit,) = response.headers.getall("RateLimit")
        assert limit.startswith('"tight";')
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert len(gateway.tap.arrivals) == 1
    assert len(gateway.stack.platform.seen) == 1


async def test_shipped_configuration_always_describes_the_request_to_dragoman(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """No request shape makes dragoman answer decision_request_invalid: nginx always sends
    the method and the target."""
    host = URL(gateway.url).raw_authority
    asked = [
        f"GET {PM}?limit=2&q=a%20b%2Fc HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        f"GET {gateway.url}{PM} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        f"HEAD {PM} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        f"DELETE {PM}/pm_x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        f"PATCH /nowhere HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        f"GET {PM} HTTP/1.0\r\n\r\n",
    ]
    for request in asked:
        status, answer = await raw_request(gateway.url, request.encode())
        assert status != 500, answer
        assert b"decision_request_invalid" not in answer, answer
    decisions = gateway.decisions()
    assert len(decisions) == len(asked)
    assert all(record["code"] != "decision_request_invalid" for record in decisions)


# -- what a client cannot do -----------------------------------------------------------------


async def test_bearer_token_dragoman_did_not_mint_never_reaches_the_platform(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + PM, headers=bearer("not.a-token.at-all")) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "unauthenticated"
    assert gateway.nothing_forwarded()


async def test_scoped_token_replayed_by_a_client_is_refused(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    captured = {"Authorization": arrival.headers["Authorization"]}
    async with http.get(gateway.url + PM, headers=captured) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "unauthenticated"
    assert len(gateway.tap.arrivals) == 1


async def test_decision_location_cannot_be_called_by_a_client(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), "X-Original-Method": "GET", "X-Original-URI": PM}
    async with http.get(gateway.url + "/_dragoman_decision", headers=headers) as response:
        assert response.status == 404
        assert "Authorization" not in response.headers
        await response.read()
    assert gateway.decisions() == []
    assert gateway.nothing_forwarded()


async def test_callers_x_original_uri_does_not_change_the_decision(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), "X-Original-Method": "GET", "X-Original-URI": PM}
    async with http.get(gateway.url + BOB_PM, headers=headers) as response:
        assert response.status == 403
        assert (await response.json())["code"] == "customer_mismatch"
    assert gateway.nothing_forwarded()


async def test_callers_cookie_and_csrf_header_never_reach_the_platform(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), "Cookie": "theme=dark", "X-CSRF-Token": "abc"}
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    assert "Cookie" not in arrival.headers
    assert "X-CSRF-Token" not in arrival.headers


async def test_callers_gateway_headers_never_reach_the_platform(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {
        **alice(gateway.stack),
        "X-Original-Method": "DELETE",
        "X-Original-URI": BOB_PM,
        "X-Dragoman-Status": "200",
        "X-Dragoman-Problem": "{}",
    }
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    for name in ("X-Original-Method", "X-Original-URI", "X-Dragoman-Status", "X-Dragoman-Problem"):
        assert name not in arrival.headers


async def test_an_underscore_twin_of_a_header_never_reaches_the_platform(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), "x_customer_id": "cus_mallory"}
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    assert "x_customer_id" not in arrival.headers
    assert "cus_mallory" not in str(dict(arrival.headers))


# -- dragoman unreachable --------------------------------------------------------------------


async def test_decision_listener_down_gets_503_decision_unavailable_and_nothing_forwarded(
    open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await open_gateway(decision_down=True)
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 503
        assert response.content_type == PROBLEM
        assert response.headers["Cache-Control"] == "no-store"
        problem = await response.json()
    assert problem["code"] == "decision_unavailable"
    assert problem["status"] == 503
    assert gateway.nothing_forwarded()


# -- the caller's answer's headers -------------------------------------------------------------


async def test_an_allowed_answer_carries_the_security_headers_and_no_store(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert_security_headers(response)
        assert response.headers.getall("Cache-Control") == ["no-store"]


async def test_a_denial_carries_the_security_headers(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(gateway.url + PM) as response:
        assert response.status == 401
        assert_security_headers(response)


async def test_decision_unavailable_carries_the_security_headers(
    open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await open_gateway(decision_down=True)
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 503
        assert_security_headers(response)


async def test_the_upstreams_own_security_headers_give_way_and_its_cache_control_stays(
    open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await open_gateway()
    gateway.tap.answer_headers = {
        "Content-Security-Policy": "default-src *",
        "X-Frame-Options": "SAMEORIGIN",
        "Cache-Control": "private, max-age=60",
    }
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert_security_headers(response)
        assert response.headers.getall("Cache-Control") == ["private, max-age=60"]


async def test_upstream_public_s_maxage_reaches_the_caller_as_private(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    gateway.tap.answer_headers = {"Cache-Control": "public, s-maxage=600"}
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert response.headers.getall("Cache-Control") == ["private"]


UPSTREAM_CACHE_CONTROL = (
    "public, s-maxage=600, max-age=600",
    "max-age=60, public",
    "public,max-age=5",
    "PUBLIC, Max-Age=60",
    "s-maxage=600, no-cache, must-revalidate",
    'private="set-cookie", max-age=60',
    'public, s-maxage=1, private="x"',
    "private, max-age=60",
    "no-store, public",
    "max-age=60",
    "no-cache",
)


async def test_upstream_cache_control_is_made_private_as_proxy_mode_makes_it(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    got = {}
    for upstream in UPSTREAM_CACHE_CONTROL:
        gateway.tap.answer_headers = {"Cache-Control": upstream}
        async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
            assert response.status == 200
            got[upstream] = response.headers.getall("Cache-Control")
    assert got == {upstream: [private_cache_control([upstream])] for upstream in got}


async def test_upstream_cache_control_with_four_shared_cache_directives_gets_no_store(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    # The map takes out three; past them the strictest answer, never a shared one.
    gateway.tap.answer_headers = {"Cache-Control": 'public, s-maxage=1, private="x", public'}
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert response.headers.getall("Cache-Control") == ["no-store"]


async def test_upstream_cache_control_with_a_quoted_argument_gets_no_store(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    # The "no-store" inside the quotes is no directive: the answer must not pass as private.
    upstream = 'no-cache="X-Foo,no-store,X-Bar", max-age=600, must-revalidate'
    gateway.tap.answer_headers = {"Cache-Control": upstream}
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert response.headers.getall("Cache-Control") == ["no-store"]


async def test_upstreams_cdn_cache_headers_never_reach_the_caller(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    gateway.tap.answer_headers = {name: "max-age=3600" for name in CDN_CACHE_HEADERS}
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert [name for name in CDN_CACHE_HEADERS if name in response.headers] == []


async def test_upstreams_set_cookie_never_reaches_the_caller(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    cookie = "__Host-dragoman-csrf=attacker; Path=/; Secure; HttpOnly"
    gateway.tap.answer_headers = {"Set-Cookie": cookie}
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert "Set-Cookie" not in response.headers


async def test_upstreams_access_control_headers_never_reach_the_caller(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    gateway.tap.answer_headers = ACCESS_CONTROL_HEADERS
    async with http.get(gateway.url + PM, headers=alice(gateway.stack)) as response:
        assert response.status == 200
        assert [name for name in ACCESS_CONTROL_HEADERS if name in response.headers] == []


# -- where the request came from -------------------------------------------------------------


async def test_callers_client_address_headers_never_reach_the_platform(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), **smuggled(CLIENT_ADDRESS_HEADERS)}
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    assert [name for name in CLIENT_ADDRESS_HEADERS if name in arrival.headers] == []


async def test_callers_x_forwarded_headers_never_reach_the_platform(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), **smuggled(CALLERS_X_FORWARDED)}
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    assert [name for name in CALLERS_X_FORWARDED if name in arrival.headers] == []
    assert CALLER_ADDRESS not in str(dict(arrival.headers))


async def test_x_forwarded_proto_at_the_platform_is_the_gateways_scheme(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(gateway.stack), "X-Forwarded-Proto": "https"}
    async with http.get(gateway.url + PM, headers=headers) as response:
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    assert arrival.headers.getall("X-Forwarded-Proto") == ["http"]


async def test_x_forwarded_for_at_the_platform_is_the_peer_only(gateway: Gateway) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(
            gateway.url + PM,
            headers={**alice(gateway.stack), "X-Forwarded-For": "203.0.113.66, 10.0.0.1"},
        ) as response,
    ):
        assert response.status == 200
    (arrival,) = gateway.tap.arrivals
    assert arrival.headers.getall("X-Forwarded-For") == ["127.0.0.3"]
    (record,) = gateway.decisions()
    assert record["client_ip"] == "127.0.0.3"


# -- the audit record ------------------------------------------------------------------------


async def test_decision_record_names_the_callers_address_and_the_forwarded_jti(
    gateway: Gateway,
) -> None:
    # The caller connects from 127.0.0.3; nginx reaches dragoman from 127.0.0.1. The
    # X-Forwarded-For entry the caller wrote itself is not the one recorded.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(
            gateway.url + PM,
            headers={**alice(gateway.stack), "X-Forwarded-For": "203.0.113.9"},
        ) as response,
    ):
        assert response.status == 200
    (seen,) = gateway.stack.platform.seen
    (record,) = gateway.decisions()
    assert record["decision"] == "allow"
    assert record["client_ip"] == "127.0.0.3"
    assert record["jti"] == seen.jti

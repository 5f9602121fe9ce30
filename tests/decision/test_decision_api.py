"""The decision API itself, asked the way each gateway asks: what an allow carries, what a
denial says in each contract, which check requests are refused, and what it never does
(answer on the proxy's port, trust a client certificate, allow without a record, rewrite
what it cannot forward)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from decision_support import alice, audit

from binding_support import ALICE, BOB, Recorder
from binding_support import overrides as binding_overrides
from dragoman.catalog.overrides import OVERRIDE_HEADERS
from dragoman.demo.runner import DemoStack
from settings_support import settings_problems

PM = "/v1/customers/cus_alice/payment-methods"
DECISION = {"decision": {"enabled": True}}


@pytest.fixture
async def stack(make_stack: Callable[..., Awaitable[DemoStack]]) -> DemoStack:
    return await make_stack(DECISION)


def claims(answer: aiohttp.ClientResponse) -> dict[str, Any]:
    scheme, _, token = answer.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def ask_nginx(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientResponse, str]:
    sent = {"X-Original-Method": method, "X-Original-URI": target, **(headers or {})}
    async with http.get(stack.decision_url + "/auth_request", headers=sent) as answer:
        return answer, await answer.text()


async def ask_envoy(
    http: aiohttp.ClientSession,
    stack: DemoStack,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[aiohttp.ClientResponse, str]:
    url = stack.decision_url + "/ext_authz" + target
    async with http.request(
        method, aiohttp.client.URL(url, encoded=True), headers=headers, data=body
    ) as answer:
        return answer, await answer.text()


# -- allow -----------------------------------------------------------------------------------


async def test_allow_carries_a_token_scoped_to_the_asked_request(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, stack, "GET", PM + "?limit=2", alice(stack))
    assert answer.status == 200
    minted = claims(answer)
    assert minted["sub"] == ALICE
    assert minted["scope"] == "payment_methods:list"
    assert minted["htm"] == "GET"
    assert minted["htu"] == stack.urls["platform"] + PM
    assert minted["act"]["sub"] == "alice"
    assert answer.headers["Cache-Control"] == "no-store"


async def test_every_allow_mints_a_fresh_token(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = alice(stack)
    first, _ = await ask_nginx(http, stack, "GET", PM, headers)
    second, _ = await ask_nginx(http, stack, "GET", PM, headers)
    assert claims(first)["jti"] != claims(second)["jti"]


async def test_allow_token_is_accepted_by_the_platform_once_for_a_write(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, stack, "POST", PM, alice(stack))
    assert answer.status == 200
    body = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}
    upstream = {"Authorization": answer.headers["Authorization"]}
    async with http.post(stack.urls["platform"] + PM, json=body, headers=upstream) as first:
        assert first.status == 201
    async with http.post(stack.urls["platform"] + PM, json=body, headers=upstream) as replay:
        assert replay.status == 401


async def test_envoy_allow_names_the_caller_credentials_to_remove(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_envoy(http, stack, "GET", PM, alice(stack))
    assert answer.status == 200
    removed = answer.headers["x-envoy-auth-headers-to-remove"].split(", ")
    assert removed[:2] == ["cookie", "x-csrf-token"]
    assert set(removed[2:]) == OVERRIDE_HEADERS
    assert claims(answer)["sub"] == ALICE


@pytest.mark.parametrize("gateway", ["nginx", "envoy"])
@pytest.mark.parametrize("header", sorted(OVERRIDE_HEADERS - {"x-original-uri"}))
async def test_a_request_asking_the_upstream_for_another_method_or_path_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession, gateway: str, header: str
) -> None:
    """The proxy drops these headers; a gateway forwards the caller's headers as they
    are, and an upstream framework would run a DELETE (or another path) under a token
    minted for this GET."""
    ask = ask_nginx if gateway == "nginx" else ask_envoy
    headers = {**alice(stack), header: "DELETE" if "method" in header else "/v1/customers/cus_bob"}
    answer, text = await ask(http, stack, "GET", PM, headers)
    assert "Authorization" not in answer.headers
    if gateway == "nginx":
        assert (answer.status, answer.headers["X-Dragoman-Status"]) == (403, "400")
        problem = json.loads(answer.headers["X-Dragoman-Problem"])
    else:
        assert answer.status == 400
        problem = json.loads(text)
    assert (problem["code"], audit(stack)[-1]["reason"]) == ("bad_request", "override_header")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("POST", "/livez"), ("GET", "/ext_authz"), ("DELETE", "/auth_requests")],
)
async def test_a_path_the_listener_does_not_serve_is_refused_problem_json_and_recorded(
    stack: DemoStack, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, stack.decision_url + path) as answer:
        assert answer.status == 404
        assert answer.content_type == "application/problem+json"
        problem = await answer.json()
    record = audit(stack)[-1]
    assert (problem["code"], record["code"], record["reason"], record["event"]) == (
        "operation_unknown",
        "operation_unknown",
        "decision_route_unknown",
        "decision",
    )


async def test_decision_record_names_the_caller_address_from_the_gateway(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(stack), "X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    answer, _ = await ask_nginx(http, stack, "GET", PM, headers)
    record = audit(stack)[-1]
    assert record["event"] == "decision"
    assert record["decision"] == "allow"
    assert record["client_ip"] == "203.0.113.9"  # the entry the gateway appended
    assert record["jti"] == claims(answer)["jti"]
    assert record["operation"] == "payment_methods.list"


async def test_a_forwarded_for_that_is_no_address_records_the_gateway(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await ask_nginx(http, stack, "GET", PM, {**alice(stack), "X-Forwarded-For": "evil"})
    assert audit(stack)[-1]["client_ip"] == "127.0.0.1"


async def test_a_write_decision_keeps_one_record_written_before_the_answer(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    before = len(audit(stack))
    answer, _ = await ask_nginx(http, stack, "POST", PM, alice(stack))
    records = audit(stack)[before:]
    assert [r["event"] for r in records] == ["decision"]
    assert records[0]["jti"] == claims(answer)["jti"]


# -- deny ------------------------------------------------------------------------------------


async def test_nginx_denial_is_403_naming_the_real_status_and_problem(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, body = await ask_nginx(
        http, stack, "GET", "/v1/customers/cus_bob/payment-methods", alice(stack)
    )
    assert answer.status == 403
    assert answer.headers["X-Dragoman-Status"] == "403"
    problem = json.loads(answer.headers["X-Dragoman-Problem"])
    assert problem == json.loads(body)
    assert problem["code"] == "customer_mismatch"
    assert problem["audit_id"] == audit(stack)[-1]["audit_id"]
    assert "Authorization" not in answer.headers


async def test_nginx_denial_of_an_unauthenticated_caller_is_401(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, stack, "GET", PM)
    assert answer.status == 401
    assert answer.headers["X-Dragoman-Status"] == "401"
    assert json.loads(answer.headers["X-Dragoman-Problem"])["code"] == "unauthenticated"


async def test_nginx_denial_with_another_status_is_folded_to_403(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, stack, "GET", "/v1/nothing-here", alice(stack))
    assert answer.status == 403
    assert answer.headers["X-Dragoman-Status"] == "404"
    assert json.loads(answer.headers["X-Dragoman-Problem"])["code"] == "operation_unknown"


async def test_envoy_denial_is_the_problem_with_its_real_status(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, body = await ask_envoy(http, stack, "GET", "/v1/nothing-here", alice(stack))
    assert answer.status == 404
    assert answer.content_type == "application/problem+json"
    assert json.loads(body)["code"] == "operation_unknown"
    assert "X-Dragoman-Status" not in answer.headers
    assert "Authorization" not in answer.headers


async def test_envoy_partial_body_is_refused(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    headers = {**alice(stack), "x-envoy-auth-partial-body": "true"}
    answer, body = await ask_envoy(http, stack, "POST", PM, headers, body=b'{"card_n')
    assert answer.status == 413
    assert json.loads(body)["code"] == "body_too_large"
    assert audit(stack)[-1]["reason"] == "body_partial"


# -- the check request itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/v1/customers/cus_alice/payment-methods",
        "//evil.example/v1/customers/cus_alice/payment-methods",
        "v1/customers/cus_alice/payment-methods",
        PM + "#frag",
        "/v1/customers/cus_alice/payment methods",
        "*",
        "",
    ],
)
async def test_a_target_that_is_not_origin_form_is_refused_as_a_bad_path(
    stack: DemoStack, http: aiohttp.ClientSession, target: str
) -> None:
    answer, _ = await ask_nginx(http, stack, "GET", target, alice(stack))
    assert answer.status == 403
    assert answer.headers["X-Dragoman-Status"] == "400"
    problem = json.loads(answer.headers["X-Dragoman-Problem"])
    assert problem["code"] == "path_invalid"
    assert audit(stack)[-1]["reason"] == "target_invalid"


async def test_a_check_without_the_original_request_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.decision_url + "/auth_request", headers=alice(stack)) as answer:
        assert answer.status == 403
        assert answer.headers["X-Dragoman-Status"] == "400"
    assert audit(stack)[-1]["reason"] == "original_missing"


async def test_a_check_naming_two_original_targets_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = aiohttp.client.CIMultiDict(alice(stack))
    headers.add("X-Original-Method", "GET")
    headers.add("X-Original-URI", PM)
    headers.add("X-Original-URI", "/v1/customers/cus_bob/payment-methods")
    async with http.get(stack.decision_url + "/auth_request", headers=headers) as answer:
        assert answer.headers["X-Dragoman-Status"] == "400"
    assert audit(stack)[-1]["reason"] == "original_missing"


async def test_a_lower_case_or_odd_method_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, stack, "get", PM, alice(stack))
    assert answer.headers["X-Dragoman-Status"] == "400"
    assert audit(stack)[-1]["reason"] == "method_invalid"


# -- what it never does ----------------------------------------------------------------------


async def test_the_proxy_listener_does_not_answer_decisions(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(stack), "X-Original-Method": "GET", "X-Original-URI": PM}
    async with http.get(stack.urls["proxy"] + "/auth_request", headers=headers) as answer:
        assert answer.status == 404
        assert "Authorization" not in answer.headers
    async with http.get(stack.urls["proxy"] + "/ext_authz" + PM, headers=headers) as answer:
        assert answer.status == 404
        assert "Authorization" not in answer.headers


async def test_the_decision_listener_is_off_by_default(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession
) -> None:
    stack = await make_stack()
    with pytest.raises(aiohttp.ClientConnectionError):
        await ask_nginx(http, stack, "GET", PM, alice(stack))


async def test_an_allow_whose_record_cannot_be_written_is_refused(
    stack: DemoStack, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stack.proxy is not None
    trail = stack.proxy.audit

    def fail(records: list[dict[str, object]]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(trail._sink, "write_many", fail)
    answer, _ = await ask_nginx(http, stack, "GET", PM, alice(stack))
    assert answer.status == 403
    assert answer.headers["X-Dragoman-Status"] == "503"
    assert json.loads(answer.headers["X-Dragoman-Problem"])["code"] == "audit_unavailable"
    assert "Authorization" not in answer.headers


def test_a_decision_listener_with_only_client_certificates_is_refused_at_load(
    tmp_path: Path,
) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("not read: the settings are refused first")

    def only_mtls(data: dict[str, Any]) -> None:
        data["identity"].pop("oidc", None)
        data["identity"]["mtls"] = {"trust_domains": ["example.org"]}
        data["server"]["tls"] = {
            "cert_file": str(tmp_path / "c.pem"),
            "key_file": str(tmp_path / "k.pem"),
            "client_ca_file": str(tmp_path / "ca.pem"),
        }
        data["decision"] = {"enabled": True}

    problems = settings_problems(tmp_path, only_mtls)
    assert problems == {"decision": problems["decision"]}
    assert "never reads a client certificate" in problems["decision"]


# -- customer bindings it cannot rewrite -----------------------------------------------------


@pytest.fixture
async def bound(
    serve: Callable[[web.Application], Any], make_stack: Callable[..., Awaitable[DemoStack]]
) -> AsyncIterator[DemoStack]:
    async with serve(Recorder().app()) as url:
        yield await make_stack({**binding_overrides(url), **DECISION})


async def test_a_query_inject_binding_is_enforced_in_a_decision(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, bound, "GET", "/query-inject/things", alice(bound))
    assert json.loads(answer.headers["X-Dragoman-Problem"])["code"] == "customer_mismatch"
    assert audit(bound)[-1]["reason"] == "customer_absent"
    named, _ = await ask_nginx(
        http, bound, "GET", f"/query-inject/things?customer_id={ALICE}", alice(bound)
    )
    assert named.status == 200


async def test_a_body_inject_binding_is_enforced_in_a_decision(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(bound), "Content-Type": "application/json"}
    answer, _ = await ask_envoy(http, bound, "POST", "/body-inject/things", headers, b"{}")
    assert answer.status == 403
    assert audit(bound)[-1]["reason"] == "customer_absent"
    body = json.dumps({"customer": ALICE}).encode()
    named, _ = await ask_envoy(http, bound, "POST", "/body-inject/things", headers, body)
    assert named.status == 200


async def test_a_body_binding_is_checked_against_the_body_the_gateway_sent(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(bound), "Content-Type": "application/json"}
    body = json.dumps({"customer": BOB}).encode()
    answer, text = await ask_envoy(http, bound, "POST", "/body/things", headers, body)
    assert answer.status == 403
    assert json.loads(text)["code"] == "customer_mismatch"
    assert audit(bound)[-1]["reason"] == "customer_other"


async def test_a_body_binding_without_the_body_is_refused(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_nginx(http, bound, "POST", "/body/things", alice(bound))
    assert json.loads(answer.headers["X-Dragoman-Problem"])["code"] == "customer_mismatch"
    assert audit(bound)[-1]["reason"] == "customer_absent"


async def test_a_header_inject_binding_is_handed_to_the_gateway(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    answer, _ = await ask_envoy(http, bound, "GET", "/header-inject/things", alice(bound))
    assert answer.status == 200
    assert answer.headers["x-customer-id"] == ALICE


@pytest.mark.parametrize("gateway", ["nginx", "envoy"])
async def test_a_query_asking_the_upstream_for_another_method_is_refused(
    bound: DemoStack, http: aiohttp.ClientSession, gateway: str
) -> None:
    """Symfony, Laravel and Rails run the method a `_method` parameter names, not the
    request line's the token was minted for."""
    ask = ask_nginx if gateway == "nginx" else ask_envoy
    answer, text = await ask(http, bound, "POST", "/plain/things?%5Fmethod=DELETE", alice(bound))
    assert "Authorization" not in answer.headers
    if gateway == "nginx":
        assert (answer.status, answer.headers["X-Dragoman-Status"]) == (403, "400")
        problem = json.loads(answer.headers["X-Dragoman-Problem"])
    else:
        assert answer.status == 400
        problem = json.loads(text)
    assert (problem["code"], audit(bound)[-1]["reason"]) == ("bad_request", "override_parameter")


async def test_a_form_body_asking_the_upstream_for_another_method_is_refused(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(bound), "Content-Type": "application/x-www-form-urlencoded"}
    answer, text = await ask_envoy(http, bound, "POST", "/plain/things", headers, b"_method=DELETE")
    assert answer.status == 400
    assert (json.loads(text)["code"], audit(bound)[-1]["reason"]) == (
        "bad_request",
        "override_parameter",
    )


async def test_a_query_spelling_php_reads_as_the_bound_parameter_is_refused(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    target = f"/query/things?customer_id={ALICE}&customer[id={BOB}"
    answer, _ = await ask_nginx(http, bound, "GET", target, alice(bound))
    assert json.loads(answer.headers["X-Dragoman-Problem"])["code"] == "customer_mismatch"
    assert audit(bound)[-1]["reason"] == "customer_ambiguous"


async def test_a_body_binding_is_checked_against_the_query_the_gateway_forwards(
    bound: DemoStack, http: aiohttp.ClientSession
) -> None:
    headers = {**alice(bound), "Content-Type": "application/json"}
    body = json.dumps({"customer": ALICE}).encode()
    answer, text = await ask_envoy(
        http, bound, "POST", f"/body/things?customer={BOB}", headers, body
    )
    assert answer.status == 403
    assert json.loads(text)["code"] == "customer_mismatch"
    assert audit(bound)[-1]["reason"] == "customer_other"

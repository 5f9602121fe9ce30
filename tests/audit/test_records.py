"""Audit records (SEMANTICS §8): one per request, denials included, with its fields."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from yarl import URL

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"


def records(stack: DemoStack) -> list[dict[str, Any]]:
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]


async def test_an_allowed_request_is_recorded_with_every_field(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with http.get(stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {token}"}):
        pass
    (record,) = records(stack)
    seen = stack.platform.seen[-1]
    assert record["decision"] == "allow"
    assert record["code"] is None
    assert record["operation"] == "payment_methods.list"
    assert record["scope"] == "payment_methods:list"
    assert record["principal"] == "alice"
    assert record["cloud_account"] == "acct-1001"
    assert record["mapping_id"]
    assert record["jti"] == seen.jti
    assert record["kid"]
    assert record["upstream_status"] == 200
    assert record["status"] == 200
    assert record["latency_ms"] >= 0
    assert record["time"].endswith("+00:00")
    assert record["request_id"] and record["audit_id"]


async def test_a_denial_is_recorded_with_its_code_and_reason(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    expired = stack.issuer.token("alice", "acct-1001", ttl=-300)
    async with http.get(stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {expired}"}):
        pass
    (record,) = records(stack)
    assert (record["decision"], record["code"], record["reason"]) == (
        "deny",
        "unauthenticated",
        "token_expired",
    )
    assert record["jti"] is None
    assert record["upstream_status"] is None


async def test_card_numbers_and_tokens_in_requests_never_reach_the_record(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    path = f"{PM}?note=4111111111111111&access_token={token}"
    async with http.get(
        stack.urls["proxy"] + path,
        headers={"Authorization": f"Bearer {token}", "Origin": "https://x 5555555555554444"},
    ):
        pass
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    assert token not in text
    assert "4111111111111111" not in text
    assert "5555555555554444" not in text


async def test_an_allowed_request_records_the_customer_only_by_its_blind_index(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with http.get(stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {token}"}):
        pass
    (record,) = records(stack)
    assert record["path"] == "/v1/customers/{customer_id}/payment-methods"
    assert record["customer"] and record["customer"] != "cus_alice"
    assert "cus_alice" not in (stack.state_dir / "audit.jsonl").read_text("utf-8")


async def test_a_request_refused_before_routing_keeps_the_customer_out_of_its_path(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + PM, headers={"Authorization": "Bearer nope"}):
        pass
    (record,) = records(stack)
    assert (record["code"], record["operation"]) == ("unauthenticated", None)
    assert record["path"] == "/v1/customers/{customer_id}/payment-methods"
    assert "cus_alice" not in (stack.state_dir / "audit.jsonl").read_text("utf-8")


async def test_another_customer_asked_for_is_not_written_in_plaintext(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    path = "/v1/customers/cus_bob/payment-methods"
    async with http.get(stack.urls["proxy"] + path, headers={"Authorization": f"Bearer {token}"}):
        pass
    (record,) = records(stack)
    assert record["code"] == "customer_mismatch"
    assert "cus_bob" not in (stack.state_dir / "audit.jsonl").read_text("utf-8")


async def test_a_path_that_matches_no_operation_keeps_only_the_catalogs_literal_segments(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    async with http.get(
        stack.urls["proxy"] + "/v1/nothing-here", headers={"Authorization": f"Bearer {token}"}
    ):
        pass
    (record,) = records(stack)
    assert (record["code"], record["path"]) == ("operation_unknown", "/v1/{param}")


@pytest.mark.parametrize(
    ("method", "path", "recorded"),
    [
        (
            "PUT",
            "/v1/customers/cus_bob/payment-methods",
            "/v1/customers/{customer_id}/payment-methods",
        ),
        (
            "GET",
            "/v1/customers/cus_bob/x/y/z",
            "/v1/customers/{customer_id}/{param}/{param}/{param}",
        ),
        (
            "GET",
            "/v1/customers/cus_bob/payment-methods/",
            "/v1/customers/{customer_id}/payment-methods/",
        ),
        ("GET", "/v1/Customers/cus_bob/nothing", "/v1/Customers/{customer_id}/{param}"),
        # Bent paths: every segment after a `//` or a `.` shifts; `;params`, an encoded `/`.
        ("GET", "/v1//customers/cus_bob/payment-methods", "/v1//customers/{param}/payment-methods"),
        ("GET", "//v1/customers/cus_bob/payment-methods", "//v1/customers/{param}/payment-methods"),
        (
            "GET",
            "/v1/./customers/cus_bob/payment-methods",
            "/v1/./customers/{param}/payment-methods",
        ),
        (
            "GET",
            "/v1/customers//cus_bob/payment-methods",
            "/v1/customers/{customer_id}/{param}/payment-methods",
        ),
        ("GET", "/v1/customers;x=1/cus_bob/payment-methods", "/v1/{param}/{param}/payment-methods"),
        ("GET", "/v1/customers%2Fcus_bob/payment-methods", "/v1/{param}/payment-methods"),
        ("GET", "/v1/customers%20/cus_bob/payment-methods", "/v1/{param}/{param}/payment-methods"),
    ],
)
async def test_a_customer_named_by_a_path_that_matches_no_operation_is_not_written_in_plaintext(
    stack: DemoStack, http: aiohttp.ClientSession, method: str, path: str, recorded: str
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}"}
    # Sent as written: a client would normalise `/./` away.
    async with http.request(method, URL(stack.urls["proxy"] + path, encoded=True), headers=headers):
        pass
    (record,) = records(stack)
    assert (record["decision"], record["path"]) == ("deny", recorded)
    assert "cus_bob" not in (stack.state_dir / "audit.jsonl").read_text("utf-8")


async def test_a_card_number_percent_encoded_in_a_path_never_reaches_the_record(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    path = f"{PM}/4111%201111%201111%201111"
    async with http.delete(
        stack.urls["proxy"] + path, headers={"Authorization": f"Bearer {token}"}
    ):
        pass
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    assert "[card]" in text
    assert "1111" not in text

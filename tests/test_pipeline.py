"""The request pipeline end to end: real issuer, real proxy, real upstream."""

from __future__ import annotations

import json

import aiohttp

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"


def alice(stack: DemoStack) -> str:
    return stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])


async def test_allowed_request_reaches_upstream_with_a_fresh_scoped_token(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    token = alice(stack)
    for _ in range(2):
        async with http.get(
            stack.urls["proxy"] + PM, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["data"][0]["last4"] == "4242"
    reached = [s for s in stack.platform.seen if s.accepted]
    assert len(reached) == 2
    assert reached[0].jti != reached[1].jti


async def test_denial_is_problem_json_with_code_and_audit_id(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.urls["proxy"] + PM) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        body = await response.json()
    assert body["code"] == "unauthenticated"
    assert body["status"] == 401
    audit = [
        json.loads(line) for line in (stack.state_dir / "audit.jsonl").read_text().splitlines()
    ]
    assert audit[-1]["audit_id"] == body["audit_id"]
    assert audit[-1]["decision"] == "deny"
    assert stack.platform.seen == []


async def test_upstream_problem_answers_pass_through_unchanged(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        stack.urls["proxy"] + PM,
        headers={"Authorization": f"Bearer {alice(stack)}"},
        json={"card_number": "4111111111111112", "exp_month": 1, "exp_year": 2031},
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "card_invalid"

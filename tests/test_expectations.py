"""An expectation other than 100-continue, on the routes dragoman answers itself (SEMANTICS
§7): 417 problem+json ``expectation_failed``, recorded, the connection closed; never
aiohttp's plain-text 417."""

from __future__ import annotations

import json

import aiohttp
import pytest

from dragoman.demo.runner import DemoStack

ROUTES = [
    ("POST", "/_dragoman/session", "session"),
    ("POST", "/_dragoman/session/refresh", "session"),
    ("DELETE", "/_dragoman/session", "session"),
    ("GET", "/_dragoman/whoami", "whoami"),
    ("DELETE", "/_dragoman/registration", "registration"),
]


@pytest.mark.parametrize(("method", "path", "event"), ROUTES)
async def test_an_unmet_expectation_is_417_problem_json_and_recorded(
    stack: DemoStack, http: aiohttp.ClientSession, method: str, path: str, event: str
) -> None:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    headers = {"Authorization": f"Bearer {token}", "Expect": "early-data"}
    async with http.request(method, stack.urls["proxy"] + path, headers=headers) as response:
        assert response.status == 417
        assert response.content_type == "application/problem+json"
        problem = await response.json()
        assert response.headers.get("Connection", "").lower() == "close"
    assert problem["code"] == "expectation_failed"
    lines = (stack.state_dir / "audit.jsonl").read_text("utf-8").splitlines()
    (record,) = [json.loads(line) for line in lines if json.loads(line)["event"] == event]
    assert (record["audit_id"], record["code"]) == (problem["audit_id"], "expectation_failed")

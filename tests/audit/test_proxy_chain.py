"""A real proxy's audit trail is one verifiable chain, with every record's fields intact."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from chain_support import make_key, verify_cli

from dragoman.demo.runner import DemoStack

PM = "/v1/customers/cus_alice/payment-methods"


async def drive(stack: DemoStack, http: aiohttp.ClientSession) -> None:
    """An allowed request, a denial, and an unknown path."""
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"])
    for path, auth in ((PM, token), (PM, "nope"), ("/v1/nothing", token)):
        async with http.get(
            stack.urls["proxy"] + path, headers={"Authorization": f"Bearer {auth}"}
        ):
            pass


async def test_a_proxy_run_writes_a_chain_that_verifies(
    make_stack: Callable[..., Awaitable[DemoStack]], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key, public = make_key(tmp_path)
    stack = await make_stack({"audit": {"checkpoint_key_file": str(key), "checkpoint_every": 2}})
    await drive(stack, http)
    await stack.stop()
    log = stack.state_dir / "audit.jsonl"
    result = verify_cli(log, "--key", public, "--closed", "--expect-at-least", "3")
    assert result.returncode == 0, result.stderr
    assert "checkpoints" in result.stdout and "chain intact" in result.stdout


async def test_request_records_carry_the_chain_and_pci_fields_next_to_their_own(
    stack: DemoStack, http: aiohttp.ClientSession
) -> None:
    await drive(stack, http)
    text = (stack.state_dir / "audit.jsonl").read_text("utf-8")
    allowed, denied, unknown = (json.loads(line) for line in text.splitlines())
    assert [r["seq"] for r in (allowed, denied, unknown)] == [0, 1, 2]
    assert allowed["jti"] and allowed["kid"] and allowed["request_id"]
    assert (allowed["user"], allowed["outcome"]) == ("alice", "ok")
    assert allowed["resource"] == "GET /v1/customers/{customer_id}/payment-methods"
    assert allowed["source"] == allowed["client_ip"] == "127.0.0.1"
    assert (denied["decision"], denied["code"], denied["outcome"]) == (
        "deny",
        "unauthenticated",
        "refused",
    )
    assert denied["user"] is None
    assert unknown["code"] == "operation_unknown"

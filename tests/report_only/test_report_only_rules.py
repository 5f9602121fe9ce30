"""Report-only rules: each kind records what it would have refused and lets the request go
on, and none of them ever lets through a request the core refuses (unauthenticated,
unmapped, unsigned). Then `dragoman audit report` sums them up."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from click.testing import CliRunner

from binding_support import ALICE, BOB, Recorder
from binding_support import overrides as binding_overrides
from down_key_provider import DownKeyProvider
from dragoman.cli import main
from dragoman.demo.runner import DemoStack
from settings_support import settings_problems

MakeStack = Callable[..., Awaitable[DemoStack]]
PM = "/v1/customers/cus_alice/payment-methods"
CARD = {"card_number": "4242424242424242", "exp_month": 1, "exp_year": 2031}

# Every kind of report-only rule, each set to refuse alice's calls if it enforced.
EVERY_RULE: dict[str, Any] = {
    "policy": {
        "roles": {
            "billing_admin": ["tier:read"],  # narrowed from read/change/destroy
            "viewer": ["tier:read"],
            "owner": ["*"],
        },
        "report_only_roles": ["billing_admin"],
        "step_up": {"read": {"acr_values": ["phishing-resistant"], "report_only": True}},
    },
    "limits": {
        "rules": [
            {"name": "tight", "per": "account", "rate": "1/h", "burst": 1, "report_only": True}
        ]
    },
    "anomaly": {
        "rules": {
            "burst": {
                "kind": "threshold",
                "threshold": 1,
                "window": "1m",
                "action": "block",
                "report_only": True,
            }
        }
    },
}


def alice(stack: DemoStack, **claims: Any) -> dict[str, str]:
    token = stack.issuer.token("alice", "acct-1001", roles=["billing_admin"], **claims)
    return {"Authorization": f"Bearer {token}"}


def records(stack: DemoStack) -> list[dict[str, Any]]:
    lines = (stack.state_dir / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def last_request(stack: DemoStack) -> dict[str, Any]:
    return [r for r in records(stack) if r["event"] in ("request", "decision")][-1]


def would_deny(stack: DemoStack) -> list[tuple[str, str, str]]:
    return [(e["rule"], e["code"], e["reason"]) for e in last_request(stack).get("would_deny", [])]


async def get(http: aiohttp.ClientSession, stack: DemoStack, path: str, **kw: Any) -> int:
    async with http.get(stack.urls["proxy"] + path, **kw) as answer:
        await answer.read()
        return answer.status


async def post(http: aiohttp.ClientSession, stack: DemoStack, path: str, **kw: Any) -> int:
    async with http.post(stack.urls["proxy"] + path, json=CARD, **kw) as answer:
        await answer.read()
        return answer.status


# -- each kind records and lets the request go on --------------------------------------------


async def test_a_report_only_role_definition_records_scope_denied_and_serves(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"policy": EVERY_RULE["policy"] | {"step_up": {}}})
    assert await post(http, stack, PM, headers=alice(stack)) == 201
    assert would_deny(stack) == [("policy.roles.billing_admin", "scope_denied", "role_definition")]


async def test_the_same_role_definition_enforced_refuses(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    policy = EVERY_RULE["policy"] | {"step_up": {}, "report_only_roles": []}
    stack = await make_stack({"policy": policy})
    assert await post(http, stack, PM, headers=alice(stack)) == 403
    assert last_request(stack)["code"] == "scope_denied"
    assert stack.platform.seen == []


async def test_a_report_only_step_up_records_the_challenge_and_serves(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"policy": {"step_up": EVERY_RULE["policy"]["step_up"]}})
    assert await get(http, stack, PM, headers=alice(stack)) == 200
    assert would_deny(stack) == [
        ("policy.step_up.read", "insufficient_user_authentication", "acr_insufficient")
    ]


async def test_a_report_only_rate_limit_counts_apart_and_records_past_its_limit(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"limits": EVERY_RULE["limits"]})
    assert await get(http, stack, PM, headers=alice(stack)) == 200
    assert would_deny(stack) == []
    assert await get(http, stack, PM, headers=alice(stack)) == 200
    assert would_deny(stack) == [("limits.rules.tight", "rate_limited", "tight")]


async def test_a_report_only_anomaly_block_records_and_stores_no_block(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await make_stack({"anomaly": EVERY_RULE["anomaly"], "limits": {"enabled": False}})
    assert await post(http, stack, PM, headers=alice(stack)) == 201
    assert would_deny(stack) == []
    for _ in range(2):  # it fires; a block it stored would refuse the next one
        assert await post(http, stack, PM, headers=alice(stack)) == 201
        assert would_deny(stack) == [("anomaly.rules.burst", "anomaly_blocked", "burst")]


@pytest.fixture
async def bound(
    serve: Callable[[web.Application], Any], make_stack: MakeStack
) -> AsyncIterator[tuple[Recorder, DemoStack]]:
    upstream = Recorder()
    settings = copy.deepcopy(binding_overrides("http://unused"))  # its bindings are shared
    for operation in settings["catalog"]["operations"]:
        for binding in operation["customer"]:
            if binding["mode"] == "enforce" and binding["location"] != "path":
                binding["report_only"] = True
    async with serve(upstream.app()) as url:
        settings["upstream"]["url"] = url
        yield upstream, await make_stack(settings | {"decision": {"enabled": True}})


async def test_a_report_only_binding_records_the_other_customer_and_forwards_unchanged(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    assert await get(http, stack, f"/query/things?customer_id={BOB}", headers=alice(stack)) == 200
    assert would_deny(stack) == [
        (
            "catalog.operations.query.get.customer.query:customer_id",
            "customer_mismatch",
            "customer_other",
        )
    ]
    assert upstream.received[-1]["path_qs"] == f"/query/things?customer_id={BOB}"
    _, _, token = upstream.header("authorization")[0].partition(" ")
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == ALICE


async def test_a_report_only_body_binding_records_a_body_that_is_not_json(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    upstream, stack = bound
    headers = {**alice(stack), "Content-Type": "application/json"}
    async with http.post(stack.urls["proxy"] + "/body/things", data=b"{", headers=headers) as r:
        assert r.status == 200
    assert would_deny(stack)[0][1:] == ("bad_request", "body_invalid")
    assert upstream.received[-1]["body"] == "{"


async def test_report_only_rules_record_in_decisions_too(
    bound: tuple[Recorder, DemoStack], http: aiohttp.ClientSession
) -> None:
    _, stack = bound
    sent = {**alice(stack), "X-Original-Method": "GET", "X-Original-URI": "/header/things"}
    async with http.get(stack.decision_url + "/auth_request", headers=sent) as answer:
        assert answer.status == 200
    assert last_request(stack)["event"] == "decision"
    assert would_deny(stack)[0][1:] == ("customer_mismatch", "customer_absent")


# -- never a way around the core -------------------------------------------------------------


@pytest.fixture
async def everything_reported(make_stack: MakeStack) -> DemoStack:
    return await make_stack(EVERY_RULE)


async def test_every_rule_reporting_still_serves_alice_with_a_verified_token(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    assert await get(http, stack, PM, headers=alice(stack)) == 200
    assert await post(http, stack, PM, headers=alice(stack)) == 201
    assert await post(http, stack, PM, headers=alice(stack)) == 201
    assert {rule for rule, _, _ in would_deny(stack)} == {
        "policy.roles.billing_admin",
        "limits.rules.tight",
        "anomaly.rules.burst",
    }
    assert [s.accepted for s in stack.platform.seen] == [True, True, True]


async def test_report_only_rules_never_let_an_unauthenticated_request_through(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    assert await get(http, stack, PM) == 401
    assert await get(http, stack, PM, headers={"Authorization": "Bearer not.a.token"}) == 401
    forged = jwt.encode({"sub": "alice", "cloud_account": "acct-1001"}, "k" * 32, "HS256")
    assert await get(http, stack, PM, headers={"Authorization": f"Bearer {forged}"}) == 401
    expired = alice(stack, exp=1)
    assert await get(http, stack, PM, headers=expired) == 401
    assert stack.platform.seen == []


async def test_report_only_rules_never_let_an_unmapped_account_through(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    token = stack.issuer.token("mallory", "acct-9999", roles=["billing_admin"])
    assert await get(http, stack, PM, headers={"Authorization": f"Bearer {token}"}) == 403
    assert last_request(stack)["code"] == "mapping_missing"
    assert stack.platform.seen == []


async def test_report_only_rules_never_let_a_suspended_mapping_through(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    assert stack.proxy is not None
    store = stack.proxy.store
    mapping = await store.find_by_account("acct-1001")
    assert mapping is not None
    await store.update(
        mapping.id, expected_version=mapping.version, actor="test", status="suspended"
    )
    assert await get(http, stack, PM, headers=alice(stack)) == 403
    assert last_request(stack)["code"] == "mapping_inactive"
    assert stack.platform.seen == []


async def test_report_only_rules_never_let_a_grant_that_does_not_cover_through(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    # bob's viewer grant names its operations: a write is outside the grant itself, which no
    # report-only role definition can widen.
    stack = everything_reported
    token = stack.issuer.token("bob", "acct-2002", roles=["viewer"])
    path = "/v1/customers/cus_bob/payment-methods"
    assert await post(http, stack, path, headers={"Authorization": f"Bearer {token}"}) == 403
    assert last_request(stack)["code"] == "scope_denied"
    assert stack.platform.seen == []


async def test_report_only_rules_never_let_an_unsigned_request_through(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    assert stack.proxy is not None
    stack.proxy.keys.provider = DownKeyProvider()
    assert await get(http, stack, PM, headers=alice(stack)) == 503
    assert last_request(stack)["code"] == "key_unavailable"
    assert stack.platform.seen == []


# -- settings --------------------------------------------------------------------------------


def test_an_inject_binding_cannot_be_report_only(tmp_path: Path) -> None:
    operation = {
        "id": "things.list",
        "method": "GET",
        "path": "/things",
        "scope": "things:list",
        "customer": [{"location": "query", "name": "c", "mode": "inject", "report_only": True}],
    }
    problems = settings_problems(tmp_path, overrides={"catalog": {"operations": [operation]}})
    assert any("only enforce can report" in message for message in problems.values()), problems


def test_report_only_roles_must_be_defined(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("policy", {})["report_only_roles"] = ["auditor"]

    problems = settings_problems(tmp_path, edit)
    assert "auditor" in problems["policy"]


# -- the report ------------------------------------------------------------------------------


async def test_audit_report_sums_would_deny_per_rule(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    for _ in range(3):
        await get(http, stack, PM, headers=alice(stack))
    await post(http, stack, PM, headers=alice(stack))
    result = CliRunner().invoke(
        main, ["audit", "report", "--json", str(stack.state_dir / "audit.jsonl")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["requests"] == 4
    rules = {rule["rule"]: rule for rule in report["rules"]}
    assert rules["policy.step_up.read"]["would_deny"] == 3  # the reads
    assert rules["limits.rules.tight"]["would_deny"] == 3  # the first one was within
    assert rules["policy.roles.billing_admin"]["would_deny"] == 1
    assert rules["policy.roles.billing_admin"]["operations"] == {
        "payment_methods.create": {"would_deny": 1, "requests": 1}
    }
    assert rules["limits.rules.tight"]["principals"] == 1
    assert "alice" not in result.output  # counted, never listed


async def test_audit_report_keeps_to_its_time_range(
    everything_reported: DemoStack, http: aiohttp.ClientSession
) -> None:
    stack = everything_reported
    await get(http, stack, PM, headers=alice(stack))
    path = str(stack.state_dir / "audit.jsonl")
    later = CliRunner().invoke(main, ["audit", "report", "--json", "--since", "2999-01-01", path])
    assert json.loads(later.output)["requests"] == 0
    recent = CliRunner().invoke(main, ["audit", "report", "--json", "--since", "1h", path])
    assert json.loads(recent.output)["requests"] == 1
    text = CliRunner().invoke(main, ["audit", "report", path])
    assert "policy.step_up.read: would deny 1" in text.output


def test_audit_report_refuses_a_time_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    result = CliRunner().invoke(main, ["audit", "report", "--since", "yesterday", str(path)])
    assert result.exit_code == 2

"""Step-up authentication (RFC 9470) over real HTTP: an operation whose risk tier has a
`policy.step_up` entry needs a recent sign-in (`auth_time` within max_age) and/or a strong
one (`acr` among acr_values); otherwise 401 insufficient_user_authentication with the RFC
9470 challenge, audited, and nothing reaches the upstream. By default money needs a sign-in
at most 5 minutes old."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from policy_helpers import (
    ADDRESS,
    MONEY_OPERATION,
    NEW_ADDRESS,
    PM,
    MakeStack,
    bearer,
    call,
    grant_alice_mapping,
)
from policy_helpers import money_catalog as money_catalog_settings

from dragoman.demo.runner import DemoStack
from dragoman.identity.principal import Principal
from dragoman.mapping.entity import Grant
from dragoman.pipeline.errors import StepUpRequired
from dragoman.policy.step_up import StepUpStage
from dragoman.settings import StepUpSettings

CODE = "insufficient_user_authentication"
RECENCY_CHALLENGE = (
    'Bearer error="insufficient_user_authentication",'
    ' error_description="More recent authentication is required.", max_age="300"'
)
HOUR_AGO = int(time.time()) - 3600


async def money_stack(make_stack: MakeStack, step_up: dict[str, Any] | None = None) -> DemoStack:
    """The demo with billing_address.update in tier money, alice granted everything."""
    overrides = money_catalog_settings()
    if step_up is not None:
        overrides["policy"] = {"step_up": step_up}
    stack = await make_stack(overrides)
    await grant_alice_mapping(stack, Grant(principal="alice", operations=("*",)))
    return stack


def alice(stack: DemoStack, **claims: Any) -> dict[str, str]:
    """Alice's token; ``claims`` override the issuer's (which sets auth_time to now); a claim
    given as None is left out."""
    payload = stack.issuer.claims("alice", "acct-1001", roles=[])
    payload.update(claims)
    return bearer(stack.issuer.sign({k: v for k, v in payload.items() if v is not None}))


async def move_money(
    http: aiohttp.ClientSession, stack: DemoStack, headers: dict[str, str]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await call(http, stack, headers, "PUT", ADDRESS, NEW_ADDRESS)


def last_audit_record(stack: DemoStack) -> dict[str, Any]:
    lines = (stack.state_dir / "audit.jsonl").read_text().splitlines()
    record: dict[str, Any] = json.loads(lines[-1])
    return record


async def test_a_fresh_sign_in_may_move_money(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    status, _, _ = await move_money(http, stack, alice(stack))
    assert status == 200
    assert [s.accepted for s in stack.platform.seen] == [True]


async def test_an_old_sign_in_is_refused_with_the_recency_challenge(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    status, problem, headers = await move_money(http, stack, alice(stack, auth_time=HOUR_AGO))
    assert (status, problem["code"], problem["reason"]) == (401, CODE, "auth_too_old")
    assert headers["WWW-Authenticate"] == RECENCY_CHALLENGE
    assert headers["Content-Type"] == "application/problem+json"


async def test_a_refused_step_up_never_reaches_the_upstream_and_is_audited(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    _, problem, _ = await move_money(http, stack, alice(stack, auth_time=HOUR_AGO))
    assert stack.platform.seen == []
    record = last_audit_record(stack)
    assert (record["audit_id"], record["decision"], record["code"]) == (
        problem["audit_id"],
        "deny",
        CODE,
    )


@pytest.mark.parametrize(
    "auth_time",
    [None, str(int(time.time())), time.time(), True],
    ids=["missing", "string", "non-integer", "boolean"],
)
async def test_a_sign_in_without_an_integer_auth_time_is_refused(
    make_stack: MakeStack, http: aiohttp.ClientSession, auth_time: Any
) -> None:
    stack = await money_stack(make_stack)
    headers = alice(stack, auth_time=auth_time)  # None: left out
    status, problem, www = await move_money(http, stack, headers)
    assert (status, problem["code"], problem["reason"]) == (401, CODE, "auth_time_missing")
    assert 'max_age="300"' in www["WWW-Authenticate"]
    assert stack.platform.seen == []


async def test_a_required_acr_is_asked_for_with_acr_values(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"money": {"acr_values": ["mfa", "hwk"]}})
    status, problem, headers = await move_money(http, stack, alice(stack, acr="pwd"))
    assert (status, problem["code"], problem["reason"]) == (401, CODE, "acr_insufficient")
    assert headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_user_authentication",'
        ' error_description="A stronger authentication level is required.",'
        ' acr_values="mfa hwk"'
    )
    assert stack.platform.seen == []


async def test_a_sign_in_without_acr_is_refused_where_an_acr_is_required(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"money": {"acr_values": ["mfa"]}})
    status, problem, _ = await move_money(http, stack, alice(stack))
    assert (status, problem["reason"]) == (401, "acr_insufficient")


async def test_a_required_acr_is_accepted(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"money": {"acr_values": ["mfa", "hwk"]}})
    status, _, _ = await move_money(http, stack, alice(stack, acr="hwk", auth_time=HOUR_AGO))
    assert status == 200


async def test_a_step_up_with_both_needs_both_and_names_both(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"money": {"max_age": "10m", "acr_values": ["mfa"]}})
    status, problem, headers = await move_money(
        http, stack, alice(stack, acr="mfa", auth_time=HOUR_AGO)
    )
    assert (status, problem["reason"]) == (401, "auth_too_old")
    assert headers["WWW-Authenticate"].endswith(', max_age="600", acr_values="mfa"')


async def test_tiers_without_a_step_up_take_any_sign_in(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    status, _, _ = await call(http, stack, alice(stack, auth_time=HOUR_AGO), "GET", PM)
    assert status == 200


async def test_any_tier_may_be_given_a_step_up(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"read": {"max_age": 60}})
    status, problem, _ = await call(http, stack, alice(stack, auth_time=HOUR_AGO), "GET", PM)
    assert (status, problem["code"]) == (401, CODE)


# -- the stage's clock ---------------------------------------------------------------------------

NOW = 1_800_000_000.0
FIVE_MINUTES = StepUpSettings(max_age=300)


def principal(auth_time: int | None) -> Principal:
    return Principal("alice", "acct-1001", "https://issuer", "console", auth_time=auth_time)


def test_a_sign_in_exactly_max_age_old_passes() -> None:
    StepUpStage({}, clock=lambda: NOW).check(principal(int(NOW) - 300), FIVE_MINUTES)


def test_a_sign_in_a_second_older_than_max_age_is_refused() -> None:
    with pytest.raises(StepUpRequired) as refused:
        StepUpStage({}, clock=lambda: NOW).check(principal(int(NOW) - 301), FIVE_MINUTES)
    assert (refused.value.reason, refused.value.max_age) == ("auth_too_old", 300)


def test_a_sign_in_far_in_the_future_is_refused() -> None:
    with pytest.raises(StepUpRequired) as refused:
        StepUpStage({}, clock=lambda: NOW).check(principal(int(NOW) + 3600), FIVE_MINUTES)
    assert refused.value.reason == "auth_too_old"


# -- whoami's hint -----------------------------------------------------------------------------


async def whoami(
    http: aiohttp.ClientSession, stack: DemoStack, headers: dict[str, str]
) -> dict[str, Any]:
    status, body, _ = await call(http, stack, headers, "GET", "/_dragoman/whoami")
    assert status == 200, body
    return body


async def test_whoami_names_the_operations_an_old_sign_in_needs_a_step_up_for(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    body = await whoami(http, stack, alice(stack, auth_time=HOUR_AGO))
    assert MONEY_OPERATION in body["operations"]
    assert body["step_up"] == {MONEY_OPERATION: {"reason": "auth_too_old", "max_age": 300}}
    # ...and the operation is refused for the reason whoami gave.
    status, problem, _ = await move_money(http, stack, alice(stack, auth_time=HOUR_AGO))
    assert (status, problem["reason"]) == (401, "auth_too_old")


async def test_whoami_names_no_step_up_for_a_fresh_sign_in(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack)
    body = await whoami(http, stack, alice(stack))
    assert MONEY_OPERATION in body["operations"]
    assert body["step_up"] == {}


async def test_whoami_names_the_acr_a_step_up_asks_for(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"money": {"acr_values": ["phr", "phrh"]}})
    body = await whoami(http, stack, alice(stack, acr="pwd"))
    assert body["step_up"] == {
        MONEY_OPERATION: {"reason": "acr_insufficient", "acr_values": ["phr", "phrh"]}
    }


async def test_whoami_gives_no_hint_for_a_report_only_step_up(
    make_stack: MakeStack, http: aiohttp.ClientSession
) -> None:
    stack = await money_stack(make_stack, {"money": {"max_age": "5m", "report_only": True}})
    body = await whoami(http, stack, alice(stack, auth_time=HOUR_AGO))
    assert body["step_up"] == {}  # the operation is served: nothing to ask for

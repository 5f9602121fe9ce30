"""The threshold rule, through real HTTP with the demo stack, counts in memory and in
Redis: it fires at exactly K+1 sensitive changes of one account in the window (never at
K), per account, and applies its action (alert, step_up, block)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from anomaly_support import (
    BOB,
    FORWARDED,
    Backend,
    Caller,
    MakeStack,
    MovableClock,
    alert_fields,
    anomaly_alerts,
    anomaly_overrides,
    capture_alerts,
)
from prometheus_client import REGISTRY

K = 3


def threshold(action: str = "alert", **extra: Any) -> dict[str, Any]:
    rule = {"kind": "threshold", "threshold": K, "window": "1m", "action": action}
    return {"burst": {**rule, **extra}}


def fired_count(rule: str, action: str) -> float:
    value = REGISTRY.get_sample_value(
        "dragoman_anomaly_alerts_total", {"rule": rule, "action": action}
    )
    return value or 0.0


async def test_the_threshold_rule_fires_at_k_plus_one_changes_not_at_k(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, threshold()), clock=clock)
    alice = Caller(stack, clock, http)
    counted_before = fired_count("burst", "alert")

    assert await alice.changes(K) == [FORWARDED] * K
    assert anomaly_alerts(caplog) == []

    assert await alice.set_default() == FORWARDED  # action alert: the request goes on
    [line] = anomaly_alerts(caplog)
    fields = alert_fields(line)
    assert (fields["rule"], fields["action"], fields["applied"]) == ("burst", "alert", "alert")
    assert (fields["count"], fields["threshold"], fields["window_seconds"]) == (K + 1, K, 60)
    assert fired_count("burst", "alert") == counted_before + 1


async def test_another_account_with_k_changes_does_not_fire(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, threshold("block")), clock=clock)
    alice, bob = Caller(stack, clock, http), Caller(stack, clock, http, who=BOB)

    assert await alice.changes(K) == [FORWARDED] * K
    assert await alice.set_default() == "anomaly_blocked"

    assert await bob.changes(K) == [FORWARDED] * K  # bob's own count, alice's block is hers
    assert len(anomaly_alerts(caplog)) == 1


async def test_changes_leave_the_window_as_it_slides(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, threshold("block")), clock=clock)
    alice = Caller(stack, clock, http)

    assert await alice.changes(K) == [FORWARDED] * K
    clock.advance(60)  # the K changes are exactly one window old: out of it
    assert await alice.changes(K) == [FORWARDED] * K
    assert anomaly_alerts(caplog) == []


async def test_block_refuses_with_403_anomaly_blocked_until_block_for_has_passed(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    rules = threshold("block", block_for="2m")
    stack = await make_stack(anomaly_overrides(backend, rules), clock=clock)
    alice = Caller(stack, clock, http)

    assert await alice.changes(K) == [FORWARDED] * K
    assert await alice.set_default() == "anomaly_blocked"
    assert alice.last_problem is not None and alice.last_problem["status"] == 403
    assert alice.last_headers is not None and alice.last_headers["Retry-After"] == "120"
    assert alert_fields(anomaly_alerts(caplog)[0])["applied"] == "block"

    clock.advance(119)
    assert await alice.add_card() == "anomaly_blocked"  # every sensitive operation
    assert alice.last_headers is not None and alice.last_headers["Retry-After"] == "1"
    assert await alice.list_cards() == FORWARDED  # reads are not blocked

    clock.advance(1)
    assert await alice.set_default() == FORWARDED
    assert len(anomaly_alerts(caplog)) == 1  # refused while blocked: nothing counted


async def test_step_up_answers_the_step_up_challenge_until_the_caller_signs_in_again(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    rules = threshold("step_up", step_up_max_age="5m")
    stack = await make_stack(anomaly_overrides(backend, rules), clock=clock)
    alice = Caller(stack, clock, http, signed_in_ago=3600)

    assert await alice.changes(K) == [FORWARDED] * K
    assert await alice.set_default() == "insufficient_user_authentication"
    assert alice.last_problem is not None and alice.last_problem["reason"] == "auth_too_old"
    assert alice.last_headers is not None
    challenge = alice.last_headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge and 'max_age="300"' in challenge

    alice.signed_in_ago = 10
    assert await alice.set_default() == FORWARDED
    applied = [alert_fields(line)["applied"] for line in anomaly_alerts(caplog)]
    assert applied == ["step_up", "step_up_satisfied"]


async def test_a_rule_that_keeps_firing_alerts_once_per_window(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every change past K fires the rule again (its action applies each time), but the
    sinks hear of it once per window: an account hammering the API floods no one."""
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, threshold()), clock=clock)
    alice = Caller(stack, clock, http)

    assert await alice.changes(K + 5) == [FORWARDED] * (K + 5)
    assert len(anomaly_alerts(caplog)) == 1
    clock.advance(61)  # the window (60 s) has drained; the rule fires again on K+1 changes
    assert await alice.changes(K + 1) == [FORWARDED] * (K + 1)
    assert len(anomaly_alerts(caplog)) == 2

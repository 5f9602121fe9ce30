"""The baseline rule and card testing, through real HTTP with the demo stack, counts in
memory and in Redis; and a slow, normal rhythm that never fires any rule."""

from __future__ import annotations

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

WINDOW = 60.0
BASELINE = {
    "jump": {
        "kind": "baseline",
        "window": "1m",
        "factor": 3,
        "min_count": 4,
        "smoothing": 0.5,
    }
}
CARD_TESTING = {
    "card_testing": {
        "kind": "card_testing",
        "pairs": 3,
        "pair_within": "30s",
        "window": "10m",
        "action": "block",
        "block_for": "5m",
    }
}


async def test_baseline_fires_for_an_account_jumping_far_above_its_own_ewma(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, BASELINE), clock=clock)
    alice = Caller(stack, clock, http)
    for _ in range(5):  # one change a window: a baseline of 1
        assert await alice.changes(1) == [FORWARDED]
        clock.advance(WINDOW)

    assert await alice.changes(3) == [FORWARDED] * 3  # 3 = factor x baseline: not above
    assert anomaly_alerts(caplog) == []
    assert await alice.changes(1) == [FORWARDED]  # 4: above 3 x 1 and at min_count
    [line] = anomaly_alerts(caplog)
    fields = alert_fields(line)
    assert (fields["rule"], fields["count"], fields["baseline"]) == ("jump", 4, 1.0)


async def test_baseline_does_not_fire_for_an_account_always_busy_at_that_level(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, BASELINE), clock=clock)
    bob = Caller(stack, clock, http, who=BOB)
    for _ in range(6):
        assert await bob.changes(4) == [FORWARDED] * 4
        clock.advance(WINDOW)
    assert anomaly_alerts(caplog) == []


async def test_a_slow_normal_rhythm_never_fires(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    rules = {
        "burst": {"kind": "threshold", "threshold": 1, "window": "1m", "action": "block"},
        "jump": {**BASELINE["jump"], "min_count": 2, "action": "block"},
        **CARD_TESTING,
    }
    stack = await make_stack(anomaly_overrides(backend, rules), clock=clock)
    alice = Caller(stack, clock, http)
    for step in range(12):  # one change a window, for twelve windows
        change = (alice.add_card, alice.delete_card, alice.set_default)[step % 3]
        assert await change() == FORWARDED
        clock.advance(WINDOW)
    assert anomaly_alerts(caplog) == []


async def test_card_testing_add_delete_pairs_fire(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, CARD_TESTING), clock=clock)
    alice = Caller(stack, clock, http)
    for _ in range(2):
        assert await alice.add_card() == FORWARDED
        clock.advance(5)
        assert await alice.delete_card() == FORWARDED
    assert await alice.add_card() == FORWARDED
    assert await alice.delete_card() == "anomaly_blocked"  # the third pair
    [line] = anomaly_alerts(caplog)
    fields = alert_fields(line)
    assert (fields["rule"], fields["kind"], fields["count"], fields["pairs"]) == (
        "card_testing",
        "card_testing",
        3,
        3,
    )


async def test_adds_and_deletes_further_apart_than_pair_within_are_not_pairs(
    make_stack: MakeStack,
    backend: Backend,
    clock: MovableClock,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture_alerts(caplog)
    stack = await make_stack(anomaly_overrides(backend, CARD_TESTING), clock=clock)
    alice = Caller(stack, clock, http)
    for _ in range(4):
        assert await alice.add_card() == FORWARDED
        clock.advance(31)
        assert await alice.delete_card() == FORWARDED
    assert await alice.add_card() == FORWARDED  # adds alone never pair
    assert anomaly_alerts(caplog) == []

"""The GCRA decision (dragoman.limits.gcra): a pure function of the stored TAT and now."""

from __future__ import annotations

import random

import pytest

from dragoman.limits.gcra import (
    MICROSECONDS,
    Decision,
    burst_tolerance,
    decide,
    emission_interval,
    whole_seconds,
)

INTERVAL = emission_interval(600, 60)  # 600/min: one every 100 ms
BURST = 5
TOLERANCE = burst_tolerance(INTERVAL, BURST)
T0 = 1_700_000_000 * MICROSECONDS


def run(times: list[int], interval: int = INTERVAL, tolerance: int = TOLERANCE) -> list[Decision]:
    """Decide a request at each time in turn, storing the TAT as a limiter would."""
    tat: int | None = None
    decisions = []
    for now in times:
        decision = decide(tat, now, interval, tolerance)
        if decision.allowed:
            tat = decision.tat
        decisions.append(decision)
    return decisions


def test_a_burst_passes_at_once_and_the_next_request_is_refused() -> None:
    decisions = run([T0] * (BURST + 1))
    assert [d.allowed for d in decisions] == [True] * BURST + [False]


def test_remaining_counts_down_the_burst() -> None:
    decisions = run([T0] * (BURST + 1))
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]


def test_one_more_request_passes_after_one_emission_interval() -> None:
    decisions = run([T0] * BURST + [T0 + INTERVAL, T0 + INTERVAL])
    assert [d.allowed for d in decisions[BURST:]] == [True, False]


def test_retry_after_is_exactly_the_wait_until_a_request_conforms() -> None:
    at = T0 + 37_123  # refused a little after the burst
    refused = run([T0] * BURST + [at])[-1]
    assert not refused.allowed
    assert refused.retry_after == T0 + INTERVAL - at
    just_before = run([T0] * BURST + [at + refused.retry_after - 1])[-1]
    just_then = run([T0] * BURST + [at + refused.retry_after])[-1]
    assert (just_before.allowed, just_then.allowed) == (False, True)


def test_a_refused_request_leaves_the_tat_unchanged() -> None:
    allowed = run([T0] * BURST)[-1]
    refused = decide(allowed.tat, T0, INTERVAL, TOLERANCE)
    assert not refused.allowed
    assert refused.tat == allowed.tat


def test_reset_after_is_when_the_subject_is_idle_again() -> None:
    last = run([T0] * BURST)[-1]
    assert last.reset_after == BURST * INTERVAL
    idle = T0 + last.reset_after
    assert decide(last.tat, idle, INTERVAL, TOLERANCE) == decide(None, idle, INTERVAL, TOLERANCE)


def test_an_idle_subject_decides_like_a_new_one() -> None:
    old_tat = T0 - 10 * MICROSECONDS
    assert decide(old_tat, T0, INTERVAL, TOLERANCE) == decide(None, T0, INTERVAL, TOLERANCE)


def test_a_tat_no_request_can_have_stored_at_this_clock_starts_the_subject_afresh() -> None:
    impossible = T0 + TOLERANCE + INTERVAL + 1
    assert decide(impossible, T0, INTERVAL, TOLERANCE) == decide(None, T0, INTERVAL, TOLERANCE)


def test_a_tat_a_full_burst_ahead_is_possible_and_refuses() -> None:
    full = run([T0] * BURST)[-1]
    assert full.tat == T0 + TOLERANCE + INTERVAL
    assert not decide(full.tat, T0, INTERVAL, TOLERANCE).allowed


def test_the_emission_interval_rounds_up_so_the_rate_is_never_exceeded() -> None:
    assert emission_interval(600, 60) == 100_000
    assert emission_interval(7, 60) == 8_571_429  # 8_571_428.57... rounded up
    assert emission_interval(3, 1) * 3 >= MICROSECONDS


def test_whole_seconds_round_up_and_are_at_least_one() -> None:
    assert [whole_seconds(us) for us in (0, 1, 999_999, 1_000_000, 1_000_001)] == [1, 1, 1, 1, 2]


@pytest.mark.parametrize(
    ("count", "period", "burst", "seed"),
    [(600, 60, 60, 1), (10, 60, 3, 2), (5, 1, 1, 3), (7, 60, 2, 4), (1000, 1, 100, 5)],
)
def test_no_window_ever_allows_more_than_rate_times_its_length_plus_burst(
    count: int, period: int, burst: int, seed: int
) -> None:
    interval = emission_interval(count, period)
    tolerance = burst_tolerance(interval, burst)
    rng = random.Random(seed)
    now, times = T0, []
    for _ in range(3000):  # bursts, pauses and steady trickles, at random
        now += rng.choice([0, 0, 0, 1, interval // 3, interval, 5 * interval])
        times.append(now)
    allowed = [t for t, d in zip(times, run(times, interval, tolerance), strict=True) if d.allowed]
    assert len(allowed) > burst
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            window = allowed[j] - start  # [start, allowed[j]] holds j - i + 1 allowed
            assert j - i + 1 <= window / interval + burst

"""The rotation timeline of SEMANTICS §3 as a pure function of the stored rows and the time.

No I/O: every test builds KeyRecords by hand and asks the Timeline about one instant.
"""

from __future__ import annotations

import dataclasses

import pytest

from dragoman.keys.timeline import KeyRecord, KeyState, Timeline

PERIOD = 3600.0
OVERLAP = 60.0
PREPUBLISH = 600.0
T0 = 1_700_000_000.0

TIMELINE = Timeline(period=PERIOD, overlap=OVERLAP, prepublish=PREPUBLISH)


def key(
    generation: int,
    activates_at: float,
    *,
    deactivates_at: float | None = None,
    retired_at: float | None = None,
) -> KeyRecord:
    return KeyRecord(
        kid=f"kid-{generation}",
        generation=generation,
        alg="ES256",
        provider="local",
        ref=f"ref-{generation}",
        public_jwk={"kty": "EC", "crv": "P-256", "x": "x", "y": "y"},
        created_at=activates_at - PREPUBLISH,
        created_by="test",
        activates_at=activates_at,
        deactivates_at=deactivates_at,
        retired_at=retired_at,
    )


def rotated_pair() -> tuple[KeyRecord, KeyRecord]:
    """K1 current from T0; K2 takes over at T0 + PERIOD (K1 ends then, in the same write)."""
    switch = T0 + PERIOD
    return key(1, T0, deactivates_at=switch), key(2, switch)


# -- state: every boundary ---------------------------------------------------------------------


def test_key_is_pending_just_before_it_activates() -> None:
    assert TIMELINE.state(key(1, T0), T0 - 0.001) is KeyState.PENDING


def test_key_is_current_at_its_activation_instant() -> None:
    assert TIMELINE.state(key(1, T0), T0) is KeyState.CURRENT


def test_key_without_successor_stays_current_indefinitely() -> None:
    assert TIMELINE.state(key(1, T0), T0 + 100 * PERIOD) is KeyState.CURRENT


def test_key_is_still_current_just_before_it_deactivates() -> None:
    old, _ = rotated_pair()
    assert TIMELINE.state(old, T0 + PERIOD - 0.001) is KeyState.CURRENT


def test_key_is_previous_at_its_deactivation_instant() -> None:
    old, _ = rotated_pair()
    assert TIMELINE.state(old, T0 + PERIOD) is KeyState.PREVIOUS


def test_key_is_still_previous_just_before_its_overlap_ends() -> None:
    old, _ = rotated_pair()
    assert TIMELINE.state(old, T0 + PERIOD + OVERLAP - 0.001) is KeyState.PREVIOUS


def test_key_is_retired_when_its_overlap_ends() -> None:
    old, _ = rotated_pair()
    assert TIMELINE.state(old, T0 + PERIOD + OVERLAP) is KeyState.RETIRED


def test_retired_at_wins_over_current() -> None:
    retired = key(1, T0, retired_at=T0 + 10)
    assert TIMELINE.state(retired, T0 + 9.999) is KeyState.CURRENT
    assert TIMELINE.state(retired, T0 + 10) is KeyState.RETIRED


def test_retired_at_wins_over_pending() -> None:
    retired = key(2, T0 + PREPUBLISH, retired_at=T0)
    assert TIMELINE.state(retired, T0) is KeyState.RETIRED


def test_retired_at_wins_over_previous() -> None:
    old = dataclasses.replace(rotated_pair()[0], retired_at=T0 + PERIOD + 1)
    assert TIMELINE.state(old, T0 + PERIOD + 1) is KeyState.RETIRED


def test_zero_overlap_retires_a_key_at_its_deactivation_instant() -> None:
    strict = Timeline(period=PERIOD, overlap=0.0, prepublish=PREPUBLISH)
    old, _ = rotated_pair()
    assert strict.state(old, T0 + PERIOD) is KeyState.RETIRED


# -- verify_until --------------------------------------------------------------------------------


def test_verify_until_is_unknown_while_no_successor_is_scheduled() -> None:
    assert TIMELINE.verify_until(key(1, T0)) is None


def test_verify_until_is_deactivation_plus_overlap() -> None:
    old, _ = rotated_pair()
    assert TIMELINE.verify_until(old) == T0 + PERIOD + OVERLAP


def test_verify_until_is_retired_at_when_that_comes_first() -> None:
    old = dataclasses.replace(rotated_pair()[0], retired_at=T0 + 5)
    assert TIMELINE.verify_until(old) == T0 + 5


def test_verify_until_of_a_key_retired_without_successor_is_retired_at() -> None:
    assert TIMELINE.verify_until(key(1, T0, retired_at=T0 + 7)) == T0 + 7


# -- current -------------------------------------------------------------------------------------


def test_current_is_none_for_an_empty_key_set() -> None:
    assert TIMELINE.current([], T0) is None


def test_current_is_the_predecessor_until_the_switch_then_the_successor() -> None:
    keys = list(rotated_pair())
    assert TIMELINE.current(keys, T0 + PERIOD - 0.001) == keys[0]
    assert TIMELINE.current(keys, T0 + PERIOD) == keys[1]


def test_current_never_returns_a_pending_key() -> None:
    assert TIMELINE.current([key(1, T0 + 1)], T0) is None


def test_current_is_none_when_the_only_key_is_retired() -> None:
    assert TIMELINE.current([key(1, T0, retired_at=T0 + 1)], T0 + 1) is None


@pytest.mark.parametrize("order", ["oldest-first", "newest-first"])
def test_current_prefers_the_newest_of_two_hand_edited_current_keys(order: str) -> None:
    # Two open-ended current keys cannot be written by dragoman; an edited table can.
    keys = [key(1, T0), key(2, T0 + 10)]
    if order == "newest-first":
        keys.reverse()
    assert TIMELINE.current(keys, T0 + 20) == key(2, T0 + 10)


@pytest.mark.parametrize(
    "offset", [0.0, PERIOD - 0.001, PERIOD, PERIOD + OVERLAP, 2 * PERIOD, 2 * PERIOD + 1]
)
def test_current_is_a_single_key_at_every_instant_of_a_rotation_chain(offset: float) -> None:
    keys = [
        key(1, T0, deactivates_at=T0 + PERIOD),
        key(2, T0 + PERIOD, deactivates_at=T0 + 2 * PERIOD),
        key(3, T0 + 2 * PERIOD),
    ]
    now = T0 + offset
    signing = [k for k in keys if TIMELINE.state(k, now) is KeyState.CURRENT]
    assert len(signing) == 1
    assert TIMELINE.current(keys, now) == signing[0]


# -- published -----------------------------------------------------------------------------------


def test_published_is_pending_current_and_previous_oldest_first() -> None:
    chain = [
        key(1, T0 - PERIOD, deactivates_at=T0),  # retired at T0 + OVERLAP
        key(2, T0, deactivates_at=T0 + PERIOD),  # previous at T0 + PERIOD + 1
        key(3, T0 + PERIOD, deactivates_at=T0 + 2 * PERIOD),  # current
        key(4, T0 + 2 * PERIOD),  # pending
    ]
    now = T0 + PERIOD + 1
    states = [TIMELINE.state(k, now) for k in chain]
    assert states == [KeyState.RETIRED, KeyState.PREVIOUS, KeyState.CURRENT, KeyState.PENDING]
    assert TIMELINE.published(list(reversed(chain)), now) == chain[1:]


def test_published_leaves_out_a_key_retired_by_retired_at() -> None:
    assert TIMELINE.published([key(1, T0, retired_at=T0 + 1)], T0 + 1) == []


# -- successor_due -------------------------------------------------------------------------------


def test_successor_of_an_empty_key_set_is_due_now() -> None:
    assert TIMELINE.successor_due([], T0) == T0


def test_no_successor_is_due_while_the_newest_key_is_pending() -> None:
    old, new = rotated_pair()
    assert TIMELINE.successor_due([old, new], T0 + PERIOD - 1) is None


def test_no_successor_is_due_while_the_first_key_is_pending() -> None:
    assert TIMELINE.successor_due([key(1, T0 + 10)], T0) is None


def test_no_successor_is_due_just_before_period_minus_prepublish() -> None:
    assert TIMELINE.successor_due([key(1, T0)], T0 + PERIOD - PREPUBLISH - 0.001) is None


def test_successor_is_due_at_period_minus_prepublish_to_activate_at_end_of_period() -> None:
    assert TIMELINE.successor_due([key(1, T0)], T0 + PERIOD - PREPUBLISH) == T0 + PERIOD


def test_overdue_successor_activates_prepublish_from_now() -> None:
    now = T0 + PERIOD + 123
    assert TIMELINE.successor_due([key(1, T0)], now) == now + PREPUBLISH


def test_successor_is_due_now_when_the_current_key_was_retired() -> None:
    now = T0 + 10
    assert TIMELINE.successor_due([key(1, T0, retired_at=now)], now) == now


def test_no_successor_is_due_once_the_newest_key_has_one_scheduled_and_activated() -> None:
    # K2 is current, not yet at its own period: nothing to do.
    old, new = rotated_pair()
    assert TIMELINE.successor_due([old, new], T0 + PERIOD) is None


def test_successor_of_the_newest_current_key_counts_its_period_from_its_activation() -> None:
    old, new = rotated_pair()
    due_at = T0 + PERIOD + PERIOD - PREPUBLISH
    assert TIMELINE.successor_due([old, new], due_at - 0.001) is None
    assert TIMELINE.successor_due([old, new], due_at) == T0 + 2 * PERIOD

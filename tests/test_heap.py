"""dragoman.heap: once a worker is built, what it keeps for life is exempt from the
collector's full passes, and cycles made afterwards are still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from dragoman import heap


@pytest.fixture
def thawed() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()  # the test process goes on as it was
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_moves_what_exists_to_the_permanent_generation(thawed: None) -> None:
    kept = [[n] for n in range(1000)]  # lists: objects the collector tracks
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.is_tracked(kept[0])
    assert not any(kept[0] is o for o in gc.get_objects())  # frozen: no generation holds it


def test_cycles_made_after_settle_are_still_collected(thawed: None) -> None:
    heap.settle()
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_settle_lets_the_youngest_generation_outgrow_the_requests_in_flight(
    thawed: None,
) -> None:
    older = gc.get_threshold()[1:]
    heap.settle()
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *older)
    assert heap.YOUNG_THRESHOLD >= 128 * 70  # ~70 young objects per request in flight


def test_young_objects_of_requests_in_flight_set_off_no_collection_after_settle(
    thawed: None,
) -> None:
    heap.settle()
    gc.collect(0)  # start counting from an empty youngest generation
    passes: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    gc.callbacks.append(count)
    try:
        in_flight = [[{"n": n}, [n]] for n in range(2_000)]  # 4,000 lists the GC tracks
        del in_flight
    finally:
        gc.callbacks.remove(count)
    assert passes == []

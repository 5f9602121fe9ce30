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
    yield
    gc.unfreeze()  # the test process goes on as it was


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
